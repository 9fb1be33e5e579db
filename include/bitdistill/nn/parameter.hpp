// A trainable tensor of a layer: its value, its gradient and its weight-decay flag.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "bitdistill/autodiff/tape.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/optim/adamw.hpp"

namespace bitdistill::nn {

/// A parameter owned by a layer. The gradient has the value's shape and accumulates over
/// backward passes until zero_grad().
///
/// Weight decay follows the common convention of decaying 2-D weights only. So projection
/// matrices, the embedding table and the LM head decay, and norm gains (1-D) do not.
struct Parameter {
    std::string name;
    Tensor<float> value;
    Tensor<float> grad;
    bool decay = false;

    Parameter() = default;
    /// Takes `initial` as the value, allocates a zero gradient and sets decay for 2-D values.
    Parameter(std::string parameter_name, Tensor<float> initial)
        : name(std::move(parameter_name)), value(std::move(initial)), grad(value.shape()),
          decay(value.shape().rank() == 2) {}

    /// True for a parameter the configuration switched off (a default-constructed tensor, rank 0).
    [[nodiscard]] bool empty() const noexcept { return value.data() == nullptr; }

    /// Records this parameter on `tape` as a leaf whose gradient accumulates into `grad`.
    autodiff::Var on(autodiff::Tape& tape) { return tape.parameter(value.view(), grad.view()); }

    void zero_grad() { std::fill(grad.begin(), grad.end(), 0.0f); }

    /// The optimizer's view of this parameter.
    [[nodiscard]] ParamRef ref() { return ParamRef{name, value.view(), grad.view(), decay}; }
};

}  // namespace bitdistill::nn
