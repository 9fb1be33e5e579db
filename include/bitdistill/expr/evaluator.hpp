// The evaluator: the one place that turns an expression into loops and kernel calls.
//
// Nodes (elementwise.hpp, matmul.hpp) only record their operands and operations. This
// header reads a whole element-wise tree in one fused pass, writing each destination
// element once: the body runs on SIMD batches (simd.hpp) when every operation of the tree
// has a batch form, and a scalar tail finishes the range. Matrix products are handed to the
// kernel that kernel_select.hpp picks from the pair of operand encodings.
//
// Aliasing: a destination may be one of the operands of an element-wise expression, because
// each element is read before it is written and no other element depends on it. A
// destination that overlaps an operand only in part (a shifted view of the same storage)
// is rejected with std::invalid_argument, as is a matrix product written into the storage
// of one of its operands.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/shape.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/expr/kernel_select.hpp"
#include "bitdistill/expr/operand.hpp"
#include "bitdistill/expr/simd.hpp"
#include "bitdistill/kernels/float_matmul.hpp"
#include "bitdistill/kernels/ternary_matmul.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr {

template <class Op, class Operand>
class UnaryNode;
template <class Op, class Lhs, class Rhs>
class BinaryNode;
template <class Lhs, class Rhs>
class MatmulNode;

template <class Node>
[[nodiscard]] Tensor<float> evaluate(const Node& node);

/// Elements a parallel task evaluates; a multiple of every SIMD width.
inline constexpr std::int64_t elementwise_grain = 16384;

// ---------------------------------------------------------------------------------------
// Compile-time facts about a tree.

template <class Node>
struct is_scalar_leaf : std::is_same<node_t<Node>, ScalarLeaf> {};

/// True when every operation of the tree has a batch form.
template <class Node>
struct is_vectorisable : std::true_type {};
template <class Op, class Operand>
struct is_vectorisable<UnaryNode<Op, Operand>>
    : std::bool_constant<Op::vectorisable && is_vectorisable<node_t<Operand>>::value> {};
template <class Op, class Lhs, class Rhs>
struct is_vectorisable<BinaryNode<Op, Lhs, Rhs>>
    : std::bool_constant<Op::vectorisable && is_vectorisable<node_t<Lhs>>::value &&
                         is_vectorisable<node_t<Rhs>>::value> {};

template <class Node>
inline constexpr bool is_vectorisable_v = is_vectorisable<node_t<Node>>::value;

// ---------------------------------------------------------------------------------------
// Shapes. A binary node checks its operands when it is built and again here, because an
// operand held by reference may have been reshaped in between.

template <class Leaf>
    requires is_tensor_leaf_v<Leaf>
[[nodiscard]] Shape shape_of(const Leaf& leaf) {
    return leaf.shape();
}

template <class Op, class Operand>
[[nodiscard]] Shape shape_of(const UnaryNode<Op, Operand>& node) {
    return shape_of(node.operand());
}

template <class Op, class Lhs, class Rhs>
[[nodiscard]] Shape shape_of(const BinaryNode<Op, Lhs, Rhs>& node) {
    if constexpr (is_scalar_leaf<Lhs>::value) {
        return shape_of(node.rhs());
    } else if constexpr (is_scalar_leaf<Rhs>::value) {
        return shape_of(node.lhs());
    } else {
        Shape lhs = shape_of(node.lhs());
        Shape rhs = shape_of(node.rhs());
        BITDISTILL_REQUIRE_AS(shape_error, lhs == rhs, "operator", Op::symbol,
                              ": operand shapes ", lhs.to_string(), " and ", rhs.to_string(),
                              " differ");
        return lhs;
    }
}

// ---------------------------------------------------------------------------------------
// Tensor leaves of a tree, for the aliasing check.

template <class Visit>
void for_each_tensor_leaf(const ScalarLeaf&, Visit&&) {}

template <class Leaf, class Visit>
    requires is_tensor_leaf_v<Leaf>
void for_each_tensor_leaf(const Leaf& leaf, Visit&& visit) {
    visit(leaf.data(), leaf.shape().numel());
}

template <class Op, class Operand, class Visit>
void for_each_tensor_leaf(const UnaryNode<Op, Operand>& node, Visit&& visit) {
    for_each_tensor_leaf(node.operand(), visit);
}

template <class Op, class Lhs, class Rhs, class Visit>
void for_each_tensor_leaf(const BinaryNode<Op, Lhs, Rhs>& node, Visit&& visit) {
    for_each_tensor_leaf(node.lhs(), visit);
    for_each_tensor_leaf(node.rhs(), visit);
}

/// True when the float ranges [a, a + a_count) and [b, b + b_count) share an element.
[[nodiscard]] inline bool ranges_overlap(const float* a, std::int64_t a_count, const float* b,
                                         std::int64_t b_count) noexcept {
    if (a_count == 0 || b_count == 0) return false;
    // Compare as integers: relational operators on pointers into different arrays are
    // unspecified.
    const auto a_begin = reinterpret_cast<std::uintptr_t>(a);
    const auto b_begin = reinterpret_cast<std::uintptr_t>(b);
    const auto a_end = a_begin + static_cast<std::uintptr_t>(a_count) * sizeof(float);
    const auto b_end = b_begin + static_cast<std::uintptr_t>(b_count) * sizeof(float);
    return a_begin < b_end && b_begin < a_end;
}

/// Throws std::invalid_argument if `dest` overlaps an operand of `node` without starting at
/// the same address (exact aliasing is safe for element-wise evaluation).
template <class Node>
void require_no_partial_overlap(TensorView<float> dest, const Node& node) {
    for_each_tensor_leaf(node, [&](const float* data, std::int64_t count) {
        BITDISTILL_REQUIRE(data == dest.data() || !ranges_overlap(dest.data(), dest.numel(), data,
                                                                  count),
                           "assign: the destination ", dest.shape().to_string(), " at ",
                           static_cast<const void*>(dest.data()),
                           " partly overlaps an operand at ", static_cast<const void*>(data),
                           "; evaluate into a separate tensor");
    });
}

// ---------------------------------------------------------------------------------------
// Flattened trees. Before a loop runs, flatten() copies the tree into a small value that
// mirrors it with raw data pointers in place of the leaves, and the loop keeps that value in
// registers. Reading the leaves through the tree would not allow that, because a SIMD store
// may alias any memory, so the compiler would reload every operand pointer from the tree
// after each store.

/// Operations are copied into the flattened tree when trivially copyable and referenced
/// otherwise, so that a move-only user function still works.
template <class Op>
using op_storage_t = std::conditional_t<std::is_trivially_copyable_v<Op>, Op, const Op&>;

/// Reads a tensor operand.
struct FlatLoad {
    const float* data;

    [[nodiscard]] float element(std::int64_t i) const noexcept { return data[i]; }
#if BITDISTILL_EXPR_SIMD
    [[nodiscard]] float_batch batch(std::int64_t i) const noexcept {
        return float_batch::load_unaligned(data + i);
    }
#endif
};

/// Broadcasts a scalar operand.
struct FlatBroadcast {
    float value;

    [[nodiscard]] float element(std::int64_t) const noexcept { return value; }
#if BITDISTILL_EXPR_SIMD
    [[nodiscard]] float_batch batch(std::int64_t) const noexcept { return float_batch(value); }
#endif
};

template <class Op, class Operand>
struct FlatUnary {
    op_storage_t<Op> op;
    Operand operand;

    [[nodiscard]] float element(std::int64_t i) const { return op(operand.element(i)); }
#if BITDISTILL_EXPR_SIMD
    [[nodiscard]] float_batch batch(std::int64_t i) const { return op(operand.batch(i)); }
#endif
};

// The left operand is read first, so user maps with side effects run in a defined order.
template <class Op, class Lhs, class Rhs>
struct FlatBinary {
    Lhs lhs;
    Rhs rhs;

    [[nodiscard]] float element(std::int64_t i) const {
        const float left = lhs.element(i);
        const float right = rhs.element(i);
        return Op{}(left, right);
    }
#if BITDISTILL_EXPR_SIMD
    [[nodiscard]] float_batch batch(std::int64_t i) const {
        const float_batch left = lhs.batch(i);
        const float_batch right = rhs.batch(i);
        return Op{}(left, right);
    }
#endif
};

[[nodiscard]] inline FlatBroadcast flatten(const ScalarLeaf& leaf) noexcept {
    return {leaf.value()};
}

template <class Leaf>
    requires is_tensor_leaf_v<Leaf>
[[nodiscard]] FlatLoad flatten(const Leaf& leaf) noexcept {
    return {leaf.data()};
}

template <class Op, class Operand>
[[nodiscard]] auto flatten(const UnaryNode<Op, Operand>& node) {
    using FlatOperand = decltype(flatten(node.operand()));
    return FlatUnary<Op, FlatOperand>{node.op(), flatten(node.operand())};
}

template <class Op, class Lhs, class Rhs>
[[nodiscard]] auto flatten(const BinaryNode<Op, Lhs, Rhs>& node) {
    using FlatLhs = decltype(flatten(node.lhs()));
    using FlatRhs = decltype(flatten(node.rhs()));
    return FlatBinary<Op, FlatLhs, FlatRhs>{flatten(node.lhs()), flatten(node.rhs())};
}

// ---------------------------------------------------------------------------------------
// The fused loop.

/// Writes elements [first, last) of `flat` to `out`: SIMD batches while `Vectorised` and a
/// whole batch remains, then one element at a time.
template <bool Vectorised, class Flat>
void evaluate_range(float* out, Flat flat, std::int64_t first, std::int64_t last) {
    std::int64_t i = first;
#if BITDISTILL_EXPR_SIMD
    if constexpr (Vectorised) {
        for (; i + simd_width <= last; i += simd_width) flat.batch(i).store_unaligned(out + i);
    }
#endif
    for (; i < last; ++i) out[i] = flat.element(i);
}

/// Evaluates `node` into `dest` in one pass. Shape contract: `dest` has the shape of `node`.
/// Throws shape_error if the shapes differ and std::invalid_argument on partial overlap.
template <class Node>
    requires elementwise_expression<Node> || is_tensor_leaf_v<Node>
void evaluate_into(TensorView<float> dest, const Node& node) {
    const Shape shape = shape_of(node);
    BITDISTILL_REQUIRE_AS(shape_error, dest.shape() == shape, "assign: destination shape ",
                          dest.shape().to_string(), " differs from expression shape ",
                          shape.to_string());
    require_no_partial_overlap(dest, node);

    constexpr bool vectorised = BITDISTILL_EXPR_SIMD && is_vectorisable_v<Node>;
    float* out = dest.data();
    const auto flat = flatten(node);
    parallel_for(dest.numel(), elementwise_grain, [&](std::int64_t first, std::int64_t last) {
        evaluate_range<vectorised>(out, flat, first, last);
    });
}

// ---------------------------------------------------------------------------------------
// Matrix products.

/// `shape` with its last extent replaced by `extent` (rank >= 1).
[[nodiscard]] inline Shape with_last_extent(const Shape& shape, std::int64_t extent) {
    switch (shape.rank()) {
        case 1: return Shape{extent};
        case 2: return Shape{shape[0], extent};
        case 3: return Shape{shape[0], shape[1], extent};
        default: return Shape{shape[0], shape[1], shape[2], extent};
    }
}

template <class Enc>
[[nodiscard]] Shape operand_shape(const QTensor<Enc>& operand) {
    return Shape{operand.rows(), operand.cols()};
}

template <class Operand>
[[nodiscard]] Shape operand_shape(const Operand& operand) {
    return shape_of(operand);
}

/// Shape of the product: the activations' shape with the last extent replaced by the number
/// of weight rows. Throws shape_error unless the weights are [out x in] and the activations
/// [..., in].
template <class Lhs, class Rhs>
[[nodiscard]] Shape shape_of(const MatmulNode<Lhs, Rhs>& node) {
    const Shape weights = operand_shape(node.lhs());
    const Shape activations = operand_shape(node.rhs());
    BITDISTILL_REQUIRE_AS(shape_error,
                          weights.rank() == 2 && activations.rank() >= 1 &&
                              activations.cols() == weights.cols(),
                          "matmul: weights ", weights.to_string(), " and activations ",
                          activations.to_string(),
                          " do not fit; expected weights [out, in] and activations [..., in]");
    return with_last_extent(activations, weights.rows());
}

/// The float data of a float matmul operand; an element-wise expression is evaluated into
/// `scratch` first.
template <class Operand>
[[nodiscard]] TensorView<const float> float_operand_view(const Operand& operand,
                                                         Tensor<float>& scratch) {
    if constexpr (is_tensor_leaf_v<Operand>) {
        return {operand.data(), operand.shape()};
    } else {
        scratch = evaluate(operand);
        return scratch.view();
    }
}

/// Evaluates the product `node` into `dest` on the kernel that select_matmul_kernel picks for
/// the pair of operand encodings. Shape contract: `dest` has shape_of(node), else shape_error.
/// Throws std::invalid_argument if `dest` overlaps a float operand.
template <class Lhs, class Rhs>
void evaluate_into(TensorView<float> dest, const MatmulNode<Lhs, Rhs>& node) {
    using Node = MatmulNode<Lhs, Rhs>;
    constexpr MatmulKernel kernel =
        select_matmul_kernel<typename Node::lhs_encoding, typename Node::rhs_encoding>();

    const Shape shape = shape_of(node);
    BITDISTILL_REQUIRE_AS(shape_error, dest.shape() == shape, "matmul: destination shape ",
                          dest.shape().to_string(), " differs from product shape ",
                          shape.to_string());

    if constexpr (kernel == MatmulKernel::float_gemm) {
        // The kernel reads every operand element many times while it writes, so the
        // destination must not share storage with an operand, not even exactly.
        auto reject_overlap = [&](const float* data, std::int64_t count) {
            BITDISTILL_REQUIRE(!ranges_overlap(dest.data(), dest.numel(), data, count),
                               "matmul: the destination ", dest.shape().to_string(), " at ",
                               static_cast<const void*>(dest.data()),
                               " overlaps an operand at ", static_cast<const void*>(data),
                               "; evaluate the product into a separate tensor");
        };
        for_each_tensor_leaf(node.lhs(), reject_overlap);
        for_each_tensor_leaf(node.rhs(), reject_overlap);

        Tensor<float> weights_scratch;
        Tensor<float> activations_scratch;
        const TensorView<const float> weights = float_operand_view(node.lhs(), weights_scratch);
        const TensorView<const float> activations =
            float_operand_view(node.rhs(), activations_scratch);
        matmul_into(weights, activations, dest);
    } else if constexpr (kernel == MatmulKernel::ternary_int8) {
        // Encoded operands own their storage, which is not float, so they cannot alias dest.
        matmul_into(node.lhs(), node.rhs(), dest);
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation into a new tensor.

/// Evaluates `node` (element-wise or a product) into a new tensor of its shape.
template <class Node>
Tensor<float> evaluate(const Node& node) {
    Tensor<float> result(shape_of(node));
    evaluate_into(result.view(), node);
    return result;
}

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI::expr
