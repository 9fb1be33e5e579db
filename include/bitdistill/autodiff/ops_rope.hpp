// Rotary position embedding (RoPE) over interleaved pairs, as llama2.c and Meta's Llama
// code rotate them: within each head, the pair (x[2i], x[2i+1]) at position p turns by the
// angle p * theta^(-2i / head_dim).
#pragma once

#include <cmath>
#include <cstdint>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

/// Fills the rotation table for positions [0, seq_len): cos_table and sin_table
/// [seq_len x head_dim / 2]. The angles are computed in float as llama2.c computes them,
/// frequency = 1 / theta^(2i / head_dim) and angle = p * frequency, so that the training
/// forward uses the same table as a float inference engine that follows llama2.c.
inline void rope_table(std::int64_t seq_len, std::int64_t head_dim, float theta, float* cos_table,
                       float* sin_table) {
    const std::int64_t pairs = head_dim / 2;
    for (std::int64_t p = 0; p < seq_len; ++p)
        for (std::int64_t i = 0; i < pairs; ++i) {
            const float frequency =
                1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
            const float angle = static_cast<float>(p) * frequency;
            cos_table[p * pairs + i] = std::cos(angle);
            sin_table[p * pairs + i] = std::sin(angle);
        }
}

/// y = R(p) x for every head of every row, with p = row % seq_len and R(p) the rotation of
/// each interleaved pair: (a, b) -> (a cos - b sin, a sin + b cos).
/// Shapes: x, y [rows x width] with width a multiple of head_dim; tables as rope_table.
inline void rope_forward(const float* x, std::int64_t rows, std::int64_t width,
                         std::int64_t head_dim, std::int64_t seq_len, const float* cos_table,
                         const float* sin_table, float* y) {
    const std::int64_t pairs = head_dim / 2;
    parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* c = cos_table + (r % seq_len) * pairs;
            const float* s = sin_table + (r % seq_len) * pairs;
            for (std::int64_t base = 0; base < width; base += head_dim) {
                const float* xh = x + r * width + base;
                float* yh = y + r * width + base;
                for (std::int64_t i = 0; i < pairs; ++i) {
                    const float a = xh[2 * i];
                    const float b = xh[2 * i + 1];
                    yh[2 * i] = a * c[i] - b * s[i];
                    yh[2 * i + 1] = a * s[i] + b * c[i];
                }
            }
        }
    });
}

/// dx += R(p)^T dy: the inverse rotation (da, db) = (dy0 cos + dy1 sin, -dy0 sin + dy1 cos).
inline void rope_backward(const float* dy, std::int64_t rows, std::int64_t width,
                          std::int64_t head_dim, std::int64_t seq_len, const float* cos_table,
                          const float* sin_table, const GradientSink& dx) {
    if (!dx) return;
    const std::int64_t pairs = head_dim / 2;
    parallel_for(rows, 16, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t r = first; r < last; ++r) {
            const float* c = cos_table + (r % seq_len) * pairs;
            const float* s = sin_table + (r % seq_len) * pairs;
            for (std::int64_t base = 0; base < width; base += head_dim) {
                const float* gh = dy + r * width + base;
                float* dh = dx.data + r * width + base;
                for (std::int64_t i = 0; i < pairs; ++i) {
                    const float da = gh[2 * i] * c[i] + gh[2 * i + 1] * s[i];
                    const float db = -gh[2 * i] * s[i] + gh[2 * i + 1] * c[i];
                    if (dx.overwrite) {
                        dh[2 * i] = da;
                        dh[2 * i + 1] = db;
                    } else {
                        dh[2 * i] += da;
                        dh[2 * i + 1] += db;
                    }
                }
            }
        }
    });
}

/// Rotates every head of x by its token's position. Rows are tokens of sequences of
/// `seq_len` tokens laid out one after another, so the position of row r is r % seq_len.
/// Shapes: x [batch * seq_len x heads * head_dim]; the result has x's shape.
inline Var rope(Tape& tape, Var x, std::int64_t seq_len, std::int64_t head_dim, float theta) {
    const Shape shape = tape.shape(x);
    const std::int64_t rows = shape.rows();
    const std::int64_t width = shape.cols();
    BITDISTILL_REQUIRE_AS(shape_error, head_dim > 0 && head_dim % 2 == 0 && width % head_dim == 0,
                          "rope: input ", shape.to_string(), " is not a whole number of heads of even size ",
                          head_dim);
    BITDISTILL_REQUIRE_AS(shape_error, seq_len > 0 && rows % seq_len == 0, "rope: ", rows,
                          " rows are not whole sequences of ", seq_len, " tokens");
    BITDISTILL_REQUIRE(theta > 0.0f, "rope: theta must be positive, got ", theta);

    Var y = tape.record(shape, [](Tape& t, std::int32_t self) {
        const Node& n = t.node(self);
        rope_backward(n.grad, n.integers[0], n.integers[1], n.integers[2], n.integers[3],
                      n.saved[0].data(), n.saved[1].data(), t.gradient_sink(n.inputs[0]));
    }, {x});
    tape.node(y).integers = {rows, width, head_dim, seq_len};
    const std::int64_t table_size = seq_len * head_dim / 2;
    float* cos_table = tape.saved(y, 0, table_size);
    float* sin_table = tape.saved(y, 1, table_size);
    rope_table(seq_len, head_dim, theta, cos_table, sin_table);
    rope_forward(tape.value(x).data(), rows, width, head_dim, seq_len, cos_table, sin_table,
                 tape.value(y).data());
    return y;
}

}  // namespace bitdistill::autodiff
