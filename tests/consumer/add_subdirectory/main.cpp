// Uses bitdistill built from source through the umbrella header: a fused element-wise
// expression and a float product must match plain loops.
#include <bitdistill/bitdistill.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>

int main() {
    using namespace bitdistill;

    Tensor<float> weights(Shape{5, 7});
    Tensor<float> activations(Shape{2, 7});
    for (std::int64_t i = 0; i < weights.numel(); ++i) weights[i] = 0.25f * static_cast<float>(i % 9);
    for (std::int64_t i = 0; i < activations.numel(); ++i)
        activations[i] = 1.0f - 0.125f * static_cast<float>(i);

    Tensor<float> y = matmul(weights, activations * 2.0f + 1.0f);
    float largest_error = 0.0f;
    for (std::int64_t token = 0; token < 2; ++token)
        for (std::int64_t row = 0; row < 5; ++row) {
            float expected = 0.0f;
            for (std::int64_t col = 0; col < 7; ++col)
                expected += (activations(token, col) * 2.0f + 1.0f) * weights(row, col);
            largest_error = std::fmax(largest_error, std::fabs(y(token, row) - expected));
        }
    std::printf("add_subdirectory consumer: largest error %.3g, sum %.4g\n", largest_error, sum(y));
    return largest_error < 1e-4f ? 0 : 1;
}
