// The first example of README.md, compiled and run as a test. Everything below this comment
// must match the README's code block exactly; the readme_snippet_in_sync test checks it.
#include <bitdistill/bitdistill.hpp>

#include <cmath>
#include <cstdio>
#include <random>

int main() {
    using namespace bitdistill;

    // Weights W [out x in] and activations x [tokens x in], filled with Gaussian noise.
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Tensor<float> weights(Shape{256, 1024});
    Tensor<float> activations(Shape{4, 1024});
    for (float& value : weights) value = normal(rng);
    for (float& value : activations) value = normal(rng);

    // Ternary weights (2 bits each, one absmean scale) and int8 activations (one absmax
    // scale per token).
    auto w_ternary = quantize_ternary<Ternary<2>>(weights);
    auto x_int8 = quantize_int8(activations);

    // y = x W^T [tokens x out]. The pair of encodings selects the ternary x int8 kernel at
    // compile time; two float tensors select the float GEMM.
    Tensor<float> y = matmul(w_ternary, x_int8);
    Tensor<float> y_dequantized = matmul(dequantize(w_ternary), dequantize(x_int8));
    Tensor<float> y_float = matmul(weights, activations);

    // Element-wise expressions run in one fused pass; sum and max return a float.
    const float kernel_error = max(abs(y - y_dequantized)) / max(abs(y_dequantized));
    const float ternary_error =
        std::sqrt(sum((y - y_float) * (y - y_float)) / sum(y_float * y_float));
    std::printf("kernel error: %.2g\n", kernel_error);    // against the dequantized product
    std::printf("ternary error: %.2f\n", ternary_error);  // about 0.5 for Gaussian weights
    return kernel_error < 1e-5f && ternary_error < 0.6f ? 0 : 1;
}
