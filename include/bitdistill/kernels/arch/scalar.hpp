// Portable ternary x int8 kernels: the path for CPUs without AVX2 and the fallback of the
// SIMD paths. They read the packed chunks directly (unlike the element-wise *_ref twins in
// kernels/reference.hpp) and accumulate the 16 rows of a group at once.
#pragma once

#include <cstdint>

#include "bitdistill/kernels/arch/common.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill::kernels {

namespace detail {

/// Multiplies row groups [group_first, group_last) of `w` by every token of `x`.
/// `Fields` is 4 for 2-bit chunks (16 columns) and 5 for 1.6-bit chunks (20 columns).
template <int Fields>
void ternary_matmul_groups_scalar(const PackedTernaryView& w, const Int8RowsView& x,
                                  const MatmulOutput& out, std::int64_t group_first,
                                  std::int64_t group_last) {
    constexpr std::int64_t chunk_cols = 4 * Fields;
    for (std::int64_t token = 0; token < x.tokens; ++token) {
        const std::int8_t* activations = x.row(token);
        for (std::int64_t group = group_first; group < group_last; ++group) {
            // |sum| <= 2 * 128 * padded cols <= 2^30 (max_encoded_cols), so int32 is exact.
            std::int32_t sums[16] = {};
            for (std::int64_t chunk = 0; chunk < w.chunks; ++chunk) {
                const std::uint8_t* bytes = w.chunk(group, chunk);
                const std::int8_t* chunk_x = activations + chunk * chunk_cols;
                for (int row = 0; row < 16; ++row) {
                    std::int32_t sum = 0;
                    for (int lane = 0; lane < 4; ++lane) {
                        const std::uint8_t byte = bytes[4 * row + lane];
                        std::uint8_t codes[5];
                        if constexpr (Fields == 4) {
                            for (int field = 0; field < 4; ++field)
                                codes[field] = static_cast<std::uint8_t>((byte >> (2 * field)) & 3);
                        } else {
                            decode_trits5(byte, codes);
                        }
                        for (int field = 0; field < Fields; ++field)
                            sum += codes[field] * chunk_x[4 * field + lane];
                    }
                    sums[row] += sum;
                }
            }
            // Codes are w + 1, so sum_k (w_k + 1) x_k - sum_k x_k = sum_k w_k x_k.
            const std::int32_t offset = x.row_sums[token];
            for (int row = 0; row < 16; ++row) {
                const std::int64_t out_row = group * 16 + row;
                if (out_row < out.rows) out.store(token, out_row, sums[row] - offset);
            }
        }
    }
}

}  // namespace detail

/// Multiplies 2-bit weights by int8 activations for row groups [group_first, group_last).
inline void ternary2_matmul_groups(const PackedTernaryView& w, const Int8RowsView& x,
                                   const MatmulOutput& out, std::int64_t group_first,
                                   std::int64_t group_last, arch::scalar) {
    detail::ternary_matmul_groups_scalar<4>(w, x, out, group_first, group_last);
}

/// Multiplies 1.6-bit weights by int8 activations for row groups [group_first, group_last).
inline void ternary1_6_matmul_groups(const PackedTernaryView& w, const Int8RowsView& x,
                                     const MatmulOutput& out, std::int64_t group_first,
                                     std::int64_t group_last, arch::scalar) {
    detail::ternary_matmul_groups_scalar<5>(w, x, out, group_first, group_last);
}

}  // namespace bitdistill::kernels
