// A public gradient checker: compares analytic gradients with central differences.
//
// It needs no tape. The caller passes a function that re-evaluates the scalar loss from
// the current contents of the input tensors, and for each input the analytic gradient it
// computed beforehand. The checker perturbs one element at a time, in place, and restores it.
//
//   GradCheckReport report = check_gradients(
//       [&] { return static_cast<double>(my_layer_loss(x, w)); },
//       {{"x", x.view(), grad_x.view()}, {"w", w.view(), grad_w.view()}});
//   if (!report.passed()) std::cerr << report.to_string();
//
// Choosing the step: the inputs are float, so the forward pass rounds at about 6e-8 times
// the magnitude of what it sums. The central difference has a truncation error of order
// step^2 * f''' and a rounding error of order 6e-8 * |loss| / step, so the best step for a
// float forward pass is near 1e-3 to 1e-2 for inputs of order 1. Much smaller steps give
// noise, not precision. Summing the loss in double inside the forward pass (as the
// bitdistill losses do) keeps the rounding error from growing with the number of terms.
// The perturbed value is rounded to float, and the difference quotient divides by the
// perturbation that was actually applied, so the quotient carries no extra error from that.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// One tensor to check: its value (perturbed in place during the check and restored
/// afterwards) and the analytic gradient of the loss with respect to it (same shape).
struct GradCheckInput {
    std::string name;
    TensorView<float> value;
    TensorView<const float> analytic_grad;
};

struct GradCheckOptions {
    /// Absolute central-difference step h: numeric = (f(x + h) - f(x - h)) / 2h.
    double step = 1e-3;
    /// An element passes when |analytic - numeric| <= atol + rtol * |numeric|.
    double rtol = 1e-2;
    double atol = 1e-4;
    /// Elements checked per input; larger inputs are checked on a random subset of this
    /// size. Zero or negative checks every element.
    int max_elements_per_input = 64;
    /// Seed of the subset choice; the same seed checks the same elements.
    std::uint64_t seed = 1;
};

/// Result for one input.
struct GradCheckInputReport {
    std::string name;
    std::string shape;
    std::int64_t checked = 0;
    std::int64_t total = 0;
    std::int64_t failed = 0;
    /// Maximum of |analytic - numeric| over the checked elements.
    double max_abs_error = 0.0;
    /// Maximum of |analytic - numeric| / max(|analytic|, |numeric|), 0 where both are 0.
    double max_rel_error = 0.0;
    /// Flat index of the element closest to failing (or furthest past failing), measured
    /// as |analytic - numeric| / (atol + rtol * |numeric|); -1 when nothing was checked.
    std::int64_t worst_index = -1;
    double worst_analytic = 0.0;
    double worst_numeric = 0.0;
    bool passed = true;
};

struct GradCheckReport {
    GradCheckOptions options;
    std::vector<GradCheckInputReport> inputs;

    [[nodiscard]] bool passed() const {
        return std::all_of(inputs.begin(), inputs.end(),
                           [](const GradCheckInputReport& input) { return input.passed; });
    }

    /// Formats one summary line and one line per input.
    [[nodiscard]] std::string to_string() const {
        std::int64_t failed_inputs = 0;
        for (const GradCheckInputReport& input : inputs) failed_inputs += input.passed ? 0 : 1;
        std::string text = detail::concat(
            "gradient check ", passed() ? "passed" : "FAILED", " (", failed_inputs, " of ",
            inputs.size(), " inputs failed; step ", options.step, ", rtol ", options.rtol, ", atol ",
            options.atol, ")\n");
        for (const GradCheckInputReport& input : inputs) {
            text += detail::concat(
                "  ", input.name, " ", input.shape, ": ", input.passed ? "passed" : "FAILED", ", ",
                input.failed, " of ", input.checked, " checked elements failed (", input.total,
                " in total), max abs error ", input.max_abs_error, ", max rel error ",
                input.max_rel_error, ", worst index ", input.worst_index, " (analytic ",
                input.worst_analytic, ", numeric ", input.worst_numeric, ")\n");
        }
        return text;
    }
};

namespace detail {

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny generator whose output is the same on
/// every platform, unlike std::uniform_int_distribution.
inline std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// Sorted flat indices to check: all of [0, total) or `limit` distinct ones drawn with
/// Floyd's sampling algorithm.
inline std::vector<std::int64_t> gradcheck_indices(std::int64_t total, int limit, std::uint64_t seed) {
    std::vector<std::int64_t> indices;
    if (limit <= 0 || total <= limit) {
        indices.resize(static_cast<std::size_t>(total));
        for (std::int64_t i = 0; i < total; ++i) indices[static_cast<std::size_t>(i)] = i;
        return indices;
    }
    std::uint64_t state = seed;
    for (std::int64_t j = total - limit; j < total; ++j) {
        const auto candidate = static_cast<std::int64_t>(splitmix64(state) % static_cast<std::uint64_t>(j + 1));
        const bool already_drawn = std::find(indices.begin(), indices.end(), candidate) != indices.end();
        indices.push_back(already_drawn ? j : candidate);
    }
    std::sort(indices.begin(), indices.end());
    return indices;
}

}  // namespace detail

/// Compares each input's analytic gradient with central differences of `loss` and
/// returns a report. A mismatch never throws, so callers decide how to react.
///
/// `loss` must be deterministic and read the inputs' current values. Each checked element
/// costs two calls. Each value is restored exactly after its element, also when `loss` throws.
/// Throws shape_error when an analytic gradient's shape differs from its value's, and
/// std::invalid_argument when an option is out of range or the step vanishes in float
/// rounding at some element (choose a larger step for inputs of large magnitude).
inline GradCheckReport check_gradients(const std::function<double()>& loss,
                                       std::vector<GradCheckInput> inputs,
                                       const GradCheckOptions& options = {}) {
    BITDISTILL_REQUIRE(std::isfinite(options.step) && options.step > 0.0,
                       "check_gradients: step must be positive, got ", options.step);
    BITDISTILL_REQUIRE(options.rtol >= 0.0 && options.atol >= 0.0, "check_gradients: rtol ",
                       options.rtol, " and atol ", options.atol, " must not be negative");

    GradCheckReport report;
    report.options = options;
    for (std::size_t input_index = 0; input_index < inputs.size(); ++input_index) {
        GradCheckInput& input = inputs[input_index];
        require_same_shape(input.value.shape(), input.analytic_grad.shape(),
                           ("check_gradients input '" + input.name + "'").c_str());

        GradCheckInputReport result;
        result.name = input.name;
        result.shape = input.value.shape().to_string();
        result.total = input.value.data() == nullptr ? 0 : input.value.numel();
        double worst_ratio = -1.0;

        // Each input draws its own subset, so adding an input does not change the others'.
        const std::vector<std::int64_t> indices =
            detail::gradcheck_indices(result.total, options.max_elements_per_input,
                                      options.seed + 0x9E37ull * input_index);
        for (std::int64_t index : indices) {
            float& element = input.value[index];
            const float original = element;
            const auto plus = static_cast<float>(static_cast<double>(original) + options.step);
            const auto minus = static_cast<float>(static_cast<double>(original) - options.step);
            const double applied = static_cast<double>(plus) - static_cast<double>(minus);
            BITDISTILL_REQUIRE(applied > 0.0, "check_gradients: step ", options.step,
                               " is lost in float rounding at ", input.name, "[", index, "] = ", original,
                               "; use a larger step");

            double loss_plus = 0.0;
            double loss_minus = 0.0;
            try {
                element = plus;
                loss_plus = loss();
                element = minus;
                loss_minus = loss();
            } catch (...) {
                element = original;
                throw;
            }
            element = original;

            const double numeric = (loss_plus - loss_minus) / applied;
            const double analytic = static_cast<double>(input.analytic_grad[index]);
            const double abs_error = std::abs(analytic - numeric);
            const double scale = std::max(std::abs(analytic), std::abs(numeric));
            const double rel_error = scale > 0.0 ? abs_error / scale : 0.0;
            const double allowed = options.atol + options.rtol * std::abs(numeric);
            // A NaN on either side fails, because every comparison with NaN is false.
            const bool element_passed = abs_error <= allowed;
            double ratio = abs_error / std::max(allowed, 1e-300);
            if (std::isnan(ratio)) ratio = std::numeric_limits<double>::infinity();

            ++result.checked;
            if (!element_passed) ++result.failed;
            if (!(abs_error <= result.max_abs_error)) result.max_abs_error = abs_error;
            if (!(rel_error <= result.max_rel_error)) result.max_rel_error = rel_error;
            if (ratio > worst_ratio) {
                worst_ratio = ratio;
                result.worst_index = index;
                result.worst_analytic = analytic;
                result.worst_numeric = numeric;
            }
        }
        result.passed = result.failed == 0;
        report.inputs.push_back(std::move(result));
    }
    return report;
}

}  // namespace bitdistill
