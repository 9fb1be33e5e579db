// Uses the installed headers through the umbrella header: a ternary x int8 product must match
// the float product of the dequantized operands.
#include <bitdistill/bitdistill.hpp>

#include <cstdint>
#include <cstdio>

int main() {
    using namespace bitdistill;

    Tensor<float> weights(Shape{48, 96});
    Tensor<float> activations(Shape{3, 96});
    for (std::int64_t i = 0; i < weights.numel(); ++i)
        weights[i] = static_cast<float>((i * 37) % 11) - 5.0f;
    for (std::int64_t i = 0; i < activations.numel(); ++i)
        activations[i] = static_cast<float>((i * 13) % 7) - 3.0f;

    const auto w = quantize_ternary<Ternary<2>>(weights);
    const auto x = quantize_int8(activations);
    Tensor<float> y = matmul(w, x);
    Tensor<float> reference = matmul(dequantize(w), dequantize(x));

    const float error = max(abs(y - reference)) / max(abs(reference));
    std::printf("find_package consumer: relative error %.3g\n", error);
    return error < 1e-5f ? 0 : 1;
}
