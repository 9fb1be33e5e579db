// The whole BitNet Distillation experiment on one GLUE-style task, as the SST-2 and MNLI
// examples run it:
//
//   1. train a SentencePiece tokenizer on the corpus and the task's training text (cached);
//   2. pre-train a small float decoder on the corpus (plus the task's training sentences as
//      plain text, a domain-adaptive choice, switchable);
//   3. FP-SFT: fine-tune it in float; this is also the teacher;
//   4. BitNet-SFT: fine-tune it with ternary projections, no SubLN, no stage 2, no distillation;
//   5. BitDistill: SubLN (stage 1), continued pre-training of the ternary student (stage 2),
//      distillation fine-tuning from the teacher (stage 3);
//   6. score all three on the evaluation file, measure the weight memory of the float model
//      and of the packed student and the inference speed of each, and write the results.
//
// Needs SentencePiece (io/tokenizer.hpp), so bitdistill.hpp does not include this header.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bitdistill/core/parallel.hpp"
#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/session.hpp"
#include "bitdistill/io/checkpoint.hpp"
#include "bitdistill/io/glue_tsv.hpp"
#include "bitdistill/io/spm_tokenizer.hpp"
#include "bitdistill/io/tokenizer.hpp"
#include "bitdistill/nn/decoder_model.hpp"
#include "bitdistill/pipeline/data.hpp"
#include "bitdistill/pipeline/evaluate.hpp"
#include "bitdistill/pipeline/progress.hpp"
#include "bitdistill/pipeline/report.hpp"
#include "bitdistill/pipeline/stages.hpp"

namespace bitdistill::pipeline {

/// Stages of BitDistill that run; the stage ablation switches them off one by one.
struct BitDistillSwitches {
    bool subln = true;        ///< stage 1
    bool stage2 = true;       ///< continued pre-training of the ternary student
    bool distill = true;      ///< stage 3 distillation (off: plain ternary fine-tuning)
    bool all_norms = false;   ///< stage 1 also inserts norms before q/k/v and gate/up
};

/// Everything one experiment run needs.
struct ExperimentConfig {
    std::string task = "sst2";
    std::string figure_name = "SST-2 dev";   ///< how results name the evaluation set
    TsvFormat format = sst2_format();
    PromptTemplate prompt = sst2_prompt();
    std::filesystem::path train_tsv;
    std::filesystem::path eval_tsv;
    std::vector<std::filesystem::path> corpus_files;
    bool task_text_in_pretraining = true;    ///< add the training rows' text to the corpus
    std::int64_t train_limit = 0;            ///< use only the first N training rows; 0: all
    std::filesystem::path output_dir;        ///< results.json, results.md, loss_curves.svg
    std::filesystem::path work_dir;          ///< checkpoints/ and cache/

    SentencePieceTrainingOptions tokenizer;
    DecoderConfig model;
    std::int64_t max_tokens = 64;            ///< longest classification sequence
    std::int64_t lm_window = 64;             ///< tokens per pre-training sequence

    TrainingSettings pretrain;
    TrainingSettings fp_sft;                 ///< peak_lr is overridden by the grid
    TrainingSettings ternary_sft;            ///< BitNet-SFT and stage 3; peak_lr from the grid
    TrainingSettings stage2;
    DistillationSettings distillation;
    BitDistillSwitches switches;
    /// Learning rates tried for the float and the ternary fine-tuning. Both grids have the
    /// same length. Each method keeps its best rate on the validation rows.
    std::vector<float> float_lr_grid = {1e-3f};
    std::vector<float> ternary_lr_grid = {5e-3f};
    std::int64_t validation_rows = 0;        ///< training rows held out to pick the rate

    std::uint64_t seed = 1;
    int threads = 2;
    std::int64_t eval_batch_size = 64;
    std::int64_t engine_rows = 0;            ///< evaluation rows timed on the inference engine; 0: all
    std::int64_t log_every = 100;
    std::int64_t checkpoint_every = 500;
};

/// Scores and speed of one method.
struct MethodResult {
    std::string name;
    EvaluationResult evaluation;
    double engine_tokens_per_second = 0.0;   ///< packed inference engine, prompt tokens per second
    double engine_accuracy = 0.0;            ///< first answer token from the engine, whole vocabulary
    std::int64_t engine_rows = 0;            ///< evaluation rows the engine figures cover
    float learning_rate = 0.0f;
    double stage_seconds = 0.0;
};

/// Reads every non-empty line of a text file.
[[nodiscard]] inline std::vector<std::string> read_lines(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(bitdistill::detail::concat(path.string(), ": cannot open for reading"));
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(' ') != std::string::npos) lines.push_back(line);
    }
    return lines;
}

/// Packed-engine accuracy and speed: every prompt is prefilled through an InferenceSession
/// and the argmax over the vocabulary after it is compared with the first answer token.
/// Returns {accuracy, prompt tokens per second}.
[[nodiscard]] inline std::pair<double, double> engine_scores(const DecoderWeights& weights, InferenceFormat format,
                                                             const std::vector<ClassificationExample>& examples) {
    const InferenceModel model = InferenceModel::build(weights, format);
    InferenceSession session(model);
    std::int64_t tokens = 0;
    std::int64_t correct = 0;
    std::vector<int> prompt;
    const auto started = std::chrono::steady_clock::now();
    for (const ClassificationExample& example : examples) {
        prompt.assign(example.tokens.begin(), example.tokens.begin() + example.answer_start);
        session.reset();
        const std::span<const float> logits = session.prefill(prompt);
        const auto predicted = std::max_element(logits.begin(), logits.end()) - logits.begin();
        correct += predicted == example.tokens[static_cast<std::size_t>(example.answer_start)] ? 1 : 0;
        tokens += static_cast<std::int64_t>(prompt.size());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double accuracy = examples.empty() ? 0.0 : static_cast<double>(correct) / static_cast<double>(examples.size());
    return {accuracy, seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0};
}

/// Everything a run prints goes through this callback (one line per call, no newline).
using LineSink = std::function<void(const std::string&)>;

/// Loaded data and tokenizer of an experiment.
struct ExperimentData {
    std::filesystem::path tokenizer_path;
    std::unique_ptr<SentencePieceTokenizer> tokenizer;
    EncodedTemplate encoded_template;
    std::vector<TokenIds> lm_windows;
    std::vector<ClassificationExample> train;
    std::vector<ClassificationExample> validation;
    std::vector<ClassificationExample> eval;
    std::int64_t corpus_tokens = 0;
};

/// Returns how many of `train_rows` training rows are held out to pick the learning rate:
/// config.validation_rows, at most half of them.
[[nodiscard]] inline std::int64_t held_out_rows(const ExperimentConfig& config, std::int64_t train_rows) {
    return std::clamp<std::int64_t>(config.validation_rows, 0, train_rows / 2);
}

/// Checks before any training that the rows left for fine-tuning fill one batch and that
/// the evaluation file has rows. Throws std::invalid_argument naming the file and the count.
inline void check_row_counts(const ExperimentConfig& config, std::int64_t train_rows, std::int64_t eval_rows) {
    const std::int64_t held_out = held_out_rows(config, train_rows);
    const std::int64_t batch = std::max(config.fp_sft.batch_size, config.ternary_sft.batch_size);
    BITDISTILL_REQUIRE(train_rows - held_out >= batch, config.train_tsv.string(), ": ", train_rows - held_out,
                       " rows are left for fine-tuning (", train_rows, " read, ", held_out,
                       " held out for validation), fewer than one batch of ", batch);
    BITDISTILL_REQUIRE(eval_rows > 0, config.eval_tsv.string(),
                       ": the evaluation file has no data rows after its header");
}

/// Reads the files, trains or loads the tokenizer and encodes everything.
[[nodiscard]] inline ExperimentData load_experiment_data(const ExperimentConfig& config, const LineSink& print) {
    ExperimentData data;
    std::vector<TextExample> train_rows = read_glue_tsv(config.train_tsv.string(), config.format);
    if (config.train_limit > 0 && static_cast<std::int64_t>(train_rows.size()) > config.train_limit)
        train_rows.resize(static_cast<std::size_t>(config.train_limit));
    const std::vector<TextExample> eval_rows = read_glue_tsv(config.eval_tsv.string(), config.format);
    check_row_counts(config, static_cast<std::int64_t>(train_rows.size()), static_cast<std::int64_t>(eval_rows.size()));

    std::vector<std::string> corpus;
    for (const auto& path : config.corpus_files) {
        const std::vector<std::string> lines = read_lines(path);
        corpus.insert(corpus.end(), lines.begin(), lines.end());
    }
    if (config.task_text_in_pretraining) {
        for (const TextExample& row : train_rows) {
            corpus.push_back(row.text_b.empty() ? row.text_a : row.text_a + " " + row.text_b);
        }
    }

    const auto started = std::chrono::steady_clock::now();
    const CachedSentencePiece cached = cached_sentencepiece(corpus, config.tokenizer, config.work_dir / "cache");
    data.tokenizer_path = cached.path;
    data.tokenizer = std::make_unique<SentencePieceTokenizer>(cached.path);
    print(bitdistill::detail::concat("tokenizer: ", cached.path.string(), cached.trained ? " (trained" : " (cached",
                         ", vocab ", data.tokenizer->vocab_size(), ", ",
                         fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(), 1),
                         " s)"));
    BITDISTILL_REQUIRE(data.tokenizer->vocab_size() == config.model.vocab_size, "the tokenizer has ",
                       data.tokenizer->vocab_size(), " pieces but the model expects ", config.model.vocab_size);

    TokenIds stream;
    for (const std::string& line : corpus) {
        stream.push_back(spm_bos_id);
        const std::vector<int> ids = data.tokenizer->encode(line, false, false);
        stream.insert(stream.end(), ids.begin(), ids.end());
    }
    data.corpus_tokens = static_cast<std::int64_t>(stream.size());
    data.lm_windows = make_lm_windows(stream, config.lm_window + 1, 0);

    data.encoded_template = encode_template(config.prompt, *data.tokenizer);
    auto encode_rows = [&](const std::vector<TextExample>& rows, std::size_t first, std::size_t last) {
        std::vector<ClassificationExample> examples;
        for (std::size_t i = first; i < last; ++i)
            examples.push_back(encode_example(rows[i], data.encoded_template, *data.tokenizer, spm_bos_id, config.max_tokens));
        return examples;
    };
    const auto held_out = static_cast<std::size_t>(held_out_rows(config, static_cast<std::int64_t>(train_rows.size())));
    data.train = encode_rows(train_rows, 0, train_rows.size() - held_out);
    data.validation = encode_rows(train_rows, train_rows.size() - held_out, train_rows.size());
    data.eval = encode_rows(eval_rows, 0, eval_rows.size());
    print(bitdistill::detail::concat("data: corpus_tokens: ", data.corpus_tokens, " lm_windows: ", data.lm_windows.size(),
                         " train_rows: ", data.train.size(), " validation_rows: ", data.validation.size(),
                         " eval_rows: ", data.eval.size()));
    return data;
}

/// Outputs of run_experiment: per-method results, per-stage times and curves.
struct ExperimentOutcome {
    std::vector<MethodResult> methods;   ///< fp_sft, bitnet_sft, bitdistill (those that ran)
    std::vector<std::pair<std::string, double>> stage_seconds;
    std::vector<LossCurve> curves;
    WeightMemory float_memory;
    WeightMemory packed_memory;
    double seconds = 0.0;
};

/// Short name of a BitDistill variant, used in stage and checkpoint names ("subln_stage2_distill").
[[nodiscard]] inline std::string variant_tag(const BitDistillSwitches& switches) {
    std::string tag;
    auto add = [&](bool on, const char* part) {
        if (!on) return;
        if (!tag.empty()) tag += '_';
        tag += part;
    };
    add(switches.subln, switches.all_norms ? "allnorms" : "subln");
    add(switches.stage2, "stage2");
    add(switches.distill, "distill");
    return tag.empty() ? "plain" : tag;
}

/// Runs the stages of one experiment, reusing every stage whose completed checkpoint
/// matches. Construct it once per run; the methods run the stages on demand.
class ExperimentRunner {
public:
    ExperimentRunner(const ExperimentConfig& config, const ExperimentData& data, LineSink print)
        : config_(config), data_(data), print_(std::move(print)),
          corpus_(language_model_source(data.lm_windows)),
          task_(classification_source(data.train, spm_pad_id)) {
        set_num_threads(config.threads);
        control_.checkpoint_dir = config.work_dir / "checkpoints";
        control_.seed = config.seed;
        control_.log_every = config.log_every;
        control_.checkpoint_every = config.checkpoint_every;
        control_.on_progress = [this](const StepRecord& record) { print_(format_progress_line(record)); };
        std::ifstream model_file(data.tokenizer_path, std::ios::binary);
        std::ostringstream model_bytes;
        model_bytes << model_file.rdbuf();
        control_.metadata["tokenizer_model"] = model_bytes.str();
        control_.metadata["task"] = config.task;
        control_.metadata["prompt"] = config.prompt.text;
        std::string words;
        for (const std::string& word : config.prompt.label_words) words += (words.empty() ? "" : "\t") + word;
        control_.metadata["label_words"] = words;
        control_.metadata["max_tokens"] = std::to_string(config.max_tokens);
    }

    /// Pre-trained float base model.
    const DecoderWeights& base() {
        if (!base_) {
            const StageOutcome outcome = note(pretrain(nn::random_decoder_weights(config_.model, config_.seed), corpus_,
                                                       config_.pretrain, control_));
            base_ = outcome.weights;
        }
        return *base_;
    }

    /// FP-SFT over the float learning-rate grid; the best model is the teacher.
    const MethodResult& fp_sft() {
        if (!fp_sft_) fp_sft_ = fine_tune_grid("fp_sft", base(), nn::ProjectionMode::full_precision,
                                               config_.fp_sft, config_.float_lr_grid, teacher_);
        return *fp_sft_;
    }

    /// BitNet-SFT over the ternary learning-rate grid.
    const MethodResult& bitnet_sft() {
        if (!bitnet_sft_) {
            DecoderWeights unused;
            bitnet_sft_ = fine_tune_grid("bitnet_sft", base(), nn::ProjectionMode::ternary, config_.ternary_sft,
                                         config_.ternary_lr_grid, unused);
        }
        return *bitnet_sft_;
    }

    /// BitDistill with the given parts switched on; stage names carry variant_tag().
    MethodResult bitdistill(const BitDistillSwitches& switches, const std::string& name = "bitdistill") {
        const std::string tag = variant_tag(switches);
        DecoderWeights student = base();
        if (switches.subln) {
            student = note(subln_stage(student, switches.all_norms, control_,
                                       switches.all_norms ? "stage1_allnorms" : "stage1")).weights;
        }
        if (switches.stage2) {
            std::string stage = "stage2";
            if (!switches.subln) stage += "_nosubln";
            if (switches.all_norms) stage += "_allnorms";
            student = note(continue_pretraining(student, corpus_, config_.stage2, control_, stage)).weights;
        }
        if (!switches.distill) {
            DecoderWeights unused;
            return fine_tune_grid("stage3_" + tag, student, nn::ProjectionMode::ternary, config_.ternary_sft,
                                  config_.ternary_lr_grid, unused, name);
        }
        (void)fp_sft();
        MethodResult best;
        DecoderWeights best_weights;
        double best_score = -1.0;
        for (float lr : config_.ternary_lr_grid) {
            TrainingSettings settings = config_.ternary_sft;
            settings.peak_lr = lr;
            const std::string stage = grid_name("stage3_" + tag, lr, config_.ternary_lr_grid.size());
            const StageOutcome outcome =
                note(distill(student, teacher_, task_, config_.distillation, settings, control_, stage));
            const double score = validation_score(outcome.weights, nn::ProjectionMode::ternary);
            if (score > best_score) {
                best_score = score;
                best_weights = outcome.weights;
                best.learning_rate = lr;
                best.stage_seconds = outcome.seconds;
            }
        }
        best.name = name;
        finish(best, best_weights, nn::ProjectionMode::ternary);
        last_student_ = best_weights;
        return best;
    }

    [[nodiscard]] const DecoderWeights& teacher() const { return teacher_; }
    [[nodiscard]] const DecoderWeights& last_student() const { return last_student_; }
    [[nodiscard]] const std::vector<std::pair<std::string, double>>& stage_seconds() const { return stage_seconds_; }
    [[nodiscard]] const std::vector<LossCurve>& curves() const { return curves_; }
    /// Seconds recorded by the stages that were reused from completed checkpoints.
    [[nodiscard]] double reused_seconds() const { return reused_seconds_; }

private:
    static std::string grid_name(const std::string& stage, float lr, std::size_t grid_size) {
        if (grid_size <= 1) return stage;
        char text[32];
        std::snprintf(text, sizeof text, "_lr%.0e", static_cast<double>(lr));
        return stage + text;
    }

    /// Records a stage's time and curve (once per stage name) and returns it.
    StageOutcome note(StageOutcome outcome) {
        for (const auto& [stage, seconds] : stage_seconds_)
            if (stage == outcome.stage) return outcome;
        stage_seconds_.emplace_back(outcome.stage, outcome.seconds);
        if (outcome.reused) reused_seconds_ += outcome.seconds;
        curves_.push_back(outcome.curve);
        std::string kept;
        if (!outcome.set_aside.empty())
            kept = " (the checkpoint of other settings was kept as " + outcome.set_aside.string() + ")";
        print_(bitdistill::detail::concat("stage_done: ", outcome.stage, " steps: ", outcome.steps, " seconds: ",
                              fixed(outcome.seconds, 1), outcome.reused ? " (reused checkpoint)" : "",
                              outcome.resumed ? " (resumed)" : "", kept));
        return outcome;
    }

    /// Accuracy on the validation rows, or 0 when there are none (a grid of one rate).
    double validation_score(const DecoderWeights& weights, nn::ProjectionMode mode) const {
        if (data_.validation.empty()) return 0.0;
        return evaluate_classification(weights, mode, data_.validation, data_.encoded_template.label_tokens,
                                        config_.eval_batch_size, spm_pad_id)
            .accuracy;
    }

    MethodResult fine_tune_grid(const std::string& stage_name, const DecoderWeights& initial, nn::ProjectionMode mode,
                                const TrainingSettings& base_settings, const std::vector<float>& grid,
                                DecoderWeights& best_weights, const std::string& method_name = "") {
        BITDISTILL_REQUIRE(!grid.empty(), stage_name, ": the learning-rate grid is empty");
        MethodResult best;
        double best_score = -1.0;
        for (float lr : grid) {
            TrainingSettings settings = base_settings;
            settings.peak_lr = lr;
            const StageOutcome outcome =
                note(fine_tune(initial, mode, task_, settings, control_, grid_name(stage_name, lr, grid.size())));
            const double score = validation_score(outcome.weights, mode);
            if (score > best_score) {
                best_score = score;
                best_weights = outcome.weights;
                best.learning_rate = lr;
                best.stage_seconds = outcome.seconds;
            }
        }
        best.name = method_name.empty() ? stage_name : method_name;
        finish(best, best_weights, mode);
        if (mode == nn::ProjectionMode::ternary) last_student_ = best_weights;
        return best;
    }

    /// Scores `weights` on the evaluation rows with the training forward and the engine.
    void finish(MethodResult& result, const DecoderWeights& weights, nn::ProjectionMode mode) {
        result.evaluation = evaluate_classification(weights, mode, data_.eval, data_.encoded_template.label_tokens,
                                                    config_.eval_batch_size, spm_pad_id);
        const InferenceFormat format =
            mode == nn::ProjectionMode::ternary ? InferenceFormat::ternary2() : InferenceFormat::fp32();
        const std::size_t engine_rows = config_.engine_rows > 0
                                            ? std::min(data_.eval.size(), static_cast<std::size_t>(config_.engine_rows))
                                            : data_.eval.size();
        const std::vector<ClassificationExample> timed(data_.eval.begin(),
                                                       data_.eval.begin() + static_cast<std::ptrdiff_t>(engine_rows));
        const auto [engine_accuracy, engine_speed] = engine_scores(weights, format, timed);
        result.engine_accuracy = engine_accuracy;
        result.engine_rows = static_cast<std::int64_t>(engine_rows);
        result.engine_tokens_per_second = engine_speed;
        print_(bitdistill::detail::concat("eval: ", result.name, " accuracy: ", fixed(result.evaluation.accuracy, 4),
                              " label_word_accuracy: ", fixed(result.evaluation.label_accuracy, 4),
                              " engine_accuracy: ", fixed(engine_accuracy, 4), " engine_tok/s: ",
                              fixed(engine_speed, 0), " lr: ", result.learning_rate));
    }

    const ExperimentConfig& config_;
    const ExperimentData& data_;
    LineSink print_;
    BatchSource corpus_;
    BatchSource task_;
    RunControl control_;
    std::optional<DecoderWeights> base_;
    std::optional<MethodResult> fp_sft_;
    std::optional<MethodResult> bitnet_sft_;
    DecoderWeights teacher_;
    DecoderWeights last_student_;
    std::vector<std::pair<std::string, double>> stage_seconds_;
    std::vector<LossCurve> curves_;
    double reused_seconds_ = 0.0;
};

/// JSON of one method's result.
[[nodiscard]] inline Json method_json(const MethodResult& method) {
    Json json = Json::object();
    json["accuracy"] = method.evaluation.accuracy;
    json["correct"] = method.evaluation.correct;
    json["examples"] = method.evaluation.examples;
    json["label_word_accuracy"] = method.evaluation.label_accuracy;
    json["learning_rate"] = method.learning_rate;
    json["fine_tuning_seconds"] = method.stage_seconds;
    json["inference_tokens_per_second"] = method.engine_tokens_per_second;
    json["inference_accuracy"] = method.engine_accuracy;
    json["inference_rows"] = method.engine_rows;
    json["training_forward_eval_tokens_per_second"] = method.evaluation.tokens_per_second;
    return json;
}

/// JSON of the model configuration.
[[nodiscard]] inline Json config_json(const DecoderConfig& config) {
    Json json = Json::object();
    json["vocab_size"] = config.vocab_size;
    json["dim"] = config.dim;
    json["hidden_dim"] = config.hidden_dim;
    json["n_layers"] = config.n_layers;
    json["n_heads"] = config.n_heads;
    json["n_kv_heads"] = config.n_kv_heads;
    json["max_seq_len"] = config.max_seq_len;
    return json;
}

/// JSON of a stage's training settings.
[[nodiscard]] inline Json settings_json(const TrainingSettings& settings) {
    Json json = Json::object();
    json["epochs"] = settings.epochs;
    json["batch_size"] = settings.batch_size;
    json["peak_lr"] = settings.peak_lr;
    json["warmup_ratio"] = settings.warmup_ratio;
    json["weight_decay"] = settings.weight_decay;
    json["max_grad_norm"] = settings.max_grad_norm;
    return json;
}

}  // namespace bitdistill::pipeline
