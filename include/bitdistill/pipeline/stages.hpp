// The stages of BitNet Distillation (Wu et al., "BitNet Distillation", arXiv 2510.13998)
// and its baselines, each a function from weights to weights that ends in a checkpoint:
//
//   pretrain              float next-token training of a fresh model on a corpus
//   fine_tune             task fine-tuning with cross-entropy on the answer tokens; in float
//                         it is FP-SFT (the teacher), in ternary mode without SubLN it is
//                         BitNet-SFT
//   insert_subln          stage 1: RMSNorm before o_proj and down_proj (optionally also
//                         before q/k/v and gate/up, "all norms")
//   continue_pretraining  stage 2: next-token training of the ternary student on a corpus
//   distill               stage 3: CE + lambda * logits distillation + gamma * attention
//                         relation distillation from the FP-SFT teacher at one layer
//
// Users can call each one from their own pipeline; the SST-2 and MNLI examples chain them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/losses/attention_relation.hpp"
#include "bitdistill/losses/cross_entropy.hpp"
#include "bitdistill/losses/logits_distillation.hpp"
#include "bitdistill/nn/decoder_model.hpp"
#include "bitdistill/pipeline/data.hpp"
#include "bitdistill/pipeline/training.hpp"

namespace bitdistill::pipeline {

/// Language-model data: windows of a token stream, every position a target.
[[nodiscard]] inline BatchSource language_model_source(const std::vector<TokenIds>& windows) {
    BatchSource source;
    source.item_count = static_cast<std::int64_t>(windows.size());
    source.fingerprint = fingerprint_tokens(windows);
    source.make_batch = [&windows](const std::vector<std::int64_t>& indices) { return make_lm_batch(windows, indices); };
    return source;
}

/// Classification data: encoded rows, grouped by length, targets on the answer tokens.
/// `examples` must outlive the source.
[[nodiscard]] inline BatchSource classification_source(const std::vector<ClassificationExample>& examples,
                                                       std::int32_t pad_id) {
    BatchSource source;
    source.item_count = static_cast<std::int64_t>(examples.size());
    std::vector<TokenIds> sequences;
    sequences.reserve(examples.size());
    for (const ClassificationExample& example : examples) {
        source.lengths.push_back(static_cast<std::int64_t>(example.tokens.size()));
        sequences.push_back(example.tokens);
        sequences.back().push_back(example.answer_start);
    }
    source.fingerprint = fingerprint_tokens(sequences);
    source.make_batch = [&examples, pad_id](const std::vector<std::int64_t>& indices) {
        return make_classification_batch(examples, indices, pad_id);
    };
    return source;
}

namespace detail {

/// Collects the rows of `batch` that have a target, and those targets, in row order.
inline void target_rows(const TokenBatch& batch, std::vector<std::int32_t>& rows, std::vector<std::int32_t>& targets) {
    rows.clear();
    targets.clear();
    for (std::size_t row = 0; row < batch.targets.size(); ++row) {
        if (batch.targets[row] == ignored_target) continue;
        rows.push_back(static_cast<std::int32_t>(row));
        targets.push_back(batch.targets[row]);
    }
}

/// Buffers of cross_entropy_step, kept between steps so that a warmed-up step reuses them.
struct CrossEntropyBuffers {
    Tensor<float> grad_logits;
    std::vector<std::int32_t> rows;     ///< rows with a target, when the batch is sparse
    std::vector<std::int32_t> targets;  ///< their targets, in the same order
};

/// Records the forward pass, takes cross-entropy over the batch targets and runs backward.
/// When at most half of the rows have a target, as in classification batches, the LM head
/// runs on those rows only. Loss and gradients equal the full product's, because ignored
/// rows contribute nothing to either.
inline StepLoss cross_entropy_step(nn::DecoderModel& model, autodiff::Tape& tape, const TokenBatch& batch,
                                   CrossEntropyBuffers& buffers) {
    const auto all_rows = static_cast<std::int64_t>(batch.targets.size());
    autodiff::Var logits;
    std::span<const std::int32_t> targets = batch.targets;
    if (2 * batch.target_count <= all_rows) {
        target_rows(batch, buffers.rows, buffers.targets);
        const autodiff::Var hidden = model.forward_hidden(tape, batch.tokens, batch.batch, batch.seq);
        logits = model.lm_head(tape, autodiff::select_rows(tape, hidden, buffers.rows));
        targets = buffers.targets;
    } else {
        logits = model.forward(tape, batch.tokens, batch.batch, batch.seq);
    }
    buffers.grad_logits.resize_zero(tape.shape(logits));
    const float loss = cross_entropy(tape.value(logits), targets, buffers.grad_logits.view());
    tape.backward(logits, buffers.grad_logits.view());
    return {loss, {{"ce", loss}}};
}

[[nodiscard]] inline std::uint64_t hash_text(const std::string& text) {
    Fnv1a64 hash;
    hash.update(text);
    return hash.digest();
}

}  // namespace detail

/// Next-token training of `initial` on `corpus` with every projection in `mode`. The
/// stage name is "pretrain" for float pre-training and "stage2" for the ternary student's
/// continued pre-training; continue_pretraining below is the named shortcut for the latter.
[[nodiscard]] inline StageOutcome pretrain(const DecoderWeights& initial, const BatchSource& corpus,
                                           const TrainingSettings& settings, const RunControl& control,
                                           nn::ProjectionMode mode = nn::ProjectionMode::full_precision,
                                           const std::string& stage = "pretrain") {
    nn::DecoderModel model(initial);
    model.set_projection_mode(mode);
    detail::CrossEntropyBuffers buffers;
    return run_training_stage(stage, model, corpus, settings, control, detail::hash_text("next-token"),
                              [&](autodiff::Tape& tape, const TokenBatch& batch, std::int64_t) {
                                  return detail::cross_entropy_step(model, tape, batch, buffers);
                              });
}

/// Stage 2: continued pre-training of the ternary student (after SubLN) on a corpus, so
/// that its latent weights settle near the ternary rounding boundaries.
[[nodiscard]] inline StageOutcome continue_pretraining(const DecoderWeights& student, const BatchSource& corpus,
                                                       const TrainingSettings& settings, const RunControl& control,
                                                       const std::string& stage = "stage2") {
    return pretrain(student, corpus, settings, control, nn::ProjectionMode::ternary, stage);
}

/// Task fine-tuning with cross-entropy on the answer tokens only. In full precision this
/// is FP-SFT; in ternary mode on weights without SubLN it is the BitNet-SFT baseline.
[[nodiscard]] inline StageOutcome fine_tune(const DecoderWeights& initial, nn::ProjectionMode mode,
                                            const BatchSource& task, const TrainingSettings& settings,
                                            const RunControl& control, const std::string& stage) {
    nn::DecoderModel model(initial);
    model.set_projection_mode(mode);
    detail::CrossEntropyBuffers buffers;
    return run_training_stage(stage, model, task, settings, control, detail::hash_text("answer-ce"),
                              [&](autodiff::Tape& tape, const TokenBatch& batch, std::int64_t) {
                                  return detail::cross_entropy_step(model, tape, batch, buffers);
                              });
}

/// Stage 1: returns `weights` with SubLN inserted (an RMSNorm with unit gain before o_proj
/// and before down_proj of every block) and, with `all_norms`, also an RMSNorm before
/// q/k/v and before gate/up, as the authors' "allnorm" configurations do. Existing gains
/// are kept. This changes the function of a trained model; stage 2 repairs it.
[[nodiscard]] inline DecoderWeights insert_subln(const DecoderWeights& weights, bool all_norms = false) {
    DecoderWeights result = weights;
    DecoderConfig& config = result.config;
    for (LayerWeights& layer : result.layers) {
        if (layer.attn_subln.shape().rank() == 0) layer.attn_subln = Tensor<float>(Shape{config.q_width()}, 1.0f);
        if (layer.ffn_subln.shape().rank() == 0) layer.ffn_subln = Tensor<float>(Shape{config.hidden_dim}, 1.0f);
        if (all_norms) {
            if (layer.qkv_norm.shape().rank() == 0) layer.qkv_norm = Tensor<float>(Shape{config.dim}, 1.0f);
            if (layer.gate_up_norm.shape().rank() == 0) layer.gate_up_norm = Tensor<float>(Shape{config.dim}, 1.0f);
        }
    }
    config.subln = true;
    config.all_norms = config.all_norms || all_norms;
    return result;
}

/// Stage 1 as a stage: inserts SubLN and writes <checkpoint_dir>/stage1.ckpt with the
/// result, so that every stage of the pipeline ends in a checkpoint.
[[nodiscard]] inline StageOutcome subln_stage(const DecoderWeights& weights, bool all_norms,
                                              const RunControl& control, const std::string& stage = "stage1") {
    const auto started = std::chrono::steady_clock::now();
    StageOutcome outcome;
    outcome.stage = stage;
    outcome.curve.stage = stage;
    outcome.weights = insert_subln(weights, all_norms);
    outcome.mode = nn::ProjectionMode::ternary;
    outcome.completed = true;
    if (!control.checkpoint_dir.empty()) {
        Checkpoint checkpoint;
        for (const auto& [name, value] : control.metadata) checkpoint.set_text("meta." + name, value);
        checkpoint.set_text("stage", stage);
        checkpoint.set_text("projection_mode", "ternary");
        checkpoint.set_integer("step", 0);
        checkpoint.set_integer("completed", 1);
        checkpoint.set_text("seed", std::to_string(control.seed));
        store_decoder_weights(checkpoint, "model.", outcome.weights);
        std::filesystem::create_directories(control.checkpoint_dir);
        checkpoint.save(control.checkpoint_dir / (stage + ".ckpt"));
    }
    outcome.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return outcome;
}

/// Positions over which the logits distillation averages.
enum class DistillPositions {
    all_tokens,  ///< every real (non-padding) position of the sequence
    answers,     ///< only the positions that predict an answer token
};

/// Settings of stage 3. The defaults are the paper's classification settings, except the
/// number of relation heads, which is chosen so that each keeps at least 16 dimensions.
struct DistillationSettings {
    float logits_weight = 10.0f;          ///< lambda
    float attention_weight = 1e5f;        ///< gamma
    float temperature = default_distillation_temperature;  ///< tau
    bool use_logits = true;               ///< false: attention-only ablation
    bool use_attention = true;            ///< false: logits-only ablation
    int layer = -1;                       ///< distilled layer; -1: floor(0.8 * n_layers), clamped
    int relation_heads = 0;               ///< A_r; 0: the largest <= 32 keeping >= 16 dims per head
    RelationVariant relation = RelationVariant::cosine;
    DistillPositions positions = DistillPositions::all_tokens;
};

/// The layer distilled by default: about 0.8 of the depth, the paper's best choice.
[[nodiscard]] inline int default_distill_layer(int n_layers) {
    return std::clamp(static_cast<int>(std::floor(0.8 * n_layers)), 0, n_layers - 1);
}

/// The largest A_r <= 32 that divides every width and leaves each relation head at least
/// 16 dimensions, or 1 when none does.
[[nodiscard]] inline int default_relation_heads(std::initializer_list<std::int64_t> widths) {
    for (int heads = 32; heads > 1; --heads) {
        bool fits = true;
        for (std::int64_t width : widths) fits = fits && width % heads == 0 && width / heads >= 16;
        if (fits) return heads;
    }
    return 1;
}

/// Stage 3: fine-tunes the ternary `student` on the task with
///   L = CE + lambda * L_LD + gamma * L_AD
/// where the teacher is the float FP-SFT model. CE is on the answer tokens; L_LD is the
/// tau^2-scaled KL between the temperature-softened teacher and student distributions,
/// averaged over the chosen positions; L_AD is the Q/K/V relation distillation at one layer,
/// with padded tokens removed. Teacher and student must share the vocabulary; their widths
/// and depths may differ, with the teacher's layer at the same relative depth.
[[nodiscard]] inline StageOutcome distill(const DecoderWeights& student, const DecoderWeights& teacher,
                                          const BatchSource& task, const DistillationSettings& distillation,
                                          const TrainingSettings& settings, const RunControl& control,
                                          const std::string& stage = "stage3") {
    BITDISTILL_REQUIRE(student.config.vocab_size == teacher.config.vocab_size, "distill: student vocabulary ",
                       student.config.vocab_size, " differs from the teacher's ", teacher.config.vocab_size);
    nn::DecoderModel model(student);
    model.set_projection_mode(nn::ProjectionMode::ternary);
    nn::DecoderModel teacher_model(teacher);

    const int student_layer = distillation.layer >= 0 ? distillation.layer : default_distill_layer(model.n_layers());
    BITDISTILL_REQUIRE(student_layer < model.n_layers(), "distill: layer ", student_layer, " is outside [0, ",
                       model.n_layers(), ")");
    const int teacher_layer = teacher_model.n_layers() == model.n_layers()
                                  ? student_layer
                                  : std::clamp(static_cast<int>(std::lround(static_cast<double>(student_layer + 1) *
                                                                            teacher_model.n_layers() / model.n_layers())) - 1,
                                               0, teacher_model.n_layers() - 1);
    AttentionRelationOptions relation;
    relation.variant = distillation.relation;
    relation.relation_heads = distillation.relation_heads > 0
                                  ? distillation.relation_heads
                                  : default_relation_heads({student.config.q_width(), student.config.kv_width(),
                                                            teacher.config.q_width(), teacher.config.kv_width()});

    std::ostringstream key;
    key << "distill " << fingerprint_weights(teacher) << ' ' << distillation.logits_weight << ' '
        << distillation.attention_weight << ' ' << distillation.temperature << ' ' << distillation.use_logits << ' '
        << distillation.use_attention << ' ' << student_layer << ' ' << teacher_layer << ' '
        << relation.relation_heads << ' ' << static_cast<int>(relation.variant) << ' '
        << static_cast<int>(distillation.positions);

    autodiff::Tape teacher_tape;
    teacher_tape.set_grad_enabled(false);
    AttentionRelationWorkspace workspace;
    Tensor<float> grad_logits, grad_ld, grad_q, grad_k, grad_v;
    std::vector<std::uint8_t> distill_mask;
    std::vector<std::int32_t> target_rows, compact_targets;

    return run_training_stage(
        stage, model, task, settings, control, detail::hash_text(key.str()),
        [&](autodiff::Tape& tape, const TokenBatch& batch, std::int64_t) {
            using autodiff::Var;
            teacher_tape.reset();
            // Every loss but L_LD over all tokens reads the target rows only, so the LM
            // heads then run on those rows (see detail::cross_entropy_step).
            const bool compact = !(distillation.use_logits && distillation.positions == DistillPositions::all_tokens);
            std::span<const std::int32_t> targets = batch.targets;
            Var teacher_logits, logits;
            if (compact) {
                detail::target_rows(batch, target_rows, compact_targets);
                targets = compact_targets;
                if (distillation.use_logits)
                    teacher_logits = teacher_model.lm_head(
                        teacher_tape, autodiff::select_rows(teacher_tape,
                                                            teacher_model.forward_hidden(teacher_tape, batch.tokens,
                                                                                         batch.batch, batch.seq),
                                                            target_rows));
                else
                    (void)teacher_model.forward_hidden(teacher_tape, batch.tokens, batch.batch, batch.seq);
                logits = model.lm_head(
                    tape, autodiff::select_rows(tape, model.forward_hidden(tape, batch.tokens, batch.batch, batch.seq),
                                                target_rows));
            } else {
                teacher_logits = teacher_model.forward(teacher_tape, batch.tokens, batch.batch, batch.seq);
                logits = model.forward(tape, batch.tokens, batch.batch, batch.seq);
            }

            // CE on the answer tokens.
            grad_logits.resize_zero(tape.shape(logits));
            const float ce = cross_entropy(tape.value(logits), targets, grad_logits.view());
            StepLoss loss;
            loss.loss = ce;
            loss.terms.emplace_back("ce", ce);

            // lambda * L_LD, its gradient added to the CE gradient of the logits.
            if (distillation.use_logits) {
                if (compact)
                    distill_mask.assign(targets.size(), 1);
                else
                    distill_mask = batch.mask;
                grad_ld.resize_zero(tape.shape(logits));
                const float ld = logits_distillation(teacher_tape.value(teacher_logits), tape.value(logits),
                                                     distillation.temperature, distill_mask, grad_ld.view());
                float* g = grad_logits.data();
                const float* d = grad_ld.data();
                for (std::int64_t i = 0; i < grad_logits.numel(); ++i) g[i] += distillation.logits_weight * d[i];
                loss.loss += distillation.logits_weight * ld;
                loss.terms.emplace_back("ld", distillation.logits_weight * ld);
            }
            Var total = inject_gradient(tape, logits, grad_logits.view());

            // gamma * L_AD on Q, K and V of the chosen layer, padded tokens removed.
            if (distillation.use_attention) {
                const nn::AttentionStates& s = model.attention_states(student_layer);
                const nn::AttentionStates& t = teacher_model.attention_states(teacher_layer);
                grad_q.resize_zero(tape.shape(s.q));
                grad_k.resize_zero(tape.shape(s.k));
                grad_v.resize_zero(tape.shape(s.v));
                const AttentionQkv teacher_qkv{teacher_tape.value(t.q), teacher_tape.value(t.k), teacher_tape.value(t.v)};
                const AttentionQkv student_qkv{tape.value(s.q), tape.value(s.k), tape.value(s.v)};
                const AttentionRelationLoss ad = attention_relation_distillation(
                    teacher_qkv, student_qkv, batch.batch, batch.seq, batch.mask, relation,
                    AttentionQkvGrad{grad_q.view(), grad_k.view(), grad_v.view()}, workspace);
                for (Tensor<float>* grad : {&grad_q, &grad_k, &grad_v})
                    for (float& value : *grad) value *= distillation.attention_weight;
                total = autodiff::add(tape, total, inject_gradient(tape, s.q, grad_q.view()));
                total = autodiff::add(tape, total, inject_gradient(tape, s.k, grad_k.view()));
                total = autodiff::add(tape, total, inject_gradient(tape, s.v, grad_v.view()));
                loss.loss += distillation.attention_weight * ad.total;
                loss.terms.emplace_back("ad", distillation.attention_weight * ad.total);
            }
            tape.backward(total);
            return loss;
        });
}

}  // namespace bitdistill::pipeline
