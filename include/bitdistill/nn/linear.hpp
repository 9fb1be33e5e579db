// A projection y = x W^T (PyTorch nn.Linear layout, no bias) whose forward runs in float or
// as BitLinear (ternary weights, int8 activations), switchable at run time on trained
// weights. The latent float weights are the parameter in both modes.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "bitdistill/autodiff/ops_basic.hpp"
#include "bitdistill/nn/bitlinear.hpp"
#include "bitdistill/nn/parameter.hpp"

namespace bitdistill::nn {

/// Arithmetic of a projection's forward pass.
enum class ProjectionMode {
    full_precision,  ///< y = x W^T in float
    ternary,         ///< BitLinear: int8 activations times ternary weights, straight-through backward
};

/// One projection of a block (q, k, v, o, gate, up or down).
class Projection {
public:
    Projection() = default;
    /// Takes `weight` [out x in] as the latent float weights.
    Projection(std::string name, Tensor<float> weight) : weight_(std::move(name), std::move(weight)) {
        BITDISTILL_REQUIRE_AS(shape_error, weight_.value.shape().rank() == 2, "Projection ",
                              weight_.name, ": weight must be [out x in], got ",
                              weight_.value.shape().to_string());
    }

    /// y = x W^T in the current mode. Shapes: x [tokens x in]; the result is [tokens x out].
    autodiff::Var forward(autodiff::Tape& tape, autodiff::Var x) {
        autodiff::Var w = weight_.on(tape);
        if (mode_ == ProjectionMode::ternary) return bitlinear_.forward(tape, x, w);
        return autodiff::linear(tape, x, w);
    }

    /// Switches the forward pass; the latent weights are kept as they are.
    void set_mode(ProjectionMode mode, const BitLinearOptions& options = {}) {
        mode_ = mode;
        bitlinear_.set_options(options);
    }
    [[nodiscard]] ProjectionMode mode() const noexcept { return mode_; }
    [[nodiscard]] const BitLinearOptions& bitlinear_options() const noexcept { return bitlinear_.options(); }

    [[nodiscard]] Parameter& weight() noexcept { return weight_; }
    [[nodiscard]] const Parameter& weight() const noexcept { return weight_; }
    [[nodiscard]] std::int64_t in_features() const noexcept { return weight_.value.shape()[1]; }
    [[nodiscard]] std::int64_t out_features() const noexcept { return weight_.value.shape()[0]; }

private:
    Parameter weight_;
    ProjectionMode mode_ = ProjectionMode::full_precision;
    BitLinear bitlinear_;
};

}  // namespace bitdistill::nn
