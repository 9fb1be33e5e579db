// Learning-rate schedules: linear warmup, then cosine or linear decay.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "bitdistill/core/error.hpp"

namespace bitdistill {

enum class ScheduleKind {
    constant,  ///< peak_lr after warmup
    linear,    ///< linear decay from peak_lr to min_lr_ratio * peak_lr
    cosine,    ///< half-cosine decay from peak_lr to min_lr_ratio * peak_lr
};

/// Returns the learning rate for optimizer step `step` (0-based) of `total_steps`.
///
/// Warmup: peak_lr * step / warmup_steps for step < warmup_steps, so the first step runs
/// at 0. After warmup, with progress = (step - warmup_steps) / (total_steps - warmup_steps)
/// clamped to [0, 1], the rate is peak_lr * (r + (1 - r) * f) with r = min_lr_ratio and
/// f = 0.5 * (1 + cos(pi * progress)) for cosine, 1 - progress for linear, 1 for constant.
/// With r = 0 these match get_cosine_schedule_with_warmup and
/// get_linear_schedule_with_warmup of Hugging Face transformers (LambdaLR multipliers).
/// Steps past total_steps keep the final rate.
/// Throws std::invalid_argument on a negative step, total_steps < 1, warmup_steps outside
/// [0, total_steps], a negative peak_lr or min_lr_ratio outside [0, 1].
[[nodiscard]] inline float learning_rate_at(std::int64_t step, std::int64_t total_steps,
                                            std::int64_t warmup_steps, float peak_lr,
                                            ScheduleKind kind = ScheduleKind::cosine,
                                            float min_lr_ratio = 0.0f) {
    BITDISTILL_REQUIRE(step >= 0, "learning_rate_at: step must not be negative, got ", step);
    BITDISTILL_REQUIRE(total_steps >= 1, "learning_rate_at: total_steps must be at least 1, got ",
                       total_steps);
    BITDISTILL_REQUIRE(warmup_steps >= 0 && warmup_steps <= total_steps, "learning_rate_at: warmup_steps ",
                       warmup_steps, " must be in [0, total_steps = ", total_steps, "]");
    BITDISTILL_REQUIRE(std::isfinite(peak_lr) && peak_lr >= 0.0f,
                       "learning_rate_at: peak_lr must be finite and non-negative, got ", peak_lr);
    BITDISTILL_REQUIRE(min_lr_ratio >= 0.0f && min_lr_ratio <= 1.0f,
                       "learning_rate_at: min_lr_ratio must be in [0, 1], got ", min_lr_ratio);

    if (step < warmup_steps)
        return static_cast<float>(static_cast<double>(peak_lr) * static_cast<double>(step) /
                                  static_cast<double>(warmup_steps));

    const double decay_steps = static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps));
    const double progress = std::clamp(static_cast<double>(step - warmup_steps) / decay_steps, 0.0, 1.0);
    double factor = 1.0;
    switch (kind) {
        case ScheduleKind::constant: factor = 1.0; break;
        case ScheduleKind::linear: factor = 1.0 - progress; break;
        case ScheduleKind::cosine: factor = 0.5 * (1.0 + std::cos(std::numbers::pi * progress)); break;
    }
    const double ratio = static_cast<double>(min_lr_ratio);
    return static_cast<float>(static_cast<double>(peak_lr) * (ratio + (1.0 - ratio) * factor));
}

/// Number of warmup steps for a warmup fraction of the run, rounded up as Hugging Face
/// transformers' TrainingArguments.get_warmup_steps does: ceil(total_steps * ratio).
[[nodiscard]] inline std::int64_t warmup_steps_for(std::int64_t total_steps, double warmup_ratio) {
    BITDISTILL_REQUIRE(total_steps >= 0, "warmup_steps_for: total_steps must not be negative, got ",
                       total_steps);
    BITDISTILL_REQUIRE(warmup_ratio >= 0.0 && warmup_ratio <= 1.0,
                       "warmup_steps_for: warmup_ratio must be in [0, 1], got ", warmup_ratio);
    return static_cast<std::int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

}  // namespace bitdistill
