// AdamW (Loshchilov and Hutter, "Decoupled Weight Decay Regularization") with the update
// order of torch.optim.AdamW in PyTorch 1.13.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// A trainable tensor as the optimizer and the gradient clipper see it: its value, its
/// gradient (same shape) and whether weight decay applies. By convention decay is true
/// for weight matrices only, never for norm gains or biases.
struct ParamRef {
    std::string name;
    TensorView<float> value;
    TensorView<float> grad;
    bool decay = false;
};

/// AdamW hyperparameters. They are doubles, as in PyTorch, because 1 - beta2 computed
/// from a float 0.999f is off by 1.3e-5 relative, which shows in the second moment.
struct AdamWConfig {
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    /// Decoupled weight decay: each step multiplies decayed values by (1 - lr * weight_decay).
    double weight_decay = 0.01;
};

/// Optimizer state for a checkpoint: the step count and both moments of every
/// parameter, in the optimizer's parameter order.
struct AdamWState {
    std::int64_t step_count = 0;
    std::vector<std::string> names;
    std::vector<std::vector<float>> first_moments;
    std::vector<std::vector<float>> second_moments;
};

/// AdamW over a fixed list of parameters. The moment buffers are allocated once, in the
/// constructor, so step() allocates nothing. The parameters' storage must outlive the
/// optimizer.
class AdamW {
public:
    /// Throws std::invalid_argument on a bad hyperparameter, a duplicate or empty name, or
    /// an empty value; shape_error when a gradient's shape differs from its value's.
    explicit AdamW(std::vector<ParamRef> params, AdamWConfig config = {})
        : params_(std::move(params)), config_(config) {
        BITDISTILL_REQUIRE(config_.beta1 >= 0.0 && config_.beta1 < 1.0,
                           "AdamW: beta1 must be in [0, 1), got ", config_.beta1);
        BITDISTILL_REQUIRE(config_.beta2 >= 0.0 && config_.beta2 < 1.0,
                           "AdamW: beta2 must be in [0, 1), got ", config_.beta2);
        BITDISTILL_REQUIRE(config_.eps > 0.0, "AdamW: eps must be positive, got ", config_.eps);
        BITDISTILL_REQUIRE(config_.weight_decay >= 0.0,
                           "AdamW: weight_decay must not be negative, got ", config_.weight_decay);
        first_moments_.reserve(params_.size());
        second_moments_.reserve(params_.size());
        for (std::size_t i = 0; i < params_.size(); ++i) {
            const ParamRef& param = params_[i];
            BITDISTILL_REQUIRE(!param.name.empty(), "AdamW: parameter ", i, " has an empty name");
            BITDISTILL_REQUIRE(param.value.data() != nullptr && param.grad.data() != nullptr,
                               "AdamW: parameter '", param.name, "' has an empty value or gradient view");
            require_same_shape(param.value.shape(), param.grad.shape(),
                               ("AdamW parameter '" + param.name + "' value and gradient").c_str());
            for (std::size_t j = 0; j < i; ++j)
                BITDISTILL_REQUIRE(params_[j].name != param.name, "AdamW: parameter name '",
                                   param.name, "' appears twice (indices ", j, " and ", i, ")");
            first_moments_.emplace_back(param.value.shape());
            second_moments_.emplace_back(param.value.shape());
        }
    }

    /// Applies one update with learning rate `lr` to every parameter, reading the gradients
    /// currently stored in their grad views. Per element, with t the new step count:
    ///   w <- w * (1 - lr * weight_decay)            (decay parameters only)
    ///   m <- beta1 * m + (1 - beta1) * g
    ///   v <- beta2 * v + (1 - beta2) * g^2
    ///   w <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    void step(float lr) {
        BITDISTILL_REQUIRE(std::isfinite(lr) && lr >= 0.0f,
                           "AdamW::step: learning rate must be finite and non-negative, got ", lr);
        ++step_count_;
        const double t = static_cast<double>(step_count_);
        const double bias_correction1 = 1.0 - std::pow(config_.beta1, t);
        const double bias_correction2 = 1.0 - std::pow(config_.beta2, t);
        const auto step_size = static_cast<float>(static_cast<double>(lr) / bias_correction1);
        const auto inverse_bias_correction2_sqrt = static_cast<float>(1.0 / std::sqrt(bias_correction2));
        const auto beta1 = static_cast<float>(config_.beta1);
        const auto beta2 = static_cast<float>(config_.beta2);
        const auto one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
        const auto one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
        const auto eps = static_cast<float>(config_.eps);

        for (std::size_t i = 0; i < params_.size(); ++i) {
            float* w = params_[i].value.data();
            const float* g = params_[i].grad.data();
            float* m = first_moments_[i].data();
            float* v = second_moments_[i].data();
            const float decay_factor =
                params_[i].decay ? static_cast<float>(1.0 - static_cast<double>(lr) * config_.weight_decay) : 1.0f;
            parallel_for(params_[i].value.numel(), 4096, [&](std::int64_t first, std::int64_t last) {
                for (std::int64_t k = first; k < last; ++k) {
                    const float weight = w[k] * decay_factor;
                    m[k] = m[k] * beta1 + one_minus_beta1 * g[k];
                    v[k] = v[k] * beta2 + one_minus_beta2 * g[k] * g[k];
                    const float denominator = std::sqrt(v[k]) * inverse_bias_correction2_sqrt + eps;
                    w[k] = weight - step_size * (m[k] / denominator);
                }
            });
        }
    }

    [[nodiscard]] const AdamWConfig& config() const noexcept { return config_; }
    [[nodiscard]] std::span<const ParamRef> params() const noexcept { return params_; }
    [[nodiscard]] std::size_t size() const noexcept { return params_.size(); }

    /// Number of step() calls so far (restored by load_state or set_step_count).
    [[nodiscard]] std::int64_t step_count() const noexcept { return step_count_; }
    void set_step_count(std::int64_t count) {
        BITDISTILL_REQUIRE(count >= 0, "AdamW: step count must not be negative, got ", count);
        step_count_ = count;
    }

    /// Index of the parameter called `name`; throws std::invalid_argument when none is.
    [[nodiscard]] std::size_t index_of(std::string_view name) const {
        for (std::size_t i = 0; i < params_.size(); ++i)
            if (params_[i].name == name) return i;
        BITDISTILL_REQUIRE(false, "AdamW: no parameter is named '", name, "'");
        return params_.size();
    }

    /// First moment m (shape of the parameter) of parameter `index`; writable so that a
    /// checkpoint loader can fill it in place.
    [[nodiscard]] TensorView<float> first_moment(std::size_t index) {
        return first_moments_.at(index).view();
    }
    [[nodiscard]] TensorView<float> second_moment(std::size_t index) {
        return second_moments_.at(index).view();
    }
    [[nodiscard]] TensorView<const float> first_moment(std::size_t index) const {
        return first_moments_.at(index).view();
    }
    [[nodiscard]] TensorView<const float> second_moment(std::size_t index) const {
        return second_moments_.at(index).view();
    }

    /// Copies the step count and the moments out, for a checkpoint.
    [[nodiscard]] AdamWState save_state() const {
        AdamWState state;
        state.step_count = step_count_;
        for (std::size_t i = 0; i < params_.size(); ++i) {
            state.names.push_back(params_[i].name);
            state.first_moments.emplace_back(first_moments_[i].begin(), first_moments_[i].end());
            state.second_moments.emplace_back(second_moments_[i].begin(), second_moments_[i].end());
        }
        return state;
    }

    /// Restores a state saved by save_state(). Parameters are matched by name, so the order
    /// may differ, but every parameter must be present with the same element count.
    /// Throws std::invalid_argument naming the first missing or mismatched parameter; the
    /// optimizer is unchanged when it throws.
    void load_state(const AdamWState& state) {
        BITDISTILL_REQUIRE(state.step_count >= 0, "AdamW::load_state: negative step count ", state.step_count);
        BITDISTILL_REQUIRE(state.first_moments.size() == state.names.size() &&
                               state.second_moments.size() == state.names.size(),
                           "AdamW::load_state: ", state.names.size(), " names but ",
                           state.first_moments.size(), " first and ", state.second_moments.size(),
                           " second moments");
        BITDISTILL_REQUIRE(state.names.size() == params_.size(), "AdamW::load_state: the state has ",
                           state.names.size(), " parameters but the optimizer has ", params_.size());
        std::vector<std::size_t> source(params_.size());
        for (std::size_t i = 0; i < params_.size(); ++i) {
            std::size_t found = state.names.size();
            for (std::size_t j = 0; j < state.names.size(); ++j)
                if (state.names[j] == params_[i].name) found = j;
            BITDISTILL_REQUIRE(found < state.names.size(), "AdamW::load_state: parameter '",
                               params_[i].name, "' is missing from the state");
            const auto expected = static_cast<std::size_t>(params_[i].value.numel());
            BITDISTILL_REQUIRE(state.first_moments[found].size() == expected &&
                                   state.second_moments[found].size() == expected,
                               "AdamW::load_state: parameter '", params_[i].name, "' has ", expected,
                               " elements but the state stores ", state.first_moments[found].size(),
                               " and ", state.second_moments[found].size());
            source[i] = found;
        }
        for (std::size_t i = 0; i < params_.size(); ++i) {
            std::copy(state.first_moments[source[i]].begin(), state.first_moments[source[i]].end(),
                      first_moments_[i].begin());
            std::copy(state.second_moments[source[i]].begin(), state.second_moments[source[i]].end(),
                      second_moments_[i].begin());
        }
        step_count_ = state.step_count;
    }

private:
    std::vector<ParamRef> params_;
    AdamWConfig config_;
    std::vector<Tensor<float>> first_moments_;
    std::vector<Tensor<float>> second_moments_;
    std::int64_t step_count_ = 0;
};

}  // namespace bitdistill
