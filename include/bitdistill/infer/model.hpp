// A decoder ready for inference: projections in one ProjectionEncoding, the token
// embedding and LM head in fp32 or bf16, norm gains in fp32.
//
// What each standard format stores (per Llama-style block: q, k, v, o, gate, up, down):
//   InferenceFormat::fp32()       projections fp32,        embedding/LM head fp32
//   InferenceFormat::bf16()       projections bf16,        embedding/LM head bf16
//   InferenceFormat::ternary2()   projections 2-bit ternary,  embedding/LM head bf16
//   InferenceFormat::ternary1_6() projections 1.6-bit ternary, embedding/LM head bf16
// Norm gains (attention, FFN, final, and the optional q/k-norm, SubLN and all-norms gains)
// are always fp32. A tied model stores one table that serves as embedding and LM head.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/infer/linear.hpp"
#include "bitdistill/nn/config.hpp"

namespace bitdistill {

/// Encodings of a model's projections and of its embedding and LM head. The embedding and
/// LM head take fp32 or bf16 only.
struct InferenceFormat {
    ProjectionEncoding projections = ProjectionEncoding::ternary2;
    ProjectionEncoding embeddings = ProjectionEncoding::bf16;
    /// Scales of ternary projections: per_tensor (the default) or per_row. It must match
    /// the granularity the student was trained with (BitLinearOptions::weight_granularity).
    Granularity ternary_scales = Granularity::per_tensor;

    [[nodiscard]] static InferenceFormat fp32() { return {ProjectionEncoding::fp32, ProjectionEncoding::fp32}; }
    [[nodiscard]] static InferenceFormat bf16() { return {ProjectionEncoding::bf16, ProjectionEncoding::bf16}; }
    [[nodiscard]] static InferenceFormat ternary2(Granularity scales = Granularity::per_tensor) {
        return {ProjectionEncoding::ternary2, ProjectionEncoding::bf16, scales};
    }
    [[nodiscard]] static InferenceFormat ternary1_6(Granularity scales = Granularity::per_tensor) {
        return {ProjectionEncoding::ternary1_6, ProjectionEncoding::bf16, scales};
    }
};

/// True for a norm gain that the configuration switched off (a default-constructed tensor).
[[nodiscard]] inline bool is_absent(const Tensor<float>& gain) noexcept {
    return gain.shape().rank() == 0 || gain.numel() == 0;
}

/// Resident bytes of a model's weights, split by role.
struct WeightMemory {
    std::size_t projections = 0;  ///< q, k, v, o, gate, up, down of every layer
    std::size_t embeddings = 0;   ///< token embedding plus LM head (once when tied)
    std::size_t other = 0;        ///< norm gains
    [[nodiscard]] std::size_t total() const noexcept { return projections + embeddings + other; }
};

/// One decoder block. Norm gains that the configuration switches off are empty.
struct InferenceLayer {
    Tensor<float> attn_norm, qkv_norm, q_norm, k_norm, attn_subln;
    Tensor<float> ffn_norm, gate_up_norm, ffn_subln;
    PackedLinear wq, wk, wv, wo, w_gate, w_up, w_down;
};

/// A decoder for inference. Build one with InferenceModel::build, or load one with
/// load_student (io/student_format.hpp). The members are public so that the file format
/// can read and write them; validate() checks that they fit the configuration.
struct InferenceModel {
    DecoderConfig config;
    InferenceFormat format;
    PackedLinear embedding;  ///< [vocab x dim]
    PackedLinear lm_head;    ///< [vocab x dim]; empty (fp32, 0 x 0) when tied to the embedding
    std::vector<InferenceLayer> layers;
    Tensor<float> final_norm;  ///< [dim]

    /// Encodes float weights in `format`: each projection quantized absmean (per tensor or
    /// per row) when ternary, the embedding and LM head rounded to bf16 when asked.
    /// Throws std::invalid_argument or shape_error naming the first tensor that does not
    /// fit the configuration.
    [[nodiscard]] static InferenceModel build(const DecoderWeights& weights, InferenceFormat format) {
        check_format(format);
        check_weights(weights);
        const DecoderConfig& config = weights.config;
        InferenceModel model;
        model.config = config;
        model.format = format;
        model.embedding = PackedLinear::encode(weights.embedding.view(), format.embeddings);
        if (!config.tied_embeddings)
            model.lm_head = PackedLinear::encode(weights.lm_head.view(), format.embeddings);
        model.final_norm = weights.final_norm;
        model.layers.reserve(weights.layers.size());
        for (const LayerWeights& source : weights.layers) {
            InferenceLayer layer;
            layer.attn_norm = source.attn_norm;
            layer.qkv_norm = source.qkv_norm;
            layer.q_norm = source.q_norm;
            layer.k_norm = source.k_norm;
            layer.attn_subln = source.attn_subln;
            layer.ffn_norm = source.ffn_norm;
            layer.gate_up_norm = source.gate_up_norm;
            layer.ffn_subln = source.ffn_subln;
            const ProjectionEncoding encoding = format.projections;
            const Granularity scales = format.ternary_scales;
            layer.wq = PackedLinear::encode(source.wq.view(), encoding, scales);
            layer.wk = PackedLinear::encode(source.wk.view(), encoding, scales);
            layer.wv = PackedLinear::encode(source.wv.view(), encoding, scales);
            layer.wo = PackedLinear::encode(source.wo.view(), encoding, scales);
            layer.w_gate = PackedLinear::encode(source.w_gate.view(), encoding, scales);
            layer.w_up = PackedLinear::encode(source.w_up.view(), encoding, scales);
            layer.w_down = PackedLinear::encode(source.w_down.view(), encoding, scales);
            model.layers.push_back(std::move(layer));
        }
        model.validate();
        return model;
    }

    /// The matrix that maps final hidden states to logits.
    [[nodiscard]] const PackedLinear& output_head() const noexcept {
        return config.tied_embeddings ? embedding : lm_head;
    }

    [[nodiscard]] WeightMemory memory() const {
        WeightMemory memory;
        memory.embeddings = embedding.resident_bytes() + (config.tied_embeddings ? 0 : lm_head.resident_bytes());
        memory.other = static_cast<std::size_t>(final_norm.numel()) * sizeof(float);
        for (const InferenceLayer& layer : layers) {
            for (const PackedLinear* w : {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w_gate,
                                          &layer.w_up, &layer.w_down})
                memory.projections += w->resident_bytes();
            for (const Tensor<float>* gain :
                 {&layer.attn_norm, &layer.qkv_norm, &layer.q_norm, &layer.k_norm, &layer.attn_subln,
                  &layer.ffn_norm, &layer.gate_up_norm, &layer.ffn_subln})
                if (!is_absent(*gain)) memory.other += static_cast<std::size_t>(gain->numel()) * sizeof(float);
        }
        return memory;
    }

    /// Throws std::invalid_argument or shape_error unless every member fits `config` and
    /// `format`: shapes, encodings, and norm gains present exactly where the flags ask.
    void validate() const {
        config.validate();
        check_format(format);
        const std::int64_t vocab = config.vocab_size, dim = config.dim, hidden = config.hidden_dim;
        const std::int64_t head_dim = config.resolved_head_dim();
        const std::int64_t q_width = config.q_width(), kv_width = config.kv_width();
        auto check_linear = [&](const PackedLinear& w, const std::string& name, std::int64_t rows,
                                std::int64_t cols, ProjectionEncoding encoding) {
            BITDISTILL_REQUIRE_AS(shape_error, w.rows() == rows && w.cols() == cols,
                                  "InferenceModel: ", name, " is [", w.rows(), " x ", w.cols(),
                                  "], expected [", rows, " x ", cols, "]");
            BITDISTILL_REQUIRE(w.encoding() == encoding, "InferenceModel: ", name, " is stored as ",
                               encoding_name(w.encoding()), ", expected ", encoding_name(encoding));
            const Granularity scales = is_ternary(encoding) ? format.ternary_scales : Granularity::per_tensor;
            BITDISTILL_REQUIRE(w.scale_granularity() == scales, "InferenceModel: ", name,
                               " has scales of another granularity than the format's");
        };
        auto check_gain = [&](const Tensor<float>& gain, const std::string& name, bool present,
                              std::int64_t width) {
            const bool fits = present ? gain.shape() == Shape{width} : is_absent(gain);
            BITDISTILL_REQUIRE_AS(shape_error, fits,
                                  "InferenceModel: norm gain ", name, " has shape ",
                                  gain.shape().to_string(), ", expected ",
                                  present ? "[" + std::to_string(width) + "]" : "none (flag off)");
        };

        check_linear(embedding, "embedding", vocab, dim, format.embeddings);
        if (config.tied_embeddings)
            check_linear(lm_head, "lm_head (tied, so empty)", 0, 0, ProjectionEncoding::fp32);
        else
            check_linear(lm_head, "lm_head", vocab, dim, format.embeddings);
        check_gain(final_norm, "final_norm", true, dim);

        BITDISTILL_REQUIRE(static_cast<std::int64_t>(layers.size()) == config.n_layers,
                           "InferenceModel: ", layers.size(), " layers, expected ", config.n_layers);
        for (std::size_t index = 0; index < layers.size(); ++index) {
            const InferenceLayer& layer = layers[index];
            const std::string prefix = "layers[" + std::to_string(index) + "].";
            const ProjectionEncoding encoding = format.projections;
            check_linear(layer.wq, prefix + "wq", q_width, dim, encoding);
            check_linear(layer.wk, prefix + "wk", kv_width, dim, encoding);
            check_linear(layer.wv, prefix + "wv", kv_width, dim, encoding);
            check_linear(layer.wo, prefix + "wo", dim, q_width, encoding);
            check_linear(layer.w_gate, prefix + "w_gate", hidden, dim, encoding);
            check_linear(layer.w_up, prefix + "w_up", hidden, dim, encoding);
            check_linear(layer.w_down, prefix + "w_down", dim, hidden, encoding);
            check_gain(layer.attn_norm, prefix + "attn_norm", true, dim);
            check_gain(layer.ffn_norm, prefix + "ffn_norm", true, dim);
            check_gain(layer.q_norm, prefix + "q_norm", config.qk_norm, head_dim);
            check_gain(layer.k_norm, prefix + "k_norm", config.qk_norm, head_dim);
            check_gain(layer.attn_subln, prefix + "attn_subln", config.subln, q_width);
            check_gain(layer.ffn_subln, prefix + "ffn_subln", config.subln, hidden);
            check_gain(layer.qkv_norm, prefix + "qkv_norm", config.all_norms, dim);
            check_gain(layer.gate_up_norm, prefix + "gate_up_norm", config.all_norms, dim);
        }
    }

private:
    static void check_format(const InferenceFormat& format) {
        BITDISTILL_REQUIRE(!is_ternary(format.embeddings), "InferenceFormat: the embedding and LM head take ",
                           "fp32 or bf16, not ", encoding_name(format.embeddings));
        BITDISTILL_REQUIRE(format.ternary_scales != Granularity::per_token,
                           "InferenceFormat: ternary scales are per_tensor or per_row, not per_token");
    }

    /// Checks the float weights before anything is encoded, so a bad shape is reported
    /// with the tensor's name instead of failing inside a kernel.
    static void check_weights(const DecoderWeights& weights) {
        const DecoderConfig& config = weights.config;
        config.validate();
        auto check = [](const Tensor<float>& tensor, const std::string& name, Shape expected) {
            BITDISTILL_REQUIRE_AS(shape_error, tensor.shape() == expected, "InferenceModel::build: ",
                                  name, " has shape ", tensor.shape().to_string(), ", expected ",
                                  expected.to_string());
        };
        const std::int64_t vocab = config.vocab_size, dim = config.dim, hidden = config.hidden_dim;
        const std::int64_t q_width = config.q_width(), kv_width = config.kv_width();
        check(weights.embedding, "embedding", Shape{vocab, dim});
        if (!config.tied_embeddings) check(weights.lm_head, "lm_head", Shape{vocab, dim});
        check(weights.final_norm, "final_norm", Shape{dim});
        BITDISTILL_REQUIRE(static_cast<std::int64_t>(weights.layers.size()) == config.n_layers,
                           "InferenceModel::build: ", weights.layers.size(), " layers, expected ",
                           config.n_layers);
        for (std::size_t index = 0; index < weights.layers.size(); ++index) {
            const LayerWeights& layer = weights.layers[index];
            const std::string prefix = "layers[" + std::to_string(index) + "].";
            check(layer.wq, prefix + "wq", Shape{q_width, dim});
            check(layer.wk, prefix + "wk", Shape{kv_width, dim});
            check(layer.wv, prefix + "wv", Shape{kv_width, dim});
            check(layer.wo, prefix + "wo", Shape{dim, q_width});
            check(layer.w_gate, prefix + "w_gate", Shape{hidden, dim});
            check(layer.w_up, prefix + "w_up", Shape{hidden, dim});
            check(layer.w_down, prefix + "w_down", Shape{dim, hidden});
        }
    }
};

}  // namespace bitdistill
