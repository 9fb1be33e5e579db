// Proves that a training step of a fixed shape allocates nothing after the first steps:
// forward, loss, backward and AdamW of the decoder model, in float and in ternary, on one
// and two threads.
//
// This executable replaces the global operator new and delete with counting versions and,
// outside the sanitizer builds, also malloc and its relatives (glibc only), so that
// allocations by the standard library, Eigen and the OpenMP runtime are counted too. The
// library's own buffers are counted by bitdistill::buffer_allocations().
#include <doctest/doctest.h>

#include <bitdistill/autodiff/ops_loss.hpp>
#include <bitdistill/nn/decoder_model.hpp>
#include <bitdistill/optim/adamw.hpp>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

namespace {
std::atomic<std::uint64_t> operator_new_calls{0};
std::atomic<std::uint64_t> malloc_calls{0};
}  // namespace

// The replacements below pair malloc with free by design, which GCC cannot see.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif

void* operator new(std::size_t size) {
    operator_new_calls.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t size) {
    operator_new_calls.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

// GCC defines __SANITIZE_ADDRESS__ under ASan; clang builds skip malloc counting because
// clang marks ASan only through __has_feature.
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define BITDISTILL_COUNT_MALLOC 1
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);

void* malloc(std::size_t size) {
    malloc_calls.fetch_add(1, std::memory_order_relaxed);
    return __libc_malloc(size);
}
void* calloc(std::size_t count, std::size_t size) {
    malloc_calls.fetch_add(1, std::memory_order_relaxed);
    return __libc_calloc(count, size);
}
void* realloc(void* p, std::size_t size) {
    malloc_calls.fetch_add(1, std::memory_order_relaxed);
    return __libc_realloc(p, size);
}
void* aligned_alloc(std::size_t alignment, std::size_t size) {
    malloc_calls.fetch_add(1, std::memory_order_relaxed);
    return __libc_memalign(alignment, size);
}
int posix_memalign(void** out, std::size_t alignment, std::size_t size) {
    malloc_calls.fetch_add(1, std::memory_order_relaxed);
    *out = __libc_memalign(alignment, size);
    return *out == nullptr ? 12 /* ENOMEM */ : 0;
}
void free(void* p) { __libc_free(p); }
}
#else
#define BITDISTILL_COUNT_MALLOC 0
#endif

using namespace bitdistill;
using namespace bitdistill::autodiff;
using namespace bitdistill::nn;

namespace {

struct Counts {
    std::uint64_t operator_new = 0;
    std::uint64_t malloc = 0;
    std::uint64_t buffers = 0;
};

Counts read_counts() {
    return {operator_new_calls.load(), malloc_calls.load(), buffer_allocations()};
}

/// Runs `steps` training steps and returns the allocations made by the last one.
Counts allocations_of_last_step(ProjectionMode mode, int threads, int steps) {
    set_num_threads(threads);
    DecoderConfig config;
    config.vocab_size = 64;
    config.dim = 64;
    config.hidden_dim = 96;
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.qk_norm = true;
    config.subln = true;
    config.max_seq_len = 16;
    DecoderModel model(random_decoder_weights(config, 1));
    model.set_projection_mode(mode);
    AdamW optimizer(model.parameters());

    const std::int64_t batch = 4;
    const std::int64_t seq = 16;
    std::vector<std::int32_t> tokens(batch * seq);
    std::vector<std::int32_t> targets(batch * seq);
    std::vector<std::uint8_t> mask(batch * seq, 1);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        tokens[i] = static_cast<std::int32_t>((i * 13) % 64);
        targets[i] = static_cast<std::int32_t>((i * 5) % 64);
    }
    mask.back() = 0;
    targets.back() = ignored_target;

    Tape tape;
    Counts before;
    for (int step = 0; step < steps; ++step) {
        before = read_counts();
        tape.reset();
        Var logits = model.forward(tape, tokens, batch, seq, mask);
        Var loss = cross_entropy(tape, logits, targets);
        model.zero_grad();
        tape.backward(loss);
        optimizer.step(1e-3f);
    }
    const Counts after = read_counts();
    set_num_threads(1);
    return {after.operator_new - before.operator_new, after.malloc - before.malloc, after.buffers - before.buffers};
}

}  // namespace

TEST_CASE("training step allocates nothing after warm-up") {
    for (ProjectionMode mode : {ProjectionMode::full_precision, ProjectionMode::ternary})
        for (int threads : {1, 2}) {
            const Counts counts = allocations_of_last_step(mode, threads, 3);
            INFO("mode " << (mode == ProjectionMode::ternary ? "ternary" : "float") << ", threads " << threads);
            CHECK(counts.operator_new == 0);
            CHECK(counts.buffers == 0);
            if (BITDISTILL_COUNT_MALLOC) CHECK(counts.malloc == 0);
        }
}

TEST_CASE("allocation counters see allocations") {
    // Guards the test above against counters that never move.
    const Counts before = read_counts();
    auto* p = new std::vector<int>(100);
    Tensor<float> t(Shape{8});
    const Counts after = read_counts();
    delete p;
    CHECK(after.operator_new > before.operator_new);
    CHECK(after.buffers == before.buffers + 1);
    if (BITDISTILL_COUNT_MALLOC) CHECK(after.malloc > before.malloc);
}
