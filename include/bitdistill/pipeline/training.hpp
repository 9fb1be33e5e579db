// The training loop shared by every stage: batches in a seeded epoch order, AdamW with
// warmup and a cosine schedule, gradient clipping, NaN/Inf checks, progress records and
// checkpoints that a killed run resumes from.
//
// Checkpoints of a stage live in RunControl::checkpoint_dir:
//   <stage>.partial.ckpt   written every checkpoint_every steps while the stage runs
//   <stage>.ckpt           written once when the stage completes
// Both hold the model weights ("model.*"), the AdamW moments ("optim.*"), the step, the
// stage name, the seed and epoch that define the data order (the RNG state), the loss curve
// and a fingerprint of everything the stage's result depends on (its settings, its initial
// weights, its data, the teacher). A stage whose <stage>.ckpt carries the same fingerprint
// is not run again, and a partial checkpoint with the same fingerprint is resumed. Before a
// stage runs with other settings, it renames a completed <stage>.ckpt of another
// fingerprint to <stage>.<that fingerprint>.ckpt, and a later run with those settings
// renames it back instead of training again. A partial checkpoint with another fingerprint
// is overwritten.
//
// Determinism: with the same seed and thread count, a run stopped after k steps and
// resumed ends with the same weights, bit for bit, as a run that was never stopped. The
// batches of step s depend only on (seed, s), the learning rate only on s, and the
// optimizer state is restored exactly.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "bitdistill/autodiff/tape.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/io/checkpoint.hpp"
#include "bitdistill/nn/decoder_model.hpp"
#include "bitdistill/optim/adamw.hpp"
#include "bitdistill/optim/clip.hpp"
#include "bitdistill/optim/finite.hpp"
#include "bitdistill/optim/schedule.hpp"
#include "bitdistill/pipeline/data.hpp"
#include "bitdistill/pipeline/progress.hpp"

namespace bitdistill::pipeline {

/// Optimizer and length of one stage.
struct TrainingSettings {
    double epochs = 1.0;          ///< passes over the data; fractions run part of the last epoch
    std::int64_t batch_size = 32;
    float peak_lr = 1e-3f;
    double warmup_ratio = 0.05;   ///< linear warmup over this fraction of the steps
    float weight_decay = 0.01f;   ///< applied to 2-D weights only
    float max_grad_norm = 1.0f;   ///< clip_grad_norm bound; 0 disables clipping
    ScheduleKind schedule = ScheduleKind::cosine;
};

/// Checkpoint folder, seed and progress reporting of a stage.
struct RunControl {
    std::filesystem::path checkpoint_dir;  ///< empty: no checkpoints, no resume
    std::uint64_t seed = 1;
    std::int64_t log_every = 50;           ///< steps between progress records
    std::int64_t checkpoint_every = 500;   ///< steps between partial checkpoints; 0: none
    /// Stops the stage after this global step (0: never), leaving a partial checkpoint as a
    /// killed run would. The stage returns with completed = false. For resume tests.
    std::int64_t stop_after_step = 0;
    /// Receives every progress record; may be empty.
    std::function<void(const StepRecord&)> on_progress;
    /// Text values copied into every checkpoint (tokenizer model, prompt, run settings), so
    /// that a checkpoint can be evaluated on its own.
    std::map<std::string, std::string> metadata;
};

/// Result of one stage call.
struct StageOutcome {
    std::string stage;
    DecoderWeights weights;       ///< final weights (or the weights at the stop step)
    nn::ProjectionMode mode = nn::ProjectionMode::full_precision;
    LossCurve curve;
    double seconds = 0.0;         ///< wall time of the stage, summed over resumed runs
    std::int64_t steps = 0;       ///< steps done
    std::int64_t total_steps = 0;
    bool completed = false;
    bool reused = false;          ///< loaded from a completed checkpoint, nothing was run
    bool resumed = false;         ///< continued from a partial checkpoint
    /// New path of a completed checkpoint of other settings that the stage renamed, or empty.
    std::filesystem::path set_aside;
};

/// Loss of one step: the total that was differentiated and its weighted terms.
struct StepLoss {
    float loss = 0.0f;
    std::vector<std::pair<std::string, float>> terms;
};

/// Data of a stage for the training loop: `item_count` items (rows or windows), optional
/// lengths for grouping, and a function that builds the batch of a list of item indices.
struct BatchSource {
    std::int64_t item_count = 0;
    std::vector<std::int64_t> lengths;  ///< empty: no length grouping
    std::function<TokenBatch(const std::vector<std::int64_t>&)> make_batch;
    std::uint64_t fingerprint = 0;      ///< hash of the data, part of the stage fingerprint
};

/// Hash of token sequences, for BatchSource::fingerprint.
[[nodiscard]] inline std::uint64_t fingerprint_tokens(const std::vector<TokenIds>& sequences) {
    Fnv1a64 hash;
    for (const TokenIds& sequence : sequences) {
        const std::uint64_t length = sequence.size();
        hash.update(&length, sizeof length);
        hash.update(sequence.data(), sequence.size() * sizeof(std::int32_t));
    }
    return hash.digest();
}

/// Hash of the configuration and every tensor of `weights`.
[[nodiscard]] inline std::uint64_t fingerprint_weights(const DecoderWeights& weights) {
    Checkpoint scratch;
    store_decoder_weights(scratch, "", weights);
    Fnv1a64 hash;
    for (const auto& [key, value] : scratch.texts()) {
        hash.update(key);
        hash.update(value);
    }
    for (const auto& [name, tensor] : scratch.tensors()) {
        hash.update(name);
        hash.update(tensor.data(), static_cast<std::size_t>(tensor.numel()) * sizeof(float));
    }
    return hash.digest();
}

namespace detail {

/// Backward rule of inject_gradient: the input's gradient is dy times the stored tensor.
inline void inject_gradient_backward(autodiff::Tape& tape, std::int32_t self) {
    const autodiff::Node& node = tape.node(self);
    const autodiff::GradientSink sink = tape.gradient_sink(node.inputs[0]);
    if (!sink) return;
    const auto* gradient = static_cast<const float*>(node.context[0]);
    const float dy = node.grad[0];
    const std::int64_t count = tape.node(node.inputs[0]).shape.numel();
    for (std::int64_t i = 0; i < count; ++i) sink.put(i, dy * gradient[i]);
}

}  // namespace detail

/// Records a scalar whose gradient with respect to `x` is `gradient` (same shape as x,
/// caller-owned, read during backward). Its value is 0. Summing several of these and
/// calling backward on the sum runs one backward pass for losses computed outside the
/// tape (cross-entropy, distillation) on different outputs (logits, Q, K, V).
inline autodiff::Var inject_gradient(autodiff::Tape& tape, autodiff::Var x, TensorView<const float> gradient) {
    require_same_shape(tape.shape(x), gradient.shape(), "inject_gradient");
    autodiff::Var y = tape.record(Shape{1}, &detail::inject_gradient_backward, {x});
    tape.node(y).context[0] = gradient.data();
    tape.value(y)[0] = 0.0f;
    return y;
}

/// Runs the training loop of one stage on `model`. `step_loss(tape, batch, step)` records
/// the forward pass on the (reset) tape, runs backward so that the model's gradients hold
/// the step's gradient, and returns the loss and its weighted terms. `fingerprint` names
/// everything the result depends on besides the data and the initial weights.
template <class StepLossFn>
StageOutcome run_training_stage(const std::string& stage, nn::DecoderModel& model, const BatchSource& data,
                                const TrainingSettings& settings, const RunControl& control,
                                std::uint64_t fingerprint, StepLossFn&& step_loss) {
    BITDISTILL_REQUIRE(settings.batch_size > 0 && settings.epochs > 0.0, "stage ", stage,
                       ": batch_size ", settings.batch_size, " and epochs ", settings.epochs,
                       " must be positive");
    const std::int64_t batches_per_epoch = data.item_count / settings.batch_size;
    BITDISTILL_REQUIRE(batches_per_epoch > 0, "stage ", stage, ": ", data.item_count,
                       " items do not fill one batch of ", settings.batch_size);
    const auto total_steps = static_cast<std::int64_t>(
        std::ceil(settings.epochs * static_cast<double>(batches_per_epoch)));
    const std::int64_t warmup = warmup_steps_for(total_steps, settings.warmup_ratio);

    StageOutcome outcome;
    outcome.stage = stage;
    outcome.curve.stage = stage;
    outcome.total_steps = total_steps;
    outcome.mode = model.projection_mode();

    Fnv1a64 key;
    key.update(stage);
    std::ostringstream summary;
    summary << fingerprint << ' ' << data.fingerprint << ' ' << fingerprint_weights(model.export_weights()) << ' '
            << static_cast<int>(model.projection_mode()) << ' ' << settings.epochs << ' ' << settings.batch_size
            << ' ' << settings.peak_lr << ' ' << settings.warmup_ratio << ' ' << settings.weight_decay << ' '
            << settings.max_grad_norm << ' ' << static_cast<int>(settings.schedule) << ' ' << control.seed;
    key.update(summary.str());
    const std::string stage_fingerprint = hex64(key.digest());

    const bool checkpoints = !control.checkpoint_dir.empty();
    const std::filesystem::path final_path = control.checkpoint_dir / (stage + ".ckpt");
    const std::filesystem::path partial_path = control.checkpoint_dir / (stage + ".partial.ckpt");

    AdamWConfig adamw_config;
    adamw_config.weight_decay = settings.weight_decay;
    AdamW optimizer(model.parameters(), adamw_config);
    std::int64_t step = 0;
    double previous_seconds = 0.0;

    auto restore = [&](const Checkpoint& checkpoint) {
        for (ParamRef& param : model.parameters()) checkpoint.copy_tensor_to("model." + param.name, param.value);
        optimizer.load_state(load_adamw_state(checkpoint, "optim."));
        step = checkpoint.integer("step");
        previous_seconds = std::stod(checkpoint.text("seconds"));
        const Tensor<float>& steps = checkpoint.tensor("curve.steps");
        const Tensor<float>& losses = checkpoint.tensor("curve.losses");
        outcome.curve.steps.assign(steps.begin(), steps.end());
        outcome.curve.losses.assign(losses.begin(), losses.end());
    };

    // Loads the checkpoint at `path`, stores its fingerprint in `stored` and restores it
    // when the fingerprint is this stage's.
    auto matching = [&](const std::filesystem::path& path, std::string& stored) -> bool {
        if (!checkpoints || !std::filesystem::exists(path)) return false;
        const Checkpoint checkpoint = Checkpoint::load(path);
        stored = checkpoint.has_text("fingerprint") ? checkpoint.text("fingerprint") : std::string("unknown");
        if (stored != stage_fingerprint) return false;
        restore(checkpoint);
        return true;
    };

    // A completed checkpoint of other settings is renamed after its fingerprint instead of
    // being overwritten, and one of these settings that an earlier run renamed comes back.
    const auto kept_path = [&](const std::string& fingerprint) {
        return control.checkpoint_dir / (stage + "." + fingerprint + ".ckpt");
    };
    const auto move_final_aside = [&](const std::string& fingerprint) {
        outcome.set_aside = kept_path(fingerprint);
        std::filesystem::rename(final_path, outcome.set_aside);
    };
    std::string final_fingerprint;
    if (checkpoints && std::filesystem::exists(kept_path(stage_fingerprint))) {
        if (std::filesystem::exists(final_path) && !matching(final_path, final_fingerprint))
            move_final_aside(final_fingerprint);
        std::filesystem::rename(kept_path(stage_fingerprint), final_path);
    }
    if (matching(final_path, final_fingerprint)) {
        outcome.weights = model.export_weights();
        outcome.seconds = previous_seconds;
        outcome.steps = step;
        outcome.completed = true;
        outcome.reused = true;
        return outcome;
    }
    std::string partial_fingerprint;
    outcome.resumed = matching(partial_path, partial_fingerprint);
    if (!final_fingerprint.empty()) move_final_aside(final_fingerprint);

    auto save = [&](const std::filesystem::path& path, bool completed, double seconds) {
        Checkpoint checkpoint;
        for (const auto& [name, value] : control.metadata) checkpoint.set_text("meta." + name, value);
        checkpoint.set_text("stage", stage);
        checkpoint.set_text("fingerprint", stage_fingerprint);
        checkpoint.set_text("projection_mode",
                            model.projection_mode() == nn::ProjectionMode::ternary ? "ternary" : "full_precision");
        checkpoint.set_integer("step", step);
        checkpoint.set_integer("total_steps", total_steps);
        checkpoint.set_integer("completed", completed ? 1 : 0);
        checkpoint.set_text("seed", std::to_string(control.seed));
        checkpoint.set_integer("rng.epoch", step / batches_per_epoch);
        checkpoint.set_text("seconds", std::to_string(seconds));
        store_decoder_weights(checkpoint, "model.", model.export_weights());
        store_adamw_state(checkpoint, "optim.", optimizer.save_state());
        Tensor<float> steps(Shape{static_cast<std::int64_t>(outcome.curve.steps.size())});
        Tensor<float> losses(Shape{static_cast<std::int64_t>(outcome.curve.losses.size())});
        std::copy(outcome.curve.steps.begin(), outcome.curve.steps.end(), steps.begin());
        std::copy(outcome.curve.losses.begin(), outcome.curve.losses.end(), losses.begin());
        checkpoint.set_tensor("curve.steps", std::move(steps));
        checkpoint.set_tensor("curve.losses", std::move(losses));
        std::filesystem::create_directories(control.checkpoint_dir);
        checkpoint.save(path);
    };

    const auto started = std::chrono::steady_clock::now();
    auto elapsed = [&] {
        return previous_seconds + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    };
    ThroughputMeter meter(step);
    autodiff::Tape tape;
    std::vector<std::vector<std::int64_t>> epoch_order;
    std::int64_t loaded_epoch = -1;
    const std::vector<ParamRef> params = model.parameters();
    // Sums over the current logging interval, so that a record shows interval means.
    double interval_loss = 0.0;
    std::vector<double> interval_terms;
    std::int64_t interval_steps = 0;

    while (step < total_steps) {
        const std::int64_t epoch = step / batches_per_epoch;
        if (epoch != loaded_epoch) {
            epoch_order = epoch_batches(data.item_count, data.lengths, settings.batch_size, control.seed, epoch);
            loaded_epoch = epoch;
        }
        const TokenBatch batch = data.make_batch(epoch_order[static_cast<std::size_t>(step % batches_per_epoch)]);

        tape.reset();
        model.zero_grad();
        const StepLoss loss = step_loss(tape, batch, step);
        const float grad_norm = settings.max_grad_norm > 0.0f ? clip_grad_norm(params, settings.max_grad_norm)
                                                              : 0.0f;
        check_loss_and_gradients(step, loss.loss, params);
        const float lr = learning_rate_at(step, total_steps, warmup, settings.peak_lr, settings.schedule);
        optimizer.step(lr);
        ++step;

        meter.add_tokens(batch.real_tokens);
        interval_loss += loss.loss;
        interval_terms.resize(loss.terms.size(), 0.0);
        for (std::size_t t = 0; t < loss.terms.size(); ++t) interval_terms[t] += loss.terms[t].second;
        ++interval_steps;
        if (step % std::max<std::int64_t>(control.log_every, 1) == 0 || step == total_steps) {
            StepRecord record;
            record.stage = stage;
            record.step = step;
            record.total_steps = total_steps;
            const double count = static_cast<double>(interval_steps);
            record.loss = static_cast<float>(interval_loss / count);
            record.terms = loss.terms;
            for (std::size_t t = 0; t < record.terms.size(); ++t)
                record.terms[t].second = static_cast<float>(interval_terms[t] / count);
            record.learning_rate = lr;
            record.grad_norm = grad_norm;
            meter.finish_interval(record);
            record.seconds_elapsed = elapsed();
            outcome.curve.steps.push_back(step);
            outcome.curve.losses.push_back(record.loss);
            interval_loss = 0.0;
            std::fill(interval_terms.begin(), interval_terms.end(), 0.0);
            interval_steps = 0;
            if (control.on_progress) control.on_progress(record);
        }
        const bool stop_here = control.stop_after_step > 0 && step >= control.stop_after_step && step < total_steps;
        if (checkpoints && step < total_steps &&
            ((control.checkpoint_every > 0 && step % control.checkpoint_every == 0) || stop_here))
            save(partial_path, false, elapsed());
        if (stop_here) {
            outcome.weights = model.export_weights();
            outcome.seconds = elapsed();
            outcome.steps = step;
            return outcome;
        }
    }

    outcome.seconds = elapsed();
    outcome.steps = step;
    outcome.completed = true;
    outcome.weights = model.export_weights();
    if (checkpoints) {
        save(final_path, true, outcome.seconds);
        std::filesystem::remove(partial_path);
    }
    return outcome;
}

}  // namespace bitdistill::pipeline
