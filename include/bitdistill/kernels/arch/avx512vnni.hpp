// AVX-512 VNNI ternary x int8 kernels (`vpdpbusd`: unsigned codes times signed activations,
// four products summed straight into each int32 lane).
//
// One 64-byte chunk of a row group holds, for each field k, the four codes of 16 rows that
// one int32 lane multiplies by the four activations x[4k .. 4k + 3] of the chunk, so a
// broadcast of those four activation bytes and one `vpdpbusd` accumulate 16 rows at once
// and no horizontal sum is needed. Rows are outputs: lane r of the accumulator is output
// row 16 g + r, which is stored with one (masked) vector store.
//
// The functions carry a target attribute, so no -march flag is needed. The dispatcher in
// kernels/ternary_matmul.hpp calls them only when the CPU has AVX-512 F/BW/VL and VNNI.
#pragma once

#include "bitdistill/core/isa.hpp"

#if BITDISTILL_X86

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bitdistill/kernels/arch/common.hpp"

#define BITDISTILL_TARGET_AVX512VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// GCC 12 reports its own `_mm512_undefined_*` placeholders inside the AVX-512 intrinsics as
// maybe-uninitialized when the translation unit is not compiled with -mavx512f.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace bitdistill::kernels {

namespace avx512vnni_detail {

/// Four activation bytes as one int32, repeated in every lane.
BITDISTILL_TARGET_AVX512VNNI inline __m512i broadcast4(const std::int8_t* bytes) noexcept {
    std::int32_t word;
    std::memcpy(&word, bytes, sizeof(word));
    return _mm512_set1_epi32(word);
}

/// Stores the finished dot products of the 16 rows of `group` for `token`.
BITDISTILL_TARGET_AVX512VNNI inline void store_group(const MatmulOutput& out, std::int64_t token,
                                                     std::int64_t group, __m512i dot) noexcept {
    const std::int64_t first_row = group * 16;
    const std::int64_t valid = std::min<std::int64_t>(16, out.rows - first_row);
    const __mmask16 mask = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1u);
    const std::int64_t offset = token * out.row_stride + first_row;
    if (out.raw != nullptr) {
        _mm512_mask_storeu_epi32(out.raw + offset, mask, dot);
        return;
    }
    const __m512 weight_scale = out.weight_scale_per_row
                                    ? _mm512_maskz_loadu_ps(mask, out.weight_scales + first_row)
                                    : _mm512_set1_ps(out.weight_scales[0]);
    const __m512 scale = _mm512_mul_ps(_mm512_set1_ps(out.token_scale(token)), weight_scale);
    _mm512_mask_storeu_ps(out.scaled + offset, mask,
                          _mm512_mul_ps(scale, _mm512_cvtepi32_ps(dot)));
}

/// The five codes of every byte of a 1.6-bit chunk, one field at a time: code() is the
/// current field, next() moves to the following one (see the layout in quant/qtensor.hpp).
struct Trits5Decoder {
    __m512i fraction;

    /// Returns the current codes, floor(3 q / 256) = [q >= 86] + [q >= 171] for each byte q.
    BITDISTILL_TARGET_AVX512VNNI __m512i code() const noexcept {
        const __mmask64 at_least_one = _mm512_cmpge_epu8_mask(fraction, _mm512_set1_epi8(86));
        const __mmask64 two =
            _mm512_cmpge_epu8_mask(fraction, _mm512_set1_epi8(static_cast<char>(171)));
        const __m512i ones = _mm512_maskz_mov_epi8(at_least_one, _mm512_set1_epi8(1));
        return _mm512_mask_mov_epi8(ones, two, _mm512_set1_epi8(2));
    }
    /// q <- 3 q mod 256 in every byte.
    BITDISTILL_TARGET_AVX512VNNI void next() noexcept {
        fraction = _mm512_add_epi8(fraction, _mm512_add_epi8(fraction, fraction));
    }
};

/// Chunks between two drains of the GEMV field accumulators. The field-k accumulator of
/// the 2-bit GEMV sums codes scaled by 4^k: per chunk a lane gains at most
/// 4 products * (2 * 64) * 128 = 2^16 in magnitude, so 4096 chunks stay below 2^28.
inline constexpr std::int64_t gemv_drain_chunks = 4096;
static_assert(gemv_drain_chunks * 4 * (2 * 64) * 128 < (std::int64_t{1} << 31),
              "the 2-bit GEMV field accumulators would overflow int32 between drains");

/// 2-bit GEMV of one row group. The masks 0x03, 0x0C, 0x30, 0xC0 pick field k in place, as
/// code * 4^k, which `vpdpbusd` takes as an unsigned byte (at most 128). So no shift is
/// needed per chunk. Each field sums into its own accumulator, which is divided by 4^k (an
/// exact arithmetic shift) at each drain. Even and odd chunks use separate accumulators, so
/// eight independent `vpdpbusd` chains hide its latency while the weights of the group are
/// read as one sequential stream (two groups read side by side were slower from DRAM).
BITDISTILL_TARGET_AVX512VNNI inline void gemv2_group(const PackedTernaryView& w,
                                                     const Int8RowsView& x,
                                                     const MatmulOutput& out, std::int64_t token,
                                                     std::int64_t group) noexcept {
    constexpr int parities = 2;
    const std::int8_t* activations = x.row(token);
    const __m512i field_mask[4] = {_mm512_set1_epi8(0x03), _mm512_set1_epi8(0x0C),
                                   _mm512_set1_epi8(0x30),
                                   _mm512_set1_epi8(static_cast<char>(0xC0))};
    __m512i total = _mm512_setzero_si512();

    for (std::int64_t drain_first = 0; drain_first < w.chunks; drain_first += gemv_drain_chunks) {
        const std::int64_t drain_last = std::min(w.chunks, drain_first + gemv_drain_chunks);
        __m512i field_sum[parities][4];
        BITDISTILL_UNROLL for (int p = 0; p < parities; ++p)
            BITDISTILL_UNROLL for (int k = 0; k < 4; ++k) field_sum[p][k] = _mm512_setzero_si512();
        const std::uint8_t* chunk_bytes = w.chunk(group, drain_first);

        std::int64_t chunk = drain_first;
        for (; chunk + parities <= drain_last; chunk += parities) {
            BITDISTILL_UNROLL for (int p = 0; p < parities; ++p) {
                const std::int8_t* chunk_x = activations + (chunk + p) * 16;
                const __m512i packed = _mm512_load_si512(chunk_bytes + 64 * p);
                BITDISTILL_UNROLL for (int k = 0; k < 4; ++k)
                    field_sum[p][k] = _mm512_dpbusd_epi32(field_sum[p][k],
                                                          _mm512_and_si512(packed, field_mask[k]),
                                                          broadcast4(chunk_x + 4 * k));
            }
            chunk_bytes += 64 * parities;
        }
        if (chunk < drain_last) {
            const std::int8_t* chunk_x = activations + chunk * 16;
            const __m512i packed = _mm512_load_si512(chunk_bytes);
            BITDISTILL_UNROLL for (int k = 0; k < 4; ++k)
                field_sum[0][k] = _mm512_dpbusd_epi32(
                    field_sum[0][k], _mm512_and_si512(packed, field_mask[k]),
                    broadcast4(chunk_x + 4 * k));
        }

        __m512i fields[4];
        BITDISTILL_UNROLL for (int k = 0; k < 4; ++k)
            fields[k] = _mm512_add_epi32(field_sum[0][k], field_sum[1][k]);
        const __m512i low = _mm512_add_epi32(fields[0], _mm512_srai_epi32(fields[1], 2));
        const __m512i high =
            _mm512_add_epi32(_mm512_srai_epi32(fields[2], 4), _mm512_srai_epi32(fields[3], 6));
        total = _mm512_add_epi32(total, _mm512_add_epi32(low, high));
    }
    // Codes are w + 1: subtract the exact activation sum. |total| <= 2^30 (max_encoded_cols).
    const __m512i offset = _mm512_set1_epi32(x.row_sums[token]);
    store_group(out, token, group, _mm512_sub_epi32(total, offset));
}

/// 2-bit GEMM tile: `Groups` row groups x `Tokens` tokens of int32 accumulators. Each
/// chunk is unpacked once per field (shift and mask to codes in {0, 1, 2}) and reused for
/// every token of the tile. |lane| <= 4 * 2 * 128 per chunk, <= 2^30 over max_encoded_cols.
template <int Groups, int Tokens>
BITDISTILL_TARGET_AVX512VNNI void gemm2_tile(const PackedTernaryView& w, const Int8RowsView& x,
                                             const MatmulOutput& out, std::int64_t first_token,
                                             std::int64_t first_group) noexcept {
    const __m512i code_mask = _mm512_set1_epi8(0x03);
    __m512i sum[Groups][Tokens];
    BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
        BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) sum[g][t] = _mm512_setzero_si512();
    const std::int8_t* activations[Tokens];
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) activations[t] = x.row(first_token + t);
    const std::uint8_t* chunk_bytes[Groups];
    BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g) chunk_bytes[g] = w.chunk(first_group + g, 0);

    for (std::int64_t chunk = 0; chunk < w.chunks; ++chunk) {
        __m512i packed[Groups];
        BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g) {
            packed[g] = _mm512_load_si512(chunk_bytes[g]);
            chunk_bytes[g] += 64;
        }
        BITDISTILL_UNROLL for (int k = 0; k < 4; ++k) {
            __m512i codes[Groups];
            BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
                codes[g] = _mm512_and_si512(_mm512_srli_epi16(packed[g], 2 * k), code_mask);
            BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
                const __m512i x4 = broadcast4(activations[t] + chunk * 16 + 4 * k);
                BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
                    sum[g][t] = _mm512_dpbusd_epi32(sum[g][t], codes[g], x4);
            }
        }
    }
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
        const __m512i offset = _mm512_set1_epi32(x.row_sums[first_token + t]);
        BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
            store_group(out, first_token + t, first_group + g, _mm512_sub_epi32(sum[g][t], offset));
    }
}

/// 1.6-bit GEMM tile (also the GEMV with Tokens = 1): each chunk's five fields are decoded
/// in turn and reused for every token. |lane| <= 4 * 2 * 128 per field, <= 2^30 in all.
template <int Groups, int Tokens>
BITDISTILL_TARGET_AVX512VNNI void gemm1_6_tile(const PackedTernaryView& w, const Int8RowsView& x,
                                               const MatmulOutput& out, std::int64_t first_token,
                                               std::int64_t first_group) noexcept {
    __m512i sum[Groups][Tokens];
    BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
        BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) sum[g][t] = _mm512_setzero_si512();
    const std::int8_t* activations[Tokens];
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) activations[t] = x.row(first_token + t);
    const std::uint8_t* chunk_bytes[Groups];
    BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g) chunk_bytes[g] = w.chunk(first_group + g, 0);

    for (std::int64_t chunk = 0; chunk < w.chunks; ++chunk) {
        Trits5Decoder decoder[Groups];
        BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g) {
            decoder[g].fraction = _mm512_load_si512(chunk_bytes[g]);
            chunk_bytes[g] += 64;
        }
        BITDISTILL_UNROLL for (int k = 0; k < 5; ++k) {
            __m512i codes[Groups];
            BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g) {
                codes[g] = decoder[g].code();
                if (k < 4) decoder[g].next();
            }
            BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
                const __m512i x4 = broadcast4(activations[t] + chunk * 20 + 4 * k);
                BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
                    sum[g][t] = _mm512_dpbusd_epi32(sum[g][t], codes[g], x4);
            }
        }
    }
    BITDISTILL_UNROLL for (int t = 0; t < Tokens; ++t) {
        const __m512i offset = _mm512_set1_epi32(x.row_sums[first_token + t]);
        BITDISTILL_UNROLL for (int g = 0; g < Groups; ++g)
            store_group(out, first_token + t, first_group + g, _mm512_sub_epi32(sum[g][t], offset));
    }
}

/// Token tile of the GEMM kernels: Groups x Tokens accumulators plus the unpacked codes
/// fit the 32 vector registers.
inline constexpr int gemm_groups = 2;
inline constexpr int gemm_tokens = 8;

/// Runs `Tile<Groups, Tokens>` for the last `remaining` (< TileTokens) tokens from `token`.
template <int Groups, template <int, int> class Tile, int Tokens>
BITDISTILL_TARGET_AVX512VNNI void run_token_tail(const PackedTernaryView& w, const Int8RowsView& x,
                                                 const MatmulOutput& out, std::int64_t token,
                                                 std::int64_t remaining,
                                                 std::int64_t first_group) noexcept {
    if constexpr (Tokens > 0) {
        if (remaining == Tokens)
            Tile<Groups, Tokens>::run(w, x, out, token, first_group);
        else
            run_token_tail<Groups, Tile, Tokens - 1>(w, x, out, token, remaining, first_group);
    }
}

/// Runs `Tile<Groups, TileTokens>` over every token of `x`, and a smaller tile for the rest.
template <int Groups, template <int, int> class Tile, int TileTokens = gemm_tokens>
BITDISTILL_TARGET_AVX512VNNI void for_token_tiles(const PackedTernaryView& w, const Int8RowsView& x,
                                                  const MatmulOutput& out,
                                                  std::int64_t first_group) noexcept {
    std::int64_t token = 0;
    for (; token + TileTokens <= x.tokens; token += TileTokens)
        Tile<Groups, TileTokens>::run(w, x, out, token, first_group);
    run_token_tail<Groups, Tile, TileTokens - 1>(w, x, out, token, x.tokens - token, first_group);
}

template <int Groups, int Tokens>
struct Gemm2Tile {
    BITDISTILL_TARGET_AVX512VNNI static void run(const PackedTernaryView& w, const Int8RowsView& x,
                                                 const MatmulOutput& out, std::int64_t first_token,
                                                 std::int64_t first_group) noexcept {
        gemm2_tile<Groups, Tokens>(w, x, out, first_token, first_group);
    }
};

template <int Groups, int Tokens>
struct Gemm1_6Tile {
    BITDISTILL_TARGET_AVX512VNNI static void run(const PackedTernaryView& w, const Int8RowsView& x,
                                                 const MatmulOutput& out, std::int64_t first_token,
                                                 std::int64_t first_group) noexcept {
        gemm1_6_tile<Groups, Tokens>(w, x, out, first_token, first_group);
    }
};

}  // namespace avx512vnni_detail

/// Multiplies 2-bit weights by int8 activations for row groups [group_first, group_last).
BITDISTILL_TARGET_AVX512VNNI inline void ternary2_matmul_groups(const PackedTernaryView& w,
                                                                const Int8RowsView& x,
                                                                const MatmulOutput& out,
                                                                std::int64_t group_first,
                                                                std::int64_t group_last,
                                                                arch::avx512vnni) {
    using namespace avx512vnni_detail;
    std::int64_t group = group_first;
    if (x.tokens == 1) {
        for (; group < group_last; ++group) gemv2_group(w, x, out, 0, group);
        return;
    }
    for (; group + gemm_groups <= group_last; group += gemm_groups)
        for_token_tiles<gemm_groups, Gemm2Tile>(w, x, out, group);
    for (; group < group_last; ++group) for_token_tiles<1, Gemm2Tile>(w, x, out, group);
}

/// Multiplies 1.6-bit weights by int8 activations for row groups [group_first, group_last).
BITDISTILL_TARGET_AVX512VNNI inline void ternary1_6_matmul_groups(const PackedTernaryView& w,
                                                                  const Int8RowsView& x,
                                                                  const MatmulOutput& out,
                                                                  std::int64_t group_first,
                                                                  std::int64_t group_last,
                                                                  arch::avx512vnni) {
    using namespace avx512vnni_detail;
    std::int64_t group = group_first;
    if (x.tokens == 1) {
        // One row group at a time keeps the weights one sequential stream, as in gemv2_group.
        for (; group < group_last; ++group) gemm1_6_tile<1, 1>(w, x, out, 0, group);
        return;
    }
    for (; group + gemm_groups <= group_last; group += gemm_groups)
        for_token_tiles<gemm_groups, Gemm1_6Tile>(w, x, out, group);
    for (; group < group_last; ++group) for_token_tiles<1, Gemm1_6Tile>(w, x, out, group);
}

}  // namespace bitdistill::kernels

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // BITDISTILL_X86
