// Ternary x int8 kernels against their scalar reference twins, on every instruction-set
// path this CPU runs, and the Eigen float product.
#include <doctest/doctest.h>

#include <bitdistill/core/isa.hpp>
#include <bitdistill/core/parallel.hpp>
#include <bitdistill/kernels/float_matmul.hpp>
#include <bitdistill/kernels/reference.hpp>
#include <bitdistill/kernels/ternary_matmul.hpp>
#include <bitdistill/quant/packing.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

using namespace bitdistill;

namespace {

using Ternary2 = Ternary<2, Granularity::per_tensor>;
using Ternary2Row = Ternary<2, Granularity::per_row>;
using Ternary16 = Ternary1_6<Granularity::per_tensor>;
using Ternary16Row = Ternary1_6<Granularity::per_row>;
using Int8Token = Int8<8, Granularity::per_token>;
using Int8Tensor = Int8<8, Granularity::per_tensor>;

bool small_scale() {
    const char* scale = std::getenv("BITDISTILL_TEST_SCALE");
    return scale != nullptr && std::string(scale) == "small";
}

/// Returns the paths this CPU can run, scalar first.
std::vector<Isa> runnable_paths() {
    std::vector<Isa> paths;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512vnni})
        if (isa_supported(isa)) paths.push_back(isa);
    return paths;
}

/// Restores the detected path and one thread when a test ends, even on failure.
struct PathGuard {
    ~PathGuard() {
        force_isa(detected_isa());
        set_num_threads(1);
    }
};

enum class Fill { random, all_min, all_max, all_zero, alternating };

const char* fill_name(Fill fill) {
    switch (fill) {
        case Fill::random: return "random";
        case Fill::all_min: return "all -128";
        case Fill::all_max: return "all 127";
        case Fill::all_zero: return "all 0";
        case Fill::alternating: return "alternating -128/127";
    }
    return "?";
}

template <class Enc>
QTensor<Enc> random_activations(std::mt19937& rng, std::int64_t tokens, std::int64_t cols,
                                Fill fill) {
    std::uniform_int_distribution<int> code(Enc::min_value, Enc::max_value);
    std::uniform_real_distribution<float> scale(0.01f, 2.0f);
    std::vector<std::int8_t> codes(static_cast<std::size_t>(tokens * cols));
    for (std::size_t i = 0; i < codes.size(); ++i) {
        int value = 0;
        switch (fill) {
            case Fill::random: value = code(rng); break;
            case Fill::all_min: value = Enc::min_value; break;
            case Fill::all_max: value = Enc::max_value; break;
            case Fill::all_zero: value = 0; break;
            case Fill::alternating: value = i % 2 == 0 ? Enc::min_value : Enc::max_value; break;
        }
        codes[i] = static_cast<std::int8_t>(value);
    }
    std::vector<float> scales(Enc::granularity == Granularity::per_tensor ? 1 : tokens);
    for (float& s : scales) s = scale(rng);
    return QTensor<Enc>::from_codes(tokens, cols, codes, scales);
}

/// Random ternary weights; `bias` in {-1, 0, 1} makes every weight that value instead.
template <class Enc>
QTensor<Enc> random_weights(std::mt19937& rng, std::int64_t rows, std::int64_t cols, int bias,
                            bool random) {
    std::uniform_int_distribution<int> pick(-1, 1);
    std::uniform_real_distribution<float> scale(0.01f, 2.0f);
    std::vector<std::int8_t> values(static_cast<std::size_t>(rows * cols));
    for (auto& value : values) value = static_cast<std::int8_t>(random ? pick(rng) : bias);
    std::vector<float> scales(Enc::granularity == Granularity::per_tensor ? 1 : rows);
    for (float& s : scales) s = scale(rng);
    return pack_ternary<Enc>(values, rows, cols, scales);
}

struct Case {
    std::int64_t rows;
    std::int64_t cols;
    std::int64_t tokens;
    Fill fill;
    int weight_bias;  // used when weights are not random
    bool random_weights;
};

/// Shapes around every block boundary of the kernels: register widths (16, 32, 64 bytes),
/// chunks (16 and 20 columns), row groups (16 rows), token tiles, and 1.
std::vector<Case> make_cases(std::mt19937& rng, int count) {
    const std::int64_t edge_cols[] = {1,  2,  3,   4,   5,   15,  16,  17,  19,  20,  21,  31,
                                      32, 33, 63,  64,  65,  79,  80,  81,  127, 128, 129, 255,
                                      256, 257, 319, 320, 321, 639, 640, 641, 1000, 1283};
    const std::int64_t edge_rows[] = {1,  2,  3,  7,  15, 16, 17, 31, 32,
                                      33, 47, 48, 49, 63, 64, 65, 100};
    const std::int64_t edge_tokens[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 24, 25, 33};
    std::uniform_int_distribution<std::size_t> pick_cols(0, std::size(edge_cols) - 1);
    std::uniform_int_distribution<std::size_t> pick_rows(0, std::size(edge_rows) - 1);
    std::uniform_int_distribution<std::size_t> pick_tokens(0, std::size(edge_tokens) - 1);
    std::uniform_int_distribution<std::int64_t> any_cols(1, 700);
    std::uniform_int_distribution<std::int64_t> any_rows(1, 70);
    std::uniform_int_distribution<std::int64_t> any_tokens(1, 20);
    std::uniform_int_distribution<int> pick_fill(0, 9);
    std::uniform_int_distribution<int> pick_bias(-1, 1);

    std::vector<Case> cases;
    for (int i = 0; i < count; ++i) {
        Case c{};
        c.rows = i % 2 == 0 ? edge_rows[pick_rows(rng)] : any_rows(rng);
        c.cols = i % 3 == 0 ? any_cols(rng) : edge_cols[pick_cols(rng)];
        c.tokens = i % 4 == 0 ? any_tokens(rng) : edge_tokens[pick_tokens(rng)];
        if (i % 5 == 0) c.tokens = 1;  // the GEMV path
        const int fill = pick_fill(rng);
        c.fill = fill < 6 ? Fill::random : static_cast<Fill>(fill - 5);
        c.random_weights = i % 7 != 0;
        c.weight_bias = pick_bias(rng);
        cases.push_back(c);
    }
    return cases;
}

template <class T>
bool same_bits(const Tensor<T>& a, const Tensor<T>& b) {
    if (a.numel() != b.numel()) return false;
    for (std::int64_t i = 0; i < a.numel(); ++i)
        if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i])) return false;
    return true;
}

/// Runs one case on every path and thread count and compares with the reference twins.
template <class WeightEnc, class ActivationEnc>
void check_case(const Case& c, std::mt19937& rng, int index) {
    const auto w = random_weights<WeightEnc>(rng, c.rows, c.cols, c.weight_bias, c.random_weights);
    const auto x = random_activations<ActivationEnc>(rng, c.tokens, c.cols, c.fill);
    Tensor<std::int32_t> expected_raw(Shape{c.tokens, c.rows});
    Tensor<float> expected(Shape{c.tokens, c.rows});
    matmul_int32_into_ref(w, x, expected_raw.view());
    matmul_into_ref(w, x, expected.view());

    for (Isa isa : runnable_paths()) {
        force_isa(isa);
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            CAPTURE(index);
            CAPTURE(isa_name(isa));
            CAPTURE(threads);
            CAPTURE(c.rows);
            CAPTURE(c.cols);
            CAPTURE(c.tokens);
            CAPTURE(fill_name(c.fill));
            Tensor<std::int32_t> raw(Shape{c.tokens, c.rows}, 12345);
            Tensor<float> scaled(Shape{c.tokens, c.rows}, -1.0f);
            matmul_int32_into(w, x, raw.view());
            matmul_into(w, x, scaled.view());
            CHECK(same_bits(raw, expected_raw));
            CHECK(same_bits(scaled, expected));
        }
    }
}

}  // namespace

TEST_CASE_TEMPLATE("ternary x int8 paths match the reference", WeightEnc, Ternary2, Ternary2Row,
                   Ternary16, Ternary16Row) {
    PathGuard guard;
    std::mt19937 rng(2024);
    // 1000 shapes per weight encoding in release; each runs on every path, 1 and 2 threads.
    const int count = small_scale() ? 60 : 1000;
    const auto cases = make_cases(rng, count);
    for (std::size_t i = 0; i < cases.size(); ++i) {
        if (i % 3 == 0)
            check_case<WeightEnc, Int8Tensor>(cases[i], rng, static_cast<int>(i));
        else
            check_case<WeightEnc, Int8Token>(cases[i], rng, static_cast<int>(i));
    }
}

TEST_CASE_TEMPLATE("extreme activations on every path", WeightEnc, Ternary2, Ternary16) {
    PathGuard guard;
    std::mt19937 rng(7);
    // All -128 against all +1 or all -1 weights gives the largest magnitude per column.
    for (Fill fill : {Fill::all_min, Fill::all_max, Fill::all_zero, Fill::alternating})
        for (int bias : {-1, 0, 1})
            for (std::int64_t cols : {1, 16, 20, 33, 320, 4099})
                for (std::int64_t tokens : {1, 5, 13})
                    check_case<WeightEnc, Int8Token>(Case{33, cols, tokens, fill, bias, false}, rng,
                                                     static_cast<int>(cols));
}

TEST_CASE_TEMPLATE("long rows keep int32 sums exact", WeightEnc, Ternary2, Ternary16) {
    // Beyond the 2^16 columns after which wide accumulators must be drained.
    PathGuard guard;
    std::mt19937 rng(8);
    const std::int64_t cols = small_scale() ? 70001 : 140001;
    for (Fill fill : {Fill::all_min, Fill::all_max, Fill::random}) {
        check_case<WeightEnc, Int8Token>(Case{17, cols, 1, fill, 1, false}, rng, 0);
        check_case<WeightEnc, Int8Token>(Case{17, cols, 1, fill, -1, false}, rng, 1);
        check_case<WeightEnc, Int8Token>(Case{17, cols, 3, fill, -1, false}, rng, 2);
    }
}

TEST_CASE("ternary matmul of quantized floats matches the float product") {
    // End to end: quantize, multiply, and compare with the float product of the
    // dequantized operands (equal up to float rounding).
    PathGuard guard;
    std::mt19937 rng(9);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    Tensor<float> w(Shape{40, 77});
    Tensor<float> x(Shape{6, 77});
    for (float& v : w) v = normal(rng) * 0.05f;
    for (float& v : x) v = normal(rng);
    const auto wq = quantize_ternary<Ternary2Row>(w.view());
    const auto xq = quantize_int8<Int8Token>(x.view());
    const auto w_fake = dequantize(wq);
    const auto x_fake = dequantize(xq);
    Tensor<float> expected(Shape{6, 40});
    matmul_into(w_fake.view(), x_fake.view(), expected.view());
    for (Isa isa : runnable_paths()) {
        force_isa(isa);
        Tensor<float> y(Shape{6, 40});
        matmul_into(wq, xq, y.view());
        for (std::int64_t i = 0; i < y.numel(); ++i)
            CHECK(y[i] == doctest::Approx(expected[i]).epsilon(1e-4).scale(1.0));
    }
}

TEST_CASE("ternary matmul rejects mismatched shapes") {
    const QTensor<Ternary2> w(8, 10);
    const QTensor<Int8Token> x(3, 11);
    Tensor<float> y(Shape{3, 8});
    CHECK_THROWS_AS(matmul_into(w, x, y.view()), shape_error);
    const QTensor<Int8Token> x_ok(3, 10);
    Tensor<float> y_bad(Shape{3, 9});
    CHECK_THROWS_AS(matmul_into(w, x_ok, y_bad.view()), shape_error);
    Tensor<std::int32_t> y_raw_bad(Shape{4, 8});
    CHECK_THROWS_AS(matmul_int32_into(w, x_ok, y_raw_bad.view()), shape_error);
}

TEST_CASE("ternary matmul of empty shapes writes nothing") {
    const QTensor<Ternary16> w(5, 0);
    const QTensor<Int8Token> x(2, 0);
    Tensor<std::int32_t> y(Shape{2, 5}, 7);
    matmul_int32_into(w, x, y.view());
    for (std::int32_t v : y) CHECK(v == 0);
}

TEST_CASE("float matmul matches a plain loop") {
    std::mt19937 rng(10);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (std::int64_t tokens : {1, 3, 17}) {
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            Tensor<float> w(Shape{67, 45});
            Tensor<float> x(Shape{tokens, 45});
            for (float& v : w) v = normal(rng);
            for (float& v : x) v = normal(rng);
            Tensor<float> y(Shape{tokens, 67});
            matmul_into(w.view(), x.view(), y.view());
            for (std::int64_t t = 0; t < tokens; ++t)
                for (std::int64_t r = 0; r < 67; ++r) {
                    double sum = 0.0;
                    for (std::int64_t k = 0; k < 45; ++k) sum += double{x(t, k)} * w(r, k);
                    CHECK(y(t, r) == doctest::Approx(sum).epsilon(1e-4).scale(1.0));
                }
        }
    }
    set_num_threads(1);
    Tensor<float> w(Shape{4, 5});
    Tensor<float> x(Shape{2, 6});
    Tensor<float> y(Shape{2, 4});
    CHECK_THROWS_AS(matmul_into(w.view(), x.view(), y.view()), shape_error);
}
