// Forward values and gradients of RMSNorm/SubLN, attention and one decoder block against
// reference values that PyTorch computed in float64 (tests/fixtures/make_nn_fixtures.py).
//
// Tolerance: |ours - reference| <= atol + rtol * |reference| with rtol 1e-4 and atol 1e-5
// (2e-4 and 1e-4 for the block, whose gradients pass through about 20 float ops). Our
// side runs in float, so about 1e-6 relative error per op is expected, and the tolerances
// leave room for that. A wrong formula errs by far more, so they still catch it.
#include <doctest/doctest.h>

#include <bitdistill/autodiff/ops_attention.hpp>
#include <bitdistill/autodiff/ops_norm.hpp>
#include <bitdistill/nn/decoder_block.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace bitdistill;
using namespace bitdistill::autodiff;
using namespace bitdistill::nn;

namespace {

using Fixture = std::map<std::string, Tensor<float>>;

/// Reads tests/fixtures/nn/<name> in the format that make_nn_fixtures.py writes.
Fixture read_fixture(const std::string& name) {
    const std::string path = std::string(BITDISTILL_SOURCE_DIR) + "/tests/fixtures/nn/" + name;
    std::ifstream in(path);
    REQUIRE_MESSAGE(in.good(), "cannot open fixture " << path);
    Fixture fixture;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream header(line);
        std::string keyword;
        std::string tensor_name;
        header >> keyword >> tensor_name;
        REQUIRE_MESSAGE(keyword == "tensor", "malformed fixture line in " << path << ": " << line);
        std::vector<std::int64_t> extents;
        for (std::int64_t extent = 0; header >> extent;) extents.push_back(extent);
        Shape shape = extents.size() == 1 ? Shape{extents[0]} : Shape{extents[0], extents[1]};
        Tensor<float> tensor(shape);
        REQUIRE(static_cast<bool>(std::getline(in, line)));
        std::istringstream values(line);
        for (float& value : tensor) REQUIRE(static_cast<bool>(values >> value));
        fixture.emplace(tensor_name, std::move(tensor));
    }
    return fixture;
}

const Tensor<float>& get(const Fixture& fixture, const std::string& name) {
    auto found = fixture.find(name);
    REQUIRE_MESSAGE(found != fixture.end(), "fixture tensor " << name << " is missing");
    return found->second;
}

/// Checks every element of `ours` against `reference` with |d| <= atol + rtol |reference|.
void check_close(TensorView<const float> ours, const Tensor<float>& reference, const std::string& what,
                 double rtol, double atol) {
    REQUIRE_MESSAGE(ours.numel() == reference.numel(), what << ": " << ours.numel() << " values, reference has "
                                                            << reference.numel());
    std::int64_t worst = 0;
    double worst_ratio = 0.0;
    for (std::int64_t i = 0; i < ours.numel(); ++i) {
        const double difference = std::abs(static_cast<double>(ours[i]) - reference[i]);
        const double ratio = difference / (atol + rtol * std::abs(static_cast<double>(reference[i])));
        if (!(ratio <= worst_ratio)) {
            worst_ratio = ratio;
            worst = i;
        }
    }
    INFO(what << ": worst element " << worst << " is " << ours[worst] << ", reference " << reference[worst]);
    CHECK(worst_ratio <= 1.0);
}

std::vector<std::uint8_t> mask_bytes(const Tensor<float>& mask) {
    std::vector<std::uint8_t> bytes;
    for (float value : mask) bytes.push_back(value != 0.0f ? 1 : 0);
    return bytes;
}

}  // namespace

TEST_CASE("rmsnorm and SubLN match PyTorch") {
    Fixture f = read_fixture("rmsnorm.txt");
    Tensor<float> x = get(f, "x");
    Tensor<float> gain = get(f, "gain");
    Tensor<float> unit_gain(Shape{16}, 1.0f);
    Tensor<float> grad_x(x.shape());
    Tensor<float> grad_gain(gain.shape());
    Tensor<float> grad_unit_gain(unit_gain.shape());

    Tape tape;
    Var xv = tape.parameter(x.view(), grad_x.view());
    Var norm = rmsnorm(tape, xv, tape.parameter(gain.view(), grad_gain.view()), 1e-5f);
    Var subln = rmsnorm(tape, xv, tape.parameter(unit_gain.view(), grad_unit_gain.view()), 1e-8f);
    check_close(tape.value(norm), get(f, "norm_out"), "rmsnorm output", 1e-5, 1e-6);
    check_close(tape.value(subln), get(f, "subln_out"), "SubLN output", 1e-5, 1e-6);

    tape.backward(norm, get(f, "norm_probe").view());
    tape.backward(subln, get(f, "subln_probe").view());
    check_close(grad_x.view(), get(f, "grad_x"), "rmsnorm input gradient", 1e-4, 1e-5);
    check_close(grad_gain.view(), get(f, "grad_gain"), "rmsnorm gain gradient", 1e-4, 1e-5);
    check_close(grad_unit_gain.view(), get(f, "grad_subln_gain"), "SubLN gain gradient", 1e-4, 1e-5);
}

TEST_CASE("attention matches PyTorch") {
    Fixture f = read_fixture("attention.txt");
    Tensor<float> q = get(f, "q");
    Tensor<float> k = get(f, "k");
    Tensor<float> v = get(f, "v");
    Tensor<float> grad_q(q.shape());
    Tensor<float> grad_k(k.shape());
    Tensor<float> grad_v(v.shape());
    const std::vector<std::uint8_t> mask = mask_bytes(get(f, "mask"));

    Tape tape;
    Var out = attention(tape, tape.parameter(q.view(), grad_q.view()), tape.parameter(k.view(), grad_k.view()),
                        tape.parameter(v.view(), grad_v.view()), AttentionShape{2, 6, 4, 2, 8}, mask);
    check_close(tape.value(out), get(f, "out"), "attention output", 1e-4, 1e-5);
    tape.backward(out, get(f, "probe").view());
    check_close(grad_q.view(), get(f, "grad_q"), "attention q gradient", 1e-4, 1e-5);
    check_close(grad_k.view(), get(f, "grad_k"), "attention k gradient", 1e-4, 1e-5);
    check_close(grad_v.view(), get(f, "grad_v"), "attention v gradient", 1e-4, 1e-5);
}

TEST_CASE("decoder block matches PyTorch") {
    Fixture f = read_fixture("block.txt");
    DecoderConfig config;
    config.vocab_size = 1;
    config.dim = 16;
    config.hidden_dim = 24;
    config.n_layers = 1;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.max_seq_len = 5;
    config.qk_norm = true;
    config.subln = true;

    LayerWeights weights;
    weights.attn_norm = get(f, "attn_norm");
    weights.wq = get(f, "wq");
    weights.wk = get(f, "wk");
    weights.wv = get(f, "wv");
    weights.q_norm = get(f, "q_norm");
    weights.k_norm = get(f, "k_norm");
    weights.attn_subln = get(f, "attn_subln");
    weights.wo = get(f, "wo");
    weights.ffn_norm = get(f, "ffn_norm");
    weights.w_gate = get(f, "w_gate");
    weights.w_up = get(f, "w_up");
    weights.ffn_subln = get(f, "ffn_subln");
    weights.w_down = get(f, "w_down");
    DecoderBlock block(config, weights, "");

    Tensor<float> x = get(f, "x");
    Tensor<float> grad_x(x.shape());
    const std::vector<std::uint8_t> mask = mask_bytes(get(f, "mask"));
    Tape tape;
    Var out = block.forward(tape, tape.parameter(x.view(), grad_x.view()), BatchLayout{2, 5, mask});
    check_close(tape.value(out), get(f, "out"), "block output", 2e-4, 1e-4);
    block.zero_grad();
    tape.backward(out, get(f, "probe").view());
    check_close(grad_x.view(), get(f, "grad_x"), "block input gradient", 2e-4, 1e-4);
    for (const ParamRef& p : block.parameters())
        check_close(p.grad, get(f, "grad_" + p.name), "gradient of " + p.name, 2e-4, 1e-4);
}
