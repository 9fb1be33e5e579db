// Thread count and a parallel loop over index ranges.
//
// With OpenMP (the CMake target links it when found) the loop runs on up to
// num_threads() threads; without it every loop is serial. The count is process-wide.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#include "bitdistill/core/error.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace bitdistill {

namespace detail {
inline std::atomic<int>& thread_count_slot() {
    static std::atomic<int> slot{1};
    return slot;
}
}  // namespace detail

/// Returns the thread count of kernels and layers. It defaults to 1, so results and
/// timings do not depend on the machine unless the caller sets another count.
[[nodiscard]] inline int num_threads() {
    return detail::thread_count_slot().load(std::memory_order_relaxed);
}

/// Sets the thread count (at least 1). Without OpenMP the value is stored but loops stay serial.
inline void set_num_threads(int count) {
    BITDISTILL_REQUIRE(count >= 1, "set_num_threads: count must be at least 1, got ", count);
    detail::thread_count_slot().store(count, std::memory_order_relaxed);
}

/// Calls `body(first, last)` on disjoint chunks covering [0, count), each chunk a multiple
/// of `grain` long except the last. Runs serially when one thread is set or the range
/// contains at most one grain.
template <class Body>
void parallel_for(std::int64_t count, std::int64_t grain, Body&& body) {
    if (count <= 0) return;
    grain = std::max<std::int64_t>(grain, 1);
    const std::int64_t grains = (count + grain - 1) / grain;
    const int threads = static_cast<int>(std::min<std::int64_t>(num_threads(), grains));
#if defined(_OPENMP)
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
        {
            const std::int64_t thread = omp_get_thread_num();
            const std::int64_t team = omp_get_num_threads();
            const std::int64_t first_grain = grains * thread / team;
            const std::int64_t last_grain = grains * (thread + 1) / team;
            const std::int64_t first = first_grain * grain;
            const std::int64_t last = std::min(count, last_grain * grain);
            if (first < last) body(first, last);
        }
        return;
    }
#else
    (void)threads;
#endif
    body(std::int64_t{0}, count);
}

}  // namespace bitdistill
