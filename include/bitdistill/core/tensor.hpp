// Dense float tensors: an owning Tensor and a non-owning TensorView, both row-major and
// contiguous. Encoded (quantized, packed) tensors live in quant/.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/shape.hpp"

namespace bitdistill {

/// Non-owning view of contiguous row-major floats. Never allocates; the caller keeps the
/// storage alive.
template <class T = float>
class TensorView {
public:
    TensorView() = default;
    TensorView(T* data, Shape shape) : data_(data), shape_(shape) {}

    [[nodiscard]] T* data() const noexcept { return data_; }
    [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
    [[nodiscard]] std::int64_t numel() const noexcept { return shape_.numel(); }
    [[nodiscard]] std::int64_t rows() const noexcept { return shape_.rows(); }
    [[nodiscard]] std::int64_t cols() const noexcept { return shape_.cols(); }
    [[nodiscard]] T& operator[](std::int64_t i) const noexcept { return data_[i]; }
    /// Element (row, col) of the 2-D view [rows() x cols()].
    [[nodiscard]] T& operator()(std::int64_t row, std::int64_t col) const noexcept {
        return data_[row * cols() + col];
    }
    [[nodiscard]] std::span<T> span() const noexcept {
        return {data_, static_cast<std::size_t>(numel())};
    }
    /// Row `row` of the 2-D view.
    [[nodiscard]] T* row(std::int64_t row) const noexcept { return data_ + row * cols(); }
    /// Same storage seen with another shape of the same element count.
    [[nodiscard]] TensorView reshaped(Shape shape) const {
        BITDISTILL_REQUIRE_AS(shape_error, shape.numel() == numel(), "reshape: cannot view ",
                              shape_.to_string(), " as ", shape.to_string());
        return {data_, shape};
    }
    /// Rows [first, first + count) of the 2-D view, as a [count x cols()] view.
    [[nodiscard]] TensorView row_range(std::int64_t first, std::int64_t count) const {
        BITDISTILL_REQUIRE_AS(shape_error, first >= 0 && count >= 0 && first + count <= rows(),
                              "row_range: rows [", first, ", ", first + count,
                              ") are outside a tensor of shape ", shape_.to_string());
        return {data_ + first * cols(), Shape{count, cols()}};
    }
    operator TensorView<const T>() const noexcept { return {data_, shape_}; }

private:
    T* data_ = nullptr;
    Shape shape_;
};

/// Owning dense tensor with 64-byte aligned, zero-initialised storage.
template <class T = float>
class Tensor {
public:
    Tensor() = default;
    explicit Tensor(Shape shape) : shape_(shape), storage_(static_cast<std::size_t>(shape.numel())) {}
    Tensor(Shape shape, T fill) : Tensor(shape) { std::fill(begin(), end(), fill); }

    /// Reshapes to `shape` with zeroed contents, reusing the storage when the size matches.
    void resize_zero(Shape shape) {
        shape_ = shape;
        storage_.assign_zero(static_cast<std::size_t>(shape.numel()));
    }
    /// Changes the shape in place; the element count must stay the same.
    void reshape(Shape shape) {
        BITDISTILL_REQUIRE_AS(shape_error, shape.numel() == shape_.numel(),
                              "reshape: cannot reshape ", shape_.to_string(), " to ",
                              shape.to_string());
        shape_ = shape;
    }

    [[nodiscard]] T* data() noexcept { return storage_.data(); }
    [[nodiscard]] const T* data() const noexcept { return storage_.data(); }
    [[nodiscard]] const Shape& shape() const noexcept { return shape_; }
    [[nodiscard]] std::int64_t numel() const noexcept { return shape_.numel(); }
    [[nodiscard]] std::int64_t rows() const noexcept { return shape_.rows(); }
    [[nodiscard]] std::int64_t cols() const noexcept { return shape_.cols(); }
    [[nodiscard]] T& operator[](std::int64_t i) noexcept { return storage_[i]; }
    [[nodiscard]] const T& operator[](std::int64_t i) const noexcept { return storage_[i]; }
    [[nodiscard]] T& operator()(std::int64_t row, std::int64_t col) noexcept {
        return storage_[row * cols() + col];
    }
    [[nodiscard]] const T& operator()(std::int64_t row, std::int64_t col) const noexcept {
        return storage_[row * cols() + col];
    }
    [[nodiscard]] T* begin() noexcept { return data(); }
    [[nodiscard]] T* end() noexcept { return data() + numel(); }
    [[nodiscard]] const T* begin() const noexcept { return data(); }
    [[nodiscard]] const T* end() const noexcept { return data() + numel(); }

    [[nodiscard]] TensorView<T> view() noexcept { return {data(), shape_}; }
    [[nodiscard]] TensorView<const T> view() const noexcept { return {data(), shape_}; }
    operator TensorView<T>() noexcept { return view(); }
    operator TensorView<const T>() const noexcept { return view(); }

private:
    Shape shape_;
    AlignedBuffer<T> storage_;
};

}  // namespace bitdistill
