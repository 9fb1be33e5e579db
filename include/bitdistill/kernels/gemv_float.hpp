// Float and bfloat16 matrix products for inference: y [tokens x out] = x [tokens x in] W^T
// with W [out x in] row-major (PyTorch nn.Linear layout). One token is the decode GEMV,
// many tokens the prefill GEMM.
//
// Paths, chosen at run time from active_isa() (core/isa.hpp):
// - scalar: the reference twins matmul_f32_ref / matmul_bf16_ref, plain loops;
// - avx2: AVX2 + FMA, 8 floats a step;
// - avx512vnni level: AVX-512F/BW, 16 floats a step. The bf16 product uses `vdpbf16ps`
//   when the CPU has AVX512_BF16 and falls back to the AVX2 path otherwise.
// Each path accumulates in fp32 but sums in its own order, so results agree with the
// reference to rounding, not bit for bit.
//
// bf16 semantics: both operands are bfloat16 (the caller rounds activations once with
// to_bfloat16_into) and every product of two bf16 values is exact in fp32, so the paths
// differ only in summation order. NOTE: `vdpbf16ps` treats bf16 subnormal inputs as zero and
// flushes subnormal results, while the scalar and AVX2 paths keep them.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

#if BITDISTILL_X86
#include <immintrin.h>
#endif

namespace bitdistill {

/// A bfloat16 value: the upper 16 bits of an IEEE binary32.
struct BFloat16 {
    std::uint16_t bits;
};

/// Rounds `value` to the nearest bfloat16, ties to even; NaN stays a (quiet) NaN.
[[nodiscard]] inline BFloat16 to_bfloat16(float value) noexcept {
    std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u)
        return {static_cast<std::uint16_t>((bits >> 16) | 0x0040u)};
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return {static_cast<std::uint16_t>(bits >> 16)};
}

/// The float with the same value as `value` (exact).
[[nodiscard]] inline float to_float(BFloat16 value) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}

/// Rounds every element of `x` to bfloat16. Shape contract: `out` has the shape of `x`.
inline void to_bfloat16_into(TensorView<const float> x, TensorView<BFloat16> out) {
    require_same_shape(x.shape(), out.shape(), "to_bfloat16_into");
    const std::int64_t count = x.numel();
    for (std::int64_t i = 0; i < count; ++i) out[i] = to_bfloat16(x[i]);
}

namespace detail {

/// Throws shape_error unless x [tokens x in], w [out x in] and y [tokens x out] fit.
template <class X, class W>
void check_matmul_shapes(const char* operation, TensorView<const X> x, TensorView<const W> w,
                         TensorView<float> y) {
    BITDISTILL_REQUIRE_AS(shape_error,
                          x.shape().rank() == 2 && w.shape().rank() == 2 && y.shape().rank() == 2 &&
                              x.cols() == w.cols() && y.rows() == x.rows() && y.cols() == w.rows(),
                          operation, ": expected x [tokens x in], w [out x in], y [tokens x out], got x ",
                          x.shape().to_string(), ", w ", w.shape().to_string(), ", y ",
                          y.shape().to_string());
}

/// Rows of W handed to one parallel task: enough work to amortise the task, a multiple of
/// every row tile below.
inline constexpr std::int64_t float_matmul_row_grain = 64;

/// Token tile limit for prefill: a block of x that stays in L2 while a thread sweeps its
/// rows of W. 256 KiB fits in the L2 of current x86 server cores (512 KiB to 2 MiB).
inline constexpr std::int64_t float_matmul_x_block_bytes = 256 * 1024;

[[nodiscard]] inline std::int64_t token_block(std::int64_t tokens, std::int64_t row_bytes) {
    const std::int64_t fit = std::max<std::int64_t>(4, float_matmul_x_block_bytes / std::max<std::int64_t>(row_bytes, 1));
    return std::min(tokens, fit / 4 * 4);
}

/// Runs `rows(first_token, token_count, first_row, last_row)` over token blocks and, inside
/// each, over row chunks in parallel. Token blocks are the outer loop so that each block
/// of x is read from cache while every thread streams its share of W.
template <class RowKernel>
void for_each_block(std::int64_t tokens, std::int64_t out, std::int64_t x_row_bytes,
                    RowKernel&& rows) {
    const std::int64_t block = token_block(tokens, x_row_bytes);
    for (std::int64_t first = 0; first < tokens; first += block) {
        const std::int64_t count = std::min(block, tokens - first);
        parallel_for(out, float_matmul_row_grain, [&](std::int64_t begin, std::int64_t end) {
            rows(first, count, begin, end);
        });
    }
}

inline void matmul_f32_rows_ref(const float* x, std::int64_t tokens, const float* w, std::int64_t in,
                                float* y, std::int64_t y_stride, std::int64_t begin,
                                std::int64_t end) {
    for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t n = begin; n < end; ++n) {
            float sum = 0.0f;
            for (std::int64_t k = 0; k < in; ++k) sum += x[t * in + k] * w[n * in + k];
            y[t * y_stride + n] = sum;
        }
    }
}

inline void matmul_bf16_rows_ref(const BFloat16* x, std::int64_t tokens, const BFloat16* w,
                                 std::int64_t in, float* y, std::int64_t y_stride,
                                 std::int64_t begin, std::int64_t end) {
    for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t n = begin; n < end; ++n) {
            float sum = 0.0f;
            for (std::int64_t k = 0; k < in; ++k)
                sum += to_float(x[t * in + k]) * to_float(w[n * in + k]);
            y[t * y_stride + n] = sum;
        }
    }
}

#if BITDISTILL_X86

// ---- AVX2 + FMA ---------------------------------------------------------------------

__attribute__((target("avx2,fma"))) inline float horizontal_sum_avx2(__m256 v) {
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

__attribute__((target("avx2,fma"))) inline __m256 load8_avx2(const float* p) {
    return _mm256_loadu_ps(p);
}

/// 8 bf16 values widened to fp32 (exact: bf16 is the upper half of fp32).
__attribute__((target("avx2,fma"))) inline __m256 load8_avx2(const BFloat16* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float widen(float value) noexcept { return value; }
inline float widen(BFloat16 value) noexcept { return to_float(value); }

/// Rows [n, n + Rows) x tokens [0, Tokens): y[t][n + r] = dot(x_t, w_{n+r}) over `in`.
template <int Rows, int Tokens, class Element>
__attribute__((target("avx2,fma"))) inline void dot_tile_avx2(const Element* x, const Element* w,
                                                              std::int64_t in, float* y,
                                                              std::int64_t y_stride) {
    __m256 acc[Rows][Tokens];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm256_setzero_ps();
    std::int64_t k = 0;
    for (; k + 8 <= in; k += 8) {
        __m256 xv[Tokens];
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) xv[t] = load8_avx2(x + t * in + k);
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const __m256 wv = load8_avx2(w + r * in + k);
#pragma GCC unroll 8
            for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < Rows; ++r) {
        for (int t = 0; t < Tokens; ++t) {
            float sum = horizontal_sum_avx2(acc[r][t]);
            for (std::int64_t tail = k; tail < in; ++tail)
                sum += widen(x[t * in + tail]) * widen(w[r * in + tail]);
            y[t * y_stride + r] = sum;
        }
    }
}

/// One row of W against `Tokens` tokens (1 to 3), four accumulators a token over k: the
/// sequential-stream form for decode (see dot_row_f32_avx512).
template <int Tokens, class Element>
__attribute__((target("avx2,fma"))) inline void dot_row_avx2(const Element* x, const Element* w,
                                                             std::int64_t in, float* y,
                                                             std::int64_t y_stride) {
    __m256 acc[4][Tokens];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int t = 0; t < Tokens; ++t) acc[u][t] = _mm256_setzero_ps();
    std::int64_t k = 0;
    for (; k + 32 <= in; k += 32) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            const __m256 wv = load8_avx2(w + k + 8 * u);
#pragma GCC unroll 4
            for (int t = 0; t < Tokens; ++t)
                acc[u][t] = _mm256_fmadd_ps(wv, load8_avx2(x + t * in + k + 8 * u), acc[u][t]);
        }
    }
    for (; k + 8 <= in; k += 8) {
        const __m256 wv = load8_avx2(w + k);
        for (int t = 0; t < Tokens; ++t) acc[0][t] = _mm256_fmadd_ps(wv, load8_avx2(x + t * in + k), acc[0][t]);
    }
    for (int t = 0; t < Tokens; ++t) {
        float sum = horizontal_sum_avx2(
            _mm256_add_ps(_mm256_add_ps(acc[0][t], acc[1][t]), _mm256_add_ps(acc[2][t], acc[3][t])));
        for (std::int64_t tail = k; tail < in; ++tail) sum += widen(x[t * in + tail]) * widen(w[tail]);
        y[t * y_stride] = sum;
    }
}

template <class Element>
__attribute__((target("avx2,fma"))) inline void matmul_rows_avx2(
    const Element* x, std::int64_t tokens, const Element* w, std::int64_t in, float* y,
    std::int64_t y_stride, std::int64_t begin, std::int64_t end) {
    if (tokens < 4) {
        for (std::int64_t n = begin; n < end; ++n) {
            switch (tokens) {
                case 3: dot_row_avx2<3>(x, w + n * in, in, y + n, y_stride); break;
                case 2: dot_row_avx2<2>(x, w + n * in, in, y + n, y_stride); break;
                case 1: dot_row_avx2<1>(x, w + n * in, in, y + n, y_stride); break;
                default: break;
            }
        }
        return;
    }
    constexpr int rows = 4;
    std::int64_t n = begin;
    for (; n + rows <= end; n += rows) {
        const Element* w_tile = w + n * in;
        std::int64_t t = 0;
        for (; t + 2 <= tokens; t += 2)
            dot_tile_avx2<rows, 2>(x + t * in, w_tile, in, y + t * y_stride + n, y_stride);
        if (t < tokens) dot_tile_avx2<rows, 1>(x + t * in, w_tile, in, y + t * y_stride + n, y_stride);
    }
    for (; n < end; ++n)
        for (std::int64_t t = 0; t < tokens; ++t)
            dot_tile_avx2<1, 1>(x + t * in, w + n * in, in, y + t * y_stride + n, y_stride);
}

// ---- AVX-512 ------------------------------------------------------------------------

/// Sum of the 16 lanes. Written with merge-masked shuffles because GCC 12's
/// _mm512_reduce_add_ps, unmasked shuffles and casts expand _mm512_undefined_ps, which triggers a
/// false -Wuninitialized warning.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline float horizontal_sum_avx512(__m512 v) {
    constexpr __mmask16 all = 0xffff;
    v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, 0x4e));  // other 256-bit half
    v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, all, v, v, 0xb1));  // neighbouring 128 bits
    __m128 sum = _mm512_maskz_extractf32x4_ps(0xf, v, 0);
    sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
    sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
    return _mm_cvtss_f32(sum);
}

/// Rows [n, n + Rows) x tokens [0, Tokens) in fp32, 16 lanes a step, masked tail.
template <int Rows, int Tokens>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline void dot_tile_f32_avx512(
    const float* x, const float* w, std::int64_t in, float* y, std::int64_t y_stride) {
    __m512 acc[Rows][Tokens];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 16 <= in; k += 16) {
        __m512 xv[Tokens];
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) xv[t] = _mm512_loadu_ps(x + t * in + k);
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const __m512 wv = _mm512_loadu_ps(w + r * in + k);
#pragma GCC unroll 8
            for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (k < in) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (in - k)) - 1u);
        __m512 xv[Tokens];
        for (int t = 0; t < Tokens; ++t) xv[t] = _mm512_maskz_loadu_ps(mask, x + t * in + k);
        for (int r = 0; r < Rows; ++r) {
            const __m512 wv = _mm512_maskz_loadu_ps(mask, w + r * in + k);
            for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) y[t * y_stride + r] = horizontal_sum_avx512(acc[r][t]);
}

/// Same in bf16 with `vdpbf16ps`: 32 products a step, two per fp32 lane.
template <int Rows, int Tokens>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void dot_tile_bf16_avx512(
    const BFloat16* x, const BFloat16* w, std::int64_t in, float* y, std::int64_t y_stride) {
    __m512 acc[Rows][Tokens];
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 32 <= in; k += 32) {
        __m512bh xv[Tokens];
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) xv[t] = (__m512bh)_mm512_loadu_si512(x + t * in + k);
#pragma GCC unroll 8
        for (int r = 0; r < Rows; ++r) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * in + k);
#pragma GCC unroll 8
            for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
    if (k < in) {
        // Masked-off lanes load as zero, which also pads an odd tail to a whole pair.
        const __mmask32 mask = static_cast<__mmask32>((std::uint64_t{1} << (in - k)) - 1u);
        __m512bh xv[Tokens];
        for (int t = 0; t < Tokens; ++t)
            xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + t * in + k);
        for (int r = 0; r < Rows; ++r) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + r * in + k);
            for (int t = 0; t < Tokens; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv, xv[t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 8
        for (int t = 0; t < Tokens; ++t) y[t * y_stride + r] = horizontal_sum_avx512(acc[r][t]);
}

/// One row of W against `Tokens` tokens (1 to 3) in fp32, with four accumulators a token
/// over k so that the row is read front to back in one sequential run. Decode uses this
/// form because the hardware prefetchers keep up with one sequential stream. On a Zen 4
/// core, 4 rows read interleaved reached about half the bandwidth of this form.
template <int Tokens>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline void dot_row_f32_avx512(
    const float* x, const float* w, std::int64_t in, float* y, std::int64_t y_stride) {
    __m512 acc[4][Tokens];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int t = 0; t < Tokens; ++t) acc[u][t] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 64 <= in; k += 64) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            const __m512 wv = _mm512_loadu_ps(w + k + 16 * u);
#pragma GCC unroll 4
            for (int t = 0; t < Tokens; ++t)
                acc[u][t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * in + k + 16 * u), acc[u][t]);
        }
    }
    for (; k + 16 <= in; k += 16) {
        const __m512 wv = _mm512_loadu_ps(w + k);
        for (int t = 0; t < Tokens; ++t) acc[0][t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * in + k), acc[0][t]);
    }
    if (k < in) {
        const __mmask16 mask = static_cast<__mmask16>((1u << (in - k)) - 1u);
        const __m512 wv = _mm512_maskz_loadu_ps(mask, w + k);
        for (int t = 0; t < Tokens; ++t)
            acc[0][t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x + t * in + k), acc[0][t]);
    }
    for (int t = 0; t < Tokens; ++t)
        y[t * y_stride] = horizontal_sum_avx512(
            _mm512_add_ps(_mm512_add_ps(acc[0][t], acc[1][t]), _mm512_add_ps(acc[2][t], acc[3][t])));
}

/// The bf16 form of dot_row_f32_avx512: 128 products a step with `vdpbf16ps`.
template <int Tokens>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) inline void dot_row_bf16_avx512(
    const BFloat16* x, const BFloat16* w, std::int64_t in, float* y, std::int64_t y_stride) {
    __m512 acc[4][Tokens];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
#pragma GCC unroll 4
        for (int t = 0; t < Tokens; ++t) acc[u][t] = _mm512_setzero_ps();
    std::int64_t k = 0;
    for (; k + 128 <= in; k += 128) {
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
            const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + k + 32 * u);
#pragma GCC unroll 4
            for (int t = 0; t < Tokens; ++t)
                acc[u][t] = _mm512_dpbf16_ps(acc[u][t], wv, (__m512bh)_mm512_loadu_si512(x + t * in + k + 32 * u));
        }
    }
    for (; k + 32 <= in; k += 32) {
        const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + k);
        for (int t = 0; t < Tokens; ++t)
            acc[0][t] = _mm512_dpbf16_ps(acc[0][t], wv, (__m512bh)_mm512_loadu_si512(x + t * in + k));
    }
    if (k < in) {
        const __mmask32 mask = static_cast<__mmask32>((std::uint64_t{1} << (in - k)) - 1u);
        const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + k);
        for (int t = 0; t < Tokens; ++t)
            acc[0][t] = _mm512_dpbf16_ps(acc[0][t], wv, (__m512bh)_mm512_maskz_loadu_epi16(mask, x + t * in + k));
    }
    for (int t = 0; t < Tokens; ++t)
        y[t * y_stride] = horizontal_sum_avx512(
            _mm512_add_ps(_mm512_add_ps(acc[0][t], acc[1][t]), _mm512_add_ps(acc[2][t], acc[3][t])));
}

/// Rows [begin, end) of W against `tokens` rows of x. Up to 3 tokens (decode) stream each
/// row once with Tile::row. From 4 tokens on (prefill) the product is compute-bound, and
/// 4 x 4 register tiles reuse every load of W and x four times.
template <class Element, template <int, int> class Tile>
inline void matmul_rows_avx512(
    const Element* x, std::int64_t tokens, const Element* w, std::int64_t in, float* y,
    std::int64_t y_stride, std::int64_t begin, std::int64_t end) {
    if (tokens < 4) {
        for (std::int64_t n = begin; n < end; ++n) {
            switch (tokens) {
                case 3: Tile<1, 3>::row(x, w + n * in, in, y + n, y_stride); break;
                case 2: Tile<1, 2>::row(x, w + n * in, in, y + n, y_stride); break;
                case 1: Tile<1, 1>::row(x, w + n * in, in, y + n, y_stride); break;
                default: break;
            }
        }
        return;
    }
    constexpr int rows = 4;
    std::int64_t n = begin;
    for (; n + rows <= end; n += rows) {
        const Element* w_tile = w + n * in;
        std::int64_t t = 0;
        for (; t + 4 <= tokens; t += 4) Tile<rows, 4>::run(x + t * in, w_tile, in, y + t * y_stride + n, y_stride);
        switch (tokens - t) {
            case 3: Tile<rows, 3>::run(x + t * in, w_tile, in, y + t * y_stride + n, y_stride); break;
            case 2: Tile<rows, 2>::run(x + t * in, w_tile, in, y + t * y_stride + n, y_stride); break;
            case 1: Tile<rows, 1>::run(x + t * in, w_tile, in, y + t * y_stride + n, y_stride); break;
            default: break;
        }
    }
    for (; n < end; ++n)
        for (std::int64_t t = 0; t < tokens; ++t)
            Tile<1, 1>::run(x + t * in, w + n * in, in, y + t * y_stride + n, y_stride);
}

template <int Rows, int Tokens>
struct F32TileAvx512 {
    __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void run(
        const float* x, const float* w, std::int64_t in, float* y, std::int64_t stride) {
        dot_tile_f32_avx512<Rows, Tokens>(x, w, in, y, stride);
    }
    __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) static void row(
        const float* x, const float* w, std::int64_t in, float* y, std::int64_t stride) {
        dot_row_f32_avx512<Tokens>(x, w, in, y, stride);
    }
};

template <int Rows, int Tokens>
struct Bf16TileAvx512 {
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void run(
        const BFloat16* x, const BFloat16* w, std::int64_t in, float* y, std::int64_t stride) {
        dot_tile_bf16_avx512<Rows, Tokens>(x, w, in, y, stride);
    }
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void row(
        const BFloat16* x, const BFloat16* w, std::int64_t in, float* y, std::int64_t stride) {
        dot_row_bf16_avx512<Tokens>(x, w, in, y, stride);
    }
};

/// True if the CPU has AVX512_BF16 (`vdpbf16ps`).
[[nodiscard]] inline bool cpu_has_avx512_bf16() {
    static const bool supported = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") != 0;
    }();
    return supported;
}

#endif  // BITDISTILL_X86

}  // namespace detail

/// Reference fp32 product, a plain loop summing k in order. Shape contract:
/// x [tokens x in], w [out x in], y [tokens x out].
inline void matmul_f32_ref(TensorView<const float> x, TensorView<const float> w, TensorView<float> y) {
    detail::check_matmul_shapes("matmul_f32_ref", x, w, y);
    detail::matmul_f32_rows_ref(x.data(), x.rows(), w.data(), x.cols(), y.data(), y.cols(), 0, w.rows());
}

/// Reference bf16 product: each term is to_float(x) * to_float(w) summed in fp32, k in
/// order. Shape contract: x [tokens x in], w [out x in], y [tokens x out].
inline void matmul_bf16_ref(TensorView<const BFloat16> x, TensorView<const BFloat16> w,
                            TensorView<float> y) {
    detail::check_matmul_shapes("matmul_bf16_ref", x, w, y);
    detail::matmul_bf16_rows_ref(x.data(), x.rows(), w.data(), x.cols(), y.data(), y.cols(), 0, w.rows());
}

/// y = x W^T in fp32 on the active instruction set and num_threads() threads.
/// Shape contract: x [tokens x in], w [out x in], y [tokens x out]; y must not alias x or w.
inline void matmul_f32_into(TensorView<const float> x, TensorView<const float> w, TensorView<float> y) {
    detail::check_matmul_shapes("matmul_f32_into", x, w, y);
    const std::int64_t in = x.cols();
    const Isa isa = active_isa();
    detail::for_each_block(x.rows(), w.rows(), in * 4, [&](std::int64_t first, std::int64_t count,
                                                           std::int64_t begin, std::int64_t end) {
        const float* xb = x.data() + first * in;
        float* yb = y.data() + first * y.cols();
#if BITDISTILL_X86
        if (isa == Isa::avx512vnni) {
            detail::matmul_rows_avx512<float, detail::F32TileAvx512>(xb, count, w.data(), in, yb,
                                                                     y.cols(), begin, end);
            return;
        }
        if (isa == Isa::avx2) {
            detail::matmul_rows_avx2<float>(xb, count, w.data(), in, yb, y.cols(), begin, end);
            return;
        }
#endif
        (void)isa;
        detail::matmul_f32_rows_ref(xb, count, w.data(), in, yb, y.cols(), begin, end);
    });
}

/// y = x W^T with bf16 operands and fp32 sums, on the active instruction set and
/// num_threads() threads. Shape contract: x [tokens x in], w [out x in], y [tokens x out].
inline void matmul_bf16_into(TensorView<const BFloat16> x, TensorView<const BFloat16> w,
                             TensorView<float> y) {
    detail::check_matmul_shapes("matmul_bf16_into", x, w, y);
    const std::int64_t in = x.cols();
    const Isa isa = active_isa();
    detail::for_each_block(x.rows(), w.rows(), in * 2, [&](std::int64_t first, std::int64_t count,
                                                           std::int64_t begin, std::int64_t end) {
        const BFloat16* xb = x.data() + first * in;
        float* yb = y.data() + first * y.cols();
#if BITDISTILL_X86
        if (isa == Isa::avx512vnni && detail::cpu_has_avx512_bf16()) {
            detail::matmul_rows_avx512<BFloat16, detail::Bf16TileAvx512>(xb, count, w.data(), in, yb,
                                                                         y.cols(), begin, end);
            return;
        }
        if (isa != Isa::scalar) {
            detail::matmul_rows_avx2<BFloat16>(xb, count, w.data(), in, yb, y.cols(), begin, end);
            return;
        }
#endif
        (void)isa;
        detail::matmul_bf16_rows_ref(xb, count, w.data(), in, yb, y.cols(), begin, end);
    });
}

}  // namespace bitdistill
