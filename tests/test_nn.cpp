// Tests of the trainable decoder layers: gradient checks of a block and a whole model,
// construction from and export to DecoderWeights, parameter enumeration, SubLN insertion,
// projection switching and the exposed Q, K, V.
#include <doctest/doctest.h>

#include <bitdistill/autodiff/ops_basic.hpp>
#include <bitdistill/autodiff/ops_loss.hpp>
#include <bitdistill/nn/decoder_model.hpp>

#include "test_autodiff_support.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

using namespace bitdistill;
using namespace bitdistill::autodiff;
using namespace bitdistill::nn;
using test_support::random_tensor;

namespace {

DecoderConfig tiny_config() {
    DecoderConfig c;
    c.vocab_size = 11;
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 4;  // q width 16 differs from dim 8, which the projections must respect
    c.max_seq_len = 8;
    return c;
}

/// Random weights with gains away from 1, so that a gain gradient bug cannot hide.
DecoderWeights tiny_weights(const DecoderConfig& config, std::uint32_t seed) {
    DecoderWeights w = random_decoder_weights(config, seed, 0.3f);
    std::uint32_t s = seed * 100;
    auto perturb = [&](Tensor<float>& gain) {
        if (gain.data() == nullptr) return;
        gain = random_tensor(gain.shape(), ++s, 0.6f, 1.4f);
    };
    for (LayerWeights& layer : w.layers)
        for (Tensor<float>* gain : {&layer.attn_norm, &layer.qkv_norm, &layer.q_norm, &layer.k_norm,
                                    &layer.attn_subln, &layer.ffn_norm, &layer.gate_up_norm, &layer.ffn_subln})
            perturb(*gain);
    perturb(w.final_norm);
    return w;
}

/// Checks the gradient of every parameter of `model` for a masked cross-entropy loss on
/// a padded batch against central differences.
void check_model_gradients(DecoderModel& model, int elements_per_input, double step = 1e-2) {
    const std::vector<std::int32_t> tokens{1, 5, 7, 2, 9, 3, 3, 0, 4, 6};
    const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    const std::vector<std::int32_t> targets{5, 7, 2, 9, -1, 3, 0, 4, -1, -1};
    Tape tape;
    auto loss_value = [&](bool with_backward) -> double {
        tape.reset();
        Var logits = model.forward(tape, tokens, 2, 5, mask);
        Var loss = cross_entropy(tape, logits, targets);
        if (with_backward) {
            model.zero_grad();
            tape.backward(loss);
        }
        return tape.value(loss)[0];
    };
    loss_value(true);
    std::vector<ParamRef> params = model.parameters();
    std::vector<GradCheckInput> inputs;
    for (ParamRef& p : params) inputs.push_back({p.name, p.value, p.grad});
    GradCheckOptions options;
    options.step = step;
    options.max_elements_per_input = elements_per_input;
    const GradCheckReport report = check_gradients([&] { return loss_value(false); }, inputs, options);
    INFO(report.to_string());
    CHECK(report.passed());
}

}  // namespace

TEST_CASE("model gradients, plain float") {
    DecoderModel model(tiny_weights(tiny_config(), 1));
    check_model_gradients(model, test_support::small_scale() ? 6 : 24);
}

TEST_CASE("model gradients with qk norm, SubLN, all norms and an untied head") {
    DecoderConfig config = tiny_config();
    config.qk_norm = true;
    config.subln = true;
    config.all_norms = true;
    config.tied_embeddings = false;
    DecoderModel model(tiny_weights(config, 2));
    // The stacked norms make the loss strongly curved, so a smaller step keeps the
    // truncation error of the central difference below the tolerance.
    check_model_gradients(model, test_support::small_scale() ? 6 : 24, 3e-3);
}

TEST_CASE("logits at selected rows") {
    // forward_hidden + select_rows + lm_head gives the same rows as forward, and the
    // gradients of a loss on those rows pass the gradient check.
    DecoderModel model(tiny_weights(tiny_config(), 10));
    const std::vector<std::int32_t> tokens{3, 1, 4, 1, 5, 9, 2, 6};
    const std::vector<std::int32_t> rows{3, 6, 7};
    const std::vector<std::int32_t> targets{2, 7, 1};
    Tape full;
    auto all_logits = full.value(model.forward(full, tokens, 2, 4));
    Tape tape;
    Var selected = model.lm_head(tape, select_rows(tape, model.forward_hidden(tape, tokens, 2, 4), rows));
    REQUIRE(tape.shape(selected) == Shape{3, 11});
    // Eigen's AVX2 kernel may order the sums differently for 3 rows than for 8, so the
    // rows agree to rounding rather than bit for bit.
    for (std::size_t i = 0; i < rows.size(); ++i)
        for (std::int64_t j = 0; j < 11; ++j)
            CHECK(tape.value(selected)(static_cast<std::int64_t>(i), j) ==
                  doctest::Approx(all_logits(rows[i], j)).epsilon(1e-5));

    auto loss_value = [&](bool with_backward) -> double {
        tape.reset();
        Var logits = model.lm_head(tape, select_rows(tape, model.forward_hidden(tape, tokens, 2, 4), rows));
        Var loss = cross_entropy(tape, logits, targets);
        if (with_backward) {
            model.zero_grad();
            tape.backward(loss);
        }
        return tape.value(loss)[0];
    };
    loss_value(true);
    std::vector<ParamRef> params = model.parameters();
    std::vector<GradCheckInput> inputs;
    for (ParamRef& p : params) inputs.push_back({p.name, p.value, p.grad});
    GradCheckOptions options;
    options.step = 1e-2;
    options.max_elements_per_input = test_support::small_scale() ? 4 : 12;
    const GradCheckReport report = check_gradients([&] { return loss_value(false); }, inputs, options);
    INFO(report.to_string());
    CHECK(report.passed());
}

TEST_CASE("parameters are named and decay 2-D weights only") {
    DecoderConfig config = tiny_config();
    config.qk_norm = true;
    DecoderModel model(random_decoder_weights(config, 3));
    std::vector<ParamRef> params = model.parameters();
    REQUIRE(params.size() == 1 + 2 * 11 + 1);
    CHECK(params.front().name == "embedding");
    CHECK(params.front().decay);
    CHECK(params[1].name == "layers.0.attn_norm");
    CHECK_FALSE(params[1].decay);
    CHECK(params[2].name == "layers.0.wq");
    CHECK(params[2].decay);
    CHECK(params.back().name == "final_norm");
    CHECK_FALSE(params.back().decay);
    for (const ParamRef& p : params) CHECK(p.value.shape() == p.grad.shape());
}

TEST_CASE("export round trip keeps every tensor") {
    DecoderConfig config = tiny_config();
    config.tied_embeddings = false;
    config.qk_norm = true;
    const DecoderWeights original = random_decoder_weights(config, 4);
    DecoderModel model(original);
    const DecoderWeights exported = model.export_weights();
    auto same = [](const Tensor<float>& a, const Tensor<float>& b) {
        if (!(a.shape() == b.shape())) return false;
        for (std::int64_t i = 0; i < a.numel(); ++i)
            if (a[i] != b[i]) return false;
        return true;
    };
    CHECK(same(exported.embedding, original.embedding));
    CHECK(same(exported.lm_head, original.lm_head));
    CHECK(same(exported.final_norm, original.final_norm));
    for (int l = 0; l < config.n_layers; ++l) {
        const LayerWeights& a = exported.layers[l];
        const LayerWeights& b = original.layers[l];
        CHECK(same(a.wq, b.wq));
        CHECK(same(a.wk, b.wk));
        CHECK(same(a.wv, b.wv));
        CHECK(same(a.wo, b.wo));
        CHECK(same(a.q_norm, b.q_norm));
        CHECK(same(a.k_norm, b.k_norm));
        CHECK(same(a.w_gate, b.w_gate));
        CHECK(same(a.w_up, b.w_up));
        CHECK(same(a.w_down, b.w_down));
        CHECK(same(a.attn_norm, b.attn_norm));
        CHECK(same(a.ffn_norm, b.ffn_norm));
        CHECK(a.attn_subln.data() == nullptr);
    }
}

TEST_CASE("constructor rejects a wrong weight shape") {
    DecoderWeights weights = random_decoder_weights(tiny_config(), 5);
    weights.layers[1].w_up = Tensor<float>(Shape{12, 9});
    try {
        DecoderModel model(weights);
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        CHECK(std::string(error.what()).find("layers.1.w_up") != std::string::npos);
    }
}

TEST_CASE("SubLN insertion adds unit gains and changes the output") {
    DecoderModel model(random_decoder_weights(tiny_config(), 6));
    const std::vector<std::int32_t> tokens{1, 2, 3, 4};
    Tape tape;
    Tensor<float> before(tape.value(model.forward(tape, tokens, 1, 4)).shape());
    {
        auto values = tape.value(Var{tape.size() - 1});
        std::copy(values.data(), values.data() + values.numel(), before.data());
    }
    const std::size_t count_before = model.parameters().size();
    model.insert_subln();
    CHECK(model.config().subln);
    std::vector<ParamRef> params = model.parameters();
    CHECK(params.size() == count_before + 2 * 2);
    int gains = 0;
    for (const ParamRef& p : params)
        if (p.name.find("subln") != std::string::npos) {
            ++gains;
            for (std::int64_t i = 0; i < p.value.numel(); ++i) CHECK(p.value[i] == 1.0f);
        }
    CHECK(gains == 4);
    tape.reset();
    auto after = tape.value(model.forward(tape, tokens, 1, 4));
    double difference = 0.0;
    for (std::int64_t i = 0; i < after.numel(); ++i) difference += std::abs(after[i] - before[i]);
    CHECK(difference > 1e-3);
    const DecoderWeights exported = model.export_weights();
    CHECK(exported.config.subln);
    CHECK(exported.layers[0].ffn_subln.numel() == 12);
}

TEST_CASE("all-norms insertion adds four gains per block") {
    DecoderModel model(random_decoder_weights(tiny_config(), 11));
    const std::size_t count_before = model.parameters().size();
    model.insert_subln(true);
    CHECK(model.config().subln);
    CHECK(model.config().all_norms);
    const std::vector<ParamRef> params = model.parameters();
    CHECK(params.size() == count_before + 4 * 2);
    const DecoderWeights exported = model.export_weights();
    CHECK(exported.layers[1].qkv_norm.numel() == 8);
    CHECK(exported.layers[1].gate_up_norm.numel() == 8);
    // The exported weights rebuild the same model.
    DecoderModel rebuilt(exported);
    const std::vector<std::int32_t> tokens{1, 2, 3, 4};
    Tape a;
    Tape b;
    auto la = a.value(model.forward(a, tokens, 1, 4));
    auto lb = b.value(rebuilt.forward(b, tokens, 1, 4));
    for (std::int64_t i = 0; i < la.numel(); ++i) CHECK(la[i] == lb[i]);
}

TEST_CASE("attention states have the documented shapes") {
    DecoderConfig config = tiny_config();
    config.qk_norm = true;
    DecoderModel model(random_decoder_weights(config, 7));
    const std::vector<std::int32_t> tokens{1, 2, 3, 4, 5, 6};
    Tape tape;
    Var logits = model.forward(tape, tokens, 2, 3);
    CHECK(tape.shape(logits) == Shape{6, 11});
    const AttentionStates& states = model.attention_states(1);
    CHECK(tape.shape(states.q) == Shape{6, 16});
    CHECK(tape.shape(states.k) == Shape{6, 8});
    CHECK(tape.shape(states.v) == Shape{6, 8});
    CHECK_THROWS_AS((void)model.attention_states(2), std::invalid_argument);
}

TEST_CASE("padding does not change the real tokens") {
    // The same sequence alone and right-padded in a batch gives the same logits on its
    // real tokens, because padded keys are masked and padded queries come later.
    DecoderModel model(random_decoder_weights(tiny_config(), 8, 0.3f));
    const std::vector<std::int32_t> alone{4, 8, 1};
    const std::vector<std::int32_t> padded{4, 8, 1, 0, 0};
    const std::vector<std::uint8_t> mask{1, 1, 1, 0, 0};
    Tape a;
    Tape b;
    auto la = a.value(model.forward(a, alone, 1, 3));
    auto lb = b.value(model.forward(b, padded, 1, 5, mask));
    for (std::int64_t r = 0; r < 3; ++r)
        for (std::int64_t j = 0; j < 11; ++j) CHECK(lb(r, j) == doctest::Approx(la(r, j)).epsilon(1e-5));
}

TEST_CASE("forward rejects a sequence beyond max_seq_len") {
    DecoderModel model(random_decoder_weights(tiny_config(), 9));
    const std::vector<std::int32_t> tokens(9, 1);
    Tape tape;
    CHECK_THROWS_AS(model.forward(tape, tokens, 1, 9), std::invalid_argument);
}
