// Scalar reference twins of the ternary x int8 products. They read one element at a time
// through QTensor::value, so they depend on the byte layout only through that accessor;
// the tests compare every kernel path with them bit for bit.
#pragma once

#include <cstdint>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
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

/// Reference for matmul_int32_into: y[t][r] = sum_k x[t][k] * w[r][k] in int64, stored as
/// int32 (exact, since |y| <= 128 * cols <= 2^29).
/// Shapes: w [out x in], x [tokens x in], y [tokens x out].
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_int32_into_ref(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                           TensorView<std::int32_t> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_int32_into_ref", w, x, y);
    for (std::int64_t token = 0; token < x.rows(); ++token)
        for (std::int64_t row = 0; row < w.rows(); ++row) {
            std::int64_t sum = 0;
            for (std::int64_t col = 0; col < w.cols(); ++col)
                sum += static_cast<std::int64_t>(x.value(token, col)) * w.value(row, col);
            y(token, row) = static_cast<std::int32_t>(sum);
        }
}

/// Reference for matmul_into: y[t][r] = (sx[t] * sw[r]) * float(dot[t][r]), with the dot
/// product of matmul_int32_into_ref. Shapes: w [out x in], x [tokens x in], y [tokens x out].
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_into_ref(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                     TensorView<float> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_into_ref", w, x, y);
    for (std::int64_t token = 0; token < x.rows(); ++token)
        for (std::int64_t row = 0; row < w.rows(); ++row) {
            std::int64_t sum = 0;
            for (std::int64_t col = 0; col < w.cols(); ++col)
                sum += static_cast<std::int64_t>(x.value(token, col)) * w.value(row, col);
            y(token, row) = (x.scale(token) * w.scale(row)) *
                            static_cast<float>(static_cast<std::int32_t>(sum));
        }
}

}  // namespace bitdistill
