// Splitting and merging attention heads: between the token-major layout that projections
// produce, [batch * seq x heads * head_dim], and the head-major layout [batch * heads * seq x
// head_dim] in which each (sequence, head) pair is one contiguous [seq x head_dim] matrix.
// The fused attention op reads the token-major layout directly; these ops serve callers
// that build attention variants from matmul and softmax.
#pragma once

#include <algorithm>
#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

/// Sizes of a head split: `batch` sequences of `seq_len` tokens, `heads` heads of `head_dim`.
struct HeadLayout {
    std::int64_t batch = 0;
    std::int64_t seq_len = 0;
    std::int64_t heads = 0;
    std::int64_t head_dim = 0;
};

namespace detail {

/// Copies between the layouts: token-major element (b*seq + t, h*dim + d) is head-major
/// element ((b*heads + h)*seq + t, d). With `to_heads` false the copy runs the other way.
/// With `add` the destination is accumulated into instead of overwritten.
inline void permute_heads(const float* from, float* to, const HeadLayout& l, bool to_heads, bool add) {
    const std::int64_t width = l.heads * l.head_dim;
    parallel_for(l.batch * l.seq_len, 32, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t row = first; row < last; ++row) {
            const std::int64_t b = row / l.seq_len;
            const std::int64_t t = row % l.seq_len;
            for (std::int64_t h = 0; h < l.heads; ++h) {
                const std::int64_t token_major = row * width + h * l.head_dim;
                const std::int64_t head_major = ((b * l.heads + h) * l.seq_len + t) * l.head_dim;
                const float* source = from + (to_heads ? token_major : head_major);
                float* target = to + (to_heads ? head_major : token_major);
                if (add)
                    for (std::int64_t d = 0; d < l.head_dim; ++d) target[d] += source[d];
                else
                    std::copy(source, source + l.head_dim, target);
            }
        }
    });
}

inline HeadLayout head_layout_of(const Node& n) {
    return {n.integers[0], n.integers[1], n.integers[2], n.integers[3]};
}

inline void check_head_layout(const HeadLayout& l, const Shape& shape, bool token_major, const char* op) {
    BITDISTILL_REQUIRE(l.batch > 0 && l.seq_len > 0 && l.heads > 0 && l.head_dim > 0, op,
                       ": batch ", l.batch, ", seq_len ", l.seq_len, ", heads ", l.heads, " and head_dim ",
                       l.head_dim, " must be positive");
    const std::int64_t rows = token_major ? l.batch * l.seq_len : l.batch * l.heads * l.seq_len;
    const std::int64_t cols = token_major ? l.heads * l.head_dim : l.head_dim;
    BITDISTILL_REQUIRE_AS(shape_error, shape.rows() == rows && shape.cols() == cols, op, ": input ",
                          shape.to_string(), " does not match [", rows, ", ", cols, "]");
}

}  // namespace detail

// -------------------------------------------------------------------------- split_heads

/// y = the head-major copy of x. Shapes: x [batch * seq x heads * head_dim],
/// y [batch * heads * seq x head_dim].
inline void split_heads_forward(const float* x, const HeadLayout& layout, float* y) {
    detail::permute_heads(x, y, layout, true, false);
}

/// dx += the token-major copy of dy (a permutation's Jacobian is its inverse permutation).
inline void split_heads_backward(const float* dy, const HeadLayout& layout, const GradientSink& dx) {
    if (dx) detail::permute_heads(dy, dx.data, layout, false, !dx.overwrite);
}

/// Token-major [batch * seq x heads * head_dim] to head-major [batch * heads * seq x head_dim].
inline Var split_heads(Tape& tape, Var x, const HeadLayout& layout) {
    detail::check_head_layout(layout, tape.shape(x), true, "split_heads");
    Var y = tape.record(Shape{layout.batch * layout.heads * layout.seq_len, layout.head_dim},
                        [](Tape& t, std::int32_t self) {
                            const Node& n = t.node(self);
                            split_heads_backward(n.grad, detail::head_layout_of(n), t.gradient_sink(n.inputs[0]));
                        },
                        {x});
    tape.node(y).integers = {layout.batch, layout.seq_len, layout.heads, layout.head_dim};
    split_heads_forward(tape.value(x).data(), layout, tape.value(y).data());
    return y;
}

// -------------------------------------------------------------------------- merge_heads

/// y = the token-major copy of x. Shapes: x [batch * heads * seq x head_dim],
/// y [batch * seq x heads * head_dim].
inline void merge_heads_forward(const float* x, const HeadLayout& layout, float* y) {
    detail::permute_heads(x, y, layout, false, false);
}

/// dx += the head-major copy of dy.
inline void merge_heads_backward(const float* dy, const HeadLayout& layout, const GradientSink& dx) {
    if (dx) detail::permute_heads(dy, dx.data, layout, true, !dx.overwrite);
}

/// Head-major [batch * heads * seq x head_dim] to token-major [batch * seq x heads * head_dim].
inline Var merge_heads(Tape& tape, Var x, const HeadLayout& layout) {
    detail::check_head_layout(layout, tape.shape(x), false, "merge_heads");
    Var y = tape.record(Shape{layout.batch * layout.seq_len, layout.heads * layout.head_dim},
                        [](Tape& t, std::int32_t self) {
                            const Node& n = t.node(self);
                            merge_heads_backward(n.grad, detail::head_layout_of(n), t.gradient_sink(n.inputs[0]));
                        },
                        {x});
    tape.node(y).integers = {layout.batch, layout.seq_len, layout.heads, layout.head_dim};
    merge_heads_forward(tape.value(x).data(), layout, tape.value(y).data());
    return y;
}

}  // namespace bitdistill::autodiff
