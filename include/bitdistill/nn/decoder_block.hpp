// One pre-RMSNorm decoder block:
//
//   h = x + attention(rmsnorm(x, attn_norm))
//   out = h + feed_forward(rmsnorm(h, ffn_norm))
//
// with the attention and feed-forward branches of nn/attention.hpp and nn/feed_forward.hpp.
#pragma once

#include <string>
#include <vector>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/autodiff/ops_norm.hpp"
#include "bitdistill/nn/attention.hpp"
#include "bitdistill/nn/config.hpp"
#include "bitdistill/nn/feed_forward.hpp"
#include "bitdistill/nn/layer_common.hpp"

namespace bitdistill::nn {

class DecoderBlock {
public:
    DecoderBlock() = default;
    /// Copies the block's weights; `prefix` starts every parameter name ("layers.3.").
    /// Throws shape_error naming the first tensor whose shape is wrong.
    DecoderBlock(const DecoderConfig& config, const LayerWeights& weights, const std::string& prefix)
        : config_(config),
          attn_norm_(prefix + "attn_norm", detail::checked_tensor(prefix + "attn_norm", weights.attn_norm, Shape{config.dim})),
          attention_(config, weights, prefix),
          ffn_norm_(prefix + "ffn_norm", detail::checked_tensor(prefix + "ffn_norm", weights.ffn_norm, Shape{config.dim})),
          feed_forward_(config, weights, prefix) {}

    /// Shapes: x [batch*seq x dim]; the result is [batch*seq x dim].
    autodiff::Var forward(autodiff::Tape& tape, autodiff::Var x, const BatchLayout& layout) {
        using namespace autodiff;
        Var attended = attention_.forward(tape, rmsnorm(tape, x, attn_norm_.on(tape), config_.norm_eps), layout);
        Var h = add(tape, x, attended);
        Var fed = feed_forward_.forward(tape, rmsnorm(tape, h, ffn_norm_.on(tape), config_.norm_eps));
        return add(tape, h, fed);
    }

    /// Q, K and V of the last forward call; see AttentionStates.
    [[nodiscard]] const AttentionStates& attention_states() const noexcept { return attention_.states(); }

    /// Inserts SubLN (unit gains, eps config.subln_eps) before o_proj and down_proj, and
    /// with `all_norms` also the RMSNorm on the input of q/k/v and of gate/up.
    void insert_subln(bool all_norms = false) {
        attention_.insert_subln();
        feed_forward_.insert_subln();
        config_.subln = true;
        if (all_norms) {
            attention_.insert_qkv_norm();
            feed_forward_.insert_gate_up_norm();
            config_.all_norms = true;
        }
    }

    /// Switches all seven projections (q, k, v, o, gate, up, down).
    void set_projection_mode(ProjectionMode mode, const BitLinearOptions& options = {}) {
        attention_.set_projection_mode(mode, options);
        feed_forward_.set_projection_mode(mode, options);
    }

    /// Calls f(Parameter&) for every parameter of the block, in a fixed order.
    template <class F>
    void for_each_parameter(F&& f) {
        f(attn_norm_);
        attention_.for_each_parameter(f);
        f(ffn_norm_);
        feed_forward_.for_each_parameter(f);
    }

    /// Optimizer views of the block's parameters, in the order of for_each_parameter.
    [[nodiscard]] std::vector<ParamRef> parameters() {
        std::vector<ParamRef> refs;
        for_each_parameter([&](Parameter& p) { refs.push_back(p.ref()); });
        return refs;
    }

    void zero_grad() {
        for_each_parameter([](Parameter& p) { p.zero_grad(); });
    }

    [[nodiscard]] LayerWeights export_weights() const {
        LayerWeights weights;
        weights.attn_norm = attn_norm_.value;
        attention_.export_to(weights);
        weights.ffn_norm = ffn_norm_.value;
        feed_forward_.export_to(weights);
        return weights;
    }

    [[nodiscard]] Attention& attention() noexcept { return attention_; }
    [[nodiscard]] FeedForward& feed_forward() noexcept { return feed_forward_; }
    [[nodiscard]] const DecoderConfig& config() const noexcept { return config_; }

private:
    DecoderConfig config_;
    Parameter attn_norm_;
    Attention attention_;
    Parameter ffn_norm_;
    FeedForward feed_forward_;
};

}  // namespace bitdistill::nn
