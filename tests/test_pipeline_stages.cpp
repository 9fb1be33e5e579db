// Pipeline stages on a tiny decoder: exact resume from checkpoints, reuse of completed
// stages, stage 3 wiring and the evaluation figures.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "bitdistill/pipeline/evaluate.hpp"
#include "bitdistill/pipeline/stages.hpp"

using namespace bitdistill;
using namespace bitdistill::pipeline;

namespace {

constexpr std::int32_t pad = 3;
constexpr std::int32_t bos = 1;
constexpr std::int32_t positive_word = 10;
constexpr std::int32_t negative_word = 11;

bool small_scale() {
    const char* scale = std::getenv("BITDISTILL_TEST_SCALE");
    return scale != nullptr && std::string(scale) == "small";
}

DecoderConfig tiny_config() {
    DecoderConfig config;
    config.vocab_size = 40;
    config.dim = 32;
    config.hidden_dim = 48;
    config.n_layers = 2;
    config.n_heads = 2;
    config.n_kv_heads = 1;
    config.max_seq_len = 16;
    return config;
}

/// Rows "<s> w1 .. wn ? answer" with words drawn from 21-29. In half of the rows the
/// marker token 20 replaces one word, and the answer is positive exactly when it does.
std::vector<ClassificationExample> synthetic_rows(int count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<ClassificationExample> rows;
    for (int i = 0; i < count; ++i) {
        ClassificationExample row;
        row.tokens.push_back(bos);
        const int length = 3 + static_cast<int>(rng() % 6);
        bool has_marker = false;
        for (int k = 0; k < length; ++k) {
            const auto word = static_cast<std::int32_t>(21 + rng() % 9);
            row.tokens.push_back(word);
        }
        if (rng() % 2 == 0) {
            row.tokens[1 + rng() % static_cast<std::uint32_t>(length)] = 20;
            has_marker = true;
        }
        row.tokens.push_back(30);  // the "?" that ends every prompt
        row.answer_start = static_cast<std::int32_t>(row.tokens.size());
        row.label = has_marker ? 1 : 0;
        row.tokens.push_back(has_marker ? positive_word : negative_word);
        rows.push_back(std::move(row));
    }
    return rows;
}

std::vector<TokenIds> synthetic_windows(int count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<TokenIds> windows;
    for (int i = 0; i < count; ++i) {
        TokenIds window;
        std::int32_t token = static_cast<std::int32_t>(4 + rng() % 30);
        for (int t = 0; t < 13; ++t) {
            window.push_back(token);
            token = static_cast<std::int32_t>(4 + (token * 7 + static_cast<std::int32_t>(rng() % 3)) % 30);
        }
        windows.push_back(window);
    }
    return windows;
}

std::filesystem::path scratch_dir(const std::string& name) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("bitdistill_test_stages_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    return dir;
}

bool same_weights(const DecoderWeights& a, const DecoderWeights& b) {
    Checkpoint first;
    Checkpoint second;
    store_decoder_weights(first, "", a);
    store_decoder_weights(second, "", b);
    if (first.tensors().size() != second.tensors().size()) return false;
    for (const auto& [name, tensor] : first.tensors()) {
        if (!second.has_tensor(name)) return false;
        const Tensor<float>& other = second.tensor(name);
        if (!(other.shape() == tensor.shape())) return false;
        if (std::memcmp(tensor.data(), other.data(), static_cast<std::size_t>(tensor.numel()) * sizeof(float)) != 0)
            return false;
    }
    return true;
}

TrainingSettings short_training() {
    TrainingSettings settings;
    settings.epochs = 2;
    settings.batch_size = 8;
    settings.peak_lr = 3e-3f;
    return settings;
}

}  // namespace

TEST_CASE("inject_gradient passes its tensor to the input") {
    autodiff::Tape tape;
    Tensor<float> value(Shape{2, 3}, 1.0f);
    Tensor<float> grad(Shape{2, 3});
    Tensor<float> injected(Shape{2, 3});
    for (int i = 0; i < 6; ++i) injected[i] = static_cast<float>(i) - 2.5f;
    const autodiff::Var x = tape.parameter(value.view(), grad.view());
    const autodiff::Var y = autodiff::scale(tape, x, 2.0f);
    tape.backward(inject_gradient(tape, y, injected.view()));
    for (int i = 0; i < 6; ++i) CHECK(grad[i] == 2.0f * injected[i]);
}

TEST_CASE("compact cross-entropy matches the full head") {
    const auto rows = synthetic_rows(6, 5);
    std::vector<std::int64_t> indices(rows.size());
    for (std::size_t i = 0; i < indices.size(); ++i) indices[i] = static_cast<std::int64_t>(i);
    const TokenBatch batch = make_classification_batch(rows, indices, pad);
    REQUIRE(2 * batch.target_count <= static_cast<std::int64_t>(batch.targets.size()));
    nn::DecoderModel compact(nn::random_decoder_weights(tiny_config(), 8));
    nn::DecoderModel full(nn::random_decoder_weights(tiny_config(), 8));

    autodiff::Tape tape;
    pipeline::detail::CrossEntropyBuffers buffers;
    const float compact_loss = pipeline::detail::cross_entropy_step(compact, tape, batch, buffers).loss;
    CHECK(buffers.rows.size() == static_cast<std::size_t>(batch.target_count));

    autodiff::Tape full_tape;
    const autodiff::Var logits = full.forward(full_tape, batch.tokens, batch.batch, batch.seq);
    Tensor<float> grad(full_tape.shape(logits));
    const float full_loss = cross_entropy(full_tape.value(logits), batch.targets, grad.view());
    full_tape.backward(logits, grad.view());

    CHECK(compact_loss == doctest::Approx(full_loss).epsilon(1e-6));
    std::vector<const Tensor<float>*> compact_grads, full_grads;
    compact.for_each_parameter([&](nn::Parameter& p) { compact_grads.push_back(&p.grad); });
    full.for_each_parameter([&](nn::Parameter& p) { full_grads.push_back(&p.grad); });
    REQUIRE(compact_grads.size() == full_grads.size());
    for (std::size_t i = 0; i < full_grads.size(); ++i) {
        float largest = 0.0f;
        for (std::int64_t k = 0; k < full_grads[i]->numel(); ++k) largest = std::max(largest, std::abs((*full_grads[i])[k]));
        REQUIRE(largest > 0.0f);
        for (std::int64_t k = 0; k < full_grads[i]->numel(); ++k)
            CHECK(std::abs((*compact_grads[i])[k] - (*full_grads[i])[k]) <= 1e-5f * largest);
    }
}

TEST_CASE("fine_tune resumes bit for bit") {
    const auto rows = synthetic_rows(small_scale() ? 48 : 96, 5);
    const BatchSource task = classification_source(rows, pad);
    const DecoderWeights initial = nn::random_decoder_weights(tiny_config(), 7);
    const TrainingSettings settings = short_training();

    for (nn::ProjectionMode mode : {nn::ProjectionMode::full_precision, nn::ProjectionMode::ternary}) {
        CAPTURE(static_cast<int>(mode));
        RunControl control;
        control.seed = 11;
        control.checkpoint_every = 0;
        control.checkpoint_dir = scratch_dir("straight");
        const StageOutcome straight = fine_tune(initial, mode, task, settings, control, "sft");
        REQUIRE(straight.completed);
        CHECK_FALSE(straight.resumed);

        control.checkpoint_dir = scratch_dir("stopped");
        control.stop_after_step = 5;
        const StageOutcome stopped = fine_tune(initial, mode, task, settings, control, "sft");
        CHECK_FALSE(stopped.completed);
        CHECK(stopped.steps == 5);
        CHECK(std::filesystem::exists(control.checkpoint_dir / "sft.partial.ckpt"));
        CHECK_FALSE(same_weights(stopped.weights, straight.weights));

        control.stop_after_step = 0;
        const StageOutcome resumed = fine_tune(initial, mode, task, settings, control, "sft");
        CHECK(resumed.completed);
        CHECK(resumed.resumed);
        CHECK(resumed.steps == straight.steps);
        CHECK(same_weights(resumed.weights, straight.weights));
        CHECK_FALSE(std::filesystem::exists(control.checkpoint_dir / "sft.partial.ckpt"));

        // The completed stage is reused, not run again.
        const StageOutcome again = fine_tune(initial, mode, task, settings, control, "sft");
        CHECK(again.reused);
        CHECK(same_weights(again.weights, straight.weights));
        CHECK(again.curve.steps == resumed.curve.steps);

        // Other settings do not reuse it.
        TrainingSettings other = settings;
        other.peak_lr = 1e-3f;
        const StageOutcome changed = fine_tune(initial, mode, task, other, control, "sft");
        CHECK_FALSE(changed.reused);
        CHECK_FALSE(same_weights(changed.weights, straight.weights));

        // The completed checkpoint of the first settings was kept, and a run with those
        // settings brings it back instead of training again.
        REQUIRE_FALSE(changed.set_aside.empty());
        CHECK(std::filesystem::exists(changed.set_aside));
        CHECK(changed.set_aside.parent_path() == control.checkpoint_dir);
        const StageOutcome restored = fine_tune(initial, mode, task, settings, control, "sft");
        CHECK(restored.reused);
        CHECK(same_weights(restored.weights, straight.weights));
        CHECK_FALSE(std::filesystem::exists(changed.set_aside));
        REQUIRE_FALSE(restored.set_aside.empty());
        CHECK(std::filesystem::exists(restored.set_aside));
        std::filesystem::remove_all(control.checkpoint_dir);
        std::filesystem::remove_all(scratch_dir("straight"));
    }
}

TEST_CASE("distill resumes bit for bit") {
    // Two threads, as the examples run: the split of every parallel loop is static, so the
    // result must not depend on which run a step belongs to.
    set_num_threads(2);
    const auto rows = synthetic_rows(small_scale() ? 32 : 64, 9);
    const BatchSource task = classification_source(rows, pad);
    const DecoderWeights teacher = nn::random_decoder_weights(tiny_config(), 3);
    const DecoderWeights student = insert_subln(nn::random_decoder_weights(tiny_config(), 4));
    DistillationSettings distillation;
    distillation.attention_weight = 10.0f;  // keeps the tiny random model's steps moderate
    const TrainingSettings settings = short_training();

    RunControl control;
    control.checkpoint_every = 3;
    control.checkpoint_dir = scratch_dir("distill_straight");
    const StageOutcome straight = distill(student, teacher, task, distillation, settings, control);
    REQUIRE(straight.completed);

    control.checkpoint_dir = scratch_dir("distill_stopped");
    control.stop_after_step = 4;
    (void)distill(student, teacher, task, distillation, settings, control);
    control.stop_after_step = 0;
    const StageOutcome resumed = distill(student, teacher, task, distillation, settings, control);
    CHECK(resumed.resumed);
    CHECK(same_weights(resumed.weights, straight.weights));
    std::filesystem::remove_all(control.checkpoint_dir);
    std::filesystem::remove_all(scratch_dir("distill_straight"));
    set_num_threads(1);
}

TEST_CASE("distill without its terms is ternary fine-tuning") {
    const auto rows = synthetic_rows(32, 13);
    const BatchSource task = classification_source(rows, pad);
    const DecoderWeights teacher = nn::random_decoder_weights(tiny_config(), 3);
    const DecoderWeights student = insert_subln(nn::random_decoder_weights(tiny_config(), 4));
    DistillationSettings ce_only;
    ce_only.use_logits = false;
    ce_only.use_attention = false;
    const RunControl control;
    const StageOutcome distilled = distill(student, teacher, task, ce_only, short_training(), control);
    const StageOutcome tuned = fine_tune(student, nn::ProjectionMode::ternary, task, short_training(), control, "sft");
    CHECK(same_weights(distilled.weights, tuned.weights));
}

TEST_CASE("distill terms report their weighted sizes") {
    const auto rows = synthetic_rows(16, 17);
    const BatchSource task = classification_source(rows, pad);
    const DecoderWeights teacher = nn::random_decoder_weights(tiny_config(), 3);
    const DecoderWeights student = insert_subln(nn::random_decoder_weights(tiny_config(), 4));
    std::vector<StepRecord> records;
    RunControl control;
    control.log_every = 1;
    control.on_progress = [&](const StepRecord& record) { records.push_back(record); };
    TrainingSettings settings = short_training();
    settings.epochs = 1;
    (void)distill(student, teacher, task, DistillationSettings{}, settings, control);
    REQUIRE(records.size() == 2);
    REQUIRE(records[0].terms.size() == 3);
    CHECK(records[0].terms[0].first == "ce");
    CHECK(records[0].terms[1].first == "ld");
    CHECK(records[0].terms[2].first == "ad");
    const float sum = records[0].terms[0].second + records[0].terms[1].second + records[0].terms[2].second;
    CHECK(records[0].loss == doctest::Approx(sum).epsilon(1e-5));
    CHECK(records[0].terms[1].second > 0.0f);
    CHECK(records[0].terms[2].second > 0.0f);
}

TEST_CASE("insert_subln adds unit gains") {
    const DecoderWeights plain = nn::random_decoder_weights(tiny_config(), 1);
    const DecoderWeights subln = insert_subln(plain);
    CHECK(subln.config.subln);
    CHECK_FALSE(subln.config.all_norms);
    CHECK(subln.layers[0].attn_subln.shape() == Shape{32});
    CHECK(subln.layers[1].ffn_subln.shape() == Shape{48});
    CHECK(subln.layers[0].attn_subln[5] == 1.0f);
    CHECK(subln.layers[0].qkv_norm.shape().rank() == 0);
    const DecoderWeights all = insert_subln(plain, true);
    CHECK(all.config.all_norms);
    CHECK(all.layers[1].gate_up_norm.shape() == Shape{32});
    // The models build, so the shapes agree with the configuration.
    nn::DecoderModel model(all);
    CHECK(model.config().subln);
}

TEST_CASE("pretrain lowers the language-model loss") {
    // 64 steps on the tiny model take well under a second, also under the sanitizers.
    const auto windows = synthetic_windows(128, 21);
    const BatchSource corpus = language_model_source(windows);
    TrainingSettings settings = short_training();
    settings.epochs = 4;
    RunControl control;
    control.log_every = 4;
    const StageOutcome outcome = pretrain(nn::random_decoder_weights(tiny_config(), 2), corpus, settings, control);
    REQUIRE(outcome.curve.losses.size() >= 2);
    CHECK(outcome.curve.losses.back() < outcome.curve.losses.front() - 0.5f);
}

TEST_CASE("fine-tuned model classifies the synthetic task") {
    const auto train = synthetic_rows(small_scale() ? 256 : 512, 31);
    const auto held_out = synthetic_rows(128, 32);
    TrainingSettings settings = short_training();
    settings.epochs = small_scale() ? 4 : 6;
    settings.batch_size = 16;
    const StageOutcome tuned = fine_tune(nn::random_decoder_weights(tiny_config(), 5),
                                         nn::ProjectionMode::full_precision, classification_source(train, pad),
                                         settings, RunControl{}, "sft");
    const std::vector<TokenIds> labels = {{negative_word}, {positive_word}};
    const EvaluationResult result =
        evaluate_classification(tuned.weights, nn::ProjectionMode::full_precision, held_out, labels, 32, pad);
    CHECK(result.examples == 128);
    CHECK(result.accuracy >= 0.85);
    CHECK(result.label_accuracy >= result.accuracy);
    CHECK(result.predicted_classes.size() == 128);

    // An untrained model is near chance on the restricted figure and rarely emits a label word.
    const EvaluationResult untrained = evaluate_classification(nn::random_decoder_weights(tiny_config(), 5),
                                                               nn::ProjectionMode::full_precision, held_out,
                                                               labels, 32, pad);
    CHECK(untrained.accuracy < 0.5);
}

TEST_CASE("evaluation rejects label words sharing a first token") {
    CHECK_THROWS_WITH((void)first_label_tokens({{5, 6}, {5, 7}}), doctest::Contains("first tokens differ"));
}
