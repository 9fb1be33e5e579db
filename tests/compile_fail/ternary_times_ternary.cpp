// Must not compile: two ternary operands. Only one side of a product may be ternary.
// expect-type: bitdistill::Ternary<2
// expect-type: bitdistill::Ternary1_6<bitdistill::Granularity::per_row>
#include <bitdistill/expr/matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

int main() {
    using namespace bitdistill;
    Tensor<float> weights(Shape{16, 32}, 0.5f);
    Tensor<float> activations(Shape{2, 32}, 1.0f);
    auto ternary = quantize_ternary<Ternary<2>>(weights);
#ifndef BITDISTILL_COMPILE_FAIL_CONTROL
    auto other = quantize_ternary<Ternary1_6<Granularity::per_row>>(activations);
#else
    auto other = quantize_int8(activations);
#endif
    Tensor<float> y(Shape{2, 16});
    assign(y, matmul(ternary, other));
    return y[0] == 0.0f ? 0 : 1;
}
