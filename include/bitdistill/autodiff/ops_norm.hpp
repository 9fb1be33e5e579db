// RMSNorm tape op: y = g * x / sqrt(mean(x^2) + eps) over groups of `width` contiguous
// elements. It serves as the pre-norm of a block, the final norm, SubLN (gain initialised
// to 1, eps 1e-8) and the per-head q/k norm (width = head_dim).
#pragma once

#include <cmath>
#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

/// y[r] = gain * x[r] * inv_rms[r] with inv_rms[r] = 1 / sqrt(mean(x[r]^2) + eps), for each
/// row r of width `width`. Shapes: x, y [rows x width], gain [width] or null (gain 1),
/// inv_rms [rows] (saved for the backward pass).
inline void rmsnorm_forward(const float* x, const float* gain, float eps, std::int64_t rows,
                            std::int64_t width, float* y, float* inv_rms) {
    parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* xr = x + r * width;
            float* yr = y + r * width;
            double squares = 0.0;
            for (std::int64_t j = 0; j < width; ++j) squares += static_cast<double>(xr[j]) * xr[j];
            const float inverse = static_cast<float>(
                1.0 / std::sqrt(squares / static_cast<double>(width) + static_cast<double>(eps)));
            inv_rms[r] = inverse;
            if (gain != nullptr)
                for (std::int64_t j = 0; j < width; ++j) yr[j] = gain[j] * (xr[j] * inverse);
            else
                for (std::int64_t j = 0; j < width; ++j) yr[j] = xr[j] * inverse;
        }
    });
}

/// With xhat = x * inv_rms and dxhat = dy * gain:
/// dx += inv_rms * (dxhat - xhat * mean(dxhat * xhat)), dgain += sum over rows of dy * xhat.
inline void rmsnorm_backward(const float* x, const float* gain, const float* inv_rms,
                             const float* dy, std::int64_t rows, std::int64_t width,
                             const GradientSink& dx, const GradientSink& dgain) {
    if (dx) {
        parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
            for (std::int64_t r = first; r < last; ++r) {
                const float* xr = x + r * width;
                const float* dyr = dy + r * width;
                float* dxr = dx.data + r * width;
                const float inverse = inv_rms[r];
                double dot = 0.0;  // sum_j dxhat_j * xhat_j
                for (std::int64_t j = 0; j < width; ++j) {
                    const float dxhat = gain != nullptr ? dyr[j] * gain[j] : dyr[j];
                    dot += static_cast<double>(dxhat) * (xr[j] * inverse);
                }
                const float mean_dot = static_cast<float>(dot / static_cast<double>(width));
                for (std::int64_t j = 0; j < width; ++j) {
                    const float dxhat = gain != nullptr ? dyr[j] * gain[j] : dyr[j];
                    const float g = inverse * (dxhat - xr[j] * inverse * mean_dot);
                    dxr[j] = dx.overwrite ? g : dxr[j] + g;
                }
            }
        });
    }
    if (dgain) {
        // Serial over rows, vectorised over the width: each gain element sums one column.
        if (dgain.overwrite)
            for (std::int64_t j = 0; j < width; ++j) dgain.data[j] = 0.0f;
        for (std::int64_t r = 0; r < rows; ++r) {
            const float* xr = x + r * width;
            const float* dyr = dy + r * width;
            const float inverse = inv_rms[r];
            for (std::int64_t j = 0; j < width; ++j) dgain.data[j] += dyr[j] * (xr[j] * inverse);
        }
    }
}

/// RMSNorm over groups of `width` contiguous elements of x. With a valid `gain` Var,
/// width is gain's element count and `width` must be 0 or equal to it. Without one the
/// gain is 1, and `width` 0 means the last extent of x.
/// Shapes: x any with numel divisible by width, gain [width]; the result has x's shape.
inline Var rmsnorm(Tape& tape, Var x, Var gain, float eps, std::int64_t width = 0) {
    const Shape shape = tape.shape(x);
    if (gain.valid()) {
        const std::int64_t gain_width = tape.shape(gain).numel();
        BITDISTILL_REQUIRE_AS(shape_error, width == 0 || width == gain_width, "rmsnorm: width ",
                              width, " differs from the gain size ", gain_width);
        width = gain_width;
    } else if (width == 0) {
        width = shape.cols();
    }
    BITDISTILL_REQUIRE_AS(shape_error, width > 0 && shape.numel() % width == 0, "rmsnorm: input ",
                          shape.to_string(), " cannot be split into groups of ", width);
    BITDISTILL_REQUIRE(eps >= 0.0f, "rmsnorm: eps must be non-negative, got ", eps);
    const std::int64_t rows = shape.numel() / width;

    Var y = tape.record(shape, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const float* gain_value = n.inputs[1] >= 0 ? t.node(n.inputs[1]).value : nullptr;
        const GradientSink dx = t.gradient_sink(n.inputs[0]);
        const GradientSink dgain = t.gradient_sink(n.inputs[1]);
        rmsnorm_backward(t.node(n.inputs[0]).value, gain_value, n.saved[0].data(), n.grad,
                         n.integers[0], n.integers[1], dx, dgain);
    }, {x, gain});
    tape.node(y).integers[0] = rows;
    tape.node(y).integers[1] = width;
    float* inv_rms = tape.saved(y, 0, rows);
    const float* gain_value = gain.valid() ? tape.value(gain).data() : nullptr;
    rmsnorm_forward(tape.value(x).data(), gain_value, eps, rows, width, tape.value(y).data(), inv_rms);
    return y;
}

}  // namespace bitdistill::autodiff
