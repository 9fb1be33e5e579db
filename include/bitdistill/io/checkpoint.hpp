// Training checkpoints: named float tensors plus named text values in one versioned,
// checksummed file that is written to a temporary file and renamed into place.
//
// File layout (version 1; integers and floats in the writer's byte order, which the
// byte-order mark records so that a reader with the other order rejects the file):
//   8 bytes   magic "BDCKPT\0\0"
//   u32       format version (1)
//   u32       byte-order mark 0x01020304
//   u64       number of text entries, then per entry:
//               u32 key length, key bytes, u64 value length, value bytes
//   u64       number of tensors, then per tensor:
//               u32 name length, name bytes, u32 rank (0-4), rank x i64 extents,
//               numel x f32 values
//   u64       FNV-1a 64 checksum of every byte before it
// The loader checks the checksum first and then every length against the bytes left before
// allocating, so a truncated or corrupted file raises io_error instead of reading past the end.
//
// A training run stores its model weights (store_decoder_weights), optimizer state
// (store_adamw_state), RNG state, step and stage under agreed names; the pipeline headers
// decide those names.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#if __has_include(<unistd.h>)
#include <unistd.h>
#define BITDISTILL_HAS_FSYNC 1
#endif

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/nn/config.hpp"
#include "bitdistill/optim/adamw.hpp"

namespace bitdistill {

/// FNV-1a 64-bit hash, used for cache keys and checksums (not cryptographic).
class Fnv1a64 {
public:
    void update(const void* data, std::size_t bytes) {
        const auto* p = static_cast<const unsigned char*>(data);
        for (std::size_t i = 0; i < bytes; ++i) {
            state_ ^= p[i];
            state_ *= 0x100000001b3ULL;
        }
    }
    void update(std::string_view text) { update(text.data(), text.size()); }
    [[nodiscard]] std::uint64_t digest() const { return state_; }

private:
    std::uint64_t state_ = 0xcbf29ce484222325ULL;
};

/// Formats `value` as 16 lower-case hexadecimal digits.
[[nodiscard]] inline std::string hex64(std::uint64_t value) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
    return text;
}

/// Writes `bytes` to `path` through `path`.tmp, flushed to disk and then renamed, so that
/// readers see either the old file or the complete new one. Throws io_error on failure.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
    const std::filesystem::path temporary = path.string() + ".tmp";
    std::FILE* file = std::fopen(temporary.string().c_str(), "wb");
    if (file == nullptr) throw io_error(detail::concat(temporary.string(), ": cannot open for writing"));
    const std::size_t written = std::fwrite(bytes.data(), 1, bytes.size(), file);
    bool ok = written == bytes.size() && std::fflush(file) == 0;
#if defined(BITDISTILL_HAS_FSYNC)
    ok = ok && ::fsync(::fileno(file)) == 0;
#endif
    ok = (std::fclose(file) == 0) && ok;
    if (!ok) {
        std::filesystem::remove(temporary);
        throw io_error(detail::concat(temporary.string(), ": write of ", bytes.size(),
                                      " bytes failed (disk full?)"));
    }
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error)
        throw io_error(detail::concat(path.string(), ": rename from ", temporary.string(),
                                      " failed: ", error.message()));
}

/// Named tensors and text values of one training checkpoint.
class Checkpoint {
public:
    static constexpr char magic[8] = {'B', 'D', 'C', 'K', 'P', 'T', '\0', '\0'};
    static constexpr std::uint32_t format_version = 1;

    void set_text(const std::string& key, std::string value) { text_[key] = std::move(value); }
    void set_integer(const std::string& key, std::int64_t value) { text_[key] = std::to_string(value); }
    void set_tensor(const std::string& name, Tensor<float> value) { tensors_[name] = std::move(value); }
    /// Copies a view into a new tensor entry.
    void set_tensor(const std::string& name, TensorView<const float> value) {
        Tensor<float> copy(value.shape());
        std::copy(value.data(), value.data() + value.numel(), copy.begin());
        tensors_[name] = std::move(copy);
    }

    [[nodiscard]] bool has_text(const std::string& key) const { return text_.count(key) != 0; }
    [[nodiscard]] bool has_tensor(const std::string& name) const { return tensors_.count(name) != 0; }

    /// Text value `key`; throws io_error naming the key and the file when it is missing.
    [[nodiscard]] const std::string& text(const std::string& key) const {
        const auto found = text_.find(key);
        if (found == text_.end())
            throw io_error(detail::concat(source_, ": checkpoint has no value '", key, "'"));
        return found->second;
    }
    /// Text value `key` parsed as a decimal integer; throws io_error if missing or malformed.
    [[nodiscard]] std::int64_t integer(const std::string& key) const {
        const std::string& value = text(key);
        std::size_t used = 0;
        std::int64_t parsed = 0;
        try {
            parsed = std::stoll(value, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != value.size())
            throw io_error(detail::concat(source_, ": checkpoint value '", key, "' = '", value,
                                          "' is not an integer"));
        return parsed;
    }
    /// Tensor `name`; throws io_error naming the tensor and the file when it is missing.
    [[nodiscard]] const Tensor<float>& tensor(const std::string& name) const {
        const auto found = tensors_.find(name);
        if (found == tensors_.end())
            throw io_error(detail::concat(source_, ": checkpoint has no tensor '", name, "'"));
        return found->second;
    }
    /// Copies tensor `name` into `destination`, which must have the same shape.
    void copy_tensor_to(const std::string& name, TensorView<float> destination) const {
        const Tensor<float>& stored = tensor(name);
        BITDISTILL_REQUIRE_AS(io_error, stored.shape() == destination.shape(), source_,
                              ": checkpoint tensor '", name, "' has shape ", stored.shape().to_string(),
                              " but the model expects ", destination.shape().to_string());
        std::copy(stored.begin(), stored.end(), destination.data());
    }

    [[nodiscard]] const std::map<std::string, std::string>& texts() const { return text_; }
    [[nodiscard]] const std::map<std::string, Tensor<float>>& tensors() const { return tensors_; }
    /// The file this checkpoint was loaded from, or "<memory>".
    [[nodiscard]] const std::string& source() const { return source_; }

    /// Serializes the checkpoint in the version-1 layout described at the top of this file.
    [[nodiscard]] std::string serialize() const {
        std::string bytes;
        bytes.append(magic, sizeof magic);
        append_pod(bytes, format_version);
        append_pod(bytes, std::uint32_t{0x01020304});
        append_pod(bytes, static_cast<std::uint64_t>(text_.size()));
        for (const auto& [key, value] : text_) {
            append_pod(bytes, static_cast<std::uint32_t>(key.size()));
            bytes += key;
            append_pod(bytes, static_cast<std::uint64_t>(value.size()));
            bytes += value;
        }
        append_pod(bytes, static_cast<std::uint64_t>(tensors_.size()));
        for (const auto& [name, value] : tensors_) {
            append_pod(bytes, static_cast<std::uint32_t>(name.size()));
            bytes += name;
            append_pod(bytes, static_cast<std::uint32_t>(value.shape().rank()));
            for (int axis = 0; axis < value.shape().rank(); ++axis)
                append_pod(bytes, static_cast<std::int64_t>(value.shape()[axis]));
            if (value.numel() > 0)
                bytes.append(reinterpret_cast<const char*>(value.data()),
                             static_cast<std::size_t>(value.numel()) * sizeof(float));
        }
        Fnv1a64 checksum;
        checksum.update(bytes);
        append_pod(bytes, checksum.digest());
        return bytes;
    }

    /// Parses bytes produced by serialize(). `source` names them in error messages.
    [[nodiscard]] static Checkpoint deserialize(std::string_view bytes, std::string source) {
        Reader reader{bytes, 0, source};
        constexpr std::size_t minimum = sizeof magic + 4 + 4 + 8 + 8 + 8;
        if (bytes.size() < minimum)
            reader.fail("file is ", bytes.size(), " bytes, shorter than the smallest checkpoint (",
                        minimum, " bytes); it is truncated or not a checkpoint");
        if (std::memcmp(bytes.data(), magic, sizeof magic) != 0)
            reader.fail("not a bitdistill checkpoint (wrong magic bytes)");
        // The checksum comes first, so that a damaged header reads as corruption rather than
        // as another format version or byte order.
        Fnv1a64 checksum;
        checksum.update(bytes.data(), bytes.size() - 8);
        std::uint64_t stored_checksum = 0;
        std::memcpy(&stored_checksum, bytes.data() + bytes.size() - 8, 8);
        reader.offset = sizeof magic;
        const auto version = reader.read_pod<std::uint32_t>("format version");
        const bool checksum_matches = stored_checksum == checksum.digest();
        if (checksum_matches && version != format_version)
            reader.fail("format version ", version, " is not supported; this build reads version ",
                        format_version);
        if (!checksum_matches)
            throw io_error(detail::concat(source, ": checksum mismatch (stored ", hex64(stored_checksum),
                                          ", computed ", hex64(checksum.digest()),
                                          "); the file is corrupted or truncated"));
        if (reader.read_pod<std::uint32_t>("byte-order mark") != 0x01020304)
            reader.fail("byte order differs from this machine's");
        reader.bytes = bytes.substr(0, bytes.size() - 8);

        Checkpoint checkpoint;
        checkpoint.source_ = std::move(source);
        const auto text_count = reader.read_pod<std::uint64_t>("text entry count");
        for (std::uint64_t i = 0; i < text_count; ++i) {
            std::string key = reader.read_string(reader.read_pod<std::uint32_t>("key length"), "text key");
            std::string value =
                reader.read_string(reader.read_pod<std::uint64_t>("value length"), "text value");
            checkpoint.text_[std::move(key)] = std::move(value);
        }
        const auto tensor_count = reader.read_pod<std::uint64_t>("tensor count");
        for (std::uint64_t i = 0; i < tensor_count; ++i) {
            std::string name = reader.read_string(reader.read_pod<std::uint32_t>("name length"), "tensor name");
            const auto rank = reader.read_pod<std::uint32_t>("tensor rank");
            if (rank > static_cast<std::uint32_t>(Shape::max_rank))
                reader.fail("tensor '", name, "' has rank ", rank, "; at most ", Shape::max_rank, " is allowed");
            std::int64_t extents[Shape::max_rank] = {1, 1, 1, 1};
            std::uint64_t numel = 1;
            const std::uint64_t remaining_floats = (reader.bytes.size() - reader.offset) / sizeof(float);
            for (std::uint32_t axis = 0; axis < rank; ++axis) {
                extents[axis] = reader.read_pod<std::int64_t>("tensor extent");
                if (extents[axis] < 0 ||
                    (extents[axis] > 0 && numel > remaining_floats / static_cast<std::uint64_t>(extents[axis])))
                    reader.fail("tensor '", name, "' extent ", extents[axis], " on axis ", axis,
                                " is negative or larger than the rest of the file");
                numel *= static_cast<std::uint64_t>(extents[axis]);
            }
            const Shape shape = make_shape(extents, static_cast<int>(rank));
            const std::size_t data_bytes = static_cast<std::size_t>(numel) * sizeof(float);
            reader.require(data_bytes, "tensor data");
            Tensor<float> value(shape);
            if (data_bytes > 0) std::memcpy(value.data(), reader.bytes.data() + reader.offset, data_bytes);
            reader.offset += data_bytes;
            checkpoint.tensors_[std::move(name)] = std::move(value);
        }
        if (reader.offset != reader.bytes.size())
            reader.fail(reader.bytes.size() - reader.offset, " unexpected bytes after the last tensor");
        return checkpoint;
    }

    /// Writes the checkpoint to `path` (temporary file, then rename).
    void save(const std::filesystem::path& path) const { write_file_atomically(path, serialize()); }

    /// Reads and validates the checkpoint at `path`; throws io_error naming the file.
    [[nodiscard]] static Checkpoint load(const std::filesystem::path& path) {
        if (std::filesystem::is_directory(path))
            throw io_error(detail::concat(path.string(), ": is a folder, not a checkpoint file"));
        std::ifstream in(path, std::ios::binary);
        if (!in) throw io_error(detail::concat(path.string(), ": cannot open checkpoint for reading"));
        std::ostringstream contents;
        contents << in.rdbuf();
        return deserialize(contents.str(), path.string());
    }

private:
    template <class Pod>
    static void append_pod(std::string& bytes, Pod value) {
        bytes.append(reinterpret_cast<const char*>(&value), sizeof value);
    }

    static Shape make_shape(const std::int64_t* extents, int rank) {
        switch (rank) {
            case 0: return Shape{};
            case 1: return Shape{extents[0]};
            case 2: return Shape{extents[0], extents[1]};
            case 3: return Shape{extents[0], extents[1], extents[2]};
            default: return Shape{extents[0], extents[1], extents[2], extents[3]};
        }
    }

    /// Bounds-checked cursor over the file bytes.
    struct Reader {
        std::string_view bytes;
        std::size_t offset = 0;
        std::string source;

        template <class... Parts>
        [[noreturn]] void fail(const Parts&... parts) const {
            throw io_error(detail::concat(source, ": byte ", offset, ": ", parts...));
        }
        void require(std::uint64_t count, const char* what) const {
            if (count > bytes.size() - offset)
                fail(what, " needs ", count, " bytes but only ", bytes.size() - offset,
                     " remain; the file is truncated or corrupted");
        }
        template <class Pod>
        Pod read_pod(const char* what) {
            require(sizeof(Pod), what);
            Pod value;
            std::memcpy(&value, bytes.data() + offset, sizeof(Pod));
            offset += sizeof(Pod);
            return value;
        }
        std::string read_string(std::uint64_t length, const char* what) {
            require(length, what);
            std::string value(bytes.substr(offset, static_cast<std::size_t>(length)));
            offset += static_cast<std::size_t>(length);
            return value;
        }
    };

    std::map<std::string, std::string> text_;
    std::map<std::string, Tensor<float>> tensors_;
    std::string source_ = "<memory>";
};

namespace detail {

/// Calls `visit(name, tensor)` for every weight tensor slot of `weights`, present or not.
template <class Weights, class Visit>
void for_each_decoder_tensor(Weights& weights, Visit&& visit) {
    visit("embedding", weights.embedding);
    for (std::size_t i = 0; i < weights.layers.size(); ++i) {
        auto& layer = weights.layers[i];
        const std::string prefix = "layers." + std::to_string(i) + ".";
        visit(prefix + "attn_norm", layer.attn_norm);
        visit(prefix + "qkv_norm", layer.qkv_norm);
        visit(prefix + "wq", layer.wq);
        visit(prefix + "wk", layer.wk);
        visit(prefix + "wv", layer.wv);
        visit(prefix + "q_norm", layer.q_norm);
        visit(prefix + "k_norm", layer.k_norm);
        visit(prefix + "attn_subln", layer.attn_subln);
        visit(prefix + "wo", layer.wo);
        visit(prefix + "ffn_norm", layer.ffn_norm);
        visit(prefix + "gate_up_norm", layer.gate_up_norm);
        visit(prefix + "w_gate", layer.w_gate);
        visit(prefix + "w_up", layer.w_up);
        visit(prefix + "ffn_subln", layer.ffn_subln);
        visit(prefix + "w_down", layer.w_down);
    }
    visit("final_norm", weights.final_norm);
    visit("lm_head", weights.lm_head);
}

}  // namespace detail

/// Stores the configuration and every present tensor of `weights` under `prefix`
/// (for example "model." gives "model.layers.0.wq" and "model.config.dim").
inline void store_decoder_weights(Checkpoint& checkpoint, const std::string& prefix,
                                  const DecoderWeights& weights) {
    const DecoderConfig& c = weights.config;
    const std::string key = prefix + "config.";
    checkpoint.set_integer(key + "vocab_size", c.vocab_size);
    checkpoint.set_integer(key + "dim", c.dim);
    checkpoint.set_integer(key + "hidden_dim", c.hidden_dim);
    checkpoint.set_integer(key + "n_layers", c.n_layers);
    checkpoint.set_integer(key + "n_heads", c.n_heads);
    checkpoint.set_integer(key + "n_kv_heads", c.n_kv_heads);
    checkpoint.set_integer(key + "head_dim", c.head_dim);
    checkpoint.set_integer(key + "max_seq_len", c.max_seq_len);
    checkpoint.set_integer(key + "qk_norm", c.qk_norm);
    checkpoint.set_integer(key + "subln", c.subln);
    checkpoint.set_integer(key + "all_norms", c.all_norms);
    checkpoint.set_integer(key + "tied_embeddings", c.tied_embeddings);
    // Floats are stored as their bit patterns so that a round trip is exact.
    checkpoint.set_integer(key + "norm_eps_bits", std::bit_cast<std::uint32_t>(c.norm_eps));
    checkpoint.set_integer(key + "rope_theta_bits", std::bit_cast<std::uint32_t>(c.rope_theta));
    checkpoint.set_integer(key + "subln_eps_bits", std::bit_cast<std::uint32_t>(c.subln_eps));
    detail::for_each_decoder_tensor(weights, [&](const std::string& name, const Tensor<float>& tensor) {
        // A default-constructed tensor (rank 0) marks a part the configuration switches off.
        if (tensor.shape().rank() > 0) checkpoint.set_tensor(prefix + name, tensor.view());
    });
}

/// Rebuilds the DecoderWeights stored under `prefix` by store_decoder_weights. Throws
/// io_error when a value is missing or the configuration is invalid.
[[nodiscard]] inline DecoderWeights load_decoder_weights(const Checkpoint& checkpoint,
                                                         const std::string& prefix) {
    DecoderWeights weights;
    DecoderConfig& c = weights.config;
    const std::string key = prefix + "config.";
    auto integer = [&](const std::string& name) { return static_cast<int>(checkpoint.integer(key + name)); };
    auto float_bits = [&](const std::string& name) {
        return std::bit_cast<float>(static_cast<std::uint32_t>(checkpoint.integer(key + name)));
    };
    c.vocab_size = integer("vocab_size");
    c.dim = integer("dim");
    c.hidden_dim = integer("hidden_dim");
    c.n_layers = integer("n_layers");
    c.n_heads = integer("n_heads");
    c.n_kv_heads = integer("n_kv_heads");
    c.head_dim = integer("head_dim");
    c.max_seq_len = integer("max_seq_len");
    c.qk_norm = integer("qk_norm") != 0;
    c.subln = integer("subln") != 0;
    c.all_norms = integer("all_norms") != 0;
    c.tied_embeddings = integer("tied_embeddings") != 0;
    c.norm_eps = float_bits("norm_eps_bits");
    c.rope_theta = float_bits("rope_theta_bits");
    c.subln_eps = float_bits("subln_eps_bits");
    try {
        c.validate();
    } catch (const std::invalid_argument& error) {
        throw io_error(detail::concat(checkpoint.source(), ": stored decoder configuration is invalid: ",
                                      error.what()));
    }
    BITDISTILL_REQUIRE_AS(io_error, c.n_layers <= 4096, checkpoint.source(), ": n_layers ",
                          c.n_layers, " is implausibly large");
    weights.layers.resize(static_cast<std::size_t>(c.n_layers));
    // The configuration decides which optional parts a complete checkpoint stores.
    const auto required = [&](const std::string& name) {
        const std::string part = name.substr(name.rfind('.') + 1);
        if (part == "lm_head") return !c.tied_embeddings;
        if (part == "q_norm" || part == "k_norm") return c.qk_norm;
        if (part == "attn_subln" || part == "ffn_subln") return c.subln;
        if (part == "qkv_norm" || part == "gate_up_norm") return c.all_norms;
        return true;
    };
    detail::for_each_decoder_tensor(weights, [&](const std::string& name, Tensor<float>& tensor) {
        if (checkpoint.has_tensor(prefix + name))
            tensor = checkpoint.tensor(prefix + name);
        else if (required(name))
            throw io_error(detail::concat(checkpoint.source(), ": tensor '", prefix, name,
                                          "' is missing; the checkpoint is incomplete"));
    });
    return weights;
}

/// Stores AdamW's step count and moments under `prefix` ("optim." gives "optim.m.<param>").
inline void store_adamw_state(Checkpoint& checkpoint, const std::string& prefix, const AdamWState& state) {
    checkpoint.set_integer(prefix + "step_count", state.step_count);
    checkpoint.set_integer(prefix + "parameters", static_cast<std::int64_t>(state.names.size()));
    for (std::size_t i = 0; i < state.names.size(); ++i) {
        checkpoint.set_text(prefix + "name." + std::to_string(i), state.names[i]);
        const auto count = static_cast<std::int64_t>(state.first_moments[i].size());
        Tensor<float> first(Shape{count});
        Tensor<float> second(Shape{count});
        std::copy(state.first_moments[i].begin(), state.first_moments[i].end(), first.begin());
        std::copy(state.second_moments[i].begin(), state.second_moments[i].end(), second.begin());
        checkpoint.set_tensor(prefix + "m." + state.names[i], std::move(first));
        checkpoint.set_tensor(prefix + "v." + state.names[i], std::move(second));
    }
}

/// Reads the AdamW state stored under `prefix` by store_adamw_state.
[[nodiscard]] inline AdamWState load_adamw_state(const Checkpoint& checkpoint, const std::string& prefix) {
    AdamWState state;
    state.step_count = checkpoint.integer(prefix + "step_count");
    const std::int64_t count = checkpoint.integer(prefix + "parameters");
    BITDISTILL_REQUIRE_AS(io_error, count >= 0 && count <= static_cast<std::int64_t>(checkpoint.tensors().size()),
                          checkpoint.source(), ": optimizer parameter count ", count,
                          " does not match the stored tensors");
    for (std::int64_t i = 0; i < count; ++i) {
        const std::string& name = checkpoint.text(prefix + "name." + std::to_string(i));
        const Tensor<float>& first = checkpoint.tensor(prefix + "m." + name);
        const Tensor<float>& second = checkpoint.tensor(prefix + "v." + name);
        state.names.push_back(name);
        state.first_moments.emplace_back(first.begin(), first.end());
        state.second_moments.emplace_back(second.begin(), second.end());
    }
    return state;
}

}  // namespace bitdistill
