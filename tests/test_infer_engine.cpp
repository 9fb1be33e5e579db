// The inference engine (infer/) against a naive per-token forward pass written here from
// the conventions of nn/config.hpp, for every projection encoding and every block option
// (GQA, q/k-norm, SubLN, all norms, untied head), plus prefill/decode agreement, chunking,
// sampling and error handling.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bitdistill/core/alloc_counter.hpp"
#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/sampler.hpp"
#include "bitdistill/infer/session.hpp"
#include "bitdistill/nn/decoder_model.hpp"
#include "bitdistill/quant/quantize_int8.hpp"
#include "bitdistill/quant/quantize_ternary.hpp"

using namespace bitdistill;

namespace {

bool small_scale() {
    const char* scale = std::getenv("BITDISTILL_TEST_SCALE");
    return scale != nullptr && std::string(scale) == "small";
}

DecoderConfig small_config() {
    DecoderConfig config;
    config.vocab_size = 97;
    config.dim = 48;
    config.hidden_dim = 80;
    config.n_layers = 2;
    config.n_heads = 6;
    config.n_kv_heads = 2;
    config.max_seq_len = 40;
    return config;
}

Tensor<float> random_tensor(Shape shape, std::mt19937_64& generator, float scale, float mean = 0.0f) {
    std::normal_distribution<float> normal(mean, scale);
    Tensor<float> tensor(shape);
    for (float& value : tensor) value = normal(generator);
    return tensor;
}

/// Random weights with norm gains near 1 and projections scaled like a trained model's.
DecoderWeights random_weights(const DecoderConfig& config, std::uint64_t seed) {
    std::mt19937_64 generator(seed);
    DecoderWeights weights;
    weights.config = config;
    const std::int64_t vocab = config.vocab_size, dim = config.dim, hidden = config.hidden_dim;
    const std::int64_t q_width = config.q_width(), kv_width = config.kv_width();
    const std::int64_t head_dim = config.resolved_head_dim();
    auto gain = [&](std::int64_t width) { return random_tensor(Shape{width}, generator, 0.1f, 1.0f); };
    const float in_scale = 1.0f / std::sqrt(static_cast<float>(dim));
    weights.embedding = random_tensor(Shape{vocab, dim}, generator, 1.0f);
    if (!config.tied_embeddings) weights.lm_head = random_tensor(Shape{vocab, dim}, generator, in_scale);
    weights.final_norm = gain(dim);
    for (int layer = 0; layer < config.n_layers; ++layer) {
        LayerWeights l;
        l.attn_norm = gain(dim);
        l.ffn_norm = gain(dim);
        l.wq = random_tensor(Shape{q_width, dim}, generator, in_scale);
        l.wk = random_tensor(Shape{kv_width, dim}, generator, in_scale);
        l.wv = random_tensor(Shape{kv_width, dim}, generator, in_scale);
        l.wo = random_tensor(Shape{dim, q_width}, generator, 1.0f / std::sqrt(static_cast<float>(q_width)));
        l.w_gate = random_tensor(Shape{hidden, dim}, generator, in_scale);
        l.w_up = random_tensor(Shape{hidden, dim}, generator, in_scale);
        l.w_down = random_tensor(Shape{dim, hidden}, generator, 1.0f / std::sqrt(static_cast<float>(hidden)));
        if (config.qk_norm) {
            l.q_norm = gain(head_dim);
            l.k_norm = gain(head_dim);
        }
        if (config.subln) {
            l.attn_subln = gain(q_width);
            l.ffn_subln = gain(hidden);
        }
        if (config.all_norms) {
            l.qkv_norm = gain(dim);
            l.gate_up_norm = gain(dim);
        }
        weights.layers.push_back(std::move(l));
    }
    return weights;
}

/// Naive forward pass: one token at a time, the whole context kept in vectors. The weights
/// are replaced by what each format stores, and the projection inputs by what the kernels
/// see (bf16-rounded or int8 fake-quantized), so the engine must match it to rounding.
class ReferenceModel {
public:
    ReferenceModel(const DecoderWeights& weights, InferenceFormat format) : w_(weights), format_(format) {
        for (LayerWeights& layer : w_.layers)
            for (Tensor<float>* m : {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w_gate,
                                     &layer.w_up, &layer.w_down})
                *m = stored(*m, format.projections, format.ternary_scales);
        w_.embedding = stored(w_.embedding, format.embeddings);
        if (!w_.config.tied_embeddings) w_.lm_head = stored(w_.lm_head, format.embeddings);
        keys_.resize(w_.layers.size());
        values_.resize(w_.layers.size());
    }

    /// Logits after `token` at the next position.
    std::vector<float> step(int token) {
        const DecoderConfig& c = w_.config;
        const int hd = c.resolved_head_dim();
        const int position = static_cast<int>(keys_[0].size());
        std::vector<float> x(w_.embedding.data() + token * c.dim, w_.embedding.data() + (token + 1) * c.dim);
        for (std::size_t index = 0; index < w_.layers.size(); ++index) {
            const LayerWeights& l = w_.layers[index];
            std::vector<float> n = rmsnorm(x, l.attn_norm, c.norm_eps);
            if (c.all_norms) n = rmsnorm(n, l.qkv_norm, c.subln_eps);
            std::vector<float> q = project(l.wq, n, format_.projections);
            std::vector<float> k = project(l.wk, n, format_.projections);
            std::vector<float> v = project(l.wv, n, format_.projections);
            for (int h = 0; h < c.n_heads; ++h) {
                if (c.qk_norm) norm_slice(q, h * hd, hd, l.q_norm, c.norm_eps);
                rope(q, h * hd, hd, position, c.rope_theta);
            }
            for (int h = 0; h < c.n_kv_heads; ++h) {
                if (c.qk_norm) norm_slice(k, h * hd, hd, l.k_norm, c.norm_eps);
                rope(k, h * hd, hd, position, c.rope_theta);
            }
            keys_[index].push_back(k);
            values_[index].push_back(v);
            std::vector<float> attention(static_cast<std::size_t>(c.q_width()), 0.0f);
            for (int h = 0; h < c.n_heads; ++h) {
                const int kv_head = h / (c.n_heads / c.n_kv_heads);
                std::vector<double> scores;
                double largest = -1e300;
                for (int s = 0; s <= position; ++s) {
                    double dot = 0.0;
                    for (int i = 0; i < hd; ++i) dot += q[h * hd + i] * keys_[index][s][kv_head * hd + i];
                    scores.push_back(dot / std::sqrt(static_cast<double>(hd)));
                    largest = std::max(largest, scores.back());
                }
                double total = 0.0;
                for (double& score : scores) total += (score = std::exp(score - largest));
                for (int s = 0; s <= position; ++s)
                    for (int i = 0; i < hd; ++i)
                        attention[h * hd + i] += static_cast<float>(scores[s] / total) * values_[index][s][kv_head * hd + i];
            }
            if (c.subln) attention = rmsnorm(attention, l.attn_subln, c.subln_eps);
            const std::vector<float> o = project(l.wo, attention, format_.projections);
            for (int i = 0; i < c.dim; ++i) x[i] += o[i];

            n = rmsnorm(x, l.ffn_norm, c.norm_eps);
            if (c.all_norms) n = rmsnorm(n, l.gate_up_norm, c.subln_eps);
            std::vector<float> gate = project(l.w_gate, n, format_.projections);
            const std::vector<float> up = project(l.w_up, n, format_.projections);
            for (std::size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
            if (c.subln) gate = rmsnorm(gate, l.ffn_subln, c.subln_eps);
            const std::vector<float> down = project(l.w_down, gate, format_.projections);
            for (int i = 0; i < c.dim; ++i) x[i] += down[i];
        }
        x = rmsnorm(x, w_.final_norm, c.norm_eps);
        return project(c.tied_embeddings ? w_.embedding : w_.lm_head, x, format_.embeddings);
    }

private:
    static Tensor<float> stored(const Tensor<float>& m, ProjectionEncoding encoding,
                                Granularity scales = Granularity::per_tensor) {
        Tensor<float> out(m.shape());
        switch (encoding) {
            case ProjectionEncoding::fp32: return m;
            case ProjectionEncoding::bf16:
                for (std::int64_t i = 0; i < m.numel(); ++i) out[i] = to_float(to_bfloat16(m[i]));
                return out;
            default:
                if (scales == Granularity::per_row)
                    fake_quantize_ternary<Ternary<2, Granularity::per_row>>(m.view(), out.view());
                else
                    fake_quantize_ternary<Ternary<2, Granularity::per_tensor>>(m.view(), out.view());
                return out;
        }
    }

    /// y = W x, with x rounded or quantized as the kernel receives it.
    static std::vector<float> project(const Tensor<float>& w, std::vector<float> x, ProjectionEncoding encoding) {
        if (encoding == ProjectionEncoding::bf16) {
            for (float& value : x) value = to_float(to_bfloat16(value));
        } else if (is_ternary(encoding)) {
            Tensor<float> quantized(Shape{1, static_cast<std::int64_t>(x.size())});
            fake_quantize_int8(TensorView<const float>(x.data(), quantized.shape()), quantized.view());
            x.assign(quantized.begin(), quantized.end());
        }
        std::vector<float> y(static_cast<std::size_t>(w.rows()));
        for (std::int64_t r = 0; r < w.rows(); ++r) {
            double sum = 0.0;
            for (std::int64_t k = 0; k < w.cols(); ++k) sum += static_cast<double>(w(r, k)) * x[k];
            y[r] = static_cast<float>(sum);
        }
        return y;
    }

    static std::vector<float> rmsnorm(const std::vector<float>& x, const Tensor<float>& gain, float eps) {
        double squares = 0.0;
        for (float value : x) squares += static_cast<double>(value) * value;
        const double scale = 1.0 / std::sqrt(squares / x.size() + eps);
        std::vector<float> y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) y[i] = static_cast<float>(gain[i] * x[i] * scale);
        return y;
    }

    static void norm_slice(std::vector<float>& x, int offset, int width, const Tensor<float>& gain, float eps) {
        std::vector<float> slice(x.begin() + offset, x.begin() + offset + width);
        slice = rmsnorm(slice, gain, eps);
        std::copy(slice.begin(), slice.end(), x.begin() + offset);
    }

    static void rope(std::vector<float>& x, int offset, int hd, int position, float theta) {
        for (int i = 0; i < hd / 2; ++i) {
            const double angle = position * std::pow(static_cast<double>(theta), -2.0 * i / hd);
            const double a = x[offset + 2 * i], b = x[offset + 2 * i + 1];
            x[offset + 2 * i] = static_cast<float>(a * std::cos(angle) - b * std::sin(angle));
            x[offset + 2 * i + 1] = static_cast<float>(a * std::sin(angle) + b * std::cos(angle));
        }
    }

    DecoderWeights w_;
    InferenceFormat format_;
    std::vector<std::vector<std::vector<float>>> keys_, values_;
};

/// Largest |a - b| over all logits, relative to the largest |b|.
double relative_error(std::span<const float> a, const std::vector<float>& b) {
    double difference = 0.0, scale = 0.0;
    for (std::size_t i = 0; i < b.size(); ++i) {
        difference = std::max(difference, static_cast<double>(std::fabs(a[i] - b[i])));
        scale = std::max(scale, static_cast<double>(std::fabs(b[i])));
    }
    return difference / scale;
}

std::vector<int> random_tokens(int count, int vocab, std::uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::uniform_int_distribution<int> pick(0, vocab - 1);
    std::vector<int> tokens(static_cast<std::size_t>(count));
    for (int& token : tokens) token = pick(generator);
    return tokens;
}

const std::map<std::string, InferenceFormat> formats = {
    {"fp32", InferenceFormat::fp32()},
    {"bf16", InferenceFormat::bf16()},
    {"ternary2", InferenceFormat::ternary2()},
    {"ternary1_6", InferenceFormat::ternary1_6()},
    {"ternary2 with fp32 head", {ProjectionEncoding::ternary2, ProjectionEncoding::fp32}},
    {"ternary1_6 with per-row scales", InferenceFormat::ternary1_6(Granularity::per_row)},
};

/// Tolerance of the engine against the reference, relative to the largest logit. fp32
/// differs by summation order only. With bf16 or int8 inputs, such a difference can round an
/// activation to the neighbouring bf16 value or int8 code. Measured errors stay below 3e-3
/// for bf16 and 2e-3 for ternary, while a wrong block gives errors of order 1.
double tolerance(const InferenceFormat& format) {
    if (format.projections == ProjectionEncoding::fp32 && format.embeddings == ProjectionEncoding::fp32) return 2e-5;
    if (format.projections == ProjectionEncoding::bf16) return 1e-2;
    return 5e-3;
}

}  // namespace

TEST_CASE("engine matches the reference forward pass") {
    struct Variant {
        const char* name;
        bool qk_norm, subln, all_norms, tied;
    };
    const Variant variants[] = {
        {"plain", false, false, false, true},
        {"qk_norm", true, false, false, true},
        {"subln", false, true, false, true},
        {"all_norms + subln", false, true, true, true},
        {"untied + qk_norm + subln", true, true, false, false},
    };
    const int steps = small_scale() ? 6 : 14;
    for (const Variant& variant : variants) {
        DecoderConfig config = small_config();
        config.qk_norm = variant.qk_norm;
        config.subln = variant.subln;
        config.all_norms = variant.all_norms;
        config.tied_embeddings = variant.tied;
        const DecoderWeights weights = random_weights(config, 7);
        const std::vector<int> tokens = random_tokens(steps, config.vocab_size, 3);
        for (const auto& [format_name, format] : formats) {
            const InferenceModel model = InferenceModel::build(weights, format);
            ReferenceModel reference(weights, format);
            InferenceSession session(model);
            for (int step = 0; step < steps; ++step) {
                const std::span<const float> logits = session.decode(tokens[static_cast<std::size_t>(step)]);
                const std::vector<float> expected = reference.step(tokens[static_cast<std::size_t>(step)]);
                INFO(std::string(variant.name), ", format ", format_name, ", position ", step);
                CHECK(relative_error(logits, expected) <= tolerance(format));
            }
        }
    }
}

TEST_CASE("engine matches the trainable model") {
    DecoderConfig config = small_config();
    config.qk_norm = true;
    config.subln = true;
    const DecoderWeights weights = random_weights(config, 47);
    const std::vector<int> tokens = random_tokens(11, config.vocab_size, 53);
    const std::vector<std::int32_t> ids(tokens.begin(), tokens.end());

    struct Case {
        const char* name;
        nn::ProjectionMode mode;
        Granularity scales;
        InferenceFormat format;
        double tolerance;
    };
    const Case cases[] = {
        {"float", nn::ProjectionMode::full_precision, Granularity::per_tensor, InferenceFormat::fp32(), 2e-5},
        {"ternary per tensor", nn::ProjectionMode::ternary, Granularity::per_tensor,
         {ProjectionEncoding::ternary2, ProjectionEncoding::fp32, Granularity::per_tensor}, 5e-3},
        {"ternary per row", nn::ProjectionMode::ternary, Granularity::per_row,
         {ProjectionEncoding::ternary1_6, ProjectionEncoding::fp32, Granularity::per_row}, 5e-3},
    };
    for (const Case& c : cases) {
        nn::DecoderModel trainable(weights);
        nn::BitLinearOptions options;
        options.weight_granularity = c.scales;
        trainable.set_projection_mode(c.mode, options);
        autodiff::Tape tape;
        const TensorView<const float> expected =
            std::as_const(tape).value(trainable.forward(tape, ids, 1, static_cast<std::int64_t>(ids.size())));

        const InferenceModel model = InferenceModel::build(weights, c.format);
        InferenceSession session(model);
        const TensorView<const float> actual = session.prefill_all(tokens);
        REQUIRE(actual.shape() == expected.shape());
        for (std::int64_t t = 0; t < actual.rows(); ++t) {
            const std::vector<float> row(expected.row(t), expected.row(t) + expected.cols());
            INFO(std::string(c.name), ", position ", t);
            CHECK(relative_error(std::span<const float>(actual.row(t), static_cast<std::size_t>(actual.cols())), row) <=
                  c.tolerance);
        }
    }
}

TEST_CASE("prefill matches decoding token by token") {
    DecoderConfig config = small_config();
    config.qk_norm = true;
    const DecoderWeights weights = random_weights(config, 11);
    const std::vector<int> tokens = random_tokens(23, config.vocab_size, 5);
    for (const auto& [format_name, format] : formats) {
        const InferenceModel model = InferenceModel::build(weights, format);
        InferenceSession decoding(model);
        InferenceSession prefilling(model);
        InferenceSession chunked(model, 0, 4);  // 23 tokens in chunks of 4
        const TensorView<const float> all = prefilling.prefill_all(tokens);
        const TensorView<const float> all_chunked = chunked.prefill_all(tokens);
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            const std::span<const float> logits = decoding.decode(tokens[t]);
            INFO("format ", format_name, ", position ", t);
            for (int v = 0; v < config.vocab_size; ++v) {
                REQUIRE(all(static_cast<std::int64_t>(t), v) == doctest::Approx(logits[v]).epsilon(1e-5));
                REQUIRE(all_chunked(static_cast<std::int64_t>(t), v) == doctest::Approx(logits[v]).epsilon(1e-5));
            }
        }
        CHECK(prefilling.position() == 23);

        // prefill returns the logits of the last token and continues where it stopped.
        InferenceSession split(model);
        (void)split.prefill(std::span<const int>(tokens).first(10));
        const std::span<const float> last = split.prefill(std::span<const int>(tokens).subspan(10));
        for (int v = 0; v < config.vocab_size; ++v) CHECK(last[v] == doctest::Approx(all(22, v)).epsilon(1e-5));
    }
}

TEST_CASE("ternary 2-bit and 1.6-bit models give identical logits") {
    const DecoderConfig config = small_config();
    const DecoderWeights weights = random_weights(config, 13);
    const InferenceModel two_bit = InferenceModel::build(weights, InferenceFormat::ternary2());
    const InferenceModel one_six = InferenceModel::build(weights, InferenceFormat::ternary1_6());
    InferenceSession a(two_bit), b(one_six);
    const std::vector<int> tokens = random_tokens(12, config.vocab_size, 17);
    const TensorView<const float> la = a.prefill_all(tokens);
    const TensorView<const float> lb = b.prefill_all(tokens);
    for (std::int64_t i = 0; i < la.numel(); ++i) REQUIRE(la[i] == lb[i]);
}

TEST_CASE("engine runs the same on 2 threads") {
    const DecoderConfig config = small_config();
    const DecoderWeights weights = random_weights(config, 19);
    const std::vector<int> tokens = random_tokens(9, config.vocab_size, 23);
    const int saved = num_threads();
    for (const auto& [format_name, format] : formats) {
        const InferenceModel model = InferenceModel::build(weights, format);
        set_num_threads(1);
        InferenceSession one(model);
        const Tensor<float> expected = [&] {
            const TensorView<const float> view = one.prefill_all(tokens);
            Tensor<float> copy(view.shape());
            std::copy(view.data(), view.data() + view.numel(), copy.data());
            return copy;
        }();
        set_num_threads(2);
        InferenceSession two(model);
        const TensorView<const float> actual = two.prefill_all(tokens);
        INFO("format ", format_name);
        for (std::int64_t i = 0; i < actual.numel(); ++i) REQUIRE(actual[i] == expected[i]);
    }
    set_num_threads(saved);
}

TEST_CASE("decoding allocates nothing after the first token") {
    const DecoderConfig config = small_config();
    const DecoderWeights weights = random_weights(config, 29);
    for (const auto& [format_name, format] : formats) {
        const InferenceModel model = InferenceModel::build(weights, format);
        InferenceSession session(model);
        (void)session.decode(1);
        const std::uint64_t before = buffer_allocations();
        for (int token = 2; token < 10; ++token) (void)session.decode(token);
        INFO("format ", format_name);
        CHECK(buffer_allocations() == before);
    }
}

TEST_CASE("weight memory is split by role") {
    const DecoderConfig config = small_config();
    const DecoderWeights weights = random_weights(config, 31);
    const std::size_t projection_params =
        static_cast<std::size_t>(config.n_layers) *
        static_cast<std::size_t>(2 * config.q_width() * config.dim + 2 * config.kv_width() * config.dim +
                                 3 * config.hidden_dim * config.dim);
    const std::size_t embedding_params = static_cast<std::size_t>(config.vocab_size * config.dim);
    const std::size_t gain_floats = static_cast<std::size_t>(config.dim * (2 * config.n_layers + 1));

    const WeightMemory fp32 = InferenceModel::build(weights, InferenceFormat::fp32()).memory();
    CHECK(fp32.projections == 4 * projection_params);
    CHECK(fp32.embeddings == 4 * embedding_params);
    CHECK(fp32.other == 4 * gain_floats);
    const WeightMemory bf16 = InferenceModel::build(weights, InferenceFormat::bf16()).memory();
    CHECK(bf16.projections == 2 * projection_params);
    CHECK(bf16.embeddings == 2 * embedding_params);

    const InferenceModel ternary = InferenceModel::build(weights, InferenceFormat::ternary2());
    std::size_t packed = 0;
    for (const InferenceLayer& layer : ternary.layers)
        for (const PackedLinear* w : {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w_gate, &layer.w_up, &layer.w_down})
            packed += std::get<Ternary2Weights>(w->storage()).storage_bytes();
    CHECK(ternary.memory().projections == packed);
    CHECK(ternary.memory().embeddings == 2 * embedding_params);
}

TEST_CASE("sampler is greedy at temperature 0 and seeded above") {
    const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f, 1.0f};
    Sampler greedy;
    CHECK(greedy.sample(logits) == 1);  // first of the tied maxima

    Sampler a(1.0f, 42), b(1.0f, 42), c(1.0f, 43);
    std::vector<int> from_a, from_b, from_c;
    for (int i = 0; i < 50; ++i) {
        from_a.push_back(a.sample(logits));
        from_b.push_back(b.sample(logits));
        from_c.push_back(c.sample(logits));
    }
    CHECK(from_a == from_b);
    CHECK(from_a != from_c);

    // Frequencies follow softmax(logits / T) for T = 2.
    Sampler warm(2.0f, 7);
    const int draws = small_scale() ? 20000 : 100000;
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < draws; ++i) ++counts[static_cast<std::size_t>(warm.sample(logits))];
    double total = 0.0;
    for (float logit : logits) total += std::exp(logit / 2.0);
    for (std::size_t i = 0; i < logits.size(); ++i) {
        const double expected = std::exp(logits[i] / 2.0) / total;
        INFO("token ", i);
        CHECK(std::fabs(counts[i] / static_cast<double>(draws) - expected) < 0.01);
    }
    CHECK_THROWS_AS(Sampler(-1.0f), std::invalid_argument);
}

TEST_CASE("generate stops at the stop token and the cache end") {
    DecoderConfig config = small_config();
    config.max_seq_len = 12;
    const InferenceModel model = InferenceModel::build(random_weights(config, 37), InferenceFormat::fp32());
    InferenceSession session(model);
    Sampler greedy;
    const std::vector<int> prompt = {1, 2, 3};
    const std::vector<int> all = generate(session, prompt, 100, greedy);
    // The prompt fills 3 positions and 9 decoded tokens the other 9; the 10th sampled token
    // is returned but not run.
    CHECK(all.size() == 10);
    CHECK(session.position() == 12);

    session.reset();
    const std::vector<int> stopped = generate(session, prompt, 100, greedy, all[2]);
    CHECK(stopped.size() <= 3);
    CHECK(stopped.back() == all[2]);
}

TEST_CASE("engine rejects bad tokens, overflow and bad weights") {
    const DecoderConfig config = small_config();
    DecoderWeights weights = random_weights(config, 41);
    const InferenceModel model = InferenceModel::build(weights, InferenceFormat::fp32());
    InferenceSession session(model, 8);
    CHECK_THROWS_WITH_AS((void)session.decode(97), doctest::Contains("token 97 at index 0 is outside [0, 97)"),
                         std::invalid_argument);
    CHECK_THROWS_AS((void)session.decode(-1), std::invalid_argument);
    const std::vector<int> nine(9, 1);
    CHECK_THROWS_WITH_AS((void)session.prefill(nine), doctest::Contains("overflow the cache of 8 positions"),
                         std::invalid_argument);
    CHECK(session.position() == 0);
    CHECK_THROWS_AS(InferenceSession(model, 41), std::invalid_argument);

    CHECK_THROWS_WITH_AS((void)InferenceModel::build(weights, {ProjectionEncoding::fp32, ProjectionEncoding::ternary2}),
                         doctest::Contains("embedding and LM head take fp32 or bf16"), std::invalid_argument);
    weights.layers[1].wv = Tensor<float>(Shape{16, 47});
    CHECK_THROWS_WITH_AS((void)InferenceModel::build(weights, InferenceFormat::fp32()),
                         doctest::Contains("layers[1].wv has shape [16, 47], expected [16, 48]"), shape_error);

    DecoderWeights extra = random_weights(config, 43);
    extra.layers[0].q_norm = Tensor<float>(Shape{8}, 1.0f);  // q/k-norm is off in this config
    CHECK_THROWS_WITH_AS((void)InferenceModel::build(extra, InferenceFormat::fp32()),
                         doctest::Contains("layers[0].q_norm has shape [8], expected none"), shape_error);
}
