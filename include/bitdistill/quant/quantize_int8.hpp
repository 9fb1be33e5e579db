// Absmax int8 quantization of activations, its dequantization and its float twin.
//
// For Int8<A, G> with Qmax = 2^(A-1) - 1 (127 for A = 8): gamma = max(max |x|, 1e-5) over
// each row (per_token and per_row encodings) or the whole tensor (per_tensor);
// xq = clamp(round(x * (Qmax / gamma)), -Qmax - 1, Qmax), round half to even;
// value = xq * (gamma / Qmax), which is the stored scale. The factor Qmax / gamma is computed
// once in float and then multiplied, as PyTorch BitNet implementations write it (for example
// rafacelente/bllama, quantization.py). In exact arithmetic this equals Qmax * x / gamma. Because |x| <= gamma, finite input never reaches the code -Qmax - 1
// (-128 for A = 8): the clamp only guards against rounding. Non-finite input is rejected
// with numeric_error naming the row and column.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/quant/qtensor.hpp"
#include "bitdistill/quant/quantize_ternary.hpp"
#include "bitdistill/quant/rounding.hpp"

namespace bitdistill {

namespace detail {

/// Largest magnitude_bits of values[0, count): the bit pattern of max |x| when it is
/// below infinity_bits, otherwise a sign that a NaN or an infinity is present.
[[nodiscard]] inline std::uint32_t max_magnitude_bits(const float* values,
                                                      std::int64_t count) noexcept {
    std::uint32_t largest = 0;
    for (std::int64_t i = 0; i < count; ++i) largest = std::max(largest, magnitude_bits(values[i]));
    return largest;
}

/// gamma = max(max |x|, min_quant_scale) from the result of max_magnitude_bits.
[[nodiscard]] inline float absmax_gamma(std::uint32_t largest_bits) noexcept {
    return std::max(std::bit_cast<float>(largest_bits), min_quant_scale);
}

/// Quantizes one row of `count` floats to codes of at most `max_code` in magnitude
/// (-max_code - 1 is allowed by the clamp) and returns the exact sum of the codes.
[[nodiscard]] inline std::int32_t quantize_row_int8(const float* source, std::int64_t count,
                                                    float factor, float max_code,
                                                    std::int8_t* codes) noexcept {
    std::int32_t sum = 0;
    for (std::int64_t i = 0; i < count; ++i) {
        const float scaled = std::clamp(source[i] * factor, -max_code - 1.0f, max_code);
        const auto code = static_cast<std::int32_t>(round_half_even(scaled));
        codes[i] = static_cast<std::int8_t>(code);
        sum += code;
    }
    return sum;
}

/// Records `row` in `first_bad_row` if it is smaller than the row stored there.
inline void record_bad_row(std::atomic<std::int64_t>& first_bad_row, std::int64_t row) noexcept {
    std::int64_t seen = first_bad_row.load();
    while (row < seen && !first_bad_row.compare_exchange_weak(seen, row)) {
    }
}

}  // namespace detail

/// Quantizes the activations `x` [tokens x features] (any rank; the last axis is the
/// features) into `dst` with absmax scales. Reuses the storage of `dst` when its shape is
/// unchanged, so calling it every step allocates nothing after the first call.
template <class Enc>
    requires is_int8_encoding_v<Enc>
void quantize_int8_into(TensorView<const float> x, QTensor<Enc>& dst) {
    constexpr const char* operation = "quantize_int8";
    constexpr float max_code = static_cast<float>(Enc::max_value);
    const std::int64_t rows = x.rows();
    const std::int64_t cols = x.cols();
    detail::QTensorAccess::set_shape(dst, rows, cols);
    auto& codes = detail::QTensorAccess::codes(dst);
    auto& row_sums = detail::QTensorAccess::row_sums(dst);
    auto& scales = detail::QTensorAccess::scales(dst);
    const std::int64_t stride = dst.stride();

    float tensor_gamma = 0.0f;
    if constexpr (Enc::granularity == Granularity::per_tensor) {
        std::uint32_t largest = 0;
        for (std::int64_t row = 0; row < rows; ++row)
            largest = std::max(largest, detail::max_magnitude_bits(x.row(row), cols));
        if (largest >= detail::infinity_bits) detail::throw_non_finite(operation, x, 0, rows);
        tensor_gamma = detail::absmax_gamma(largest);
        scales[0] = tensor_gamma / max_code;
    }

    // An exception must not leave the parallel region, so a bad row is recorded and
    // reported after it.
    std::atomic<std::int64_t> first_bad_row{rows};
    const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, cols));
    parallel_for(rows, grain, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t row = first; row < last; ++row) {
            float gamma = tensor_gamma;
            if constexpr (Enc::granularity != Granularity::per_tensor) {
                const std::uint32_t largest = detail::max_magnitude_bits(x.row(row), cols);
                if (largest >= detail::infinity_bits) {
                    detail::record_bad_row(first_bad_row, row);
                    continue;
                }
                gamma = detail::absmax_gamma(largest);
                scales[static_cast<std::size_t>(row)] = gamma / max_code;
            }
            std::int8_t* row_codes = codes.data() + row * stride;
            row_sums[static_cast<std::size_t>(row)] =
                detail::quantize_row_int8(x.row(row), cols, max_code / gamma, max_code, row_codes);
            std::fill(row_codes + cols, row_codes + stride, std::int8_t{0});
        }
    });
    if (first_bad_row.load() < rows)
        detail::throw_non_finite(operation, x, first_bad_row.load(), rows);
}

/// Returns the absmax int8 quantization of `x`; see quantize_int8_into.
template <class Enc = Int8<8, Granularity::per_token>>
    requires is_int8_encoding_v<Enc>
[[nodiscard]] QTensor<Enc> quantize_int8(TensorView<const float> x) {
    QTensor<Enc> quantized;
    quantize_int8_into(x, quantized);
    return quantized;
}

/// Writes value(r, c) = code(r, c) * scale(r) of `q` into `out` [rows x cols].
template <class Enc>
    requires is_int8_encoding_v<Enc>
void dequantize_into(const QTensor<Enc>& q, TensorView<float> out) {
    BITDISTILL_REQUIRE_AS(shape_error, out.rows() == q.rows() && out.cols() == q.cols(),
                          "dequantize: output shape ", out.shape().to_string(),
                          " does not match the encoded shape [", q.rows(), ", ", q.cols(), "]");
    for (std::int64_t row = 0; row < q.rows(); ++row) {
        const float scale = q.scale(row);
        const std::int8_t* codes = q.row(row);
        for (std::int64_t col = 0; col < q.cols(); ++col)
            out(row, col) = static_cast<float>(codes[col]) * scale;
    }
}

/// Returns the dequantized int8 tensor [rows x cols].
template <class Enc>
    requires is_int8_encoding_v<Enc>
[[nodiscard]] Tensor<float> dequantize(const QTensor<Enc>& q) {
    Tensor<float> out(Shape{q.rows(), q.cols()});
    dequantize_into(q, out.view());
    return out;
}

/// Writes the dequantized absmax quantization of `x` into `out` (same shape as `x`) without
/// storing codes: out equals dequantize(quantize_int8<Enc>(x)) bit for bit.
template <class Enc = Int8<8, Granularity::per_token>>
    requires is_int8_encoding_v<Enc>
void fake_quantize_int8(TensorView<const float> x, TensorView<float> out) {
    constexpr const char* operation = "fake_quantize_int8";
    constexpr float max_code = static_cast<float>(Enc::max_value);
    require_same_shape(x.shape(), out.shape(), operation);
    const std::int64_t rows = x.rows();
    const std::int64_t cols = x.cols();

    float tensor_gamma = 0.0f;
    if constexpr (Enc::granularity == Granularity::per_tensor) {
        std::uint32_t largest = 0;
        for (std::int64_t row = 0; row < rows; ++row)
            largest = std::max(largest, detail::max_magnitude_bits(x.row(row), cols));
        if (largest >= detail::infinity_bits) detail::throw_non_finite(operation, x, 0, rows);
        tensor_gamma = detail::absmax_gamma(largest);
    }

    std::atomic<std::int64_t> first_bad_row{rows};
    const std::int64_t grain = std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(1, cols));
    parallel_for(rows, grain, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t row = first; row < last; ++row) {
            float gamma = tensor_gamma;
            if constexpr (Enc::granularity != Granularity::per_tensor) {
                const std::uint32_t largest = detail::max_magnitude_bits(x.row(row), cols);
                if (largest >= detail::infinity_bits) {
                    detail::record_bad_row(first_bad_row, row);
                    continue;
                }
                gamma = detail::absmax_gamma(largest);
            }
            const float factor = max_code / gamma;
            const float scale = gamma / max_code;
            const float* source = x.row(row);
            float* target = out.row(row);
            for (std::int64_t col = 0; col < cols; ++col) {
                const float scaled = std::clamp(source[col] * factor, -max_code - 1.0f, max_code);
                // Through int, as dequantize does, so that -0.5 gives +0, not -0.
                const auto code = static_cast<std::int32_t>(round_half_even(scaled));
                target[col] = static_cast<float>(code) * scale;
            }
        }
    });
    if (first_bad_row.load() < rows)
        detail::throw_non_finite(operation, x, first_bad_row.load(), rows);
}

/// Returns the dequantized absmax quantization of `x` as a float tensor of the same shape.
template <class Enc = Int8<8, Granularity::per_token>>
    requires is_int8_encoding_v<Enc>
[[nodiscard]] Tensor<float> fake_quantize_int8(TensorView<const float> x) {
    Tensor<float> out(x.shape());
    fake_quantize_int8<Enc>(x, out.view());
    return out;
}

}  // namespace bitdistill
