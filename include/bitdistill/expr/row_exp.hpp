// Vectorised exponentials of one row, the inner loop of softmax-based losses. Each SIMD lane
// keeps a float partial sum, so the sum depends on the SIMD width in its last bits.
#pragma once

#include <cmath>
#include <cstdint>

#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr {

/// Writes exp(z[j] - shift) to out[j] for j in [0, n) and returns the sum of those values.
/// With shift = max z nothing overflows and the sum is at least 1. A null `out` skips the writes.
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
