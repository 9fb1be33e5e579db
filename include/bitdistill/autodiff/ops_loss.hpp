// Loss tape ops: masked token cross-entropy, logits distillation and attention relation
// distillation, each wrapping the loss functions of losses/ (which return the loss and its
// gradient together). The forward pass stores the gradient of the loss in the node when a
// gradient is needed, and the backward pass scales it by the incoming gradient.
#pragma once

#include <cstdint>
#include <span>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/losses/attention_relation.hpp"
#include "bitdistill/losses/cross_entropy.hpp"
#include "bitdistill/losses/logits_distillation.hpp"

namespace bitdistill::autodiff {

namespace detail {

/// Backward rule shared by the loss ops: input `slot` gets dy * (saved gradient `slot`).
inline void scaled_saved_gradient_backward(Tape& t, std::int32_t self, int slot) {
    const Node& n = t.node(self);
    const std::int32_t input = n.inputs[slot];
    if (input < 0) return;
    const float dy = n.grad[0];
    const float* saved = n.saved[slot].data();
    const GradientSink sink = t.gradient_sink(input);
    write_gradient(sink, t.node(input).shape.numel(), [&](std::int64_t i) { return dy * saved[i]; });
}

}  // namespace detail

// ------------------------------------------------------------------------ cross_entropy

/// Mean over non-ignored rows of -log softmax(logits)[row, target]; the gradient is
/// dlogits = dy * (softmax - onehot(target)) / count on counted rows, 0 on ignored rows.
/// Shapes: logits [N x V] (2-D view), targets N values in [0, V) or ignored_target (-1);
/// the result is [1]. The targets are read during this call only. With no counted row the
/// loss is 0.
inline Var cross_entropy(Tape& tape, Var logits, std::span<const std::int32_t> targets) {
    const Shape shape = tape.shape(logits);
    Var y = tape.record(detail::scalar_shape(), [](Tape& t, std::int32_t self) {
        detail::scaled_saved_gradient_backward(t, self, 0);
    }, {logits});
    const bool want_grad = tape.requires_grad(y);
    TensorView<float> grad;
    if (want_grad) grad = TensorView<float>(tape.saved(y, 0, shape.numel()), shape);
    tape.value(y)[0] = bitdistill::cross_entropy(tape.value(logits), targets, grad);
    return y;
}

// ------------------------------------------------------------------ logits_distillation

/// tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)) averaged over the counted
/// rows; the gradient is dstudent = dy * tau * (p_s - p_t) / count on counted rows.
/// Shapes: student_logits [N x V], teacher_logits [N x V], mask empty (all rows counted)
/// or N bytes (1 counted, 0 padding); the result is [1]. The teacher logits and the mask
/// are read during this call only.
inline Var logits_distillation(Tape& tape, Var student_logits,
                               TensorView<const float> teacher_logits, float tau,
                               std::span<const std::uint8_t> mask = {}) {
    const Shape shape = tape.shape(student_logits);
    Var y = tape.record(detail::scalar_shape(), [](Tape& t, std::int32_t self) {
        detail::scaled_saved_gradient_backward(t, self, 0);
    }, {student_logits});
    TensorView<float> grad;
    if (tape.requires_grad(y)) grad = TensorView<float>(tape.saved(y, 0, shape.numel()), shape);
    tape.value(y)[0] = bitdistill::logits_distillation(teacher_logits, tape.value(student_logits),
                                                       tau, mask, grad);
    return y;
}

// ------------------------------------------------------- attention_relation_distillation

/// L_AD of one layer (see losses/attention_relation.hpp for the definition): the sum of
/// the Q, K and V relation terms, each already divided by A_r. The gradient of each
/// student tensor is dy times the gradient that the loss function returns.
/// Shapes: student q, k, v [batch*seq x width] tape values; teacher views [batch*seq x
/// width_t]; token_mask empty or batch*seq bytes; the result is [1]. The teacher views and
/// the mask are read during this call only. Pass a workspace that outlives the steps so
/// that its scratch is allocated once.
inline Var attention_relation_distillation(Tape& tape, Var q, Var k, Var v,
                                           const AttentionQkv& teacher, std::int64_t batch,
                                           std::int64_t seq,
                                           std::span<const std::uint8_t> token_mask,
                                           const AttentionRelationOptions& options,
                                           AttentionRelationWorkspace& workspace) {
    const Shape q_shape = tape.shape(q);
    const Shape k_shape = tape.shape(k);
    const Shape v_shape = tape.shape(v);
    Var y = tape.record(detail::scalar_shape(), [](Tape& t, std::int32_t self) {
        detail::scaled_saved_gradient_backward(t, self, 0);
        detail::scaled_saved_gradient_backward(t, self, 1);
        detail::scaled_saved_gradient_backward(t, self, 2);
    }, {q, k, v});
    AttentionQkvGrad grad;
    if (tape.requires_grad(q)) grad.query = TensorView<float>(tape.saved(y, 0, q_shape.numel()), q_shape);
    if (tape.requires_grad(k)) grad.key = TensorView<float>(tape.saved(y, 1, k_shape.numel()), k_shape);
    if (tape.requires_grad(v)) grad.value = TensorView<float>(tape.saved(y, 2, v_shape.numel()), v_shape);
    if (!tape.requires_grad(y)) grad = {};
    const AttentionQkv student{tape.value(q), tape.value(k), tape.value(v)};
    const AttentionRelationLoss loss = bitdistill::attention_relation_distillation(
        teacher, student, batch, seq, token_mask, options, grad, workspace);
    tape.value(y)[0] = static_cast<float>(loss.total);
    return y;
}

}  // namespace bitdistill::autodiff
