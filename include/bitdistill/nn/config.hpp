// Decoder configuration and its float weights: the one description of a Llama-style
// decoder that the trainable model, the checkpoint loaders and the inference engine share.
//
// Conventions (all projections follow PyTorch's nn.Linear: weight [out x in], y = x W^T):
// - pre-RMSNorm blocks: h = x + o_proj(attn(norm(x))); out = h + down(silu(gate(n)) * up(n)),
//   n = norm(h);
// - RoPE rotates interleaved pairs (x[2i], x[2i+1]) of each head with frequency
//   theta^(-2i / head_dim), as llama2.c and Meta's original Llama code do;
// - grouped-query attention: query head h reads key/value head h / (n_heads / n_kv_heads);
// - optional per-head RMSNorm of q and k (Qwen3) is applied before RoPE;
// - SubLN: RMSNorm (gain initialised to 1, eps subln_eps) on the input of o_proj and of
//   down_proj; the "all norms" variant adds one RMSNorm on the input of q/k/v and one on
//   the input of gate/up.
#pragma once

#include <cstdint>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

struct DecoderConfig {
    int vocab_size = 0;
    int dim = 0;          ///< model width
    int hidden_dim = 0;   ///< FFN width
    int n_layers = 0;
    int n_heads = 0;      ///< query heads
    int n_kv_heads = 0;   ///< key/value heads; divides n_heads
    int head_dim = 0;     ///< 0 means dim / n_heads
    int max_seq_len = 0;
    float norm_eps = 1e-5f;
    float rope_theta = 10000.0f;
    bool qk_norm = false;
    bool subln = false;
    bool all_norms = false;
    float subln_eps = 1e-8f;
    bool tied_embeddings = true;

    [[nodiscard]] int resolved_head_dim() const { return head_dim != 0 ? head_dim : dim / n_heads; }
    [[nodiscard]] int q_width() const { return n_heads * resolved_head_dim(); }
    [[nodiscard]] int kv_width() const { return n_kv_heads * resolved_head_dim(); }

    /// Throws std::invalid_argument naming the first field that is out of range.
    void validate() const {
        BITDISTILL_REQUIRE(vocab_size > 0, "DecoderConfig: vocab_size must be positive, got ", vocab_size);
        BITDISTILL_REQUIRE(dim > 0, "DecoderConfig: dim must be positive, got ", dim);
        BITDISTILL_REQUIRE(hidden_dim > 0, "DecoderConfig: hidden_dim must be positive, got ", hidden_dim);
        BITDISTILL_REQUIRE(n_layers > 0, "DecoderConfig: n_layers must be positive, got ", n_layers);
        BITDISTILL_REQUIRE(n_heads > 0, "DecoderConfig: n_heads must be positive, got ", n_heads);
        BITDISTILL_REQUIRE(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "DecoderConfig: n_kv_heads ",
                           n_kv_heads, " must be positive and divide n_heads ", n_heads);
        BITDISTILL_REQUIRE(head_dim != 0 || dim % n_heads == 0, "DecoderConfig: dim ", dim,
                           " is not divisible by n_heads ", n_heads, " and head_dim is unset");
        BITDISTILL_REQUIRE(resolved_head_dim() % 2 == 0, "DecoderConfig: head_dim ",
                           resolved_head_dim(), " must be even for RoPE");
        BITDISTILL_REQUIRE(max_seq_len > 0, "DecoderConfig: max_seq_len must be positive, got ", max_seq_len);
    }
};

/// Float weights of one decoder block. Norm gains are vectors; empty tensors mark parts
/// the configuration switches off.
struct LayerWeights {
    Tensor<float> attn_norm;   ///< [dim]
    Tensor<float> qkv_norm;    ///< [dim], all-norms variant only
    Tensor<float> wq;          ///< [q_width x dim]
    Tensor<float> wk;          ///< [kv_width x dim]
    Tensor<float> wv;          ///< [kv_width x dim]
    Tensor<float> q_norm;      ///< [head_dim], qk_norm only
    Tensor<float> k_norm;      ///< [head_dim], qk_norm only
    Tensor<float> attn_subln;  ///< [q_width], SubLN only
    Tensor<float> wo;          ///< [dim x q_width]
    Tensor<float> ffn_norm;    ///< [dim]
    Tensor<float> gate_up_norm;///< [dim], all-norms variant only
    Tensor<float> w_gate;      ///< [hidden_dim x dim]
    Tensor<float> w_up;        ///< [hidden_dim x dim]
    Tensor<float> ffn_subln;   ///< [hidden_dim], SubLN only
    Tensor<float> w_down;      ///< [dim x hidden_dim]
};

struct DecoderWeights {
    DecoderConfig config;
    Tensor<float> embedding;   ///< [vocab_size x dim]
    std::vector<LayerWeights> layers;
    Tensor<float> final_norm;  ///< [dim]
    Tensor<float> lm_head;     ///< [vocab_size x dim]; empty when tied to the embedding
};

}  // namespace bitdistill
