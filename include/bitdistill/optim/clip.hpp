// Gradient clipping by the global L2 norm.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#include "bitdistill/core/error.hpp"
#include "bitdistill/optim/adamw.hpp"

namespace bitdistill {

/// Returns the L2 norm of all gradients taken together (before clipping) and scales every
/// gradient by max_norm / (norm + 1e-6) when that factor is below 1, as
/// torch.nn.utils.clip_grad_norm_ does in PyTorch 1.13. The squares are summed in double.
/// A NaN or Inf norm is returned with the gradients left unchanged, so that check_finite
/// can report the tensor that caused it. Throws std::invalid_argument unless max_norm > 0.
inline float clip_grad_norm(std::span<const ParamRef> params, float max_norm) {
    BITDISTILL_REQUIRE(std::isfinite(max_norm) && max_norm > 0.0f,
                       "clip_grad_norm: max_norm must be positive, got ", max_norm);
    double sum_squares = 0.0;
    for (const ParamRef& param : params) {
        const float* g = param.grad.data();
        if (g == nullptr) continue;
        const std::int64_t count = param.grad.numel();
        for (std::int64_t k = 0; k < count; ++k) sum_squares += static_cast<double>(g[k]) * g[k];
    }
    const double norm = std::sqrt(sum_squares);
    if (!std::isfinite(norm)) return static_cast<float>(norm);

    const double clip_factor = static_cast<double>(max_norm) / (norm + 1e-6);
    if (clip_factor < 1.0) {
        const float factor = static_cast<float>(clip_factor);
        for (const ParamRef& param : params) {
            float* g = param.grad.data();
            if (g == nullptr) continue;
            const std::int64_t count = param.grad.numel();
            for (std::int64_t k = 0; k < count; ++k) g[k] *= factor;
        }
    }
    return static_cast<float>(norm);
}

}  // namespace bitdistill
