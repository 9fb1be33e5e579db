// Absmean ternary quantization of weights, its dequantization and its float twin.
//
// delta = max(mean |W|, 1e-5) over the whole tensor (per_tensor encodings) or over each
// row (per_row encodings); Wq = clamp(round(W * (1 / delta)), -1, 1), round half to even;
// value = Wq * delta. The reciprocal 1 / delta is computed once in float and then multiplied,
// as PyTorch BitNet implementations write it (for example rafacelente/bllama,
// quantization.py). In exact arithmetic this equals W / delta. The
// mean sums |W| in double in a fixed order, so the result does not depend on the thread
// count. Non-finite weights are rejected with numeric_error naming the row and column.
#pragma once

#include <algorithm>
#include <atomic>
#include <limits>
#include <cmath>
#include <cstdint>
#include <span>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/quant/packing.hpp"
#include "bitdistill/quant/qtensor.hpp"
#include "bitdistill/quant/rounding.hpp"

namespace bitdistill {

/// Smallest absmean or absmax scale; keeps an all-zero tensor from dividing by zero.
inline constexpr float min_quant_scale = 1e-5f;

namespace detail {

/// Throws numeric_error naming the first NaN or infinity in rows [first_row, last_row).
[[noreturn]] inline void throw_non_finite(const char* operation, TensorView<const float> tensor,
                                          std::int64_t first_row, std::int64_t last_row) {
    for (std::int64_t row = first_row; row < last_row; ++row)
        for (std::int64_t col = 0; col < tensor.cols(); ++col)
            if (!std::isfinite(tensor(row, col)))
                throw numeric_error(concat(operation, ": element (", row, ", ", col, ") of a ",
                                           tensor.shape().to_string(), " tensor is ",
                                           tensor(row, col), "; quantization needs finite input"));
    throw numeric_error(concat(operation, ": the sum of |x| over rows [", first_row, ", ",
                               last_row, ") overflowed"));
}

/// Sum of |values[i]| in double, in a fixed order: eight interleaved partial sums.
[[nodiscard]] inline double sum_abs(const float* values, std::int64_t count) noexcept {
    double partial[8] = {};
    std::int64_t i = 0;
    for (; i + 8 <= count; i += 8)
        for (int lane = 0; lane < 8; ++lane) partial[lane] += std::fabs(values[i + lane]);
    for (; i < count; ++i) partial[0] += std::fabs(values[i]);
    return ((partial[0] + partial[1]) + (partial[2] + partial[3])) +
           ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

/// Absmean delta of row `row` of `w`: max(mean |w(row, :)|, min_quant_scale), or NaN if
/// the row contains a NaN or an infinity.
[[nodiscard]] inline float row_absmean(TensorView<const float> w, std::int64_t row) noexcept {
    const double total = sum_abs(w.row(row), w.cols());
    if (!std::isfinite(total)) return std::numeric_limits<float>::quiet_NaN();
    const double count = static_cast<double>(std::max<std::int64_t>(w.cols(), 1));
    return std::max(static_cast<float>(total / count), min_quant_scale);
}

/// Writes the absmean delta of `w` into `scales`: one for per_tensor, one per row for per_row.
template <Granularity G>
void absmean_scales(TensorView<const float> w, std::span<float> scales, const char* operation) {
    const std::int64_t rows = w.rows();
    const std::int64_t cols = w.cols();
    if constexpr (G == Granularity::per_tensor) {
        double total = 0.0;
        for (std::int64_t row = 0; row < rows; ++row) total += sum_abs(w.row(row), cols);
        if (!std::isfinite(total)) throw_non_finite(operation, w, 0, rows);
        const double count = static_cast<double>(std::max<std::int64_t>(rows * cols, 1));
        scales[0] = std::max(static_cast<float>(total / count), min_quant_scale);
    } else {
        for (std::int64_t row = 0; row < rows; ++row) {
            const float delta = row_absmean(w, row);
            if (std::isnan(delta)) throw_non_finite(operation, w, row, row + 1);
            scales[static_cast<std::size_t>(row)] = delta;
        }
    }
}

/// Code w + 1 in {0, 1, 2} of weight `weight` under the reciprocal scale `inverse_delta`.
[[nodiscard]] inline std::uint8_t ternary_code(float weight, float inverse_delta) noexcept {
    const float scaled = std::clamp(weight * inverse_delta, -1.0f, 1.0f);
    return static_cast<std::uint8_t>(static_cast<int>(round_half_even(scaled)) + 1);
}

}  // namespace detail

/// Quantizes the weights `w` [rows x cols] (any rank; the last axis is the columns) into
/// `dst` with absmean scales. Reuses the storage of `dst` when its shape is unchanged, so a
/// training step that calls it every step allocates nothing after the first.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
void quantize_ternary_into(TensorView<const float> w, QTensor<Enc>& dst) {
    constexpr const char* operation = "quantize_ternary";
    detail::QTensorAccess::set_shape(dst, w.rows(), w.cols());
    auto& scales = detail::QTensorAccess::scales(dst);
    detail::absmean_scales<Enc::granularity>(
        w, std::span<float>(scales.data(), scales.size()), operation);

    const std::int64_t cols = w.cols();
    detail::pack_ternary_codes(dst, [&](std::int64_t row, std::int64_t first_col,
                                        std::int64_t count, std::uint8_t* codes) {
        const float inverse_delta = 1.0f / dst.scale(row);
        const float* source = w.data() + row * cols + first_col;
        for (std::int64_t i = 0; i < count; ++i)
            codes[i] = detail::ternary_code(source[i], inverse_delta);
    });
}

/// Returns the absmean ternary quantization of `w`; see quantize_ternary_into.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
[[nodiscard]] QTensor<Enc> quantize_ternary(TensorView<const float> w) {
    QTensor<Enc> quantized;
    quantize_ternary_into(w, quantized);
    return quantized;
}

/// Writes value(r, c) = w(r, c) * scale(r) of the ternary tensor `q` into `out`, which must
/// have q.rows() rows and q.cols() columns.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
void dequantize_into(const QTensor<Enc>& q, TensorView<float> out) {
    BITDISTILL_REQUIRE_AS(shape_error, out.rows() == q.rows() && out.cols() == q.cols(),
                          "dequantize: output shape ", out.shape().to_string(),
                          " does not match the encoded shape [", q.rows(), ", ", q.cols(), "]");
    for (std::int64_t row = 0; row < q.rows(); ++row) {
        const float scale = q.scale(row);
        for (std::int64_t col = 0; col < q.cols(); ++col)
            out(row, col) = static_cast<float>(q.value(row, col)) * scale;
    }
}

/// Returns the dequantized ternary tensor [rows x cols].
template <class Enc>
    requires is_ternary_encoding_v<Enc>
[[nodiscard]] Tensor<float> dequantize(const QTensor<Enc>& q) {
    Tensor<float> out(Shape{q.rows(), q.cols()});
    dequantize_into(q, out.view());
    return out;
}

/// Writes the dequantized absmean ternary quantization of `w` into `out` (same shape as
/// `w`) without packing: out equals dequantize(quantize_ternary<Enc>(w)) bit for bit. Enc
/// only selects the granularity, so Ternary<2, G> and Ternary1_6<G> give the same result.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
void fake_quantize_ternary(TensorView<const float> w, TensorView<float> out) {
    constexpr const char* operation = "fake_quantize_ternary";
    require_same_shape(w.shape(), out.shape(), operation);
    float tensor_delta = 0.0f;
    if constexpr (Enc::granularity == Granularity::per_tensor)
        detail::absmean_scales<Granularity::per_tensor>(w, std::span<float>(&tensor_delta, 1),
                                                        operation);

    const std::int64_t rows = w.rows();
    const std::int64_t cols = w.cols();
    // An exception must not leave the parallel region, so a bad row is recorded and
    // reported after it.
    std::atomic<std::int64_t> first_bad_row{rows};
    const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, cols));
    parallel_for(rows, grain, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t row = first; row < last; ++row) {
            float delta = tensor_delta;
            if constexpr (Enc::granularity == Granularity::per_row) {
                delta = detail::row_absmean(w, row);
                if (std::isnan(delta)) {
                    std::int64_t seen = first_bad_row.load();
                    while (row < seen && !first_bad_row.compare_exchange_weak(seen, row)) {
                    }
                    continue;
                }
            }
            const float inverse_delta = 1.0f / delta;
            const float* source = w.row(row);
            float* target = out.row(row);
            for (std::int64_t col = 0; col < cols; ++col) {
                const int code = detail::ternary_code(source[col], inverse_delta);
                target[col] = static_cast<float>(code - 1) * delta;
            }
        }
    });
    if (first_bad_row.load() < rows)
        detail::throw_non_finite(operation, w, first_bad_row.load(), rows);
}

/// Returns the dequantized absmean ternary quantization of `w` as a float tensor of the
/// same shape; see the overload with an output view.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
[[nodiscard]] Tensor<float> fake_quantize_ternary(TensorView<const float> w) {
    Tensor<float> out(w.shape());
    fake_quantize_ternary<Enc>(w, out.view());
    return out;
}

}  // namespace bitdistill
