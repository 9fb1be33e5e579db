// Expression layer: fused element-wise evaluation, operand holding, shapes, aliasing,
// reductions, and the kernel the evaluator picks for each pair of encodings.
#include <doctest/doctest.h>

#include <bitdistill/bitdistill.hpp>
#include <bitdistill/kernels/reference.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

using namespace bitdistill;

namespace {

// Sizes around the SIMD width and the parallel grain, so the SIMD body, the scalar tail and
// several parallel tasks are all exercised.
const std::vector<std::int64_t> test_sizes = {0,  1,  2,   3,    4,    5,     7,     8,    9,
                                              15, 16, 17,  31,   33,   100,   1000,  16383,
                                              16384, 16385, 40001};

Tensor<float> random_tensor(Shape shape, std::uint32_t seed, float low = -2.0f,
                            float high = 2.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> uniform(low, high);
    Tensor<float> tensor(shape);
    for (float& value : tensor) value = uniform(rng);
    return tensor;
}

Tensor<float> filled(std::int64_t count, float value) { return Tensor<float>(Shape{count}, value); }

bool close(float actual, float expected, float relative = 1e-6f) {
    return std::fabs(actual - expected) <= relative * std::max(1.0f, std::fabs(expected));
}

// A unary map that appends `id` to a shared log each time it runs, once per element or once
// per batch, so a test can see the order in which the evaluator visits operands.
struct LoggingMap {
    std::vector<int>* log;
    int id;
    float operator()(float x) const {
        log->push_back(id);
        return x;
    }
#if BITDISTILL_EXPR_SIMD
    expr::float_batch operator()(const expr::float_batch& x) const {
        log->push_back(id);
        return x;
    }
#endif
};

// A unary map that counts the elements it is applied to.
struct CountingMap {
    std::int64_t* count;
    float operator()(float x) const {
        *count += 1;
        return 2.0f * x;
    }
#if BITDISTILL_EXPR_SIMD
    expr::float_batch operator()(const expr::float_batch& x) const {
        *count += expr::simd_width;
        return 2.0f * x;
    }
#endif
};

// Scalar-only map: no batch form, so any tree containing it runs element by element.
struct ScalarOnlyTwice {
    float operator()(float x) const { return 2.0f * x; }
};

}  // namespace

TEST_CASE("arithmetic matches an element loop") {
    for (std::int64_t size : test_sizes) {
        CAPTURE(size);
        const Tensor<float> a = random_tensor(Shape{size}, 1);
        const Tensor<float> b = random_tensor(Shape{size}, 2);
        const Tensor<float> c = random_tensor(Shape{size}, 3, 0.5f, 2.0f);
        Tensor<float> result = a + b * c - a / c + 3.0f - 2.0f * -b;
        REQUIRE(result.shape() == a.shape());
        for (std::int64_t i = 0; i < size; ++i) {
            const float expected = a[i] + b[i] * c[i] - a[i] / c[i] + 3.0f - 2.0f * -b[i];
            REQUIRE(close(result[i], expected));
        }
    }
}

TEST_CASE("unary maps match the standard library") {
    for (std::int64_t size : test_sizes) {
        CAPTURE(size);
        const Tensor<float> a = random_tensor(Shape{size}, 4);
        Tensor<float> exps = exp(a);
        Tensor<float> roots = sqrt(abs(a));
        Tensor<float> logs = log(abs(a) + 0.5f);
        Tensor<float> negated = -a;
        for (std::int64_t i = 0; i < size; ++i) {
            REQUIRE(close(exps[i], std::exp(a[i])));
            REQUIRE(close(roots[i], std::sqrt(std::fabs(a[i]))));
            REQUIRE(close(logs[i], std::log(std::fabs(a[i]) + 0.5f)));
            REQUIRE(negated[i] == -a[i]);
        }
    }
}

TEST_CASE("exp_shifted matches std::exp and sums the row") {
    std::mt19937 rng(21);
    std::normal_distribution<float> normal(0.0f, 4.0f);
    for (std::int64_t n : {1, 3, 8, 15, 16, 17, 63, 4096, 4099}) {
        std::vector<float> z(static_cast<std::size_t>(n));
        for (float& value : z) value = normal(rng);
        const float shift = *std::max_element(z.begin(), z.end());
        std::vector<float> out(z.size(), -1.0f);
        const double sum = bitdistill::expr::exp_shifted(z.data(), shift, out.data(), n);
        double expected_sum = 0.0;
        for (std::size_t j = 0; j < z.size(); ++j) {
            const float expected = std::exp(z[j] - shift);
            expected_sum += expected;
            CHECK(out[j] == doctest::Approx(expected).epsilon(1e-6));
        }
        CHECK(sum == doctest::Approx(expected_sum).epsilon(1e-6));
        CHECK(sum >= 1.0);
        CHECK(bitdistill::expr::exp_shifted(z.data(), shift, nullptr, n) == sum);
    }
}

TEST_CASE("scalars broadcast on either side") {
    const Tensor<float> a = random_tensor(Shape{3, 7}, 5, 0.5f, 2.0f);
    Tensor<float> left = 1.0f / a;
    Tensor<float> right = a / 4;  // an int scalar converts to float
    Tensor<float> both = 2.0 - a * 0.5f;
    REQUIRE(left.shape() == a.shape());
    for (std::int64_t i = 0; i < a.numel(); ++i) {
        CHECK(close(left[i], 1.0f / a[i]));
        CHECK(close(right[i], a[i] / 4.0f));
        CHECK(close(both[i], 2.0f - a[i] * 0.5f));
    }
}

TEST_CASE("rank-0 tensor is one element") {
    Tensor<float> scalar_tensor(Shape{}, 3.0f);
    Tensor<float> result = scalar_tensor * scalar_tensor + 1.0f;
    CHECK(result.shape() == Shape{});
    CHECK(result.numel() == 1);
    CHECK(result[0] == 10.0f);
    CHECK(sum(result) == 10.0f);
}

TEST_CASE("views and tensors mix") {
    Tensor<float> storage = random_tensor(Shape{4, 6}, 6);
    TensorView<float> top = storage.view().row_range(0, 2);
    TensorView<const float> bottom = TensorView<const float>(storage.view()).row_range(2, 2);
    Tensor<float> result = top + bottom;
    REQUIRE(result.shape() == Shape{2, 6});
    for (std::int64_t i = 0; i < 12; ++i) CHECK(result[i] == storage[i] + storage[12 + i]);
}

TEST_CASE("shape mismatch names both shapes") {
    const Tensor<float> a(Shape{2, 3});
    const Tensor<float> b(Shape{3, 2});
    try {
        auto sum_node = a + b;
        (void)sum_node;
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        const std::string message = error.what();
        CHECK(message.find("[2, 3]") != std::string::npos);
        CHECK(message.find("[3, 2]") != std::string::npos);
        CHECK(message.find("operator+") != std::string::npos);
    }
    // The check runs at every level of a tree, not only at the leaves.
    CHECK_THROWS_AS((void)(exp(a) * (b + 1.0f)), shape_error);
}

TEST_CASE("assign rejects a destination of another shape") {
    const Tensor<float> a(Shape{2, 3}, 1.0f);
    Tensor<float> dest(Shape{6});
    try {
        assign(dest, a + 1.0f);
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        const std::string message = error.what();
        CHECK(message.find("[6]") != std::string::npos);
        CHECK(message.find("[2, 3]") != std::string::npos);
    }
}

TEST_CASE("expression is evaluated in one pass") {
    const std::int64_t size = 4 * expr::simd_width + 3;
    const Tensor<float> a = random_tensor(Shape{size}, 7);
    const Tensor<float> b = random_tensor(Shape{size}, 8);

    SUBCASE("operands are visited alternately") {
        // Separate passes would log all of map 1, then all of map 2. A fused pass visits map 1
        // and map 2 once each per batch (or per tail element).
        std::vector<int> log;
        Tensor<float> result = map(a, LoggingMap{&log, 1}) + map(b, LoggingMap{&log, 2});
        const std::int64_t steps = size / expr::simd_width + size % expr::simd_width;
        REQUIRE(static_cast<std::int64_t>(log.size()) == 2 * steps);
        for (std::size_t step = 0; step < log.size(); step += 2) {
            CHECK(log[step] == 1);
            CHECK(log[step + 1] == 2);
        }
        for (std::int64_t i = 0; i < size; ++i) CHECK(result[i] == a[i] + b[i]);
    }

    SUBCASE("each element is computed once") {
        std::int64_t count = 0;
        Tensor<float> result = map(a, CountingMap{&count}) * b + map(b, CountingMap{&count});
        CHECK(count == 2 * size);
        for (std::int64_t i = 0; i < size; ++i) CHECK(close(result[i], 2 * a[i] * b[i] + 2 * b[i]));
    }

    SUBCASE("no intermediate buffers") {
        const Tensor<float> c = random_tensor(Shape{size}, 9);
        const std::uint64_t before = buffer_allocations();
        Tensor<float> result = a + b * c - exp(a) / 2.0f;
        CHECK(buffer_allocations() - before == 1);  // the result itself
        const std::uint64_t before_assign = buffer_allocations();
        assign(result, sqrt(abs(result)) + a * b * c);
        CHECK(buffer_allocations() == before_assign);
    }
}

TEST_CASE("temporaries are held by value") {
    const Tensor<float> x = random_tensor(Shape{37}, 10);
    // These are built from temporaries that die at the end of each statement. A node that
    // referenced them would read freed memory below, which AddressSanitizer reports.
    auto from_temporary = filled(37, 2.0f) + x;
    auto nested = (filled(37, 1.0f) * 3.0f + x) * exp(filled(37, 0.0f));
    auto from_view_of_lvalue = x.view() - filled(37, 1.0f);

    static_assert(std::is_same_v<decltype(from_temporary),
                                 expr::BinaryNode<expr::Add, expr::TensorValueLeaf,
                                                  expr::TensorRefLeaf>>);
    static_assert(std::is_same_v<decltype(from_view_of_lvalue),
                                 expr::BinaryNode<expr::Subtract, expr::ViewLeaf,
                                                  expr::TensorValueLeaf>>);

    std::vector<float> padding(1000, 9.0f);  // reuse the freed heap if anything dangles
    Tensor<float> first = from_temporary;
    Tensor<float> second = nested;
    Tensor<float> third = from_view_of_lvalue;
    for (std::int64_t i = 0; i < 37; ++i) {
        CHECK(first[i] == 2.0f + x[i]);
        CHECK(close(second[i], 3.0f + x[i]));
        CHECK(third[i] == x[i] - 1.0f);
    }
}

TEST_CASE("lvalue operands are held by reference") {
    Tensor<float> a(Shape{5}, 1.0f);
    auto plus_one = a + 1.0f;
    auto twice = plus_one * 2.0f;  // holds plus_one by reference
    static_assert(std::is_same_v<decltype(twice),
                                 expr::BinaryNode<expr::Multiply,
                                                  const decltype(plus_one)&, expr::ScalarLeaf>>);
    // The tensor is read at evaluation time, even after it got new storage.
    a = Tensor<float>(Shape{5}, 10.0f);
    Tensor<float> result = twice;
    for (float value : result) CHECK(value == 22.0f);
}

TEST_CASE("assign into an operand") {
    Tensor<float> a = random_tensor(Shape{1001}, 11);
    const Tensor<float> b = random_tensor(Shape{1001}, 12);
    const Tensor<float> original = a;
    assign(a, a * 2.0f + b - a);
    for (std::int64_t i = 0; i < a.numel(); ++i) CHECK(close(a[i], original[i] + b[i]));
}

TEST_CASE("partial overlap is rejected") {
    Tensor<float> storage = random_tensor(Shape{10, 8}, 13);
    TensorView<float> upper = storage.view().row_range(0, 5);
    TensorView<float> shifted = storage.view().row_range(1, 5);
    CHECK_THROWS_AS(assign(shifted, upper + 1.0f), std::invalid_argument);
    TensorView<float> lower = storage.view().row_range(5, 5);
    CHECK_NOTHROW(assign(lower, upper + 1.0f));  // disjoint
}

TEST_CASE("assign and eval accept plain tensors") {
    const Tensor<float> a = random_tensor(Shape{3, 3}, 14);
    Tensor<float> copy(Shape{3, 3});
    assign(copy, a);
    Tensor<float> evaluated = eval(a.view());
    for (std::int64_t i = 0; i < 9; ++i) {
        CHECK(copy[i] == a[i]);
        CHECK(evaluated[i] == a[i]);
    }
}

TEST_CASE("reductions match a double loop") {
    for (std::int64_t size : test_sizes) {
        if (size == 0) continue;
        CAPTURE(size);
        const Tensor<float> a = random_tensor(Shape{size}, 15);
        const Tensor<float> b = random_tensor(Shape{size}, 16);
        double expected_sum = 0.0;
        float expected_max = -std::numeric_limits<float>::infinity();
        for (std::int64_t i = 0; i < size; ++i) {
            const float value = a[i] * b[i] + 1.0f;
            expected_sum += value;
            expected_max = std::max(expected_max, value);
        }
        const float tolerance = 1e-5f * static_cast<float>(size);
        CHECK(std::fabs(sum(a * b + 1.0f) - static_cast<float>(expected_sum)) <= tolerance);
        CHECK(max(a * b + 1.0f) == expected_max);
        CHECK(std::fabs(mean(a * b + 1.0f) - static_cast<float>(expected_sum / size)) <= 1e-5f);
    }
}

TEST_CASE("reductions of empty and NaN operands") {
    const Tensor<float> empty(Shape{0, 4});
    CHECK(sum(empty) == 0.0f);
    CHECK_THROWS_AS((void)max(empty), std::invalid_argument);
    CHECK_THROWS_AS((void)mean(empty), std::invalid_argument);

    for (std::int64_t position : {0, 5, 16, 33}) {
        CAPTURE(position);
        Tensor<float> a(Shape{34}, 1.0f);
        a[position] = std::numeric_limits<float>::quiet_NaN();
        CHECK(std::isnan(max(a)));
        CHECK(std::isnan(sum(a)));
    }
    Tensor<float> negative_infinity(Shape{3}, -std::numeric_limits<float>::infinity());
    CHECK(max(negative_infinity) == -std::numeric_limits<float>::infinity());
}

TEST_CASE("results do not depend on the thread count") {
    const Tensor<float> a = random_tensor(Shape{100003}, 17);
    const Tensor<float> b = random_tensor(Shape{100003}, 18);
    set_num_threads(1);
    Tensor<float> serial = exp(a) * b + a;
    const float serial_sum = sum(serial * b);
    const float serial_max = max(serial - b);
    set_num_threads(2);
    Tensor<float> threaded = exp(a) * b + a;
    const float threaded_sum = sum(threaded * b);
    const float threaded_max = max(threaded - b);
    set_num_threads(1);
    for (std::int64_t i = 0; i < a.numel(); ++i) REQUIRE(threaded[i] == serial[i]);
    CHECK(threaded_sum == serial_sum);
    CHECK(threaded_max == serial_max);
}

TEST_CASE("scalar-only map runs the scalar loop") {
    static_assert(!expr::is_vectorisable_v<decltype(map(std::declval<const Tensor<float>&>(),
                                                        ScalarOnlyTwice{}))>);
    static_assert(expr::is_vectorisable_v<decltype(std::declval<const Tensor<float>&>() + 1.0f)>);
    for (std::int64_t size : test_sizes) {
        CAPTURE(size);
        const Tensor<float> a = random_tensor(Shape{size}, 19);
        const Tensor<float> b = random_tensor(Shape{size}, 20);
        // One scalar-only node makes the whole tree scalar; the arithmetic around it must give
        // the same bits as the vectorised tree.
        Tensor<float> scalar = map(a, ScalarOnlyTwice{}) * b - b / 3.0f;
        Tensor<float> vectorised = (a * 2.0f) * b - b / 3.0f;
        for (std::int64_t i = 0; i < size; ++i) REQUIRE(scalar[i] == vectorised[i]);
        if (size > 0) {
            // The two sums add in different orders; bound the difference by the rounding
            // of a float sum of |values| <= 4.
            const float difference = sum(map(a, ScalarOnlyTwice{})) - 2.0f * sum(a);
            CHECK(std::fabs(difference) <= 1e-6f * 4.0f * static_cast<float>(size));
            CHECK(max(map(a, ScalarOnlyTwice{})) == 2.0f * max(a));
        }
    }
}

TEST_CASE("move-only map") {
    const Tensor<float> a = random_tensor(Shape{21}, 22);
    auto scale = std::make_unique<float>(3.0f);
    Tensor<float> result = map(a, [scale = std::move(scale)](float x) { return x * *scale; });
    for (std::int64_t i = 0; i < 21; ++i) CHECK(result[i] == a[i] * 3.0f);
}

TEST_CASE("lambda map") {
    const Tensor<float> a = random_tensor(Shape{50}, 21);
    const float offset = 0.25f;
    Tensor<float> result = map(a, [offset](float x) { return x * x + offset; });
    for (std::int64_t i = 0; i < 50; ++i) CHECK(result[i] == a[i] * a[i] + offset);
}

// ---------------------------------------------------------------------------------------
// Matrix products.

static_assert(has_matmul_kernel<Float32, Float32>);
static_assert(has_matmul_kernel<Ternary<2>, Int8<8>>);
static_assert(has_matmul_kernel<Ternary<2, Granularity::per_row>, Int8<8, Granularity::per_tensor>>);
static_assert(has_matmul_kernel<Ternary1_6<>, Int8<4>>);
static_assert(!has_matmul_kernel<Int8<8>, Ternary<2>>);
static_assert(!has_matmul_kernel<Ternary<2>, Float32>);
static_assert(!has_matmul_kernel<Float32, Int8<8>>);
static_assert(!has_matmul_kernel<Ternary<2>, Ternary1_6<>>);
static_assert(!has_matmul_kernel<Int8<8>, Int8<8>>);
static_assert(expr::select_matmul_kernel<Float32, Float32>() == expr::MatmulKernel::float_gemm);
static_assert(expr::select_matmul_kernel<Ternary1_6<Granularity::per_row>, Int8<8>>() ==
              expr::MatmulKernel::ternary_int8);

// Every pair the predicates accept has a kernel to call.
template <class WeightEnc, class ActivationEnc>
constexpr bool kernel_callable = requires(const QTensor<WeightEnc>& w,
                                          const QTensor<ActivationEnc>& x, TensorView<float> y) {
    matmul_into(w, x, y);
};
static_assert(kernel_callable<Ternary<2>, Int8<8>>);
static_assert(kernel_callable<Ternary<2, Granularity::per_row>, Int8<8, Granularity::per_tensor>>);
static_assert(kernel_callable<Ternary1_6<>, Int8<4>>);
static_assert(kernel_callable<Ternary1_6<Granularity::per_row>, Int8<8, Granularity::per_row>>);

// Holding: lvalue encoded tensors by reference, temporaries by value.
static_assert(std::is_same_v<decltype(matmul(std::declval<const QTensor<Ternary<2>>&>(),
                                             std::declval<QTensor<Int8<8>>&>())),
                             expr::MatmulNode<const QTensor<Ternary<2>>&, const QTensor<Int8<8>>&>>);
static_assert(std::is_same_v<decltype(matmul(std::declval<QTensor<Ternary<2>>>(),
                                             std::declval<QTensor<Int8<8>>>())),
                             expr::MatmulNode<QTensor<Ternary<2>>, QTensor<Int8<8>>>>);
static_assert(std::is_same_v<decltype(matmul(std::declval<Tensor<float>&>(),
                                             std::declval<Tensor<float>>())),
                             expr::MatmulNode<expr::TensorRefLeaf, expr::TensorValueLeaf>>);

namespace {

struct ProductShape {
    std::int64_t out;
    std::int64_t in;
    std::int64_t tokens;
};

// Small, odd and padded shapes: one weight row group (16 rows), chunks of 16 and 20 columns,
// the int8 row stride of 320, and no tokens at all.
const std::vector<ProductShape> product_shapes = {
    {1, 1, 1}, {17, 33, 3}, {16, 320, 2}, {48, 321, 5}, {5, 1000, 1}, {33, 64, 0}};

Tensor<float> float_product(const Tensor<float>& w, const Tensor<float>& x) {
    Tensor<float> y(Shape{x.rows(), w.rows()});
    for (std::int64_t token = 0; token < x.rows(); ++token)
        for (std::int64_t row = 0; row < w.rows(); ++row) {
            double total = 0.0;
            for (std::int64_t col = 0; col < w.cols(); ++col)
                total += static_cast<double>(x(token, col)) * w(row, col);
            y(token, row) = static_cast<float>(total);
        }
    return y;
}

}  // namespace

TEST_CASE_TEMPLATE("encoded product matches the kernel reference", WeightEnc, Ternary<2>,
                   Ternary<2, Granularity::per_row>, Ternary1_6<>,
                   Ternary1_6<Granularity::per_row>) {
    for (const ProductShape& shape : product_shapes) {
        CAPTURE(shape.out);
        CAPTURE(shape.in);
        CAPTURE(shape.tokens);
        const Tensor<float> weights = random_tensor(Shape{shape.out, shape.in}, 30);
        const Tensor<float> activations = random_tensor(Shape{shape.tokens, shape.in}, 31);
        const auto w = quantize_ternary<WeightEnc>(weights);
        const auto x = quantize_int8(activations);
        const auto x_per_tensor = quantize_int8<Int8<8, Granularity::per_tensor>>(activations);
        const auto x_4bit = quantize_int8<Int8<4>>(activations);

        Tensor<float> expected(Shape{shape.tokens, shape.out});
        Tensor<float> expected_per_tensor(Shape{shape.tokens, shape.out});
        Tensor<float> expected_4bit(Shape{shape.tokens, shape.out});
        matmul_into_ref(w, x, expected.view());
        matmul_into_ref(w, x_per_tensor, expected_per_tensor.view());
        matmul_into_ref(w, x_4bit, expected_4bit.view());

        Tensor<float> y = matmul(w, x);
        Tensor<float> y_per_tensor = eval(matmul(w, x_per_tensor));
        Tensor<float> y_4bit(Shape{shape.tokens, shape.out}, -1.0f);
        assign(y_4bit, matmul(w, x_4bit));
        REQUIRE(y.shape() == expected.shape());
        // The integer dot products are exact, so the kernel and the reference agree bit for bit.
        for (std::int64_t i = 0; i < y.numel(); ++i) {
            REQUIRE(y[i] == expected[i]);
            REQUIRE(y_per_tensor[i] == expected_per_tensor[i]);
            REQUIRE(y_4bit[i] == expected_4bit[i]);
        }
    }
}

TEST_CASE("encoded temporaries are held by value") {
    const Tensor<float> weights = random_tensor(Shape{20, 40}, 32);
    const Tensor<float> activations = random_tensor(Shape{3, 40}, 33);
    auto product = matmul(quantize_ternary<Ternary<2>>(weights), quantize_int8(activations));
    std::vector<float> padding(4096, 7.0f);  // reuse the freed heap if anything dangles
    Tensor<float> y = product;

    const auto w = quantize_ternary<Ternary<2>>(weights);
    const auto x = quantize_int8(activations);
    Tensor<float> expected(Shape{3, 20});
    matmul_into_ref(w, x, expected.view());
    for (std::int64_t i = 0; i < y.numel(); ++i) CHECK(y[i] == expected[i]);
}

TEST_CASE("float product matches a double loop") {
    for (const ProductShape& shape : product_shapes) {
        CAPTURE(shape.out);
        CAPTURE(shape.in);
        CAPTURE(shape.tokens);
        const Tensor<float> weights = random_tensor(Shape{shape.out, shape.in}, 34);
        const Tensor<float> activations = random_tensor(Shape{shape.tokens, shape.in}, 35);
        const Tensor<float> expected = float_product(weights, activations);
        Tensor<float> y = matmul(weights, activations);
        REQUIRE(y.shape() == expected.shape());
        const float tolerance = 1e-5f * static_cast<float>(shape.in);
        for (std::int64_t i = 0; i < y.numel(); ++i) REQUIRE(std::fabs(y[i] - expected[i]) <= tolerance);
    }
}

TEST_CASE("float product keeps leading axes") {
    const Tensor<float> weights = random_tensor(Shape{6, 10}, 36);
    Tensor<float> activations = random_tensor(Shape{2, 3, 10}, 37);
    Tensor<float> y = matmul(weights, activations);
    REQUIRE(y.shape() == Shape{2, 3, 6});
    Tensor<float> flat_activations = activations;
    flat_activations.reshape(Shape{6, 10});
    const Tensor<float> expected = float_product(weights, flat_activations);
    for (std::int64_t i = 0; i < y.numel(); ++i) CHECK(std::fabs(y[i] - expected[i]) <= 1e-4f);

    Tensor<float> single = matmul(weights, Tensor<float>(Shape{10}, 1.0f));
    CHECK(single.shape() == Shape{6});
}

TEST_CASE("float product of an expression operand") {
    const Tensor<float> weights = random_tensor(Shape{7, 12}, 38);
    const Tensor<float> activations = random_tensor(Shape{4, 12}, 39);
    Tensor<float> scaled = activations * 0.5f + 1.0f;
    const Tensor<float> expected = float_product(weights, scaled);
    Tensor<float> y = matmul(weights, activations * 0.5f + 1.0f);
    for (std::int64_t i = 0; i < y.numel(); ++i) CHECK(std::fabs(y[i] - expected[i]) <= 1e-4f);
}

TEST_CASE("product shape mismatch names both shapes") {
    const Tensor<float> weights(Shape{8, 16});
    const Tensor<float> activations(Shape{3, 15});
    try {
        auto product = matmul(weights, activations);
        (void)product;
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        const std::string message = error.what();
        CHECK(message.find("[8, 16]") != std::string::npos);
        CHECK(message.find("[3, 15]") != std::string::npos);
    }
    const auto w = quantize_ternary<Ternary<2>>(random_tensor(Shape{8, 16}, 40));
    const auto x = quantize_int8(random_tensor(Shape{3, 17}, 41));
    CHECK_THROWS_AS((void)matmul(w, x), shape_error);
    // Weights must be a matrix.
    CHECK_THROWS_AS((void)matmul(Tensor<float>(Shape{2, 8, 16}), activations), shape_error);

    const auto x_fit = quantize_int8(random_tensor(Shape{3, 16}, 42));
    Tensor<float> wrong(Shape{8, 3});
    CHECK_THROWS_AS(assign(wrong, matmul(w, x_fit)), shape_error);
}

TEST_CASE("product into its own operand is rejected") {
    Tensor<float> square = random_tensor(Shape{6, 6}, 43);
    const Tensor<float> other = random_tensor(Shape{6, 6}, 44);
    CHECK_THROWS_AS(assign(square, matmul(other, square)), std::invalid_argument);
    CHECK_THROWS_AS(assign(square, matmul(square, other)), std::invalid_argument);
    CHECK_THROWS_AS(assign(square.view().row_range(2, 4), matmul(other, square.view().row_range(0, 4))),
                    std::invalid_argument);
    // Through an expression operand too: its leaves count as operands.
    CHECK_THROWS_AS(assign(square, matmul(other, square * 2.0f)), std::invalid_argument);
    Tensor<float> separate(Shape{6, 6});
    CHECK_NOTHROW(assign(separate, matmul(other, square)));
}

TEST_CASE("assigning a product allocates no tensor") {
    const Tensor<float> weights = random_tensor(Shape{32, 64}, 45);
    const Tensor<float> activations = random_tensor(Shape{4, 64}, 46);
    const auto w = quantize_ternary<Ternary<2>>(weights);
    const auto x = quantize_int8(activations);
    Tensor<float> y(Shape{4, 32});
    const std::uint64_t before = buffer_allocations();
    assign(y, matmul(w, x));
    assign(y, matmul(weights, activations));
    CHECK(buffer_allocations() == before);
    assign(y, matmul(weights, activations * 2.0f));  // the expression operand needs a buffer
    CHECK(buffer_allocations() == before + 1);
}
