// Vectorised exponentials of one row, the inner loop of softmax-based losses.
//
// exp_shifted(z, shift, out, n) sets out[j] = exp(z[j] - shift) and returns the sum of those
// values. With shift = max z every exponent is <= 0, so nothing overflows, and the sum is
// at least 1. Batches use xsimd's exp of the default architecture (see simd.hpp); the tail
// and the BITDISTILL_NO_SIMD build use std::exp. Each batch lane keeps its own float partial
// sum and the lanes are added in double at the end, so the result depends on the SIMD width
// in its last bits only.
#pragma once

#include <cmath>
#include <cstdint>

#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr {

/// out[j] = exp(z[j] - shift) for j in [0, n); returns their sum. `out` may be null, in
/// which case only the sum is computed.
inline double exp_shifted(const float* z, float shift, float* out, std::int64_t n) noexcept {
    std::int64_t j = 0;
    double sum = 0.0;
#if BITDISTILL_EXPR_SIMD
    const float_batch shift_batch(shift);
    float_batch partial(0.0f);
    for (; j + simd_width <= n; j += simd_width) {
        const float_batch e = xsimd::exp(float_batch::load_unaligned(z + j) - shift_batch);
        if (out != nullptr) e.store_unaligned(out + j);
        partial += e;
    }
    alignas(64) float lanes[float_batch::size];
    partial.store_aligned(lanes);
    for (float lane : lanes) sum += static_cast<double>(lane);
#endif
    for (; j < n; ++j) {
        const float e = std::exp(z[j] - shift);
        if (out != nullptr) out[j] = e;
        sum += static_cast<double>(e);
    }
    return sum;
}

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr
