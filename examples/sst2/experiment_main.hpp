// Command-line driver shared by the SST-2 and MNLI examples: option parsing, the main
// run, the stage ablation, checkpoint evaluation and the result files. Every line it
// prints also goes to the run's log file.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "bitdistill/pipeline/experiment.hpp"

namespace bitdistill::examples {

using namespace bitdistill::pipeline;

/// Prints lines to stdout and appends them to a log file. A rerun appends after the lines
/// of earlier runs, so a failed or reused run never erases the log of a finished one.
class Logger {
public:
    void open(const std::filesystem::path& path, const std::string& command) {
        std::filesystem::create_directories(path.parent_path());
        file_.open(path, std::ios::app);
        if (!file_) throw io_error(bitdistill::detail::concat(path.string(), ": cannot open the log file for writing"));
        const std::time_t now = std::time(nullptr);
        char started[32];
        std::strftime(started, sizeof started, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
        file_ << "run: started " << started << " command: " << command << '\n' << std::flush;
    }
    void operator()(const std::string& line) {
        std::cout << line << std::endl;
        if (file_) file_ << line << '\n' << std::flush;
    }
    /// Prints an error to stderr and appends it to the log file when one is open.
    void error(const std::string& message) {
        std::cerr << "error: " << message << std::endl;
        if (file_) file_ << "error: " << message << '\n' << std::flush;
    }

private:
    std::ofstream file_;
};

/// Options of one invocation.
struct CommandLine {
    bool full = false;
    bool ablation = false;
    std::filesystem::path evaluate_checkpoint;
    std::filesystem::path eval_tsv;
    std::filesystem::path output;
    /// Methods to run; the result files are written only when all three ran.
    std::vector<std::string> methods = {"fp_sft", "bitnet_sft", "bitdistill"};
};

/// Formats a learning-rate grid as the options take it, for example "0.00025,0.0005".
inline std::string format_grid(const std::vector<float>& grid) {
    std::string text;
    for (float rate : grid) {
        char buffer[32];
        std::snprintf(buffer, sizeof buffer, "%s%g", text.empty() ? "" : ",", static_cast<double>(rate));
        text += buffer;
    }
    return text;
}

/// Parses the whole of `text` as the value of `option` and checks it against `minimum`.
/// Throws std::invalid_argument naming the option, the text and `expected` when it is not
/// a number of type T, has trailing characters, is out of T's range, below `minimum` or
/// not finite.
template <class T>
T parse_number(const std::string& option, const std::string& text, T minimum, const char* expected) {
    T number{};
    const char* end = text.data() + text.size();
    const auto [stop, error] = std::from_chars(text.data(), end, number);
    bool valid = error == std::errc() && stop == end && !(number < minimum);
    if constexpr (std::is_floating_point_v<T>) valid = valid && std::isfinite(number);
    if (!valid)
        throw std::invalid_argument(bitdistill::detail::concat("invalid value '", text, "' for ", option,
                                                               ": expected ", expected));
    return number;
}

/// Parses a comma-separated list of positive learning rates named by `option`.
inline std::vector<float> parse_grid(const std::string& option, const std::string& list) {
    std::vector<float> grid;
    std::istringstream in(list);
    for (std::string item; std::getline(in, item, ',');) {
        const float rate = parse_number(option, item, std::numeric_limits<float>::min(), "a positive number");
        grid.push_back(rate);
    }
    if (grid.empty() || list.back() == ',')
        throw std::invalid_argument(option + " takes positive numbers separated by commas, got '" + list + "'");
    return grid;
}

inline void print_usage(const char* program, const ExperimentConfig& defaults) {
    std::printf(
        "Usage: %s [options]\n"
        "Runs the BitNet Distillation experiment on %s: tokenizer, float pre-training, FP-SFT,\n"
        "BitNet-SFT and BitDistill (SubLN, continued pre-training, distillation), then writes\n"
        "results.json, results.md and loss_curves.svg to the output folder. Every run appends\n"
        "its output to log.txt there (ablation_log.txt with --ablation).\n\n"
        "  --full                 longer, closer setting: a larger model, more epochs and a\n"
        "                         3-point learning-rate grid per method (hours on 2 cores).\n"
        "                         Adds _full to the --output and --work folders\n"
        "  --ablation             stage ablation instead of the main run: none, SubLN,\n"
        "                         SubLN + stage 2, SubLN + distillation, all three\n"
        "  --evaluate FILE        score a saved checkpoint of any stage on --eval-tsv, write\n"
        "                         eval_<checkpoint>_on_<tsv>.json to --output (-2, -3, ... added\n"
        "                         when that name holds another pair) and exit\n"
        "  --eval-tsv FILE        evaluation file (default %s)\n"
        "  --train-tsv FILE       training file (default %s)\n"
        "  --data DIR             folder with the shipped data (default %s)\n"
        "  --output DIR           results folder (default %s)\n"
        "  --work DIR             checkpoints and tokenizer cache (default %s). A stage run\n"
        "                         with other settings keeps the earlier <stage>.ckpt there as\n"
        "                         <stage>.<fingerprint>.ckpt and reuses it when they return\n"
        "  --threads N            threads (default %d)\n"
        "  --seed N               seed of initialisation and data order (default %llu)\n"
        "  --train-limit N        use only the first N training rows (default: all)\n"
        "  --methods LIST         comma-separated subset of fp_sft,bitnet_sft,bitdistill to run\n"
        "                         (default: all three; result files need all three). Two\n"
        "                         processes with the same --work folder may run different\n"
        "                         methods at once; a later run reuses their checkpoints\n"
        "  --pretrain-epochs X | --sft-epochs X | --stage2-epochs X\n"
        "                         passes over the corpus or the training rows (defaults %g, %g, %g);\n"
        "                         FP-SFT, BitNet-SFT and stage 3 always get the same epochs\n"
        "  --no-subln | --no-stage2 | --no-distill | --all-norms\n"
        "                         switch BitDistill stage 1, stage 2 or stage 3 off, or insert\n"
        "                         the norms before q/k/v and gate/up too\n"
        "  --logits-only | --attention-only\n"
        "                         keep one distillation term\n"
        "  --distill-layer N      distilled layer (default: floor(0.8 * layers))\n"
        "  --relation cosine|scaled_dot\n"
        "                         attention relation variant (default cosine)\n"
        "  --lambda X | --gamma X weights of the logits and attention terms (default 10, 1e5)\n"
        "  --distill-positions answers|all\n"
        "                         positions of the logits distillation (default %s)\n"
        "  --float-lr LIST | --ternary-lr LIST\n"
        "                         comma-separated learning-rate grids of the float and the\n"
        "                         ternary fine-tuning, of equal length (default %s and %s)\n"
        "  --validation-rows N    training rows held out to pick the rate (default %lld)\n",
        program, defaults.figure_name.c_str(), defaults.eval_tsv.string().c_str(),
        defaults.train_tsv.string().c_str(), defaults.train_tsv.parent_path().parent_path().string().c_str(),
        defaults.output_dir.string().c_str(), defaults.work_dir.string().c_str(), defaults.threads,
        static_cast<unsigned long long>(defaults.seed), defaults.pretrain.epochs, defaults.fp_sft.epochs,
        defaults.stage2.epochs, defaults.distillation.positions == DistillPositions::answers ? "answers" : "all",
        format_grid(defaults.float_lr_grid).c_str(), format_grid(defaults.ternary_lr_grid).c_str(),
        static_cast<long long>(defaults.validation_rows));
}

/// Parses argv into `config` and `command`. Returns false after printing the usage.
inline bool parse_command_line(int argc, char** argv, ExperimentConfig& config, CommandLine& command,
                               const std::function<void(ExperimentConfig&)>& apply_full) {
    auto value = [&](int& i) -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(bitdistill::detail::concat("option ", argv[i], " needs a value"));
        return argv[++i];
    };
    std::filesystem::path data_dir;
    std::filesystem::path train_tsv;
    // --full changes many defaults, so apply it before the options that override them.
    for (int i = 1; i < argc; ++i)
        if (std::string(argv[i]) == "--full") {
            command.full = true;
            apply_full(config);
        }
    for (int i = 1; i < argc; ++i) {
        const std::string option = argv[i];
        if (option == "--help" || option == "-h") {
            print_usage(argv[0], config);
            return false;
        } else if (option == "--full") {
        } else if (option == "--ablation") {
            command.ablation = true;
        } else if (option == "--evaluate") {
            command.evaluate_checkpoint = value(i);
        } else if (option == "--eval-tsv") {
            command.eval_tsv = value(i);
        } else if (option == "--train-tsv") {
            train_tsv = value(i);
        } else if (option == "--data") {
            data_dir = value(i);
        } else if (option == "--output") {
            command.output = value(i);
        } else if (option == "--work") {
            config.work_dir = value(i);
        } else if (option == "--threads") {
            config.threads = parse_number(option, value(i), 1, "an integer of at least 1");
        } else if (option == "--seed") {
            config.seed = parse_number<std::uint64_t>(option, value(i), 0, "a non-negative integer");
        } else if (option == "--train-limit") {
            config.train_limit = parse_number<std::int64_t>(option, value(i), 1, "an integer of at least 1");
        } else if (option == "--methods") {
            command.methods.clear();
            std::istringstream list(value(i));
            for (std::string method; std::getline(list, method, ',');) {
                if (method != "fp_sft" && method != "bitnet_sft" && method != "bitdistill")
                    throw std::invalid_argument("--methods takes fp_sft, bitnet_sft and bitdistill, got '" + method + "'");
                command.methods.push_back(method);
            }
        } else if (option == "--pretrain-epochs") {
            config.pretrain.epochs = parse_number(option, value(i), std::numeric_limits<double>::min(), "a positive number");
        } else if (option == "--sft-epochs") {
            config.fp_sft.epochs = parse_number(option, value(i), std::numeric_limits<double>::min(), "a positive number");
            config.ternary_sft.epochs = config.fp_sft.epochs;
        } else if (option == "--stage2-epochs") {
            config.stage2.epochs = parse_number(option, value(i), std::numeric_limits<double>::min(), "a positive number");
        } else if (option == "--no-subln") {
            config.switches.subln = false;
        } else if (option == "--no-stage2") {
            config.switches.stage2 = false;
        } else if (option == "--no-distill") {
            config.switches.distill = false;
        } else if (option == "--all-norms") {
            config.switches.all_norms = true;
        } else if (option == "--logits-only") {
            config.distillation.use_attention = false;
        } else if (option == "--attention-only") {
            config.distillation.use_logits = false;
        } else if (option == "--distill-layer") {
            config.distillation.layer = parse_number(option, value(i), 0, "a non-negative integer");
        } else if (option == "--relation") {
            const std::string variant = value(i);
            if (variant == "cosine")
                config.distillation.relation = RelationVariant::cosine;
            else if (variant == "scaled_dot")
                config.distillation.relation = RelationVariant::scaled_dot;
            else
                throw std::invalid_argument("--relation must be cosine or scaled_dot, got '" + variant + "'");
        } else if (option == "--lambda") {
            config.distillation.logits_weight = parse_number(option, value(i), 0.0f, "a non-negative number");
        } else if (option == "--gamma") {
            config.distillation.attention_weight = parse_number(option, value(i), 0.0f, "a non-negative number");
        } else if (option == "--distill-positions") {
            const std::string positions = value(i);
            if (positions == "answers")
                config.distillation.positions = DistillPositions::answers;
            else if (positions == "all")
                config.distillation.positions = DistillPositions::all_tokens;
            else
                throw std::invalid_argument("invalid --distill-positions '" + positions + "': use answers or all");
        } else if (option == "--float-lr") {
            config.float_lr_grid = parse_grid(option, value(i));
        } else if (option == "--ternary-lr") {
            config.ternary_lr_grid = parse_grid(option, value(i));
        } else if (option == "--validation-rows") {
            config.validation_rows = parse_number<std::int64_t>(option, value(i), 0, "a non-negative integer");
        } else {
            throw std::invalid_argument("unknown option '" + option + "'; run with --help for the list");
        }
    }
    if (config.float_lr_grid.size() != config.ternary_lr_grid.size())
        throw std::invalid_argument(bitdistill::detail::concat("--float-lr has ", config.float_lr_grid.size(),
                                                               " rates and --ternary-lr ", config.ternary_lr_grid.size(),
                                                               "; each method gets a grid of the same length"));
    if (!data_dir.empty()) {
        const auto rebase = [&](const std::filesystem::path& path) {
            return data_dir / path.parent_path().filename() / path.filename();
        };
        config.train_tsv = rebase(config.train_tsv);
        config.eval_tsv = rebase(config.eval_tsv);
        for (auto& file : config.corpus_files) file = rebase(file);
    }
    if (!train_tsv.empty()) config.train_tsv = train_tsv;
    if (!command.eval_tsv.empty()) config.eval_tsv = command.eval_tsv;
    if (!command.output.empty()) config.output_dir = command.output;
    if (command.full) {
        config.output_dir += "_full";
        config.work_dir += "_full";
    }
    return true;
}

/// Returns eval_<checkpoint>_on_<tsv>.json in `folder`, or with a suffix -2, -3, ... when
/// that file contains the score of another checkpoint or TSV of the same names, so that one
/// evaluation never replaces the result of another. `text` is the JSON to be written.
inline std::filesystem::path evaluation_output_path(const std::filesystem::path& folder,
                                                    const std::filesystem::path& checkpoint,
                                                    const std::filesystem::path& tsv, const std::string& text) {
    const std::string stem = "eval_" + checkpoint.stem().string() + "_on_" + tsv.stem().string();
    // The first lines of the JSON, up to the score, name the checkpoint and the TSV.
    const std::string identity = text.substr(0, text.find("\"examples\""));
    for (int attempt = 1;; ++attempt) {
        const std::filesystem::path candidate =
            folder / (stem + (attempt == 1 ? std::string() : "-" + std::to_string(attempt)) + ".json");
        if (!std::filesystem::exists(candidate)) return candidate;
        std::ifstream in(candidate, std::ios::binary);
        std::string existing((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (existing.starts_with(identity)) return candidate;
    }
}

/// Scores the checkpoint `path` on `config.eval_tsv` with the tokenizer and prompt stored
/// in the checkpoint, prints the figures and writes them as JSON beside the results.
inline int evaluate_checkpoint(const ExperimentConfig& config, const std::filesystem::path& path, Logger& log) {
    set_num_threads(config.threads);
    // Fail on an unusable --output before scoring, not after.
    std::filesystem::create_directories(config.output_dir);
    const Checkpoint checkpoint = Checkpoint::load(path);
    const DecoderWeights weights = load_decoder_weights(checkpoint, "model.");
    const std::string model_bytes = checkpoint.text("meta.tokenizer_model");
    const std::filesystem::path tokenizer_path =
        config.work_dir / "cache" / ("checkpoint-tokenizer-" + hex64([&] {
                                         Fnv1a64 hash;
                                         hash.update(model_bytes);
                                         return hash.digest();
                                     }()) + ".model");
    std::filesystem::create_directories(tokenizer_path.parent_path());
    write_file_atomically(tokenizer_path, model_bytes);
    const SentencePieceTokenizer tokenizer(tokenizer_path);

    PromptTemplate prompt;
    prompt.text = checkpoint.text("meta.prompt");
    std::istringstream words(checkpoint.text("meta.label_words"));
    for (std::string word; std::getline(words, word, '\t');) prompt.label_words.push_back(word);
    const TsvFormat format = glue_format(checkpoint.text("meta.task"));
    const std::int64_t max_tokens = checkpoint.integer("meta.max_tokens");
    const EncodedTemplate encoded = encode_template(prompt, tokenizer);

    std::vector<ClassificationExample> examples;
    for (const TextExample& row : read_glue_tsv(config.eval_tsv.string(), format))
        examples.push_back(encode_example(row, encoded, tokenizer, spm_bos_id, max_tokens));
    if (examples.empty())
        throw std::invalid_argument(config.eval_tsv.string() +
                                    ": the evaluation file has no data rows after its header");
    const std::string mode_name = checkpoint.text("projection_mode");
    if (mode_name != "ternary" && mode_name != "full_precision")
        throw std::invalid_argument(bitdistill::detail::concat(path.string(), ": invalid projection_mode '", mode_name,
                                                               "'; expected ternary or full_precision"));
    const nn::ProjectionMode mode =
        mode_name == "ternary" ? nn::ProjectionMode::ternary : nn::ProjectionMode::full_precision;
    const EvaluationResult result =
        evaluate_classification(weights, mode, examples, encoded.label_tokens, config.eval_batch_size, spm_pad_id);

    log(bitdistill::detail::concat("checkpoint: ", path.string(), " stage: ", checkpoint.text("stage"),
                       " step: ", checkpoint.integer("step"), " projections: ", checkpoint.text("projection_mode")));
    log(bitdistill::detail::concat("eval_file: ", config.eval_tsv.string(), " rows: ", result.examples));
    log(bitdistill::detail::concat("accuracy: ", fixed(result.accuracy, 4), " label_word_accuracy: ",
                       fixed(result.label_accuracy, 4)));

    Json json = Json::object();
    json["checkpoint"] = path.string();
    json["stage"] = checkpoint.text("stage");
    json["projection_mode"] = checkpoint.text("projection_mode");
    json["eval_file"] = config.eval_tsv.string();
    json["examples"] = result.examples;
    json["accuracy"] = result.accuracy;
    json["label_word_accuracy"] = result.label_accuracy;
    const std::string text = json.dump() + "\n";
    const std::filesystem::path output = evaluation_output_path(config.output_dir, path, config.eval_tsv, text);
    write_text_file(output, text);
    log(bitdistill::detail::concat("results: ", output.string()));
    return 0;
}

/// Human-readable byte count ("1.23 MB").
inline std::string megabytes(std::size_t bytes) { return fixed(static_cast<double>(bytes) / 1e6, 3) + " MB"; }

/// The main run: FP-SFT, BitNet-SFT and BitDistill, with all result files.
inline int run_main(const ExperimentConfig& config, const CommandLine& command, Logger& log) {
    const auto started = std::chrono::steady_clock::now();
    log(bitdistill::detail::concat("task: ", config.task, " evaluation_set: ", config.figure_name, " seed: ", config.seed,
                       " threads: ", config.threads));
    const ExperimentData data = load_experiment_data(config, [&](const std::string& line) { log(line); });
    ExperimentRunner runner(config, data, [&](const std::string& line) { log(line); });

    auto wanted = [&](const std::string& method) {
        return std::find(command.methods.begin(), command.methods.end(), method) != command.methods.end();
    };
    if (wanted("fp_sft")) (void)runner.fp_sft();
    if (wanted("bitnet_sft")) (void)runner.bitnet_sft();
    if (!wanted("bitdistill") || !wanted("fp_sft") || !wanted("bitnet_sft")) {
        if (wanted("bitdistill")) (void)runner.bitdistill(config.switches);
        log("result: not written, because --methods left out a method");
        return 0;
    }
    const MethodResult fp = runner.fp_sft();
    const MethodResult bitnet = runner.bitnet_sft();
    const MethodResult bitdistill = runner.bitdistill(config.switches);
    // Stages reused from checkpoints count with the time recorded when they ran, so that
    // `seconds` is the time of the whole pipeline however many invocations it took.
    const double invocation_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double seconds = invocation_seconds + runner.reused_seconds();

    const WeightMemory float_memory = InferenceModel::build(runner.teacher(), InferenceFormat::fp32()).memory();
    const WeightMemory packed_memory =
        InferenceModel::build(runner.last_student(), InferenceFormat::ternary2()).memory();

    Json json = Json::object();
    json["task"] = config.task;
    json["evaluation_set"] = config.figure_name;
    json["train_file"] = config.train_tsv.string();
    json["eval_file"] = config.eval_tsv.string();
    json["seed"] = static_cast<std::int64_t>(config.seed);
    json["threads"] = config.threads;
    json["seconds"] = seconds;
    json["invocation_seconds"] = invocation_seconds;
    json["reused_stage_seconds"] = runner.reused_seconds();
    json["fp_sft"] = method_json(fp);
    json["bitnet_sft"] = method_json(bitnet);
    json["bitdistill"] = method_json(bitdistill);
    json["bitdistill_variant"] = variant_tag(config.switches);
    Json memory = Json::object();
    memory["float_model_bytes"] = static_cast<std::int64_t>(float_memory.total());
    memory["float_projection_bytes"] = static_cast<std::int64_t>(float_memory.projections);
    memory["packed_student_bytes"] = static_cast<std::int64_t>(packed_memory.total());
    memory["packed_projection_bytes"] = static_cast<std::int64_t>(packed_memory.projections);
    memory["packed_embedding_bytes"] = static_cast<std::int64_t>(packed_memory.embeddings);
    memory["counted"] =
        "resident weight bytes of the inference engine: float model = fp32 projections, fp32 tied "
        "embedding/LM head and fp32 norm gains; packed student = 2-bit ternary projections with "
        "their scales, bf16 tied embedding/LM head and fp32 norm gains (packed_projection_bytes "
        "counts the ternary projections alone, as the paper's 0.11 GB most likely does)";
    json["memory"] = memory;
    Json stages = Json::object();
    for (const auto& [stage, stage_seconds] : runner.stage_seconds()) stages[stage] = stage_seconds;
    json["stage_seconds"] = stages;
    json["model"] = config_json(config.model);
    Json training = Json::object();
    training["pretrain"] = settings_json(config.pretrain);
    training["fp_sft"] = settings_json(config.fp_sft);
    training["ternary_sft"] = settings_json(config.ternary_sft);
    training["stage2"] = settings_json(config.stage2);
    json["training"] = training;
    Json distillation = Json::object();
    distillation["lambda"] = config.distillation.logits_weight;
    distillation["gamma"] = config.distillation.attention_weight;
    distillation["tau"] = config.distillation.temperature;
    distillation["logits"] = config.distillation.use_logits;
    distillation["attention"] = config.distillation.use_attention;
    distillation["layer"] = config.distillation.layer >= 0 ? config.distillation.layer
                                                            : default_distill_layer(config.model.n_layers);
    distillation["relation"] = config.distillation.relation == RelationVariant::cosine ? "cosine" : "scaled_dot";
    json["distillation"] = distillation;
    json["task_text_in_pretraining"] = config.task_text_in_pretraining;
    write_text_file(config.output_dir / "results.json", json.dump() + "\n");

    MarkdownTable table;
    table.header = {"method", "accuracy (" + config.figure_name + ")", "label-word accuracy", "inference tok/s",
                    "weight memory", "fine-tuning lr"};
    auto row = [&](const std::string& name, const MethodResult& method, const std::string& memory_text) {
        table.rows.push_back({name, fixed(100.0 * method.evaluation.accuracy, 2),
                              fixed(100.0 * method.evaluation.label_accuracy, 2),
                              fixed(method.engine_tokens_per_second, 0), memory_text,
                              fixed(method.learning_rate, 5)});
    };
    row("FP-SFT", fp, megabytes(float_memory.total()) + " (fp32)");
    row("BitNet-SFT", bitnet, megabytes(packed_memory.total()) + " (packed)");
    row("BitDistill", bitdistill, megabytes(packed_memory.total()) + " (packed)");
    MarkdownTable stage_table;
    stage_table.header = {"stage", "wall time (s)"};
    for (const auto& [stage, stage_seconds] : runner.stage_seconds())
        stage_table.rows.push_back({stage, fixed(stage_seconds, 1)});
    std::string markdown = "# " + config.figure_name + ": FP-SFT, BitNet-SFT and BitDistill\n\n";
    markdown += table.render();
    markdown += "\nAccuracy is the percentage of " + std::to_string(fp.evaluation.examples) + " rows of " +
                config.eval_tsv.filename().string() +
                " whose greedy answer over the whole vocabulary is the gold label word; the label-word "
                "figure restricts the choice to the label words. Inference tok/s: prompt tokens per second "
                "of the inference engine scoring the evaluation rows one at a time on " +
                std::to_string(config.threads) + " threads (fp32 for FP-SFT, 2-bit packed for the students).\n\n";
    markdown += "Weight memory: fp32 model " + megabytes(float_memory.total()) + " (projections " +
                megabytes(float_memory.projections) + "); packed student " + megabytes(packed_memory.total()) +
                " (2-bit projections " + megabytes(packed_memory.projections) + ", bf16 embeddings " +
                megabytes(packed_memory.embeddings) + ", fp32 norms " + megabytes(packed_memory.other) + ").\n\n";
    markdown += stage_table.render();
    markdown += "\nTotal wall time: " + fixed(seconds, 0) + " s (this invocation " + fixed(invocation_seconds, 0) +
                " s; stages reused from checkpoints count with the time recorded when they ran). Seed: " +
                std::to_string(config.seed) + ".\n";
    write_text_file(config.output_dir / "results.md", markdown);
    write_text_file(config.output_dir / "loss_curves.svg",
                    loss_curves_svg(runner.curves(), config.figure_name + ": training loss per stage"));

    log(bitdistill::detail::concat("result: fp_sft.accuracy: ", fixed(fp.evaluation.accuracy, 4),
                       " bitnet_sft.accuracy: ", fixed(bitnet.evaluation.accuracy, 4),
                       " bitdistill.accuracy: ", fixed(bitdistill.evaluation.accuracy, 4)));
    log(bitdistill::detail::concat("result: float_model_bytes: ", float_memory.total(), " packed_student_bytes: ",
                       packed_memory.total(), " packed_projection_bytes: ", packed_memory.projections));
    log(bitdistill::detail::concat("result: seconds: ", fixed(seconds, 0), " seed: ", config.seed));
    log(bitdistill::detail::concat("results: ", (config.output_dir / "results.json").string(), " ",
                       (config.output_dir / "results.md").string(), " ",
                       (config.output_dir / "loss_curves.svg").string()));
    return 0;
}

/// Runs the stage ablation: none (BitNet-SFT), SubLN, SubLN + stage 2, SubLN + distillation,
/// all three. Shares the pre-training, FP-SFT and stage 2 checkpoints with the main run.
inline int run_ablation(const ExperimentConfig& config, Logger& log) {
    const auto started = std::chrono::steady_clock::now();
    log(bitdistill::detail::concat("task: ", config.task, " ablation: stages seed: ", config.seed, " threads: ", config.threads));
    const ExperimentData data = load_experiment_data(config, [&](const std::string& line) { log(line); });
    ExperimentRunner runner(config, data, [&](const std::string& line) { log(line); });

    struct Row {
        std::string name;
        BitDistillSwitches switches;
    };
    const std::vector<Row> rows = {
        {"SubLN", {true, false, false, false}},
        {"SubLN + stage 2", {true, true, false, false}},
        {"SubLN + distillation", {true, false, true, false}},
        {"SubLN + stage 2 + distillation (BitDistill)", {true, true, true, false}},
    };
    const MethodResult fp = runner.fp_sft();
    std::vector<std::pair<std::string, MethodResult>> results;
    results.emplace_back("none (BitNet-SFT)", runner.bitnet_sft());
    for (const Row& row : rows) results.emplace_back(row.name, runner.bitdistill(row.switches, variant_tag(row.switches)));
    const double invocation_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const double seconds = invocation_seconds + runner.reused_seconds();

    MarkdownTable table;
    table.header = {"stages", "accuracy (" + config.figure_name + ")", "label-word accuracy", "fine-tuning lr"};
    Json json = Json::object();
    json["task"] = config.task;
    json["evaluation_set"] = config.figure_name;
    json["seed"] = static_cast<std::int64_t>(config.seed);
    json["fp_sft"] = method_json(fp);
    Json rows_json = Json::array();
    for (const auto& [name, method] : results) {
        table.rows.push_back({name, fixed(100.0 * method.evaluation.accuracy, 2),
                              fixed(100.0 * method.evaluation.label_accuracy, 2), fixed(method.learning_rate, 5)});
        Json entry = method_json(method);
        entry["stages"] = name;
        rows_json.push_back(entry);
    }
    json["rows"] = rows_json;
    json["seconds"] = seconds;
    json["invocation_seconds"] = invocation_seconds;
    write_text_file(config.output_dir / "ablation.json", json.dump() + "\n");
    std::string markdown = "# Stage ablation on " + config.figure_name + "\n\n";
    markdown += "Ternary students fine-tuned with the same epochs and learning rate; FP-SFT (the teacher) "
                "scores " + fixed(100.0 * fp.evaluation.accuracy, 2) + ".\n\n";
    markdown += table.render();
    markdown += "\nSeed " + std::to_string(config.seed) + ". Total wall time " + fixed(seconds, 0) +
                " s, of which this invocation took " + fixed(invocation_seconds, 0) +
                " s: stages already in the checkpoint folder are reused and count with the time recorded "
                "when they ran. Log: ablation_log.txt.\n";
    write_text_file(config.output_dir / "ablation.md", markdown);
    for (const auto& [name, method] : results)
        log(bitdistill::detail::concat("ablation: ", name, " accuracy: ", fixed(method.evaluation.accuracy, 4)));
    log(bitdistill::detail::concat("results: ", (config.output_dir / "ablation.md").string()));
    return 0;
}

/// Entry point of an example: parses the options and runs the chosen mode.
inline int experiment_main(int argc, char** argv, ExperimentConfig config,
                           const std::function<void(ExperimentConfig&)>& apply_full) {
    Logger log;
    try {
        CommandLine command;
        if (!parse_command_line(argc, argv, config, command, apply_full)) return 0;
        if (!command.evaluate_checkpoint.empty()) return evaluate_checkpoint(config, command.evaluate_checkpoint, log);
        std::string command_text = argv[0];
        for (int i = 1; i < argc; ++i) command_text += std::string(" ") + argv[i];
        log.open(config.output_dir / (command.ablation ? "ablation_log.txt" : "log.txt"), command_text);
        return command.ablation ? run_ablation(config, log) : run_main(config, command, log);
    } catch (const std::exception& error) {
        log.error(error.what());
        return 1;
    }
}

}  // namespace bitdistill::examples
