// The attention branch of a decoder block, from the pre-normed input to the o_proj output:
//
//   n = rmsnorm(x, qkv_norm)                      all-norms variant only
//   q = n Wq^T, k = n Wk^T, v = n Wv^T
//   q, k = rmsnorm per head (q_norm, k_norm)      qk_norm only (Qwen3)
//   q, k = rope(q), rope(k)
//   a = causal grouped-query attention(q, k, v)
//   a = rmsnorm(a, attn_subln)                    SubLN only
//   out = a Wo^T
#pragma once

#include <cstdint>
#include <string>

#include "bitdistill/autodiff/ops_attention.hpp"
#include "bitdistill/autodiff/ops_norm.hpp"
#include "bitdistill/autodiff/ops_rope.hpp"
#include "bitdistill/nn/config.hpp"
#include "bitdistill/nn/layer_common.hpp"
#include "bitdistill/nn/linear.hpp"

namespace bitdistill::nn {

/// Q, K and V of one attention layer as tape values, [batch*seq x heads*head_dim] with the
/// heads side by side: Q and K after q/k-norm and RoPE, V straight from v_proj, K and V
/// not repeated for grouped-query attention. These are the inputs of the attention
/// relation distillation.
struct AttentionStates {
    autodiff::Var q;
    autodiff::Var k;
    autodiff::Var v;
};

class Attention {
public:
    Attention() = default;
    /// Copies the attention weights of `weights`; `prefix` starts every parameter name
    /// ("layers.3."). Throws shape_error naming the first tensor whose shape is wrong.
    Attention(const DecoderConfig& config, const LayerWeights& weights, const std::string& prefix)
        : config_(config) {
        const std::int64_t dim = config.dim;
        const std::int64_t head_dim = config.resolved_head_dim();
        const std::int64_t q_width = config.q_width();
        const std::int64_t kv_width = config.kv_width();
        qkv_norm_ = detail::optional_gain(prefix + "qkv_norm", weights.qkv_norm, config.all_norms, dim);
        wq_ = Projection(prefix + "wq", detail::checked_tensor(prefix + "wq", weights.wq, Shape{q_width, dim}));
        wk_ = Projection(prefix + "wk", detail::checked_tensor(prefix + "wk", weights.wk, Shape{kv_width, dim}));
        wv_ = Projection(prefix + "wv", detail::checked_tensor(prefix + "wv", weights.wv, Shape{kv_width, dim}));
        q_norm_ = detail::optional_gain(prefix + "q_norm", weights.q_norm, config.qk_norm, head_dim);
        k_norm_ = detail::optional_gain(prefix + "k_norm", weights.k_norm, config.qk_norm, head_dim);
        subln_ = detail::optional_gain(prefix + "attn_subln", weights.attn_subln, config.subln, q_width);
        wo_ = Projection(prefix + "wo", detail::checked_tensor(prefix + "wo", weights.wo, Shape{dim, q_width}));
        prefix_ = prefix;
    }

    /// Runs the branch on the pre-normed input. Shapes: normed [batch*seq x dim]; the result
    /// is [batch*seq x dim]. Records the Q, K, V of this call (see states()).
    autodiff::Var forward(autodiff::Tape& tape, autodiff::Var normed, const BatchLayout& layout) {
        using namespace autodiff;
        const std::int64_t head_dim = config_.resolved_head_dim();
        Var n = normed;
        if (!qkv_norm_.empty()) n = rmsnorm(tape, n, qkv_norm_.on(tape), config_.subln_eps);

        Var q = wq_.forward(tape, n);
        Var k = wk_.forward(tape, n);
        Var v = wv_.forward(tape, n);
        if (!q_norm_.empty()) {
            // Per-head RMSNorm: groups of head_dim contiguous elements of each row.
            q = rmsnorm(tape, q, q_norm_.on(tape), config_.norm_eps);
            k = rmsnorm(tape, k, k_norm_.on(tape), config_.norm_eps);
        }
        q = rope(tape, q, layout.seq_len, head_dim, config_.rope_theta);
        k = rope(tape, k, layout.seq_len, head_dim, config_.rope_theta);
        states_ = {q, k, v};

        const AttentionShape shape{layout.batch, layout.seq_len, config_.n_heads, config_.n_kv_heads, head_dim};
        Var a = attention(tape, q, k, v, shape, layout.mask);
        if (!subln_.empty()) a = rmsnorm(tape, a, subln_.on(tape), config_.subln_eps);
        return wo_.forward(tape, a);
    }

    /// Q, K and V recorded by the last forward call; valid until that tape is reset.
    [[nodiscard]] const AttentionStates& states() const noexcept { return states_; }

    /// Inserts SubLN before o_proj with unit gains, unless it is already there.
    void insert_subln() {
        if (subln_.empty()) subln_ = detail::unit_gain(prefix_ + "attn_subln", config_.q_width());
        config_.subln = true;
    }

    /// Inserts the all-norms RMSNorm on the input of q/k/v with unit gains, unless it is
    /// already there.
    void insert_qkv_norm() {
        if (qkv_norm_.empty()) qkv_norm_ = detail::unit_gain(prefix_ + "qkv_norm", config_.dim);
        config_.all_norms = true;
    }

    void set_projection_mode(ProjectionMode mode, const BitLinearOptions& options) {
        for (Projection* p : {&wq_, &wk_, &wv_, &wo_}) p->set_mode(mode, options);
    }

    /// Calls f(Parameter&) for every present parameter, in a fixed order.
    template <class F>
    void for_each_parameter(F&& f) {
        for (Parameter* p : {&qkv_norm_, &wq_.weight(), &wk_.weight(), &wv_.weight(), &q_norm_,
                             &k_norm_, &subln_, &wo_.weight()})
            if (!p->empty()) f(*p);
    }

    /// Writes the attention tensors of `weights`.
    void export_to(LayerWeights& weights) const {
        weights.qkv_norm = detail::exported(qkv_norm_);
        weights.wq = wq_.weight().value;
        weights.wk = wk_.weight().value;
        weights.wv = wv_.weight().value;
        weights.q_norm = detail::exported(q_norm_);
        weights.k_norm = detail::exported(k_norm_);
        weights.attn_subln = detail::exported(subln_);
        weights.wo = wo_.weight().value;
    }

    [[nodiscard]] Projection& wq() noexcept { return wq_; }
    [[nodiscard]] Projection& wk() noexcept { return wk_; }
    [[nodiscard]] Projection& wv() noexcept { return wv_; }
    [[nodiscard]] Projection& wo() noexcept { return wo_; }

private:
    DecoderConfig config_;
    std::string prefix_;
    Parameter qkv_norm_;
    Projection wq_, wk_, wv_;
    Parameter q_norm_, k_norm_;
    Parameter subln_;
    Projection wo_;
    AttentionStates states_;
};

}  // namespace bitdistill::nn
