// Temperature-softened logits distillation, the L_LD term of BitNet Distillation
// (Wu et al., arXiv 2510.13998): tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <span>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// Default distillation temperature tau, the value BitNet Distillation uses for classification.
inline constexpr float default_distillation_temperature = 5.0f;

namespace detail {

/// Maximum and log-sum-exp of `logits * scale` over `count` values. The sum is kept in
/// double because vocabularies can have 100,000 entries or more.
struct LogSoftmaxOffsets {
    float max_scaled = 0.0f;
    double log_sum_exp = 0.0;
};

inline LogSoftmaxOffsets log_softmax_offsets(const float* logits, std::int64_t count, float scale) {
    LogSoftmaxOffsets offsets;
    offsets.max_scaled = *std::max_element(logits, logits + count) * scale;
    double sum_exp = 0.0;
    for (std::int64_t j = 0; j < count; ++j) sum_exp += std::exp(logits[j] * scale - offsets.max_scaled);
    offsets.log_sum_exp = std::log(sum_exp);
    return offsets;
}

}  // namespace detail

/// Computes tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) per row, averaged
/// over the counted rows, and unless `grad_student` is an empty view writes its gradient
/// with respect to the student logits: tau * (p_s - p_t) / count on counted rows, zero
/// on the others.
///
/// Shapes: teacher_logits and student_logits [N x V] (any rank, seen as 2-D views, equal
/// shapes), mask empty (all rows counted) or N bytes with 1 for counted rows and 0 for
/// padding, grad_student empty or the shape of student_logits. tau must be positive.
/// With no counted row the loss is 0 and the gradient is all zeros.
/// `grad_student` may be the same view as `student_logits`: each student row's maximum
/// and sum are computed before the row is overwritten, one element after its last read. Rows are split over `num_threads()` threads. The loss sum is accumulated
/// in double per chunk of rows, so its last bits can depend on the thread count.
/// Throws shape_error on a shape mismatch and std::invalid_argument on a bad tau or a
/// mask value other than 0 or 1.
inline float logits_distillation(TensorView<const float> teacher_logits,
                                 TensorView<const float> student_logits, float tau,
                                 std::span<const std::uint8_t> mask,
                                 TensorView<float> grad_student) {
    require_same_shape(teacher_logits.shape(), student_logits.shape(), "logits_distillation");
    const std::int64_t rows = student_logits.rows();
    const std::int64_t vocab = student_logits.cols();
    const bool want_grad = grad_student.data() != nullptr;
    BITDISTILL_REQUIRE(std::isfinite(tau) && tau > 0.0f,
                       "logits_distillation: temperature tau must be positive, got ", tau);
    BITDISTILL_REQUIRE_AS(shape_error, vocab > 0, "logits_distillation: logits ",
                          student_logits.shape().to_string(), " have no classes");
    BITDISTILL_REQUIRE_AS(shape_error, mask.empty() || static_cast<std::int64_t>(mask.size()) == rows,
                          "logits_distillation: mask has ", mask.size(), " entries but logits ",
                          student_logits.shape().to_string(), " have ", rows, " rows");
    if (want_grad)
        require_same_shape(student_logits.shape(), grad_student.shape(), "logits_distillation gradient");

    std::int64_t counted = rows;
    if (!mask.empty()) {
        counted = 0;
        for (std::size_t row = 0; row < mask.size(); ++row) {
            BITDISTILL_REQUIRE(mask[row] <= 1, "logits_distillation: mask value ",
                               static_cast<int>(mask[row]), " in row ", row, " is not 0 or 1");
            counted += mask[row];
        }
    }
    if (counted == 0) {
        if (want_grad) std::fill(grad_student.data(), grad_student.data() + grad_student.numel(), 0.0f);
        return 0.0f;
    }

    const float inverse_tau = 1.0f / tau;
    const float grad_scale = tau / static_cast<float>(counted);
    std::atomic<double> total{0.0};
    parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
        double chunk_total = 0.0;
        for (std::int64_t row = first; row < last; ++row) {
            float* grad_row = want_grad ? grad_student.row(row) : nullptr;
            if (!mask.empty() && mask[static_cast<std::size_t>(row)] == 0) {
                if (grad_row != nullptr) std::fill(grad_row, grad_row + vocab, 0.0f);
                continue;
            }
            const float* zt = teacher_logits.row(row);
            const float* zs = student_logits.row(row);

            // log p = z / tau - max(z / tau) - log sum exp(z / tau - max)
            const detail::LogSoftmaxOffsets teacher = detail::log_softmax_offsets(zt, vocab, inverse_tau);
            const detail::LogSoftmaxOffsets student = detail::log_softmax_offsets(zs, vocab, inverse_tau);

            // log p_t,j - log p_s,j = (z_t,j - z_s,j) / tau - offset_difference
            const float offset_difference = static_cast<float>(
                (teacher.max_scaled + teacher.log_sum_exp) - (student.max_scaled + student.log_sum_exp));
            const float teacher_offset = static_cast<float>(teacher.max_scaled + teacher.log_sum_exp);
            const float student_offset = static_cast<float>(student.max_scaled + student.log_sum_exp);

            // KL(p_t || p_s) = sum_j p_t,j * (log p_t,j - log p_s,j), summed in double.
            double kl = 0.0;
            for (std::int64_t j = 0; j < vocab; ++j) {
                const float pt = std::exp(zt[j] * inverse_tau - teacher_offset);
                const float log_ratio = (zt[j] - zs[j]) * inverse_tau - offset_difference;
                kl += static_cast<double>(pt) * log_ratio;
                if (grad_row != nullptr) {
                    // d(tau^2 KL)/dz_s,j = tau * (p_s,j - p_t,j), then the 1/count of the mean.
                    const float ps = std::exp(zs[j] * inverse_tau - student_offset);
                    grad_row[j] = grad_scale * (ps - pt);
                }
            }
            chunk_total += kl;
        }
        total.fetch_add(chunk_total, std::memory_order_relaxed);
    });
    return static_cast<float>(static_cast<double>(tau) * tau * total.load() / static_cast<double>(counted));
}

}  // namespace bitdistill
