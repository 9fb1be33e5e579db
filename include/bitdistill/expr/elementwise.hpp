// Element-wise float expressions: +, -, *, / between tensors, views, expressions and
// scalars, negation, exp, log, sqrt, abs and user maps. Building an expression computes
// nothing; assigning it evaluates the whole tree in one fused pass (evaluator.hpp):
//
//     Tensor<float> t = a + b * c;       // allocates t, one pass over a, b and c
//     assign(t, exp(t - 1.0f) / 2.0f);   // reuses t, no allocation; t may be an operand
//     Tensor<float> u = eval(a * a);
//
// Shape contract: the array operands of an operator have equal shapes, or the operator
// throws shape_error naming both; scalars broadcast to every element. Operands follow the
// holding rule of operand.hpp: temporaries are moved into the expression, lvalues are
// referenced, so an `auto` expression must not outlive the lvalues it was built from.
#pragma once

#include <cmath>
#include <concepts>
#include <type_traits>
#include <utility>

#include "bitdistill/core/tensor.hpp"
#include "bitdistill/expr/evaluator.hpp"
#include "bitdistill/expr/operand.hpp"
#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI {
namespace expr {

// ---------------------------------------------------------------------------------------
// Operations. Each applies to one float and, where `vectorisable`, to one batch.

#if BITDISTILL_EXPR_SIMD
#define BITDISTILL_EXPR_BINARY_OP(Name, Symbol, formula)                                      \
    struct Name {                                                                             \
        static constexpr const char* symbol = Symbol;                                         \
        static constexpr bool vectorisable = true;                                            \
        float operator()(float a, float b) const noexcept { return formula; }                 \
        float_batch operator()(const float_batch& a, const float_batch& b) const noexcept {   \
            return formula;                                                                   \
        }                                                                                     \
    };
#else
#define BITDISTILL_EXPR_BINARY_OP(Name, Symbol, formula)                                      \
    struct Name {                                                                             \
        static constexpr const char* symbol = Symbol;                                         \
        static constexpr bool vectorisable = true;                                            \
        float operator()(float a, float b) const noexcept { return formula; }                 \
    };
#endif

BITDISTILL_EXPR_BINARY_OP(Add, "+", a + b)
BITDISTILL_EXPR_BINARY_OP(Subtract, "-", a - b)
BITDISTILL_EXPR_BINARY_OP(Multiply, "*", a * b)
BITDISTILL_EXPR_BINARY_OP(Divide, "/", a / b)
#undef BITDISTILL_EXPR_BINARY_OP

struct Negate {
    static constexpr bool vectorisable = true;
    float operator()(float x) const noexcept { return -x; }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const noexcept { return -x; }
#endif
};

// The batch forms of exp and log come from xsimd and may differ from std::exp and std::log
// in the last bits, so the SIMD body and the scalar tail of a loop can round differently.
struct Exp {
    static constexpr bool vectorisable = true;
    float operator()(float x) const noexcept { return std::exp(x); }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const noexcept { return xsimd::exp(x); }
#endif
};

struct Log {
    static constexpr bool vectorisable = true;
    float operator()(float x) const noexcept { return std::log(x); }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const noexcept {
#if XSIMD_WITH_AVX512BW && !defined(__OPTIMIZE__)
        // NOTE: xsimd 8.1's log does not compile for AVX-512BW without optimisation (its
        // integer select passes a batch where GCC's blend intrinsic expects another vector
        // type), so unoptimised AVX-512BW builds take the logarithm lane by lane.
        alignas(64) float lanes[simd_width];
        x.store_aligned(lanes);
        for (float& lane : lanes) lane = std::log(lane);
        return float_batch::load_aligned(lanes);
#else
        return xsimd::log(x);
#endif
    }
#endif
};

struct Sqrt {
    static constexpr bool vectorisable = true;
    float operator()(float x) const noexcept { return std::sqrt(x); }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const noexcept { return xsimd::sqrt(x); }
#endif
};

struct Abs {
    static constexpr bool vectorisable = true;
    float operator()(float x) const noexcept { return std::fabs(x); }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const noexcept { return xsimd::abs(x); }
#endif
};

/// A user function applied to each element. It is vectorised when it also accepts and
/// returns expr::float_batch; otherwise the whole tree is evaluated one element at a time.
template <class Function>
struct Map {
#if BITDISTILL_EXPR_SIMD
    static constexpr bool vectorisable =
        std::is_invocable_r_v<float_batch, const Function&, const float_batch&>;
#else
    static constexpr bool vectorisable = false;
#endif
    Function function;

    float operator()(float x) const { return function(x); }
#if BITDISTILL_EXPR_SIMD
    float_batch operator()(const float_batch& x) const
        requires vectorisable
    {
        return function(x);
    }
#endif
};

// ---------------------------------------------------------------------------------------
// Nodes. They store the operation and the held operands, nothing else.

/// Converts an element-wise node to Tensor<float> by evaluating it, so that
/// `Tensor<float> t = expression;` works.
template <class Derived>
struct ElementwiseBase : ElementwiseNode {
    [[nodiscard]] operator Tensor<float>() const {
        return evaluate(static_cast<const Derived&>(*this));
    }
};

/// `op(operand)` for each element.
template <class Op, class Operand>
class UnaryNode : public ElementwiseBase<UnaryNode<Op, Operand>> {
public:
    template <class Arg>
    UnaryNode(Op op, Arg&& operand) : op_(std::move(op)), operand_(std::forward<Arg>(operand)) {}

    [[nodiscard]] const Op& op() const noexcept { return op_; }
    [[nodiscard]] const node_t<Operand>& operand() const noexcept { return operand_; }

private:
    Op op_;
    Operand operand_;
};

/// `op(lhs, rhs)` for each element; at most one side is a scalar.
template <class Op, class Lhs, class Rhs>
class BinaryNode : public ElementwiseBase<BinaryNode<Op, Lhs, Rhs>> {
public:
    template <class LhsArg, class RhsArg>
    BinaryNode(LhsArg&& lhs, RhsArg&& rhs)
        : lhs_(std::forward<LhsArg>(lhs)), rhs_(std::forward<RhsArg>(rhs)) {
        (void)shape_of(*this);  // throws shape_error now rather than at evaluation
    }

    [[nodiscard]] Op op() const noexcept { return Op{}; }
    [[nodiscard]] const node_t<Lhs>& lhs() const noexcept { return lhs_; }
    [[nodiscard]] const node_t<Rhs>& rhs() const noexcept { return rhs_; }

private:
    Lhs lhs_;
    Rhs rhs_;
};

template <class Op, class Operand>
[[nodiscard]] auto make_unary(Op op, Operand&& operand) {
    return UnaryNode<Op, held_t<Operand>>(std::move(op), hold(std::forward<Operand>(operand)));
}

template <class Op, class Lhs, class Rhs>
[[nodiscard]] auto make_binary(Lhs&& lhs, Rhs&& rhs) {
    return BinaryNode<Op, held_t<Lhs>, held_t<Rhs>>(hold(std::forward<Lhs>(lhs)),
                                                    hold(std::forward<Rhs>(rhs)));
}

}  // namespace expr

/// Operand pairs of a binary element-wise operator: at least one side has a shape.
template <class Lhs, class Rhs>
concept elementwise_pair = (array_operand<Lhs> && elementwise_operand<Rhs>) ||
                           (scalar_operand<Lhs> && array_operand<Rhs>);

template <class Lhs, class Rhs>
    requires elementwise_pair<Lhs, Rhs>
[[nodiscard]] auto operator+(Lhs&& lhs, Rhs&& rhs) {
    return expr::make_binary<expr::Add>(std::forward<Lhs>(lhs), std::forward<Rhs>(rhs));
}

template <class Lhs, class Rhs>
    requires elementwise_pair<Lhs, Rhs>
[[nodiscard]] auto operator-(Lhs&& lhs, Rhs&& rhs) {
    return expr::make_binary<expr::Subtract>(std::forward<Lhs>(lhs), std::forward<Rhs>(rhs));
}

template <class Lhs, class Rhs>
    requires elementwise_pair<Lhs, Rhs>
[[nodiscard]] auto operator*(Lhs&& lhs, Rhs&& rhs) {
    return expr::make_binary<expr::Multiply>(std::forward<Lhs>(lhs), std::forward<Rhs>(rhs));
}

template <class Lhs, class Rhs>
    requires elementwise_pair<Lhs, Rhs>
[[nodiscard]] auto operator/(Lhs&& lhs, Rhs&& rhs) {
    return expr::make_binary<expr::Divide>(std::forward<Lhs>(lhs), std::forward<Rhs>(rhs));
}

template <array_operand Operand>
[[nodiscard]] auto operator-(Operand&& operand) {
    return expr::make_unary(expr::Negate{}, std::forward<Operand>(operand));
}

/// e^x for each element.
template <array_operand Operand>
[[nodiscard]] auto exp(Operand&& operand) {
    return expr::make_unary(expr::Exp{}, std::forward<Operand>(operand));
}

/// Natural logarithm of each element.
template <array_operand Operand>
[[nodiscard]] auto log(Operand&& operand) {
    return expr::make_unary(expr::Log{}, std::forward<Operand>(operand));
}

/// Square root of each element.
template <array_operand Operand>
[[nodiscard]] auto sqrt(Operand&& operand) {
    return expr::make_unary(expr::Sqrt{}, std::forward<Operand>(operand));
}

/// Absolute value of each element.
template <array_operand Operand>
[[nodiscard]] auto abs(Operand&& operand) {
    return expr::make_unary(expr::Abs{}, std::forward<Operand>(operand));
}

/// `function(x)` for each element x. `function` is copied into the expression; it must be
/// safe to call from several threads when num_threads() > 1. It is vectorised when it also
/// accepts and returns expr::float_batch.
template <array_operand Operand, class Function>
    requires std::is_invocable_r_v<float, const std::decay_t<Function>&, float>
[[nodiscard]] auto map(Operand&& operand, Function&& function) {
    return expr::make_unary(expr::Map<std::decay_t<Function>>{std::forward<Function>(function)},
                            std::forward<Operand>(operand));
}

/// Evaluates `source` into `dest` in one pass, without allocating. Shape contract: `dest`
/// has the shape of `source`, else shape_error. `dest` may be an operand of `source`; a
/// partial overlap throws std::invalid_argument.
template <array_operand Source>
void assign(TensorView<float> dest, Source&& source) {
    if constexpr (elementwise_expression<Source>)
        expr::evaluate_into(dest, source);
    else
        expr::evaluate_into(dest, expr::hold(std::forward<Source>(source)));
}

/// Evaluates `source` into a new tensor of its shape.
template <array_operand Source>
[[nodiscard]] Tensor<float> eval(Source&& source) {
    if constexpr (elementwise_expression<Source>)
        return expr::evaluate(source);
    else
        return expr::evaluate(expr::hold(std::forward<Source>(source)));
}

}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI
