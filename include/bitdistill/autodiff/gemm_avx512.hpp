// AVX-512 float GEMM for the autodiff ops: row-major C = alpha * op(A) op(B) (+ C).
//
// Packing and blocking follow the usual three-level scheme (Goto and van de Geijn, "Anatomy
// of High-Performance Matrix Multiplication", ACM TOMS 34(3), 2008):
// - op(B) is packed per block of kc rows into panels of 32 columns (two zmm registers),
//   each panel stored k-major: 32 floats for k = 0, then 32 for k = 1, ...;
// - op(A) is packed per block of mc rows into panels of 12 rows, stored k-major too;
// - the micro-kernel keeps a 12 x 32 tile of C in 24 zmm accumulators and, per k, loads two
//   vectors of B and broadcasts 12 values of A (24 FMAs).
// Edges are zero-padded in the packed panels and masked or skipped when C is written.
//
// The code is compiled with a GCC `target` attribute, so it needs no -march flag; callers
// check that the CPU has AVX-512F before calling it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/isa.hpp"

#if BITDISTILL_X86
#include <immintrin.h>
#define BITDISTILL_GEMM_AVX512 1
#else
#define BITDISTILL_GEMM_AVX512 0
#endif

namespace bitdistill::autodiff::detail {

#if BITDISTILL_GEMM_AVX512

/// Rows of the C tile (broadcast side) and columns (vector side) of the micro-kernel.
inline constexpr std::int64_t gemm_tile_rows = 12;
inline constexpr std::int64_t gemm_tile_cols = 32;
/// Depth of one packed block: a 12 x 256 panel of A (12 KB) stays in the L1 cache while
/// the micro-kernel streams 32 x 256 panels of B (32 KB each) from L2.
inline constexpr std::int64_t gemm_block_depth = 256;
/// Rows of A packed at once (a multiple of gemm_tile_rows): 96 x 256 floats = 96 KB.
inline constexpr std::int64_t gemm_block_rows = 96;
/// Columns of B packed at once (a multiple of gemm_tile_cols): 256 x 512 floats = 512 KB.
inline constexpr std::int64_t gemm_block_cols = 512;

/// Packing buffers of one thread, grown on first use and kept afterwards.
struct GemmPackBuffers {
    AlignedBuffer<float> a;
    AlignedBuffer<float> b;
};

inline GemmPackBuffers& thread_pack_buffers() {
    thread_local GemmPackBuffers buffers;
    return buffers;
}

inline float* grow(AlignedBuffer<float>& buffer, std::int64_t count) {
    if (static_cast<std::int64_t>(buffer.size()) < count)
        buffer = AlignedBuffer<float>(static_cast<std::size_t>(count));
    return buffer.data();
}

/// Packs rows [row0, row0 + rows) and depth [k0, k0 + depth) of op(A) into panels of 12
/// rows, k-major, zero-padding the last panel. A is [m x k] with row stride lda, or
/// stored [k x m] when `transposed`.
inline void pack_a(const float* a, std::int64_t lda, bool transposed, std::int64_t row0,
                   std::int64_t rows, std::int64_t k0, std::int64_t depth, float* packed) {
    for (std::int64_t panel = 0; panel < rows; panel += gemm_tile_rows) {
        const std::int64_t valid = std::min(gemm_tile_rows, rows - panel);
        float* out = packed + panel * depth;
        if (transposed) {
            // op(A)[i, p] = a[p * lda + i]: each k contributes a contiguous run of rows.
            for (std::int64_t p = 0; p < depth; ++p) {
                const float* src = a + (k0 + p) * lda + row0 + panel;
                float* dst = out + p * gemm_tile_rows;
                std::int64_t r = 0;
                for (; r < valid; ++r) dst[r] = src[r];
                for (; r < gemm_tile_rows; ++r) dst[r] = 0.0f;
            }
        } else if (valid == gemm_tile_rows) {
            // op(A)[i, p] = a[i * lda + p]: read the 12 rows side by side so that every k
            // writes one contiguous group of 12.
            const float* src[gemm_tile_rows];
            for (std::int64_t r = 0; r < gemm_tile_rows; ++r) src[r] = a + (row0 + panel + r) * lda + k0;
            for (std::int64_t p = 0; p < depth; ++p)
                for (std::int64_t r = 0; r < gemm_tile_rows; ++r) out[p * gemm_tile_rows + r] = src[r][p];
        } else {
            for (std::int64_t r = 0; r < gemm_tile_rows; ++r) {
                if (r < valid) {
                    const float* src = a + (row0 + panel + r) * lda + k0;
                    for (std::int64_t p = 0; p < depth; ++p) out[p * gemm_tile_rows + r] = src[p];
                } else {
                    for (std::int64_t p = 0; p < depth; ++p) out[p * gemm_tile_rows + r] = 0.0f;
                }
            }
        }
    }
}

/// Packs depth [k0, k0 + depth) and columns [col0, col0 + cols) of op(B) into panels of
/// 32 columns, k-major, zero-padding the last panel. B is [k x n] with row stride ldb, or
/// stored [n x k] when `transposed`.
inline void pack_b(const float* b, std::int64_t ldb, bool transposed, std::int64_t k0,
                   std::int64_t depth, std::int64_t col0, std::int64_t cols, float* packed) {
    for (std::int64_t panel = 0; panel < cols; panel += gemm_tile_cols) {
        const std::int64_t valid = std::min(gemm_tile_cols, cols - panel);
        float* out = packed + panel * depth;
        if (!transposed) {
            // op(B)[p, j] = b[p * ldb + j]: each k contributes a contiguous run of columns.
            for (std::int64_t p = 0; p < depth; ++p) {
                const float* src = b + (k0 + p) * ldb + col0 + panel;
                float* dst = out + p * gemm_tile_cols;
                std::int64_t j = 0;
                for (; j < valid; ++j) dst[j] = src[j];
                for (; j < gemm_tile_cols; ++j) dst[j] = 0.0f;
            }
        } else if (valid == gemm_tile_cols) {
            // op(B)[p, j] = b[j * ldb + p]: read the 32 rows of B side by side so that every
            // k writes one contiguous group of 32.
            const float* src[gemm_tile_cols];
            for (std::int64_t j = 0; j < gemm_tile_cols; ++j) src[j] = b + (col0 + panel + j) * ldb + k0;
            for (std::int64_t p = 0; p < depth; ++p)
                for (std::int64_t j = 0; j < gemm_tile_cols; ++j) out[p * gemm_tile_cols + j] = src[j][p];
        } else {
            // op(B)[p, j] = b[j * ldb + p]: gather one value of each column per k.
            for (std::int64_t j = 0; j < gemm_tile_cols; ++j) {
                if (j < valid) {
                    const float* src = b + (col0 + panel + j) * ldb + k0;
                    for (std::int64_t p = 0; p < depth; ++p) out[p * gemm_tile_cols + j] = src[p];
                } else {
                    for (std::int64_t p = 0; p < depth; ++p) out[p * gemm_tile_cols + j] = 0.0f;
                }
            }
        }
    }
}

/// C[0:rows, 0:cols] (=|+=) alpha * sum_p a[p, :] b[p, :] for one 12 x 32 tile, with a and
/// b packed panels of `depth` steps. Rows beyond `rows` and columns beyond `cols` are
/// computed on zero padding and not written.
__attribute__((target("avx512f,fma"))) inline void gemm_micro_kernel(
    std::int64_t depth, const float* a, const float* b, float* c, std::int64_t ldc, std::int64_t rows,
    std::int64_t cols, float alpha, bool add) {
    __m512 acc[gemm_tile_rows][2];
#pragma GCC unroll 12
    for (int r = 0; r < gemm_tile_rows; ++r) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    for (std::int64_t p = 0; p < depth; ++p) {
        const __m512 b0 = _mm512_load_ps(b);
        const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < gemm_tile_rows; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
        }
        a += gemm_tile_rows;
        b += gemm_tile_cols;
    }

    const __m512 scale = _mm512_set1_ps(alpha);
    const __mmask16 mask0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
    const __mmask16 mask1 = cols >= 32 ? __mmask16(0xFFFF)
                            : cols <= 16 ? __mmask16(0)
                                         : __mmask16((1u << (cols - 16)) - 1u);
#pragma GCC unroll 12
    for (int r = 0; r < gemm_tile_rows; ++r) {
        if (r >= rows) break;
        float* row = c + r * ldc;
        __m512 v0 = _mm512_mul_ps(acc[r][0], scale);
        __m512 v1 = _mm512_mul_ps(acc[r][1], scale);
        if (add) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, row));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, row + 16));
        }
        _mm512_mask_storeu_ps(row, mask0, v0);
        _mm512_mask_storeu_ps(row + 16, mask1, v1);
    }
}

/// Serial C[m x n] (=|+=) alpha * op(A) op(B) on the AVX-512 micro-kernel; the operands
/// are as in autodiff::gemm. `accumulate` false overwrites C.
__attribute__((target("avx512f,fma"))) inline void gemm_avx512(
    bool transpose_a, bool transpose_b, std::int64_t m, std::int64_t n, std::int64_t k,
    float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
    bool accumulate, float* c, std::int64_t ldc) {
    GemmPackBuffers& buffers = thread_pack_buffers();
    const std::int64_t block_depth = std::min(k, gemm_block_depth);
    const std::int64_t padded_cols = (std::min(n, gemm_block_cols) + gemm_tile_cols - 1) / gemm_tile_cols * gemm_tile_cols;
    const std::int64_t padded_rows = (std::min(m, gemm_block_rows) + gemm_tile_rows - 1) / gemm_tile_rows * gemm_tile_rows;
    float* packed_b = grow(buffers.b, block_depth * padded_cols);
    float* packed_a = grow(buffers.a, block_depth * padded_rows);

    for (std::int64_t k0 = 0; k0 < k; k0 += gemm_block_depth) {
        const std::int64_t depth = std::min(gemm_block_depth, k - k0);
        // The first depth block stores into C unless the caller accumulates; later ones add.
        const bool add = accumulate || k0 > 0;
        for (std::int64_t col0 = 0; col0 < n; col0 += gemm_block_cols) {
            const std::int64_t cols = std::min(gemm_block_cols, n - col0);
            pack_b(b, ldb, transpose_b, k0, depth, col0, cols, packed_b);
            for (std::int64_t row0 = 0; row0 < m; row0 += gemm_block_rows) {
                const std::int64_t rows = std::min(gemm_block_rows, m - row0);
                pack_a(a, lda, transpose_a, row0, rows, k0, depth, packed_a);
                for (std::int64_t tile_row = 0; tile_row < rows; tile_row += gemm_tile_rows) {
                    const float* a_panel = packed_a + tile_row * depth;
                    const std::int64_t tile_rows = std::min(gemm_tile_rows, rows - tile_row);
                    for (std::int64_t tile_col = 0; tile_col < cols; tile_col += gemm_tile_cols) {
                        gemm_micro_kernel(depth, a_panel, packed_b + tile_col * depth,
                                          c + (row0 + tile_row) * ldc + col0 + tile_col, ldc, tile_rows,
                                          std::min(gemm_tile_cols, cols - tile_col), alpha, add);
                    }
                }
            }
        }
    }
}

#endif  // BITDISTILL_GEMM_AVX512

}  // namespace bitdistill::autodiff::detail
