// BitLinear: a projection with latent float weights whose forward pass uses absmean ternary
// weights and absmax int8 activations per token, and whose backward pass is the
// straight-through estimator of the BitNet training code:
//   x_q = x + (q(x) - x).detach(),  w_q = w + (q(w) - w).detach(),  y = x_q w_q^T,
// so dx = dy W_deq and dW = dy^T X_deq, with W_deq and X_deq the dequantized values.
#pragma once

#include <algorithm>
#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/core/encoding.hpp"
#include "bitdistill/kernels/ternary_matmul.hpp"
#include "bitdistill/quant/qtensor.hpp"
#include "bitdistill/quant/quantize_int8.hpp"
#include "bitdistill/quant/quantize_ternary.hpp"
#include "bitdistill/quant/rounding.hpp"

namespace bitdistill::nn {

struct BitLinearOptions {
    /// Scale of the ternary weights: one per tensor (the default of the BitNet code) or one
    /// per output row.
    Granularity weight_granularity = Granularity::per_tensor;
    /// True: the forward product runs on the packed ternary x int8 kernel of deployment
    /// (exact int32 sums), so training gets the deployed model's outputs bit for bit.
    /// False: the float fake-quant product X_deq W_deq^T, equal up to float rounding.
    bool integer_kernel = true;
};

/// Quantizes x per token and w with absmean scales and writes their dequantized values.
/// Shapes: x, x_deq [tokens x in]; w, w_deq [out x in].
inline void bitlinear_quantize(TensorView<const float> x, TensorView<const float> w,
                               const BitLinearOptions& options, TensorView<float> x_deq,
                               TensorView<float> w_deq) {
    fake_quantize_int8<Int8<8, Granularity::per_token>>(x, x_deq);
    if (options.weight_granularity == Granularity::per_row)
        fake_quantize_ternary<Ternary<2, Granularity::per_row>>(w, w_deq);
    else
        fake_quantize_ternary<Ternary<2, Granularity::per_tensor>>(w, w_deq);
}

/// y = X_deq W_deq^T in float (the fake-quant forward).
/// Shapes: x_deq [tokens x in], w_deq [out x in], y [tokens x out].
inline void bitlinear_forward(const float* x_deq, const float* w_deq, float* y,
                              std::int64_t tokens, std::int64_t in, std::int64_t out) {
    autodiff::linear_forward(x_deq, w_deq, y, tokens, in, out);
}

/// y = (gamma_t / 127) delta_r float(sum_k xq[t, k] wq[r, k]) on the integer kernel, with
/// xq, wq the int8 and ternary codes of x and w, which are stored in `x_codes` and
/// `w_codes` (reused between calls). X_deq and W_deq are written for the backward pass
/// unless their view is empty (no gradient needs them).
/// Shapes: x, x_deq [tokens x in]; w, w_deq [out x in]; y [tokens x out].
template <class WeightEnc>
void bitlinear_forward_integer(TensorView<const float> x, TensorView<const float> w,
                               QTensor<Int8<8, Granularity::per_token>>& x_codes,
                               QTensor<WeightEnc>& w_codes, TensorView<float> x_deq,
                               TensorView<float> w_deq, TensorView<float> y) {
    quantize_int8_into(x, x_codes);
    quantize_ternary_into(w, w_codes);
    matmul_into(w_codes, x_codes, y);

    // X_deq = code * scale per token, as dequantize_into computes it, over the threads.
    const std::int64_t in = x_codes.cols();
    if (x_deq.data() != nullptr) parallel_for(x_codes.rows(), 16, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t t = first; t < last; ++t) {
            const std::int8_t* codes = x_codes.row(t);
            const float scale = x_codes.scale(t);
            float* out = x_deq.row(t);
            for (std::int64_t j = 0; j < in; ++j) out[j] = static_cast<float>(codes[j]) * scale;
        }
    });
    // W_deq = delta * clamp(round(w * (1 / delta)), -1, 1) with the scales just computed:
    // the quantizer's own formula, so it equals dequantize(w_codes) bit for bit, evaluated
    // from the float weights instead of decoding the packed codes.
    if (w_deq.data() != nullptr) {
        const std::int64_t cols = w.cols();
        parallel_for(w.rows(), 16, [&](std::int64_t first, std::int64_t last) {
            for (std::int64_t r = first; r < last; ++r) {
                const float delta = w_codes.scale(r);
                const float inverse_delta = 1.0f / delta;
                const float* source = w.row(r);
                float* out = w_deq.row(r);
                for (std::int64_t j = 0; j < cols; ++j) {
                    // Adding +0 turns a -0 (which nearbyint, the fallback of round_half_even,
                    // returns for small negatives) into +0, as the integer code does.
                    const float code = round_half_even(std::clamp(source[j] * inverse_delta, -1.0f, 1.0f)) + 0.0f;
                    out[j] = code * delta;
                }
            }
        });
    }
}

/// Straight-through backward: dx += dy W_deq, dW += dy^T X_deq.
inline void bitlinear_backward(const float* x_deq, const float* w_deq, const float* dy,
                               std::int64_t tokens, std::int64_t in, std::int64_t out,
                               const autodiff::GradientSink& dx, const autodiff::GradientSink& dw) {
    autodiff::linear_backward(x_deq, w_deq, dy, tokens, in, out, dx, dw);
}

/// The ternary forward of one projection. It keeps its quantization buffers between steps.
class BitLinear {
public:
    BitLinear() = default;
    explicit BitLinear(const BitLinearOptions& options) : options_(options) {}

    void set_options(const BitLinearOptions& options) {
        BITDISTILL_REQUIRE(options.weight_granularity == Granularity::per_tensor ||
                               options.weight_granularity == Granularity::per_row,
                           "BitLinear: weight scales are per_tensor or per_row");
        options_ = options;
    }
    [[nodiscard]] const BitLinearOptions& options() const noexcept { return options_; }

    /// y = q(x) q(w)^T with a straight-through backward. Shapes: x [tokens x in] (2-D view),
    /// w [out x in]; the result is [tokens x out].
    autodiff::Var forward(autodiff::Tape& tape, autodiff::Var x, autodiff::Var w) {
        using autodiff::Node;
        using autodiff::Tape;
        const Shape sx = tape.shape(x);
        const Shape sw = tape.shape(w);
        BITDISTILL_REQUIRE_AS(shape_error, sw.rank() == 2 && sx.cols() == sw[1], "BitLinear: input ",
                              sx.to_string(), " does not match weight ", sw.to_string(),
                              " (expected [out x ", sx.cols(), "])");
        const std::int64_t tokens = sx.rows();
        const std::int64_t in = sx.cols();
        const std::int64_t out = sw[0];

        autodiff::Var y = tape.record(Shape{tokens, out}, [](Tape& t, std::int32_t self) {
            const Node& n = t.node(self);
            const autodiff::GradientSink dx = t.gradient_sink(n.inputs[0]);
            const autodiff::GradientSink dw = t.gradient_sink(n.inputs[1]);
            bitlinear_backward(n.saved[0].data(), n.saved[1].data(), n.grad, n.integers[0],
                               n.integers[1], n.integers[2], dx, dw);
        }, {x, w});
        tape.node(y).integers = {tokens, in, out};
        // dW needs X_deq and dx needs W_deq; the fake-quant forward needs both.
        const bool fake = !options_.integer_kernel;
        const bool want_x_deq = fake || (tape.requires_grad(y) && tape.requires_grad(w));
        const bool want_w_deq = fake || (tape.requires_grad(y) && tape.requires_grad(x));
        TensorView<float> x_deq;
        TensorView<float> w_deq;
        if (want_x_deq) x_deq = TensorView<float>(tape.saved(y, 0, tokens * in), Shape{tokens, in});
        if (want_w_deq) w_deq = TensorView<float>(tape.saved(y, 1, out * in), Shape{out, in});
        const TensorView<const float> x_value = tape.value(x).reshaped(Shape{tokens, in});
        const TensorView<const float> w_value = tape.value(w);
        if (!options_.integer_kernel) {
            bitlinear_quantize(x_value, w_value, options_, x_deq, w_deq);
            bitlinear_forward(x_deq.data(), w_deq.data(), tape.value(y).data(), tokens, in, out);
        } else if (options_.weight_granularity == Granularity::per_row) {
            bitlinear_forward_integer(x_value, w_value, x_codes_, w_codes_per_row_, x_deq, w_deq, tape.value(y));
        } else {
            bitlinear_forward_integer(x_value, w_value, x_codes_, w_codes_per_tensor_, x_deq, w_deq, tape.value(y));
        }
        return y;
    }

private:
    BitLinearOptions options_;
    QTensor<Int8<8, Granularity::per_token>> x_codes_;
    QTensor<Ternary<2, Granularity::per_tensor>> w_codes_per_tensor_;
    QTensor<Ternary<2, Granularity::per_row>> w_codes_per_row_;
};

}  // namespace bitdistill::nn
