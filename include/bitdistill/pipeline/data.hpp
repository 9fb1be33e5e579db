// Training data for the pipeline stages: prompt templates that turn labelled rows into
// token sequences, padded batches with next-token targets, and a deterministic epoch order
// that a resumed run can reproduce from its checkpoint.
//
// Classification is generative. A row becomes <s> prompt answer, where the answer is the
// label word of its class. Cross-entropy is taken only where the model predicts an answer
// token (the prompt is masked), and accuracy counts the rows where the greedy prediction at
// those positions is the gold label word.
//
// Batches are padded on the right. Under a causal mask a real token never attends to a
// later position, so right padding needs no attention mask: padded positions only need to
// be left out of the losses, which the targets (ignored_target) and the token mask do.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/io/glue_tsv.hpp"
#include "bitdistill/losses/cross_entropy.hpp"

namespace bitdistill::pipeline {

using TokenIds = std::vector<std::int32_t>;

/// How a labelled row becomes a prompt and an answer. `text` may contain the placeholders
/// {text_a} and {text_b}; every other character is literal. Class k is answered with
/// label_words[k], which SentencePiece encodes as a word of its own (with the word-start mark).
struct PromptTemplate {
    std::string text;
    std::vector<std::string> label_words;
};

/// Default SST-2 prompt: "review: <sentence> sentiment:" answered by negative / positive.
[[nodiscard]] inline PromptTemplate sst2_prompt() {
    return {"review: {text_a} sentiment:", {"negative", "positive"}};
}

/// Default MNLI prompt, answered by yes (entailment) / maybe (neutral) / no (contradiction).
[[nodiscard]] inline PromptTemplate mnli_prompt() {
    return {"premise: {text_a} hypothesis: {text_b} does the premise entail the hypothesis?",
            {"yes", "maybe", "no"}};
}

/// Default QNLI prompt, answered by yes (entailment) / no (not_entailment).
[[nodiscard]] inline PromptTemplate qnli_prompt() {
    return {"question: {text_a} sentence: {text_b} does the sentence answer the question?",
            {"yes", "no"}};
}

/// One encoded row: <s>, the prompt, then the answer tokens of its label.
struct ClassificationExample {
    TokenIds tokens;
    std::int32_t answer_start = 0;  ///< index in `tokens` of the first answer token
    int label = 0;
};

/// A prompt template with its label words already encoded.
struct EncodedTemplate {
    /// Literal pieces and placeholders in order; a placeholder is 0 ({text_a}) or 1 ({text_b}).
    struct Segment {
        TokenIds literal;
        int placeholder = -1;
    };
    std::vector<Segment> segments;
    std::vector<TokenIds> label_tokens;  ///< answer tokens of each class
};

/// Splits `prompt.text` at its placeholders and encodes the literal parts and the label words
/// with `tokenizer`, any type with `encode(std::string_view, bool add_bos, bool add_eos)`
/// returning token ids (SentencePieceTokenizer). Throws std::invalid_argument when a
/// placeholder is unknown, a label word encodes to no token, or two label words share their
/// answer tokens.
template <class Tokenizer>
[[nodiscard]] EncodedTemplate encode_template(const PromptTemplate& prompt, const Tokenizer& tokenizer) {
    EncodedTemplate encoded;
    auto add_literal = [&](std::string_view literal) {
        if (literal.find_first_not_of(' ') == std::string_view::npos) return;
        const auto ids = tokenizer.encode(literal, false, false);
        encoded.segments.push_back({TokenIds(ids.begin(), ids.end()), -1});
    };
    std::size_t start = 0;
    while (true) {
        const std::size_t open = prompt.text.find('{', start);
        if (open == std::string::npos) {
            add_literal(std::string_view(prompt.text).substr(start));
            break;
        }
        const std::size_t close = prompt.text.find('}', open);
        BITDISTILL_REQUIRE(close != std::string::npos, "prompt template '", prompt.text,
                           "': '{' at offset ", open, " has no closing '}'");
        const std::string name = prompt.text.substr(open + 1, close - open - 1);
        BITDISTILL_REQUIRE(name == "text_a" || name == "text_b", "prompt template '", prompt.text,
                           "': unknown placeholder {", name, "}; use {text_a} or {text_b}");
        add_literal(std::string_view(prompt.text).substr(start, open - start));
        encoded.segments.push_back({{}, name == "text_a" ? 0 : 1});
        start = close + 1;
    }
    BITDISTILL_REQUIRE(!prompt.label_words.empty(), "prompt template '", prompt.text, "' has no label words");
    for (const std::string& word : prompt.label_words) {
        const auto ids = tokenizer.encode(word, false, false);
        BITDISTILL_REQUIRE(!ids.empty(), "label word '", word, "' encodes to no token");
        encoded.label_tokens.emplace_back(ids.begin(), ids.end());
    }
    for (std::size_t a = 0; a < encoded.label_tokens.size(); ++a)
        for (std::size_t b = a + 1; b < encoded.label_tokens.size(); ++b)
            BITDISTILL_REQUIRE(encoded.label_tokens[a] != encoded.label_tokens[b], "label words '",
                               prompt.label_words[a], "' and '", prompt.label_words[b],
                               "' encode to the same tokens");
    return encoded;
}

/// Encodes one row as <s> prompt answer, at most `max_tokens` long. When the row is too
/// long, text tokens are cut from the end of the longer text field until it fits; the
/// template and the answer are never cut. Throws std::invalid_argument when even the
/// template and answer alone exceed `max_tokens`.
template <class Tokenizer>
[[nodiscard]] ClassificationExample encode_example(const TextExample& row, const EncodedTemplate& encoded,
                                                   const Tokenizer& tokenizer, int bos_id,
                                                   std::int64_t max_tokens) {
    BITDISTILL_REQUIRE(row.label >= 0 && row.label < static_cast<int>(encoded.label_tokens.size()),
                       "encode_example: label ", row.label, " on line ", row.line, " has no label word (",
                       encoded.label_tokens.size(), " classes)");
    std::vector<TokenIds> texts(2);
    for (int field = 0; field < 2; ++field) {
        const std::string& text = field == 0 ? row.text_a : row.text_b;
        if (text.empty()) continue;
        const auto ids = tokenizer.encode(text, false, false);
        texts[static_cast<std::size_t>(field)].assign(ids.begin(), ids.end());
    }
    const TokenIds& answer = encoded.label_tokens[static_cast<std::size_t>(row.label)];

    std::int64_t fixed = 1 + static_cast<std::int64_t>(answer.size());
    std::int64_t text_length = 0;
    for (const auto& segment : encoded.segments) {
        if (segment.placeholder < 0)
            fixed += static_cast<std::int64_t>(segment.literal.size());
        else
            text_length += static_cast<std::int64_t>(texts[static_cast<std::size_t>(segment.placeholder)].size());
    }
    BITDISTILL_REQUIRE(fixed < max_tokens, "encode_example: the template and answer take ", fixed,
                       " tokens, leaving no room for text within ", max_tokens, " tokens");
    while (fixed + text_length > max_tokens) {
        TokenIds& longer = texts[0].size() >= texts[1].size() ? texts[0] : texts[1];
        const std::int64_t excess = fixed + text_length - max_tokens;
        const std::int64_t cut = std::min<std::int64_t>(excess, static_cast<std::int64_t>(longer.size()));
        longer.resize(longer.size() - static_cast<std::size_t>(cut));
        text_length -= cut;
    }

    ClassificationExample example;
    example.label = row.label;
    example.tokens.push_back(bos_id);
    for (const auto& segment : encoded.segments) {
        const TokenIds& part = segment.placeholder < 0 ? segment.literal
                                                       : texts[static_cast<std::size_t>(segment.placeholder)];
        example.tokens.insert(example.tokens.end(), part.begin(), part.end());
    }
    example.answer_start = static_cast<std::int32_t>(example.tokens.size());
    example.tokens.insert(example.tokens.end(), answer.begin(), answer.end());
    return example;
}

/// A right-padded batch of token sequences, flattened row-major: row r = b * seq + t.
struct TokenBatch {
    std::int64_t batch = 0;
    std::int64_t seq = 0;
    TokenIds tokens;                   ///< [batch*seq], padding = pad id
    TokenIds targets;                  ///< [batch*seq], next token to predict or ignored_target
    std::vector<std::uint8_t> mask;    ///< [batch*seq], 1 for real tokens, 0 for padding
    std::vector<std::int64_t> answer_rows;  ///< per sequence: row predicting its first answer token
    std::vector<std::int32_t> answer_lengths;  ///< per sequence: number of answer tokens
    std::vector<int> labels;           ///< per sequence: class, or -1 for language-model data
    std::int64_t target_count = 0;     ///< rows whose target is not ignored
    std::int64_t real_tokens = 0;      ///< rows whose mask is 1
};

/// Builds a classification batch from `examples[indices[i]]`: targets only at the answer
/// positions (the prompt and padding are ignored).
[[nodiscard]] inline TokenBatch make_classification_batch(const std::vector<ClassificationExample>& examples,
                                                          const std::vector<std::int64_t>& indices,
                                                          std::int32_t pad_id) {
    TokenBatch batch;
    batch.batch = static_cast<std::int64_t>(indices.size());
    for (std::int64_t index : indices)
        batch.seq = std::max<std::int64_t>(batch.seq, static_cast<std::int64_t>(examples.at(static_cast<std::size_t>(index)).tokens.size()));
    const auto rows = static_cast<std::size_t>(batch.batch * batch.seq);
    batch.tokens.assign(rows, pad_id);
    batch.targets.assign(rows, ignored_target);
    batch.mask.assign(rows, 0);
    for (std::int64_t b = 0; b < batch.batch; ++b) {
        const ClassificationExample& example = examples[static_cast<std::size_t>(indices[static_cast<std::size_t>(b)])];
        const auto length = static_cast<std::int64_t>(example.tokens.size());
        const std::int64_t base = b * batch.seq;
        for (std::int64_t t = 0; t < length; ++t) {
            batch.tokens[static_cast<std::size_t>(base + t)] = example.tokens[static_cast<std::size_t>(t)];
            batch.mask[static_cast<std::size_t>(base + t)] = 1;
        }
        // Position t predicts token t + 1, so answer token k is the target of row answer_start + k - 1.
        for (std::int64_t t = example.answer_start; t < length; ++t)
            batch.targets[static_cast<std::size_t>(base + t - 1)] = example.tokens[static_cast<std::size_t>(t)];
        batch.answer_rows.push_back(base + example.answer_start - 1);
        batch.answer_lengths.push_back(static_cast<std::int32_t>(length - example.answer_start));
        batch.labels.push_back(example.label);
        batch.target_count += length - example.answer_start;
        batch.real_tokens += length;
    }
    return batch;
}

/// Cuts a token stream into windows of `window` tokens (the model sees window - 1 inputs
/// and predicts the next token at each), starting at `offset`. The tail shorter than a
/// window is dropped.
[[nodiscard]] inline std::vector<TokenIds> make_lm_windows(const TokenIds& stream, std::int64_t window,
                                                           std::int64_t offset) {
    BITDISTILL_REQUIRE(window >= 2, "make_lm_windows: window must hold at least 2 tokens, got ", window);
    std::vector<TokenIds> windows;
    for (std::int64_t start = std::max<std::int64_t>(offset, 0);
         start + window <= static_cast<std::int64_t>(stream.size()); start += window)
        windows.emplace_back(stream.begin() + start, stream.begin() + start + window);
    return windows;
}

/// Builds a language-model batch: sequence b is windows[indices[b]] without its last token,
/// and every position predicts the next token of the window.
[[nodiscard]] inline TokenBatch make_lm_batch(const std::vector<TokenIds>& windows,
                                              const std::vector<std::int64_t>& indices) {
    TokenBatch batch;
    batch.batch = static_cast<std::int64_t>(indices.size());
    BITDISTILL_REQUIRE(batch.batch > 0, "make_lm_batch: no windows selected");
    batch.seq = static_cast<std::int64_t>(windows.at(static_cast<std::size_t>(indices[0])).size()) - 1;
    const auto rows = static_cast<std::size_t>(batch.batch * batch.seq);
    batch.tokens.resize(rows);
    batch.targets.resize(rows);
    batch.mask.assign(rows, 1);
    for (std::int64_t b = 0; b < batch.batch; ++b) {
        const TokenIds& window = windows.at(static_cast<std::size_t>(indices[static_cast<std::size_t>(b)]));
        BITDISTILL_REQUIRE(static_cast<std::int64_t>(window.size()) == batch.seq + 1,
                           "make_lm_batch: windows differ in length (", window.size(), " and ", batch.seq + 1, ")");
        for (std::int64_t t = 0; t < batch.seq; ++t) {
            batch.tokens[static_cast<std::size_t>(b * batch.seq + t)] = window[static_cast<std::size_t>(t)];
            batch.targets[static_cast<std::size_t>(b * batch.seq + t)] = window[static_cast<std::size_t>(t + 1)];
        }
        batch.labels.push_back(-1);
    }
    batch.target_count = batch.batch * batch.seq;
    batch.real_tokens = batch.target_count;
    return batch;
}

/// Order in which one epoch visits a data set: a seeded shuffle, and for classification
/// data, groups of similar length so that batches carry little padding.
///
/// The order of epoch e depends only on (seed, e), so a run resumed at any step rebuilds
/// the same batches. `lengths` may be empty (all items equally long).
[[nodiscard]] inline std::vector<std::vector<std::int64_t>> epoch_batches(std::int64_t item_count,
                                                                          const std::vector<std::int64_t>& lengths,
                                                                          std::int64_t batch_size,
                                                                          std::uint64_t seed, std::int64_t epoch) {
    BITDISTILL_REQUIRE(batch_size > 0, "epoch_batches: batch_size must be positive, got ", batch_size);
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(epoch) + 1);
    std::vector<std::int64_t> order(static_cast<std::size_t>(item_count));
    std::iota(order.begin(), order.end(), std::int64_t{0});
    // std::shuffle's algorithm is unspecified, so use Fisher-Yates with the engine's raw
    // output: the order is then the same with every standard library.
    for (std::size_t i = order.size(); i > 1; --i)
        std::swap(order[i - 1], order[static_cast<std::size_t>(rng() % i)]);

    if (!lengths.empty()) {
        // Sort each run of 64 batches by length, so that a batch contains similar lengths.
        const std::int64_t group = batch_size * 64;
        for (std::int64_t start = 0; start < item_count; start += group) {
            const auto first = order.begin() + start;
            const auto last = order.begin() + std::min(item_count, start + group);
            std::stable_sort(first, last, [&](std::int64_t a, std::int64_t b) {
                return lengths[static_cast<std::size_t>(a)] < lengths[static_cast<std::size_t>(b)];
            });
        }
    }

    std::vector<std::vector<std::int64_t>> batches;
    for (std::int64_t start = 0; start + batch_size <= item_count; start += batch_size)
        batches.emplace_back(order.begin() + start, order.begin() + start + batch_size);
    if (!lengths.empty()) {
        for (std::size_t i = batches.size(); i > 1; --i)
            std::swap(batches[i - 1], batches[static_cast<std::size_t>(rng() % i)]);
    }
    return batches;
}

}  // namespace bitdistill::pipeline
