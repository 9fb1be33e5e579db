// Float and bf16 products of kernels/gemv_float.hpp: every instruction-set path against
// the scalar twin, on shapes with and without tails, with one and two threads.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bitdistill/kernels/gemv_float.hpp"

using namespace bitdistill;

namespace {

Tensor<float> random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed, float scale = 1.0f) {
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    Tensor<float> matrix(Shape{rows, cols});
    for (float& value : matrix) value = normal(generator);
    return matrix;
}

Tensor<BFloat16> to_bf16(const Tensor<float>& matrix) {
    Tensor<BFloat16> out(matrix.shape());
    to_bfloat16_into(matrix.view(), out.view());
    return out;
}

/// Sum of |x_k * w_k| over k for output (t, n): the scale of the rounding error of a dot
/// product in fp32.
float magnitude(const Tensor<float>& x, const Tensor<float>& w, std::int64_t t, std::int64_t n) {
    float sum = 0.0f;
    for (std::int64_t k = 0; k < x.cols(); ++k) sum += std::fabs(x(t, k) * w(n, k));
    return sum;
}

std::vector<Isa> supported_isas() {
    std::vector<Isa> isas;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512vnni})
        if (isa_supported(isa)) isas.push_back(isa);
    return isas;
}

struct IsaGuard {
    Isa saved = active_isa();
    int threads = num_threads();
    ~IsaGuard() {
        force_isa(saved);
        set_num_threads(threads);
    }
};

struct Case {
    std::int64_t tokens, out, in;
};

const Case cases[] = {{1, 1, 1},   {1, 7, 5},    {1, 64, 1024}, {1, 133, 100}, {2, 33, 300}, {3, 9, 1001},
                      {3, 9, 33},  {4, 16, 16},  {5, 70, 257},  {17, 130, 64}};

}  // namespace

TEST_CASE("bfloat16 rounding") {
    CHECK(to_bfloat16(1.0f).bits == 0x3f80);
    CHECK(to_float(to_bfloat16(1.0f)) == 1.0f);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
    CHECK(to_bfloat16(1.0f + 1.0f / 256.0f).bits == 0x3f80);
    // 1 + 3 * 2^-8 is halfway as well, and the even neighbour is 1 + 2^-6 (0x3f82).
    CHECK(to_bfloat16(1.0f + 3.0f / 256.0f).bits == 0x3f82);
    CHECK(to_bfloat16(-2.5f).bits == 0xc020);
    CHECK(std::isnan(to_float(to_bfloat16(std::nanf("")))));
    CHECK(std::isinf(to_float(to_bfloat16(INFINITY))));
    // The largest finite float rounds to infinity in bf16, as round-to-nearest requires.
    CHECK(std::isinf(to_float(to_bfloat16(3.4028235e38f))));
}

TEST_CASE("matmul_f32_into matches the reference on every path") {
    IsaGuard guard;
    for (const Case& c : cases) {
        const Tensor<float> x = random_matrix(c.tokens, c.in, 11 + c.in);
        const Tensor<float> w = random_matrix(c.out, c.in, 23 + c.out);
        Tensor<float> expected(Shape{c.tokens, c.out});
        matmul_f32_ref(x.view(), w.view(), expected.view());
        for (Isa isa : supported_isas()) {
            for (int threads : {1, 2}) {
                force_isa(isa);
                set_num_threads(threads);
                Tensor<float> y(Shape{c.tokens, c.out}, NAN);
                matmul_f32_into(x.view(), w.view(), y.view());
                for (std::int64_t t = 0; t < c.tokens; ++t) {
                    for (std::int64_t n = 0; n < c.out; ++n) {
                        INFO("isa ", isa_name(isa), ", threads ", threads, ", shape ", c.tokens, "x",
                             c.out, "x", c.in, ", output (", t, ", ", n, ")");
                        const float tolerance = 1e-6f * magnitude(x, w, t, n) + 1e-30f;
                        REQUIRE(std::fabs(y(t, n) - expected(t, n)) <= tolerance);
                    }
                }
            }
        }
    }
}

TEST_CASE("matmul_bf16_into matches the reference on every path") {
    IsaGuard guard;
    for (const Case& c : cases) {
        const Tensor<float> x_float = random_matrix(c.tokens, c.in, 31 + c.in);
        const Tensor<float> w_float = random_matrix(c.out, c.in, 47 + c.out);
        const Tensor<BFloat16> x = to_bf16(x_float);
        const Tensor<BFloat16> w = to_bf16(w_float);
        Tensor<float> expected(Shape{c.tokens, c.out});
        matmul_bf16_ref(x.view(), w.view(), expected.view());
        for (Isa isa : supported_isas()) {
            for (int threads : {1, 2}) {
                force_isa(isa);
                set_num_threads(threads);
                Tensor<float> y(Shape{c.tokens, c.out}, NAN);
                matmul_bf16_into(x.view(), w.view(), y.view());
                for (std::int64_t t = 0; t < c.tokens; ++t) {
                    for (std::int64_t n = 0; n < c.out; ++n) {
                        INFO("isa ", isa_name(isa), ", threads ", threads, ", shape ", c.tokens, "x",
                             c.out, "x", c.in, ", output (", t, ", ", n, ")");
                        // bf16 inputs differ from the floats by at most 2^-9 relative each.
                        const float tolerance = 1e-6f * 1.01f * magnitude(x_float, w_float, t, n) + 1e-30f;
                        REQUIRE(std::fabs(y(t, n) - expected(t, n)) <= tolerance);
                    }
                }
            }
        }
    }
}

TEST_CASE("matmul_bf16_into is close to the float product") {
    const Tensor<float> x = random_matrix(2, 300, 5);
    const Tensor<float> w = random_matrix(40, 300, 6);
    Tensor<float> exact(Shape{2, 40});
    matmul_f32_ref(x.view(), w.view(), exact.view());
    Tensor<float> y(Shape{2, 40});
    matmul_bf16_into(to_bf16(x).view(), to_bf16(w).view(), y.view());
    for (std::int64_t t = 0; t < 2; ++t) {
        for (std::int64_t n = 0; n < 40; ++n) {
            // Each operand carries at most 2^-9 relative error, so each term at most ~2^-8.
            INFO("output (", t, ", ", n, ")");
            CHECK(std::fabs(y(t, n) - exact(t, n)) <= magnitude(x, w, t, n) / 256.0f);
        }
    }
}

TEST_CASE("float matmul shape errors name the shapes") {
    Tensor<float> x(Shape{2, 8}), w(Shape{4, 7}), y(Shape{2, 4});
    CHECK_THROWS_AS(matmul_f32_into(x.view(), w.view(), y.view()), shape_error);
    CHECK_THROWS_WITH(matmul_f32_into(x.view(), w.view(), y.view()),
                      doctest::Contains("x [2, 8], w [4, 7], y [2, 4]"));
}
