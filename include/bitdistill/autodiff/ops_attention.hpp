// Causal self-attention with grouped-query heads and a key padding mask, as one fused op
// with a hand-written backward.
//
// Layout: q [batch * seq x n_heads * head_dim], k and v [batch * seq x n_kv_heads * head_dim]:
// token-major rows as the projections produce them, the heads side by side in each row.
// Query head h reads key/value head h / (n_heads / n_kv_heads). For each sequence b and
// head h: S = scale * Q K^T, S[i, j] is dropped unless j <= i and key j is not padding,
// P = softmax(S) per row, O = P V. A query row with no allowed key outputs zeros.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

/// Sizes of one attention call.
struct AttentionShape {
    std::int64_t batch = 0;
    std::int64_t seq_len = 0;
    std::int64_t n_heads = 0;
    std::int64_t n_kv_heads = 0;
    std::int64_t head_dim = 0;

    [[nodiscard]] std::int64_t tokens() const { return batch * seq_len; }
    [[nodiscard]] std::int64_t q_width() const { return n_heads * head_dim; }
    [[nodiscard]] std::int64_t kv_width() const { return n_kv_heads * head_dim; }
    [[nodiscard]] std::int64_t group() const { return n_heads / n_kv_heads; }
};

namespace detail {

/// Query rows per block of the causal products: a multiple of the GEMM tile height (12).
/// Rows [first, first + 48) multiply with keys [0, first + 48) only, which skips about a
/// third of the products at 128 tokens.
inline constexpr std::int64_t attention_row_block = 48;

/// Softmax of one score row over the keys [0, allowed_end) that the mask keeps; the other
/// entries of the row become 0. A row with no allowed key becomes all zeros.
inline void masked_softmax_row(float* row, std::int64_t length, std::int64_t allowed_end,
                               const std::uint8_t* key_mask) {
    float max_score = -INFINITY;
    for (std::int64_t j = 0; j < allowed_end; ++j)
        if (key_mask == nullptr || key_mask[j] != 0) max_score = std::max(max_score, row[j]);
    if (max_score == -INFINITY) {
        std::fill(row, row + length, 0.0f);
        return;
    }
    float total = 0.0f;
    if (key_mask == nullptr) {
        for (std::int64_t j = 0; j < allowed_end; ++j) row[j] = fast_exp(row[j] - max_score);
    } else {
        for (std::int64_t j = 0; j < allowed_end; ++j)
            row[j] = key_mask[j] != 0 ? fast_exp(row[j] - max_score) : 0.0f;
    }
    for (std::int64_t j = 0; j < allowed_end; ++j) total += row[j];
    const float inverse = 1.0f / total;
    for (std::int64_t j = 0; j < allowed_end; ++j) row[j] *= inverse;
    std::fill(row + allowed_end, row + length, 0.0f);
}

}  // namespace detail

/// Forward pass. Writes the attention probabilities P [batch * n_heads x seq x seq] (saved
/// for the backward pass) and the output out [batch * seq x n_heads * head_dim].
/// key_mask is null (no padding) or batch * seq bytes, 1 for real tokens and 0 for padding.
inline void attention_forward(const float* q, const float* k, const float* v,
                              const AttentionShape& s, const std::uint8_t* key_mask,
                              float scale, float* probabilities, float* out) {
    const std::int64_t seq = s.seq_len;
    const std::int64_t dim = s.head_dim;
    const std::int64_t qw = s.q_width();
    const std::int64_t kvw = s.kv_width();
    const std::int64_t tasks = s.batch * s.n_kv_heads;
    parallel_for(tasks, 1, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t task = first; task < last; ++task) {
            const std::int64_t b = task / s.n_kv_heads;
            const std::int64_t kv_head = task % s.n_kv_heads;
            const float* kb = k + b * seq * kvw + kv_head * dim;
            const float* vb = v + b * seq * kvw + kv_head * dim;
            const std::uint8_t* mask_b = key_mask != nullptr ? key_mask + b * seq : nullptr;
            for (std::int64_t h = kv_head * s.group(); h < (kv_head + 1) * s.group(); ++h) {
                const float* qb = q + b * seq * qw + h * dim;
                float* p = probabilities + (b * s.n_heads + h) * seq * seq;
                float* ob = out + b * seq * qw + h * dim;
                // Query rows [first, last) see keys [0, last) only, so each block of rows
                // multiplies with the keys up to its last row (the causal mask skips the rest).
                for (std::int64_t first = 0; first < seq; first += detail::attention_row_block) {
                    const std::int64_t last = std::min(seq, first + detail::attention_row_block);
                    const std::int64_t rows = last - first;
                    // S = scale * Q K^T, then the masked softmax per query row i (keys j <= i).
                    gemm(Trans::no, Trans::yes, rows, last, dim, scale, qb + first * qw, qw, kb, kvw, false,
                         p + first * seq, seq);
                    for (std::int64_t i = first; i < last; ++i)
                        detail::masked_softmax_row(p + i * seq, seq, i + 1, mask_b);
                    // O = P V.
                    gemm(Trans::no, Trans::no, rows, dim, last, 1.0f, p + first * seq, seq, vb, kvw, false,
                         ob + first * qw, qw);
                }
            }
        }
    });
}

/// Backward pass: with dP = dO V^T and dS = P * (dP - rowsum(dP * P)) (softmax Jacobian),
/// dq += scale * dS K, dk += scale * dS^T Q, dv += P^T dO. Null gradients are skipped.
/// `scratch` has room for batch * n_kv_heads * seq * seq floats.
inline void attention_backward(const float* q, const float* k, const float* v,
                               const float* probabilities, const float* d_out,
                               const AttentionShape& s, float scale, float* scratch, float* dq,
                               float* dk, float* dv) {
    const std::int64_t seq = s.seq_len;
    const std::int64_t dim = s.head_dim;
    const std::int64_t qw = s.q_width();
    const std::int64_t kvw = s.kv_width();
    const std::int64_t tasks = s.batch * s.n_kv_heads;
    // Each task owns key/value head kv_head of sequence b and the query heads of its group,
    // so the tasks write disjoint blocks of dq, dk and dv.
    parallel_for(tasks, 1, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t task = first; task < last; ++task) {
            const std::int64_t b = task / s.n_kv_heads;
            const std::int64_t kv_head = task % s.n_kv_heads;
            const float* kb = k + b * seq * kvw + kv_head * dim;
            const float* vb = v + b * seq * kvw + kv_head * dim;
            float* dp = scratch + task * seq * seq;
            for (std::int64_t h = kv_head * s.group(); h < (kv_head + 1) * s.group(); ++h) {
                const float* qb = q + b * seq * qw + h * dim;
                const float* p = probabilities + (b * s.n_heads + h) * seq * seq;
                const float* dob = d_out + b * seq * qw + h * dim;
                float* dvb = dv != nullptr ? dv + b * seq * kvw + kv_head * dim : nullptr;
                float* dkb = dk != nullptr ? dk + b * seq * kvw + kv_head * dim : nullptr;
                float* dqb = dq != nullptr ? dq + b * seq * qw + h * dim : nullptr;
                // The same row blocks as the forward pass: rows [first, last) and keys [0, last).
                for (std::int64_t first = 0; first < seq; first += detail::attention_row_block) {
                    const std::int64_t last = std::min(seq, first + detail::attention_row_block);
                    const std::int64_t rows = last - first;
                    const float* p_rows = p + first * seq;
                    // dV += P^T dO.
                    if (dvb != nullptr)
                        gemm(Trans::yes, Trans::no, last, dim, rows, 1.0f, p_rows, seq, dob + first * qw, qw, true,
                             dvb, kvw);
                    if (dqb == nullptr && dkb == nullptr) continue;
                    // dP = dO V^T.
                    float* dp_rows = dp + first * seq;
                    gemm(Trans::no, Trans::yes, rows, last, dim, 1.0f, dob + first * qw, qw, vb, kvw, false,
                         dp_rows, seq);
                    // dS = P * (dP - sum_j dP[i, j] P[i, j]) row by row.
                    for (std::int64_t r = 0; r < rows; ++r) {
                        const float* pi = p_rows + r * seq;
                        float* di = dp_rows + r * seq;
                        float dot = 0.0f;
                        for (std::int64_t j = 0; j < last; ++j) dot += di[j] * pi[j];
                        for (std::int64_t j = 0; j < last; ++j) di[j] = pi[j] * (di[j] - dot);
                    }
                    // dQ += scale * dS K, dK += scale * dS^T Q.
                    if (dqb != nullptr)
                        gemm(Trans::no, Trans::no, rows, dim, last, scale, dp_rows, seq, kb, kvw, true,
                             dqb + first * qw, qw);
                    if (dkb != nullptr)
                        gemm(Trans::yes, Trans::no, last, dim, rows, scale, dp_rows, seq, qb + first * qw, qw, true,
                             dkb, kvw);
                }
            }
        }
    });
}

/// Causal grouped-query self-attention with scale 1 / sqrt(head_dim).
/// Shapes: q [batch * seq x n_heads * head_dim], k and v [batch * seq x n_kv_heads *
/// head_dim], key_mask empty or batch * seq bytes (1 real token, 0 padding). The result
/// has q's shape. The mask is read during this call only.
inline Var attention(Tape& tape, Var q, Var k, Var v, const AttentionShape& s,
                     std::span<const std::uint8_t> key_mask = {}) {
    BITDISTILL_REQUIRE(s.batch > 0 && s.seq_len > 0 && s.n_heads > 0 && s.n_kv_heads > 0 &&
                           s.head_dim > 0 && s.n_heads % s.n_kv_heads == 0,
                       "attention: invalid sizes batch ", s.batch, ", seq_len ", s.seq_len,
                       ", n_heads ", s.n_heads, ", n_kv_heads ", s.n_kv_heads, ", head_dim ",
                       s.head_dim, " (all positive, n_kv_heads dividing n_heads)");
    const Shape q_shape = tape.shape(q);
    const Shape k_shape = tape.shape(k);
    const Shape v_shape = tape.shape(v);
    BITDISTILL_REQUIRE_AS(shape_error, q_shape.rows() == s.tokens() && q_shape.cols() == s.q_width(),
                          "attention: q has shape ", q_shape.to_string(), ", expected [",
                          s.tokens(), ", ", s.q_width(), "]");
    BITDISTILL_REQUIRE_AS(shape_error, k_shape.rows() == s.tokens() && k_shape.cols() == s.kv_width(),
                          "attention: k has shape ", k_shape.to_string(), ", expected [",
                          s.tokens(), ", ", s.kv_width(), "]");
    require_same_shape(k_shape, v_shape, "attention k and v");
    BITDISTILL_REQUIRE_AS(shape_error, key_mask.empty() || static_cast<std::int64_t>(key_mask.size()) == s.tokens(),
                          "attention: key mask has ", key_mask.size(), " entries for ",
                          s.tokens(), " tokens");

    Var y = tape.record(Shape{s.tokens(), s.q_width()}, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const AttentionShape shape{n.integers[0], n.integers[1], n.integers[2], n.integers[3],
                                   n.integers[4]};
        float* dq = t.gradient_accumulator(n.inputs[0]);
        float* dk = t.gradient_accumulator(n.inputs[1]);
        float* dv = t.gradient_accumulator(n.inputs[2]);
        float* scratch = t.saved(Var{self}, 1, shape.batch * shape.n_kv_heads * shape.seq_len * shape.seq_len);
        const Node& again = t.node(self);
        attention_backward(t.node(again.inputs[0]).value, t.node(again.inputs[1]).value,
                           t.node(again.inputs[2]).value, again.saved[0].data(), again.grad,
                           shape, again.scalars[0], scratch, dq, dk, dv);
    }, {q, k, v});
    const float scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    Node& n = tape.node(y);
    n.integers = {s.batch, s.seq_len, s.n_heads, s.n_kv_heads, s.head_dim};
    n.scalars[0] = scale;
    float* probabilities = tape.saved(y, 0, s.batch * s.n_heads * s.seq_len * s.seq_len);
    attention_forward(tape.value(q).data(), tape.value(k).data(), tape.value(v).data(), s,
                      key_mask.empty() ? nullptr : key_mask.data(), scale, probabilities,
                      tape.value(y).data());
    return y;
}

}  // namespace bitdistill::autodiff
