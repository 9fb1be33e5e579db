// Token-level cross-entropy with ignored positions, the CE term of every training stage.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/expr/row_exp.hpp"

namespace bitdistill {

/// Target value that marks a position as ignored (prompt or padding tokens). It plays
/// the role of PyTorch's `ignore_index`, whose default there is -100 instead.
inline constexpr std::int32_t ignored_target = -1;

/// Computes the mean over non-ignored rows of -log softmax(logits)[row, target[row]] and,
/// unless `grad_logits` is an empty view, writes the gradient of that mean.
///
/// Shapes: logits [N x V] (any rank, seen as its 2-D view), targets N values in [0, V)
/// or `ignored_target`, grad_logits empty or the shape of logits.
/// The gradient row is (softmax(logits row) - onehot(target)) / count for counted rows
/// and zero for ignored rows, where count is the number of non-ignored rows. When every
/// target is ignored the loss is 0 and the gradient is all zeros, so a batch made only
/// of prompt tokens contributes nothing instead of producing 0/0.
/// `grad_logits` may be the same view as `logits` (in-place gradient): each row's maximum,
/// sum and target logit are read before the row is overwritten. Rows are split over `num_threads()` threads. The loss sum
/// is accumulated in double per chunk of rows, so its last bits can depend on the thread count.
/// Throws shape_error on a shape mismatch and std::invalid_argument naming the row and
/// the value of the first target that is out of range.
inline float cross_entropy(TensorView<const float> logits,
                           std::span<const std::int32_t> targets,
                           TensorView<float> grad_logits) {
    const std::int64_t rows = logits.rows();
    const std::int64_t vocab = logits.cols();
    const bool want_grad = grad_logits.data() != nullptr;

    BITDISTILL_REQUIRE_AS(shape_error, static_cast<std::int64_t>(targets.size()) == rows,
                          "cross_entropy: logits ", logits.shape().to_string(), " have ", rows,
                          " rows but ", targets.size(), " targets were given");
    BITDISTILL_REQUIRE_AS(shape_error, vocab > 0, "cross_entropy: logits ",
                          logits.shape().to_string(), " have no classes");
    if (want_grad) require_same_shape(logits.shape(), grad_logits.shape(), "cross_entropy gradient");

    std::int64_t counted = 0;
    for (std::int64_t row = 0; row < rows; ++row) {
        const std::int32_t target = targets[static_cast<std::size_t>(row)];
        BITDISTILL_REQUIRE(target == ignored_target || (target >= 0 && target < vocab),
                           "cross_entropy: target ", target, " in row ", row,
                           " is outside [0, ", vocab, ") and is not the ignored value ",
                           ignored_target);
        if (target != ignored_target) ++counted;
    }

    if (counted == 0) {
        if (want_grad) std::fill(grad_logits.data(), grad_logits.data() + grad_logits.numel(), 0.0f);
        return 0.0f;
    }

    const float inverse_count = 1.0f / static_cast<float>(counted);
    std::atomic<double> total{0.0};
    parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
        double chunk_total = 0.0;
        for (std::int64_t row = first; row < last; ++row) {
            const std::int32_t target = targets[static_cast<std::size_t>(row)];
            const float* z = logits.row(row);
            float* dz = want_grad ? grad_logits.row(row) : nullptr;
            if (target == ignored_target) {
                if (dz != nullptr) std::fill(dz, dz + vocab, 0.0f);
                continue;
            }

            // Shift by the row maximum: every exponent is then <= 0, so exp cannot overflow.
            const float max_logit = *std::max_element(z, z + vocab);
            const float target_logit = z[target];
            // The gradient row (which may be z itself) first receives exp(z - max), then is
            // scaled in place.
            const double sum_exp = expr::exp_shifted(z, max_logit, dz, vocab);
            const double log_sum_exp = std::log(sum_exp);

            // -log softmax(z)[t] = log sum exp(z - max) - (z[t] - max)
            chunk_total += log_sum_exp - static_cast<double>(target_logit - max_logit);

            if (dz != nullptr) {
                // d/dz_j = (softmax(z)_j - [j == t]) / count
                const float factor = static_cast<float>(1.0 / sum_exp) * inverse_count;
                for (std::int64_t j = 0; j < vocab; ++j) dz[j] *= factor;
                dz[target] -= inverse_count;
            }
        }
        total.fetch_add(chunk_total, std::memory_order_relaxed);
    });
    return static_cast<float>(total.load() / static_cast<double>(counted));
}

}  // namespace bitdistill
