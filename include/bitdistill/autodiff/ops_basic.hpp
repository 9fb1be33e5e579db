// Basic tape ops: elementwise arithmetic, reductions to a scalar, reshape, transpose and
// float matrix products. Each op is a forward/backward pair with the same stem, followed
// by the function that records it on a Tape.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <span>

#include "bitdistill/autodiff/gemm.hpp"
#include "bitdistill/autodiff/tape.hpp"
#include "bitdistill/core/parallel.hpp"

namespace bitdistill::autodiff {

namespace detail {

/// Elements per parallel chunk of an elementwise loop: large enough that a fork pays.
inline constexpr std::int64_t elementwise_grain = std::int64_t{1} << 15;

/// Calls body(first, last) over [0, count) on num_threads() threads.
template <class Body>
void parallel_elements(std::int64_t count, Body&& body) {
    parallel_for(count, elementwise_grain, body);
}

/// Writes `value_at(i)` into every element of `sink`, storing or adding as `sink.overwrite` selects.
template <class ValueAt>
void write_gradient(const GradientSink& sink, std::int64_t count, ValueAt&& value_at) {
    if (!sink) return;
    float* out = sink.data;
    if (sink.overwrite) {
        parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
            for (std::int64_t i = first; i < last; ++i) out[i] = value_at(i);
        });
    } else {
        parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
            for (std::int64_t i = first; i < last; ++i) out[i] += value_at(i);
        });
    }
}

inline Shape scalar_shape() { return Shape{1}; }

/// exp(x) in float without a library call, so that loops over it vectorize. Relative error
/// about 1e-7 for x in [-87, 88] (9.5e-8 at most on a grid of step 7e-4). Inputs outside
/// are clamped to that range, so the result
/// is never 0 or infinite (callers that need exp(-inf) = 0 test for it themselves).
/// Method: x = k ln2 + r with k = round(x / ln2) and |r| <= ln2 / 2 (ln2 split in two
/// parts, Cody and Waite), exp(r) by its Taylor polynomial of degree 7, and 2^k built in
/// the exponent bits.
inline float fast_exp(float x) {
    x = std::min(std::max(x, -87.0f), 88.0f);
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in float arithmetic.
    const float k = (x * 1.44269504f + 12582912.0f) - 12582912.0f;
    const float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const auto exponent = static_cast<std::int32_t>(k) + 127;
    return p * std::bit_cast<float>(static_cast<std::uint32_t>(exponent) << 23);
}

}  // namespace detail

// ---------------------------------------------------------------------------------- add

/// y = a + b. Shapes: a, b, y with `count` elements each.
inline void add_forward(const float* a, const float* b, float* y, std::int64_t count) {
    detail::parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) y[i] = a[i] + b[i];
    });
}

/// da += dy, db += dy (d(a + b)/da = d(a + b)/db = 1).
inline void add_backward(const float* dy, const GradientSink& da, const GradientSink& db,
                         std::int64_t count) {
    detail::write_gradient(da, count, [&](std::int64_t i) { return dy[i]; });
    detail::write_gradient(db, count, [&](std::int64_t i) { return dy[i]; });
}

/// Elementwise sum. Shapes: a, b and the result are equal.
inline Var add(Tape& tape, Var a, Var b) {
    require_same_shape(tape.shape(a), tape.shape(b), "add");
    Var y = tape.record(tape.shape(a), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        // Claim the sinks in order: when a and b are the same Var the second one adds.
        const GradientSink da = t.gradient_sink(n.inputs[0]);
        const GradientSink db = t.gradient_sink(n.inputs[1]);
        add_backward(n.grad, da, db, n.shape.numel());
    }, {a, b});
    add_forward(tape.value(a).data(), tape.value(b).data(), tape.value(y).data(),
                tape.shape(y).numel());
    return y;
}

// ----------------------------------------------------------------------------- multiply

/// y = a * b elementwise. Shapes: a, b, y with `count` elements each.
inline void multiply_forward(const float* a, const float* b, float* y, std::int64_t count) {
    detail::parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) y[i] = a[i] * b[i];
    });
}

/// da += dy * b, db += dy * a (product rule).
inline void multiply_backward(const float* a, const float* b, const float* dy,
                              const GradientSink& da, const GradientSink& db,
                              std::int64_t count) {
    detail::write_gradient(da, count, [&](std::int64_t i) { return dy[i] * b[i]; });
    detail::write_gradient(db, count, [&](std::int64_t i) { return dy[i] * a[i]; });
}

/// Elementwise product. Shapes: a, b and the result are equal.
inline Var multiply(Tape& tape, Var a, Var b) {
    require_same_shape(tape.shape(a), tape.shape(b), "multiply");
    Var y = tape.record(tape.shape(a), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const GradientSink da = t.gradient_sink(n.inputs[0]);
        const GradientSink db = t.gradient_sink(n.inputs[1]);
        multiply_backward(t.node(n.inputs[0]).value, t.node(n.inputs[1]).value, n.grad, da, db,
                          n.shape.numel());
    }, {a, b});
    multiply_forward(tape.value(a).data(), tape.value(b).data(), tape.value(y).data(),
                     tape.shape(y).numel());
    return y;
}

// -------------------------------------------------------------------------------- scale

/// y = factor * x. Shapes: x, y with `count` elements each.
inline void scale_forward(const float* x, float factor, float* y, std::int64_t count) {
    detail::parallel_elements(count, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) y[i] = factor * x[i];
    });
}

/// dx += factor * dy.
inline void scale_backward(const float* dy, float factor, const GradientSink& dx,
                           std::int64_t count) {
    detail::write_gradient(dx, count, [&](std::int64_t i) { return factor * dy[i]; });
}

/// Multiplies every element by the constant `factor`. Shapes: x and the result are equal.
inline Var scale(Tape& tape, Var x, float factor) {
    Var y = tape.record(tape.shape(x), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        scale_backward(n.grad, n.scalars[0], t.gradient_sink(n.inputs[0]), n.shape.numel());
    }, {x});
    tape.node(y).scalars[0] = factor;
    scale_forward(tape.value(x).data(), factor, tape.value(y).data(), tape.shape(y).numel());
    return y;
}

// ---------------------------------------------------------------------------------- sum

/// Returns the sum of `count` elements, accumulated in double.
inline float sum_forward(const float* x, std::int64_t count) {
    double total = 0.0;
    for (std::int64_t i = 0; i < count; ++i) total += x[i];
    return static_cast<float>(total);
}

/// dx += dy (every element contributes with weight 1).
inline void sum_backward(float dy, const GradientSink& dx, std::int64_t count) {
    detail::write_gradient(dx, count, [&](std::int64_t) { return dy; });
}

/// Sum of all elements. Shapes: x any, result [1].
inline Var sum(Tape& tape, Var x) {
    Var y = tape.record(detail::scalar_shape(), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        sum_backward(n.grad[0], t.gradient_sink(n.inputs[0]), t.node(n.inputs[0]).shape.numel());
    }, {x});
    tape.value(y)[0] = sum_forward(tape.value(x).data(), tape.shape(x).numel());
    return y;
}

// -------------------------------------------------------------------------- mean_square

/// Returns mean(x^2) over `count` elements, accumulated in double.
inline float mean_square_forward(const float* x, std::int64_t count) {
    double total = 0.0;
    for (std::int64_t i = 0; i < count; ++i) total += static_cast<double>(x[i]) * x[i];
    return count == 0 ? 0.0f : static_cast<float>(total / static_cast<double>(count));
}

/// dx += dy * 2 x / count (d mean(x^2) / dx_i = 2 x_i / count).
inline void mean_square_backward(const float* x, float dy, const GradientSink& dx,
                                 std::int64_t count) {
    const float factor = 2.0f * dy / static_cast<float>(count);
    detail::write_gradient(dx, count, [&](std::int64_t i) { return factor * x[i]; });
}

/// Mean of the squared elements, a simple regression loss. Shapes: x any, result [1].
inline Var mean_square(Tape& tape, Var x) {
    Var y = tape.record(detail::scalar_shape(), [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const Node& input = t.node(n.inputs[0]);
        mean_square_backward(input.value, n.grad[0], t.gradient_sink(n.inputs[0]),
                             input.shape.numel());
    }, {x});
    tape.value(y)[0] = mean_square_forward(tape.value(x).data(), tape.shape(x).numel());
    return y;
}

// ------------------------------------------------------------------------------ reshape

/// dx += dy: a reshape only relabels the same elements.
inline void reshape_backward(const float* dy, const GradientSink& dx, std::int64_t count) {
    detail::write_gradient(dx, count, [&](std::int64_t i) { return dy[i]; });
}

/// Views x with another shape of the same element count; no copy is made.
/// Shapes: x any, result `shape` with x's element count.
inline Var reshape(Tape& tape, Var x, Shape shape) {
    return tape.record_view(shape, x, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        reshape_backward(n.grad, t.gradient_sink(n.inputs[0]), n.shape.numel());
    });
}

// ---------------------------------------------------------------------------- transpose

/// y[j, i] = x[i, j]. Shapes: x [rows x cols], y [cols x rows].
inline void transpose_forward(const float* x, std::int64_t rows, std::int64_t cols, float* y) {
    parallel_for(cols, 64, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t j = first; j < last; ++j)
            for (std::int64_t i = 0; i < rows; ++i) y[j * rows + i] = x[i * cols + j];
    });
}

/// dx[i, j] += dy[j, i].
inline void transpose_backward(const float* dy, std::int64_t rows, std::int64_t cols,
                               const GradientSink& dx) {
    if (!dx) return;
    parallel_for(rows, 64, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i)
            for (std::int64_t j = 0; j < cols; ++j) {
                const float g = dy[j * rows + i];
                if (dx.overwrite)
                    dx.data[i * cols + j] = g;
                else
                    dx.data[i * cols + j] += g;
            }
    });
}

/// Matrix transpose. Shapes: x [rows x cols] (its 2-D view), result [cols x rows].
inline Var transpose(Tape& tape, Var x) {
    const Shape in = tape.shape(x);
    const std::int64_t rows = in.rows();
    const std::int64_t cols = in.cols();
    Var y = tape.record(Shape{cols, rows}, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        transpose_backward(n.grad, n.integers[0], n.integers[1], t.gradient_sink(n.inputs[0]));
    }, {x});
    tape.node(y).integers[0] = rows;
    tape.node(y).integers[1] = cols;
    transpose_forward(tape.value(x).data(), rows, cols, tape.value(y).data());
    return y;
}

// -------------------------------------------------------------------------- select_rows

/// y[i] = x[rows[i]]. Shapes: x [n x width], rows `count` indices in [0, n), y [count x width].
inline void select_rows_forward(const float* x, std::int64_t width, const std::int32_t* rows,
                                std::int64_t count, float* y) {
    for (std::int64_t i = 0; i < count; ++i)
        std::copy(x + rows[i] * width, x + (rows[i] + 1) * width, y + i * width);
}

/// dx[rows[i]] += dy[i] for every i (a row selected twice adds up); dx is in add mode.
inline void select_rows_backward(const float* dy, std::int64_t width, const std::int32_t* rows,
                                 std::int64_t count, float* dx) {
    for (std::int64_t i = 0; i < count; ++i) {
        float* target = dx + rows[i] * width;
        const float* g = dy + i * width;
        for (std::int64_t j = 0; j < width; ++j) target[j] += g[j];
    }
}

/// Selects rows of the 2-D view of x, for example the answer positions of a batch before
/// the LM head. The indices are copied, so the span may go away after the call.
/// Shapes: x [n x width], rows R indices in [0, n); the result is [R x width].
inline Var select_rows(Tape& tape, Var x, std::span<const std::int32_t> rows) {
    const Shape shape = tape.shape(x);
    const std::int64_t n = shape.rows();
    const std::int64_t width = shape.cols();
    const auto count = static_cast<std::int64_t>(rows.size());
    for (std::int64_t i = 0; i < count; ++i)
        BITDISTILL_REQUIRE(rows[i] >= 0 && rows[i] < n, "select_rows: row ", rows[i], " at position ", i,
                           " is outside [0, ", n, ") of a ", shape.to_string(), " tensor");
    Var y = tape.record(Shape{count, width}, [](Tape& t, std::int32_t self) {
        float* dx = t.gradient_accumulator(t.node(self).inputs[0]);
        const Node& node = t.node(self);
        if (dx != nullptr)
            select_rows_backward(node.grad, node.integers[1], node.saved_ids.data(), node.integers[0], dx);
    }, {x});
    tape.node(y).integers = {count, width};
    std::int32_t* saved_rows = tape.saved_ids(y, count);
    std::copy(rows.begin(), rows.end(), saved_rows);
    select_rows_forward(tape.value(x).data(), width, saved_rows, count, tape.value(y).data());
    return y;
}

// ------------------------------------------------------------------------------- matmul

/// y = a b. Shapes: a [m x k], b [k x n], y [m x n].
inline void matmul_forward(const float* a, const float* b, float* y, std::int64_t m,
                           std::int64_t k, std::int64_t n) {
    gemm(Trans::no, Trans::no, m, n, k, 1.0f, a, k, b, n, false, y, n);
}

/// da += dy b^T, db += a^T dy.
inline void matmul_backward(const float* a, const float* b, const float* dy, std::int64_t m,
                            std::int64_t k, std::int64_t n, const GradientSink& da,
                            const GradientSink& db) {
    if (da) gemm(Trans::no, Trans::yes, m, k, n, 1.0f, dy, n, b, n, !da.overwrite, da.data, k);
    if (db) gemm(Trans::yes, Trans::no, k, n, m, 1.0f, a, k, dy, n, !db.overwrite, db.data, n);
}

/// Matrix product. Shapes: a [m x k], b [k x n] (2-D views), result [m x n].
inline Var matmul(Tape& tape, Var a, Var b) {
    const Shape sa = tape.shape(a);
    const Shape sb = tape.shape(b);
    BITDISTILL_REQUIRE_AS(shape_error, sa.cols() == sb.rows(), "matmul: shapes ",
                          sa.to_string(), " and ", sb.to_string(), " do not chain");
    const std::int64_t m = sa.rows();
    const std::int64_t k = sa.cols();
    const std::int64_t n = sb.cols();
    Var y = tape.record(Shape{m, n}, [](Tape& t, std::int32_t self) {
        const Node& node = t.node(self);
        const GradientSink da = t.gradient_sink(node.inputs[0]);
        const GradientSink db = t.gradient_sink(node.inputs[1]);
        matmul_backward(t.node(node.inputs[0]).value, t.node(node.inputs[1]).value, node.grad,
                        node.integers[0], node.integers[1], node.integers[2], da, db);
    }, {a, b});
    tape.node(y).integers = {m, k, n};
    matmul_forward(tape.value(a).data(), tape.value(b).data(), tape.value(y).data(), m, k, n);
    return y;
}

// ------------------------------------------------------------------------------- linear

/// y = x W^T (PyTorch's nn.Linear without bias). Shapes: x [tokens x in], w [out x in],
/// y [tokens x out].
inline void linear_forward(const float* x, const float* w, float* y, std::int64_t tokens,
                           std::int64_t in, std::int64_t out) {
    gemm(Trans::no, Trans::yes, tokens, out, in, 1.0f, x, in, w, in, false, y, out);
}

/// dx += dy W, dW += dy^T x.
inline void linear_backward(const float* x, const float* w, const float* dy,
                            std::int64_t tokens, std::int64_t in, std::int64_t out,
                            const GradientSink& dx, const GradientSink& dw) {
    if (dx) gemm(Trans::no, Trans::no, tokens, in, out, 1.0f, dy, out, w, in, !dx.overwrite, dx.data, in);
    if (dw) gemm(Trans::yes, Trans::no, out, in, tokens, 1.0f, dy, out, x, in, !dw.overwrite, dw.data, in);
}

/// Float linear projection x W^T. Shapes: x [tokens x in] (2-D view), w [out x in],
/// result [tokens x out].
inline Var linear(Tape& tape, Var x, Var w) {
    const Shape sx = tape.shape(x);
    const Shape sw = tape.shape(w);
    BITDISTILL_REQUIRE_AS(shape_error, sw.rank() == 2 && sx.cols() == sw[1], "linear: input ",
                          sx.to_string(), " does not match weight ", sw.to_string(),
                          " (expected [out x ", sx.cols(), "])");
    const std::int64_t tokens = sx.rows();
    const std::int64_t in = sx.cols();
    const std::int64_t out = sw[0];
    Var y = tape.record(Shape{tokens, out}, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        const GradientSink dx = t.gradient_sink(n.inputs[0]);
        const GradientSink dw = t.gradient_sink(n.inputs[1]);
        linear_backward(t.node(n.inputs[0]).value, t.node(n.inputs[1]).value, n.grad,
                        n.integers[0], n.integers[1], n.integers[2], dx, dw);
    }, {x, w});
    tape.node(y).integers = {tokens, in, out};
    linear_forward(tape.value(x).data(), tape.value(w).data(), tape.value(y).data(), tokens, in, out);
    return y;
}

}  // namespace bitdistill::autodiff
