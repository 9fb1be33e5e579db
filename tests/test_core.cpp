#include <doctest/doctest.h>

#include <bitdistill/bitdistill.hpp>

#include <cstdint>
#include <string>
#include <vector>

using namespace bitdistill;

TEST_CASE("tensor storage is aligned and zeroed") {
    Tensor<float> t(Shape{3, 5});
    CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % buffer_alignment == 0);
    CHECK(t.rows() == 3);
    CHECK(t.cols() == 5);
    for (float value : t) CHECK(value == 0.0f);
}

TEST_CASE("reshape rejects a different element count") {
    Tensor<float> t(Shape{2, 6});
    CHECK_NOTHROW(t.reshape(Shape{3, 4}));
    CHECK_THROWS_AS(t.reshape(Shape{5, 2}), shape_error);
}

TEST_CASE("shape mismatch message names both shapes") {
    try {
        require_same_shape(Shape{2, 3}, Shape{3, 2}, "add");
        FAIL("expected shape_error");
    } catch (const shape_error& error) {
        CHECK(std::string(error.what()).find("[2, 3]") != std::string::npos);
        CHECK(std::string(error.what()).find("[3, 2]") != std::string::npos);
    }
}

TEST_CASE("parallel_for covers the range once") {
    for (int threads : {1, 2}) {
        set_num_threads(threads);
        std::vector<int> hits(1000, 0);
        parallel_for(1000, 7, [&](std::int64_t first, std::int64_t last) {
            for (std::int64_t i = first; i < last; ++i) hits[i] += 1;
        });
        for (int h : hits) CHECK(h == 1);
    }
    set_num_threads(1);
}

TEST_CASE("force_isa rejects paths the CPU lacks") {
    CHECK_NOTHROW(force_isa(Isa::scalar));
    CHECK(active_isa() == Isa::scalar);
    force_isa(detected_isa());
    CHECK_THROWS_AS((void)parse_isa("sse9"), std::invalid_argument);
}
