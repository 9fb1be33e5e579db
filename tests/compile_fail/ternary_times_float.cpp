// Must not compile: ternary weights times float activations. The activations have to be
// quantized to int8 first; the product kernel takes no float operand next to ternary weights.
// expect-type: bitdistill::Ternary<2
// expect-type: bitdistill::Float32
#include <bitdistill/expr/matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

int main() {
    using namespace bitdistill;
    Tensor<float> weights(Shape{16, 32}, 0.5f);
    Tensor<float> activations(Shape{2, 32}, 1.0f);
    auto ternary = quantize_ternary<Ternary<2>>(weights);
#ifndef BITDISTILL_COMPILE_FAIL_CONTROL
    Tensor<float> y = matmul(ternary, activations);
#else
    Tensor<float> y = matmul(ternary, quantize_int8(activations));
#endif
    return y[0] == 0.0f ? 0 : 1;
}
