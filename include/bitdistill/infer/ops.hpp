// Forward-only building blocks of the inference engine: RMSNorm, rotary embedding, causal
// grouped-query attention over a KV cache, and the SwiGLU gate. They follow the
// conventions of nn/config.hpp (interleaved RoPE pairs as in llama2.c, query head h reads
// key/value head h / (n_heads / n_kv_heads)). None of them allocates.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill::infer {

/// Dot product of two float arrays with 16 independent partial sums, added in a fixed order
/// at the end. A single running sum is a dependency chain the compiler must not reorder,
/// while the 16 lanes vectorize to one SIMD accumulator.
[[nodiscard]] inline float dot(const float* a, const float* b, std::int64_t count) noexcept {
    float partial[16] = {};
    std::int64_t i = 0;
    for (; i + 16 <= count; i += 16)
        for (int lane = 0; lane < 16; ++lane) partial[lane] += a[i + lane] * b[i + lane];
    float sum = 0.0f;
    for (; i < count; ++i) sum += a[i] * b[i];
    for (float lane_sum : partial) sum += lane_sum;
    return sum;
}

/// RMSNorm of each row, y = g * x / sqrt(mean(x^2) + eps), computed as llama2.c does
/// (the inverse root first, then g * (scale * x)). Shape contract: x and y [rows x width],
/// gain [width]; y may alias x.
inline void rmsnorm_rows(TensorView<const float> x, TensorView<const float> gain, float eps,
                         TensorView<float> y) {
    BITDISTILL_REQUIRE_AS(shape_error, x.shape() == y.shape() && gain.numel() == x.cols(),
                          "rmsnorm_rows: x ", x.shape().to_string(), ", gain ",
                          gain.shape().to_string(), " and y ", y.shape().to_string(),
                          " do not fit");
    const std::int64_t width = x.cols();
    for (std::int64_t row = 0; row < x.rows(); ++row) {
        const float* in = x.data() + row * width;
        float* out = y.data() + row * width;
        const float squares = dot(in, in, width);
        const float scale = 1.0f / std::sqrt(squares / static_cast<float>(width) + eps);
        for (std::int64_t i = 0; i < width; ++i) out[i] = gain[i] * (scale * in[i]);
    }
}

/// Cosine and sine of every rotary angle for positions [0, positions): angle(p, i) =
/// p * theta^(-2i / head_dim) for pair i of a head, computed in float as llama2.c does.
class RopeTable {
public:
    RopeTable() = default;
    RopeTable(std::int64_t positions, int head_dim, float theta)
        : half_(head_dim / 2), cos_(Shape{positions, head_dim / 2}), sin_(Shape{positions, head_dim / 2}) {
        BITDISTILL_REQUIRE(head_dim > 0 && head_dim % 2 == 0, "RopeTable: head_dim ", head_dim,
                           " must be positive and even");
        for (std::int64_t p = 0; p < positions; ++p) {
            for (int i = 0; i < half_; ++i) {
                const float frequency =
                    1.0f / std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
                const float angle = static_cast<float>(p) * frequency;
                cos_(p, i) = std::cos(angle);
                sin_(p, i) = std::sin(angle);
            }
        }
    }

    [[nodiscard]] std::int64_t positions() const noexcept { return cos_.rows(); }

    /// Rotates the interleaved pairs (v[2i], v[2i+1]) of each of `heads` heads in the row
    /// `row` (heads * head_dim floats) by the angles of `position`.
    void rotate(float* row, int heads, std::int64_t position) const {
        BITDISTILL_ASSERT(position >= 0 && position < positions());
        const float* c = cos_.data() + position * half_;
        const float* s = sin_.data() + position * half_;
        for (int head = 0; head < heads; ++head) {
            float* v = row + static_cast<std::int64_t>(head) * 2 * half_;
            for (int i = 0; i < half_; ++i) {
                const float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }

private:
    int half_ = 0;
    Tensor<float> cos_;
    Tensor<float> sin_;
};

/// Shapes of one attention call.
struct AttentionShape {
    int n_heads = 0;
    int n_kv_heads = 0;
    int head_dim = 0;
};

/// Causal attention of `tokens` new queries against a KV cache.
///
/// q [tokens x n_heads * head_dim] contains the queries of positions start .. start + tokens - 1.
/// k_cache and v_cache [n_kv_heads x capacity x head_dim] are head-major, so that the keys
/// of one head are one contiguous run, and already contain positions 0 .. start + tokens - 1.
/// out is [tokens x n_heads * head_dim]. Query t attends to positions 0 .. start + t with
/// scores q.k / sqrt(head_dim) and softmax weights. The softmax is computed online in
/// blocks of 64 positions (running maximum and sum), so no buffer the size of the context
/// is needed. Runs over (token, head) pairs on num_threads() threads.
inline void causal_attention(TensorView<const float> q, TensorView<const float> k_cache,
                             TensorView<const float> v_cache, std::int64_t start,
                             const AttentionShape& shape, TensorView<float> out) {
    const std::int64_t tokens = q.rows();
    const std::int64_t head_dim = shape.head_dim;
    const std::int64_t q_width = static_cast<std::int64_t>(shape.n_heads) * head_dim;
    BITDISTILL_REQUIRE_AS(shape_error,
                          q.cols() == q_width && out.shape() == q.shape() && k_cache.shape().rank() == 3 &&
                              k_cache.shape()[0] == shape.n_kv_heads && k_cache.shape()[2] == head_dim &&
                              v_cache.shape() == k_cache.shape() && start >= 0 &&
                              start + tokens <= k_cache.shape()[1],
                          "causal_attention: q ", q.shape().to_string(), ", caches ",
                          k_cache.shape().to_string(), ", out ", out.shape().to_string(),
                          " and start ", start, " do not fit ", shape.n_heads, " heads and ",
                          shape.n_kv_heads, " key/value heads of width ", head_dim);
    constexpr int max_head_dim = 512;
    BITDISTILL_REQUIRE(head_dim <= max_head_dim, "causal_attention: head_dim ", head_dim,
                       " exceeds the supported maximum ", max_head_dim);
    const int group = shape.n_heads / shape.n_kv_heads;
    const std::int64_t capacity = k_cache.shape()[1];
    const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(head_dim));

    parallel_for(tokens * shape.n_heads, 4, [&](std::int64_t first, std::int64_t last) {
        constexpr int block = 64;
        float scores[block];
        float accumulator[max_head_dim];
        for (std::int64_t task = first; task < last; ++task) {
            const std::int64_t t = task / shape.n_heads;
            const int head = static_cast<int>(task % shape.n_heads);
            const std::int64_t kv_head = head / group;
            const float* keys = k_cache.data() + kv_head * capacity * head_dim;
            const float* values = v_cache.data() + kv_head * capacity * head_dim;
            const float* query = q.data() + t * q_width + head * head_dim;
            const std::int64_t context = start + t + 1;

            float running_max = -std::numeric_limits<float>::infinity();
            float running_sum = 0.0f;
            std::fill(accumulator, accumulator + head_dim, 0.0f);
            for (std::int64_t base = 0; base < context; base += block) {
                const int count = static_cast<int>(std::min<std::int64_t>(block, context - base));
                float block_max = running_max;
                for (int s = 0; s < count; ++s) {
                    scores[s] = dot(query, keys + (base + s) * head_dim, head_dim) * inv_sqrt;
                    block_max = std::max(block_max, scores[s]);
                }
                // Rescale what was summed so far to the new maximum (exp(-inf) = 0 at the start).
                const float correction = std::exp(running_max - block_max);
                running_sum *= correction;
                for (std::int64_t i = 0; i < head_dim; ++i) accumulator[i] *= correction;
                for (int s = 0; s < count; ++s) {
                    const float weight = std::exp(scores[s] - block_max);
                    running_sum += weight;
                    const float* value = values + (base + s) * head_dim;
                    for (std::int64_t i = 0; i < head_dim; ++i) accumulator[i] += weight * value[i];
                }
                running_max = block_max;
            }
            float* result = out.data() + t * q_width + head * head_dim;
            const float inverse = 1.0f / running_sum;
            for (std::int64_t i = 0; i < head_dim; ++i) result[i] = accumulator[i] * inverse;
        }
    });
}

/// SwiGLU gate in place: gate = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
/// Shape contract: gate and up have the same shape.
inline void swiglu_into(TensorView<float> gate, TensorView<const float> up) {
    require_same_shape(gate.shape(), up.shape(), "swiglu_into");
    const std::int64_t count = gate.numel();
    for (std::int64_t i = 0; i < count; ++i) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

}  // namespace bitdistill::infer
