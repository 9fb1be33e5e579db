// Straight-through quantizer tape ops: the forward pass replaces a tensor by its quantized
// and dequantized value, the backward pass passes the gradient through unchanged, as the
// BitNet training code writes it: x_q = x + (q(x) - x).detach(). The scales get no gradient.
#pragma once

#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/quant/quantize_int8.hpp"
#include "bitdistill/quant/quantize_ternary.hpp"

namespace bitdistill::autodiff {

/// dx += dy: the straight-through estimator treats the quantizer as the identity.
inline void straight_through_backward(const float* dy, const GradientSink& dx, std::int64_t count) {
    detail::write_gradient(dx, count, [&](std::int64_t i) { return dy[i]; });
}

namespace detail {
inline void straight_through_rule(Tape& t, std::int32_t self) {
    const Node& n = t.node(self);
    straight_through_backward(n.grad, t.gradient_sink(n.inputs[0]), n.shape.numel());
}
}  // namespace detail

/// Absmax int8 fake quantization per token (row) with a straight-through gradient:
/// forward value gamma / 127 * clamp(round(127 x / gamma), -128, 127), gamma = max(max|x|, 1e-5)
/// per row. Shapes: x [tokens x features] (2-D view); the result has x's shape.
inline Var fake_quantize_int8_ste(Tape& tape, Var x) {
    Var y = tape.record(tape.shape(x), detail::straight_through_rule, {x});
    fake_quantize_int8<Int8<8, Granularity::per_token>>(tape.value(x), tape.value(y));
    return y;
}

/// Absmean ternary fake quantization with a straight-through gradient: forward value
/// delta * clamp(round(w / delta), -1, 1), delta = max(mean|w|, 1e-5) over the tensor
/// (Granularity::per_tensor) or each row (Granularity::per_row).
/// Shapes: w [out x in]; the result has w's shape.
inline Var fake_quantize_ternary_ste(Tape& tape, Var w,
                                     Granularity granularity = Granularity::per_tensor) {
    BITDISTILL_REQUIRE(granularity == Granularity::per_tensor || granularity == Granularity::per_row,
                       "fake_quantize_ternary_ste: weight scales are per_tensor or per_row");
    Var y = tape.record(tape.shape(w), detail::straight_through_rule, {w});
    if (granularity == Granularity::per_tensor)
        fake_quantize_ternary<Ternary<2, Granularity::per_tensor>>(tape.value(w), tape.value(y));
    else
        fake_quantize_ternary<Ternary<2, Granularity::per_row>>(tape.value(w), tape.value(y));
    return y;
}

}  // namespace bitdistill::autodiff
