// Activation tape ops: SiLU, SwiGLU, and row-wise softmax and log-softmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

namespace detail {
inline float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
}  // namespace detail

// --------------------------------------------------------------------------------- silu

/// y = x * sigmoid(x). Shapes: x, y with `count` elements each.
inline void silu_forward(const float* x, float* y, std::int64_t count) {
    detail::parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) y[i] = x[i] * detail::sigmoid(x[i]);
    });
}

/// dx += dy * s (1 + x (1 - s)) with s = sigmoid(x), the derivative of x * sigmoid(x).
inline void silu_backward(const float* x, const float* dy, const GradientSink& dx,
                          std::int64_t count) {
    detail::write_gradient(dx, count, [&](std::int64_t i) {
        const float s = detail::sigmoid(x[i]);
        return dy[i] * s * (1.0f + x[i] * (1.0f - s));
    });
}

/// SiLU (swish) activation. Shapes: x and the result are equal.
inline Var silu(Tape& tape, Var x) {
    Var y = tape.record(tape.shape(x), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        silu_backward(t.node(n.inputs[0]).value, n.grad, t.gradient_sink(n.inputs[0]),
                      n.shape.numel());
    }, {x});
    silu_forward(tape.value(x).data(), tape.value(y).data(), tape.shape(y).numel());
    return y;
}

// ------------------------------------------------------------------------------- swiglu

/// y = silu(gate) * up = gate * sigmoid(gate) * up, storing sigmoid(gate) in `sigmoid_gate`
/// for the backward pass. Shapes: gate, up, y, sigmoid_gate with `count` elements each.
inline void swiglu_forward(const float* gate, const float* up, float* y, float* sigmoid_gate,
                           std::int64_t count) {
    detail::parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) {
            const float s = detail::sigmoid(gate[i]);
            sigmoid_gate[i] = s;
            y[i] = gate[i] * s * up[i];
        }
    });
}

/// dgate += dy * up * s (1 + gate (1 - s)) (the SiLU derivative), dup += dy * gate * s,
/// with s = sigmoid(gate) from the forward pass.
inline void swiglu_backward(const float* gate, const float* up, const float* sigmoid_gate,
                            const float* dy, const GradientSink& dgate, const GradientSink& dup,
                            std::int64_t count) {
    detail::write_gradient(dgate, count, [&](std::int64_t i) {
        const float s = sigmoid_gate[i];
        return dy[i] * up[i] * s * (1.0f + gate[i] * (1.0f - s));
    });
    detail::write_gradient(dup, count, [&](std::int64_t i) { return dy[i] * gate[i] * sigmoid_gate[i]; });
}

/// Gated SiLU unit of the Llama FFN: silu(gate) * up. Shapes: gate, up and the result
/// are equal.
inline Var swiglu(Tape& tape, Var gate, Var up) {
    require_same_shape(tape.shape(gate), tape.shape(up), "swiglu");
    Var y = tape.record(tape.shape(gate), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const GradientSink dgate = t.gradient_sink(n.inputs[0]);
        const GradientSink dup = t.gradient_sink(n.inputs[1]);
        swiglu_backward(t.node(n.inputs[0]).value, t.node(n.inputs[1]).value, n.saved[0].data(), n.grad,
                        dgate, dup, n.shape.numel());
    }, {gate, up});
    const std::int64_t count = tape.shape(y).numel();
    float* sigmoid_gate = tape.saved(y, 0, count);
    swiglu_forward(tape.value(gate).data(), tape.value(up).data(), tape.value(y).data(), sigmoid_gate, count);
    return y;
}

// ------------------------------------------------------------------------------ softmax

/// Row-wise softmax: y[r, j] = exp(x[r, j] - max_r) / sum_j exp(x[r, j] - max_r).
/// Shapes: x, y [rows x cols].
inline void softmax_forward(const float* x, float* y, std::int64_t rows, std::int64_t cols) {
    parallel_for(rows, 8, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* xr = x + r * cols;
            float* yr = y + r * cols;
            const float max_value = *std::max_element(xr, xr + cols);
            float total = 0.0f;
            for (std::int64_t j = 0; j < cols; ++j) yr[j] = detail::fast_exp(xr[j] - max_value);
            for (std::int64_t j = 0; j < cols; ++j) total += yr[j];
            const float inverse = 1.0f / total;
            for (std::int64_t j = 0; j < cols; ++j) yr[j] *= inverse;
        }
    });
}

/// dx[r, j] += y[r, j] * (dy[r, j] - sum_k dy[r, k] y[r, k]) (softmax Jacobian
/// diag(y) - y y^T applied to dy).
inline void softmax_backward(const float* y, const float* dy, std::int64_t rows,
                             std::int64_t cols, const GradientSink& dx) {
    if (!dx) return;
    parallel_for(rows, 8, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* yr = y + r * cols;
            const float* dyr = dy + r * cols;
            float* dxr = dx.data + r * cols;
            float dot = 0.0f;
            for (std::int64_t j = 0; j < cols; ++j) dot += dyr[j] * yr[j];
            for (std::int64_t j = 0; j < cols; ++j) {
                const float g = yr[j] * (dyr[j] - dot);
                dxr[j] = dx.overwrite ? g : dxr[j] + g;
            }
        }
    });
}

/// Softmax over the last axis. Shapes: x any (its 2-D view [rows x cols]); the result has
/// x's shape.
inline Var softmax(Tape& tape, Var x) {
    const Shape shape = tape.shape(x);
    Var y = tape.record(shape, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        softmax_backward(n.value, n.grad, n.shape.rows(), n.shape.cols(),
                         t.gradient_sink(n.inputs[0]));
    }, {x});
    softmax_forward(tape.value(x).data(), tape.value(y).data(), shape.rows(), shape.cols());
    return y;
}

// -------------------------------------------------------------------------- log_softmax

/// Row-wise log-softmax: y[r, j] = x[r, j] - max_r - log sum_j exp(x[r, j] - max_r).
/// Shapes: x, y [rows x cols].
inline void log_softmax_forward(const float* x, float* y, std::int64_t rows, std::int64_t cols) {
    parallel_for(rows, 8, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* xr = x + r * cols;
            float* yr = y + r * cols;
            const float max_value = *std::max_element(xr, xr + cols);
            double total = 0.0;
            for (std::int64_t j = 0; j < cols; ++j) total += detail::fast_exp(xr[j] - max_value);
            const float offset = max_value + static_cast<float>(std::log(total));
            for (std::int64_t j = 0; j < cols; ++j) yr[j] = xr[j] - offset;
        }
    });
}

/// dx[r, j] += dy[r, j] - exp(y[r, j]) * sum_k dy[r, k] (the softmax exp(y) is the
/// derivative of the log-sum-exp).
inline void log_softmax_backward(const float* y, const float* dy, std::int64_t rows,
                                 std::int64_t cols, const GradientSink& dx) {
    if (!dx) return;
    parallel_for(rows, 8, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* yr = y + r * cols;
            const float* dyr = dy + r * cols;
            float* dxr = dx.data + r * cols;
            float total = 0.0f;
            for (std::int64_t j = 0; j < cols; ++j) total += dyr[j];
            for (std::int64_t j = 0; j < cols; ++j) {
                const float g = dyr[j] - detail::fast_exp(yr[j]) * total;
                dxr[j] = dx.overwrite ? g : dxr[j] + g;
            }
        }
    });
}

/// Log-softmax over the last axis. Shapes: x any (its 2-D view [rows x cols]); the result
/// has x's shape.
inline Var log_softmax(Tape& tape, Var x) {
    const Shape shape = tape.shape(x);
    Var y = tape.record(shape, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        log_softmax_backward(n.value, n.grad, n.shape.rows(), n.shape.cols(),
                             t.gradient_sink(n.inputs[0]));
    }, {x});
    log_softmax_forward(tape.value(x).data(), tape.value(y).data(), shape.rows(), shape.cols());
    return y;
}

}  // namespace bitdistill::autodiff
