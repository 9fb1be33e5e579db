// Architecture tags and the raw operands shared by every ternary x int8 kernel path.
//
// Each path is a set of free functions whose last argument is one of the tags below, so
// the instruction set is visible at every call and overload resolution picks the body.
// The operands are plain pointers and extents taken from QTensor (quant/qtensor.hpp),
// whose header documents the byte layouts these kernels read.
#pragma once

#include <cstdint>

#include "bitdistill/core/encoding.hpp"

/// Fully unrolls the loop that follows. The kernels keep their accumulators in arrays
/// indexed by compile-time loop counters. Without full unrolling, GCC at -O2 keeps those
/// arrays in memory instead of registers.
#if defined(__clang__)
#define BITDISTILL_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define BITDISTILL_UNROLL _Pragma("GCC unroll 32")
#else
#define BITDISTILL_UNROLL
#endif

namespace bitdistill {

namespace arch {
/// Portable C++, no SIMD.
struct scalar {};
/// AVX2: `vpmaddubsw` on unsigned codes with int16 partial sums.
struct avx2 {};
/// AVX-512 F/BW/VL with VNNI: `vpdpbusd` straight into int32.
struct avx512vnni {};
}  // namespace arch

namespace kernels {

/// Packed ternary weights: `groups` row groups of 16 rows, each `chunks` chunks of 64 bytes.
struct PackedTernaryView {
    const std::uint8_t* bytes;
    std::int64_t rows;
    std::int64_t groups;
    std::int64_t chunks;

    [[nodiscard]] const std::uint8_t* chunk(std::int64_t group, std::int64_t chunk) const noexcept {
        return bytes + (group * chunks + chunk) * 64;
    }
};

/// Int8 activations: `tokens` rows of `stride` codes (zero padded) and their exact sums.
struct Int8RowsView {
    const std::int8_t* codes;
    const std::int32_t* row_sums;
    std::int64_t tokens;
    std::int64_t stride;

    [[nodiscard]] const std::int8_t* row(std::int64_t token) const noexcept {
        return codes + token * stride;
    }
};

/// Output of a kernel, y [tokens x rows]: the raw int32 dot products when `raw` is set,
/// otherwise the scaled floats y[t][r] = (token_scale(t) * weight_scale(r)) * float(dot).
/// Every path multiplies in that order, so that all paths agree bit for bit.
struct MatmulOutput {
    std::int32_t* raw = nullptr;
    float* scaled = nullptr;
    /// Distance between two token rows of y, in elements.
    std::int64_t row_stride = 0;
    /// Valid output rows: rows of y beyond this are padding and are never written.
    std::int64_t rows = 0;
    const float* weight_scales = nullptr;
    bool weight_scale_per_row = false;
    const float* token_scales = nullptr;
    bool token_scale_per_token = false;

    [[nodiscard]] float weight_scale(std::int64_t row) const noexcept {
        return weight_scales[weight_scale_per_row ? row : 0];
    }
    [[nodiscard]] float token_scale(std::int64_t token) const noexcept {
        return token_scales[token_scale_per_token ? token : 0];
    }
    /// Stores the finished dot product of (token, row).
    void store(std::int64_t token, std::int64_t row, std::int32_t dot) const noexcept {
        if (raw != nullptr)
            raw[token * row_stride + row] = dot;
        else
            scaled[token * row_stride + row] =
                (token_scale(token) * weight_scale(row)) * static_cast<float>(dot);
    }
};

}  // namespace kernels
}  // namespace bitdistill
