// Progress lines and loss curves of a training stage.
//
// The library prints nothing: a stage hands each StepRecord to a callback, and the
// example programs print format_progress_line() of it. A line reads, for instance,
//   stage: fp_sft step: 120/2100 loss: 0.4123 ce: 0.4123 lr: 4.9e-04 tok/s: 11875 eta: 3m12s
// where every loss term is shown already multiplied by its weight, so the terms add up to
// the loss.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace bitdistill::pipeline {

/// One logged training step: the stage, the step, the weighted loss terms and throughput.
struct StepRecord {
    std::string stage;
    std::int64_t step = 0;        ///< 1-based step just finished
    std::int64_t total_steps = 0;
    float loss = 0.0f;            ///< sum of the weighted terms
    /// Weighted loss terms in display order, e.g. {"ce", 0.41}, {"ld", 0.10}, {"ad", 0.05}.
    std::vector<std::pair<std::string, float>> terms;
    float learning_rate = 0.0f;
    float grad_norm = 0.0f;       ///< L2 norm of all gradients before clipping
    double tokens_per_second = 0.0;
    double seconds_left = 0.0;    ///< estimate from the mean step time so far
    double seconds_elapsed = 0.0;
};

/// Formats a duration in seconds as "45s", "3m12s" or "1h04m".
[[nodiscard]] inline std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const auto whole = static_cast<long long>(std::llround(seconds));
    char text[32];
    if (whole < 60)
        std::snprintf(text, sizeof text, "%llds", whole);
    else if (whole < 3600)
        std::snprintf(text, sizeof text, "%lldm%02llds", whole / 60, whole % 60);
    else
        std::snprintf(text, sizeof text, "%lldh%02lldm", whole / 3600, (whole % 3600) / 60);
    return text;
}

/// Formats a record as one line of `key: value` pairs.
[[nodiscard]] inline std::string format_progress_line(const StepRecord& record) {
    char number[64];
    std::string line = "stage: " + record.stage + " step: " + std::to_string(record.step) + "/" +
                       std::to_string(record.total_steps);
    std::snprintf(number, sizeof number, " loss: %.4f", static_cast<double>(record.loss));
    line += number;
    for (const auto& [name, value] : record.terms) {
        std::snprintf(number, sizeof number, " %s: %.4g", name.c_str(), static_cast<double>(value));
        line += number;
    }
    std::snprintf(number, sizeof number, " lr: %.2e gnorm: %.3g tok/s: %.0f",
                  static_cast<double>(record.learning_rate), static_cast<double>(record.grad_norm),
                  record.tokens_per_second);
    line += number;
    line += " eta: " + format_duration(record.seconds_left);
    return line;
}

/// Wall-clock meter of one stage: tokens per second over the last logging interval and the
/// time left, extrapolated from the mean step time since the meter started.
class ThroughputMeter {
public:
    using Clock = std::chrono::steady_clock;

    explicit ThroughputMeter(std::int64_t first_step = 0)
        : start_(Clock::now()), interval_start_(start_), first_step_(first_step) {}

    /// Adds the tokens of one finished step.
    void add_tokens(std::int64_t tokens) { interval_tokens_ += tokens; }

    /// Fills the throughput fields of `record` for step `record.step` and starts a new
    /// interval.
    void finish_interval(StepRecord& record) {
        const auto now = Clock::now();
        const double interval = std::chrono::duration<double>(now - interval_start_).count();
        const double elapsed = std::chrono::duration<double>(now - start_).count();
        record.tokens_per_second = interval > 0 ? static_cast<double>(interval_tokens_) / interval : 0.0;
        record.seconds_elapsed = elapsed;
        const std::int64_t done = record.step - first_step_;
        record.seconds_left =
            done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(record.total_steps - record.step) : 0.0;
        interval_start_ = now;
        interval_tokens_ = 0;
    }

    /// Seconds since the meter was created.
    [[nodiscard]] double seconds() const {
        return std::chrono::duration<double>(Clock::now() - start_).count();
    }

private:
    Clock::time_point start_;
    Clock::time_point interval_start_;
    std::int64_t first_step_ = 0;
    std::int64_t interval_tokens_ = 0;
};

/// The loss curve of one stage: (step, loss) at every logging interval.
struct LossCurve {
    std::string stage;
    std::vector<std::int64_t> steps;
    std::vector<float> losses;
};

}  // namespace bitdistill::pipeline
