// AVX2 ternary x int8 kernels (`vpmaddubsw`: unsigned codes times signed activations, pairs
// of products summed into int16, then `vpmaddwd` by 1 into int32).
//
// A 64-byte chunk is two 32-byte halves: rows 0-7 and rows 8-15 of the row group. In each
// half, byte 4 r + j of field k multiplies activation x[4k + j] of the chunk, so after
// `vpmaddubsw` and `vpmaddwd` int32 lane r contains the partial sum of row r and no
// horizontal sum is needed (the layout is in quant/qtensor.hpp).
//
// int16 bound: a code is at most 2 and |x| at most 128, so each `vpmaddubsw` lane is in
// [-512, 508] and never saturates. Partial sums of n such results stay in int16 while
// 512 n <= 32768; each kernel states its n next to the accumulator.
//
// The functions carry a target attribute, so no -march flag is needed. The dispatcher in
// kernels/ternary_matmul.hpp calls them only when the CPU has AVX2 and FMA.
#pragma once

#include "bitdistill/core/isa.hpp"

#if BITDISTILL_X86

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bitdistill/kernels/arch/common.hpp"

#define BITDISTILL_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace bitdistill::kernels {

namespace avx2_detail {

/// Largest number of `vpmaddubsw` results (each in [-512, 508]) that fit in an int16 sum.
inline constexpr int max_int16_terms = 64;
static_assert(max_int16_terms * 512 <= 32768, "int16 partial sums of maddubs results overflow");

BITDISTILL_TARGET_AVX2 inline __m256i broadcast4(const std::int8_t* bytes) noexcept {
    std::int32_t word;
    std::memcpy(&word, bytes, sizeof(word));
    return _mm256_set1_epi32(word);
}

/// Stores the finished dot products of rows [8 h, 8 h + 8) of `group` for `token`.
BITDISTILL_TARGET_AVX2 inline void store_half(const MatmulOutput& out, std::int64_t token,
                                              std::int64_t group, int half, __m256i dot) noexcept {
    const std::int64_t first_row = group * 16 + 8 * half;
    const std::int64_t valid = std::min<std::int64_t>(8, out.rows - first_row);
    if (valid <= 0) return;
    const std::int64_t offset = token * out.row_stride + first_row;
    if (valid == 8) {
        if (out.raw != nullptr) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.raw + offset), dot);
            return;
        }
        const __m256 weight_scale = out.weight_scale_per_row
                                        ? _mm256_loadu_ps(out.weight_scales + first_row)
                                        : _mm256_set1_ps(out.weight_scales[0]);
        const __m256 scale = _mm256_mul_ps(_mm256_set1_ps(out.token_scale(token)), weight_scale);
        _mm256_storeu_ps(out.scaled + offset, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(dot)));
        return;
    }
    alignas(32) std::int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), dot);
    for (std::int64_t r = 0; r < valid; ++r) out.store(token, first_row + r, lanes[r]);
}

/// Codes {0, 1, 2} of field k of a 2-bit half chunk.
BITDISTILL_TARGET_AVX2 inline __m256i field_codes(__m256i packed, int field) noexcept {
    return _mm256_and_si256(_mm256_srli_epi16(packed, 2 * field), _mm256_set1_epi8(0x03));
}

/// The five codes of every byte of a 1.6-bit half chunk, one field at a time. AVX2 has no
/// unsigned byte comparison, so the decoder keeps p = q - 128 (q xor 0x80) as a signed
/// byte; 3 p mod 256 = (3 q mod 256) - 128, so the bias survives each step.
struct Trits5Decoder {
    __m256i biased;

    BITDISTILL_TARGET_AVX2 static Trits5Decoder load(const std::uint8_t* bytes) noexcept {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes));
        return {_mm256_xor_si256(packed, _mm256_set1_epi8(static_cast<char>(0x80)))};
    }
    /// Returns the current codes in {0, 1, 2}: [q >= 86] + [q >= 171] = [p > -43] + [p > 42].
    BITDISTILL_TARGET_AVX2 __m256i code() const noexcept {
        const __m256i above_first = _mm256_cmpgt_epi8(biased, _mm256_set1_epi8(-43));
        const __m256i above_second = _mm256_cmpgt_epi8(biased, _mm256_set1_epi8(42));
        return _mm256_abs_epi8(_mm256_add_epi8(above_first, above_second));
    }
    BITDISTILL_TARGET_AVX2 void next() noexcept {
        biased = _mm256_add_epi8(biased, _mm256_add_epi8(biased, biased));
    }
};

/// Chunks whose `vpmaddubsw` results the 2-bit GEMV sums in int16: 4 fields each.
inline constexpr std::int64_t gemv2_int16_chunks = 8;
static_assert(gemv2_int16_chunks * 4 <= max_int16_terms);

/// 2-bit GEMV of one row group, both halves at once.
BITDISTILL_TARGET_AVX2 inline void gemv2_group(const PackedTernaryView& w, const Int8RowsView& x,
                                               const MatmulOutput& out, std::int64_t token,
                                               std::int64_t group) noexcept {
    const std::int8_t* activations = x.row(token);
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i total[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    const std::uint8_t* chunk_bytes = w.chunk(group, 0);
    for (std::int64_t first = 0; first < w.chunks; first += gemv2_int16_chunks) {
        const std::int64_t last = std::min(w.chunks, first + gemv2_int16_chunks);
        // At most gemv2_int16_chunks * 4 maddubs results each: within max_int16_terms.
        __m256i partial[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (std::int64_t chunk = first; chunk < last; ++chunk) {
            const std::int8_t* chunk_x = activations + chunk * 16;
            BITDISTILL_UNROLL for (int half = 0; half < 2; ++half) {
                const __m256i packed =
                    _mm256_load_si256(reinterpret_cast<const __m256i*>(chunk_bytes + 32 * half));
                BITDISTILL_UNROLL for (int k = 0; k < 4; ++k)
                    partial[half] = _mm256_add_epi16(
                        partial[half],
                        _mm256_maddubs_epi16(field_codes(packed, k), broadcast4(chunk_x + 4 * k)));
            }
            chunk_bytes += 64;
        }
        BITDISTILL_UNROLL for (int half = 0; half < 2; ++half)
            total[half] = _mm256_add_epi32(total[half], _mm256_madd_epi16(partial[half], ones16));
    }
    // Codes are w + 1: subtract the exact activation sum. |total| <= 2^30 (max_encoded_cols).
    const __m256i offset = _mm256_set1_epi32(x.row_sums[token]);
    BITDISTILL_UNROLL for (int half = 0; half < 2; ++half)
        store_half(out, token, group, half, _mm256_sub_epi32(total[half], offset));
}

/// GEMM tile for one half (8 rows) of one row group and `Tokens` tokens. `Fields` is 4
/// (2-bit) or 5 (1.6-bit). Per chunk and token the int16 sum gathers `Fields` maddubs
/// results (within max_int16_terms) before `vpmaddwd` widens it into the int32 total.
template <int Fields, int Tokens>
BITDISTILL_TARGET_AVX2 void gemm_half_tile(const PackedTernaryView& w, const Int8RowsView& x,
                                           const MatmulOutput& out, std::int64_t first_token,
                                           std::int64_t group, int half) noexcept {
    static_assert(Fields <= max_int16_terms);
    constexpr std::int64_t chunk_cols = 4 * Fields;
    const __m256i ones16 = _mm256_set1_epi16(1);
    __m256i total[Tokens];
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) total[t] = _mm256_setzero_si256();
    const std::int8_t* activations[Tokens];
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) activations[t] = x.row(first_token + t);
    const std::uint8_t* chunk_bytes = w.chunk(group, 0) + 32 * half;

    for (std::int64_t chunk = 0; chunk < w.chunks; ++chunk, chunk_bytes += 64) {
        __m256i codes[Fields];
        if constexpr (Fields == 4) {
            const __m256i packed = _mm256_load_si256(reinterpret_cast<const __m256i*>(chunk_bytes));
            BITDISTILL_UNROLL for (int k = 0; k < 4; ++k) codes[k] = field_codes(packed, k);
        } else {
            Trits5Decoder decoder = Trits5Decoder::load(chunk_bytes);
            BITDISTILL_UNROLL for (int k = 0; k < Fields; ++k) {
                codes[k] = decoder.code();
                if (k + 1 < Fields) decoder.next();
            }
        }
        BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
            const std::int8_t* chunk_x = activations[t] + chunk * chunk_cols;
            __m256i partial = _mm256_maddubs_epi16(codes[0], broadcast4(chunk_x));
            BITDISTILL_UNROLL for (int k = 1; k < Fields; ++k)
                partial = _mm256_add_epi16(
                    partial, _mm256_maddubs_epi16(codes[k], broadcast4(chunk_x + 4 * k)));
            total[t] = _mm256_add_epi32(total[t], _mm256_madd_epi16(partial, ones16));
        }
    }
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
        const __m256i offset = _mm256_set1_epi32(x.row_sums[first_token + t]);
        store_half(out, first_token + t, group, half, _mm256_sub_epi32(total[t], offset));
    }
}

/// Tokens per GEMM tile: the accumulators, five code vectors and constants fit 16 registers.
inline constexpr int gemm_tokens = 4;

template <int Fields>
BITDISTILL_TARGET_AVX2 void gemm_groups(const PackedTernaryView& w, const Int8RowsView& x,
                                        const MatmulOutput& out, std::int64_t group_first,
                                        std::int64_t group_last) noexcept {
    static_assert(gemm_tokens == 4, "the switch below lists the tails of a 4-token tile");
    for (std::int64_t group = group_first; group < group_last; ++group)
        BITDISTILL_UNROLL for (int half = 0; half < 2; ++half) {
            if (group * 16 + 8 * half >= out.rows) continue;
            std::int64_t token = 0;
            for (; token + gemm_tokens <= x.tokens; token += gemm_tokens)
                gemm_half_tile<Fields, gemm_tokens>(w, x, out, token, group, half);
            switch (x.tokens - token) {
                case 3: gemm_half_tile<Fields, 3>(w, x, out, token, group, half); break;
                case 2: gemm_half_tile<Fields, 2>(w, x, out, token, group, half); break;
                case 1: gemm_half_tile<Fields, 1>(w, x, out, token, group, half); break;
                default: break;
            }
        }
}

}  // namespace avx2_detail

/// Multiplies 2-bit weights by int8 activations for row groups [group_first, group_last).
BITDISTILL_TARGET_AVX2 inline void ternary2_matmul_groups(const PackedTernaryView& w,
                                                          const Int8RowsView& x,
                                                          const MatmulOutput& out,
                                                          std::int64_t group_first,
                                                          std::int64_t group_last, arch::avx2) {
    if (x.tokens == 1) {
        for (std::int64_t group = group_first; group < group_last; ++group)
            avx2_detail::gemv2_group(w, x, out, 0, group);
        return;
    }
    avx2_detail::gemm_groups<4>(w, x, out, group_first, group_last);
}

/// Multiplies 1.6-bit weights by int8 activations for row groups [group_first, group_last).
BITDISTILL_TARGET_AVX2 inline void ternary1_6_matmul_groups(const PackedTernaryView& w,
                                                            const Int8RowsView& x,
                                                            const MatmulOutput& out,
                                                            std::int64_t group_first,
                                                            std::int64_t group_last, arch::avx2) {
    avx2_detail::gemm_groups<5>(w, x, out, group_first, group_last);
}

}  // namespace bitdistill::kernels

#endif  // BITDISTILL_X86
