// Model-level speed and memory at the Qwen3-0.6B shape with random weights: decode
// (one token at a time, positions 0..127 from an empty cache, then again) and prefill
// (one 128-token prompt), for fp32, bf16, 2-bit ternary and 1.6-bit ternary models, on 1
// and 2 threads, plus a plain memory-read baseline.
//
// Shape: vocab 151936, hidden 1024, 28 layers, 16 query heads and 8 key/value heads of
// dim 128 (q width 2048), FFN 3072, tied embeddings, q/k-norm, RoPE theta 1e6.
//
// Counters: tokens_per_second; weight_bytes_per_second (decode only: the bytes of the
// projections and the LM head that one decoded token streams, times tokens_per_second);
// projection_bytes, embedding_bytes (the tied table, which is also the LM head),
// other_bytes (norm gains) and projections_vs_fp16 (projection bytes over 2 bytes a weight).
// Only one model exists at a time: the cases of a format run back to back and the model is
// freed before the next format is built (the fp32 model takes 2.4 GB). The last case,
// decode_interleaved, keeps the fp32, bf16 and 2-bit models together and alternates their
// tokens, so that its speed ratios hold even while other jobs load the machine.
// The Time column is wall time; tokens_per_second divides by the CPU time of the benchmark
// thread (equal to wall time on an idle machine). No case calls UseRealTime(), because it
// appends "/real_time" to the case names; MinTime() and Iterations() would append their
// own suffixes, so the required cases run with the command-line --benchmark_min_time.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/session.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

using namespace bitdistill;

namespace {

constexpr std::int64_t prompt_tokens = 128;
constexpr std::int64_t decode_positions = 128;

DecoderConfig qwen3_0_6b() {
    DecoderConfig config;
    config.vocab_size = 151936;
    config.dim = 1024;
    config.hidden_dim = 3072;
    config.n_layers = 28;
    config.n_heads = 16;
    config.n_kv_heads = 8;
    config.head_dim = 128;
    config.max_seq_len = 4096;
    config.norm_eps = 1e-6f;
    config.rope_theta = 1e6f;
    config.qk_norm = true;
    config.tied_embeddings = true;
    return config;
}

/// Uniform random values in [-bound, bound] from xorshift64*, fast enough to fill 600M
/// weights in about a second. bound = sqrt(3 / in) gives variance 1 / in.
Tensor<float> random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
    Tensor<float> matrix(Shape{rows, cols});
    const float bound = std::sqrt(3.0f / static_cast<float>(cols));
    std::uint64_t state = seed * 0x9e3779b97f4a7c15ull + 1;
    for (float& value : matrix) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        const auto bits = static_cast<std::uint32_t>((state * 0x2545f4914f6cdd1dull) >> 40);  // 24 bits
        value = bound * (static_cast<float>(bits) * (2.0f / 16777216.0f) - 1.0f);
    }
    return matrix;
}

Tensor<float> ones(std::int64_t width) { return Tensor<float>(Shape{width}, 1.0f); }

/// Builds the model layer by layer, so that only one layer's float weights exist at a time.
std::unique_ptr<InferenceModel> build_model(InferenceFormat format) {
    const DecoderConfig config = qwen3_0_6b();
    auto model = std::make_unique<InferenceModel>();
    model->config = config;
    model->format = format;
    model->embedding = PackedLinear::encode(random_matrix(config.vocab_size, config.dim, 1).view(), format.embeddings);
    model->final_norm = ones(config.dim);
    const std::int64_t dim = config.dim, hidden = config.hidden_dim;
    const std::int64_t q_width = config.q_width(), kv_width = config.kv_width();
    for (int index = 0; index < config.n_layers; ++index) {
        InferenceLayer layer;
        const std::uint64_t seed = 100 + 10 * static_cast<std::uint64_t>(index);
        const ProjectionEncoding encoding = format.projections;
        layer.attn_norm = ones(dim);
        layer.ffn_norm = ones(dim);
        layer.q_norm = ones(config.head_dim);
        layer.k_norm = ones(config.head_dim);
        layer.wq = PackedLinear::encode(random_matrix(q_width, dim, seed + 1).view(), encoding);
        layer.wk = PackedLinear::encode(random_matrix(kv_width, dim, seed + 2).view(), encoding);
        layer.wv = PackedLinear::encode(random_matrix(kv_width, dim, seed + 3).view(), encoding);
        layer.wo = PackedLinear::encode(random_matrix(dim, q_width, seed + 4).view(), encoding);
        layer.w_gate = PackedLinear::encode(random_matrix(hidden, dim, seed + 5).view(), encoding);
        layer.w_up = PackedLinear::encode(random_matrix(hidden, dim, seed + 6).view(), encoding);
        layer.w_down = PackedLinear::encode(random_matrix(dim, hidden, seed + 7).view(), encoding);
        model->layers.push_back(std::move(layer));
    }
    model->validate();
    return model;
}

/// The one model alive at a time, rebuilt when a case needs another format.
struct ModelCache {
    std::string name;
    std::unique_ptr<InferenceModel> model;

    const InferenceModel& get(const std::string& requested, InferenceFormat format) {
        if (name != requested) {
            model.reset();  // free the previous model before building the next
            model = build_model(format);
            name = requested;
        }
        return *model;
    }
};

ModelCache& cache() {
    static ModelCache instance;
    return instance;
}

std::vector<int> fixed_tokens(std::int64_t count, int vocab) {
    std::vector<int> tokens(static_cast<std::size_t>(count));
    std::uint64_t state = 12345;
    for (int& token : tokens) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        token = static_cast<int>((state >> 33) % static_cast<std::uint64_t>(vocab));
    }
    return tokens;
}

void add_memory_counters(benchmark::State& state, const InferenceModel& model) {
    const WeightMemory memory = model.memory();
    const DecoderConfig& config = model.config;
    const double projection_weights =
        static_cast<double>(config.n_layers) *
        static_cast<double>(2 * config.q_width() * config.dim + 2 * config.kv_width() * config.dim +
                            3 * config.hidden_dim * config.dim);
    state.counters["projection_bytes"] = static_cast<double>(memory.projections);
    state.counters["embedding_bytes"] = static_cast<double>(memory.embeddings);
    state.counters["other_bytes"] = static_cast<double>(memory.other);
    state.counters["projections_vs_fp16"] = static_cast<double>(memory.projections) / (2.0 * projection_weights);
}

void run_decode(benchmark::State& state, const std::string& name, InferenceFormat format) {
    set_num_threads(static_cast<int>(state.range(0)));
    const InferenceModel& model = cache().get(name, format);
    InferenceSession session(model, 256, prompt_tokens);
    const std::vector<int> tokens = fixed_tokens(decode_positions, model.config.vocab_size);
    for (auto _ : state) {
        if (session.position() == decode_positions) session.reset();
        const std::span<const float> logits =
            session.decode(tokens[static_cast<std::size_t>(session.position())]);
        benchmark::DoNotOptimize(logits.data());
    }
    const WeightMemory memory = model.memory();
    state.counters["tokens_per_second"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
    state.counters["weight_bytes_per_second"] = benchmark::Counter(
        static_cast<double>(state.iterations()) * static_cast<double>(memory.projections + memory.embeddings),
        benchmark::Counter::kIsRate);
    add_memory_counters(state, model);
    set_num_threads(1);
}

void run_prefill(benchmark::State& state, const std::string& name, InferenceFormat format) {
    set_num_threads(static_cast<int>(state.range(0)));
    const InferenceModel& model = cache().get(name, format);
    InferenceSession session(model, 256, prompt_tokens);
    const std::vector<int> prompt = fixed_tokens(prompt_tokens, model.config.vocab_size);
    for (auto _ : state) {
        session.reset();
        const std::span<const float> logits = session.prefill(prompt);
        benchmark::DoNotOptimize(logits.data());
    }
    state.counters["tokens_per_second"] = benchmark::Counter(
        static_cast<double>(state.iterations() * prompt_tokens), benchmark::Counter::kIsRate);
    add_memory_counters(state, model);
    set_num_threads(1);
}

/// Decodes one token with the fp32 model, the bf16 model and the 2-bit student in turn, so
/// that the load of a shared machine slows all three alike, and reports each one's
/// tokens/s and the student's speedups from the summed wall time of its own tokens. The
/// three models stay resident together (about 4 GB); they are built one after another.
void run_interleaved(benchmark::State& state) {
    set_num_threads(1);
    cache().model.reset();  // free the model of the previous cases first
    cache().name.clear();
    const InferenceFormat formats[3] = {InferenceFormat::fp32(), InferenceFormat::bf16(), InferenceFormat::ternary2()};
    std::vector<std::unique_ptr<InferenceModel>> models;
    std::vector<std::unique_ptr<InferenceSession>> sessions;
    for (const InferenceFormat& format : formats) {
        models.push_back(build_model(format));
        sessions.push_back(std::make_unique<InferenceSession>(*models.back(), 256, prompt_tokens));
    }
    const std::vector<int> tokens = fixed_tokens(decode_positions, models[0]->config.vocab_size);
    double seconds[3] = {0.0, 0.0, 0.0};
    for (auto _ : state) {
        for (int index = 0; index < 3; ++index) {
            InferenceSession& session = *sessions[static_cast<std::size_t>(index)];
            if (session.position() == decode_positions) session.reset();
            const auto started = std::chrono::steady_clock::now();
            const std::span<const float> logits =
                session.decode(tokens[static_cast<std::size_t>(session.position())]);
            benchmark::DoNotOptimize(logits.data());
            seconds[index] += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        }
    }
    const auto iterations = static_cast<double>(state.iterations());
    state.counters["fp32_tokens_per_second"] = iterations / seconds[0];
    state.counters["bf16_tokens_per_second"] = iterations / seconds[1];
    state.counters["ternary2_tokens_per_second"] = iterations / seconds[2];
    state.counters["ternary2_vs_bf16"] = seconds[1] / seconds[2];
    state.counters["ternary2_vs_fp32"] = seconds[0] / seconds[2];
}

/// Sums a 1 GiB float buffer: the memory bandwidth a streaming kernel can expect.
void run_memread(benchmark::State& state) {
    set_num_threads(static_cast<int>(state.range(0)));
    const std::int64_t count = std::int64_t{1} << 28;
    static AlignedBuffer<float> buffer = [&] {
        AlignedBuffer<float> data(static_cast<std::size_t>(count));
        for (std::int64_t i = 0; i < count; ++i) data[static_cast<std::size_t>(i)] = static_cast<float>(i & 7);
        return data;
    }();
    for (auto _ : state) {
        std::vector<float> partial(64, 0.0f);
        parallel_for(count, count / 64, [&](std::int64_t first, std::int64_t last) {
            const float* p = buffer.data();
#if defined(__AVX512F__)
            __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
            for (std::int64_t i = first; i < last; i += 64) {
                a = _mm512_add_ps(a, _mm512_load_ps(p + i));
                b = _mm512_add_ps(b, _mm512_load_ps(p + i + 16));
                c = _mm512_add_ps(c, _mm512_load_ps(p + i + 32));
                d = _mm512_add_ps(d, _mm512_load_ps(p + i + 48));
            }
            alignas(64) float lanes[16];
            _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
            float sum = 0.0f;
            for (float lane : lanes) sum += lane;
            partial[static_cast<std::size_t>(first / (count / 64))] = sum;
#else
            float sum = 0.0f;
            for (std::int64_t i = first; i < last; ++i) sum += p[i];
            partial[static_cast<std::size_t>(first / (count / 64))] = sum;
#endif
        });
        benchmark::DoNotOptimize(partial.data());
    }
    state.SetBytesProcessed(state.iterations() * count * static_cast<std::int64_t>(sizeof(float)));
    set_num_threads(1);
}

void register_benchmarks() {
    const std::pair<const char*, InferenceFormat> formats[] = {
        {"fp32", InferenceFormat::fp32()},
        {"bf16", InferenceFormat::bf16()},
        {"ternary2", InferenceFormat::ternary2()},
        {"ternary1_6", InferenceFormat::ternary1_6()},
    };
    benchmark::RegisterBenchmark("memread/1GiB", run_memread)
        ->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
    for (const auto& [name, format] : formats) {
        const std::string label = name;
        benchmark::RegisterBenchmark(("decode/" + label + "/qwen3-0.6b").c_str(),
                                     [label, format](benchmark::State& state) { run_decode(state, label, format); })
            ->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
        benchmark::RegisterBenchmark(("prefill/" + label + "/qwen3-0.6b").c_str(),
                                     [label, format](benchmark::State& state) { run_prefill(state, label, format); })
            ->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark("decode_interleaved/fp32+bf16+ternary2/qwen3-0.6b/threads:1", run_interleaved)
        ->Unit(benchmark::kMillisecond)->MinTime(6.0);
}

}  // namespace

int main(int argc, char** argv) {
    register_benchmarks();
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
    const DecoderConfig config = qwen3_0_6b();
    std::printf("instruction set: %s\n", std::string(isa_name(active_isa())).c_str());
    std::printf("model: qwen3-0.6b shape, vocab %d, dim %d, ffn %d, layers %d, heads %d/%d x %d, tied, qk_norm\n",
                config.vocab_size, config.dim, config.hidden_dim, config.n_layers, config.n_heads,
                config.n_kv_heads, config.head_dim);
    std::printf("decode: positions 0..%lld from an empty cache, repeated; prefill: %lld-token prompt\n",
                static_cast<long long>(decode_positions - 1), static_cast<long long>(prompt_tokens));
    std::fflush(stdout);
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
