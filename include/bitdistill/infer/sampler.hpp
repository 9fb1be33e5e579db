// Choosing the next token from logits (greedy or temperature sampling with a seeded
// generator), and a generation loop over an InferenceSession.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/infer/session.hpp"

namespace bitdistill {

/// Picks tokens from logits. Temperature 0 is greedy: the first index of the largest logit.
/// A positive temperature samples from softmax(logits / temperature) with a SplitMix64
/// generator seeded by `seed`, so a seed gives the same tokens on every platform.
class Sampler {
public:
    explicit Sampler(float temperature = 0.0f, std::uint64_t seed = 0)
        : temperature_(temperature), state_(seed) {
        BITDISTILL_REQUIRE(std::isfinite(temperature) && temperature >= 0.0f,
                           "Sampler: temperature must be finite and >= 0, got ", temperature);
    }

    [[nodiscard]] float temperature() const noexcept { return temperature_; }

    /// The next token. Throws std::invalid_argument for empty logits.
    [[nodiscard]] int sample(std::span<const float> logits) {
        BITDISTILL_REQUIRE(!logits.empty(), "Sampler: no logits");
        const int best = argmax(logits);
        if (temperature_ == 0.0f) return best;
        // Softmax of logits / T, shifted by the maximum so the largest term is exp(0) = 1.
        const double inverse = 1.0 / static_cast<double>(temperature_);
        double total = 0.0;
        for (float logit : logits) total += std::exp((static_cast<double>(logit) - logits[best]) * inverse);
        double threshold = uniform() * total;
        for (std::size_t i = 0; i < logits.size(); ++i) {
            threshold -= std::exp((static_cast<double>(logits[i]) - logits[best]) * inverse);
            if (threshold < 0.0) return static_cast<int>(i);
        }
        return best;  // rounding left a sliver of mass: fall back to the mode
    }

    /// Index of the first largest element.
    [[nodiscard]] static int argmax(std::span<const float> logits) noexcept {
        std::size_t best = 0;
        for (std::size_t i = 1; i < logits.size(); ++i)
            if (logits[i] > logits[best]) best = i;
        return static_cast<int>(best);
    }

private:
    /// Uniform double in [0, 1) from the top 53 bits of a SplitMix64 step.
    double uniform() noexcept {
        state_ += 0x9e3779b97f4a7c15ull;
        std::uint64_t z = state_;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        return static_cast<double>(z >> 11) * 0x1.0p-53;
    }

    float temperature_;
    std::uint64_t state_;
};

/// Runs `prompt` through `session` with one prefill, then samples and feeds back up to
/// `max_new_tokens` tokens, stopping early after `stop_token` (pass -1 for none) or when
/// the cache is full. Returns the generated tokens, the stop token included.
inline std::vector<int> generate(InferenceSession& session, std::span<const int> prompt,
                                 std::int64_t max_new_tokens, Sampler& sampler, int stop_token = -1) {
    BITDISTILL_REQUIRE(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", max_new_tokens);
    std::vector<int> generated;
    if (max_new_tokens == 0) return generated;
    std::span<const float> logits = session.prefill(prompt);
    while (true) {
        const int next = sampler.sample(logits);
        generated.push_back(next);
        if (next == stop_token || static_cast<std::int64_t>(generated.size()) == max_new_tokens ||
            session.position() == session.capacity())
            break;
        logits = session.decode(next);
    }
    return generated;
}

}  // namespace bitdistill
