// Reverse-mode automatic differentiation over tensors: a tape of tensor operations.
//
// A Tape records one node per tensor operation (not per scalar). Each node owns its output
// buffer, its gradient buffer and up to three saved tensors that its backward rule needs.
// Tape::reset() starts a new step but keeps every node and buffer, so the op recorded at
// position i of the next step receives the buffers used at position i before. When the
// shapes repeat, a step allocates nothing after the first one.
//
// Gradients flow lazily: a node's gradient buffer is claimed by the first backward rule
// that writes it, which overwrites instead of adding (no zero fill). Nodes that no
// gradient reaches are skipped. Parameter leaves point at caller-owned gradient tensors
// and always accumulate, so gradients of several backward passes add up until the caller
// zeroes them.
//
// Backward rules are plain function pointers (no std::function, no captures): all state an
// op needs is stored in its node (inputs, scalars, integers, context pointers, saved
// buffers).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill::autodiff {

/// Handle to one tensor recorded on a Tape: the position of its node. Valid until the
/// tape is reset.
struct Var {
    std::int32_t index = -1;
    [[nodiscard]] bool valid() const noexcept { return index >= 0; }
};

class Tape;

/// Backward rule of one recorded op. It reads the gradient of node `node` and adds the
/// gradients of the node's inputs through Tape::gradient_sink / gradient_accumulator.
using BackwardRule = void (*)(Tape& tape, std::int32_t node);

/// Maximum number of tape inputs of one op.
inline constexpr int max_node_inputs = 4;
/// Number of saved buffers a node owns for its backward rule.
inline constexpr int max_saved_buffers = 3;

/// One recorded op: its output, the gradient of the output and the state of its backward
/// rule.
struct Node {
    Shape shape;
    float* value = nullptr;  ///< output values; owned by value_storage unless a leaf or a view
    float* grad = nullptr;   ///< gradient of the output; valid when grad_ready
    std::array<std::int32_t, max_node_inputs> inputs{-1, -1, -1, -1};
    std::array<float, 4> scalars{};
    std::array<std::int64_t, 8> integers{};
    std::array<const void*, 3> context{};  ///< caller-owned data (token ids, masks, layers)
    BackwardRule backward = nullptr;
    bool requires_grad = false;
    bool grad_external = false;  ///< gradient lives in a caller-owned tensor and accumulates
    bool grad_ready = false;     ///< gradient written during the current backward pass

    AlignedBuffer<float> value_storage;
    AlignedBuffer<float> grad_storage;
    std::array<AlignedBuffer<float>, max_saved_buffers> saved;
    AlignedBuffer<std::int32_t> saved_ids;  ///< token ids or targets the backward rule reads
};

/// Destination for the gradient of one input. When `overwrite` is true this is the first
/// write of the pass and the caller must store every element; otherwise it must add.
/// `data` is null when the input needs no gradient.
struct GradientSink {
    float* data = nullptr;
    bool overwrite = false;
    [[nodiscard]] explicit operator bool() const noexcept { return data != nullptr; }
    /// Stores or adds `value` at element `i`.
    void put(std::int64_t i, float value) const noexcept {
        if (overwrite)
            data[i] = value;
        else
            data[i] += value;
    }
};

namespace detail {

/// Grows `buffer` to at least `count` elements; never shrinks, so a smaller step reuses it.
template <class T>
T* reserve(AlignedBuffer<T>& buffer, std::int64_t count) {
    if (static_cast<std::int64_t>(buffer.size()) < count)
        buffer = AlignedBuffer<T>(static_cast<std::size_t>(count));
    return buffer.data();
}

}  // namespace detail

class Tape {
public:
    Tape() = default;
    Tape(const Tape&) = delete;
    Tape& operator=(const Tape&) = delete;
    Tape(Tape&&) noexcept = default;
    Tape& operator=(Tape&&) noexcept = default;

    /// Starts a new step: drops every recorded op but keeps the nodes and their buffers
    /// for reuse. Every Var of the previous step becomes invalid.
    void reset() noexcept { size_ = 0; }

    /// Number of ops recorded since the last reset.
    [[nodiscard]] std::int32_t size() const noexcept { return size_; }

    /// When false, recorded ops need no gradient and skip the work their backward would
    /// need (a teacher forward or an evaluation). Defaults to true.
    void set_grad_enabled(bool enabled) noexcept { grad_enabled_ = enabled; }
    [[nodiscard]] bool grad_enabled() const noexcept { return grad_enabled_; }

    /// Records a leaf whose gradient accumulates into the caller-owned `grad` (a
    /// parameter). Both views must stay valid until backward returns; shapes must match.
    Var parameter(TensorView<float> value, TensorView<float> grad) {
        require_same_shape(value.shape(), grad.shape(), "Tape::parameter value and gradient");
        Var v = push(value.shape());
        Node& n = nodes_[v.index];
        n.value = value.data();
        n.grad = grad.data();
        n.requires_grad = grad_enabled_;
        n.grad_external = true;
        return v;
    }

    /// Records a leaf without gradient (input data, teacher outputs). The tape reads but
    /// never writes `value`, which must stay valid until backward returns.
    Var constant(TensorView<const float> value) {
        Var v = push(value.shape());
        nodes_[v.index].value = const_cast<float*>(value.data());
        return v;
    }

    /// Records a leaf without gradient that owns a copy of `value`.
    Var constant_copy(TensorView<const float> value) {
        Var v = push(value.shape());
        Node& n = nodes_[v.index];
        n.value = detail::reserve(n.value_storage, value.numel());
        if (value.numel() != 0)
            std::memcpy(n.value, value.data(), static_cast<std::size_t>(value.numel()) * sizeof(float));
        return v;
    }

    /// Records an op output of `shape` with an uninitialised value buffer. The node needs a
    /// gradient when gradients are enabled and any valid input needs one; then `rule`
    /// becomes its backward rule. For op implementers.
    Var record(Shape shape, BackwardRule rule, std::initializer_list<Var> inputs) {
        BITDISTILL_ASSERT(inputs.size() <= max_node_inputs);
        bool needs_grad = false;
        for (Var input : inputs) {
            if (!input.valid()) continue;
            check_var(input, "record");
            needs_grad = needs_grad || nodes_[input.index].requires_grad;
        }
        Var v = push(shape);
        Node& n = nodes_[v.index];
        int slot = 0;
        for (Var input : inputs) n.inputs[slot++] = input.index;
        n.requires_grad = grad_enabled_ && needs_grad;
        n.backward = n.requires_grad ? rule : nullptr;
        n.value = detail::reserve(n.value_storage, shape.numel());
        return v;
    }

    /// Records an op output that shares the value storage of `source` (a reshape).
    Var record_view(Shape shape, Var source, BackwardRule rule) {
        check_var(source, "record_view");
        BITDISTILL_REQUIRE_AS(shape_error, shape.numel() == nodes_[source.index].shape.numel(),
                              "reshape: cannot view ", nodes_[source.index].shape.to_string(),
                              " as ", shape.to_string());
        const bool needs_grad = grad_enabled_ && nodes_[source.index].requires_grad;
        Var v = push(shape);
        Node& n = nodes_[v.index];
        n.inputs[0] = source.index;
        n.requires_grad = needs_grad;
        n.backward = needs_grad ? rule : nullptr;
        n.value = nodes_[source.index].value;
        return v;
    }

    /// Node of `v`. The reference is invalidated by the next recorded op, which may grow
    /// the node list.
    [[nodiscard]] Node& node(Var v) {
        check_var(v, "node");
        return nodes_[v.index];
    }
    [[nodiscard]] Node& node(std::int32_t index) noexcept { return nodes_[index]; }
    [[nodiscard]] const Node& node(std::int32_t index) const noexcept { return nodes_[index]; }

    /// Shape of `v`, returned by value because recording an op may move the nodes.
    [[nodiscard]] Shape shape(Var v) const {
        check_var(v, "shape");
        return nodes_[v.index].shape;
    }
    [[nodiscard]] bool requires_grad(Var v) const {
        check_var(v, "requires_grad");
        return nodes_[v.index].requires_grad;
    }

    /// Output values of `v`.
    [[nodiscard]] TensorView<float> value(Var v) {
        check_var(v, "value");
        Node& n = nodes_[v.index];
        return {n.value, n.shape};
    }
    [[nodiscard]] TensorView<const float> value(Var v) const {
        check_var(v, "value");
        const Node& n = nodes_[v.index];
        return {n.value, n.shape};
    }

    /// Gradient of `v` after backward. A node that no gradient reached reads as zeros.
    [[nodiscard]] TensorView<const float> grad(Var v) {
        check_var(v, "grad");
        Node& n = nodes_[v.index];
        if (!n.grad_ready && !n.grad_external) {
            n.grad = detail::reserve(n.grad_storage, n.shape.numel());
            std::memset(n.grad, 0, static_cast<std::size_t>(n.shape.numel()) * sizeof(float));
            n.grad_ready = true;
        }
        return {n.grad, n.shape};
    }

    /// Saved buffer `slot` of node `v` with room for `count` floats, reused between steps.
    float* saved(Var v, int slot, std::int64_t count) {
        BITDISTILL_ASSERT(slot >= 0 && slot < max_saved_buffers);
        return detail::reserve(node(v).saved[slot], count);
    }

    /// Integer buffer of node `v` with room for `count` values, reused between steps.
    std::int32_t* saved_ids(Var v, std::int64_t count) { return detail::reserve(node(v).saved_ids, count); }

    /// Gradient destination of node `index` for a backward rule; see GradientSink. The
    /// first rule that requests it claims the buffer and must overwrite it.
    GradientSink gradient_sink(std::int32_t index) {
        if (index < 0) return {};
        Node& n = nodes_[index];
        if (!n.requires_grad) return {};
        if (n.grad_external) return {n.grad, false};
        if (!n.grad_ready) {
            n.grad = detail::reserve(n.grad_storage, n.shape.numel());
            n.grad_ready = true;
            return {n.grad, true};
        }
        return {n.grad, false};
    }

    /// Like gradient_sink but always in add mode: a first write finds zeros. For rules that
    /// touch only part of the gradient (scatter, strided blocks).
    float* gradient_accumulator(std::int32_t index) {
        GradientSink sink = gradient_sink(index);
        if (sink.overwrite)
            std::memset(sink.data, 0, static_cast<std::size_t>(nodes_[index].shape.numel()) * sizeof(float));
        return sink.data;
    }

    /// Runs the backward pass from the scalar `loss` (one element) with seed gradient 1.
    void backward(Var loss) {
        check_var(loss, "backward");
        BITDISTILL_REQUIRE_AS(shape_error, nodes_[loss.index].shape.numel() == 1,
                              "Tape::backward: the loss must hold one element, got shape ",
                              nodes_[loss.index].shape.to_string(),
                              "; pass a seed gradient for a non-scalar output");
        const float one = 1.0f;
        backward(loss, TensorView<const float>(&one, nodes_[loss.index].shape));
    }

    /// Runs the backward pass from `output` with the given seed gradient (same shape).
    void backward(Var output, TensorView<const float> seed) {
        check_var(output, "backward");
        Node& out = nodes_[output.index];
        require_same_shape(out.shape, seed.shape(), "Tape::backward seed");
        for (std::int32_t i = 0; i <= output.index; ++i) nodes_[i].grad_ready = false;
        if (!out.requires_grad) return;

        GradientSink sink = gradient_sink(output.index);
        for (std::int64_t i = 0; i < seed.numel(); ++i) sink.put(i, seed[i]);

        for (std::int32_t i = output.index; i >= 0; --i) {
            Node& n = nodes_[i];
            if (n.backward != nullptr && n.grad_ready) n.backward(*this, i);
        }
    }

private:
    void check_var(Var v, const char* what) const {
        BITDISTILL_REQUIRE(v.index >= 0 && v.index < size_, "Tape::", what, ": Var ", v.index,
                           " is not recorded on this tape since its last reset (", size_,
                           " ops recorded)");
    }

    Var push(Shape shape) {
        if (size_ == static_cast<std::int32_t>(nodes_.size())) nodes_.emplace_back();
        Node& n = nodes_[size_];
        n.shape = shape;
        n.value = nullptr;
        n.grad = nullptr;
        n.inputs = {-1, -1, -1, -1};
        n.scalars = {};
        n.integers = {};
        n.context = {};
        n.backward = nullptr;
        n.requires_grad = false;
        n.grad_external = false;
        n.grad_ready = false;
        return Var{size_++};
    }

    std::vector<Node> nodes_;
    std::int32_t size_ = 0;
    bool grad_enabled_ = true;
};

}  // namespace bitdistill::autodiff
