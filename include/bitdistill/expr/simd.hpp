// The SIMD batch type of the fused element-wise loops.
//
// The loops use xsimd's default architecture: the best instruction set the translation unit
// is compiled for. The library target carries no -march flag, so on x86-64 that is SSE2
// (4 floats) unless the consumer adds its own flags, e.g. AVX-512 (16 floats) under
// -march=native. Defining BITDISTILL_NO_SIMD before the first include, or building where
// xsimd supports no instruction set, makes every loop scalar.
#pragma once

#if !defined(BITDISTILL_NO_SIMD)
#include <xsimd/xsimd.hpp>
#if defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
#define BITDISTILL_EXPR_SIMD 0
#else
#define BITDISTILL_EXPR_SIMD 1
#endif
#else
#define BITDISTILL_EXPR_SIMD 0
#endif

#include <cstdint>
#include <type_traits>

// The expression layer lives in an inline namespace named after the instruction set of its
// loops, so translation units compiled with different -march flags define different symbols.
// With one name for all, the one-definition rule would be broken and the linker would keep
// one copy of each loop, possibly the AVX-512 one, for every caller in the program.
#if !BITDISTILL_EXPR_SIMD
#define BITDISTILL_EXPR_ABI simd_none
#elif XSIMD_WITH_AVX512BW
#define BITDISTILL_EXPR_ABI simd_avx512bw
#define BITDISTILL_EXPR_ARCH xsimd::avx512bw
#elif XSIMD_WITH_AVX512DQ
#define BITDISTILL_EXPR_ABI simd_avx512dq
#define BITDISTILL_EXPR_ARCH xsimd::avx512dq
#elif XSIMD_WITH_AVX512CD
#define BITDISTILL_EXPR_ABI simd_avx512cd
#define BITDISTILL_EXPR_ARCH xsimd::avx512cd
#elif XSIMD_WITH_AVX512F
#define BITDISTILL_EXPR_ABI simd_avx512f
#define BITDISTILL_EXPR_ARCH xsimd::avx512f
#elif XSIMD_WITH_FMA3_AVX2
#define BITDISTILL_EXPR_ABI simd_fma3_avx2
#define BITDISTILL_EXPR_ARCH xsimd::fma3<xsimd::avx2>
#elif XSIMD_WITH_AVX2
#define BITDISTILL_EXPR_ABI simd_avx2
#define BITDISTILL_EXPR_ARCH xsimd::avx2
#elif XSIMD_WITH_FMA3_AVX
#define BITDISTILL_EXPR_ABI simd_fma3_avx
#define BITDISTILL_EXPR_ARCH xsimd::fma3<xsimd::avx>
#elif XSIMD_WITH_AVX
#define BITDISTILL_EXPR_ABI simd_avx
#define BITDISTILL_EXPR_ARCH xsimd::avx
#elif XSIMD_WITH_FMA4
#define BITDISTILL_EXPR_ABI simd_fma4
#define BITDISTILL_EXPR_ARCH xsimd::fma4
#elif XSIMD_WITH_FMA3_SSE
#define BITDISTILL_EXPR_ABI simd_fma3_sse4_2
#define BITDISTILL_EXPR_ARCH xsimd::fma3<xsimd::sse4_2>
#elif XSIMD_WITH_SSE4_2
#define BITDISTILL_EXPR_ABI simd_sse4_2
#define BITDISTILL_EXPR_ARCH xsimd::sse4_2
#elif XSIMD_WITH_SSE4_1
#define BITDISTILL_EXPR_ABI simd_sse4_1
#define BITDISTILL_EXPR_ARCH xsimd::sse4_1
#elif XSIMD_WITH_SSSE3
#define BITDISTILL_EXPR_ABI simd_ssse3
#define BITDISTILL_EXPR_ARCH xsimd::ssse3
#elif XSIMD_WITH_SSE3
#define BITDISTILL_EXPR_ABI simd_sse3
#define BITDISTILL_EXPR_ARCH xsimd::sse3
#elif XSIMD_WITH_SSE2
#define BITDISTILL_EXPR_ABI simd_sse2
#define BITDISTILL_EXPR_ARCH xsimd::sse2
#elif XSIMD_WITH_NEON64
#define BITDISTILL_EXPR_ABI simd_neon64
#define BITDISTILL_EXPR_ARCH xsimd::neon64
#elif XSIMD_WITH_NEON
#define BITDISTILL_EXPR_ABI simd_neon
#define BITDISTILL_EXPR_ARCH xsimd::neon
#else
#error "bitdistill/expr/simd.hpp: xsimd reports an instruction set this list does not name"
#endif

#if BITDISTILL_EXPR_SIMD
static_assert(std::is_same_v<xsimd::default_arch, BITDISTILL_EXPR_ARCH>,
              "bitdistill/expr/simd.hpp names another instruction set than xsimd::default_arch; "
              "update the list above for this xsimd version");
#endif

namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr {

#if BITDISTILL_EXPR_SIMD
/// One register of floats of the default architecture.
using float_batch = xsimd::batch<float>;
/// Floats per batch.
inline constexpr std::int64_t simd_width = static_cast<std::int64_t>(float_batch::size);
#else
inline constexpr std::int64_t simd_width = 1;
#endif

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr
