// Helpers shared by the autodiff and nn tests: seeded random tensors and a gradient check
// of any tape computation against central differences (bitdistill::check_gradients).
#pragma once

#include <doctest/doctest.h>

#include <bitdistill/autodiff/gradcheck.hpp>
#include <bitdistill/autodiff/tape.hpp>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace test_support {

using bitdistill::Shape;
using bitdistill::Tensor;
using bitdistill::autodiff::Tape;
using bitdistill::autodiff::Var;

/// True when the sanitizer preset requests shorter loops (BITDISTILL_TEST_SCALE=small).
inline bool small_scale() {
    const char* scale = std::getenv("BITDISTILL_TEST_SCALE");
    return scale != nullptr && std::string(scale) == "small";
}

/// Returns a seeded tensor of `shape` with values uniform in [low, high).
inline Tensor<float> random_tensor(Shape shape, std::uint32_t seed, float low = -1.0f, float high = 1.0f) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> uniform(low, high);
    Tensor<float> t(shape);
    for (float& value : t) value = uniform(generator);
    return t;
}

/// One differentiable input of a checked computation: its value and its gradient.
struct Leaf {
    std::string name;
    Tensor<float> value;
    Tensor<float> grad;

    Leaf(std::string leaf_name, Tensor<float> initial)
        : name(std::move(leaf_name)), value(std::move(initial)), grad(value.shape()) {}
};

/// Builds the computation on the tape from the leaf Vars and returns its output.
using Build = std::function<Var(Tape&, const std::vector<Var>&)>;

/// Checks the tape gradients of `build` against central differences of the scalar
/// L = sum_i out_i * probe_i, where probe is a fixed random tensor of the output's shape
/// (so every output element matters with a different weight). L is summed in double.
/// Returns the report; also checks that the second run of the same tape allocates no
/// buffer.
inline bitdistill::GradCheckReport check_tape_gradients(std::vector<Leaf>& leaves, const Build& build,
                                                        const bitdistill::GradCheckOptions& options = {}) {
    Tape tape;
    Tensor<float> probe;
    auto run = [&](bool with_backward) -> double {
        tape.reset();
        std::vector<Var> vars;
        for (Leaf& leaf : leaves) vars.push_back(tape.parameter(leaf.value.view(), leaf.grad.view()));
        Var out = build(tape, vars);
        auto values = tape.value(out);
        if (!(probe.shape() == values.shape())) probe = random_tensor(values.shape(), 12345u);
        double loss = 0.0;
        for (std::int64_t i = 0; i < values.numel(); ++i) loss += static_cast<double>(values[i]) * probe[i];
        if (with_backward) {
            for (Leaf& leaf : leaves) std::fill(leaf.grad.begin(), leaf.grad.end(), 0.0f);
            tape.backward(out, bitdistill::TensorView<const float>(probe.data(), values.shape()));
        }
        return loss;
    };
    run(true);
    const std::uint64_t before = bitdistill::buffer_allocations();
    run(true);
    CHECK_MESSAGE(bitdistill::buffer_allocations() == before,
                  "a repeated step of the same shape allocated tape buffers");

    std::vector<bitdistill::GradCheckInput> inputs;
    for (Leaf& leaf : leaves) inputs.push_back({leaf.name, leaf.value.view(), leaf.grad.view()});
    return bitdistill::check_gradients([&] { return run(false); }, inputs, options);
}

/// Runs check_tape_gradients and fails the current test with the report when it fails.
inline void require_gradients(std::vector<Leaf>& leaves, const Build& build,
                              const bitdistill::GradCheckOptions& options = {}) {
    const bitdistill::GradCheckReport report = check_tape_gradients(leaves, build, options);
    INFO(report.to_string());
    CHECK(report.passed());
}

}  // namespace test_support
