// SentencePiece training and caching, and prompt encoding with a trained model.
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <unistd.h>
#include <vector>

#include "bitdistill/io/spm_tokenizer.hpp"
#include "bitdistill/io/tokenizer.hpp"
#include "bitdistill/pipeline/data.hpp"

using namespace bitdistill;

namespace {

std::vector<std::string> training_lines() {
    const std::vector<std::string> words = {"the", "film", "is", "a", "good", "bad", "movie", "great",
                                            "terrible", "story", "actors", "plot", "review", "sentiment",
                                            "positive", "negative", "and", "but", "very", "not"};
    std::vector<std::string> lines;
    for (int i = 0; i < 600; ++i) {
        std::string line;
        for (int k = 0; k < 8; ++k) {
            if (k != 0) line += ' ';
            line += words[static_cast<std::size_t>((i * 7 + k * 13 + i / 5) % words.size())];
        }
        lines.push_back(line);
    }
    return lines;
}

std::filesystem::path scratch_dir() {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("bitdistill_test_tokenizer_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    return dir;
}

}  // namespace

TEST_CASE("trained model has the fixed special ids") {
    SentencePieceTrainingOptions options;
    options.vocab_size = 300;
    const auto dir = scratch_dir();
    const CachedSentencePiece model = cached_sentencepiece(training_lines(), options, dir);
    CHECK(model.trained);
    REQUIRE(std::filesystem::exists(model.path));

    const SentencePieceTokenizer tokenizer(model.path);
    CHECK(tokenizer.vocab_size() == 300);
    CHECK(tokenizer.processor().unk_id() == spm_unk_id);
    CHECK(tokenizer.bos_id() == spm_bos_id);
    CHECK(tokenizer.eos_id() == spm_eos_id);
    CHECK(tokenizer.processor().pad_id() == spm_pad_id);
    const auto ids = tokenizer.encode("the film is good", false, false);
    CHECK_FALSE(ids.empty());
    CHECK(tokenizer.processor().DecodeIds(ids) == "the film is good");
    std::filesystem::remove_all(dir);
}

TEST_CASE("second request reuses the cached model") {
    SentencePieceTrainingOptions options;
    options.vocab_size = 300;
    const auto dir = scratch_dir();
    const auto lines = training_lines();
    const CachedSentencePiece first = cached_sentencepiece(lines, options, dir);
    const auto written = std::filesystem::last_write_time(first.path);
    const CachedSentencePiece second = cached_sentencepiece(lines, options, dir);
    CHECK(first.trained);
    CHECK_FALSE(second.trained);
    CHECK(second.path == first.path);
    CHECK(std::filesystem::last_write_time(second.path) == written);

    // Other options or other text give another file.
    options.vocab_size = 301;
    CHECK(cached_sentencepiece(lines, options, dir).path != first.path);
    auto other_lines = lines;
    other_lines.back() += " plot";
    options.vocab_size = 300;
    CHECK(sentencepiece_cache_key(other_lines, options) != sentencepiece_cache_key(lines, options));
    std::filesystem::remove_all(dir);
}

TEST_CASE("training is deterministic") {
    SentencePieceTrainingOptions options;
    options.vocab_size = 300;
    CHECK(train_sentencepiece(training_lines(), options) == train_sentencepiece(training_lines(), options));
}

TEST_CASE("impossible vocabulary size reports failure") {
    SentencePieceTrainingOptions options;
    options.vocab_size = 100000;
    CHECK_THROWS_WITH_AS((void)train_sentencepiece(training_lines(), options),
                         doctest::Contains("train_sentencepiece"), std::runtime_error);
}

TEST_CASE("prompt encoding with a trained model") {
    SentencePieceTrainingOptions options;
    options.vocab_size = 300;
    const auto dir = scratch_dir();
    const SentencePieceTokenizer tokenizer(cached_sentencepiece(training_lines(), options, dir).path);
    const pipeline::EncodedTemplate encoded = pipeline::encode_template(pipeline::sst2_prompt(), tokenizer);
    REQUIRE(encoded.label_tokens.size() == 2);

    TextExample row;
    row.text_a = "a very good film";
    row.label = 1;
    const auto example = pipeline::encode_example(row, encoded, tokenizer, spm_bos_id, 64);
    CHECK(example.tokens.front() == spm_bos_id);
    const std::vector<std::int32_t> answer(example.tokens.begin() + example.answer_start, example.tokens.end());
    CHECK(answer == encoded.label_tokens[1]);
    const std::vector<int> prompt_ids(example.tokens.begin() + 1, example.tokens.begin() + example.answer_start);
    CHECK(tokenizer.processor().DecodeIds(prompt_ids) == "review: a very good film sentiment:");
    std::filesystem::remove_all(dir);
}
