// Must not compile: the operands in the wrong order. The weights come first (left) and the
// activations second (right), as in matmul(w, x) = x w^T.
// expect-type: bitdistill::Int8<8
// expect-type: bitdistill::Ternary<2
#include <bitdistill/expr/matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

int main() {
    using namespace bitdistill;
    Tensor<float> weights(Shape{16, 32}, 0.5f);
    Tensor<float> activations(Shape{2, 32}, 1.0f);
    auto ternary = quantize_ternary<Ternary<2>>(weights);
    auto int8 = quantize_int8(activations);
#ifndef BITDISTILL_COMPILE_FAIL_CONTROL
    auto product = matmul(int8, ternary);
#else
    auto product = matmul(ternary, int8);
#endif
    Tensor<float> y = product;
    return y[0] == 0.0f ? 0 : 1;
}
