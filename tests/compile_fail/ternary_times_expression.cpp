// Must not compile: 1.6-bit ternary weights times an element-wise float expression. An
// expression operand has the encoding Float32, so the same rule applies as to a tensor.
// expect-type: bitdistill::Ternary1_6<
// expect-type: bitdistill::Float32
#include <bitdistill/expr/elementwise.hpp>
#include <bitdistill/expr/matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

int main() {
    using namespace bitdistill;
    Tensor<float> weights(Shape{16, 32}, 0.5f);
    Tensor<float> activations(Shape{2, 32}, 1.0f);
    auto ternary = quantize_ternary<Ternary1_6<>>(weights);
#ifndef BITDISTILL_COMPILE_FAIL_CONTROL
    Tensor<float> y = matmul(ternary, activations * 2.0f);
#else
    Tensor<float> y = matmul(ternary, quantize_int8(eval(activations * 2.0f)));
#endif
    return y[0] == 0.0f ? 0 : 1;
}
