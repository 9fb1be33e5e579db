// Loader for llama2.c "legacy" checkpoints (the .bin files written by llama2.c's export
// script in its version-0 format, such as the tinyllamas stories15M/stories260K models).
//
// File layout, all little-endian:
//   7 x int32 header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len.
//     A negative vocab_size means the classifier is stored separately (not tied to the
//     token embedding); its absolute value is the vocabulary size.
//   float32 tensors. A per-layer tensor stores all layers back to back (layer-major).
//   In file order: token embedding [vocab x dim], rms_att [layers x dim],
//     wq [layers x q_width x dim], wk [layers x kv_width x dim], wv [layers x kv_width x dim], wo [layers x dim x q_width],
//     rms_ffn [layers x dim], w1 (gate) [layers x hidden x dim],
//     w2 (down) [layers x dim x hidden], w3 (up) [layers x hidden x dim], rms_final [dim],
//     freq_cis_real and freq_cis_imag [seq_len x head_dim / 2] each (ignored here, because
//     RoPE is recomputed with theta 10000), then the classifier [vocab x dim] if untied.
// Matrices are [out x in] row-major, as PyTorch's nn.Linear stores them, which is also the
// layout of DecoderWeights. head_dim = dim / n_heads, q_width = dim and
// kv_width = n_kv_heads * head_dim. RMSNorm eps is 1e-5 and RoPE theta is 10000.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/nn/config.hpp"

namespace bitdistill {

/// Upper bounds on llama2.c header fields. A header beyond them is treated as corrupt
/// rather than trusted: the largest public Llama models stay far below every bound.
struct Llama2cLimits {
    std::int64_t max_dim = 1 << 16;
    std::int64_t max_hidden_dim = 1 << 18;
    std::int64_t max_layers = 1024;
    std::int64_t max_heads = 1024;
    std::int64_t max_vocab = 1 << 22;
    std::int64_t max_seq_len = 1 << 20;
};

namespace detail {

inline constexpr std::int64_t llama2c_header_bytes = 7 * 4;

/// Throws io_error with "llama2.c checkpoint '<path>': " and the message parts.
template <class... Parts>
[[noreturn]] void llama2c_fail(const std::filesystem::path& path, const Parts&... parts) {
    throw io_error(concat("llama2.c checkpoint '", path.string(), "': ", parts...));
}

/// Validated header fields and the float counts derived from them.
struct Llama2cLayout {
    std::int64_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
    std::int64_t vocab = 0, seq_len = 0, head_dim = 0, kv_width = 0;
    bool shared_classifier = true;
    std::int64_t total_floats = 0;
};

/// Checks every header field against `limits` and computes the expected float count with
/// overflow-checked 64-bit arithmetic.
inline Llama2cLayout llama2c_layout(const std::filesystem::path& path, const std::int32_t header[7],
                                    const Llama2cLimits& limits) {
    const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
                            "n_kv_heads", "vocab_size", "seq_len"};
    const std::int64_t bounds[7] = {limits.max_dim, limits.max_hidden_dim, limits.max_layers,
                                    limits.max_heads, limits.max_heads, limits.max_vocab,
                                    limits.max_seq_len};
    for (int field = 0; field < 7; ++field) {
        std::int64_t value = header[field];
        if (field == 5) value = value < 0 ? -value : value;  // negative vocab: untied classifier
        if (value <= 0 || value > bounds[field])
            llama2c_fail(path, "header field ", names[field], " = ", header[field],
                         " is invalid (expected 1 to ", bounds[field],
                         field == 5 ? " in absolute value)" : ")");
    }
    Llama2cLayout layout;
    layout.dim = header[0];
    layout.hidden_dim = header[1];
    layout.n_layers = header[2];
    layout.n_heads = header[3];
    layout.n_kv_heads = header[4];
    layout.shared_classifier = header[5] > 0;
    layout.vocab = layout.shared_classifier ? header[5] : -static_cast<std::int64_t>(header[5]);
    layout.seq_len = header[6];
    if (layout.n_kv_heads > layout.n_heads || layout.n_heads % layout.n_kv_heads != 0)
        llama2c_fail(path, "header field n_kv_heads = ", layout.n_kv_heads,
                     " does not divide n_heads = ", layout.n_heads);
    if (layout.dim % layout.n_heads != 0 || (layout.dim / layout.n_heads) % 2 != 0)
        llama2c_fail(path, "header field dim = ", layout.dim, " is not a multiple of 2 * n_heads = ",
                     2 * layout.n_heads, " (RoPE needs an even head size)");
    layout.head_dim = layout.dim / layout.n_heads;
    layout.kv_width = layout.n_kv_heads * layout.head_dim;

    // Every product is checked, so limits larger than the defaults cannot overflow silently.
    // With the defaults one layer has at most 2^36 floats and the total stays below 2^47.
    auto product = [&](std::int64_t a, std::int64_t b) {
        std::int64_t result = 0;
        if (__builtin_mul_overflow(a, b, &result))
            llama2c_fail(path, "header sizes overflow 64-bit arithmetic (", a, " x ", b, ")");
        return result;
    };
    auto sum = [&](std::int64_t a, std::int64_t b) {
        std::int64_t result = 0;
        if (__builtin_add_overflow(a, b, &result))
            llama2c_fail(path, "header sizes overflow 64-bit arithmetic (", a, " + ", b, ")");
        return result;
    };
    std::int64_t per_layer = product(2, layout.dim);                            // rms_att, rms_ffn
    per_layer = sum(per_layer, product(2, product(layout.dim, layout.dim)));    // wq, wo
    per_layer = sum(per_layer, product(2, product(layout.kv_width, layout.dim)));  // wk, wv
    per_layer = sum(per_layer, product(3, product(layout.hidden_dim, layout.dim)));  // w1, w2, w3
    std::int64_t total = product(layout.vocab, layout.dim);
    total = sum(total, product(layout.n_layers, per_layer));
    total = sum(total, layout.dim);                                  // rms_final
    total = sum(total, product(layout.seq_len, layout.head_dim));   // freq_cis real and imag
    if (!layout.shared_classifier) total = sum(total, product(layout.vocab, layout.dim));
    layout.total_floats = total;
    sum(product(layout.total_floats, 4), llama2c_header_bytes);  // the byte count must fit too
    return layout;
}

/// Reads `count` floats at the stream's position into `out` and rejects NaN and Inf,
/// naming `tensor` and the flat index of the first bad value.
inline void llama2c_read_tensor(std::ifstream& in, const std::filesystem::path& path,
                                const std::string& tensor, float* out, std::int64_t count) {
    const std::streamoff offset = in.tellg();
    in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(count * sizeof(float)));
    if (!in) llama2c_fail(path, "read failed in tensor ", tensor, " at byte offset ", offset);
    for (std::int64_t i = 0; i < count; ++i) {
        if (!std::isfinite(out[i]))
            llama2c_fail(path, "tensor ", tensor, " has a non-finite value ", out[i], " at index ", i,
                         " (byte offset ", offset + i * static_cast<std::streamoff>(sizeof(float)),
                         ")");
    }
}

}  // namespace detail

/// Loads a llama2.c legacy checkpoint into float weights. The returned config has
/// norm_eps 1e-5, rope_theta 10000, max_seq_len = the header's seq_len and
/// tied_embeddings unless vocab_size is negative in the header.
/// Throws io_error naming the file and the problem when the file cannot be opened, a header
/// field is out of range, the file size differs from the size the header implies, or a
/// weight is NaN or Inf. Nothing is allocated before the header and the size are checked.
[[nodiscard]] inline DecoderWeights load_llama2c(const std::filesystem::path& path,
                                                 const Llama2cLimits& limits = {}) {
    std::error_code error;
    const std::uintmax_t file_bytes = std::filesystem::file_size(path, error);
    if (error) detail::llama2c_fail(path, "cannot read the file size: ", error.message());
    std::ifstream in(path, std::ios::binary);
    if (!in) detail::llama2c_fail(path, "cannot open the file for reading");
    if (file_bytes < static_cast<std::uintmax_t>(detail::llama2c_header_bytes))
        detail::llama2c_fail(path, "file has ", file_bytes, " bytes, fewer than the ",
                             detail::llama2c_header_bytes, "-byte header");

    std::int32_t header[7];
    in.read(reinterpret_cast<char*>(header), sizeof header);
    if (!in) detail::llama2c_fail(path, "cannot read the 28-byte header");
    const detail::Llama2cLayout layout = detail::llama2c_layout(path, header, limits);
    const std::uintmax_t expected_bytes =
        static_cast<std::uintmax_t>(detail::llama2c_header_bytes + layout.total_floats * 4);
    if (file_bytes != expected_bytes)
        detail::llama2c_fail(path, "file has ", file_bytes, " bytes but the header (dim ", layout.dim,
                             ", hidden_dim ", layout.hidden_dim, ", n_layers ", layout.n_layers,
                             ", n_heads ", layout.n_heads, ", n_kv_heads ", layout.n_kv_heads,
                             ", vocab ", layout.vocab, ", seq_len ", layout.seq_len,
                             layout.shared_classifier ? ", shared classifier" : ", own classifier",
                             ") implies ", expected_bytes, " bytes");

    DecoderWeights weights;
    DecoderConfig& config = weights.config;
    config.vocab_size = static_cast<int>(layout.vocab);
    config.dim = static_cast<int>(layout.dim);
    config.hidden_dim = static_cast<int>(layout.hidden_dim);
    config.n_layers = static_cast<int>(layout.n_layers);
    config.n_heads = static_cast<int>(layout.n_heads);
    config.n_kv_heads = static_cast<int>(layout.n_kv_heads);
    config.head_dim = static_cast<int>(layout.head_dim);
    config.max_seq_len = static_cast<int>(layout.seq_len);
    config.norm_eps = 1e-5f;
    config.rope_theta = 10000.0f;
    config.tied_embeddings = layout.shared_classifier;
    config.validate();

    const std::int64_t dim = layout.dim, hidden = layout.hidden_dim, kv = layout.kv_width;
    weights.embedding = Tensor<float>(Shape{layout.vocab, dim});
    detail::llama2c_read_tensor(in, path, "token_embedding", weights.embedding.data(),
                                weights.embedding.numel());
    weights.layers.resize(static_cast<std::size_t>(layout.n_layers));

    // Each llama2.c tensor stores every layer back to back, so read it layer by layer.
    auto read_per_layer = [&](const char* name, Tensor<float> LayerWeights::*member, Shape shape) {
        for (std::int64_t layer = 0; layer < layout.n_layers; ++layer) {
            Tensor<float>& tensor = weights.layers[static_cast<std::size_t>(layer)].*member;
            tensor = Tensor<float>(shape);
            detail::llama2c_read_tensor(in, path, detail::concat(name, "[layer ", layer, "]"), tensor.data(),
                                        tensor.numel());
        }
    };
    read_per_layer("rms_att", &LayerWeights::attn_norm, Shape{dim});
    read_per_layer("wq", &LayerWeights::wq, Shape{dim, dim});
    read_per_layer("wk", &LayerWeights::wk, Shape{kv, dim});
    read_per_layer("wv", &LayerWeights::wv, Shape{kv, dim});
    read_per_layer("wo", &LayerWeights::wo, Shape{dim, dim});
    read_per_layer("rms_ffn", &LayerWeights::ffn_norm, Shape{dim});
    read_per_layer("w1 (gate)", &LayerWeights::w_gate, Shape{hidden, dim});
    read_per_layer("w2 (down)", &LayerWeights::w_down, Shape{dim, hidden});
    read_per_layer("w3 (up)", &LayerWeights::w_up, Shape{hidden, dim});

    weights.final_norm = Tensor<float>(Shape{dim});
    detail::llama2c_read_tensor(in, path, "rms_final", weights.final_norm.data(), dim);
    in.seekg(static_cast<std::streamoff>(layout.seq_len * layout.head_dim * 4), std::ios::cur);
    if (!layout.shared_classifier) {
        weights.lm_head = Tensor<float>(Shape{layout.vocab, dim});
        detail::llama2c_read_tensor(in, path, "classifier", weights.lm_head.data(),
                                    weights.lm_head.numel());
    }
    return weights;
}

}  // namespace bitdistill
