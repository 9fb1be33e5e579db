// Training and caching of a SentencePiece subword model on the caller's own text.
//
// Needs libsentencepiece_train and libsentencepiece (Debian: libsentencepiece-dev); link
// both, for example with `pkg-config --libs sentencepiece` plus -lsentencepiece_train.
// The bitdistill::bitdistill target links neither, and bitdistill.hpp does not include this
// header. Load the resulting .model file with SentencePieceTokenizer (io/spm_tokenizer.hpp).
//
// Special ids of a trained model: <unk> = 0, <s> = 1, </s> = 2, <pad> = 3, then the learned
// pieces. Training is deterministic for a given text, options and seed, and the cache key
// hashes all three, so a second run with the same inputs reuses the cached file.
#pragma once

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/io/checkpoint.hpp"

namespace bitdistill {

/// Special token ids of every model trained by train_sentencepiece.
inline constexpr int spm_unk_id = 0;
inline constexpr int spm_bos_id = 1;
inline constexpr int spm_eos_id = 2;
inline constexpr int spm_pad_id = 3;

/// Options of SentencePiece training; each maps to the trainer flag of the same name.
struct SentencePieceTrainingOptions {
    int vocab_size = 4096;
    std::string model_type = "unigram";         ///< "unigram" or "bpe"
    double character_coverage = 0.9995;
    std::int64_t input_sentence_size = 300000;  ///< lines sampled for training; 0 uses all
    bool byte_fallback = true;                  ///< unknown characters become <0xNN> pieces
    int max_sentencepiece_length = 16;
    unsigned seed = 1234;                       ///< seeds SentencePiece's line sampling
    int num_threads = 2;
};

namespace detail {

/// Feeds the non-empty lines of a vector to the SentencePiece trainer.
class SentenceLineIterator : public sentencepiece::SentenceIterator {
public:
    explicit SentenceLineIterator(const std::vector<std::string>& lines) : lines_(lines) {
        skip_empty();
    }
    bool done() const override { return index_ >= lines_.size(); }
    void Next() override {
        ++index_;
        skip_empty();
    }
    const std::string& value() const override { return lines_[index_]; }
    sentencepiece::util::Status status() const override { return {}; }

private:
    void skip_empty() {
        while (index_ < lines_.size() && lines_[index_].empty()) ++index_;
    }
    const std::vector<std::string>& lines_;
    std::size_t index_ = 0;
};

}  // namespace detail

/// Trains a SentencePiece model on `lines` (empty lines are skipped) and returns the
/// serialized ModelProto, the bytes of a .model file. Throws std::runtime_error with
/// SentencePiece's message when training fails (for example a vocabulary too large for
/// the text).
[[nodiscard]] inline std::string train_sentencepiece(const std::vector<std::string>& lines,
                                                     const SentencePieceTrainingOptions& options) {
    BITDISTILL_REQUIRE(options.vocab_size > 4, "train_sentencepiece: vocab_size ",
                       options.vocab_size, " must exceed the 4 special ids");
    detail::SentenceLineIterator iterator(lines);
    const std::unordered_map<std::string, std::string> flags = {
        {"vocab_size", std::to_string(options.vocab_size)},
        {"model_type", options.model_type},
        {"character_coverage", std::to_string(options.character_coverage)},
        {"input_sentence_size", std::to_string(options.input_sentence_size)},
        {"shuffle_input_sentence", "true"},
        {"byte_fallback", options.byte_fallback ? "true" : "false"},
        {"max_sentencepiece_length", std::to_string(options.max_sentencepiece_length)},
        {"num_threads", std::to_string(options.num_threads)},
        {"unk_id", std::to_string(spm_unk_id)},
        {"bos_id", std::to_string(spm_bos_id)},
        {"eos_id", std::to_string(spm_eos_id)},
        {"pad_id", std::to_string(spm_pad_id)},
        // Level 2 silences SentencePiece's progress messages; errors still reach the status.
        {"minloglevel", "2"},
    };
    sentencepiece::SetRandomGeneratorSeed(options.seed);
    std::string serialized;
    const auto status = sentencepiece::SentencePieceTrainer::Train(flags, &iterator, &serialized);
    if (!status.ok()) {
        throw std::runtime_error(detail::concat("train_sentencepiece: training on ", lines.size(),
                                                " lines failed: ", status.ToString()));
    }
    return serialized;
}

/// Hex digest of the training text, the options and the seed: the cache key.
[[nodiscard]] inline std::string sentencepiece_cache_key(const std::vector<std::string>& lines,
                                                         const SentencePieceTrainingOptions& options) {
    Fnv1a64 hash;
    for (const std::string& line : lines) {
        hash.update(line);
        hash.update("\n");
    }
    std::ostringstream settings;
    settings << options.vocab_size << ' ' << options.model_type << ' ' << options.character_coverage
             << ' ' << options.input_sentence_size << ' ' << options.byte_fallback << ' '
             << options.max_sentencepiece_length << ' ' << options.seed;
    hash.update(settings.str());
    return hex64(hash.digest());
}

/// Path of a cached model and whether this call trained it.
struct CachedSentencePiece {
    std::filesystem::path path;
    bool trained = false;
};

/// Returns `cache_dir`/sentencepiece-<key>.model for (`lines`, `options`), training the
/// model first when that file does not exist. A new model is written to a temporary file
/// and renamed, so a killed run never leaves a truncated model behind.
[[nodiscard]] inline CachedSentencePiece cached_sentencepiece(
    const std::vector<std::string>& lines, const SentencePieceTrainingOptions& options,
    const std::filesystem::path& cache_dir) {
    CachedSentencePiece result;
    result.path = cache_dir / ("sentencepiece-" + sentencepiece_cache_key(lines, options) + ".model");
    if (std::filesystem::exists(result.path)) return result;

    const std::string serialized = train_sentencepiece(lines, options);
    std::filesystem::create_directories(cache_dir);
    write_file_atomically(result.path, serialized);
    result.trained = true;
    return result;
}

}  // namespace bitdistill
