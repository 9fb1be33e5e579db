// Full reductions of element-wise expressions: sum, max and mean. Each evaluates its operand
// in the same fused pass that reduces it and returns a float, so no expression outlives the
// call.
//
// Determinism: the elements are cut into fixed blocks of `reduction_block` elements. Each
// block is summed in float (per SIMD lane, then across lanes) and the block sums are added
// in double in block order, so the result does not depend on the thread count. It can
// differ in the last bits between builds whose SIMD width differs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/expr/elementwise.hpp"
#include "bitdistill/expr/evaluator.hpp"
#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI {
namespace expr {

/// Elements of one reduction block; a multiple of every SIMD width. A float sum over one
/// block has at most 1024 / simd_width terms a lane.
inline constexpr std::int64_t reduction_block = 1024;

/// Sum of elements [first, last) of `flat`, in float.
template <bool Vectorised, class Flat>
[[nodiscard]] float sum_range(Flat flat, std::int64_t first, std::int64_t last) {
    std::int64_t i = first;
    float total = 0.0f;
#if BITDISTILL_EXPR_SIMD
    if constexpr (Vectorised) {
        float_batch lanes(0.0f);
        for (; i + simd_width <= last; i += simd_width) lanes += flat.batch(i);
        total = xsimd::hadd(lanes);
    }
#endif
    for (; i < last; ++i) total += flat.element(i);
    return total;
}

/// Maximum of elements [first, last) of `flat` (first < last), or NaN if any element is NaN.
template <bool Vectorised, class Flat>
[[nodiscard]] float max_range(Flat flat, std::int64_t first, std::int64_t last) {
    std::int64_t i = first;
    float result = -std::numeric_limits<float>::infinity();
    bool saw_nan = false;
#if BITDISTILL_EXPR_SIMD
    if constexpr (Vectorised) {
        if (i + simd_width <= last) {
            float_batch lanes(-std::numeric_limits<float>::infinity());
            auto nan_lanes = lanes != lanes;
            for (; i + simd_width <= last; i += simd_width) {
                const float_batch values = flat.batch(i);
                nan_lanes = nan_lanes || (values != values);
                lanes = xsimd::max(lanes, values);
            }
            saw_nan = xsimd::any(nan_lanes);
            alignas(64) float stored[simd_width];
            lanes.store_aligned(stored);
            for (float value : stored) result = std::max(result, value);
        }
    }
#endif
    for (; i < last; ++i) {
        const float value = flat.element(i);
        saw_nan = saw_nan || std::isnan(value);
        result = std::max(result, value);
    }
    return saw_nan ? std::numeric_limits<float>::quiet_NaN() : result;
}

/// Reduces `node` block by block with `reduce_block(first, last)` and combines the block
/// results in block order with `combine(accumulated, block_result)`.
template <class Node, class ReduceBlock, class Combine>
[[nodiscard]] double reduce_blocks(const Node& node, double initial, ReduceBlock reduce_block,
                                   Combine combine) {
    const std::int64_t count = shape_of(node).numel();
    const std::int64_t blocks = (count + reduction_block - 1) / reduction_block;
    auto block_range = [&](std::int64_t block) {
        const std::int64_t first = block * reduction_block;
        return std::pair{first, std::min(count, first + reduction_block)};
    };

    if (blocks <= 1 || num_threads() == 1) {
        double accumulated = initial;
        for (std::int64_t block = 0; block < blocks; ++block) {
            const auto [first, last] = block_range(block);
            accumulated = combine(accumulated, reduce_block(first, last));
        }
        return accumulated;
    }

    std::vector<double> block_results(static_cast<std::size_t>(blocks));
    parallel_for(blocks, elementwise_grain / reduction_block,
                 [&](std::int64_t first_block, std::int64_t last_block) {
                     for (std::int64_t block = first_block; block < last_block; ++block) {
                         const auto [first, last] = block_range(block);
                         block_results[static_cast<std::size_t>(block)] = reduce_block(first, last);
                     }
                 });
    double accumulated = initial;
    for (double block_result : block_results) accumulated = combine(accumulated, block_result);
    return accumulated;
}

template <class Node>
[[nodiscard]] double sum_of(const Node& node) {
    constexpr bool vectorised = BITDISTILL_EXPR_SIMD && is_vectorisable_v<Node>;
    const auto flat = flatten(node);
    return reduce_blocks(
        node, 0.0,
        [&](std::int64_t first, std::int64_t last) {
            return static_cast<double>(sum_range<vectorised>(flat, first, last));
        },
        [](double accumulated, double block) { return accumulated + block; });
}

template <class Node>
[[nodiscard]] float max_of(const Node& node) {
    const std::int64_t count = shape_of(node).numel();
    BITDISTILL_REQUIRE(count > 0, "max: the operand ", shape_of(node).to_string(),
                       " has no elements");
    constexpr bool vectorised = BITDISTILL_EXPR_SIMD && is_vectorisable_v<Node>;
    const auto flat = flatten(node);
    const double result = reduce_blocks(
        node, -std::numeric_limits<double>::infinity(),
        [&](std::int64_t first, std::int64_t last) {
            return static_cast<double>(max_range<vectorised>(flat, first, last));
        },
        [](double accumulated, double block) {
            return std::isnan(accumulated) || std::isnan(block) ? std::nan("")
                                                                : std::max(accumulated, block);
        });
    return static_cast<float>(result);
}

/// Calls `reduce(node)` on the tree that `operand` stands for.
template <class Operand, class Reduce>
[[nodiscard]] auto reduce_operand(Operand&& operand, Reduce reduce) {
    if constexpr (elementwise_expression<Operand>)
        return reduce(operand);
    else
        return reduce(hold(std::forward<Operand>(operand)));
}

}  // namespace expr

/// Sum of all elements; 0 for an empty operand.
template <array_operand Operand>
[[nodiscard]] float sum(Operand&& operand) {
    return expr::reduce_operand(std::forward<Operand>(operand), [](const auto& node) {
        return static_cast<float>(expr::sum_of(node));
    });
}

/// Largest element; NaN if any element is NaN. Throws std::invalid_argument when empty.
template <array_operand Operand>
[[nodiscard]] float max(Operand&& operand) {
    return expr::reduce_operand(std::forward<Operand>(operand),
                                [](const auto& node) { return expr::max_of(node); });
}

/// Arithmetic mean of all elements. Throws std::invalid_argument when empty.
template <array_operand Operand>
[[nodiscard]] float mean(Operand&& operand) {
    return expr::reduce_operand(std::forward<Operand>(operand), [](const auto& node) {
        const std::int64_t count = expr::shape_of(node).numel();
        BITDISTILL_REQUIRE(count > 0, "mean: the operand ", expr::shape_of(node).to_string(),
                           " has no elements");
        return static_cast<float>(expr::sum_of(node) / static_cast<double>(count));
    });
}

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI
