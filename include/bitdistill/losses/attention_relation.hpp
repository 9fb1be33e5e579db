// Multi-head attention relation distillation, the L_AD term of BitNet Distillation
// (Wu et al., arXiv 2510.13998), which follows MiniLMv2 (Wang et al., "MiniLMv2:
// Multi-Head Self-Attention Relation Distillation for Compressing Pretrained Transformers").
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
// - cosine (default): every token's slice of width d_r is L2-normalised first, and
//   relation = x_hat x_hat^T / T_r with T_r = 1;
// - scaled_dot (Eq. 12 of the BitNet Distillation paper): relation = x x^T / sqrt(d_r),
//   no normalisation.
// NOTE: cosine is the default because it is this project's reading of the authors'
// released code (microsoft/BitNet pull request 382). That code was not compared here.
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
#include <vector>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// Formula of the [seq x seq] relation that each relation head builds before the softmax.
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
/// buffers are allocated once and only grow when a longer sequence, a wider relation
/// head, a larger batch or more threads arrive. A workspace serves one call at a time.
class AttentionRelationWorkspace {
public:
    enum Slot : int {
        teacher_vectors,
        student_vectors,
        student_norms,
        teacher_relation,
        student_relation,
        student_vector_grad,
        teacher_row_probabilities,
        student_row_probabilities,
        slot_count
    };

    /// Scratch of one thread: one float buffer per Slot and the token index list.
    class ThreadScratch {
    public:
        /// Returns at least `count` floats for `slot`, reallocating only to grow.
        float* floats(Slot slot, std::int64_t count) {
            AlignedBuffer<float>& buffer = buffers_[static_cast<std::size_t>(slot)];
            if (static_cast<std::int64_t>(buffer.size()) < count) buffer.assign_zero(static_cast<std::size_t>(count));
            return buffer.data();
        }
        std::int64_t* token_indices(std::int64_t count) {
            if (static_cast<std::int64_t>(indices_.size()) < count)
                indices_.assign_zero(static_cast<std::size_t>(count));
            return indices_.data();
        }

    private:
        std::array<AlignedBuffer<float>, slot_count> buffers_;
        AlignedBuffer<std::int64_t> indices_;
    };

    /// Makes scratch for `threads` threads and room for `sequences` per-sequence sums.
    /// It resizes the list of scratch sets, so it must run outside the parallel region.
    /// Inside the region each thread grows only its own set's buffers.
    void reserve(std::size_t threads, std::int64_t sequences) {
        if (scratch_.size() < threads) scratch_.resize(threads);
        if (static_cast<std::int64_t>(sequence_sums_.size()) < sequences)
            sequence_sums_.assign_zero(static_cast<std::size_t>(sequences));
    }
    [[nodiscard]] ThreadScratch& thread_scratch(std::size_t thread) { return scratch_.at(thread); }
    [[nodiscard]] double* sequence_sums() noexcept { return sequence_sums_.data(); }

private:
    std::vector<ThreadScratch> scratch_;
    AlignedBuffer<double> sequence_sums_;
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

/// Writes softmax(row) to `probabilities` and returns the offset c with
/// log softmax(row)_j = row_j - c, that is max + log sum exp(row - max).
inline double softmax_row(const float* row, std::int64_t count, float* probabilities) {
    const float max_value = *std::max_element(row, row + count);
    double sum_exp = 0.0;
    for (std::int64_t j = 0; j < count; ++j) {
        probabilities[j] = std::exp(row[j] - max_value);
        sum_exp += probabilities[j];
    }
    const auto inverse_sum = static_cast<float>(1.0 / sum_exp);
    for (std::int64_t j = 0; j < count; ++j) probabilities[j] *= inverse_sum;
    return static_cast<double>(max_value) + std::log(sum_exp);
}

/// Fixed arguments of one relation term, shared by all sequences.
struct RelationTermPlan {
    TensorView<const float> teacher;
    TensorView<const float> student;
    TensorView<float> student_grad;  ///< empty: value only
    std::span<const std::uint8_t> token_mask;
    const AttentionRelationOptions* options = nullptr;
    std::int64_t seq = 0;
    std::int64_t heads = 0;
    std::int64_t teacher_head_width = 0;
    std::int64_t student_head_width = 0;
    float teacher_scale = 1.0f;
    float student_scale = 1.0f;
    float row_weight = 0.0f;  ///< 1 / (A_r * real tokens in the batch)
};

/// Returns the sum over relation heads and real rows of KL(teacher || student) for one
/// sequence, and writes that sequence's rows of the student gradient (real rows only).
inline double relation_sequence(const RelationTermPlan& plan, std::int64_t sequence,
                                AttentionRelationWorkspace::ThreadScratch& scratch) {
    using Slot = AttentionRelationWorkspace::Slot;
    const AttentionRelationOptions& options = *plan.options;
    const bool want_grad = plan.student_grad.data() != nullptr;
    const std::int64_t seq = plan.seq;
    const std::int64_t dt = plan.teacher_head_width;
    const std::int64_t ds = plan.student_head_width;

    // Keep only the real tokens: this drops padded rows and padded columns at once.
    std::int64_t* rows = scratch.token_indices(seq);
    std::int64_t count = 0;
    for (std::int64_t position = 0; position < seq; ++position) {
        const std::int64_t token = sequence * seq + position;
        if (plan.token_mask.empty() || plan.token_mask[static_cast<std::size_t>(token)] != 0) rows[count++] = token;
    }
    if (count == 0) return 0.0;

    float* teacher_vectors = scratch.floats(Slot::teacher_vectors, count * dt);
    float* student_vectors = scratch.floats(Slot::student_vectors, count * ds);
    float* student_norms = scratch.floats(Slot::student_norms, count);
    float* teacher_relation = scratch.floats(Slot::teacher_relation, count * count);
    float* student_relation = scratch.floats(Slot::student_relation, count * count);
    float* student_vector_grad = want_grad ? scratch.floats(Slot::student_vector_grad, count * ds) : nullptr;
    float* teacher_probabilities = scratch.floats(Slot::teacher_row_probabilities, count);
    float* student_probabilities = scratch.floats(Slot::student_row_probabilities, count);

    double kl_sum = 0.0;
    for (std::int64_t head = 0; head < plan.heads; ++head) {
        gather_relation_head(plan.teacher, rows, count, head * dt, dt, options, teacher_vectors, nullptr);
        gather_relation_head(plan.student, rows, count, head * ds, ds, options, student_vectors, student_norms);
        RowMatrixMap xt(teacher_vectors, count, dt);
        RowMatrixMap xs(student_vectors, count, ds);
        RowMatrixMap st(teacher_relation, count, count);
        RowMatrixMap ss(student_relation, count, count);

        // Relations S = scale * x x^T, [count x count].
        st.noalias() = plan.teacher_scale * (xt * xt.transpose());
        ss.noalias() = plan.student_scale * (xs * xs.transpose());

        for (std::int64_t i = 0; i < count; ++i) {
            const float* teacher_row = teacher_relation + i * count;
            float* student_row = student_relation + i * count;
            const double teacher_offset = softmax_row(teacher_row, count, teacher_probabilities);
            const double student_offset = softmax_row(student_row, count, student_probabilities);
            const auto offset_difference = static_cast<float>(teacher_offset - student_offset);

            // KL_i = sum_j p_t,ij * (log p_t,ij - log p_s,ij), with log p = s - offset.
            double kl = 0.0;
            for (std::int64_t j = 0; j < count; ++j) {
                const float pt = teacher_probabilities[j];
                kl += static_cast<double>(pt) * ((teacher_row[j] - student_row[j]) - offset_difference);
                // dL/dS_s,ij = row_weight * (p_s,ij - p_t,ij), stored over S_s.
                student_row[j] = plan.row_weight * (student_probabilities[j] - pt);
            }
            kl_sum += kl;
        }
        if (!want_grad) continue;

        // S = scale * x x^T, so dL/dx = scale * (G + G^T) x with G = dL/dS.
        RowMatrixMap dxs(student_vector_grad, count, ds);
        dxs.noalias() = ss * xs;
        dxs.noalias() += ss.transpose() * xs;
        dxs *= plan.student_scale;

        for (std::int64_t i = 0; i < count; ++i) {
            float* grad_row = plan.student_grad.row(rows[i]) + head * ds;
            const float* dx_hat = student_vector_grad + i * ds;
            if (options.variant != RelationVariant::cosine) {
                std::copy(dx_hat, dx_hat + ds, grad_row);
                continue;
            }
            // x_hat = x / n with n = max(|x|, eps): dL/dx = (dx_hat - x_hat (x_hat . dx_hat)) / n
            // while |x| > eps; below eps n is constant and dL/dx = dx_hat / eps.
            const float* x_hat = student_vectors + i * ds;
            const float norm = student_norms[i];
            float projection = 0.0f;
            if (norm > options.normalize_eps) {
                for (std::int64_t c = 0; c < ds; ++c) projection += x_hat[c] * dx_hat[c];
            }
            const float inverse_norm = 1.0f / norm;
            for (std::int64_t c = 0; c < ds; ++c) grad_row[c] = (dx_hat[c] - x_hat[c] * projection) * inverse_norm;
        }
    }
    return kl_sum;
}

}  // namespace detail

/// Computes one projection's term of L_AD (for Q, K or V alone), already divided by A_r,
/// and unless `student_grad` is an empty view overwrites it with the gradient of that term
/// with respect to `student`. Padded rows get a zero gradient.
///
/// Shapes: teacher [batch*seq x width_t], student [batch*seq x width_s], token_mask empty
/// or batch*seq bytes (1 = real token, 0 = padding), student_grad empty or the shape of
/// student. A_r = options.relation_heads must divide width_t and width_s. With no real
/// token the term is 0.
/// Sequences are split over `num_threads()` threads. The KL sum of each sequence is kept
/// apart and the sums are added in sequence order, so the value does not depend on the
/// thread count. Eigen's own thread count is set to num_threads() for the products.
/// NOTE: Eigen::setNbThreads is process-wide.
/// Throws shape_error on a shape mismatch and std::invalid_argument on bad options or
/// mask values.
inline double attention_relation_term(TensorView<const float> teacher, TensorView<const float> student,
                                      std::int64_t batch, std::int64_t seq,
                                      std::span<const std::uint8_t> token_mask,
                                      const AttentionRelationOptions& options,
                                      TensorView<float> student_grad,
                                      AttentionRelationWorkspace& workspace) {
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
    BITDISTILL_REQUIRE(options.normalize_eps > 0.0f, "attention_relation: normalize_eps must be positive, got ",
                       options.normalize_eps);
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
    if (real_tokens == 0) return 0.0;

    detail::RelationTermPlan plan;
    plan.teacher = teacher;
    plan.student = student;
    plan.student_grad = student_grad;
    plan.token_mask = token_mask;
    plan.options = &options;
    plan.seq = seq;
    plan.heads = heads;
    plan.teacher_head_width = teacher_width / heads;
    plan.student_head_width = student_width / heads;
    plan.teacher_scale = detail::relation_scale(options, plan.teacher_head_width);
    plan.student_scale = detail::relation_scale(options, plan.student_head_width);
    // Every row's KL enters the loss with this weight: mean over real rows, then 1 / A_r.
    plan.row_weight = 1.0f / (static_cast<float>(heads) * static_cast<float>(real_tokens));

    // Thread t takes sequences t, t + threads, ...; each writes only its sequences' rows.
    const auto threads = static_cast<std::int64_t>(std::min<std::int64_t>(num_threads(), batch));
    workspace.reserve(static_cast<std::size_t>(threads), batch);
    double* sequence_sums = workspace.sequence_sums();
    Eigen::setNbThreads(num_threads());
    parallel_for(threads, 1, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t thread = first; thread < last; ++thread) {
            AttentionRelationWorkspace::ThreadScratch& scratch =
                workspace.thread_scratch(static_cast<std::size_t>(thread));
            for (std::int64_t sequence = thread; sequence < batch; sequence += threads)
                sequence_sums[sequence] = detail::relation_sequence(plan, sequence, scratch);
        }
    });

    double kl_sum = 0.0;
    for (std::int64_t sequence = 0; sequence < batch; ++sequence) kl_sum += sequence_sums[sequence];
    return kl_sum / (static_cast<double>(heads) * static_cast<double>(real_tokens));
}

/// Computes L_AD for one layer from the teacher's and the student's Q, K and V, and
/// overwrites the gradients with respect to the student's Q, K and V. Empty gradient
/// views are skipped. The teacher gets no gradient.
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
