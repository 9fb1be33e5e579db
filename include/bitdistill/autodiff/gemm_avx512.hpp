// AVX-512 float GEMM for the autodiff ops: row-major C = alpha * op(A) op(B) (+ C).
//
// Packing and blocking follow the usual three-level scheme (Goto and van de Geijn, "Anatomy
// of High-Performance Matrix Multiplication", ACM TOMS 34(3), 2008):
// - op(B) is packed per block of kc rows into panels of 32 columns (two zmm registers),
//   each panel stored k-major: 32 floats for k = 0, then 32 for k = 1, ...;
// - op(A) is taken 12 rows at a time. A row-major strip is read in place, because the
//   micro-kernel only broadcasts its elements and a strip of depth 256 (12 KB) stays in L1
//   while it meets every panel of B. A transposed strip, and a last strip of fewer than
//   12 rows, are copied into a k-major buffer first;
// - the micro-kernel keeps a 12 x 32 tile of C in 24 zmm accumulators and, per k, loads two
//   vectors of B and broadcasts 12 values of A (24 FMAs).
// Edges are zero-padded and masked or skipped when C is written.
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
/// Depth of one block: a 12 x 256 strip of A (12 KB) stays in the L1 cache while the
/// micro-kernel streams 32 x 256 panels of B (32 KB each) from L2.
inline constexpr std::int64_t gemm_block_depth = 256;
/// Columns of B packed at once (a multiple of gemm_tile_cols): 256 x 512 floats = 512 KB.
inline constexpr std::int64_t gemm_block_cols = 512;

/// Packing buffers of one thread (a is the zero-padded last strip of A), grown on first use
/// and kept afterwards.
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

/// Copies a strip of `valid` < 12 rows of op(A), depth `depth`, into `packed` as 12 rows
/// k-major (element (r, p) at packed[p * 12 + r]) with zero rows after `valid`. `a` points
/// at op(A)[first row, first k]; element (r, p) is a[r * row_step + p * k_step].
inline void pack_a_strip(const float* a, std::int64_t row_step, std::int64_t k_step,
                         std::int64_t valid, std::int64_t depth, float* packed) {
    if (row_step == 1 && valid == gemm_tile_rows) {
        // A transposed operand: the 12 values of each k are contiguous.
        for (std::int64_t p = 0; p < depth; ++p)
            std::memcpy(packed + p * gemm_tile_rows, a + p * k_step, gemm_tile_rows * sizeof(float));
        return;
    }
    for (std::int64_t p = 0; p < depth; ++p)
        for (std::int64_t r = 0; r < gemm_tile_rows; ++r)
            packed[p * gemm_tile_rows + r] = r < valid ? a[r * row_step + p * k_step] : 0.0f;
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

/// C[0:rows, 0:cols] (=|+=) alpha * sum_p A[:, p] b[p, :] for one 12 x 32 tile, with b a
/// packed panel of `depth` steps. With KMajorA, element (r, p) of the A strip is
/// a[p * a_step + r], as in a packed strip. Without it, element (r, p) is a[r * a_step + p],
/// as in the rows of a row-major operand. Rows beyond `rows` and columns beyond
/// `cols` are computed but not written.
template <bool KMajorA>
__attribute__((target("avx512f,fma"))) inline void gemm_micro_kernel(
    std::int64_t depth, const float* a, std::int64_t a_step, const float* b, float* c,
    std::int64_t ldc, std::int64_t rows, std::int64_t cols, float alpha, bool add) {
    __m512 acc[gemm_tile_rows][2];
#pragma GCC unroll 12
    for (int r = 0; r < gemm_tile_rows; ++r) {
        acc[r][0] = _mm512_setzero_ps();
        acc[r][1] = _mm512_setzero_ps();
    }
    if constexpr (KMajorA) {
        for (std::int64_t p = 0; p < depth; ++p) {
            const __m512 b0 = _mm512_load_ps(b);
            const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
            for (int r = 0; r < gemm_tile_rows; ++r) {
                const __m512 ar = _mm512_set1_ps(a[r]);
                acc[r][0] = _mm512_fmadd_ps(ar, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(ar, b1, acc[r][1]);
            }
            a += a_step;
            b += gemm_tile_cols;
        }
    } else {
        // Four bases three rows apart, plus offsets of 0, 1 or 2 row strides (a_step), keep
        // the address arithmetic inside the x86 addressing modes (base + index * scale).
        const float* base0 = a;
        const float* base1 = a + 3 * a_step;
        const float* base2 = a + 6 * a_step;
        const float* base3 = a + 9 * a_step;
        const std::int64_t step1 = a_step;
        const std::int64_t step2 = 2 * a_step;
        for (std::int64_t p = 0; p < depth; ++p) {
            const __m512 b0 = _mm512_load_ps(b);
            const __m512 b1 = _mm512_load_ps(b + 16);
            const float* bases[4] = {base0 + p, base1 + p, base2 + p, base3 + p};
#pragma GCC unroll 4
            for (int group = 0; group < 4; ++group) {
                const __m512 a0 = _mm512_set1_ps(bases[group][0]);
                acc[3 * group][0] = _mm512_fmadd_ps(a0, b0, acc[3 * group][0]);
                acc[3 * group][1] = _mm512_fmadd_ps(a0, b1, acc[3 * group][1]);
                const __m512 a1 = _mm512_set1_ps(bases[group][step1]);
                acc[3 * group + 1][0] = _mm512_fmadd_ps(a1, b0, acc[3 * group + 1][0]);
                acc[3 * group + 1][1] = _mm512_fmadd_ps(a1, b1, acc[3 * group + 1][1]);
                const __m512 a2 = _mm512_set1_ps(bases[group][step2]);
                acc[3 * group + 2][0] = _mm512_fmadd_ps(a2, b0, acc[3 * group + 2][0]);
                acc[3 * group + 2][1] = _mm512_fmadd_ps(a2, b1, acc[3 * group + 2][1]);
            }
            b += gemm_tile_cols;
        }
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
    float* packed_b = grow(buffers.b, block_depth * padded_cols);
    float* packed_strip = grow(buffers.a, block_depth * gemm_tile_rows);
    // Element (i, p) of op(A) is a[i * row_step + p * k_step].
    const std::int64_t row_step = transpose_a ? 1 : lda;
    const std::int64_t k_step = transpose_a ? lda : 1;

    for (std::int64_t k0 = 0; k0 < k; k0 += gemm_block_depth) {
        const std::int64_t depth = std::min(gemm_block_depth, k - k0);
        // The first depth block stores into C unless the caller accumulates; later ones add.
        const bool add = accumulate || k0 > 0;
        for (std::int64_t col0 = 0; col0 < n; col0 += gemm_block_cols) {
            const std::int64_t cols = std::min(gemm_block_cols, n - col0);
            pack_b(b, ldb, transpose_b, k0, depth, col0, cols, packed_b);
            for (std::int64_t row = 0; row < m; row += gemm_tile_rows) {
                const std::int64_t rows = std::min(gemm_tile_rows, m - row);
                const float* strip = a + row * row_step + k0 * k_step;
                // A row-major strip is read in place. A transposed strip is copied, because
                // its k steps lie lda apart, and strides of 1 KB or 4 KB map the whole strip
                // onto a few L1 sets.
                const bool packed = transpose_a || rows < gemm_tile_rows;
                if (packed) pack_a_strip(strip, row_step, k_step, rows, depth, packed_strip);
                for (std::int64_t tile_col = 0; tile_col < cols; tile_col += gemm_tile_cols) {
                    float* tile = c + row * ldc + col0 + tile_col;
                    const std::int64_t tile_cols = std::min(gemm_tile_cols, cols - tile_col);
                    const float* b_panel = packed_b + tile_col * depth;
                    if (packed)
                        gemm_micro_kernel<true>(depth, packed_strip, gemm_tile_rows, b_panel, tile, ldc, rows,
                                                tile_cols, alpha, add);
                    else
                        gemm_micro_kernel<false>(depth, strip, row_step, b_panel, tile, ldc, rows, tile_cols,
                                                 alpha, add);
                }
            }
        }
    }
}

#endif  // BITDISTILL_GEMM_AVX512

}  // namespace bitdistill::autodiff::detail
