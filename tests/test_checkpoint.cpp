// Checkpoint files: exact round trips, atomic writes and rejection of damaged files.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <unistd.h>

#include "bitdistill/io/checkpoint.hpp"

using namespace bitdistill;

namespace {

std::filesystem::path scratch_dir(const std::string& name) {
    const auto dir = std::filesystem::temp_directory_path() /
                     ("bitdistill_test_checkpoint_" + name + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    return dir;
}

Tensor<float> random_tensor(Shape shape, std::mt19937& rng) {
    Tensor<float> tensor(shape);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& x : tensor) x = normal(rng);
    return tensor;
}

DecoderWeights tiny_decoder(bool subln, std::mt19937& rng) {
    DecoderWeights weights;
    DecoderConfig& c = weights.config;
    c.vocab_size = 11;
    c.dim = 8;
    c.hidden_dim = 12;
    c.n_layers = 2;
    c.n_heads = 2;
    c.n_kv_heads = 1;
    c.max_seq_len = 16;
    c.subln = subln;
    c.norm_eps = 1e-6f;
    c.rope_theta = 12345.5f;
    weights.embedding = random_tensor(Shape{11, 8}, rng);
    weights.final_norm = random_tensor(Shape{8}, rng);
    for (int i = 0; i < 2; ++i) {
        LayerWeights layer;
        layer.attn_norm = random_tensor(Shape{8}, rng);
        layer.wq = random_tensor(Shape{8, 8}, rng);
        layer.wk = random_tensor(Shape{4, 8}, rng);
        layer.wv = random_tensor(Shape{4, 8}, rng);
        layer.wo = random_tensor(Shape{8, 8}, rng);
        layer.ffn_norm = random_tensor(Shape{8}, rng);
        layer.w_gate = random_tensor(Shape{12, 8}, rng);
        layer.w_up = random_tensor(Shape{12, 8}, rng);
        layer.w_down = random_tensor(Shape{8, 12}, rng);
        if (subln) {
            layer.attn_subln = random_tensor(Shape{8}, rng);
            layer.ffn_subln = random_tensor(Shape{12}, rng);
        }
        weights.layers.push_back(std::move(layer));
    }
    return weights;
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
    return a.shape() == b.shape() &&
           std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * sizeof(float)) == 0;
}

std::string load_error(const std::string& bytes) {
    try {
        (void)Checkpoint::deserialize(bytes, "damaged.ckpt");
    } catch (const io_error& error) {
        return error.what();
    }
    return "";
}

}  // namespace

TEST_CASE("checkpoint round trip is exact") {
    std::mt19937 rng(7);
    Checkpoint checkpoint;
    checkpoint.set_text("stage", "fp_sft");
    checkpoint.set_integer("step", -42);
    checkpoint.set_text("empty", "");
    checkpoint.set_tensor("scalar", Tensor<float>(Shape{}, 3.5f));
    checkpoint.set_tensor("matrix", random_tensor(Shape{3, 5}, rng));
    checkpoint.set_tensor("rank4", random_tensor(Shape{2, 1, 3, 2}, rng));
    checkpoint.set_tensor("empty_rows", Tensor<float>(Shape{0, 4}));

    const auto dir = scratch_dir("roundtrip");
    checkpoint.save(dir / "a.ckpt");
    CHECK_FALSE(std::filesystem::exists(dir / "a.ckpt.tmp"));
    const Checkpoint loaded = Checkpoint::load(dir / "a.ckpt");

    CHECK(loaded.text("stage") == "fp_sft");
    CHECK(loaded.integer("step") == -42);
    CHECK(loaded.text("empty").empty());
    CHECK(same_bits(loaded.tensor("scalar"), checkpoint.tensor("scalar")));
    CHECK(same_bits(loaded.tensor("matrix"), checkpoint.tensor("matrix")));
    CHECK(same_bits(loaded.tensor("rank4"), checkpoint.tensor("rank4")));
    CHECK(loaded.tensor("empty_rows").shape() == Shape{0, 4});
    CHECK(loaded.serialize() == checkpoint.serialize());
    std::filesystem::remove_all(dir);
}

TEST_CASE("decoder weights round trip with config") {
    std::mt19937 rng(11);
    for (bool subln : {false, true}) {
        const DecoderWeights weights = tiny_decoder(subln, rng);
        Checkpoint checkpoint;
        store_decoder_weights(checkpoint, "student.", weights);
        const Checkpoint loaded = Checkpoint::deserialize(checkpoint.serialize(), "memory");
        const DecoderWeights restored = load_decoder_weights(loaded, "student.");

        CHECK(restored.config.dim == 8);
        CHECK(restored.config.n_kv_heads == 1);
        CHECK(restored.config.subln == subln);
        CHECK(restored.config.norm_eps == 1e-6f);
        CHECK(restored.config.rope_theta == 12345.5f);
        CHECK(same_bits(restored.embedding, weights.embedding));
        CHECK(restored.lm_head.shape().rank() == 0);
        REQUIRE(restored.layers.size() == 2);
        CHECK(same_bits(restored.layers[1].w_down, weights.layers[1].w_down));
        CHECK(same_bits(restored.layers[0].wk, weights.layers[0].wk));
        CHECK(restored.layers[0].attn_subln.shape() == (subln ? Shape{8} : Shape{}));
    }
}

TEST_CASE("missing decoder tensor names the tensor") {
    std::mt19937 rng(13);
    DecoderWeights weights = tiny_decoder(true, rng);
    weights.layers[1].attn_norm = Tensor<float>();
    Checkpoint checkpoint;
    store_decoder_weights(checkpoint, "model.", weights);
    const Checkpoint loaded = Checkpoint::deserialize(checkpoint.serialize(), "partial.ckpt");
    CHECK_THROWS_WITH_AS((void)load_decoder_weights(loaded, "model."),
                         doctest::Contains("partial.ckpt: tensor 'model.layers.1.attn_norm' is missing"), io_error);
}

TEST_CASE("adamw state round trip") {
    AdamWState state;
    state.step_count = 17;
    state.names = {"b", "a"};
    state.first_moments = {{1.0f, 2.0f}, {3.0f}};
    state.second_moments = {{4.0f, 5.0f}, {6.0f}};
    Checkpoint checkpoint;
    store_adamw_state(checkpoint, "optim.", state);
    const AdamWState restored = load_adamw_state(Checkpoint::deserialize(checkpoint.serialize(), "m"), "optim.");
    CHECK(restored.step_count == 17);
    CHECK(restored.names == state.names);
    CHECK(restored.first_moments == state.first_moments);
    CHECK(restored.second_moments == state.second_moments);
}

TEST_CASE("missing entries name the key") {
    Checkpoint checkpoint;
    checkpoint.set_text("step", "12x");
    CHECK_THROWS_WITH_AS((void)checkpoint.text("stage"), doctest::Contains("no value 'stage'"), io_error);
    CHECK_THROWS_WITH_AS((void)checkpoint.integer("step"), doctest::Contains("not an integer"), io_error);
    CHECK_THROWS_WITH_AS((void)checkpoint.tensor("w"), doctest::Contains("no tensor 'w'"), io_error);
    checkpoint.set_tensor("w", Tensor<float>(Shape{2, 3}));
    Tensor<float> wrong(Shape{3, 2});
    CHECK_THROWS_WITH_AS(checkpoint.copy_tensor_to("w", wrong.view()), doctest::Contains("[2, 3]"), io_error);
}

TEST_CASE("damaged checkpoint files are rejected") {
    std::mt19937 rng(3);
    Checkpoint checkpoint;
    checkpoint.set_text("stage", "pretrain");
    checkpoint.set_tensor("w", random_tensor(Shape{4, 4}, rng));
    const std::string bytes = checkpoint.serialize();

    // Every truncation is caught, whether it cuts the header, a tensor or the checksum.
    for (std::size_t length : {std::size_t{0}, std::size_t{7}, std::size_t{30}, bytes.size() / 2, bytes.size() - 1}) {
        CAPTURE(length);
        CHECK_FALSE(load_error(bytes.substr(0, length)).empty());
    }

    std::string flipped = bytes;
    flipped[bytes.size() / 2] ^= 0x10;
    CHECK(load_error(flipped).find("checksum mismatch") != std::string::npos);

    std::string wrong_magic = bytes;
    wrong_magic[0] = 'X';
    CHECK(load_error(wrong_magic).find("wrong magic") != std::string::npos);

    // A damaged version field is corruption. A file of another version, with its own valid
    // checksum, is reported as that version.
    std::string future = bytes;
    future[8] = 9;  // format version field
    CHECK(load_error(future).find("checksum mismatch") != std::string::npos);
    Fnv1a64 checksum;
    checksum.update(future.data(), future.size() - 8);
    const std::uint64_t digest = checksum.digest();
    std::memcpy(future.data() + future.size() - 8, &digest, 8);
    CHECK(load_error(future).find("format version 9") != std::string::npos);
}

TEST_CASE("loading a folder names the folder") {
    const std::filesystem::path folder = std::filesystem::temp_directory_path() /
                                        ("bitdistill_folder_" + std::to_string(getpid()) + ".ckpt");
    std::filesystem::create_directories(folder);
    CHECK_THROWS_WITH_AS((void)Checkpoint::load(folder), doctest::Contains("is a folder"), io_error);
    std::filesystem::remove_all(folder);
}

TEST_CASE("huge sizes in a valid file are rejected before allocation") {
    // A tensor count and extent that claim far more data than the file holds, with a
    // checksum that matches, so only the size checks can catch it.
    std::string bytes(Checkpoint::magic, sizeof Checkpoint::magic);
    auto append = [&](auto value) { bytes.append(reinterpret_cast<const char*>(&value), sizeof value); };
    append(std::uint32_t{1});
    append(std::uint32_t{0x01020304});
    append(std::uint64_t{0});          // text entries
    append(std::uint64_t{1});          // tensors
    append(std::uint32_t{1});
    bytes += "w";
    append(std::uint32_t{2});
    append(std::int64_t{1} << 40);
    append(std::int64_t{1} << 40);
    Fnv1a64 checksum;
    checksum.update(bytes);
    append(checksum.digest());
    const std::string message = load_error(bytes);
    CHECK(message.find("larger than the rest of the file") != std::string::npos);
}

TEST_CASE("save replaces an existing file") {
    const auto dir = scratch_dir("replace");
    Checkpoint first;
    first.set_integer("step", 1);
    first.save(dir / "c.ckpt");
    Checkpoint second;
    second.set_integer("step", 2);
    second.save(dir / "c.ckpt");
    CHECK(Checkpoint::load(dir / "c.ckpt").integer("step") == 2);
    CHECK_THROWS_AS((void)Checkpoint::load(dir / "absent.ckpt"), io_error);
    std::filesystem::remove_all(dir);
}
