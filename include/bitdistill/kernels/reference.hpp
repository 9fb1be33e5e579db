// Scalar reference twins of the ternary x int8 products. They unpack the weights with
// unpack_ternary, which has its own tests against pack_ternary and the layout, and multiply
// element by element. The tests compare every kernel path with them bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/quant/packing.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill {

namespace kernels::detail {

template <class WeightTensor, class ActivationTensor, class Output>
void check_ternary_matmul_shapes(const char* operation, const WeightTensor& w,
                                 const ActivationTensor& x, TensorView<Output> y) {
    BITDISTILL_REQUIRE_AS(shape_error, x.cols() == w.cols(), operation, ": activations [",
                          x.rows(), ", ", x.cols(), "] do not fit weights [", w.rows(), ", ",
                          w.cols(), "]; their column counts must match");
    BITDISTILL_REQUIRE_AS(shape_error, y.rows() == x.rows() && y.cols() == w.rows(), operation,
                          ": output ", y.shape().to_string(), " should be [", x.rows(), ", ",
                          w.rows(), "] for activations [", x.rows(), ", ", x.cols(),
                          "] and weights [", w.rows(), ", ", w.cols(), "]");
}

}  // namespace kernels::detail

namespace kernels::detail {

/// Calls store(token, row, dot) with each exact dot product, computed in int64 from the
/// unpacked weights (|dot| <= 128 * cols <= 2^29, so it fits int32).
template <class WeightEnc, int A, Granularity Gx, class Store>
void ternary_dots_ref(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x, Store&& store) {
    const std::vector<std::int8_t> weights = unpack_ternary(w);
    const std::int64_t cols = w.cols();
    for (std::int64_t token = 0; token < x.rows(); ++token) {
        const std::int8_t* activations = x.row(token);
        for (std::int64_t row = 0; row < w.rows(); ++row) {
            const std::int8_t* weight_row = weights.data() + row * cols;
            std::int64_t sum = 0;
            for (std::int64_t col = 0; col < cols; ++col)
                sum += static_cast<std::int64_t>(activations[col]) * weight_row[col];
            store(token, row, static_cast<std::int32_t>(sum));
        }
    }
}

}  // namespace kernels::detail

/// Reference for matmul_int32_into: y[t][r] = sum_k x[t][k] * w[r][k], exact.
/// Shapes: w [out x in], x [tokens x in], y [tokens x out].
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_int32_into_ref(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                           TensorView<std::int32_t> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_int32_into_ref", w, x, y);
    kernels::detail::ternary_dots_ref(w, x, [&](std::int64_t token, std::int64_t row,
                                                std::int32_t dot) { y(token, row) = dot; });
}

/// Reference for matmul_into: y[t][r] = (sx[t] * sw[r]) * float(dot[t][r]), with the dot
/// product of matmul_int32_into_ref. Shapes: w [out x in], x [tokens x in], y [tokens x out].
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_into_ref(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                     TensorView<float> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_into_ref", w, x, y);
    kernels::detail::ternary_dots_ref(
        w, x, [&](std::int64_t token, std::int64_t row, std::int32_t dot) {
            y(token, row) = (x.scale(token) * w.scale(row)) * static_cast<float>(dot);
        });
}

}  // namespace bitdistill
