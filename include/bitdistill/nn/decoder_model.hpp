// A trainable Llama-style decoder built from DecoderWeights (see nn/config.hpp for the
// conventions):
//
//   x = embedding[tokens]
//   x = block_l(x) for every layer l
//   logits = rmsnorm(x, final_norm) Whead^T      (Whead = embedding when tied)
//
// The seven projections of every block (q, k, v, o, gate, up, down) run in float or as
// BitLinear and can be switched at run time. Embeddings, the LM head, the norms and the
// attention products stay in float.
//
// One training step:
//
//   nn::DecoderModel model(weights);              // or nn::random_decoder_weights(config, seed)
//   model.set_projection_mode(nn::ProjectionMode::ternary);
//   AdamW optimizer(model.parameters());
//   autodiff::Tape tape;                          // kept across steps: it reuses its buffers
//   tape.reset();
//   autodiff::Var logits = model.forward(tape, tokens, batch, seq_len, mask);
//   autodiff::Var loss = autodiff::cross_entropy(tape, logits, targets);
//   model.zero_grad();
//   tape.backward(loss);
//   optimizer.step(learning_rate);
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/autodiff/ops_embedding.hpp"
#include "bitdistill/autodiff/ops_norm.hpp"
#include "bitdistill/nn/config.hpp"
#include "bitdistill/nn/decoder_block.hpp"
#include "bitdistill/nn/layer_common.hpp"

namespace bitdistill::nn {

/// Random weights for `config`: every matrix drawn from N(0, init_std^2) with a
/// std::mt19937_64 seeded by `seed`, every norm gain 1. Parts the configuration switches
/// off stay empty; the LM head is empty when the embeddings are tied.
inline DecoderWeights random_decoder_weights(const DecoderConfig& config, std::uint64_t seed,
                                             float init_std = 0.02f) {
    config.validate();
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> normal(0.0f, init_std);
    auto matrix = [&](std::int64_t rows, std::int64_t cols) {
        Tensor<float> t(Shape{rows, cols});
        for (float& value : t) value = normal(generator);
        return t;
    };
    auto gain = [](bool enabled, std::int64_t width) {
        return enabled ? Tensor<float>(Shape{width}, 1.0f) : Tensor<float>();
    };

    const std::int64_t dim = config.dim;
    const std::int64_t hidden = config.hidden_dim;
    DecoderWeights weights;
    weights.config = config;
    weights.embedding = matrix(config.vocab_size, dim);
    for (int l = 0; l < config.n_layers; ++l) {
        LayerWeights layer;
        layer.attn_norm = gain(true, dim);
        layer.qkv_norm = gain(config.all_norms, dim);
        layer.wq = matrix(config.q_width(), dim);
        layer.wk = matrix(config.kv_width(), dim);
        layer.wv = matrix(config.kv_width(), dim);
        layer.q_norm = gain(config.qk_norm, config.resolved_head_dim());
        layer.k_norm = gain(config.qk_norm, config.resolved_head_dim());
        layer.attn_subln = gain(config.subln, config.q_width());
        layer.wo = matrix(dim, config.q_width());
        layer.ffn_norm = gain(true, dim);
        layer.gate_up_norm = gain(config.all_norms, dim);
        layer.w_gate = matrix(hidden, dim);
        layer.w_up = matrix(hidden, dim);
        layer.ffn_subln = gain(config.subln, hidden);
        layer.w_down = matrix(dim, hidden);
        weights.layers.push_back(std::move(layer));
    }
    weights.final_norm = gain(true, dim);
    if (!config.tied_embeddings) weights.lm_head = matrix(config.vocab_size, dim);
    return weights;
}

class DecoderModel {
public:
    /// Copies `weights`. Throws std::invalid_argument on an invalid configuration and
    /// shape_error naming the first tensor whose shape is wrong.
    explicit DecoderModel(const DecoderWeights& weights) : config_(weights.config) {
        config_.validate();
        BITDISTILL_REQUIRE_AS(shape_error, static_cast<int>(weights.layers.size()) == config_.n_layers,
                              "DecoderModel: ", weights.layers.size(), " layers of weights for n_layers ",
                              config_.n_layers);
        const std::int64_t vocab = config_.vocab_size;
        const std::int64_t dim = config_.dim;
        embedding_ = Parameter("embedding", detail::checked_tensor("embedding", weights.embedding, Shape{vocab, dim}));
        blocks_.reserve(weights.layers.size());
        for (int l = 0; l < config_.n_layers; ++l)
            blocks_.emplace_back(config_, weights.layers[static_cast<std::size_t>(l)],
                                 "layers." + std::to_string(l) + ".");
        final_norm_ = Parameter("final_norm", detail::checked_tensor("final_norm", weights.final_norm, Shape{dim}));
        if (!config_.tied_embeddings)
            lm_head_ = Parameter("lm_head", detail::checked_tensor("lm_head", weights.lm_head, Shape{vocab, dim}));
    }

    /// Runs the model on `batch` sequences of `seq_len` token ids (row-major, batch *
    /// seq_len ids) and returns the logits [batch*seq_len x vocab_size] as a tape value.
    /// `mask` is empty (no padding) or batch * seq_len bytes, 1 for real tokens and 0 for
    /// padding; padded tokens are never attended to. Pad on the right: RoPE positions count
    /// from the start of each sequence. The ids and the mask are read during this call only.
    autodiff::Var forward(autodiff::Tape& tape, std::span<const std::int32_t> tokens,
                          std::int64_t batch, std::int64_t seq_len,
                          std::span<const std::uint8_t> mask = {}) {
        return lm_head(tape, forward_hidden(tape, tokens, batch, seq_len, mask));
    }

    /// Runs the model up to and including the final norm and returns the hidden states
    /// [batch*seq_len x dim]; the arguments are those of forward(). Together with
    /// autodiff::select_rows and lm_head() this computes logits at chosen positions only
    /// (the LM head is the largest product of a small model with a large vocabulary).
    autodiff::Var forward_hidden(autodiff::Tape& tape, std::span<const std::int32_t> tokens,
                                 std::int64_t batch, std::int64_t seq_len,
                                 std::span<const std::uint8_t> mask = {}) {
        using namespace autodiff;
        BITDISTILL_REQUIRE(batch > 0 && seq_len > 0, "DecoderModel::forward: batch ", batch,
                           " and seq_len ", seq_len, " must be positive");
        BITDISTILL_REQUIRE(seq_len <= config_.max_seq_len, "DecoderModel::forward: seq_len ", seq_len,
                           " exceeds max_seq_len ", config_.max_seq_len);
        BITDISTILL_REQUIRE_AS(shape_error, static_cast<std::int64_t>(tokens.size()) == batch * seq_len,
                              "DecoderModel::forward: ", tokens.size(), " token ids for batch ", batch,
                              " x seq_len ", seq_len);
        BITDISTILL_REQUIRE_AS(shape_error, mask.empty() || static_cast<std::int64_t>(mask.size()) == batch * seq_len,
                              "DecoderModel::forward: mask has ", mask.size(), " entries for ",
                              batch * seq_len, " tokens");

        const BatchLayout layout{batch, seq_len, mask};
        Var x = embedding(tape, embedding_.on(tape), tokens);
        for (DecoderBlock& block : blocks_) x = block.forward(tape, x, layout);
        return rmsnorm(tape, x, final_norm_.on(tape), config_.norm_eps);
    }

    /// Logits hidden Whead^T (Whead = the embedding table when tied).
    /// Shapes: hidden [rows x dim]; the result is [rows x vocab_size].
    autodiff::Var lm_head(autodiff::Tape& tape, autodiff::Var hidden) {
        // A tied head records the embedding table as a second leaf on the same gradient
        // tensor, so the lookup and the head add into one gradient.
        const autodiff::Var head = config_.tied_embeddings ? embedding_.on(tape) : lm_head_.on(tape);
        return autodiff::linear(tape, hidden, head);
    }

    /// Q, K and V of layer `layer` from the last forward call, valid until that tape is
    /// reset; see AttentionStates.
    [[nodiscard]] const AttentionStates& attention_states(int layer) const {
        BITDISTILL_REQUIRE(layer >= 0 && layer < config_.n_layers, "DecoderModel::attention_states: layer ",
                           layer, " is outside [0, ", config_.n_layers, ")");
        return blocks_[static_cast<std::size_t>(layer)].attention_states();
    }

    /// Switches the seven projections of every block to `mode`; the latent float weights
    /// stay as they are (BitNet-SFT switches a trained float model to ternary).
    void set_projection_mode(ProjectionMode mode, const BitLinearOptions& options = {}) {
        for (DecoderBlock& block : blocks_) block.set_projection_mode(mode, options);
        mode_ = mode;
        bitlinear_options_ = options;
    }
    [[nodiscard]] ProjectionMode projection_mode() const noexcept { return mode_; }
    [[nodiscard]] const BitLinearOptions& bitlinear_options() const noexcept { return bitlinear_options_; }

    /// Inserts SubLN (RMSNorm with unit gains, eps config.subln_eps) before o_proj and
    /// down_proj of every block that lacks it, and sets config().subln. With `all_norms`
    /// it also inserts the RMSNorm on the input of q/k/v and of gate/up (the authors'
    /// "allnorm" configs) and sets config().all_norms. This changes the function of a
    /// trained model. Call parameters() again afterwards: the new gains are parameters.
    void insert_subln(bool all_norms = false) {
        for (DecoderBlock& block : blocks_) block.insert_subln(all_norms);
        config_.subln = true;
        if (all_norms) config_.all_norms = true;
    }

    /// Calls f(Parameter&) for every parameter, in a fixed order: embedding, the blocks in
    /// order, final_norm, lm_head (when untied).
    template <class F>
    void for_each_parameter(F&& f) {
        f(embedding_);
        for (DecoderBlock& block : blocks_) block.for_each_parameter(f);
        f(final_norm_);
        if (!lm_head_.empty()) f(lm_head_);
    }

    /// Optimizer views of all parameters, named as the DecoderWeights fields
    /// ("embedding", "layers.0.wq", ..., "final_norm", "lm_head"). 2-D weights decay, norm
    /// gains do not. The views point into heap storage owned by the model, so they stay
    /// valid while the model lives, also across a move. A copy of the model has its own.
    [[nodiscard]] std::vector<ParamRef> parameters() {
        std::vector<ParamRef> refs;
        for_each_parameter([&](Parameter& p) { refs.push_back(p.ref()); });
        return refs;
    }

    /// Sets every gradient to zero. Allocates nothing.
    void zero_grad() {
        for_each_parameter([](Parameter& p) { p.zero_grad(); });
    }

    /// The current weights as DecoderWeights (with the current config, including subln).
    [[nodiscard]] DecoderWeights export_weights() const {
        DecoderWeights weights;
        weights.config = config_;
        weights.embedding = embedding_.value;
        for (const DecoderBlock& block : blocks_) weights.layers.push_back(block.export_weights());
        weights.final_norm = final_norm_.value;
        if (!config_.tied_embeddings) weights.lm_head = lm_head_.value;
        return weights;
    }

    [[nodiscard]] const DecoderConfig& config() const noexcept { return config_; }
    [[nodiscard]] int n_layers() const noexcept { return config_.n_layers; }
    [[nodiscard]] DecoderBlock& block(int layer) { return blocks_.at(static_cast<std::size_t>(layer)); }

private:
    DecoderConfig config_;
    Parameter embedding_;
    std::vector<DecoderBlock> blocks_;
    Parameter final_norm_;
    Parameter lm_head_;
    ProjectionMode mode_ = ProjectionMode::full_precision;
    BitLinearOptions bitlinear_options_;
};

}  // namespace bitdistill::nn
