// One training step of a decoder block: forward, backward and AdamW.
//
// Block: width 256, 4 query heads and 2 key/value heads of 64, SwiGLU FFN of 688, causal
// attention, pre-RMSNorm, RoPE, no SubLN and no q/k norm. Input: 8 sequences of 128 tokens
// as a fixed random [1024 x 256] tensor without gradient. Loss: mean of the squared block
// output. The same step in PyTorch is bench/pytorch_train_step.py.
//
// Variants: f32 (float projections) and ternary (BitLinear on the integer kernel), at 1 and
// 2 threads. Counters: tokens/s and the step's float multiply-adds per second (GFLOP/s,
// counting the float products of forward and backward, with the ternary forward
// products excluded).
#include <benchmark/benchmark.h>

#include <bitdistill/autodiff/ops_basic.hpp>
#include <bitdistill/core/isa.hpp>
#include <bitdistill/nn/decoder_block.hpp>
#include <bitdistill/nn/decoder_model.hpp>
#include <bitdistill/optim/adamw.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

using namespace bitdistill;
using namespace bitdistill::autodiff;
using namespace bitdistill::nn;

namespace {

constexpr std::int64_t batch = 8;
constexpr std::int64_t seq_len = 128;

DecoderConfig block_config() {
    DecoderConfig c;
    c.vocab_size = 2;  // unused: the benchmark runs one block
    c.dim = 256;
    c.hidden_dim = 688;
    c.n_layers = 1;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.max_seq_len = 128;
    return c;
}

/// Float multiply-adds of one step (x2 for FLOPs). Projections: forward 1, backward 2
/// (input and weight gradients); attention: QK^T and PV forward, four products backward.
double step_flops(bool ternary) {
    const DecoderConfig c = block_config();
    const double tokens = batch * seq_len;
    const double projection_macs =
        tokens * c.dim * (c.q_width() + 2.0 * c.kv_width() + c.q_width() + 3.0 * c.hidden_dim);
    const double attention_macs = batch * c.n_heads * 2.0 * seq_len * seq_len * c.resolved_head_dim();
    const double forward = (ternary ? 0.0 : projection_macs) + attention_macs;
    const double backward = 2.0 * projection_macs + 2.0 * attention_macs;
    return 2.0 * (forward + backward);
}

void train_step(benchmark::State& state, ProjectionMode mode) {
    const int threads = static_cast<int>(state.range(0));
    set_num_threads(threads);
    const DecoderConfig config = block_config();
    DecoderWeights weights = random_decoder_weights(config, 42);
    DecoderBlock block(config, weights.layers[0], "layers.0.");
    block.set_projection_mode(mode);
    AdamW optimizer(block.parameters());

    Tensor<float> x(Shape{batch * seq_len, config.dim});
    std::mt19937 generator(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& value : x) value = normal(generator);

    Tape tape;
    const BatchLayout layout{batch, seq_len, {}};
    auto step = [&] {
        tape.reset();
        Var out = block.forward(tape, tape.constant(x.view()), layout);
        Var loss = mean_square(tape, out);
        block.zero_grad();
        tape.backward(loss);
        optimizer.step(1e-4f);
        return tape.value(loss)[0];
    };
    step();  // first step: allocates the tape buffers
    for (auto _ : state) benchmark::DoNotOptimize(step());

    state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(batch * seq_len),
                                                    benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOP/s"] = benchmark::Counter(step_flops(mode == ProjectionMode::ternary) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
    set_num_threads(1);
}

}  // namespace

BENCHMARK_CAPTURE(train_step, f32, ProjectionMode::full_precision)
    ->Name("train_step/f32/block256")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(train_step, ternary, ProjectionMode::ternary)
    ->Name("train_step/ternary/block256")
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

int main(int argc, char** argv) {
    std::printf("isa: %s\n", std::string(isa_name(active_isa())).c_str());
    std::printf("eigen: %d.%d.%d, simd: %s\n", EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION,
                EIGEN_MINOR_VERSION, Eigen::SimdInstructionSetsInUse());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
