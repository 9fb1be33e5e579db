// The packed student file: save/load round trips that give identical logits, and damaged
// files (truncated, bit-flipped, crafted with valid checksums) rejected with a message
// naming the file and the problem.
#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/session.hpp"
#include "bitdistill/io/student_format.hpp"

using namespace bitdistill;
namespace fs = std::filesystem;

namespace {

DecoderWeights random_weights(const DecoderConfig& config, std::uint64_t seed) {
    std::mt19937_64 generator(seed);
    std::normal_distribution<float> normal(0.0f, 0.2f);
    auto make = [&](Shape shape, float mean = 0.0f) {
        Tensor<float> t(shape);
        for (float& v : t) v = mean + normal(generator);
        return t;
    };
    DecoderWeights w;
    w.config = config;
    const std::int64_t dim = config.dim, hidden = config.hidden_dim, q = config.q_width(), kv = config.kv_width();
    w.embedding = make(Shape{config.vocab_size, dim});
    if (!config.tied_embeddings) w.lm_head = make(Shape{config.vocab_size, dim});
    w.final_norm = make(Shape{dim}, 1.0f);
    for (int i = 0; i < config.n_layers; ++i) {
        LayerWeights l;
        l.attn_norm = make(Shape{dim}, 1.0f);
        l.ffn_norm = make(Shape{dim}, 1.0f);
        l.wq = make(Shape{q, dim});
        l.wk = make(Shape{kv, dim});
        l.wv = make(Shape{kv, dim});
        l.wo = make(Shape{dim, q});
        l.w_gate = make(Shape{hidden, dim});
        l.w_up = make(Shape{hidden, dim});
        l.w_down = make(Shape{dim, hidden});
        if (config.qk_norm) {
            l.q_norm = make(Shape{config.resolved_head_dim()}, 1.0f);
            l.k_norm = make(Shape{config.resolved_head_dim()}, 1.0f);
        }
        if (config.subln) {
            l.attn_subln = make(Shape{q}, 1.0f);
            l.ffn_subln = make(Shape{hidden}, 1.0f);
        }
        if (config.all_norms) {
            l.qkv_norm = make(Shape{dim}, 1.0f);
            l.gate_up_norm = make(Shape{dim}, 1.0f);
        }
        w.layers.push_back(std::move(l));
    }
    return w;
}

DecoderConfig test_config() {
    DecoderConfig config;
    config.vocab_size = 61;
    config.dim = 40;
    config.hidden_dim = 70;  // not a multiple of 16 or 20: padded chunks
    config.n_layers = 2;
    config.n_heads = 4;
    config.n_kv_heads = 2;
    config.max_seq_len = 16;
    config.qk_norm = true;
    config.subln = true;
    return config;
}

/// A fresh folder under the temp directory, removed at the end of the scope.
struct TempFolder {
    fs::path path;
    explicit TempFolder(const std::string& name)
        : path(fs::temp_directory_path() / ("bitdistill_student_" + std::to_string(::getpid()) + "_" + name)) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempFolder() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

Tensor<float> logits_of(const InferenceModel& model, const std::vector<int>& tokens) {
    InferenceSession session(model);
    const TensorView<const float> view = session.prefill_all(tokens);
    Tensor<float> copy(view.shape());
    std::copy(view.data(), view.data() + view.numel(), copy.data());
    return copy;
}

/// Byte offsets of one record of a saved file.
struct RecordOffsets {
    std::string name;
    std::size_t start = 0;         // first byte of the record header
    std::size_t header_end = 0;    // its checksum
    std::size_t payload = 0;       // first payload byte
    std::size_t payload_bytes = 0;
    std::size_t rows_field = 0;    // the i64 rows field
};

template <class T>
T read_at(const std::vector<std::uint8_t>& bytes, std::size_t at) {
    T value;
    std::memcpy(&value, bytes.data() + at, sizeof(T));
    return value;
}

template <class T>
void write_at(std::vector<std::uint8_t>& bytes, std::size_t at, T value) {
    std::memcpy(bytes.data() + at, &value, sizeof(T));
}

constexpr std::size_t header_bytes = 76;  // magic to tensor count, before its checksum

/// Walks the records of a saved file.
std::vector<RecordOffsets> parse_records(const std::vector<std::uint8_t>& bytes) {
    std::vector<RecordOffsets> records;
    const auto count = read_at<std::uint32_t>(bytes, header_bytes - 4);
    std::size_t at = header_bytes + 8;
    for (std::uint32_t i = 0; i < count; ++i) {
        RecordOffsets r;
        r.start = at;
        const auto name_size = read_at<std::uint16_t>(bytes, at);
        r.name.assign(reinterpret_cast<const char*>(bytes.data() + at + 2), name_size);
        at += 2 + name_size + 2;
        r.rows_field = at;
        at += 16;
        const auto scales = read_at<std::uint32_t>(bytes, at);
        at += 4 + 4 * scales;
        r.payload_bytes = read_at<std::uint64_t>(bytes, at);
        at += 8;
        r.header_end = at;
        r.payload = at + 8;
        at = r.payload + r.payload_bytes + 8;
        records.push_back(r);
    }
    return records;
}

/// Recomputes the checksum of the record header and the payload of `r` after an edit.
void reseal(std::vector<std::uint8_t>& bytes, const RecordOffsets& r) {
    write_at(bytes, r.header_end, checksum64({bytes.data() + r.start, r.header_end - r.start}));
    write_at(bytes, r.payload + r.payload_bytes, checksum64({bytes.data() + r.payload, r.payload_bytes}));
}

const RecordOffsets& find_record(const std::vector<RecordOffsets>& records, const std::string& name) {
    for (const RecordOffsets& r : records)
        if (r.name == name) return r;
    FAIL("record ", name, " not found");
    return records.front();
}

std::string load_error(const fs::path& path) {
    try {
        (void)load_student(path);
    } catch (const io_error& error) {
        return error.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("student round trip gives identical logits") {
    TempFolder folder("roundtrip");
    const std::vector<int> tokens = {3, 17, 42, 5, 60, 0, 9};
    struct Variant {
        const char* name;
        InferenceFormat format;
        bool tied;
        bool all_norms;
    };
    const Variant variants[] = {
        {"ternary2", InferenceFormat::ternary2(), true, false},
        {"ternary1_6", InferenceFormat::ternary1_6(), true, false},
        {"ternary1_6 untied, all norms", InferenceFormat::ternary1_6(), false, true},
        {"ternary2 per-row scales", InferenceFormat::ternary2(Granularity::per_row), true, false},
        {"ternary1_6 per-row scales", InferenceFormat::ternary1_6(Granularity::per_row), false, false},
        {"ternary2 fp32 head", {ProjectionEncoding::ternary2, ProjectionEncoding::fp32}, false, false},
        {"bf16", InferenceFormat::bf16(), true, false},
        {"fp32", InferenceFormat::fp32(), false, false},
    };
    for (const Variant& variant : variants) {
        DecoderConfig config = test_config();
        config.tied_embeddings = variant.tied;
        config.all_norms = variant.all_norms;
        const InferenceModel model = InferenceModel::build(random_weights(config, 5), variant.format);
        const fs::path path = folder.path / "student.bds";
        save_student(model, path);
        const InferenceModel loaded = load_student(path);

        INFO(std::string(variant.name));
        CHECK(loaded.format.projections == model.format.projections);
        CHECK(loaded.format.embeddings == model.format.embeddings);
        CHECK(loaded.format.ternary_scales == model.format.ternary_scales);
        CHECK(loaded.config.tied_embeddings == config.tied_embeddings);
        CHECK(loaded.config.all_norms == config.all_norms);
        CHECK(loaded.memory().total() == model.memory().total());
        const Tensor<float> expected = logits_of(model, tokens);
        const Tensor<float> actual = logits_of(loaded, tokens);
        for (std::int64_t i = 0; i < expected.numel(); ++i) REQUIRE(actual[i] == expected[i]);
        // Only the target remains: the temporary file was renamed.
        CHECK(std::distance(fs::directory_iterator(folder.path), fs::directory_iterator()) == 1);
    }
}

TEST_CASE("student save replaces an existing file") {
    TempFolder folder("replace");
    const fs::path path = folder.path / "student.bds";
    write_bytes(path, {1, 2, 3});
    const InferenceModel model = InferenceModel::build(random_weights(test_config(), 7), InferenceFormat::ternary2());
    save_student(model, path);
    CHECK_NOTHROW((void)load_student(path));
    CHECK_THROWS_AS(save_student(model, folder.path / "missing_folder" / "student.bds"), io_error);
}

TEST_CASE("student load rejects damaged files") {
    TempFolder folder("damaged");
    const fs::path good = folder.path / "good.bds";
    const InferenceModel model = InferenceModel::build(random_weights(test_config(), 9), InferenceFormat::ternary2());
    save_student(model, good);
    const std::vector<std::uint8_t> original = read_bytes(good);
    const std::vector<RecordOffsets> records = parse_records(original);
    REQUIRE(records.size() == 2 + 2 * 13);  // embedding, final_norm, then 13 tensors a layer
    const fs::path bad = folder.path / "bad.bds";

    auto expect = [&](const std::vector<std::uint8_t>& bytes, const std::string& fragment) {
        write_bytes(bad, bytes);
        const std::string message = load_error(bad);
        INFO(message);
        CHECK(message.find(bad.string()) != std::string::npos);
        CHECK(message.find(fragment) != std::string::npos);
    };

    SUBCASE("truncated anywhere") {
        const RecordOffsets& wq = find_record(records, "layers.0.wq");
        for (std::size_t size : {std::size_t{0}, std::size_t{5}, header_bytes, wq.start + 3, wq.payload + 10,
                                 original.size() - 8, original.size() - 1}) {
            INFO("size ", size);
            expect(std::vector<std::uint8_t>(original.begin(), original.begin() + static_cast<std::ptrdiff_t>(size)),
                   "truncated");
        }
    }
    SUBCASE("trailing bytes") {
        std::vector<std::uint8_t> bytes = original;
        bytes.push_back(0);
        expect(bytes, "1 unexpected bytes after the end marker");
    }
    SUBCASE("bad magic and version") {
        std::vector<std::uint8_t> bytes = original;
        bytes[0] = 'X';
        expect(bytes, "bad magic");
        bytes = original;
        write_at<std::uint32_t>(bytes, 8, 2);
        expect(bytes, "unsupported format version 2");
    }
    SUBCASE("bit flips are caught by the checksums") {
        std::vector<std::uint8_t> bytes = original;
        bytes[20] ^= 0x10;  // inside the config block
        expect(bytes, "checksum mismatch in the header");

        const RecordOffsets& w_up = find_record(records, "layers.1.w_up");
        bytes = original;
        bytes[w_up.payload + 7] ^= 0x01;
        expect(bytes, "checksum mismatch in the payload of layers.1.w_up");

        bytes = original;
        bytes[w_up.rows_field] ^= 0x01;
        expect(bytes, "checksum mismatch in the record header of layers.1.w_up");

        bytes = original;
        bytes[original.size() - 3] ^= 0x20;
        expect(bytes, "end marker missing");
    }
    SUBCASE("resealed edits are caught by validation") {
        const RecordOffsets& wk = find_record(records, "layers.0.wk");
        std::vector<std::uint8_t> bytes = original;
        bytes[wk.payload] = 0xFF;  // four 2-bit fields holding code 3
        reseal(bytes, wk);
        expect(bytes, "tensor layers.0.wk: QTensor<Ternary>::from_bytes: byte 255 at offset 0 is not a valid packed byte");

        bytes = original;
        write_at<std::int64_t>(bytes, wk.rows_field, 24);
        reseal(bytes, wk);
        expect(bytes, "tensor layers.0.wk has shape [24 x 40], expected [20 x 40]");

        bytes = original;
        write_at<float>(bytes, wk.rows_field + 16 + 4, -1.0f);  // the scale after the scale count
        reseal(bytes, wk);
        expect(bytes, "tensor layers.0.wk has an invalid scale -1 at index 0");

        const RecordOffsets& norm = find_record(records, "layers.1.ffn_norm");
        bytes = original;
        write_at<float>(bytes, norm.payload + 4 * 3, std::numeric_limits<float>::quiet_NaN());
        reseal(bytes, norm);
        expect(bytes, "tensor layers.1.ffn_norm has a non-finite value nan at index 3");

        // A huge payload size must be rejected before anything is allocated.
        bytes = original;
        write_at<std::uint64_t>(bytes, wk.header_end - 8, std::uint64_t{1} << 60);
        reseal(bytes, wk);
        expect(bytes, "payload bytes, expected");
    }
    SUBCASE("resealed invalid 1.6-bit byte") {
        const fs::path packed = folder.path / "one_six.bds";
        save_student(InferenceModel::build(random_weights(test_config(), 9), InferenceFormat::ternary1_6()), packed);
        std::vector<std::uint8_t> bytes = read_bytes(packed);
        const std::vector<RecordOffsets> packed_records = parse_records(bytes);
        const RecordOffsets& w_down = find_record(packed_records, "layers.1.w_down");
        bytes[w_down.payload + 5] = 1;  // no five codes encode to 1
        reseal(bytes, w_down);
        expect(bytes, "tensor layers.1.w_down: QTensor<Ternary1_6>::from_bytes: byte 1 at offset 5");
    }
    SUBCASE("resealed header edits are caught by validation") {
        auto reseal_header = [](std::vector<std::uint8_t>& bytes) {
            write_at(bytes, header_bytes, checksum64({bytes.data(), header_bytes}));
        };
        std::vector<std::uint8_t> bytes = original;
        write_at<std::int32_t>(bytes, 16 + 4 * 3, 1 << 30);  // n_layers
        reseal_header(bytes);
        expect(bytes, "config field n_layers = 1073741824 is outside");

        bytes = original;
        write_at<std::int32_t>(bytes, 16 + 4 * 3, 60000);  // plausible, but the file is too small
        reseal_header(bytes);
        expect(bytes, "60000 layers cannot fit");

        bytes = original;
        write_at<std::int32_t>(bytes, 16 + 4 * 5, 3);  // n_kv_heads no longer divides n_heads
        reseal_header(bytes);
        expect(bytes, "invalid config");

        bytes = original;
        bytes[16 + 32 + 12 + 1] = 7;  // projection encoding
        reseal_header(bytes);
        expect(bytes, "unknown encoding codes 7");

        bytes = original;
        bytes[16 + 32 + 12 + 5] = 32;  // 2-bit chunk columns
        reseal_header(bytes);
        expect(bytes, "this build uses 16, 16/20, 64");

        bytes = original;
        write_at<std::uint32_t>(bytes, header_bytes - 4, 5);
        reseal_header(bytes);
        expect(bytes, "header lists 5 tensors but the config implies 28");
    }
    SUBCASE("missing file") {
        const std::string message = load_error(folder.path / "none.bds");
        CHECK(message.find("none.bds") != std::string::npos);
    }
}

TEST_CASE("checksum64 sees every single-word change") {
    std::vector<std::uint8_t> bytes(1000);
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 7);
    const std::uint64_t base = checksum64(bytes);
    for (std::size_t i = 0; i < bytes.size(); i += 37) {
        for (int bit = 0; bit < 8; ++bit) {
            bytes[i] ^= static_cast<std::uint8_t>(1 << bit);
            REQUIRE(checksum64(bytes) != base);
            bytes[i] ^= static_cast<std::uint8_t>(1 << bit);
        }
    }
    CHECK(checksum64(std::span<const std::uint8_t>(bytes).first(999)) != base);
}
