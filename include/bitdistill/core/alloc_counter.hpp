// A process-wide count of library buffer allocations, so tests can prove that a
// steady-state training step allocates nothing.
#pragma once

#include <atomic>
#include <cstdint>

namespace bitdistill {
namespace detail {

inline std::atomic<std::uint64_t>& allocation_counter() {
    static std::atomic<std::uint64_t> counter{0};
    return counter;
}

inline void count_allocation() { allocation_counter().fetch_add(1, std::memory_order_relaxed); }

}  // namespace detail

/// Number of AlignedBuffer allocations made so far in this process. Allocations by Eigen,
/// the standard library or user code are not counted.
inline std::uint64_t buffer_allocations() {
    return detail::allocation_counter().load(std::memory_order_relaxed);
}

}  // namespace bitdistill
