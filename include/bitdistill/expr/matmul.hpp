// Matrix products as expressions: `matmul(w, x)` records the weights w [out x in] and the
// activations x [tokens x in] with their encodings and computes nothing. Evaluating it
// (`Tensor<float> y = matmul(w, x);`, `assign(y, matmul(w, x))` or `eval`) computes
// y [tokens x out] = x w^T, the nn.Linear convention, on the kernel that the pair of
// encodings selects at compile time (kernel_select.hpp):
//
//     auto w = quantize_ternary<Ternary<2>>(weights);   // QTensor<Ternary<2>>
//     auto x = quantize_int8(activations);              // QTensor<Int8<8>>
//     Tensor<float> y = matmul(w, x);                   // ternary x int8 kernel
//     Tensor<float> z = matmul(weights, activations);   // float GEMM
//
// A pair of encodings without a kernel (say ternary weights times float activations) does
// not compile. Operands follow the holding rule of operand.hpp: encoded or float
// temporaries are moved into the node, lvalues are referenced. An element-wise expression
// may be a float operand; it is evaluated into a temporary tensor when the product runs.
#pragma once

#include <concepts>
#include <type_traits>
#include <utility>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/expr/evaluator.hpp"
#include "bitdistill/expr/kernel_select.hpp"
#include "bitdistill/expr/operand.hpp"
#include "bitdistill/expr/simd.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI {
namespace expr {

/// Base of every matrix-product node.
struct MatmulTag {};

/// Element encoding of a held matmul operand.
template <class Held>
struct encoding_of;
template <>
struct encoding_of<TensorRefLeaf> {
    using type = Float32;
};
template <>
struct encoding_of<TensorValueLeaf> {
    using type = Float32;
};
template <>
struct encoding_of<ViewLeaf> {
    using type = Float32;
};
template <class Node>
    requires std::derived_from<Node, ElementwiseNode>
struct encoding_of<Node> {
    using type = Float32;
};
template <class Enc>
struct encoding_of<QTensor<Enc>> {
    using type = Enc;
};

template <class Held>
using encoding_of_t = typename encoding_of<node_t<Held>>::type;

/// Held type of a matmul operand: encoded tensors by value (rvalues) or by reference
/// (lvalues), float operands as in element-wise expressions.
template <class T>
using matmul_held_t = std::conditional_t<
    is_qtensor_v<std::remove_cvref_t<T>>,
    std::conditional_t<std::is_lvalue_reference_v<T>, const std::remove_cvref_t<T>&,
                       std::remove_cvref_t<T>>,
    held_t<T>>;

template <class T>
[[nodiscard]] matmul_held_t<T> hold_matmul_operand(T&& operand) {
    if constexpr (is_qtensor_v<std::remove_cvref_t<T>>)
        return std::forward<T>(operand);
    else
        return hold(std::forward<T>(operand));
}

/// `lhs` (weights) times `rhs` (activations); see the top of this header.
template <class Lhs, class Rhs>
class MatmulNode : public MatmulTag {
public:
    using lhs_encoding = encoding_of_t<Lhs>;
    using rhs_encoding = encoding_of_t<Rhs>;

    template <class LhsArg, class RhsArg>
    MatmulNode(LhsArg&& lhs, RhsArg&& rhs)
        : lhs_(std::forward<LhsArg>(lhs)), rhs_(std::forward<RhsArg>(rhs)) {
        (void)shape_of(*this);  // throws shape_error now rather than at evaluation
    }

    [[nodiscard]] const node_t<Lhs>& lhs() const noexcept { return lhs_; }
    [[nodiscard]] const node_t<Rhs>& rhs() const noexcept { return rhs_; }

    [[nodiscard]] operator Tensor<float>() const { return evaluate(*this); }

private:
    Lhs lhs_;
    Rhs rhs_;
};

}  // namespace expr

/// Operands of matmul: float tensors, views and element-wise expressions, or encoded tensors.
template <class T>
concept matmul_operand = array_operand<T> || is_qtensor_v<std::remove_cvref_t<T>>;

/// Matrix-product nodes.
template <class T>
concept matmul_expression = std::derived_from<std::remove_cvref_t<T>, expr::MatmulTag>;

/// The product x w^T of weights `w` [out x in] and activations `x` [tokens x in] (float
/// activations may have any rank >= 1 whose last axis is in), as an expression of shape
/// [tokens x out] (x's shape with the last extent replaced by out). Throws shape_error if the
/// inner extents differ. Fails to compile if no kernel multiplies the two encodings.
template <matmul_operand Weights, matmul_operand Activations>
[[nodiscard]] auto matmul(Weights&& w, Activations&& x) {
    using Node = expr::MatmulNode<expr::matmul_held_t<Weights>, expr::matmul_held_t<Activations>>;
    // Checked here, where the user wrote the product, not only when it is evaluated.
    [[maybe_unused]] constexpr expr::MatmulKernel kernel =
        expr::select_matmul_kernel<typename Node::lhs_encoding, typename Node::rhs_encoding>();
    return Node(expr::hold_matmul_operand(std::forward<Weights>(w)),
                expr::hold_matmul_operand(std::forward<Activations>(x)));
}

/// Evaluates the product into `dest`. It allocates a tensor only for a float operand that is
/// an element-wise expression. Shape contract: `dest` has the product's shape, else
/// shape_error. Throws std::invalid_argument if `dest` overlaps a float operand.
template <matmul_expression Product>
void assign(TensorView<float> dest, const Product& product) {
    expr::evaluate_into(dest, product);
}

/// Evaluates the product into a new tensor.
template <matmul_expression Product>
[[nodiscard]] Tensor<float> eval(const Product& product) {
    return expr::evaluate(product);
}

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI
