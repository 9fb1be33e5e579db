// Quantizers, packing and the encoded tensor types (quant/).
#include <doctest/doctest.h>

#include <bitdistill/core/alloc_counter.hpp>
#include <bitdistill/core/parallel.hpp>
#include <bitdistill/quant/packing.hpp>
#include <bitdistill/quant/qtensor.hpp>
#include <bitdistill/quant/quantize_int8.hpp>
#include <bitdistill/quant/quantize_ternary.hpp>
#include <bitdistill/quant/rounding.hpp>

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
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

bool small_scale() {
    const char* scale = std::getenv("BITDISTILL_TEST_SCALE");
    return scale != nullptr && std::string(scale) == "small";
}

Tensor<float> make_tensor(std::int64_t rows, std::int64_t cols, const std::vector<float>& values) {
    Tensor<float> tensor(Shape{rows, cols});
    REQUIRE(static_cast<std::int64_t>(values.size()) == rows * cols);
    for (std::size_t i = 0; i < values.size(); ++i)
        tensor[static_cast<std::int64_t>(i)] = values[i];
    return tensor;
}

Tensor<float> random_tensor(std::mt19937& rng, std::int64_t rows, std::int64_t cols, float spread) {
    std::normal_distribution<float> normal(0.0f, spread);
    Tensor<float> tensor(Shape{rows, cols});
    for (float& value : tensor) value = normal(rng);
    return tensor;
}

std::vector<std::int8_t> random_ternary(std::mt19937& rng, std::int64_t count) {
    std::uniform_int_distribution<int> pick(-1, 1);
    std::vector<std::int8_t> values(static_cast<std::size_t>(count));
    for (auto& value : values) value = static_cast<std::int8_t>(pick(rng));
    return values;
}

template <class Enc>
std::vector<int> ternary_values(const QTensor<Enc>& q) {
    std::vector<int> values;
    for (std::int64_t row = 0; row < q.rows(); ++row)
        for (std::int64_t col = 0; col < q.cols(); ++col) values.push_back(q.value(row, col));
    return values;
}

template <class Enc>
std::vector<int> int8_codes(const QTensor<Enc>& q) {
    std::vector<int> codes;
    for (std::int64_t row = 0; row < q.rows(); ++row)
        for (std::int64_t col = 0; col < q.cols(); ++col) codes.push_back(q.value(row, col));
    return codes;
}

}  // namespace

TEST_CASE("trits5 codec round-trips all 243 bytes") {
    for (int base3 = 0; base3 < 243; ++base3) {
        std::uint8_t codes[5];
        int rest = base3;
        for (int k = 4; k >= 0; --k) {
            codes[k] = static_cast<std::uint8_t>(rest % 3);
            rest /= 3;
        }
        const std::uint8_t byte = encode_trits5(codes);
        // q = ceil(base3 * 256 / 243), computed independently.
        CHECK(int{byte} == (base3 * 256 + 242) / 243);
        std::uint8_t decoded[5];
        decode_trits5(byte, decoded);
        for (int k = 0; k < 5; ++k) CHECK(int{decoded[k]} == int{codes[k]});

        // The comparison form of the digit that the SIMD paths use.
        unsigned fraction = byte;
        for (int k = 0; k < 5; ++k) {
            const int by_compare = (fraction >= 86 ? 1 : 0) + (fraction >= 171 ? 1 : 0);
            CHECK(by_compare == int{codes[k]});
            fraction = (fraction * 3u) & 0xFFu;
        }
    }
}

TEST_CASE("2-bit layout puts a code where the header says") {
    QTensor<Ternary2> q(20, 40);
    CHECK(q.groups() == 2);
    CHECK(q.chunks() == 3);
    CHECK(q.padded_rows() == 32);
    CHECK(q.padded_cols() == 48);
    for (std::uint8_t byte : q.bytes()) CHECK(int{byte} == 0x55);

    // (17, 37): group 1, row 1 of the group, chunk 2, column 5 of the chunk = field 1, lane 1.
    q.set_value(17, 37, -1);
    const std::size_t offset = (1 * 3 + 2) * 64 + 4 * 1 + 1;
    CHECK(int{q.bytes()[offset]} == (0x55 & ~(3 << 2)));
    q.set_value(17, 37, 1);
    CHECK(int{q.bytes()[offset]} == ((0x55 & ~(3 << 2)) | (2 << 2)));
    CHECK(q.value(17, 37) == 1);
    for (std::size_t i = 0; i < q.bytes().size(); ++i)
        if (i != offset) CHECK(int{q.bytes()[i]} == 0x55);
}

TEST_CASE("1.6-bit layout puts a code where the header says") {
    QTensor<Ternary16> q(18, 45);
    CHECK(q.groups() == 2);
    CHECK(q.chunks() == 3);
    CHECK(q.padded_cols() == 60);
    for (std::uint8_t byte : q.bytes()) CHECK(int{byte} == 128);

    // (16, 27): group 1, row 0, chunk 1, column 7 of the chunk = field 1, lane 3.
    q.set_value(16, 27, 1);
    const std::size_t offset = (1 * 3 + 1) * 64 + 4 * 0 + 3;
    CHECK(int{q.bytes()[offset]} == int{encode_trits5({1, 2, 1, 1, 1})});
    CHECK(q.value(16, 27) == 1);
    CHECK(q.value(16, 26) == 0);
}

TEST_CASE_TEMPLATE("pack and unpack round-trip", Enc, Ternary2, Ternary2Row, Ternary16,
                   Ternary16Row) {
    std::mt19937 rng(1234);
    const int cases = small_scale() ? 40 : 300;
    std::uniform_int_distribution<std::int64_t> extent(1, 90);
    for (int i = 0; i < cases; ++i) {
        const std::int64_t rows = extent(rng);
        const std::int64_t cols = i % 3 == 0 ? extent(rng) * 7 : extent(rng);
        const auto values = random_ternary(rng, rows * cols);
        std::vector<float> scales(Enc::granularity == Granularity::per_tensor ? 1 : rows);
        for (std::size_t s = 0; s < scales.size(); ++s) scales[s] = 0.5f + static_cast<float>(s);

        const auto packed = pack_ternary<Enc>(values, rows, cols, scales);
        CHECK(packed.rows() == rows);
        CHECK(packed.cols() == cols);
        const auto unpacked = unpack_ternary(packed);
        REQUIRE(unpacked.size() == values.size());
        CHECK(unpacked == values);
        for (std::size_t s = 0; s < scales.size(); ++s) CHECK(packed.scales()[s] == scales[s]);
        for (std::int64_t r = 0; r < rows; r += 7)
            for (std::int64_t c = 0; c < cols; c += 5)
                CHECK(packed.value(r, c) == values[static_cast<std::size_t>(r * cols + c)]);
    }
}

TEST_CASE("padding codes mean weight 0 in both storages") {
    std::mt19937 rng(99);
    const auto values = random_ternary(rng, 17 * 23);
    const float scale = 1.0f;
    const auto two_bit = pack_ternary<Ternary2>(values, 17, 23, {&scale, 1});
    const auto one_six = pack_ternary<Ternary16>(values, 17, 23, {&scale, 1});
    // Padding rows 17..31 and columns 23..31 (2-bit) or 23..39 (1.6-bit) hold code 1.
    for (std::int64_t group = 0; group < two_bit.groups(); ++group)
        for (std::int64_t chunk = 0; chunk < two_bit.chunks(); ++chunk)
            for (int row = 0; row < 16; ++row)
                for (int lane = 0; lane < 4; ++lane)
                    for (int field = 0; field < 4; ++field) {
                        const std::int64_t r = group * 16 + row;
                        const std::int64_t c = chunk * 16 + 4 * field + lane;
                        if (r < 17 && c < 23) continue;
                        const std::uint8_t byte = two_bit.chunk(group, chunk)[4 * row + lane];
                        const int code = (byte >> (2 * field)) & 3;
                        CHECK(code == 1);
                    }
    for (std::int64_t group = 0; group < one_six.groups(); ++group)
        for (std::int64_t chunk = 0; chunk < one_six.chunks(); ++chunk)
            for (int row = 0; row < 16; ++row)
                for (int lane = 0; lane < 4; ++lane) {
                    std::uint8_t codes[5];
                    decode_trits5(one_six.chunk(group, chunk)[4 * row + lane], codes);
                    for (int field = 0; field < 5; ++field) {
                        const std::int64_t r = group * 16 + row;
                        const std::int64_t c = chunk * 20 + 4 * field + lane;
                        if (r < 17 && c < 23) continue;
                        CHECK(int{codes[field]} == 1);
                    }
                }
}

TEST_CASE("convert_ternary keeps values and scales") {
    std::mt19937 rng(5);
    const auto w = random_tensor(rng, 37, 101, 0.3f);
    const auto two_bit = quantize_ternary<Ternary2Row>(w.view());
    const auto one_six = convert_ternary<Ternary16Row>(two_bit);
    CHECK(ternary_values(one_six) == ternary_values(two_bit));
    const auto back = convert_ternary<Ternary2Row>(one_six);
    CHECK(std::vector<std::uint8_t>(back.bytes().begin(), back.bytes().end()) ==
          std::vector<std::uint8_t>(two_bit.bytes().begin(), two_bit.bytes().end()));
    for (std::int64_t r = 0; r < 37; ++r) CHECK(one_six.scale(r) == two_bit.scale(r));
}

TEST_CASE_TEMPLATE("from_bytes restores packed weights", Enc, Ternary2Row, Ternary16Row) {
    std::mt19937 rng(77);
    const auto w = random_tensor(rng, 19, 45, 1.0f);
    const auto packed = quantize_ternary<Enc>(w.view());
    const std::vector<std::uint8_t> bytes(packed.bytes().begin(), packed.bytes().end());
    const std::vector<float> scales(packed.scales().begin(), packed.scales().end());
    const auto restored = QTensor<Enc>::from_bytes(19, 45, bytes, scales);
    CHECK(ternary_values(restored) == ternary_values(packed));
    for (std::int64_t r = 0; r < 19; ++r) CHECK(restored.scale(r) == packed.scale(r));

    // One byte short, one scale short.
    const std::vector<std::uint8_t> short_bytes(bytes.begin(), bytes.end() - 1);
    CHECK_THROWS_AS((void)QTensor<Enc>::from_bytes(19, 45, short_bytes, scales),
                    std::invalid_argument);
    const std::vector<float> short_scales(scales.begin(), scales.end() - 1);
    CHECK_THROWS_AS((void)QTensor<Enc>::from_bytes(19, 45, bytes, short_scales),
                    std::invalid_argument);
}

TEST_CASE("from_bytes rejects bytes outside the format") {
    const std::vector<float> scale = {1.0f};
    // 2-bit: 0xFF has code 3 in every field.
    std::vector<std::uint8_t> two_bit(64, 0x55);
    two_bit[5] = 0xFF;
    CHECK_THROWS_AS((void)QTensor<Ternary2>::from_bytes(1, 1, two_bit, scale),
                    std::invalid_argument);
    two_bit[5] = 0xAA;  // code 2 everywhere: valid
    CHECK_NOTHROW((void)QTensor<Ternary2>::from_bytes(1, 1, two_bit, scale));

    // 1.6-bit: exactly 243 of the 256 byte values encode five codes.
    int valid = 0;
    for (int byte = 0; byte < 256; ++byte) {
        std::vector<std::uint8_t> one_six(64, 128);
        one_six[0] = static_cast<std::uint8_t>(byte);
        try {
            (void)QTensor<Ternary16>::from_bytes(1, 1, one_six, scale);
            ++valid;
        } catch (const std::invalid_argument&) {
        }
    }
    CHECK(valid == 243);
}

TEST_CASE("pack_ternary rejects values outside {-1, 0, 1}") {
    const std::vector<std::int8_t> values = {0, 1, 2, -1};
    const float scale = 1.0f;
    CHECK_THROWS_AS((void)pack_ternary<Ternary2>(values, 2, 2, {&scale, 1}), std::invalid_argument);
    QTensor<Ternary16> q(2, 2);
    CHECK_THROWS_AS(q.set_value(0, 0, -2), std::invalid_argument);
}

TEST_CASE("too many columns are rejected") {
    // The int32 bound of the kernels needs cols <= max_encoded_cols.
    CHECK_THROWS_AS(QTensor<Ternary2>(1, max_encoded_cols + 1), std::invalid_argument);
    CHECK_THROWS_AS(QTensor<Int8Token>(1, max_encoded_cols + 1), std::invalid_argument);
}

TEST_CASE("round_half_even matches std::nearbyint") {
    for (int quarter = -2000; quarter <= 2000; ++quarter) {
        const float value = static_cast<float>(quarter) * 0.25f;
        CHECK(round_half_even(value) == std::nearbyint(value));
    }
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-300.0f, 300.0f);
    for (int i = 0; i < 10000; ++i) {
        const float value = uniform(rng);
        CHECK(round_half_even(value) == std::nearbyint(value));
    }
    CHECK(round_half_even(0.5f) == 0.0f);
    CHECK(round_half_even(1.5f) == 2.0f);
    CHECK(round_half_even(2.5f) == 2.0f);
    CHECK(round_half_even(-2.5f) == -2.0f);
    CHECK(round_half_even(127.5f) == 128.0f);
    CHECK(round_half_even(-128.5f) == -128.0f);
}

TEST_CASE("ternary absmean on hand-computed values") {
    // sum |W| = 8 over 8 weights, so delta = 1 and 1 / delta is exact.
    const auto w = make_tensor(2, 4, {0.5f, -0.5f, 1.5f, -1.5f, 0.0f, 0.25f, 2.0f, -1.75f});
    const auto q = quantize_ternary<Ternary2>(w.view());
    REQUIRE(q.scales().size() == 1);
    CHECK(q.scale(0) == 1.0f);
    // 0.5 and -0.5 round to even (0), 1.5 rounds to 2 and clamps to 1.
    CHECK(ternary_values(q) == std::vector<int>{0, 0, 1, -1, 0, 0, 1, -1});
    const auto dequantized = dequantize(q);
    CHECK(dequantized[2] == 1.0f);
    CHECK(dequantized[3] == -1.0f);
}

TEST_CASE("ternary per-row and per-tensor scales differ") {
    // Row means 1 and 2; tensor mean 1.5.
    const auto w = make_tensor(2, 4, {1.0f, -1.0f, 1.0f, -1.0f, 4.0f, 1.0f, -2.0f, 1.0f});
    const auto per_row = quantize_ternary<Ternary2Row>(w.view());
    REQUIRE(per_row.scales().size() == 2);
    CHECK(per_row.scale(0) == 1.0f);
    CHECK(per_row.scale(1) == 2.0f);
    // Row 1 under delta 2: 2 -> 1, 0.5 -> 0 (half to even), -1, 0.5 -> 0.
    CHECK(ternary_values(per_row) == std::vector<int>{1, -1, 1, -1, 1, 0, -1, 0});

    const auto per_tensor = quantize_ternary<Ternary16>(w.view());
    REQUIRE(per_tensor.scales().size() == 1);
    CHECK(per_tensor.scale(0) == 1.5f);
    // Under delta 1.5 every weight has |w / delta| >= 2/3, so all are +-1.
    CHECK(ternary_values(per_tensor) == std::vector<int>{1, -1, 1, -1, 1, 1, -1, 1});
}

TEST_CASE("ternary of all zeros uses the minimum scale") {
    Tensor<float> w(Shape{3, 5});
    const auto q = quantize_ternary<Ternary2Row>(w.view());
    for (std::int64_t r = 0; r < 3; ++r) CHECK(q.scale(r) == min_quant_scale);
    for (int value : ternary_values(q)) CHECK(value == 0);
    for (float value : dequantize(q)) CHECK(value == 0.0f);
}

TEST_CASE("ternary with one huge weight") {
    Tensor<float> w(Shape{4, 8}, 1.0f);
    w(2, 3) = 1e30f;
    const auto q = quantize_ternary<Ternary2>(w.view());
    // delta = (1e30 + 31) / 32, so only the huge weight survives.
    CHECK(q.scale(0) == doctest::Approx(1e30 / 32).epsilon(1e-6));
    for (std::int64_t r = 0; r < 4; ++r)
        for (std::int64_t c = 0; c < 8; ++c) CHECK(q.value(r, c) == (r == 2 && c == 3 ? 1 : 0));

    Tensor<float> extreme(Shape{1, 2});
    extreme[0] = FLT_MAX;
    extreme[1] = -FLT_MAX;
    const auto q_extreme = quantize_ternary<Ternary16>(extreme.view());
    CHECK(ternary_values(q_extreme) == std::vector<int>{1, -1});
    CHECK(q_extreme.scale(0) == FLT_MAX);
}

TEST_CASE("int8 absmax on hand-computed values") {
    // Row 0: max 127 so the factor is exactly 1. Row 1: max 254, factor 0.5.
    const auto x = make_tensor(2, 8,
                               {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -127.0f, 3.49f,
                                254.0f, 1.0f, 3.0f, -5.0f, 2.0f, -254.0f, 0.0f, 7.0f});
    const auto q = quantize_int8<Int8Token>(x.view());
    REQUIRE(q.scales().size() == 2);
    CHECK(q.scale(0) == 1.0f);
    CHECK(q.scale(1) == 2.0f);
    CHECK(int8_codes(q) == std::vector<int>{127, 0, 2, 2, 0, -2, -127, 3,  //
                                            127, 0, 2, -2, 1, -127, 0, 4});
    CHECK(q.row_sums()[0] == 5);
    CHECK(q.row_sums()[1] == 5);
    CHECK(q.stride() % 320 == 0);
    for (std::int64_t c = 8; c < q.stride(); ++c) CHECK(int{q.row(1)[c]} == 0);
}

TEST_CASE("int8 per-tensor scale uses the global max") {
    const auto x = make_tensor(2, 2, {1.0f, -2.0f, 254.0f, 0.0f});
    const auto q = quantize_int8<Int8<8, Granularity::per_tensor>>(x.view());
    REQUIRE(q.scales().size() == 1);
    CHECK(q.scale(0) == 2.0f);
    CHECK(int8_codes(q) == std::vector<int>{0, -1, 127, 0});
}

TEST_CASE("int8 of all zeros uses the minimum scale") {
    Tensor<float> x(Shape{2, 3});
    const auto q = quantize_int8<Int8Token>(x.view());
    for (std::int64_t r = 0; r < 2; ++r) CHECK(q.scale(r) == min_quant_scale / 127.0f);
    for (int code : int8_codes(q)) CHECK(code == 0);
}

TEST_CASE("int8 with one huge value") {
    const auto x = make_tensor(2, 3, {1e30f, 1.0f, -1.0f, FLT_MAX, -FLT_MAX, 0.0f});
    const auto q = quantize_int8<Int8Token>(x.view());
    CHECK(int8_codes(q) == std::vector<int>{127, 0, 0, 127, -127, 0});
    CHECK(q.scale(0) == 1e30f / 127.0f);
}

TEST_CASE("int8 -128 is never produced from finite input") {
    // |x| <= gamma, so x * (Qmax / gamma) >= -Qmax up to rounding: the clamp at -Qmax - 1
    // is a guard, and the lowest code reached is -Qmax.
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    const int rows = small_scale() ? 200 : 4000;
    Tensor<float> x(Shape{rows, 33});
    for (std::int64_t r = 0; r < rows; ++r) {
        const float magnitude = std::ldexp(1.0f, static_cast<int>(r % 200) - 100);
        for (std::int64_t c = 0; c < 33; ++c) x(r, c) = uniform(rng) * magnitude;
        x(r, r % 33) = -magnitude;  // the minimum of the row sets gamma
    }
    const auto q8 = quantize_int8<Int8Token>(x.view());
    const auto q4 = quantize_int8<Int8<4, Granularity::per_token>>(x.view());
    const auto q2 = quantize_int8<Int8<2, Granularity::per_token>>(x.view());
    int min8 = 0, min4 = 0, min2 = 0;
    for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < 33; ++c) {
            min8 = std::min(min8, q8.value(r, c));
            min4 = std::min(min4, q4.value(r, c));
            min2 = std::min(min2, q2.value(r, c));
        }
    CHECK(min8 == -127);
    CHECK(min4 == -7);
    CHECK(min2 == -1);
}

TEST_CASE("int8 codes accept -Qmax - 1 and reject beyond") {
    const std::vector<std::int8_t> codes = {-128, 127, 0, -1};
    const std::vector<float> scales = {1.0f, 1.0f};
    const auto q = QTensor<Int8Token>::from_codes(2, 2, codes, scales);
    CHECK(q.value(0, 0) == -128);
    CHECK(q.row_sums()[0] == -1);
    CHECK(q.row_sums()[1] == -1);

    using Int4 = Int8<4, Granularity::per_token>;
    const std::vector<std::int8_t> low = {-8, 7};
    const std::vector<std::int8_t> below = {-9, 7};
    const std::vector<std::int8_t> above = {0, 8};
    const std::vector<float> one_scale = {1.0f};
    CHECK_NOTHROW((void)QTensor<Int4>::from_codes(1, 2, low, one_scale));
    CHECK_THROWS_AS((void)QTensor<Int4>::from_codes(1, 2, below, one_scale), std::invalid_argument);
    CHECK_THROWS_AS((void)QTensor<Int4>::from_codes(1, 2, above, one_scale), std::invalid_argument);

    QTensor<Int4> tensor(1, 3);
    tensor.set_value(0, 1, -8);
    tensor.set_value(0, 2, 5);
    CHECK(tensor.row_sums()[0] == -3);
    CHECK_THROWS_AS(tensor.set_value(0, 0, -9), std::invalid_argument);
}

TEST_CASE("NaN and infinity are rejected naming the element") {
    auto x = make_tensor(3, 4, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
    x(2, 1) = std::numeric_limits<float>::quiet_NaN();
    const auto expect_message = [](auto&& call) {
        try {
            call();
            FAIL("expected numeric_error");
        } catch (const numeric_error& error) {
            CHECK(std::string(error.what()).find("(2, 1)") != std::string::npos);
        }
    };
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        expect_message([&] { (void)quantize_int8<Int8Token>(x.view()); });
        expect_message([&] { (void)quantize_int8<Int8<8, Granularity::per_tensor>>(x.view()); });
        expect_message([&] { (void)quantize_ternary<Ternary2>(x.view()); });
        expect_message([&] { (void)quantize_ternary<Ternary16Row>(x.view()); });
        expect_message([&] { (void)fake_quantize_ternary<Ternary2Row>(x.view()); });
        expect_message([&] { (void)fake_quantize_int8<Int8Token>(x.view()); });
    }
    set_num_threads(1);
    x(2, 1) = -std::numeric_limits<float>::infinity();
    expect_message([&] { (void)quantize_int8<Int8Token>(x.view()); });
    expect_message([&] { (void)quantize_ternary<Ternary2>(x.view()); });
}

TEST_CASE_TEMPLATE("fake_quantize_ternary equals dequantize of quantize", Enc, Ternary2,
                   Ternary2Row, Ternary16, Ternary16Row) {
    std::mt19937 rng(21);
    for (int i = 0; i < 20; ++i) {
        const auto w = random_tensor(rng, 1 + i * 3, 5 + i * 11, 0.02f * (i + 1));
        const auto fake = fake_quantize_ternary<Enc>(w.view());
        const auto reference = dequantize(quantize_ternary<Enc>(w.view()));
        REQUIRE(fake.numel() == reference.numel());
        for (std::int64_t k = 0; k < fake.numel(); ++k)
            CHECK(std::bit_cast<std::uint32_t>(fake[k]) ==
                  std::bit_cast<std::uint32_t>(reference[k]));
    }
}

TEST_CASE_TEMPLATE("fake_quantize_int8 equals dequantize of quantize", Enc, Int8Token,
                   Int8<4, Granularity::per_token>, Int8<8, Granularity::per_tensor>) {
    std::mt19937 rng(22);
    for (int i = 0; i < 20; ++i) {
        auto x = random_tensor(rng, 1 + i * 2, 3 + i * 13, 0.5f * (i + 1));
        x[0] = -0.0f;
        const auto fake = fake_quantize_int8<Enc>(x.view());
        const auto reference = dequantize(quantize_int8<Enc>(x.view()));
        REQUIRE(fake.numel() == reference.numel());
        for (std::int64_t k = 0; k < fake.numel(); ++k)
            CHECK(std::bit_cast<std::uint32_t>(fake[k]) ==
                  std::bit_cast<std::uint32_t>(reference[k]));
    }
}

TEST_CASE("quantizers keep one result across thread counts") {
    std::mt19937 rng(31);
    const auto w = random_tensor(rng, 300, 257, 1.0f);
    set_num_threads(1);
    const auto w1 = quantize_ternary<Ternary2>(w.view());
    const auto x1 = quantize_int8<Int8Token>(w.view());
    set_num_threads(2);
    const auto w2 = quantize_ternary<Ternary2>(w.view());
    const auto x2 = quantize_int8<Int8Token>(w.view());
    set_num_threads(1);
    CHECK(w1.scale(0) == w2.scale(0));
    CHECK(ternary_values(w1) == ternary_values(w2));
    CHECK(int8_codes(x1) == int8_codes(x2));
}

TEST_CASE("quantize *_into reuses the storage") {
    std::mt19937 rng(41);
    const auto w = random_tensor(rng, 64, 96, 1.0f);
    QTensor<Ternary2Row> wq;
    QTensor<Ternary16> wq16;
    QTensor<Int8Token> xq;
    quantize_ternary_into(w.view(), wq);
    quantize_ternary_into(w.view(), wq16);
    quantize_int8_into(w.view(), xq);
    const auto before = buffer_allocations();
    for (int step = 0; step < 3; ++step) {
        quantize_ternary_into(w.view(), wq);
        quantize_ternary_into(w.view(), wq16);
        quantize_int8_into(w.view(), xq);
    }
    CHECK(buffer_allocations() == before);

    // A new shape reallocates and still quantizes correctly.
    const auto smaller = random_tensor(rng, 5, 7, 1.0f);
    quantize_int8_into(smaller.view(), xq);
    CHECK(xq.rows() == 5);
    CHECK(int8_codes(xq) == int8_codes(quantize_int8<Int8Token>(smaller.view())));
}

TEST_CASE("int8 row sums match the codes") {
    std::mt19937 rng(51);
    const auto x = random_tensor(rng, 40, 333, 3.0f);
    const auto q = quantize_int8<Int8Token>(x.view());
    for (std::int64_t r = 0; r < 40; ++r) {
        std::int32_t sum = 0;
        for (std::int64_t c = 0; c < q.stride(); ++c) sum += q.row(r)[c];
        CHECK(q.row_sums()[static_cast<std::size_t>(r)] == sum);
    }
}

TEST_CASE("rank-3 activations quantize per token") {
    std::mt19937 rng(61);
    Tensor<float> x(Shape{2, 3, 10});
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& value : x) value = normal(rng);
    const auto q = quantize_int8<Int8Token>(x.view());
    CHECK(q.rows() == 6);
    CHECK(q.cols() == 10);
    CHECK(q.scales().size() == 6);
}
