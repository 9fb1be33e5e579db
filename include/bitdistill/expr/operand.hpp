// How expression nodes hold their operands, and the concepts that define which types may be
// operands of an element-wise expression.
//
// Holding rule: an rvalue operand is moved into the node and held by value, so an expression
// built from a temporary (`auto e = make() + x;`) owns that temporary and cannot dangle. An
// lvalue operand is held by reference: the expression must not outlive it. A TensorView is
// held by value, but it refers to storage the caller owns, so the same rule applies to that
// storage. Scalars are held by value as float.
#pragma once

#include <concepts>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "bitdistill/core/shape.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI {
namespace expr {

/// Base of every element-wise node; the concepts below recognise nodes by it.
struct ElementwiseNode {};

/// Leaf for an lvalue Tensor<float>. It stores the tensor's address and reads its storage and
/// shape at evaluation time, so reassigning the tensor between building and evaluating is safe.
class TensorRefLeaf {
public:
    explicit TensorRefLeaf(const Tensor<float>& tensor) noexcept : tensor_(&tensor) {}

    [[nodiscard]] const Shape& shape() const noexcept { return tensor_->shape(); }
    [[nodiscard]] const float* data() const noexcept { return tensor_->data(); }

private:
    const Tensor<float>* tensor_;
};

/// Leaf for an rvalue Tensor<float>: owns the moved tensor.
class TensorValueLeaf {
public:
    explicit TensorValueLeaf(Tensor<float>&& tensor) noexcept : tensor_(std::move(tensor)) {}
    explicit TensorValueLeaf(const Tensor<float>& tensor) : tensor_(tensor) {}

    [[nodiscard]] const Shape& shape() const noexcept { return tensor_.shape(); }
    [[nodiscard]] const float* data() const noexcept { return tensor_.data(); }

private:
    Tensor<float> tensor_;
};

/// Leaf for a TensorView, held by value; the caller keeps the viewed storage alive.
class ViewLeaf {
public:
    explicit ViewLeaf(TensorView<const float> view) noexcept : view_(view) {}

    [[nodiscard]] const Shape& shape() const noexcept { return view_.shape(); }
    [[nodiscard]] const float* data() const noexcept { return view_.data(); }

private:
    TensorView<const float> view_;
};

/// Leaf for a scalar operand, broadcast to every element.
class ScalarLeaf {
public:
    explicit ScalarLeaf(float value) noexcept : value_(value) {}

    [[nodiscard]] float value() const noexcept { return value_; }

private:
    float value_;
};

template <class T>
inline constexpr bool is_tensor_leaf_v =
    std::is_same_v<T, TensorRefLeaf> || std::is_same_v<T, TensorValueLeaf> ||
    std::is_same_v<T, ViewLeaf>;

}  // namespace expr

/// Dense float tensors and views of them.
template <class T>
concept float_tensor = std::same_as<std::remove_cvref_t<T>, Tensor<float>> ||
                       std::same_as<std::remove_cvref_t<T>, TensorView<float>> ||
                       std::same_as<std::remove_cvref_t<T>, TensorView<const float>>;

/// Element-wise expression nodes (the result of `a + b`, `exp(a)` and so on).
template <class T>
concept elementwise_expression = std::derived_from<std::remove_cvref_t<T>, expr::ElementwiseNode>;

/// Scalars that broadcast in an element-wise expression; they are converted to float.
template <class T>
concept scalar_operand = std::is_arithmetic_v<std::remove_cvref_t<T>> &&
                         !std::same_as<std::remove_cvref_t<T>, bool>;

/// Operands with a shape: float tensors, views and element-wise nodes.
template <class T>
concept array_operand = float_tensor<T> || elementwise_expression<T>;

/// Anything that may stand on one side of an element-wise operator.
template <class T>
concept elementwise_operand = array_operand<T> || scalar_operand<T>;

namespace expr {

/// The type a node stores for an operand whose forwarding type is `T`, which is U& for an
/// lvalue and U for an rvalue. The holding rule at the top of this header explains the choice.
template <class T>
struct held {
    using U = std::remove_cvref_t<T>;
    using type = std::conditional_t<
        scalar_operand<T>, ScalarLeaf,
        std::conditional_t<
            std::is_same_v<U, Tensor<float>>,
            std::conditional_t<std::is_lvalue_reference_v<T>, TensorRefLeaf, TensorValueLeaf>,
            std::conditional_t<float_tensor<T>, ViewLeaf,
                               std::conditional_t<std::is_lvalue_reference_v<T>, const U&, U>>>>;
};

template <class T>
using held_t = typename held<T>::type;

/// Wraps `operand` in the type that held_t<T> names.
template <class T>
[[nodiscard]] held_t<T> hold(T&& operand) {
    using U = std::remove_cvref_t<T>;
    if constexpr (scalar_operand<T>) {
        return ScalarLeaf(static_cast<float>(operand));
    } else if constexpr (std::is_same_v<U, Tensor<float>>) {
        if constexpr (std::is_lvalue_reference_v<T>)
            return TensorRefLeaf(operand);
        else
            return TensorValueLeaf(std::move(operand));
    } else if constexpr (float_tensor<T>) {
        return ViewLeaf(TensorView<const float>(operand));
    } else {
        return std::forward<T>(operand);
    }
}

/// Removes the reference from a held type: the node or leaf type itself.
template <class Held>
using node_t = std::remove_cvref_t<Held>;

}  // namespace expr
}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI
