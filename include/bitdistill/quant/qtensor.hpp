// Encoded 2-D tensors: packed ternary weights and int8 activations with their float scales.
//
// Every QTensor stores rows x cols logical elements and the scales such that
// value(r, c) = code_value(r, c) * scale(r or 0). The byte layouts below are part of the
// format: they are the same on every instruction set, and every kernel path reads the same
// bytes. Padding is internal; rows() and cols() are always the logical extents.
//
// Ternary<2, G> (2 bits a weight). Rows are padded to a multiple of 16 (a row group) and
// columns to a multiple of 16 (a chunk). Each (row group g, chunk i) owns the 64 bytes at
// offset (g * chunks() + i) * 64. In those bytes, byte 4 * r + j (r in [0, 16), j in [0, 4))
// contains four 2-bit codes. Its bits [2k, 2k + 2) are the code of row 16 g + r, column
// 16 i + 4 k + j, for k in [0, 4). The code is w + 1 in {0, 1, 2}; padding holds code 1
// (weight 0). One 64-byte load therefore gives, for each field k, the four consecutive
// weights of 16 rows that one int32 lane of a dot-product instruction multiplies.
//
// Ternary1_6<G> (1.6 bits a weight). Rows are padded to a multiple of 16 and columns to a
// multiple of 20. Chunk (g, i) again owns 64 bytes at (g * chunks() + i) * 64, and byte
// 4 * r + j packs the five codes t_0..t_4 of row 16 g + r, columns 20 i + 4 k + j for
// k in [0, 5). With b = t_0 * 81 + t_1 * 27 + t_2 * 9 + t_3 * 3 + t_4 (so b <= 242), the
// byte stores q = ceil(b * 256 / 243). Then q / 256 approximates the base-3 fraction
// 0.t_0 t_1 t_2 t_3 t_4, and the digits come out of repeated multiplication by 3:
// t_k = floor(3 q_k / 256), q_{k+1} = 3 q_k mod 256, with q_0 = q. The ceiling makes this
// exact for all 243 byte values (a test checks every one), and floor(3 q / 256) equals
// [q >= 86] + [q >= 171], which SIMD code computes with two byte comparisons.
//
// Int8<A, G>. One signed byte a code, row-major, with a row stride of cols rounded up to a
// multiple of 320 (a multiple of 64 bytes, and of the 16 and 20 columns that one ternary
// chunk covers), so that a kernel never reads past a row. Padding codes are 0. Each row
// also stores the exact int32 sum of its codes, which the kernels use to remove the +1
// offset of the ternary codes: sum_k x_k (t_k - 1) = sum_k x_k t_k - sum_k x_k.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"

namespace bitdistill {

/// Largest column count of an encoded tensor. It keeps every int32 dot product exact:
/// |sum_k t_k x_k| <= 2 * 128 * 2^22 = 2^30 for codes t in {0, 1, 2} and x in [-128, 127].
inline constexpr std::int64_t max_encoded_cols = std::int64_t{1} << 22;

namespace detail {

[[nodiscard]] constexpr std::int64_t round_up(std::int64_t value, std::int64_t multiple) {
    return (value + multiple - 1) / multiple * multiple;
}

inline void require_encoded_shape(std::int64_t rows, std::int64_t cols, const char* type_name) {
    BITDISTILL_REQUIRE(rows >= 0 && cols >= 0, type_name, ": negative shape [", rows, ", ", cols,
                       "]");
    BITDISTILL_REQUIRE(cols <= max_encoded_cols, type_name, ": ", cols,
                       " columns exceed the limit of ", max_encoded_cols,
                       " that keeps int32 accumulation exact");
}

/// Grants the quantizers and packers write access to the storage of a QTensor.
struct QTensorAccess;

}  // namespace detail

/// 2-D tensor of elements in encoding `Enc`; see the specialisations.
template <class Enc>
class QTensor;

namespace detail {

/// Storage shared by the two ternary formats: 16-row groups of 64-byte chunks that each
/// cover `ChunkCols` columns, plus the scales.
template <class Enc, int ChunkCols, std::uint8_t ZeroByte>
class TernaryStorage {
    static_assert(Enc::granularity != Granularity::per_token,
                  "ternary weights take a per_tensor or per_row scale, not per_token");

public:
    using encoding = Enc;
    static constexpr Granularity granularity = Enc::granularity;
    /// Rows that share one chunk.
    static constexpr std::int64_t group_rows = 16;
    /// Columns that one chunk covers.
    static constexpr std::int64_t chunk_cols = ChunkCols;
    /// Bytes of one chunk.
    static constexpr std::int64_t chunk_bytes = 64;
    /// The byte whose every code means weight 0 (the padding value).
    static constexpr std::uint8_t zero_byte = ZeroByte;

    TernaryStorage() = default;
    /// All weights 0 and all scales 1.
    TernaryStorage(std::int64_t rows, std::int64_t cols) { reset(rows, cols); }

    /// Resizes to [rows x cols] with all weights 0 and all scales 1. Keeps the allocations
    /// when the padded sizes are unchanged.
    void reset(std::int64_t rows, std::int64_t cols) {
        set_shape(rows, cols);
        for (std::uint8_t& byte : bytes_) byte = zero_byte;
        for (float& scale : scales_) scale = 1.0f;
    }

    [[nodiscard]] std::int64_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::int64_t cols() const noexcept { return cols_; }
    /// Number of 16-row groups: rows rounded up to 16, divided by 16.
    [[nodiscard]] std::int64_t groups() const noexcept { return groups_; }
    /// Chunks per row group: cols rounded up to chunk_cols, divided by chunk_cols.
    [[nodiscard]] std::int64_t chunks() const noexcept { return chunks_; }
    [[nodiscard]] std::int64_t padded_rows() const noexcept { return groups_ * group_rows; }
    [[nodiscard]] std::int64_t padded_cols() const noexcept { return chunks_ * chunk_cols; }

    /// Packed bytes in the layout described at the top of this header.
    [[nodiscard]] const AlignedBuffer<std::uint8_t>& bytes() const noexcept { return bytes_; }
    /// The chunk of row group `group`, chunk index `chunk`.
    [[nodiscard]] const std::uint8_t* chunk(std::int64_t group, std::int64_t chunk) const noexcept {
        return bytes_.data() + (group * chunks_ + chunk) * chunk_bytes;
    }
    /// One scale (per_tensor) or one per row (per_row).
    [[nodiscard]] const AlignedBuffer<float>& scales() const noexcept { return scales_; }
    /// Scale of row `row`.
    [[nodiscard]] float scale(std::int64_t row) const noexcept {
        return granularity == Granularity::per_tensor ? scales_[0]
                                                      : scales_[static_cast<std::size_t>(row)];
    }
    /// Sets the scale of row `row`; for per_tensor, the one scale whatever `row` is.
    void set_scale(std::int64_t row, float scale) noexcept {
        scales_[granularity == Granularity::per_tensor ? 0 : static_cast<std::size_t>(row)] =
            scale;
    }

    /// Bytes of packed weights and scales: the memory the tensor needs.
    [[nodiscard]] std::size_t storage_bytes() const noexcept {
        return bytes_.size() + scales_.size() * sizeof(float);
    }

protected:
    friend struct QTensorAccess;

    /// Copies packed `bytes` and `scales` into the storage, which already has its shape.
    /// Throws std::invalid_argument if a size does not match or `is_valid(byte)` is false.
    template <class IsValidByte>
    void assign_packed(std::span<const std::uint8_t> bytes, std::span<const float> scales,
                       const IsValidByte& is_valid) {
        BITDISTILL_REQUIRE(bytes.size() == bytes_.size(), "QTensor<", Enc::name,
                           ">::from_bytes: ", bytes.size(), " bytes for shape [", rows_, ", ",
                           cols_, "], expected ", bytes_.size());
        BITDISTILL_REQUIRE(scales.size() == scales_.size(), "QTensor<", Enc::name,
                           ">::from_bytes: ", scales.size(), " scales, expected ", scales_.size());
        for (std::size_t i = 0; i < bytes.size(); ++i) {
            BITDISTILL_REQUIRE(is_valid(bytes[i]), "QTensor<", Enc::name, ">::from_bytes: byte ",
                               int{bytes[i]}, " at offset ", i, " is not a valid packed byte");
            bytes_[i] = bytes[i];
        }
        for (std::size_t i = 0; i < scales.size(); ++i) scales_[i] = scales[i];
    }

    /// Sets the shape and sizes the buffers, leaving their contents unspecified.
    void set_shape(std::int64_t rows, std::int64_t cols) {
        require_encoded_shape(rows, cols, Enc::name.data());
        rows_ = rows;
        cols_ = cols;
        groups_ = round_up(rows, group_rows) / group_rows;
        chunks_ = round_up(cols, chunk_cols) / chunk_cols;
        const auto byte_count = static_cast<std::size_t>(groups_ * chunks_ * chunk_bytes);
        if (bytes_.size() != byte_count) bytes_.assign_zero(byte_count);
        const auto scale_count =
            static_cast<std::size_t>(granularity == Granularity::per_tensor ? 1 : rows);
        if (scales_.size() != scale_count) scales_.assign_zero(scale_count);
    }

    /// Byte that contains the code of (row, col), and the position of the code inside it.
    struct CodeSlot {
        std::size_t byte;
        int field;
    };
    [[nodiscard]] CodeSlot slot(std::int64_t row, std::int64_t col) const noexcept {
        const std::int64_t group = row / group_rows;
        const std::int64_t row_in_group = row % group_rows;
        const std::int64_t chunk_index = col / chunk_cols;
        const std::int64_t col_in_chunk = col % chunk_cols;
        const std::int64_t byte = (group * chunks_ + chunk_index) * chunk_bytes +
                                  4 * row_in_group + col_in_chunk % 4;
        return {static_cast<std::size_t>(byte), static_cast<int>(col_in_chunk / 4)};
    }

    std::int64_t rows_ = 0;
    std::int64_t cols_ = 0;
    std::int64_t groups_ = 0;
    std::int64_t chunks_ = 0;
    AlignedBuffer<std::uint8_t> bytes_;
    AlignedBuffer<float> scales_;
};

}  // namespace detail

/// Encodes five codes in {0, 1, 2} (t[0] most significant) as one byte of the 1.6-bit format.
[[nodiscard]] constexpr std::uint8_t encode_trits5(const std::uint8_t (&codes)[5]) noexcept {
    const unsigned base3 = codes[0] * 81u + codes[1] * 27u + codes[2] * 9u + codes[3] * 3u +
                           codes[4];
    // ceil(base3 * 256 / 243) <= 255 because base3 <= 242.
    return static_cast<std::uint8_t>((base3 * 256u + 242u) / 243u);
}

/// Decodes one byte of the 1.6-bit format into its five codes (t[0] most significant).
constexpr void decode_trits5(std::uint8_t byte, std::uint8_t (&codes)[5]) noexcept {
    unsigned fraction = byte;
    for (int k = 0; k < 5; ++k) {
        const unsigned tripled = fraction * 3u;
        codes[k] = static_cast<std::uint8_t>(tripled >> 8);
        fraction = tripled & 0xFFu;
    }
}

/// Ternary weights in 2-bit storage; see the layout at the top of this header.
template <int W, Granularity G>
class QTensor<Ternary<W, G>> : public detail::TernaryStorage<Ternary<W, G>, 16, 0x55> {
    using Base = detail::TernaryStorage<Ternary<W, G>, 16, 0x55>;

public:
    using Base::Base;

    /// Builds a tensor from bytes in the 2-bit layout above (groups() * chunks() * 64 of
    /// them, as bytes() returns) and its scales, for example when loading a checkpoint.
    /// Throws std::invalid_argument if a size does not match or a byte contains code 3.
    [[nodiscard]] static QTensor from_bytes(std::int64_t rows, std::int64_t cols,
                                            std::span<const std::uint8_t> bytes,
                                            std::span<const float> scales) {
        QTensor tensor(rows, cols);
        tensor.assign_packed(bytes, scales, [](std::uint8_t byte) {
            // A field is code 3 when both of its bits are set.
            return (byte & (byte >> 1) & 0x55) == 0;
        });
        return tensor;
    }

    /// Weight at (row, col), in {-1, 0, 1}.
    [[nodiscard]] int value(std::int64_t row, std::int64_t col) const noexcept {
        const auto slot = this->slot(row, col);
        return ((this->bytes_[slot.byte] >> (2 * slot.field)) & 3) - 1;
    }
    /// Sets the weight at (row, col) to `weight` in {-1, 0, 1}.
    void set_value(std::int64_t row, std::int64_t col, int weight) {
        BITDISTILL_REQUIRE(weight >= -1 && weight <= 1, "QTensor<Ternary>::set_value: weight ",
                           weight, " at (", row, ", ", col, ") is not in {-1, 0, 1}");
        const auto slot = this->slot(row, col);
        std::uint8_t& byte = this->bytes_[slot.byte];
        const int shift = 2 * slot.field;
        byte = static_cast<std::uint8_t>((byte & ~(3u << shift)) |
                                         (static_cast<unsigned>(weight + 1) << shift));
    }
};

/// Ternary weights five a byte; see the layout at the top of this header.
template <Granularity G>
class QTensor<Ternary1_6<G>> : public detail::TernaryStorage<Ternary1_6<G>, 20, 128> {
    using Base = detail::TernaryStorage<Ternary1_6<G>, 20, 128>;
    static_assert(encode_trits5({1, 1, 1, 1, 1}) == 128, "zero byte of the 1.6-bit format");

public:
    using Base::Base;

    /// Builds a tensor from bytes in the 1.6-bit layout above (groups() * chunks() * 64 of
    /// them, as bytes() returns) and its scales, for example when loading a checkpoint.
    /// Throws std::invalid_argument if a size does not match or a byte is not the
    /// encoding of five codes (13 of the 256 byte values are not).
    [[nodiscard]] static QTensor from_bytes(std::int64_t rows, std::int64_t cols,
                                            std::span<const std::uint8_t> bytes,
                                            std::span<const float> scales) {
        QTensor tensor(rows, cols);
        tensor.assign_packed(bytes, scales, [](std::uint8_t byte) {
            std::uint8_t codes[5];
            decode_trits5(byte, codes);
            return encode_trits5(codes) == byte;
        });
        return tensor;
    }

    /// Weight at (row, col), in {-1, 0, 1}.
    [[nodiscard]] int value(std::int64_t row, std::int64_t col) const noexcept {
        const auto slot = this->slot(row, col);
        std::uint8_t codes[5];
        decode_trits5(this->bytes_[slot.byte], codes);
        return codes[slot.field] - 1;
    }
    /// Sets the weight at (row, col) to `weight` in {-1, 0, 1}.
    void set_value(std::int64_t row, std::int64_t col, int weight) {
        BITDISTILL_REQUIRE(weight >= -1 && weight <= 1, "QTensor<Ternary1_6>::set_value: weight ",
                           weight, " at (", row, ", ", col, ") is not in {-1, 0, 1}");
        const auto slot = this->slot(row, col);
        std::uint8_t codes[5];
        decode_trits5(this->bytes_[slot.byte], codes);
        codes[slot.field] = static_cast<std::uint8_t>(weight + 1);
        this->bytes_[slot.byte] = encode_trits5(codes);
    }
};

/// Signed integer codes, one a byte, with per-token (or per-tensor) scales and exact row sums.
template <int A, Granularity G>
class QTensor<Int8<A, G>> {
public:
    using encoding = Int8<A, G>;
    static constexpr Granularity granularity = G;
    /// The row stride is cols rounded up to a multiple of this.
    static constexpr std::int64_t stride_multiple = 320;

    QTensor() = default;
    /// All codes 0 and all scales 1.
    QTensor(std::int64_t rows, std::int64_t cols) { reset(rows, cols); }

    /// Builds a tensor from row-major codes [rows x cols] and its scales (1 for per_tensor,
    /// rows otherwise). Throws if a code is outside [min_value, max_value] of the encoding.
    [[nodiscard]] static QTensor from_codes(std::int64_t rows, std::int64_t cols,
                                            std::span<const std::int8_t> codes,
                                            std::span<const float> scales) {
        QTensor tensor(rows, cols);
        BITDISTILL_REQUIRE(static_cast<std::int64_t>(codes.size()) == rows * cols,
                           "QTensor<Int8>::from_codes: ", codes.size(), " codes for shape [",
                           rows, ", ", cols, "]");
        BITDISTILL_REQUIRE(scales.size() == tensor.scales_.size(),
                           "QTensor<Int8>::from_codes: ", scales.size(), " scales, expected ",
                           tensor.scales_.size());
        for (std::int64_t row = 0; row < rows; ++row) {
            std::int32_t sum = 0;
            for (std::int64_t col = 0; col < cols; ++col) {
                const std::int8_t code = codes[static_cast<std::size_t>(row * cols + col)];
                BITDISTILL_REQUIRE(code >= encoding::min_value && code <= encoding::max_value,
                                   "QTensor<Int8>::from_codes: code ", int{code}, " at (", row,
                                   ", ", col, ") is outside [", encoding::min_value, ", ",
                                   encoding::max_value, "]");
                tensor.codes_[static_cast<std::size_t>(row * tensor.stride_ + col)] = code;
                sum += code;
            }
            tensor.row_sums_[static_cast<std::size_t>(row)] = sum;
        }
        for (std::size_t i = 0; i < scales.size(); ++i) tensor.scales_[i] = scales[i];
        return tensor;
    }

    /// Resizes to [rows x cols] with all codes 0 and all scales 1. Keeps the allocations
    /// when the sizes are unchanged.
    void reset(std::int64_t rows, std::int64_t cols) {
        set_shape(rows, cols);
        std::fill(codes_.begin(), codes_.end(), std::int8_t{0});
        std::fill(row_sums_.begin(), row_sums_.end(), 0);
        std::fill(scales_.begin(), scales_.end(), 1.0f);
    }

    [[nodiscard]] std::int64_t rows() const noexcept { return rows_; }
    [[nodiscard]] std::int64_t cols() const noexcept { return cols_; }
    /// Distance in bytes between the starts of two rows; padding codes are 0.
    [[nodiscard]] std::int64_t stride() const noexcept { return stride_; }
    /// Codes of row `row` (stride() of them, the last stride() - cols() zero).
    [[nodiscard]] const std::int8_t* row(std::int64_t row) const noexcept {
        return codes_.data() + row * stride_;
    }
    [[nodiscard]] const AlignedBuffer<std::int8_t>& codes() const noexcept { return codes_; }
    /// Exact sum of the codes of each row.
    [[nodiscard]] const AlignedBuffer<std::int32_t>& row_sums() const noexcept { return row_sums_; }
    [[nodiscard]] const AlignedBuffer<float>& scales() const noexcept { return scales_; }
    /// Scale of row `row`.
    [[nodiscard]] float scale(std::int64_t row) const noexcept {
        return granularity == Granularity::per_tensor ? scales_[0]
                                                      : scales_[static_cast<std::size_t>(row)];
    }

    /// Code at (row, col).
    [[nodiscard]] int value(std::int64_t row, std::int64_t col) const noexcept {
        return codes_[static_cast<std::size_t>(row * stride_ + col)];
    }
    /// Sets the code at (row, col) and updates the row sum.
    void set_value(std::int64_t row, std::int64_t col, int code) {
        BITDISTILL_REQUIRE(code >= encoding::min_value && code <= encoding::max_value,
                           "QTensor<Int8>::set_value: code ", code, " at (", row, ", ", col,
                           ") is outside [", encoding::min_value, ", ", encoding::max_value, "]");
        std::int8_t& slot = codes_[static_cast<std::size_t>(row * stride_ + col)];
        row_sums_[static_cast<std::size_t>(row)] += code - slot;
        slot = static_cast<std::int8_t>(code);
    }
    /// Sets the scale of row `row`; for per_tensor, the one scale whatever `row` is.
    void set_scale(std::int64_t row, float scale) noexcept {
        scales_[granularity == Granularity::per_tensor ? 0 : static_cast<std::size_t>(row)] =
            scale;
    }

    [[nodiscard]] std::size_t storage_bytes() const noexcept {
        return codes_.size() + row_sums_.size() * sizeof(std::int32_t) +
               scales_.size() * sizeof(float);
    }

private:
    friend struct detail::QTensorAccess;

    /// Sets the shape and sizes the buffers, leaving their contents unspecified.
    void set_shape(std::int64_t rows, std::int64_t cols) {
        detail::require_encoded_shape(rows, cols, encoding::name.data());
        rows_ = rows;
        cols_ = cols;
        stride_ = detail::round_up(cols, stride_multiple);
        const auto code_count = static_cast<std::size_t>(rows * stride_);
        if (codes_.size() != code_count) codes_.assign_zero(code_count);
        if (row_sums_.size() != static_cast<std::size_t>(rows))
            row_sums_.assign_zero(static_cast<std::size_t>(rows));
        const auto scale_count =
            static_cast<std::size_t>(granularity == Granularity::per_tensor ? 1 : rows);
        if (scales_.size() != scale_count) scales_.assign_zero(scale_count);
    }

    std::int64_t rows_ = 0;
    std::int64_t cols_ = 0;
    std::int64_t stride_ = 0;
    AlignedBuffer<std::int8_t> codes_;
    AlignedBuffer<std::int32_t> row_sums_;
    AlignedBuffer<float> scales_;
};

namespace detail {

struct QTensorAccess {
    template <class Tensor>
    static void set_shape(Tensor& tensor, std::int64_t rows, std::int64_t cols) {
        tensor.set_shape(rows, cols);
    }
    template <class Tensor>
    static auto& bytes(Tensor& tensor) noexcept {
        return tensor.bytes_;
    }
    template <class Tensor>
    static auto& codes(Tensor& tensor) noexcept {
        return tensor.codes_;
    }
    template <class Tensor>
    static auto& row_sums(Tensor& tensor) noexcept {
        return tensor.row_sums_;
    }
    template <class Tensor>
    static auto& scales(Tensor& tensor) noexcept {
        return tensor.scales_;
    }
};

}  // namespace detail

template <class T>
struct is_qtensor : std::false_type {};
template <class Enc>
struct is_qtensor<QTensor<Enc>> : std::true_type {};
template <class T>
inline constexpr bool is_qtensor_v = is_qtensor<T>::value;

}  // namespace bitdistill
