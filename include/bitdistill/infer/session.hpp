// One generation stream over an InferenceModel: the KV cache, the scratch buffers, batched
// prefill and token-by-token decoding.
//
// The forward pass of a block, for the rows of the tokens being processed:
//   n = rmsnorm(x, attn_norm)                 (then rmsnorm(n, qkv_norm) with all_norms)
//   q, k, v = n Wq^T, n Wk^T, n Wv^T
//   q, k = per-head rmsnorm(q, q_norm), rmsnorm(k, k_norm)   (qk_norm only)
//   q, k = rope(q), rope(k) at each token's position; k and v are appended to the cache
//   a = causal attention of q over the cache  (then rmsnorm(a, attn_subln) with SubLN)
//   x = x + a Wo^T
//   n = rmsnorm(x, ffn_norm)                  (then rmsnorm(n, gate_up_norm) with all_norms)
//   m = silu(n Wgate^T) * (n Wup^T)           (then rmsnorm(m, ffn_subln) with SubLN)
//   x = x + m Wdown^T
// and at the end logits = rmsnorm(x, final_norm) Whead^T. Norms use config.norm_eps, the
// SubLN and all-norms gains config.subln_eps. Kernels run on num_threads() threads (set it
// with set_num_threads from core/parallel.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <type_traits>
#include <variant>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/infer/linear.hpp"
#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/ops.hpp"

namespace bitdistill {

/// KV cache and scratch for one sequence. The model must outlive the session. A session
/// is not safe to use from several threads at once; the kernels it calls use num_threads().
class InferenceSession {
public:
    /// Allocates a cache of `capacity` positions (0 means config.max_seq_len) and buffers for
    /// prefill chunks of up to `max_batch` tokens. Longer prompts run in several chunks.
    explicit InferenceSession(const InferenceModel& model, std::int64_t capacity = 0,
                              std::int64_t max_batch = 128)
        : model_(&model) {
        model.validate();
        const DecoderConfig& config = model.config;
        capacity_ = capacity == 0 ? config.max_seq_len : capacity;
        BITDISTILL_REQUIRE(capacity_ > 0 && capacity_ <= config.max_seq_len,
                           "InferenceSession: capacity ", capacity, " must be in [1, max_seq_len ",
                           config.max_seq_len, "]");
        BITDISTILL_REQUIRE(max_batch > 0, "InferenceSession: max_batch must be positive, got ", max_batch);
        max_batch_ = std::min(max_batch, capacity_);
        const std::int64_t dim = config.dim, q_width = config.q_width(), kv_width = config.kv_width();
        const std::int64_t head_dim = config.resolved_head_dim();
        for (std::int64_t layer = 0; layer < config.n_layers; ++layer) {
            k_cache_.emplace_back(Shape{config.n_kv_heads, capacity_, head_dim});
            v_cache_.emplace_back(Shape{config.n_kv_heads, capacity_, head_dim});
        }
        rope_ = infer::RopeTable(capacity_, config.resolved_head_dim(), config.rope_theta);
        x_ = Tensor<float>(Shape{max_batch_, dim});
        normed_ = Tensor<float>(Shape{max_batch_, dim});
        residual_ = Tensor<float>(Shape{max_batch_, dim});
        q_ = Tensor<float>(Shape{max_batch_, q_width});
        k_ = Tensor<float>(Shape{max_batch_, kv_width});
        v_ = Tensor<float>(Shape{max_batch_, kv_width});
        attention_ = Tensor<float>(Shape{max_batch_, q_width});
        gate_ = Tensor<float>(Shape{max_batch_, config.hidden_dim});
        up_ = Tensor<float>(Shape{max_batch_, config.hidden_dim});
        last_logits_ = Tensor<float>(Shape{1, config.vocab_size});
    }

    [[nodiscard]] const InferenceModel& model() const noexcept { return *model_; }
    /// Tokens processed so far: the position of the next token.
    [[nodiscard]] std::int64_t position() const noexcept { return position_; }
    /// Positions the cache can hold.
    [[nodiscard]] std::int64_t capacity() const noexcept { return capacity_; }

    /// Forgets the sequence; the next token goes to position 0.
    void reset() noexcept { position_ = 0; }

    /// Runs `tokens` through the model at positions position() .. position() + size - 1 and
    /// returns the logits [vocab] after the last one. Throws std::invalid_argument if a token
    /// id is outside [0, vocab) or the cache would overflow; nothing is cached then.
    std::span<const float> prefill(std::span<const int> tokens) {
        check_tokens(tokens);
        for (std::size_t first = 0; first < tokens.size(); first += static_cast<std::size_t>(max_batch_)) {
            const std::size_t count = std::min<std::size_t>(static_cast<std::size_t>(max_batch_), tokens.size() - first);
            run_chunk(tokens.subspan(first, count));
            if (first + count == tokens.size()) {
                const auto last = static_cast<std::int64_t>(count) - 1;
                head_into(normed_view(static_cast<std::int64_t>(count)).row_range(last, 1), last_logits_.view());
            }
        }
        return last_logits_.view().span();
    }

    /// Like prefill, but returns the logits of every token: [tokens x vocab]. The view stays
    /// valid until the next call on this session.
    TensorView<const float> prefill_all(std::span<const int> tokens) {
        check_tokens(tokens);
        const auto total = static_cast<std::int64_t>(tokens.size());
        if (all_logits_.numel() != total * model_->config.vocab_size || all_logits_.shape().rank() != 2)
            all_logits_ = Tensor<float>(Shape{total, model_->config.vocab_size});
        for (std::size_t first = 0; first < tokens.size(); first += static_cast<std::size_t>(max_batch_)) {
            const std::size_t count = std::min<std::size_t>(static_cast<std::size_t>(max_batch_), tokens.size() - first);
            run_chunk(tokens.subspan(first, count));
            head_into(normed_view(static_cast<std::int64_t>(count)),
                      all_logits_.view().row_range(static_cast<std::int64_t>(first), static_cast<std::int64_t>(count)));
        }
        return all_logits_.view();
    }

    /// Runs one token at position() and returns the logits [vocab] that predict the next.
    std::span<const float> decode(int token) { return prefill(std::span<const int>(&token, 1)); }

private:
    void check_tokens(std::span<const int> tokens) const {
        BITDISTILL_REQUIRE(!tokens.empty(), "InferenceSession: no tokens to run");
        BITDISTILL_REQUIRE(position_ + static_cast<std::int64_t>(tokens.size()) <= capacity_,
                           "InferenceSession: ", tokens.size(), " tokens at position ", position_,
                           " overflow the cache of ", capacity_, " positions");
        for (std::size_t i = 0; i < tokens.size(); ++i)
            BITDISTILL_REQUIRE(tokens[i] >= 0 && tokens[i] < model_->config.vocab_size,
                               "InferenceSession: token ", tokens[i], " at index ", i,
                               " is outside [0, ", model_->config.vocab_size, ")");
    }

    [[nodiscard]] TensorView<float> rows(Tensor<float>& buffer, std::int64_t tokens) {
        return buffer.view().row_range(0, tokens);
    }
    [[nodiscard]] TensorView<float> normed_view(std::int64_t tokens) { return rows(normed_, tokens); }

    /// Copies the embedding rows of `tokens` into x.
    void embed(std::span<const int> tokens) {
        const std::int64_t dim = model_->config.dim;
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            float* out = x_.data() + static_cast<std::int64_t>(t) * dim;
            const std::int64_t row = tokens[t];
            std::visit(
                [&](const auto& table) {
                    using Table = std::decay_t<decltype(table)>;
                    if constexpr (std::is_same_v<Table, Tensor<float>>) {
                        std::copy(table.data() + row * dim, table.data() + (row + 1) * dim, out);
                    } else if constexpr (std::is_same_v<Table, Tensor<BFloat16>>) {
                        for (std::int64_t i = 0; i < dim; ++i) out[i] = to_float(table[row * dim + i]);
                    }
                },
                model_->embedding.storage());
        }
    }

    /// Copies rows [tokens x n_kv_heads * head_dim] into the head-major cache
    /// [n_kv_heads x capacity x head_dim] at positions start .. start + tokens - 1.
    static void append_to_cache(TensorView<const float> rows, Tensor<float>& cache, std::int64_t start) {
        const std::int64_t heads = cache.shape()[0], capacity = cache.shape()[1], head_dim = cache.shape()[2];
        for (std::int64_t t = 0; t < rows.rows(); ++t)
            for (std::int64_t head = 0; head < heads; ++head) {
                const float* source = rows.data() + t * heads * head_dim + head * head_dim;
                std::copy(source, source + head_dim, cache.data() + (head * capacity + start + t) * head_dim);
            }
    }

    /// x += delta, row by row over the first `tokens` rows.
    static void add_into(TensorView<float> x, TensorView<const float> delta) {
        for (std::int64_t i = 0; i < x.numel(); ++i) x[i] += delta[i];
    }

    /// Runs one chunk of at most max_batch_ tokens through every block and leaves the final
    /// normed hidden states in normed_.
    void run_chunk(std::span<const int> tokens) {
        const DecoderConfig& config = model_->config;
        const auto count = static_cast<std::int64_t>(tokens.size());
        const std::int64_t start = position_;
        const std::int64_t head_dim = config.resolved_head_dim();
        const ProjectionEncoding encoding = model_->format.projections;
        const infer::AttentionShape shape{config.n_heads, config.n_kv_heads, static_cast<int>(head_dim)};

        embed(tokens);
        TensorView<float> x = rows(x_, count);
        TensorView<float> normed = rows(normed_, count);
        TensorView<float> residual = rows(residual_, count);
        TensorView<float> q = rows(q_, count);
        TensorView<float> k = rows(k_, count);
        TensorView<float> v = rows(v_, count);
        TensorView<float> attention = rows(attention_, count);
        TensorView<float> gate = rows(gate_, count);
        TensorView<float> up = rows(up_, count);

        for (std::int64_t index = 0; index < config.n_layers; ++index) {
            const InferenceLayer& layer = model_->layers[static_cast<std::size_t>(index)];
            Tensor<float>& k_cache = k_cache_[static_cast<std::size_t>(index)];
            Tensor<float>& v_cache = v_cache_[static_cast<std::size_t>(index)];

            // Attention: norms, projections, q/k-norm, RoPE, then k and v into the cache.
            infer::rmsnorm_rows(x, layer.attn_norm.view(), config.norm_eps, normed);
            if (config.all_norms) infer::rmsnorm_rows(normed, layer.qkv_norm.view(), config.subln_eps, normed);
            attention_input_.prepare(normed, encoding);
            layer.wq.apply(attention_input_, q);
            layer.wk.apply(attention_input_, k);
            layer.wv.apply(attention_input_, v);
            if (config.qk_norm) {
                TensorView<float> q_heads = q.reshaped(Shape{count * config.n_heads, head_dim});
                TensorView<float> k_heads = k.reshaped(Shape{count * config.n_kv_heads, head_dim});
                infer::rmsnorm_rows(q_heads, layer.q_norm.view(), config.norm_eps, q_heads);
                infer::rmsnorm_rows(k_heads, layer.k_norm.view(), config.norm_eps, k_heads);
            }
            for (std::int64_t t = 0; t < count; ++t) {
                rope_.rotate(q.row(t), config.n_heads, start + t);
                rope_.rotate(k.row(t), config.n_kv_heads, start + t);
            }
            append_to_cache(k, k_cache, start);
            append_to_cache(v, v_cache, start);
            infer::causal_attention(q, k_cache.view(), v_cache.view(), start, shape, attention);
            if (config.subln) infer::rmsnorm_rows(attention, layer.attn_subln.view(), config.subln_eps, attention);
            output_input_.prepare(attention, encoding);
            layer.wo.apply(output_input_, residual);
            add_into(x, residual);

            // Feed-forward: SwiGLU.
            infer::rmsnorm_rows(x, layer.ffn_norm.view(), config.norm_eps, normed);
            if (config.all_norms) infer::rmsnorm_rows(normed, layer.gate_up_norm.view(), config.subln_eps, normed);
            ffn_input_.prepare(normed, encoding);
            layer.w_gate.apply(ffn_input_, gate);
            layer.w_up.apply(ffn_input_, up);
            infer::swiglu_into(gate, up);
            if (config.subln) infer::rmsnorm_rows(gate, layer.ffn_subln.view(), config.subln_eps, gate);
            down_input_.prepare(gate, encoding);
            layer.w_down.apply(down_input_, residual);
            add_into(x, residual);
        }
        infer::rmsnorm_rows(x, model_->final_norm.view(), config.norm_eps, normed);
        position_ += count;
    }

    /// logits = hidden W_head^T for hidden [tokens x dim], logits [tokens x vocab].
    void head_into(TensorView<const float> hidden, TensorView<float> logits) {
        head_input_.prepare(hidden, model_->format.embeddings);
        model_->output_head().apply(head_input_, logits);
    }

    const InferenceModel* model_;
    std::int64_t capacity_ = 0;
    std::int64_t max_batch_ = 0;
    std::int64_t position_ = 0;
    std::vector<Tensor<float>> k_cache_, v_cache_;  ///< per layer [n_kv_heads x capacity x head_dim]
    infer::RopeTable rope_;
    Tensor<float> x_, normed_, residual_, q_, k_, v_, attention_, gate_, up_;
    Tensor<float> last_logits_, all_logits_;
    ProjectionInput attention_input_, output_input_, ffn_input_, down_input_, head_input_;
};

}  // namespace bitdistill
