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

namespace bitdistill::expr {

#if BITDISTILL_EXPR_SIMD
/// One register of floats of the default architecture.
using float_batch = xsimd::batch<float>;
/// Floats per batch.
inline constexpr std::int64_t simd_width = static_cast<std::int64_t>(float_batch::size);
#else
inline constexpr std::int64_t simd_width = 1;
#endif

}  // namespace bitdistill::expr
