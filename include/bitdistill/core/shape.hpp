// Row-major shapes of rank 0 to 4.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "bitdistill/core/error.hpp"

namespace bitdistill {

/// Extents of a row-major tensor, outermost first. Rank is at most `max_rank`.
class Shape {
public:
    static constexpr int max_rank = 4;

    Shape() = default;
    Shape(std::initializer_list<std::int64_t> extents) {
        BITDISTILL_REQUIRE_AS(shape_error, extents.size() <= max_rank, "Shape: rank ",
                              extents.size(), " exceeds the maximum rank ", max_rank);
        for (std::int64_t extent : extents) {
            BITDISTILL_REQUIRE_AS(shape_error, extent >= 0, "Shape: negative extent ", extent);
            extents_[rank_++] = extent;
        }
    }

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] std::int64_t operator[](int axis) const noexcept { return extents_[axis]; }
    /// Extent of `axis`; negative axes count from the end, as in NumPy.
    [[nodiscard]] std::int64_t dim(int axis) const {
        int resolved = axis < 0 ? axis + rank_ : axis;
        BITDISTILL_REQUIRE_AS(shape_error, resolved >= 0 && resolved < rank_, "Shape ",
                              to_string(), ": axis ", axis, " is out of range");
        return extents_[resolved];
    }
    [[nodiscard]] std::int64_t numel() const noexcept {
        std::int64_t count = 1;
        for (int axis = 0; axis < rank_; ++axis) count *= extents_[axis];
        return count;
    }
    /// Product of all extents but the last: the number of rows of the 2-D view.
    [[nodiscard]] std::int64_t rows() const noexcept {
        return rank_ == 0 ? 1 : numel() / (extents_[rank_ - 1] == 0 ? 1 : extents_[rank_ - 1]);
    }
    /// Last extent: the number of columns of the 2-D view.
    [[nodiscard]] std::int64_t cols() const noexcept {
        return rank_ == 0 ? 1 : extents_[rank_ - 1];
    }

    friend bool operator==(const Shape& a, const Shape& b) noexcept {
        if (a.rank_ != b.rank_) return false;
        for (int axis = 0; axis < a.rank_; ++axis)
            if (a.extents_[axis] != b.extents_[axis]) return false;
        return true;
    }

    /// Formats as "[2, 3, 4]".
    [[nodiscard]] std::string to_string() const {
        std::string text = "[";
        for (int axis = 0; axis < rank_; ++axis) {
            if (axis != 0) text += ", ";
            text += std::to_string(extents_[axis]);
        }
        return text + "]";
    }

private:
    std::array<std::int64_t, max_rank> extents_{};
    int rank_ = 0;
};

/// Throws shape_error naming both shapes and `operation` unless `a == b`.
inline void require_same_shape(const Shape& a, const Shape& b, const char* operation) {
    BITDISTILL_REQUIRE_AS(shape_error, a == b, operation, ": shapes ", a.to_string(), " and ",
                          b.to_string(), " differ");
}

}  // namespace bitdistill
