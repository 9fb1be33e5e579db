// The packed student file: an InferenceModel (config, encodings, every tensor in its
// resident byte layout) in one versioned, checksummed file.
//
// Layout, version 1 (all integers and floats little-endian):
//
//   header section
//     char[8]  magic "BDSTUDNT"
//     u32      version (1)
//     u32      config_bytes (56 in version 1: the size of the config block below)
//     config block
//       i32 vocab_size, dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim, max_seq_len
//       f32 norm_eps, rope_theta, subln_eps
//       u8  flags: bit 0 qk_norm, bit 1 subln, bit 2 all_norms, bit 3 tied_embeddings
//       u8  projection encoding, u8 embedding encoding (0 fp32, 1 bf16, 2 ternary2, 3 ternary1_6)
//       u8  ternary scale granularity: 0 one scale per tensor, 1 one scale per output row
//       u8  group_rows, u8 ternary2 chunk_cols, u8 ternary1_6 chunk_cols, u8 chunk_bytes
//           (the packing constants of quant/qtensor.hpp; the loader rejects a file whose
//           constants differ from the ones it was compiled with)
//       u32 0 (reserved)
//     u32      tensor_count
//     u64      checksum of every header byte before it
//   tensor_count records, in the fixed order listed by student_tensor_names()
//     u16      name length, then the name bytes (at most 128)
//     u8       encoding (as above; norm gains are always fp32), u8 0
//     i64      rows, i64 cols (a norm gain is [1 x width])
//     u32      scale_count (ternary: 1, or rows when per row; 0 otherwise), then that many
//              f32 scales
//     u64      payload_bytes
//     u64      checksum of the record header bytes before it
//     payload  payload_bytes bytes:
//              fp32: rows * cols floats, row-major;
//              bf16: rows * cols bfloat16 values (u16), row-major;
//              ternary2 / ternary1_6: the packed bytes of QTensor in the layout described in
//              quant/qtensor.hpp (16-row groups of 64-byte chunks covering 16 or 20 columns),
//              ceil(rows / 16) * ceil(cols / chunk_cols) * 64 bytes;
//     u64      checksum of the payload
//   char[8]    end marker "BDSTEND1", and nothing after it.
//
// Checksums are checksum64() below with seed 0. Loading checks the magic, version, config
// bounds and packing constants, then for each record the name, encoding, shape, scale
// count and payload size against what the config implies and against the bytes left in
// the file, all before allocating; then the checksums, and finally that every float is
// finite and every packed byte is a valid code. Saving writes a temporary file next to the
// target and renames it over the target, so a crash never leaves a half-written model
// under the final name.
#pragma once

#include <array>
#include <chrono>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/infer/model.hpp"
#include "bitdistill/quant/packing.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill {

static_assert(std::endian::native == std::endian::little,
              "the packed student format is written and read as little-endian memory images");

inline constexpr std::uint32_t student_format_version = 1;

/// 64-bit checksum of `bytes`: each 8-byte little-endian word w updates the state with
/// h = rotl(h ^ (w * k1), 31) * k2, and the tail bytes form one last zero-padded word.
/// Every step is a bijection of the word and of h, so changing any single word always
/// changes the result.
[[nodiscard]] inline std::uint64_t checksum64(std::span<const std::uint8_t> bytes, std::uint64_t seed = 0) noexcept {
    constexpr std::uint64_t k1 = 0x9e3779b97f4a7c15ull, k2 = 0xc2b2ae3d27d4eb4full;
    std::uint64_t state = seed ^ (bytes.size() * k2);
    std::size_t at = 0;
    for (; at + 8 <= bytes.size(); at += 8) {
        std::uint64_t word;
        std::memcpy(&word, bytes.data() + at, 8);
        state = std::rotl(state ^ (word * k1), 31) * k2;
    }
    if (at < bytes.size()) {
        std::uint64_t word = 0;
        std::memcpy(&word, bytes.data() + at, bytes.size() - at);
        state = std::rotl(state ^ (word * k1), 31) * k2;
    }
    return state ^ (state >> 29);
}

namespace detail {

inline constexpr char student_magic[8] = {'B', 'D', 'S', 'T', 'U', 'D', 'N', 'T'};
inline constexpr char student_end[8] = {'B', 'D', 'S', 'T', 'E', 'N', 'D', '1'};
inline constexpr std::uint32_t student_config_bytes = 56;
inline constexpr std::size_t student_max_name = 128;
/// Bounds on config fields of a file: generous for real models, small enough that every
/// size computed from them fits in 64 bits.
inline constexpr std::int64_t student_max_width = std::int64_t{1} << 20;
inline constexpr std::int64_t student_max_count = std::int64_t{1} << 16;

/// One tensor of a student file: where it lives in the model and what the file must hold.
struct StudentTensor {
    std::string name;
    const PackedLinear* linear = nullptr;  // set for matrices
    const Tensor<float>* gain = nullptr;   // set for norm gains
    PackedLinear* linear_out = nullptr;
    Tensor<float>* gain_out = nullptr;
    ProjectionEncoding encoding = ProjectionEncoding::fp32;
    std::int64_t rows = 0, cols = 0;
};

/// Lists the tensors of `model` (const or not) in file order, with the expected encodings
/// and shapes from the config and format.
template <class Model>
std::vector<StudentTensor> student_tensors(Model& model) {
    constexpr bool writable = !std::is_const_v<Model>;
    const DecoderConfig& config = model.config;
    std::vector<StudentTensor> list;
    auto add_linear = [&](std::string name, auto& linear, ProjectionEncoding encoding, std::int64_t rows,
                          std::int64_t cols) {
        StudentTensor entry{std::move(name), &linear, nullptr, nullptr, nullptr, encoding, rows, cols};
        if constexpr (writable) entry.linear_out = &linear;
        list.push_back(std::move(entry));
    };
    auto add_gain = [&](std::string name, auto& gain, std::int64_t width) {
        StudentTensor entry{std::move(name), nullptr, &gain, nullptr, nullptr, ProjectionEncoding::fp32, 1, width};
        if constexpr (writable) entry.gain_out = &gain;
        list.push_back(std::move(entry));
    };
    const std::int64_t vocab = config.vocab_size, dim = config.dim, hidden = config.hidden_dim;
    const std::int64_t q_width = config.q_width(), kv_width = config.kv_width();
    const std::int64_t head_dim = config.resolved_head_dim();
    const ProjectionEncoding projection = model.format.projections, embedding = model.format.embeddings;
    add_linear("embedding", model.embedding, embedding, vocab, dim);
    if (!config.tied_embeddings) add_linear("lm_head", model.lm_head, embedding, vocab, dim);
    add_gain("final_norm", model.final_norm, dim);
    for (std::size_t index = 0; index < model.layers.size(); ++index) {
        auto& layer = model.layers[index];
        const std::string prefix = "layers." + std::to_string(index) + ".";
        add_gain(prefix + "attn_norm", layer.attn_norm, dim);
        if (config.all_norms) add_gain(prefix + "qkv_norm", layer.qkv_norm, dim);
        add_linear(prefix + "wq", layer.wq, projection, q_width, dim);
        add_linear(prefix + "wk", layer.wk, projection, kv_width, dim);
        add_linear(prefix + "wv", layer.wv, projection, kv_width, dim);
        if (config.qk_norm) {
            add_gain(prefix + "q_norm", layer.q_norm, head_dim);
            add_gain(prefix + "k_norm", layer.k_norm, head_dim);
        }
        if (config.subln) add_gain(prefix + "attn_subln", layer.attn_subln, q_width);
        add_linear(prefix + "wo", layer.wo, projection, dim, q_width);
        add_gain(prefix + "ffn_norm", layer.ffn_norm, dim);
        if (config.all_norms) add_gain(prefix + "gate_up_norm", layer.gate_up_norm, dim);
        add_linear(prefix + "w_gate", layer.w_gate, projection, hidden, dim);
        add_linear(prefix + "w_up", layer.w_up, projection, hidden, dim);
        if (config.subln) add_gain(prefix + "ffn_subln", layer.ffn_subln, hidden);
        add_linear(prefix + "w_down", layer.w_down, projection, dim, hidden);
    }
    return list;
}

/// Payload bytes of a [rows x cols] tensor in `encoding`; the caller has bounded rows and
/// cols by 2^20 each, so the products fit in 64 bits.
[[nodiscard]] inline std::int64_t student_payload_bytes(ProjectionEncoding encoding, std::int64_t rows,
                                                        std::int64_t cols) {
    const std::int64_t groups = (rows + Ternary2Weights::group_rows - 1) / Ternary2Weights::group_rows;
    switch (encoding) {
        case ProjectionEncoding::fp32: return rows * cols * 4;
        case ProjectionEncoding::bf16: return rows * cols * 2;
        case ProjectionEncoding::ternary2:
            return groups * ((cols + Ternary2Weights::chunk_cols - 1) / Ternary2Weights::chunk_cols) *
                   Ternary2Weights::chunk_bytes;
        case ProjectionEncoding::ternary1_6:
            return groups * ((cols + Ternary1_6Weights::chunk_cols - 1) / Ternary1_6Weights::chunk_cols) *
                   Ternary1_6Weights::chunk_bytes;
    }
    return -1;
}

/// Appends little-endian values to a byte vector.
class ByteWriter {
public:
    template <class T>
    void put(T value) {
        static_assert(std::is_trivially_copyable_v<T>);
        const auto* p = reinterpret_cast<const std::uint8_t*>(&value);
        bytes.insert(bytes.end(), p, p + sizeof(T));
    }
    void put_bytes(const void* data, std::size_t size) {
        const auto* p = static_cast<const std::uint8_t*>(data);
        bytes.insert(bytes.end(), p, p + size);
    }
    std::vector<std::uint8_t> bytes;
};

/// Reads a student file with every read checked against the bytes left.
class StudentReader {
public:
    explicit StudentReader(const std::filesystem::path& path) : path_(path) {
        std::error_code error;
        size_ = std::filesystem::file_size(path, error);
        if (error) fail("cannot read the file size: ", error.message());
        in_.open(path, std::ios::binary);
        if (!in_) fail("cannot open the file for reading");
    }

    template <class... Parts>
    [[noreturn]] void fail(const Parts&... parts) const {
        throw io_error(concat("student file '", path_.string(), "': ", parts...));
    }

    [[nodiscard]] std::uint64_t remaining() const noexcept { return size_ - offset_; }
    [[nodiscard]] std::uint64_t offset() const noexcept { return offset_; }

    /// Reads `size` bytes, or fails naming `what` if the file has fewer left.
    void read(void* out, std::uint64_t size, std::string_view what) {
        if (size > remaining())
            fail("truncated: ", what, " needs ", size, " bytes at offset ", offset_, " but only ",
                 remaining(), " remain");
        in_.read(static_cast<char*>(out), static_cast<std::streamsize>(size));
        if (!in_) fail("read failed for ", what, " at offset ", offset_);
        if (hashing_) hashed_.insert(hashed_.end(), static_cast<std::uint8_t*>(out), static_cast<std::uint8_t*>(out) + size);
        offset_ += size;
    }

    template <class T>
    [[nodiscard]] T get(std::string_view what) {
        T value;
        read(&value, sizeof(T), what);
        return value;
    }

    /// Starts collecting the bytes read, for a checksum.
    void begin_hash() {
        hashing_ = true;
        hashed_.clear();
    }
    /// Stops collecting and compares the checksum of the collected bytes with the next u64.
    void end_hash(std::string_view section) {
        hashing_ = false;
        verify(hashed_, section);
    }

    /// Compares the checksum of `bytes` with the next u64 of the file.
    void verify(std::span<const std::uint8_t> bytes, std::string_view section) {
        const std::uint64_t computed = checksum64(bytes);
        const std::uint64_t stored = get<std::uint64_t>("checksum");
        if (computed != stored) fail("checksum mismatch in ", section, " (the file is corrupted)");
    }

private:
    std::filesystem::path path_;
    std::ifstream in_;
    std::uint64_t size_ = 0;
    std::uint64_t offset_ = 0;
    bool hashing_ = false;
    std::vector<std::uint8_t> hashed_;
};

[[nodiscard]] inline bool valid_encoding_byte(std::uint8_t value) noexcept { return value <= 3; }

}  // namespace detail

/// Writes `model` to `path` in the packed student format (see the top of this header).
/// The file is written to a temporary name in the same folder and renamed over `path`.
/// Throws io_error naming the file when writing fails.
inline void save_student(const InferenceModel& model, const std::filesystem::path& path) {
    model.validate();
    const DecoderConfig& config = model.config;
    const std::vector<detail::StudentTensor> tensors = detail::student_tensors(model);

    const std::filesystem::path temporary =
        path.parent_path() / (path.filename().string() + ".tmp" +
                              std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    auto fail = [&](const auto&... parts) {
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        throw io_error(detail::concat("student file '", path.string(), "': ", parts...));
    };
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot create the temporary file '", temporary.string(), "'");
    auto write = [&](const std::vector<std::uint8_t>& bytes) {
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    };
    auto write_checksum = [&](std::span<const std::uint8_t> bytes) {
        const std::uint64_t sum = checksum64(bytes);
        out.write(reinterpret_cast<const char*>(&sum), sizeof sum);
    };

    detail::ByteWriter header;
    header.put_bytes(detail::student_magic, 8);
    header.put(student_format_version);
    header.put(detail::student_config_bytes);
    for (int value : {config.vocab_size, config.dim, config.hidden_dim, config.n_layers, config.n_heads,
                      config.n_kv_heads, config.resolved_head_dim(), config.max_seq_len})
        header.put(static_cast<std::int32_t>(value));
    header.put(config.norm_eps);
    header.put(config.rope_theta);
    header.put(config.subln_eps);
    header.put(static_cast<std::uint8_t>((config.qk_norm ? 1 : 0) | (config.subln ? 2 : 0) |
                                         (config.all_norms ? 4 : 0) | (config.tied_embeddings ? 8 : 0)));
    header.put(static_cast<std::uint8_t>(model.format.projections));
    header.put(static_cast<std::uint8_t>(model.format.embeddings));
    header.put(static_cast<std::uint8_t>(model.format.ternary_scales == Granularity::per_row ? 1 : 0));
    header.put(static_cast<std::uint8_t>(Ternary2Weights::group_rows));
    header.put(static_cast<std::uint8_t>(Ternary2Weights::chunk_cols));
    header.put(static_cast<std::uint8_t>(Ternary1_6Weights::chunk_cols));
    header.put(static_cast<std::uint8_t>(Ternary2Weights::chunk_bytes));
    header.put(std::uint32_t{0});
    header.put(static_cast<std::uint32_t>(tensors.size()));
    write(header.bytes);
    write_checksum(header.bytes);

    for (const detail::StudentTensor& tensor : tensors) {
        detail::ByteWriter record;
        record.put(static_cast<std::uint16_t>(tensor.name.size()));
        record.put_bytes(tensor.name.data(), tensor.name.size());
        record.put(static_cast<std::uint8_t>(tensor.encoding));
        record.put(std::uint8_t{0});
        record.put(tensor.rows);
        record.put(tensor.cols);
        std::span<const std::uint8_t> payload;
        std::vector<float> scales;
        if (tensor.gain != nullptr) {
            payload = {reinterpret_cast<const std::uint8_t*>(tensor.gain->data()),
                       static_cast<std::size_t>(tensor.gain->numel()) * sizeof(float)};
        } else {
            std::visit(
                [&](const auto& w) {
                    using W = std::decay_t<decltype(w)>;
                    if constexpr (std::is_same_v<W, Tensor<float>> || std::is_same_v<W, Tensor<BFloat16>>) {
                        payload = {reinterpret_cast<const std::uint8_t*>(w.data()),
                                   static_cast<std::size_t>(w.numel()) * sizeof(*w.data())};
                    } else {
                        payload = {w.bytes().data(), w.bytes().size()};
                        scales.assign(w.scales().begin(), w.scales().end());
                    }
                },
                tensor.linear->storage());
        }
        record.put(static_cast<std::uint32_t>(scales.size()));
        for (float scale : scales) record.put(scale);
        record.put(static_cast<std::uint64_t>(payload.size()));
        write(record.bytes);
        write_checksum(record.bytes);
        out.write(reinterpret_cast<const char*>(payload.data()), static_cast<std::streamsize>(payload.size()));
        write_checksum(payload);
    }
    out.write(detail::student_end, 8);
    out.flush();
    if (!out) fail("write failed on the temporary file '", temporary.string(), "'");
    out.close();
    std::error_code error;
    std::filesystem::rename(temporary, path, error);
    if (error) fail("cannot rename '", temporary.string(), "' to the target: ", error.message());
}

/// Reads a packed student file written by save_student. Throws io_error naming the file
/// and the problem (bad magic, unsupported version, config out of range, unexpected tensor,
/// size mismatch, truncation, checksum mismatch, invalid packed code, non-finite float);
/// every size is checked before its buffer is allocated.
[[nodiscard]] inline InferenceModel load_student(const std::filesystem::path& path) {
    detail::StudentReader reader(path);

    reader.begin_hash();
    char magic[8];
    reader.read(magic, 8, "magic");
    if (std::memcmp(magic, detail::student_magic, 8) != 0) reader.fail("not a student file (bad magic)");
    const auto version = reader.get<std::uint32_t>("version");
    if (version != student_format_version)
        reader.fail("unsupported format version ", version, " (this build reads version ", student_format_version, ")");
    const auto config_bytes = reader.get<std::uint32_t>("config size");
    if (config_bytes != detail::student_config_bytes)
        reader.fail("config block has ", config_bytes, " bytes, expected ", detail::student_config_bytes);

    InferenceModel model;
    DecoderConfig& config = model.config;
    std::int32_t fields[8];
    reader.read(fields, sizeof fields, "config");
    const char* field_names[8] = {"vocab_size", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                  "head_dim", "max_seq_len"};
    for (int i = 0; i < 8; ++i) {
        const std::int64_t bound = (i == 3 || i == 4 || i == 5) ? detail::student_max_count : detail::student_max_width;
        if (fields[i] <= 0 || fields[i] > bound)
            reader.fail("config field ", field_names[i], " = ", fields[i], " is outside [1, ", bound, "]");
    }
    config.vocab_size = fields[0];
    config.dim = fields[1];
    config.hidden_dim = fields[2];
    config.n_layers = fields[3];
    config.n_heads = fields[4];
    config.n_kv_heads = fields[5];
    config.head_dim = fields[6];
    config.max_seq_len = fields[7];
    config.norm_eps = reader.get<float>("norm_eps");
    config.rope_theta = reader.get<float>("rope_theta");
    config.subln_eps = reader.get<float>("subln_eps");
    const auto flags = reader.get<std::uint8_t>("flags");
    const auto projections = reader.get<std::uint8_t>("projection encoding");
    const auto embeddings = reader.get<std::uint8_t>("embedding encoding");
    const auto scale_granularity = reader.get<std::uint8_t>("ternary scale granularity");
    std::uint8_t packing[4];
    reader.read(packing, 4, "packing constants");
    (void)reader.get<std::uint32_t>("reserved word");
    const auto tensor_count = reader.get<std::uint32_t>("tensor count");
    reader.end_hash("the header");

    if (flags > 15) reader.fail("config flags ", int{flags}, " have unknown bits set");
    config.qk_norm = (flags & 1) != 0;
    config.subln = (flags & 2) != 0;
    config.all_norms = (flags & 4) != 0;
    config.tied_embeddings = (flags & 8) != 0;
    if (!detail::valid_encoding_byte(projections) || !detail::valid_encoding_byte(embeddings))
        reader.fail("unknown encoding codes ", int{projections}, " / ", int{embeddings});
    if (scale_granularity > 1) reader.fail("unknown ternary scale granularity ", int{scale_granularity});
    model.format = {static_cast<ProjectionEncoding>(projections), static_cast<ProjectionEncoding>(embeddings),
                    scale_granularity == 1 ? Granularity::per_row : Granularity::per_tensor};
    if (is_ternary(model.format.embeddings)) reader.fail("the embedding cannot be ternary");
    const std::uint8_t expected_packing[4] = {
        static_cast<std::uint8_t>(Ternary2Weights::group_rows), static_cast<std::uint8_t>(Ternary2Weights::chunk_cols),
        static_cast<std::uint8_t>(Ternary1_6Weights::chunk_cols), static_cast<std::uint8_t>(Ternary2Weights::chunk_bytes)};
    if (std::memcmp(packing, expected_packing, 4) != 0)
        reader.fail("packed with group_rows ", int{packing[0]}, ", chunk_cols ", int{packing[1]}, "/",
                    int{packing[2]}, ", chunk_bytes ", int{packing[3]}, "; this build uses ",
                    int{expected_packing[0]}, ", ", int{expected_packing[1]}, "/", int{expected_packing[2]}, ", ",
                    int{expected_packing[3]});
    if (!std::isfinite(config.norm_eps) || !std::isfinite(config.rope_theta) || !std::isfinite(config.subln_eps) ||
        config.norm_eps < 0 || config.subln_eps < 0 || config.rope_theta <= 0)
        reader.fail("config has invalid norm_eps ", config.norm_eps, ", subln_eps ", config.subln_eps,
                    " or rope_theta ", config.rope_theta);
    try {
        config.validate();
    } catch (const std::invalid_argument& error) {
        reader.fail("invalid config: ", error.what());
    }
    if (config.q_width() > detail::student_max_width || config.kv_width() > detail::student_max_width)
        reader.fail("config head widths ", config.q_width(), " / ", config.kv_width(), " exceed ",
                    detail::student_max_width);

    // Each layer has at least 9 records of at least 58 bytes; checking that bound first keeps
    // a corrupt layer count from allocating more layers than the file could describe.
    if (static_cast<std::uint64_t>(config.n_layers) * 9 * 58 > reader.remaining())
        reader.fail("truncated: ", config.n_layers, " layers cannot fit in the ", reader.remaining(),
                    " bytes left");
    model.layers.resize(static_cast<std::size_t>(config.n_layers));
    std::vector<detail::StudentTensor> tensors = detail::student_tensors(model);
    if (tensor_count != tensors.size())
        reader.fail("header lists ", tensor_count, " tensors but the config implies ", tensors.size());

    for (detail::StudentTensor& tensor : tensors) {
        // The record header is read whole and its checksum checked before its fields are
        // trusted; only the two lengths inside it are bounded first, to bound the reads.
        reader.begin_hash();
        const auto name_size = reader.get<std::uint16_t>("tensor name length");
        if (name_size > detail::student_max_name)
            reader.fail("tensor name of ", name_size, " bytes at offset ", reader.offset(), " exceeds ",
                        detail::student_max_name, " (expected tensor ", tensor.name, ")");
        std::string name(name_size, '\0');
        reader.read(name.data(), name_size, "tensor name");
        const auto encoding = reader.get<std::uint8_t>("tensor encoding");
        (void)reader.get<std::uint8_t>("reserved byte");
        const auto rows = reader.get<std::int64_t>("rows");
        const auto cols = reader.get<std::int64_t>("cols");
        const auto scale_count = reader.get<std::uint32_t>("scale count");
        if (scale_count > detail::student_max_width || 4ull * scale_count > reader.remaining())
            reader.fail("tensor ", tensor.name, " has ", scale_count, " scales, more than the file can hold");
        std::vector<float> scales(scale_count);
        reader.read(scales.data(), 4ull * scale_count, "scales");
        const auto payload_bytes = reader.get<std::uint64_t>("payload size");
        reader.end_hash("the record header of " + tensor.name);

        if (name != tensor.name) reader.fail("expected tensor ", tensor.name, " but found '", name, "'");
        if (encoding != static_cast<std::uint8_t>(tensor.encoding))
            reader.fail("tensor ", name, " has encoding ", int{encoding}, ", expected ",
                        encoding_name(tensor.encoding));
        if (rows != tensor.rows || cols != tensor.cols)
            reader.fail("tensor ", name, " has shape [", rows, " x ", cols, "], expected [", tensor.rows, " x ",
                        tensor.cols, "]");
        const bool per_row = model.format.ternary_scales == Granularity::per_row;
        const std::uint32_t expected_scales =
            is_ternary(tensor.encoding) ? static_cast<std::uint32_t>(per_row ? rows : 1) : 0;
        if (scale_count != expected_scales)
            reader.fail("tensor ", name, " has ", scale_count, " scales, expected ", expected_scales);
        const std::int64_t expected_bytes = detail::student_payload_bytes(tensor.encoding, rows, cols);
        if (payload_bytes != static_cast<std::uint64_t>(expected_bytes))
            reader.fail("tensor ", name, " has ", payload_bytes, " payload bytes, expected ", expected_bytes);
        // The payload, its checksum and the end marker must all fit in what is left.
        if (payload_bytes + 16 > reader.remaining())
            reader.fail("truncated: tensor ", name, " needs ", payload_bytes, " bytes at offset ", reader.offset(),
                        " but only ", reader.remaining(), " remain");
        for (std::size_t i = 0; i < scales.size(); ++i)
            if (!std::isfinite(scales[i]) || scales[i] <= 0.0f)
                reader.fail("tensor ", name, " has an invalid scale ", scales[i], " at index ", i);

        auto read_payload = [&](void* data) {
            reader.read(data, payload_bytes, "payload of " + name);
            reader.verify({static_cast<const std::uint8_t*>(data), static_cast<std::size_t>(payload_bytes)},
                          "the payload of " + name);
        };
        auto check_floats = [&](const float* values, std::int64_t count) {
            for (std::int64_t i = 0; i < count; ++i)
                if (!std::isfinite(values[i]))
                    reader.fail("tensor ", name, " has a non-finite value ", values[i], " at index ", i);
        };
        // Reads packed bytes into a tensor of type W; from_bytes rejects invalid codes.
        auto read_ternary = [&](auto type) {
            using W = typename decltype(type)::type;
            std::vector<std::uint8_t> packed(static_cast<std::size_t>(payload_bytes));
            read_payload(packed.data());
            try {
                return W::from_bytes(rows, cols, packed, scales);
            } catch (const std::invalid_argument& error) {
                reader.fail("tensor ", name, ": ", error.what());
            }
        };
        if (tensor.gain_out != nullptr) {
            *tensor.gain_out = Tensor<float>(Shape{cols});
            read_payload(tensor.gain_out->data());
            check_floats(tensor.gain_out->data(), cols);
            continue;
        }
        switch (tensor.encoding) {
            case ProjectionEncoding::fp32: {
                Tensor<float> w(Shape{rows, cols});
                read_payload(w.data());
                check_floats(w.data(), w.numel());
                *tensor.linear_out = PackedLinear(std::move(w));
                break;
            }
            case ProjectionEncoding::bf16: {
                Tensor<BFloat16> w(Shape{rows, cols});
                read_payload(w.data());
                for (std::int64_t i = 0; i < w.numel(); ++i)
                    if (!std::isfinite(to_float(w[i])))
                        reader.fail("tensor ", name, " has a non-finite value at index ", i);
                *tensor.linear_out = PackedLinear(std::move(w));
                break;
            }
            case ProjectionEncoding::ternary2:
                if (per_row)
                    *tensor.linear_out = PackedLinear(read_ternary(std::type_identity<Ternary2RowWeights>{}));
                else
                    *tensor.linear_out = PackedLinear(read_ternary(std::type_identity<Ternary2Weights>{}));
                break;
            case ProjectionEncoding::ternary1_6:
                if (per_row)
                    *tensor.linear_out = PackedLinear(read_ternary(std::type_identity<Ternary1_6RowWeights>{}));
                else
                    *tensor.linear_out = PackedLinear(read_ternary(std::type_identity<Ternary1_6Weights>{}));
                break;
        }
    }
    char end[8];
    reader.read(end, 8, "end marker");
    if (std::memcmp(end, detail::student_end, 8) != 0) reader.fail("end marker missing (the file is corrupted)");
    if (reader.remaining() != 0) reader.fail(reader.remaining(), " unexpected bytes after the end marker");
    model.validate();
    return model;
}

}  // namespace bitdistill
