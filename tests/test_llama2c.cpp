// llama2.c checkpoint loading, SentencePiece decoding and the inference engine against the
// golden output of llama2.c's run.c for stories260K (greedy, 200 tokens from BOS).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "bitdistill/infer/model.hpp"
#include "bitdistill/infer/sampler.hpp"
#include "bitdistill/infer/session.hpp"
#include "bitdistill/io/llama2c.hpp"
#include "bitdistill/io/spm_tokenizer.hpp"

using namespace bitdistill;
namespace fs = std::filesystem;

namespace {

const fs::path model_dir = fs::path(BITDISTILL_SHARED_DATA) / "models" / "stories260K";

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in, "cannot open ", path.string());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// Returns the numbers of the first JSON array after `"key":`, nested arrays flattened.
std::vector<double> json_numbers(const std::string& json, const std::string& key) {
    const std::size_t at = json.find("\"" + key + "\"");
    REQUIRE_MESSAGE(at != std::string::npos, "key ", key, " not found in the golden file");
    std::size_t pos = json.find('[', at);
    REQUIRE(pos != std::string::npos);
    std::vector<double> numbers;
    int depth = 0;
    while (pos < json.size()) {
        const char c = json[pos];
        if (c == '[') {
            ++depth;
            ++pos;
        } else if (c == ']') {
            ++pos;
            if (--depth == 0) break;
        } else if (c == ',' || c == ' ' || c == '\n') {
            ++pos;
        } else {
            char* end = nullptr;
            numbers.push_back(std::strtod(json.c_str() + pos, &end));
            REQUIRE_MESSAGE(end != json.c_str() + pos, "bad number at offset ", pos);
            pos = static_cast<std::size_t>(end - json.c_str());
        }
    }
    return numbers;
}

struct Golden {
    int start_token = 0;
    std::vector<int> greedy_ids;
    std::vector<double> logits;  // positions 0, 1, 2 back to back
};

Golden load_golden() {
    const std::string json = read_text(model_dir / "golden_greedy_t0_n200.json");
    Golden golden;
    const std::size_t at = json.find("\"start_token\"");
    REQUIRE(at != std::string::npos);
    golden.start_token = std::atoi(json.c_str() + json.find(':', at) + 1);
    for (double id : json_numbers(json, "greedy_ids")) golden.greedy_ids.push_back(static_cast<int>(id));
    golden.logits = json_numbers(json, "logits_pos0_1_2");
    return golden;
}

/// A private copy of the checkpoint in a fresh temp folder, removed at the end of the scope.
struct CheckpointCopy {
    fs::path folder;
    fs::path path;
    explicit CheckpointCopy(const std::string& name) {
        folder = fs::temp_directory_path() /
                 ("bitdistill_llama2c_" + std::to_string(::getpid()) + "_" + name);
        fs::remove_all(folder);
        fs::create_directories(folder);
        path = folder / "stories260K.bin";
        fs::copy_file(model_dir / "stories260K.bin", path);
        fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
    }
    ~CheckpointCopy() {
        std::error_code ignored;
        fs::remove_all(folder, ignored);
    }
    void write_int32(std::int64_t offset, std::int32_t value) const { write_bytes(offset, &value, 4); }
    void write_float(std::int64_t offset, float value) const { write_bytes(offset, &value, 4); }
    void write_bytes(std::int64_t offset, const void* data, std::size_t size) const {
        std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
        REQUIRE(file);
        file.seekp(offset);
        file.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
        REQUIRE(file);
    }
};

std::string load_error(const fs::path& path) {
    try {
        (void)load_llama2c(path);
    } catch (const io_error& error) {
        return error.what();
    }
    return "(no error)";
}

}  // namespace

TEST_CASE("llama2c loads the stories260K header and weights") {
    const DecoderWeights weights = load_llama2c(model_dir / "stories260K.bin");
    const DecoderConfig& config = weights.config;
    CHECK(config.dim == 64);
    CHECK(config.hidden_dim == 172);
    CHECK(config.n_layers == 5);
    CHECK(config.n_heads == 8);
    CHECK(config.n_kv_heads == 4);
    CHECK(config.vocab_size == 512);
    CHECK(config.max_seq_len == 512);
    CHECK(config.tied_embeddings);
    CHECK(weights.layers.size() == 5);
    CHECK(weights.layers[0].wk.shape() == Shape{32, 64});
    CHECK(weights.layers[4].w_down.shape() == Shape{64, 172});

    std::int64_t parameters = weights.embedding.numel() + weights.final_norm.numel();
    for (const LayerWeights& layer : weights.layers)
        for (const Tensor<float>* t : {&layer.attn_norm, &layer.wq, &layer.wk, &layer.wv, &layer.wo,
                                       &layer.ffn_norm, &layer.w_gate, &layer.w_up, &layer.w_down})
            parameters += t->numel();
    // The published count of 264,128 also counts the RoPE tables stored in the file
    // (seq_len x head_dim floats), which the loader skips.
    CHECK(parameters + 512 * 8 == 264128);
}

TEST_CASE("llama2c greedy decoding reproduces run.c") {
    const Golden golden = load_golden();
    REQUIRE(golden.greedy_ids.size() == 200);
    REQUIRE(golden.logits.size() == 3 * 512);
    const InferenceModel model = InferenceModel::build(load_llama2c(model_dir / "stories260K.bin"),
                                                       InferenceFormat::fp32());
    const SentencePieceTokenizer tokenizer(model_dir / "tok512.model");
    REQUIRE(tokenizer.bos_id() == golden.start_token);

    SUBCASE("logits at positions 0, 1 and 2, decode and prefill") {
        const std::vector<int> tokens = {golden.start_token, golden.greedy_ids[0], golden.greedy_ids[1]};
        InferenceSession decoding(model);
        InferenceSession prefilling(model);
        const TensorView<const float> all = prefilling.prefill_all(tokens);
        for (int position = 0; position < 3; ++position) {
            const std::span<const float> logits = decoding.decode(tokens[static_cast<std::size_t>(position)]);
            for (int v = 0; v < 512; ++v) {
                const double expected = golden.logits[static_cast<std::size_t>(position * 512 + v)];
                INFO("position ", position, ", logit ", v);
                REQUIRE(std::fabs(logits[static_cast<std::size_t>(v)] - expected) <= 1e-4);
                REQUIRE(std::fabs(all(position, v) - expected) <= 1e-4);
            }
        }
    }

    SUBCASE("200 greedy tokens and their text") {
        InferenceSession session(model);
        Sampler greedy;
        const std::vector<int> prompt = {golden.start_token};
        const std::vector<int> generated = generate(session, prompt, 200, greedy);
        CHECK(generated == golden.greedy_ids);
        CHECK(tokenizer.decode(generated) == read_text(model_dir / "greedy_t0_n200.txt"));
    }
}

TEST_CASE("llama2c greedy decoding is the same on 2 threads") {
    const Golden golden = load_golden();
    const InferenceModel model = InferenceModel::build(load_llama2c(model_dir / "stories260K.bin"),
                                                       InferenceFormat::fp32());
    const int saved = num_threads();
    set_num_threads(2);
    InferenceSession session(model);
    Sampler greedy;
    const std::vector<int> prompt = {golden.start_token};
    const std::vector<int> generated = generate(session, prompt, 60, greedy);
    set_num_threads(saved);
    CHECK(generated == std::vector<int>(golden.greedy_ids.begin(), golden.greedy_ids.begin() + 60));
}

TEST_CASE("SentencePiece tokenizer encodes and decodes tok512") {
    const SentencePieceTokenizer tokenizer(model_dir / "tok512.model");
    CHECK(tokenizer.vocab_size() == 512);
    CHECK(tokenizer.bos_id() == 1);
    CHECK(tokenizer.eos_id() == 2);

    const std::string text = "Once upon a time, there was a little girl named Lily.";
    const std::vector<int> ids = tokenizer.encode(text);
    REQUIRE(ids.size() > 2);
    CHECK(ids.front() == 1);
    CHECK(tokenizer.decode(std::span<const int>(ids).subspan(1)) == text);
    // The dummy-prefix space is kept when the previous token is not BOS.
    CHECK(tokenizer.decode_piece(ids[1], ids[2]).front() == ' ');

    // Characters outside the vocabulary fall back to byte pieces and decode to the same bytes.
    const std::string unusual = "caf\xC3\xA9 \xE2\x82\xAC";
    const std::vector<int> byte_ids = tokenizer.encode(unusual, false);
    CHECK(tokenizer.decode(byte_ids) == unusual);
    CHECK(tokenizer.decode(tokenizer.encode("", true, true)).empty());  // control pieces are empty

    CHECK_THROWS_AS((void)tokenizer.decode_piece(1, 512), std::invalid_argument);
    CHECK_THROWS_AS(SentencePieceTokenizer(model_dir / "missing.model"), io_error);
}

TEST_CASE("llama2c rejects damaged checkpoints") {
    const std::int64_t header = 28;
    const std::int64_t size = static_cast<std::int64_t>(fs::file_size(model_dir / "stories260K.bin"));

    SUBCASE("truncated") {
        CheckpointCopy copy("truncated");
        fs::resize_file(copy.path, static_cast<std::uintmax_t>(size - 4));
        const std::string message = load_error(copy.path);
        CHECK(message.find(copy.path.string()) != std::string::npos);
        CHECK(message.find("has 1056536 bytes") != std::string::npos);
        CHECK(message.find("implies 1056540 bytes") != std::string::npos);
    }
    SUBCASE("shorter than the header") {
        CheckpointCopy copy("tiny");
        fs::resize_file(copy.path, 10);
        CHECK(load_error(copy.path).find("fewer than the 28-byte header") != std::string::npos);
    }
    SUBCASE("oversized") {
        CheckpointCopy copy("oversized");
        fs::resize_file(copy.path, static_cast<std::uintmax_t>(size + 8));
        CHECK(load_error(copy.path).find("has 1056548 bytes") != std::string::npos);
    }
    SUBCASE("header field out of range") {
        const struct {
            int field;
            std::int32_t value;
            const char* expected;
        } cases[] = {
            {0, 0, "dim = 0 is invalid"},
            {0, -64, "dim = -64 is invalid"},
            {1, 1 << 30, "hidden_dim = 1073741824 is invalid"},
            {2, -1, "n_layers = -1 is invalid"},
            {3, 12, "dim = 64 is not a multiple of 2 * n_heads = 24"},
            {4, 3, "n_kv_heads = 3 does not divide n_heads = 8"},
            {4, 16, "n_kv_heads = 16 does not divide n_heads = 8"},
            {5, std::numeric_limits<std::int32_t>::min(), "vocab_size = -2147483648 is invalid"},
            {6, 0, "seq_len = 0 is invalid"},
        };
        for (const auto& c : cases) {
            CheckpointCopy copy("header" + std::to_string(c.field));
            copy.write_int32(4 * c.field, c.value);
            const std::string message = load_error(copy.path);
            INFO("field ", c.field, " = ", c.value, ": ", message);
            CHECK(message.find(copy.path.string()) != std::string::npos);
            CHECK(message.find(c.expected) != std::string::npos);
        }
    }
    SUBCASE("header flip that changes the implied size") {
        // n_layers 5 -> 6 is a valid header, but the file is then one layer too short; a
        // negative vocab (untied classifier) requires one more table.
        for (const auto& [field, value] : {std::pair{2, 6}, std::pair{5, -512}}) {
            CheckpointCopy copy("size" + std::to_string(field));
            copy.write_int32(4 * field, value);
            const std::string message = load_error(copy.path);
            INFO(message);
            CHECK(message.find("has 1056540 bytes but the header") != std::string::npos);
        }
    }
    SUBCASE("NaN and infinity weights name the tensor and index") {
        CheckpointCopy nan_copy("nan");
        // Token embedding [512 x 64] first, then rms_att [5 x 64], then wq of layer 0.
        const std::int64_t wq_offset = header + 4 * (512 * 64 + 5 * 64);
        nan_copy.write_float(wq_offset + 4 * 70, std::numeric_limits<float>::quiet_NaN());
        const std::string nan_message = load_error(nan_copy.path);
        INFO(nan_message);
        CHECK(nan_message.find(nan_copy.path.string()) != std::string::npos);
        CHECK(nan_message.find("tensor wq[layer 0] has a non-finite value nan at index 70") != std::string::npos);

        CheckpointCopy inf_copy("inf");
        inf_copy.write_float(header + 4 * 3, std::numeric_limits<float>::infinity());
        const std::string inf_message = load_error(inf_copy.path);
        INFO(inf_message);
        CHECK(inf_message.find("tensor token_embedding has a non-finite value inf at index 3") !=
              std::string::npos);
    }
    SUBCASE("missing file") {
        const std::string message = load_error(model_dir / "no_such_file.bin");
        CHECK(message.find("no_such_file.bin") != std::string::npos);
        CHECK(message.find("cannot read the file size") != std::string::npos);
    }
}
