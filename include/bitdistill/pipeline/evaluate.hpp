// Accuracy of generative classification.
//
// A row counts as correct when the greedy prediction over the whole vocabulary, at every
// answer position (teacher-forced, which for greedy decoding is the same as generating),
// is the gold answer token. The second figure restricts the choice to the label words:
// the class whose first answer token has the highest logit at the first answer position.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <numeric>
#include <vector>

#include "bitdistill/autodiff/tape.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/nn/decoder_model.hpp"
#include "bitdistill/pipeline/data.hpp"

namespace bitdistill::pipeline {

/// Scores of one evaluation pass.
struct EvaluationResult {
    std::int64_t examples = 0;
    std::int64_t correct = 0;            ///< greedy argmax over the vocabulary equals the gold answer
    std::int64_t label_correct = 0;      ///< argmax restricted to the label words equals the gold class
    double accuracy = 0.0;               ///< correct / examples
    double label_accuracy = 0.0;         ///< label_correct / examples
    double seconds = 0.0;
    double tokens_per_second = 0.0;      ///< real (non-padding) tokens through the forward pass
    std::vector<int> predicted_classes;  ///< restricted prediction per row, in input order
};

/// Index of the largest of `count` values (the first one on ties).
[[nodiscard]] inline std::int64_t argmax(const float* values, std::int64_t count) {
    return std::max_element(values, values + count) - values;
}

/// Returns the first answer token of each class; throws std::invalid_argument when two
/// classes start with the same token, because the restricted prediction could not tell
/// them apart.
[[nodiscard]] inline std::vector<std::int32_t> first_label_tokens(const std::vector<TokenIds>& label_tokens) {
    std::vector<std::int32_t> first;
    for (const TokenIds& tokens : label_tokens) {
        BITDISTILL_REQUIRE(!tokens.empty(), "label word with no tokens");
        BITDISTILL_REQUIRE(std::find(first.begin(), first.end(), tokens.front()) == first.end(),
                           "two label words start with token ", tokens.front(),
                           "; choose label words whose first tokens differ");
        first.push_back(tokens.front());
    }
    return first;
}

/// Evaluates `weights` with projections in `mode` on `examples` (forward passes on a tape
/// with gradients off, batches of similar length). `label_tokens` are the answer tokens of
/// each class, as in EncodedTemplate.
[[nodiscard]] inline EvaluationResult evaluate_classification(const DecoderWeights& weights, nn::ProjectionMode mode,
                                                              const std::vector<ClassificationExample>& examples,
                                                              const std::vector<TokenIds>& label_tokens,
                                                              std::int64_t batch_size, std::int32_t pad_id) {
    BITDISTILL_REQUIRE(batch_size > 0, "evaluate_classification: batch_size must be positive, got ", batch_size);
    const std::vector<std::int32_t> first_tokens = first_label_tokens(label_tokens);
    nn::DecoderModel model(weights);
    model.set_projection_mode(mode);
    autodiff::Tape tape;
    tape.set_grad_enabled(false);

    EvaluationResult result;
    result.examples = static_cast<std::int64_t>(examples.size());
    result.predicted_classes.assign(examples.size(), -1);
    std::vector<std::int64_t> order(examples.size());
    std::iota(order.begin(), order.end(), std::int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
        return examples[static_cast<std::size_t>(a)].tokens.size() < examples[static_cast<std::size_t>(b)].tokens.size();
    });

    const auto started = std::chrono::steady_clock::now();
    std::int64_t tokens = 0;
    for (std::size_t start = 0; start < order.size(); start += static_cast<std::size_t>(batch_size)) {
        const std::vector<std::int64_t> indices(
            order.begin() + static_cast<std::ptrdiff_t>(start),
            order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + static_cast<std::size_t>(batch_size))));
        const TokenBatch batch = make_classification_batch(examples, indices, pad_id);
        tape.reset();
        const autodiff::Var logits_var = model.forward(tape, batch.tokens, batch.batch, batch.seq);
        const TensorView<const float> logits = tape.value(logits_var);
        const std::int64_t vocab = logits.cols();
        tokens += batch.real_tokens;

        for (std::int64_t b = 0; b < batch.batch; ++b) {
            const ClassificationExample& example = examples[static_cast<std::size_t>(indices[static_cast<std::size_t>(b)])];
            const std::int64_t row = batch.answer_rows[static_cast<std::size_t>(b)];
            bool all_match = true;
            for (std::int32_t k = 0; k < batch.answer_lengths[static_cast<std::size_t>(b)]; ++k) {
                const std::int32_t gold = example.tokens[static_cast<std::size_t>(example.answer_start + k)];
                all_match = all_match && argmax(logits.row(row + k), vocab) == gold;
            }
            result.correct += all_match ? 1 : 0;

            const float* answer_logits = logits.row(row);
            int best = 0;
            for (int c = 1; c < static_cast<int>(first_tokens.size()); ++c)
                if (answer_logits[first_tokens[static_cast<std::size_t>(c)]] >
                    answer_logits[first_tokens[static_cast<std::size_t>(best)]])
                    best = c;
            result.predicted_classes[static_cast<std::size_t>(indices[static_cast<std::size_t>(b)])] = best;
            result.label_correct += best == example.label ? 1 : 0;
        }
    }
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    result.tokens_per_second = result.seconds > 0 ? static_cast<double>(tokens) / result.seconds : 0.0;
    if (result.examples > 0) {
        result.accuracy = static_cast<double>(result.correct) / static_cast<double>(result.examples);
        result.label_accuracy = static_cast<double>(result.label_correct) / static_cast<double>(result.examples);
    }
    return result;
}

}  // namespace bitdistill::pipeline
