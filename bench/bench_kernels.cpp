// Ternary x int8 and float matrix products at the layer shapes of 0.6B-4B decoders.
//
// Case names: <op>/<encoding>/<rows>x<cols>[x<tokens>]/threads:<n>, where W is [rows x cols]
// (out x in) and op is gemv (1 token) or gemm (several). gemv_scalar / gemv_avx2 /
// gemm_avx2 force a lower instruction-set path; gemv_ref is the element-wise reference twin.
// Counters: GOPS = 2 * rows * cols * tokens / time / 1e9 (a multiply-add counts as two
// operations); bytes/s = packed weight bytes (with scales) streamed per second.
// Weights and activations are quantized before the timed loop.
// The Time column is wall time. The rate counters divide by the CPU time of the benchmark
// thread, which equals wall time on an idle machine. No case calls UseRealTime(), because
// it appends "/real_time" to the case names.
#include <benchmark/benchmark.h>

#include <bitdistill/core/isa.hpp>
#include <bitdistill/core/parallel.hpp>
#include <bitdistill/kernels/float_matmul.hpp>
#include <bitdistill/kernels/reference.hpp>
#include <bitdistill/kernels/ternary_matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

#include <cstdint>
#include <fstream>
#include <optional>
#include <random>
#include <string>

using namespace bitdistill;

namespace {

using Ternary2 = Ternary<2, Granularity::per_tensor>;
using Ternary16 = Ternary1_6<Granularity::per_tensor>;
using Int8Token = Int8<8, Granularity::per_token>;

Tensor<float> random_tensor(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Tensor<float> tensor(Shape{rows, cols});
    for (float& value : tensor) value = normal(rng);
    return tensor;
}

void set_counters(benchmark::State& state, std::int64_t rows, std::int64_t cols,
                  std::int64_t tokens, std::size_t weight_bytes) {
    const double operations = 2.0 * static_cast<double>(rows * cols * tokens);
    state.counters["GOPS"] =
        benchmark::Counter(operations / 1e9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(weight_bytes),
                                                   benchmark::Counter::kIsIterationInvariantRate,
                                                   benchmark::Counter::OneK::kIs1024);
}

/// Restores the detected instruction set when a case that forced a lower one ends.
struct IsaScope {
    explicit IsaScope(std::optional<Isa> isa) {
        if (isa) force_isa(*isa);
    }
    ~IsaScope() { force_isa(detected_isa()); }
};

template <class WeightEnc>
void ternary_case(benchmark::State& state, std::int64_t rows, std::int64_t cols,
                  std::int64_t tokens, int threads, std::optional<Isa> isa) {
    if (isa && !isa_supported(*isa)) {
        state.SkipWithError("instruction set not supported by this CPU");
        return;
    }
    IsaScope scope(isa);
    set_num_threads(threads);
    const auto w = quantize_ternary<WeightEnc>(random_tensor(rows, cols, 1).view());
    const auto x = quantize_int8<Int8Token>(random_tensor(tokens, cols, 2).view());
    Tensor<float> y(Shape{tokens, rows});
    for (auto _ : state) {
        matmul_into(w, x, y.view());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, rows, cols, tokens, w.storage_bytes());
    set_num_threads(1);
}

void reference_case(benchmark::State& state, std::int64_t rows, std::int64_t cols) {
    const auto w = quantize_ternary<Ternary2>(random_tensor(rows, cols, 1).view());
    const auto x = quantize_int8<Int8Token>(random_tensor(1, cols, 2).view());
    Tensor<float> y(Shape{1, rows});
    for (auto _ : state) {
        matmul_into_ref(w, x, y.view());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, rows, cols, 1, w.storage_bytes());
}

void float_case(benchmark::State& state, std::int64_t rows, std::int64_t cols, std::int64_t tokens,
                int threads) {
    set_num_threads(threads);
    const auto w = random_tensor(rows, cols, 1);
    const auto x = random_tensor(tokens, cols, 2);
    Tensor<float> y(Shape{tokens, rows});
    for (auto _ : state) {
        matmul_into(w.view(), x.view(), y.view());
        benchmark::DoNotOptimize(y.data());
        benchmark::ClobberMemory();
    }
    set_counters(state, rows, cols, tokens, static_cast<std::size_t>(rows * cols) * sizeof(float));
    set_num_threads(1);
}

void quantize_case(benchmark::State& state, std::int64_t tokens, std::int64_t cols) {
    const auto x = random_tensor(tokens, cols, 3);
    QTensor<Int8Token> xq;
    quantize_int8_into(x.view(), xq);
    for (auto _ : state) {
        quantize_int8_into(x.view(), xq);
        benchmark::DoNotOptimize(xq.codes().data());
        benchmark::ClobberMemory();
    }
    state.counters["bytes/s"] =
        benchmark::Counter(static_cast<double>(tokens * cols) * sizeof(float),
                           benchmark::Counter::kIsIterationInvariantRate,
                           benchmark::Counter::OneK::kIs1024);
}

std::string case_name(const std::string& op, const std::string& encoding, std::int64_t rows,
                      std::int64_t cols, std::int64_t tokens, int threads) {
    std::string name = op;
    name.append("/").append(encoding).append("/");
    name.append(std::to_string(rows)).append("x").append(std::to_string(cols));
    if (tokens > 1) name.append("x").append(std::to_string(tokens));
    name.append("/threads:").append(std::to_string(threads));
    return name;
}

void register_cases() {
    struct Size {
        std::int64_t rows, cols;
    };
    const Size gemv_sizes[] = {{1024, 3072}, {2048, 2048}, {4096, 4096}, {2560, 6912}};
    for (const Size& size : gemv_sizes)
        for (int threads : {1, 2}) {
            benchmark::RegisterBenchmark(
                case_name("gemv", "ternary2", size.rows, size.cols, 1, threads).c_str(),
                [=](benchmark::State& state) {
                    ternary_case<Ternary2>(state, size.rows, size.cols, 1, threads, std::nullopt);
                })->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark(
                case_name("gemv", "ternary1_6", size.rows, size.cols, 1, threads).c_str(),
                [=](benchmark::State& state) {
                    ternary_case<Ternary16>(state, size.rows, size.cols, 1, threads, std::nullopt);
                })->Unit(benchmark::kMicrosecond);
            benchmark::RegisterBenchmark(
                case_name("gemv", "f32", size.rows, size.cols, 1, threads).c_str(),
                [=](benchmark::State& state) {
                    float_case(state, size.rows, size.cols, 1, threads);
                })
                ->Unit(benchmark::kMicrosecond);
        }

    constexpr std::int64_t prefill_tokens = 128;
    for (int threads : {1, 2}) {
        benchmark::RegisterBenchmark(
            case_name("gemm", "ternary2", 4096, 4096, prefill_tokens, threads).c_str(),
            [=](benchmark::State& state) {
                ternary_case<Ternary2>(state, 4096, 4096, prefill_tokens, threads, std::nullopt);
            })->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(
            case_name("gemm", "ternary1_6", 4096, 4096, prefill_tokens, threads).c_str(),
            [=](benchmark::State& state) {
                ternary_case<Ternary16>(state, 4096, 4096, prefill_tokens, threads, std::nullopt);
            })->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(
            case_name("gemm", "f32", 4096, 4096, prefill_tokens, threads).c_str(),
            [=](benchmark::State& state) {
                float_case(state, 4096, 4096, prefill_tokens, threads);
            })
            ->Unit(benchmark::kMillisecond);
    }

    // Lower paths and the reference twin at one shape, for the ratios.
    benchmark::RegisterBenchmark(case_name("gemv_avx2", "ternary2", 4096, 4096, 1, 1).c_str(),
                                 [](benchmark::State& state) {
                                     ternary_case<Ternary2>(state, 4096, 4096, 1, 1, Isa::avx2);
                                 })->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(case_name("gemv_avx2", "ternary1_6", 4096, 4096, 1, 1).c_str(),
                                 [](benchmark::State& state) {
                                     ternary_case<Ternary16>(state, 4096, 4096, 1, 1, Isa::avx2);
                                 })->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(
        case_name("gemm_avx2", "ternary2", 4096, 4096, prefill_tokens, 1).c_str(),
        [=](benchmark::State& state) {
            ternary_case<Ternary2>(state, 4096, 4096, prefill_tokens, 1, Isa::avx2);
        })->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(case_name("gemv_scalar", "ternary2", 4096, 4096, 1, 1).c_str(),
                                 [](benchmark::State& state) {
                                     ternary_case<Ternary2>(state, 4096, 4096, 1, 1, Isa::scalar);
                                 })->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(case_name("gemv_ref", "ternary2", 4096, 4096, 1, 1).c_str(),
                                 [](benchmark::State& state) { reference_case(state, 4096, 4096); })
        ->Unit(benchmark::kMicrosecond);

    benchmark::RegisterBenchmark("quantize_int8/f32/1x4096/threads:1",
                                 [](benchmark::State& state) { quantize_case(state, 1, 4096); })
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("quantize_int8/f32/128x4096/threads:1",
                                 [](benchmark::State& state) { quantize_case(state, 128, 4096); })
        ->Unit(benchmark::kMicrosecond);
}

std::string cpu_model() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    return "unknown";
}

}  // namespace

int main(int argc, char** argv) {
    benchmark::AddCustomContext("bitdistill_isa", std::string(isa_name(active_isa())));
    benchmark::AddCustomContext("bitdistill_detected_isa", std::string(isa_name(detected_isa())));
    benchmark::AddCustomContext("cpu_model", cpu_model());
    register_cases();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
