// Multi-head attention relation distillation, the L_AD term of BitNet Distillation
// (Wu et al., arXiv 2510.13998), which follows MiniLMv2 (Wang et al., arXiv 2012.15828).
//
// For one layer and each of Q, K and V ([tokens x width], attention heads concatenated):
// split the width into A_r relation heads, build the [seq x seq] relation of every
// sequence and relation head, take its softmax per row, and measure KL(teacher || student)
// per row. The per-row KL is averaged over the real rows of the batch, summed over the
// relation heads and over Q, K, V, and divided by A_r:
//
//   L_AD = (1 / A_r) * sum_{X in Q,K,V} sum_{a < A_r} (1 / R) * sum_{real rows i} KL_i(X, a)
//
// where R is the number of real tokens in the batch (every token when no mask is given).
//
// Relations:
// - cosine (default, the authors' released code): every token's slice of width d_r is
//   L2-normalised first, relation = x_hat x_hat^T / T_r with T_r = 1;
// - scaled_dot (the paper's Eq. 12): relation = x x^T / sqrt(d_r), no normalisation.
// Teacher and student may have different widths because each uses its own d_r = width / A_r;
// only the [seq x seq] relations are compared.
//
// Padding: the authors apply no mask here. With a token mask, padded tokens are removed
// before the relation is built, which is the same as excluding padded columns from every
// softmax and padded rows from the average. No causal mask is applied.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// How a relation head turns token vectors into a [seq x seq] relation before the softmax.
enum class RelationVariant {
    cosine,      ///< L2-normalise each token's slice, then x_hat x_hat^T / T_r
    scaled_dot,  ///< x x^T / sqrt(d_r), no normalisation
};

struct AttentionRelationOptions {
    /// Number of relation heads A_r; it must divide the width of every Q, K and V given.
    int relation_heads = 1;
    RelationVariant variant = RelationVariant::cosine;
    /// Relation temperature T_r of the cosine variant (the scaled_dot variant ignores it).
    float temperature = 1.0f;
    /// Lower bound on the norm in the cosine variant: x_hat = x / max(|x|, eps), as
    /// torch.nn.functional.normalize computes it.
    float normalize_eps = 1e-12f;
};

/// Q, K and V of one attention layer, each [batch*seq x width], heads concatenated,
/// K and V not repeated for grouped-query attention.
struct AttentionQkv {
    TensorView<const float> query;
    TensorView<const float> key;
    TensorView<const float> value;
};

/// Gradients with respect to the student's Q, K and V; an empty view skips that gradient.
struct AttentionQkvGrad {
    TensorView<float> query;
    TensorView<float> key;
    TensorView<float> value;
};

/// Value of L_AD and its three terms. Each term is already divided by A_r, so
/// total = query_term + key_term + value_term. The values are doubles because the KL
/// sums are kept in double: with a weight such as gamma = 1e5 on this loss, float
/// rounding of the result alone would show in logs and in gradient checks.
struct AttentionRelationLoss {
    double total = 0.0;
    double query_term = 0.0;
    double key_term = 0.0;
    double value_term = 0.0;
};

/// Scratch buffers for the relation loss. Pass the same workspace every step so that
/// buffers are allocated once and only grow when a larger sequence or width arrives.
class AttentionRelationWorkspace {
public:
    /// Returns at least `count` floats of scratch for `slot`, reallocating only to grow.
    float* scratch(int slot, std::int64_t count) {
        AlignedBuffer<float>& buffer = buffers_[static_cast<std::size_t>(slot)];
        if (static_cast<std::int64_t>(buffer.size()) < count)
            buffer.assign_zero(static_cast<std::size_t>(count));
        return buffer.data();
    }
    std::int64_t* token_indices(std::int64_t count) {
        if (static_cast<std::int64_t>(indices_.size()) < count)
            indices_.assign_zero(static_cast<std::size_t>(count));
        return indices_.data();
    }

    enum Slot : int {
        teacher_vectors,
        student_vectors,
        student_norms,
        teacher_relation,
        student_relation,
        student_vector_grad,
        slot_count
    };

private:
    std::array<AlignedBuffer<float>, slot_count> buffers_;
    AlignedBuffer<std::int64_t> indices_;
};

namespace detail {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrixMap = Eigen::Map<RowMatrix>;

/// Copies the slice [first_col, first_col + width) of the listed rows into `out`
/// ([count x width]) and, for the cosine variant, L2-normalises each row, storing the
/// clamped norms in `norms` when it is not null.
inline void gather_relation_head(TensorView<const float> source, const std::int64_t* rows,
                                 std::int64_t count, std::int64_t first_col, std::int64_t width,
                                 const AttentionRelationOptions& options, float* out, float* norms) {
    for (std::int64_t i = 0; i < count; ++i) {
        const float* from = source.row(rows[i]) + first_col;
        float* to = out + i * width;
        std::copy(from, from + width, to);
        if (options.variant != RelationVariant::cosine) continue;
        double squares = 0.0;
        for (std::int64_t c = 0; c < width; ++c) squares += static_cast<double>(to[c]) * to[c];
        const float norm = std::max(static_cast<float>(std::sqrt(squares)), options.normalize_eps);
        const float inverse_norm = 1.0f / norm;
        for (std::int64_t c = 0; c < width; ++c) to[c] *= inverse_norm;
        if (norms != nullptr) norms[i] = norm;
    }
}

/// Scale applied to x x^T: 1 / T_r for cosine, 1 / sqrt(d_r) for scaled_dot.
inline float relation_scale(const AttentionRelationOptions& options, std::int64_t head_width) {
    return options.variant == RelationVariant::cosine
               ? 1.0f / options.temperature
               : 1.0f / std::sqrt(static_cast<float>(head_width));
}

/// Offset c with log softmax(row)_j = row_j - c, that is max + log sum exp(row - max).
inline double log_softmax_offset(const float* row, std::int64_t count) {
    const float max_value = *std::max_element(row, row + count);
    double sum_exp = 0.0;
    for (std::int64_t j = 0; j < count; ++j) sum_exp += std::exp(row[j] - max_value);
    return static_cast<double>(max_value) + std::log(sum_exp);
}

}  // namespace detail

/// Computes one projection's term of L_AD (for Q, K or V alone), already divided by A_r,
/// and unless `student_grad` is an empty view overwrites it with the gradient of that term
/// with respect to `student`. Padded rows get a zero gradient.
///
/// Shapes: teacher [batch*seq x width_t], student [batch*seq x width_s], token_mask empty
/// or batch*seq bytes (1 = real token, 0 = padding), student_grad empty or the shape of
/// student. A_r = options.relation_heads must divide width_t and width_s. With no real
/// token the term is 0. Throws shape_error on a shape mismatch and std::invalid_argument
/// on bad options or mask values.
inline double attention_relation_term(TensorView<const float> teacher, TensorView<const float> student,
                                     std::int64_t batch, std::int64_t seq,
                                     std::span<const std::uint8_t> token_mask,
                                     const AttentionRelationOptions& options,
                                     TensorView<float> student_grad,
                                     AttentionRelationWorkspace& workspace) {
    using detail::RowMatrixMap;
    const std::int64_t heads = options.relation_heads;
    const std::int64_t tokens = batch * seq;
    const std::int64_t teacher_width = teacher.cols();
    const std::int64_t student_width = student.cols();
    const bool want_grad = student_grad.data() != nullptr;

    BITDISTILL_REQUIRE(batch >= 0 && seq >= 0, "attention_relation: batch ", batch, " and seq ", seq,
                       " must not be negative");
    BITDISTILL_REQUIRE(heads >= 1, "attention_relation: relation_heads must be at least 1, got ", heads);
    BITDISTILL_REQUIRE(options.variant != RelationVariant::cosine ||
                           (std::isfinite(options.temperature) && options.temperature > 0.0f),
                       "attention_relation: temperature must be positive, got ", options.temperature);
    BITDISTILL_REQUIRE_AS(shape_error, teacher.rows() == tokens && student.rows() == tokens,
                          "attention_relation: teacher ", teacher.shape().to_string(), " and student ",
                          student.shape().to_string(), " must both have batch*seq = ", batch, "*", seq,
                          " = ", tokens, " rows");
    BITDISTILL_REQUIRE_AS(shape_error, teacher_width % heads == 0 && student_width % heads == 0,
                          "attention_relation: relation_heads ", heads,
                          " must divide the teacher width ", teacher_width, " and the student width ",
                          student_width);
    BITDISTILL_REQUIRE_AS(shape_error, token_mask.empty() || static_cast<std::int64_t>(token_mask.size()) == tokens,
                          "attention_relation: token mask has ", token_mask.size(),
                          " entries but batch*seq is ", tokens);
    if (want_grad) require_same_shape(student.shape(), student_grad.shape(), "attention_relation gradient");

    std::int64_t real_tokens = tokens;
    if (!token_mask.empty()) {
        real_tokens = 0;
        for (std::size_t i = 0; i < token_mask.size(); ++i) {
            BITDISTILL_REQUIRE(token_mask[i] <= 1, "attention_relation: mask value ",
                               static_cast<int>(token_mask[i]), " at token ", i, " is not 0 or 1");
            real_tokens += token_mask[i];
        }
    }
    if (want_grad) std::fill(student_grad.data(), student_grad.data() + student_grad.numel(), 0.0f);
    if (real_tokens == 0) return 0.0f;

    const std::int64_t teacher_head_width = teacher_width / heads;
    const std::int64_t student_head_width = student_width / heads;
    const float teacher_scale = detail::relation_scale(options, teacher_head_width);
    const float student_scale = detail::relation_scale(options, student_head_width);
    const bool cosine = options.variant == RelationVariant::cosine;
    // Every row's KL enters the loss with this weight: mean over real rows, then 1 / A_r.
    const float row_weight = 1.0f / (static_cast<float>(heads) * static_cast<float>(real_tokens));

    using Slot = AttentionRelationWorkspace::Slot;
    std::int64_t* rows = workspace.token_indices(seq);
    float* teacher_vectors = workspace.scratch(Slot::teacher_vectors, seq * teacher_head_width);
    float* student_vectors = workspace.scratch(Slot::student_vectors, seq * student_head_width);
    float* student_norms = workspace.scratch(Slot::student_norms, seq);
    float* teacher_relation = workspace.scratch(Slot::teacher_relation, seq * seq);
    float* student_relation = workspace.scratch(Slot::student_relation, seq * seq);
    float* student_vector_grad =
        want_grad ? workspace.scratch(Slot::student_vector_grad, seq * student_head_width) : nullptr;

    double kl_sum = 0.0;
    for (std::int64_t sequence = 0; sequence < batch; ++sequence) {
        // Keep only the real tokens: this drops padded rows and padded columns at once.
        std::int64_t count = 0;
        for (std::int64_t position = 0; position < seq; ++position) {
            const std::int64_t token = sequence * seq + position;
            if (token_mask.empty() || token_mask[static_cast<std::size_t>(token)] != 0) rows[count++] = token;
        }
        if (count == 0) continue;

        for (std::int64_t head = 0; head < heads; ++head) {
            detail::gather_relation_head(teacher, rows, count, head * teacher_head_width,
                                         teacher_head_width, options, teacher_vectors, nullptr);
            detail::gather_relation_head(student, rows, count, head * student_head_width,
                                         student_head_width, options, student_vectors, student_norms);
            RowMatrixMap xt(teacher_vectors, count, teacher_head_width);
            RowMatrixMap xs(student_vectors, count, student_head_width);
            RowMatrixMap st(teacher_relation, count, count);
            RowMatrixMap ss(student_relation, count, count);

            // Relations S = scale * x x^T, [count x count].
            st.noalias() = teacher_scale * (xt * xt.transpose());
            ss.noalias() = student_scale * (xs * xs.transpose());

            for (std::int64_t i = 0; i < count; ++i) {
                const float* teacher_row = teacher_relation + i * count;
                float* student_row = student_relation + i * count;
                const double teacher_offset = detail::log_softmax_offset(teacher_row, count);
                const double student_offset = detail::log_softmax_offset(student_row, count);
                const float offset_difference = static_cast<float>(teacher_offset - student_offset);

                // KL_i = sum_j p_t,ij * (log p_t,ij - log p_s,ij); log p = s - offset.
                double kl = 0.0;
                for (std::int64_t j = 0; j < count; ++j) {
                    const float pt = std::exp(teacher_row[j] - static_cast<float>(teacher_offset));
                    const float ps = std::exp(student_row[j] - static_cast<float>(student_offset));
                    kl += static_cast<double>(pt) * ((teacher_row[j] - student_row[j]) - offset_difference);
                    // dL/dS_s,ij = row_weight * (p_s,ij - p_t,ij), stored over S_s.
                    student_row[j] = row_weight * (ps - pt);
                }
                kl_sum += kl;
            }
            if (!want_grad) continue;

            // S = scale * x x^T, so dL/dx = scale * (G + G^T) x with G = dL/dS.
            RowMatrixMap dxs(student_vector_grad, count, student_head_width);
            dxs.noalias() = ss * xs;
            dxs.noalias() += ss.transpose() * xs;
            dxs *= student_scale;

            for (std::int64_t i = 0; i < count; ++i) {
                float* grad_row = student_grad.row(rows[i]) + head * student_head_width;
                const float* dx_hat = student_vector_grad + i * student_head_width;
                if (!cosine) {
                    std::copy(dx_hat, dx_hat + student_head_width, grad_row);
                    continue;
                }
                // x_hat = x / n with n = max(|x|, eps): dL/dx = (dx_hat - x_hat (x_hat . dx_hat)) / n
                // while |x| > eps; below eps n is constant and dL/dx = dx_hat / eps.
                const float* x_hat = student_vectors + i * student_head_width;
                const float norm = student_norms[i];
                const float inverse_norm = 1.0f / norm;
                float projection = 0.0f;
                if (norm > options.normalize_eps) {
                    for (std::int64_t c = 0; c < student_head_width; ++c) projection += x_hat[c] * dx_hat[c];
                }
                for (std::int64_t c = 0; c < student_head_width; ++c)
                    grad_row[c] = (dx_hat[c] - x_hat[c] * projection) * inverse_norm;
            }
        }
    }
    return kl_sum / (static_cast<double>(heads) * static_cast<double>(real_tokens));
}

/// Computes L_AD for one layer from the teacher's and the student's Q, K and V, and writes
/// the gradients with respect to the student's Q, K and V (overwriting them; empty views
/// are skipped). The teacher gets no gradient.
///
/// Shapes: every view [batch*seq x width]; the widths may differ between Q and K/V and
/// between teacher and student, and A_r = options.relation_heads must divide all six.
/// token_mask is empty (all tokens real) or batch*seq bytes with 1 for real tokens.
/// Pass a workspace that lives across steps to avoid allocating scratch on every call.
/// Throws shape_error naming the widths when A_r does not divide one of them.
inline AttentionRelationLoss attention_relation_distillation(
    const AttentionQkv& teacher, const AttentionQkv& student, std::int64_t batch, std::int64_t seq,
    std::span<const std::uint8_t> token_mask, const AttentionRelationOptions& options,
    const AttentionQkvGrad& student_grad, AttentionRelationWorkspace& workspace) {
    AttentionRelationLoss loss;
    loss.query_term = attention_relation_term(teacher.query, student.query, batch, seq, token_mask,
                                              options, student_grad.query, workspace);
    loss.key_term = attention_relation_term(teacher.key, student.key, batch, seq, token_mask, options,
                                            student_grad.key, workspace);
    loss.value_term = attention_relation_term(teacher.value, student.value, batch, seq, token_mask,
                                              options, student_grad.value, workspace);
    loss.total = loss.query_term + loss.key_term + loss.value_term;
    return loss;
}

/// Same as above with a workspace that lives for this call only.
inline AttentionRelationLoss attention_relation_distillation(
    const AttentionQkv& teacher, const AttentionQkv& student, std::int64_t batch, std::int64_t seq,
    std::span<const std::uint8_t> token_mask, const AttentionRelationOptions& options,
    const AttentionQkvGrad& student_grad) {
    AttentionRelationWorkspace workspace;
    return attention_relation_distillation(teacher, student, batch, seq, token_mask, options,
                                           student_grad, workspace);
}

}  // namespace bitdistill
