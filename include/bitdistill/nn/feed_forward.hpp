// The SwiGLU feed-forward branch of a decoder block, from the pre-normed input to the
// down_proj output:
//
//   n = rmsnorm(x, gate_up_norm)                  all-norms variant only
//   m = silu(n Wgate^T) * (n Wup^T)
//   m = rmsnorm(m, ffn_subln)                     SubLN only
//   out = m Wdown^T
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bitdistill/autodiff/ops_activation.hpp"
#include "bitdistill/autodiff/ops_norm.hpp"
#include "bitdistill/nn/config.hpp"
#include "bitdistill/nn/layer_common.hpp"
#include "bitdistill/nn/linear.hpp"

namespace bitdistill::nn {

class FeedForward {
public:
    FeedForward() = default;
    /// Copies the feed-forward weights of `weights`; `prefix` starts every parameter name.
    /// Throws shape_error naming the first tensor whose shape is wrong.
    FeedForward(const DecoderConfig& config, const LayerWeights& weights, const std::string& prefix)
        : config_(config), prefix_(prefix) {
        const std::int64_t dim = config.dim;
        const std::int64_t hidden = config.hidden_dim;
        gate_up_norm_ = detail::optional_gain(prefix + "gate_up_norm", weights.gate_up_norm, config.all_norms, dim);
        w_gate_ = Projection(prefix + "w_gate", detail::checked_tensor(prefix + "w_gate", weights.w_gate, Shape{hidden, dim}));
        w_up_ = Projection(prefix + "w_up", detail::checked_tensor(prefix + "w_up", weights.w_up, Shape{hidden, dim}));
        subln_ = detail::optional_gain(prefix + "ffn_subln", weights.ffn_subln, config.subln, hidden);
        w_down_ = Projection(prefix + "w_down", detail::checked_tensor(prefix + "w_down", weights.w_down, Shape{dim, hidden}));
    }

    /// Runs the branch on the pre-normed input. Shapes: normed [tokens x dim]; the result is
    /// [tokens x dim].
    autodiff::Var forward(autodiff::Tape& tape, autodiff::Var normed) {
        using namespace autodiff;
        Var n = normed;
        if (!gate_up_norm_.empty()) n = rmsnorm(tape, n, gate_up_norm_.on(tape), config_.subln_eps);
        Var gate = w_gate_.forward(tape, n);
        Var up = w_up_.forward(tape, n);
        Var m = swiglu(tape, gate, up);
        if (!subln_.empty()) m = rmsnorm(tape, m, subln_.on(tape), config_.subln_eps);
        return w_down_.forward(tape, m);
    }

    /// Inserts SubLN before down_proj with unit gains, unless it is already there.
    void insert_subln() {
        if (subln_.empty()) subln_ = detail::unit_gain(prefix_ + "ffn_subln", config_.hidden_dim);
        config_.subln = true;
    }

    /// Inserts the all-norms RMSNorm on the input of gate/up with unit gains, unless it is
    /// already there.
    void insert_gate_up_norm() {
        if (gate_up_norm_.empty()) gate_up_norm_ = detail::unit_gain(prefix_ + "gate_up_norm", config_.dim);
        config_.all_norms = true;
    }

    void set_projection_mode(ProjectionMode mode, const BitLinearOptions& options) {
        for (Projection* p : {&w_gate_, &w_up_, &w_down_}) p->set_mode(mode, options);
    }

    /// Calls f(Parameter&) for every present parameter, in a fixed order.
    template <class F>
    void for_each_parameter(F&& f) {
        for (Parameter* p : {&gate_up_norm_, &w_gate_.weight(), &w_up_.weight(), &subln_, &w_down_.weight()})
            if (!p->empty()) f(*p);
    }

    /// Writes the feed-forward tensors of `weights`.
    void export_to(LayerWeights& weights) const {
        weights.gate_up_norm = detail::exported(gate_up_norm_);
        weights.w_gate = w_gate_.weight().value;
        weights.w_up = w_up_.weight().value;
        weights.ffn_subln = detail::exported(subln_);
        weights.w_down = w_down_.weight().value;
    }

    [[nodiscard]] Projection& w_gate() noexcept { return w_gate_; }
    [[nodiscard]] Projection& w_up() noexcept { return w_up_; }
    [[nodiscard]] Projection& w_down() noexcept { return w_down_; }

private:
    DecoderConfig config_;
    std::string prefix_;
    Parameter gate_up_norm_;
    Projection w_gate_, w_up_;
    Parameter subln_;
    Projection w_down_;
};

}  // namespace bitdistill::nn
