// Packing ternary values {-1, 0, +1} into the 2-bit and 1.6-bit layouts of QTensor, and
// unpacking them again. The layouts are described in quant/qtensor.hpp.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill {

template <class T>
struct is_ternary1_6_encoding : std::false_type {};
template <Granularity G>
struct is_ternary1_6_encoding<Ternary1_6<G>> : std::true_type {};
template <class T>
inline constexpr bool is_ternary1_6_encoding_v = is_ternary1_6_encoding<T>::value;

namespace detail {

/// Writes the codes of every weight of `dst`, which already has its shape.
/// `fill_codes(row, first_col, count, codes)` stores the codes w + 1 in {0, 1, 2} of
/// columns [first_col, first_col + count) of row `row` (row < rows(), first_col + count <=
/// cols()) into `codes`; it is called from several threads at once. Padding rows and
/// columns get code 1 (weight 0). Allocates nothing.
template <class Enc, class FillCodes>
void pack_ternary_codes(QTensor<Enc>& dst, const FillCodes& fill_codes) {
    using Packed = QTensor<Enc>;
    constexpr std::int64_t fields = Packed::chunk_cols / 4;  // 4 (2-bit) or 5 (1.6-bit)
    // Columns handled per call of fill_codes: whole chunks of either format.
    constexpr std::int64_t block_cols = 320;
    static_assert(block_cols % Packed::chunk_cols == 0);
    const std::int64_t rows = dst.rows();
    const std::int64_t cols = dst.cols();
    const std::int64_t chunks = dst.chunks();
    std::uint8_t* bytes = QTensorAccess::bytes(dst).data();

    const std::int64_t grain = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(1, cols));
    parallel_for(dst.groups(), grain, [&](std::int64_t group_first, std::int64_t group_last) {
        std::uint8_t codes[block_cols];
        for (std::int64_t group = group_first; group < group_last; ++group) {
            for (std::int64_t row_in_group = 0; row_in_group < Packed::group_rows; ++row_in_group) {
                const std::int64_t row = group * Packed::group_rows + row_in_group;
                for (std::int64_t first_col = 0; first_col < chunks * Packed::chunk_cols;
                     first_col += block_cols) {
                    const std::int64_t count =
                        row < rows ? std::clamp<std::int64_t>(cols - first_col, 0, block_cols) : 0;
                    if (count > 0) fill_codes(row, first_col, count, codes);
                    for (std::int64_t i = count; i < block_cols; ++i) codes[i] = 1;

                    const std::int64_t first_chunk = first_col / Packed::chunk_cols;
                    const std::int64_t last_chunk =
                        std::min(chunks, first_chunk + block_cols / Packed::chunk_cols);
                    for (std::int64_t chunk = first_chunk; chunk < last_chunk; ++chunk) {
                        const std::uint8_t* chunk_codes =
                            codes + (chunk - first_chunk) * Packed::chunk_cols;
                        std::uint8_t* out = bytes + (group * chunks + chunk) * Packed::chunk_bytes +
                                            4 * row_in_group;
                        for (std::int64_t lane = 0; lane < 4; ++lane) {
                            if constexpr (fields == 4) {
                                out[lane] = static_cast<std::uint8_t>(
                                    chunk_codes[lane] | (chunk_codes[4 + lane] << 2) |
                                    (chunk_codes[8 + lane] << 4) | (chunk_codes[12 + lane] << 6));
                            } else {
                                const std::uint8_t trits[5] = {
                                    chunk_codes[lane], chunk_codes[4 + lane], chunk_codes[8 + lane],
                                    chunk_codes[12 + lane], chunk_codes[16 + lane]};
                                out[lane] = encode_trits5(trits);
                            }
                        }
                    }
                }
            }
        }
    });
}

}  // namespace detail

/// Packs row-major ternary `values` [rows x cols] with their `scales` (1 for a per_tensor
/// encoding, rows for per_row) into the storage of `Enc` (Ternary<2, G> or Ternary1_6<G>).
/// Throws std::invalid_argument if a value is outside {-1, 0, 1} or a size does not match.
template <class Enc>
    requires is_ternary_encoding_v<Enc>
[[nodiscard]] QTensor<Enc> pack_ternary(std::span<const std::int8_t> values, std::int64_t rows,
                                        std::int64_t cols, std::span<const float> scales) {
    QTensor<Enc> packed(rows, cols);
    BITDISTILL_REQUIRE(static_cast<std::int64_t>(values.size()) == rows * cols, "pack_ternary: ",
                       values.size(), " values for shape [", rows, ", ", cols, "]");
    BITDISTILL_REQUIRE(scales.size() == packed.scales().size(), "pack_ternary: ", scales.size(),
                       " scales, expected ", packed.scales().size(), " for ", Enc::name);
    for (std::size_t i = 0; i < values.size(); ++i) {
        BITDISTILL_REQUIRE(values[i] >= -1 && values[i] <= 1, "pack_ternary: value ",
                           int{values[i]}, " at (", static_cast<std::int64_t>(i) / cols, ", ",
                           static_cast<std::int64_t>(i) % cols, ") is not in {-1, 0, 1}");
    }
    detail::pack_ternary_codes(packed, [&](std::int64_t row, std::int64_t first_col,
                                           std::int64_t count, std::uint8_t* codes) {
        const std::int8_t* source = values.data() + row * cols + first_col;
        for (std::int64_t i = 0; i < count; ++i)
            codes[i] = static_cast<std::uint8_t>(source[i] + 1);
    });
    auto& packed_scales = detail::QTensorAccess::scales(packed);
    for (std::size_t i = 0; i < scales.size(); ++i) packed_scales[i] = scales[i];
    return packed;
}

/// Writes the ternary values of `packed` to `values`, row-major [rows x cols].
template <class Enc>
    requires is_ternary_encoding_v<Enc>
void unpack_ternary(const QTensor<Enc>& packed, std::span<std::int8_t> values) {
    using Packed = QTensor<Enc>;
    constexpr std::int64_t fields = Packed::chunk_cols / 4;
    const std::int64_t rows = packed.rows();
    const std::int64_t cols = packed.cols();
    BITDISTILL_REQUIRE(static_cast<std::int64_t>(values.size()) == rows * cols,
                       "unpack_ternary: output holds ", values.size(), " values, expected ",
                       rows * cols);
    for (std::int64_t row = 0; row < rows; ++row) {
        const std::int64_t group = row / Packed::group_rows;
        const std::int64_t row_in_group = row % Packed::group_rows;
        for (std::int64_t chunk = 0; chunk < packed.chunks(); ++chunk) {
            const std::uint8_t* in = packed.chunk(group, chunk) + 4 * row_in_group;
            for (std::int64_t lane = 0; lane < 4; ++lane) {
                std::uint8_t codes[5];
                if constexpr (fields == 4) {
                    for (int field = 0; field < 4; ++field)
                        codes[field] = static_cast<std::uint8_t>((in[lane] >> (2 * field)) & 3);
                } else {
                    decode_trits5(in[lane], codes);
                }
                for (std::int64_t field = 0; field < fields; ++field) {
                    const std::int64_t col = chunk * Packed::chunk_cols + 4 * field + lane;
                    if (col < cols)
                        values[static_cast<std::size_t>(row * cols + col)] =
                            static_cast<std::int8_t>(codes[field] - 1);
                }
            }
        }
    }
}

/// Returns the ternary values of `packed`, row-major [rows x cols].
template <class Enc>
    requires is_ternary_encoding_v<Enc>
[[nodiscard]] std::vector<std::int8_t> unpack_ternary(const QTensor<Enc>& packed) {
    std::vector<std::int8_t> values(static_cast<std::size_t>(packed.rows() * packed.cols()));
    unpack_ternary(packed, std::span<std::int8_t>(values));
    return values;
}

/// Repacks ternary weights from one storage to another (for example 2-bit to 1.6-bit),
/// keeping the values and the scales. Both encodings must have the same granularity.
template <class To, class From>
    requires is_ternary_encoding_v<To> && is_ternary_encoding_v<From>
[[nodiscard]] QTensor<To> convert_ternary(const QTensor<From>& packed) {
    static_assert(To::granularity == From::granularity,
                  "convert_ternary: both encodings must have the same scale granularity");
    QTensor<To> converted(packed.rows(), packed.cols());
    detail::pack_ternary_codes(converted, [&](std::int64_t row, std::int64_t first_col,
                                              std::int64_t count, std::uint8_t* codes) {
        for (std::int64_t i = 0; i < count; ++i)
            codes[i] = static_cast<std::uint8_t>(packed.value(row, first_col + i) + 1);
    });
    auto& scales = detail::QTensorAccess::scales(converted);
    for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = packed.scales()[i];
    return converted;
}

}  // namespace bitdistill
