// Must not compile: float weights times int8 activations. Float weights go with float
// activations (the float GEMM); int8 activations go with ternary weights.
// expect-type: bitdistill::Float32
// expect-type: bitdistill::Int8<8
#include <bitdistill/expr/matmul.hpp>
#include <bitdistill/quant/quantize_int8.hpp>

int main() {
    using namespace bitdistill;
    Tensor<float> weights(Shape{16, 32}, 0.5f);
    Tensor<float> activations(Shape{2, 32}, 1.0f);
#ifndef BITDISTILL_COMPILE_FAIL_CONTROL
    Tensor<float> y = eval(matmul(weights, quantize_int8(activations)));
#else
    Tensor<float> y = eval(matmul(weights, activations));
#endif
    return y[0] == 0.0f ? 0 : 1;
}
