// BitLinear tests. The integer-kernel forward equals the deployed product exactly and the
// float fake-quant forward up to float rounding. The backward is the straight-through
// estimator, and a model switched to ternary trains.
#include <doctest/doctest.h>

#include <bitdistill/autodiff/ops_basic.hpp>
#include <bitdistill/autodiff/ops_loss.hpp>
#include <bitdistill/autodiff/ops_quant.hpp>
#include <bitdistill/kernels/ternary_matmul.hpp>
#include <bitdistill/nn/bitlinear.hpp>
#include <bitdistill/nn/decoder_model.hpp>
#include <bitdistill/optim/adamw.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

#include "test_autodiff_support.hpp"

#include <cmath>
#include <cstring>
#include <cstdint>
#include <vector>

using namespace bitdistill;
using namespace bitdistill::autodiff;
using namespace bitdistill::nn;
using test_support::random_tensor;

namespace {

struct BitLinearRun {
    Tensor<float> y;
    Tensor<float> dx;
    Tensor<float> dw;
};

/// Runs BitLinear forward and backward with upstream gradient `dy`.
BitLinearRun run_bitlinear(const Tensor<float>& x, const Tensor<float>& w, const Tensor<float>& dy,
                           const BitLinearOptions& options) {
    BitLinearRun run{Tensor<float>(dy.shape()), Tensor<float>(x.shape()), Tensor<float>(w.shape())};
    Tensor<float> x_copy = x;
    Tensor<float> w_copy = w;
    Tape tape;
    Var xv = tape.parameter(x_copy.view(), run.dx.view());
    Var wv = tape.parameter(w_copy.view(), run.dw.view());
    BitLinear layer(options);
    Var y = layer.forward(tape, xv, wv);
    std::copy(tape.value(y).data(), tape.value(y).data() + run.y.numel(), run.y.data());
    tape.backward(y, dy.view());
    return run;
}

}  // namespace

TEST_CASE("integer forward equals the deployed product bit for bit") {
    const Tensor<float> x = random_tensor(Shape{9, 40}, 1, -3.0f, 3.0f);
    const Tensor<float> w = random_tensor(Shape{13, 40}, 2, -0.1f, 0.1f);
    const Tensor<float> dy = random_tensor(Shape{9, 13}, 3);
    for (Granularity g : {Granularity::per_tensor, Granularity::per_row}) {
        BitLinearOptions options;
        options.weight_granularity = g;
        const BitLinearRun run = run_bitlinear(x, w, dy, options);

        Tensor<float> deployed(Shape{9, 13});
        const auto x_codes = quantize_int8<Int8<8, Granularity::per_token>>(x.view());
        if (g == Granularity::per_row)
            matmul_into(quantize_ternary<Ternary<2, Granularity::per_row>>(w.view()), x_codes, deployed.view());
        else
            matmul_into(quantize_ternary<Ternary<2, Granularity::per_tensor>>(w.view()), x_codes, deployed.view());
        for (std::int64_t i = 0; i < deployed.numel(); ++i) CHECK(run.y[i] == deployed[i]);
    }
}

TEST_CASE("saved dequantized operands equal dequantize bit for bit") {
    const Tensor<float> x = random_tensor(Shape{6, 33}, 18, -3.0f, 3.0f);
    const Tensor<float> w = random_tensor(Shape{10, 33}, 19, -0.1f, 0.1f);
    for (Granularity g : {Granularity::per_tensor, Granularity::per_row}) {
        BitLinearOptions options;
        options.weight_granularity = g;
        Tensor<float> x_copy = x;
        Tensor<float> w_copy = w;
        Tensor<float> dx(x.shape());
        Tensor<float> dw(w.shape());
        Tape tape;
        BitLinear layer(options);
        Var y = layer.forward(tape, tape.parameter(x_copy.view(), dx.view()), tape.parameter(w_copy.view(), dw.view()));
        const Node& node = tape.node(y);
        const Tensor<float> x_deq = dequantize(quantize_int8<Int8<8, Granularity::per_token>>(x.view()));
        const Tensor<float> w_deq = g == Granularity::per_row
                                        ? dequantize(quantize_ternary<Ternary<2, Granularity::per_row>>(w.view()))
                                        : dequantize(quantize_ternary<Ternary<2, Granularity::per_tensor>>(w.view()));
        CHECK(std::memcmp(node.saved[0].data(), x_deq.data(), sizeof(float) * x_deq.numel()) == 0);
        CHECK(std::memcmp(node.saved[1].data(), w_deq.data(), sizeof(float) * w_deq.numel()) == 0);
    }
}

TEST_CASE("constant input and disabled gradients") {
    // A constant input needs only X_deq (for dW), a disabled tape neither; the outputs and
    // the weight gradient must not change.
    const Tensor<float> x = random_tensor(Shape{7, 20}, 15, -2.0f, 2.0f);
    const Tensor<float> w = random_tensor(Shape{9, 20}, 16, -0.2f, 0.2f);
    const Tensor<float> dy = random_tensor(Shape{7, 9}, 17);
    const BitLinearRun full = run_bitlinear(x, w, dy, BitLinearOptions{});

    Tensor<float> w_copy = w;
    Tensor<float> dw(w.shape());
    Tape tape;
    BitLinear layer;
    Var y = layer.forward(tape, tape.constant(x.view()), tape.parameter(w_copy.view(), dw.view()));
    tape.backward(y, dy.view());
    for (std::int64_t i = 0; i < dw.numel(); ++i) CHECK(dw[i] == full.dw[i]);

    Tape eval;
    eval.set_grad_enabled(false);
    Var z = layer.forward(eval, eval.constant(x.view()), eval.constant(w.view()));
    for (std::int64_t i = 0; i < full.y.numel(); ++i) CHECK(eval.value(z)[i] == full.y[i]);
}

TEST_CASE("integer and fake-quant forwards agree to float rounding") {
    const Tensor<float> x = random_tensor(Shape{17, 64}, 4, -2.0f, 2.0f);
    const Tensor<float> w = random_tensor(Shape{24, 64}, 5, -0.05f, 0.05f);
    const Tensor<float> dy = random_tensor(Shape{17, 24}, 6);
    BitLinearOptions integer;
    BitLinearOptions fake;
    fake.integer_kernel = false;
    const BitLinearRun a = run_bitlinear(x, w, dy, integer);
    const BitLinearRun b = run_bitlinear(x, w, dy, fake);
    double max_error = 0.0;
    double max_value = 0.0;
    for (std::int64_t i = 0; i < a.y.numel(); ++i) {
        max_error = std::max(max_error, static_cast<double>(std::abs(a.y[i] - b.y[i])));
        max_value = std::max(max_value, static_cast<double>(std::abs(b.y[i])));
    }
    // 64 products each rounded once in float: a few units of the last place of the largest output.
    CHECK(max_error <= 64 * 6e-8 * max_value);
    // The backward reads only the dequantized tensors, which are equal in both modes.
    for (std::int64_t i = 0; i < a.dx.numel(); ++i) CHECK(a.dx[i] == b.dx[i]);
    for (std::int64_t i = 0; i < a.dw.numel(); ++i) CHECK(a.dw[i] == b.dw[i]);
}

TEST_CASE("backward is the straight-through estimator") {
    const Tensor<float> x = random_tensor(Shape{5, 12}, 7, -2.0f, 2.0f);
    const Tensor<float> w = random_tensor(Shape{7, 12}, 8, -0.2f, 0.2f);
    const Tensor<float> dy = random_tensor(Shape{5, 7}, 9);
    const BitLinearRun run = run_bitlinear(x, w, dy, BitLinearOptions{});
    const Tensor<float> x_deq = fake_quantize_int8(x.view());
    const Tensor<float> w_deq = fake_quantize_ternary<Ternary<2, Granularity::per_tensor>>(w.view());
    // dx = dy W_deq and dW = dy^T X_deq.
    for (std::int64_t t = 0; t < 5; ++t)
        for (std::int64_t k = 0; k < 12; ++k) {
            double expected = 0.0;
            for (std::int64_t o = 0; o < 7; ++o) expected += static_cast<double>(dy(t, o)) * w_deq(o, k);
            CHECK(run.dx(t, k) == doctest::Approx(expected).epsilon(1e-5));
        }
    for (std::int64_t o = 0; o < 7; ++o)
        for (std::int64_t k = 0; k < 12; ++k) {
            double expected = 0.0;
            for (std::int64_t t = 0; t < 5; ++t) expected += static_cast<double>(dy(t, o)) * x_deq(t, k);
            CHECK(run.dw(o, k) == doctest::Approx(expected).epsilon(1e-5));
        }
}

TEST_CASE("fused op equals the composed straight-through quantizers") {
    // linear(ste_int8(x), ste_ternary(w)) is the PyTorch formulation of BitLinear.
    const Tensor<float> x = random_tensor(Shape{6, 16}, 10, -2.0f, 2.0f);
    const Tensor<float> w = random_tensor(Shape{8, 16}, 11, -0.2f, 0.2f);
    const Tensor<float> dy = random_tensor(Shape{6, 8}, 12);
    BitLinearOptions fake;
    fake.integer_kernel = false;
    fake.weight_granularity = Granularity::per_row;
    const BitLinearRun fused = run_bitlinear(x, w, dy, fake);

    Tensor<float> x_copy = x;
    Tensor<float> w_copy = w;
    Tensor<float> dx(x.shape());
    Tensor<float> dw(w.shape());
    Tape tape;
    Var xq = fake_quantize_int8_ste(tape, tape.parameter(x_copy.view(), dx.view()));
    Var wq = fake_quantize_ternary_ste(tape, tape.parameter(w_copy.view(), dw.view()), Granularity::per_row);
    Var y = linear(tape, xq, wq);
    tape.backward(y, dy.view());
    for (std::int64_t i = 0; i < fused.y.numel(); ++i) CHECK(fused.y[i] == tape.value(y)[i]);
    for (std::int64_t i = 0; i < dx.numel(); ++i) CHECK(fused.dx[i] == dx[i]);
    for (std::int64_t i = 0; i < dw.numel(); ++i) CHECK(fused.dw[i] == dw[i]);
}

TEST_CASE("straight-through quantizers pass the gradient unchanged") {
    Tensor<float> x = random_tensor(Shape{3, 5}, 13);
    Tensor<float> dx(x.shape());
    const Tensor<float> dy = random_tensor(Shape{3, 5}, 14);
    Tape tape;
    Var q = fake_quantize_ternary_ste(tape, fake_quantize_int8_ste(tape, tape.parameter(x.view(), dx.view())));
    tape.backward(q, dy.view());
    for (std::int64_t i = 0; i < dx.numel(); ++i) CHECK(dx[i] == dy[i]);
    // The forward value is ternary times one scale.
    const float scale = std::abs(tape.value(q)[0]) > 0 ? std::abs(tape.value(q)[0]) : 1.0f;
    for (std::int64_t i = 0; i < dx.numel(); ++i) {
        const float v = std::abs(tape.value(q)[i]);
        CHECK((v == 0.0f || v == doctest::Approx(scale)));
    }
}

TEST_CASE("switched model trains in ternary mode") {
    // BitNet-SFT: a float model switched to BitLinear keeps its latent weights and learns.
    DecoderConfig config;
    config.vocab_size = 16;
    config.dim = 32;
    config.hidden_dim = 48;
    config.n_layers = 1;
    config.n_heads = 2;
    config.n_kv_heads = 1;
    config.max_seq_len = 8;
    DecoderModel model(random_decoder_weights(config, 21, 0.1f));
    const DecoderWeights before = model.export_weights();
    model.set_projection_mode(ProjectionMode::ternary);
    CHECK(model.projection_mode() == ProjectionMode::ternary);
    const DecoderWeights after = model.export_weights();
    for (std::int64_t i = 0; i < before.layers[0].wq.numel(); ++i) CHECK(before.layers[0].wq[i] == after.layers[0].wq[i]);

    // Learn to copy the input token: target t at position t.
    std::vector<std::int32_t> tokens(16);
    for (int i = 0; i < 16; ++i) tokens[i] = (i * 7) % 16;
    const std::vector<std::int32_t>& targets = tokens;
    AdamWConfig adam;
    adam.weight_decay = 0.0;
    AdamW optimizer(model.parameters(), adam);
    Tape tape;
    float first = 0.0f;
    float last = 0.0f;
    const int steps = test_support::small_scale() ? 30 : 60;
    for (int step = 0; step < steps; ++step) {
        tape.reset();
        Var loss = cross_entropy(tape, model.forward(tape, tokens, 2, 8), targets);
        model.zero_grad();
        tape.backward(loss);
        optimizer.step(1e-2f);
        if (step == 0) first = tape.value(loss)[0];
        last = tape.value(loss)[0];
    }
    INFO("first loss " << first << ", last loss " << last);
    CHECK(last < 0.5f * first);
}
