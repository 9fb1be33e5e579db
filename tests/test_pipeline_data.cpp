// Prompt encoding, batching, epoch order and the result writers of the pipeline.
#include <doctest/doctest.h>

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "bitdistill/pipeline/data.hpp"
#include "bitdistill/pipeline/progress.hpp"
#include "bitdistill/pipeline/report.hpp"

using namespace bitdistill;
using namespace bitdistill::pipeline;

namespace {

/// One token per character (its byte value + 10), so expected token ids are easy to write.
struct CharacterTokenizer {
    std::vector<int> encode(std::string_view text, bool, bool) const {
        std::vector<int> ids;
        for (char c : text)
            if (c != ' ') ids.push_back(static_cast<unsigned char>(c) + 10);
        return ids;
    }
};

int id(char c) { return static_cast<unsigned char>(c) + 10; }

}  // namespace

TEST_CASE("template splits literals and placeholders") {
    const CharacterTokenizer tokenizer;
    const EncodedTemplate encoded = encode_template({"x{text_a}y{text_b}", {"n", "p"}}, tokenizer);
    REQUIRE(encoded.segments.size() == 4);
    CHECK(encoded.segments[0].literal == TokenIds{id('x')});
    CHECK(encoded.segments[1].placeholder == 0);
    CHECK(encoded.segments[2].literal == TokenIds{id('y')});
    CHECK(encoded.segments[3].placeholder == 1);
    CHECK(encoded.label_tokens[1] == TokenIds{id('p')});
}

TEST_CASE("template errors name the problem") {
    const CharacterTokenizer tokenizer;
    CHECK_THROWS_WITH((void)encode_template({"{sentence}", {"a", "b"}}, tokenizer),
                      doctest::Contains("unknown placeholder {sentence}"));
    CHECK_THROWS_WITH((void)encode_template({"{text_a", {"a", "b"}}, tokenizer), doctest::Contains("no closing"));
    CHECK_THROWS_WITH((void)encode_template({"{text_a}", {"a", "a"}}, tokenizer),
                      doctest::Contains("encode to the same tokens"));
    CHECK_THROWS_WITH((void)encode_template({"{text_a}", {"a", " "}}, tokenizer),
                      doctest::Contains("encodes to no token"));
}

TEST_CASE("example is bos prompt answer") {
    const CharacterTokenizer tokenizer;
    const EncodedTemplate encoded = encode_template({"q{text_a}:", {"n", "p"}}, tokenizer);
    TextExample row;
    row.text_a = "ab";
    row.label = 0;
    const ClassificationExample example = encode_example(row, encoded, tokenizer, 1, 32);
    CHECK(example.tokens == TokenIds{1, id('q'), id('a'), id('b'), id(':'), id('n')});
    CHECK(example.answer_start == 5);
    CHECK(example.label == 0);
}

TEST_CASE("long text is cut from the longer field") {
    const CharacterTokenizer tokenizer;
    const EncodedTemplate encoded = encode_template({"{text_a}|{text_b}", {"n", "p"}}, tokenizer);
    TextExample row;
    row.text_a = "abcdefgh";
    row.text_b = "xyz";
    row.label = 1;
    // <s>, '|' and the answer take 3 of the 7 tokens, so 4 remain for text: text_a, the
    // longer field, is cut from 8 tokens to 1 and text_b keeps its 3.
    const ClassificationExample example = encode_example(row, encoded, tokenizer, 1, 7);
    CHECK(example.tokens.size() == 7);
    CHECK(example.tokens == TokenIds{1, id('a'), id('|'), id('x'), id('y'), id('z'), id('p')});
    CHECK_THROWS_WITH((void)encode_example(row, encoded, tokenizer, 1, 3), doctest::Contains("no room"));
}

TEST_CASE("classification batch targets only answers") {
    std::vector<ClassificationExample> examples(2);
    examples[0].tokens = {1, 20, 21, 30};
    examples[0].answer_start = 3;
    examples[0].label = 1;
    examples[1].tokens = {1, 22, 31};
    examples[1].answer_start = 2;
    examples[1].label = 0;
    const TokenBatch batch = make_classification_batch(examples, {1, 0}, 3);
    CHECK(batch.batch == 2);
    CHECK(batch.seq == 4);
    CHECK(batch.tokens == TokenIds{1, 22, 31, 3, 1, 20, 21, 30});
    CHECK(batch.mask == std::vector<std::uint8_t>{1, 1, 1, 0, 1, 1, 1, 1});
    const std::int32_t ignored = ignored_target;
    CHECK(batch.targets == TokenIds{ignored, 31, ignored, ignored, ignored, ignored, 30, ignored});
    CHECK(batch.answer_rows == std::vector<std::int64_t>{1, 6});
    CHECK(batch.answer_lengths == std::vector<std::int32_t>{1, 1});
    CHECK(batch.labels == std::vector<int>{0, 1});
    CHECK(batch.target_count == 2);
    CHECK(batch.real_tokens == 7);
}

TEST_CASE("language model batch shifts targets") {
    const TokenIds stream = {5, 6, 7, 8, 9, 10, 11};
    const auto windows = make_lm_windows(stream, 3, 1);
    REQUIRE(windows.size() == 2);
    CHECK(windows[0] == TokenIds{6, 7, 8});
    CHECK(windows[1] == TokenIds{9, 10, 11});
    const TokenBatch batch = make_lm_batch(windows, {1, 0});
    CHECK(batch.seq == 2);
    CHECK(batch.tokens == TokenIds{9, 10, 6, 7});
    CHECK(batch.targets == TokenIds{10, 11, 7, 8});
    CHECK(batch.target_count == 4);
}

TEST_CASE("epoch order is a seeded permutation") {
    const auto a = epoch_batches(100, {}, 8, 42, 3);
    const auto b = epoch_batches(100, {}, 8, 42, 3);
    const auto c = epoch_batches(100, {}, 8, 42, 4);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(a.size() == 12);  // the 4 items past the last full batch wait for another epoch
    std::set<std::int64_t> seen;
    for (const auto& batch : a)
        for (std::int64_t index : batch) seen.insert(index);
    CHECK(seen.size() == 96);
    CHECK(*seen.rbegin() < 100);
}

TEST_CASE("length grouping keeps batches homogeneous") {
    std::vector<std::int64_t> lengths;
    for (int i = 0; i < 512; ++i) lengths.push_back(i % 2 == 0 ? 5 : 50);
    const auto batches = epoch_batches(512, lengths, 16, 7, 0);
    int mixed = 0;
    for (const auto& batch : batches) {
        std::set<std::int64_t> batch_lengths;
        for (std::int64_t index : batch) batch_lengths.insert(lengths[static_cast<std::size_t>(index)]);
        mixed += batch_lengths.size() > 1;
    }
    CHECK(mixed <= 1);
}

TEST_CASE("json output escapes and orders keys") {
    Json root = Json::object();
    root["name"] = "a \"quoted\"\nline";
    root["accuracy"] = 0.8125;
    root["steps"] = std::int64_t{1200};
    root["missing"] = std::nan("");
    root["ok"] = true;
    Json list = Json::array();
    list.push_back(1);
    list.push_back(2.5);
    root["list"] = list;
    const std::string text = root.dump();
    CHECK(text.find("\"name\": \"a \\\"quoted\\\"\\nline\"") != std::string::npos);
    CHECK(text.find("\"accuracy\": 0.8125") != std::string::npos);
    CHECK(text.find("\"missing\": null") != std::string::npos);
    CHECK(text.find("\"list\": [1, 2.5]") != std::string::npos);
    CHECK(text.find("\"name\"") < text.find("\"accuracy\""));
}

TEST_CASE("markdown table pads columns") {
    MarkdownTable table{{"method", "accuracy"}, {{"FP-SFT", "0.812"}, {"BitDistill", "0.80"}}};
    const std::string text = table.render();
    CHECK(text.find("| method     | accuracy |\n") == 0);
    CHECK(text.find("|------------|----------|\n") != std::string::npos);
    CHECK(text.find("| BitDistill | 0.80     |\n") != std::string::npos);
}

TEST_CASE("svg chart has one panel per stage") {
    LossCurve a{"pretrain", {10, 20, 30}, {5.0f, 4.0f, 3.5f}};
    LossCurve b{"fp_sft", {1, 2}, {0.7f, 0.4f}};
    LossCurve empty{"skipped", {}, {}};
    const std::string svg = loss_curves_svg({a, b, empty}, "losses <sst2>");
    CHECK(svg.rfind("<svg", 0) == 0);
    CHECK(svg.find("</svg>") != std::string::npos);
    CHECK(svg.find("losses &lt;sst2&gt;") != std::string::npos);
    CHECK(svg.find(">pretrain<") != std::string::npos);
    CHECK(svg.find(">fp_sft<") != std::string::npos);
    CHECK(svg.find(">skipped<") == std::string::npos);
    std::size_t polylines = 0;
    for (std::size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
    CHECK(polylines == 2);
}

TEST_CASE("progress line lists weighted terms") {
    StepRecord record;
    record.stage = "stage3";
    record.step = 12;
    record.total_steps = 100;
    record.loss = 1.5f;
    record.terms = {{"ce", 0.5f}, {"ld", 0.75f}, {"ad", 0.25f}};
    record.learning_rate = 1e-3f;
    record.tokens_per_second = 1234.4;
    record.seconds_left = 192;
    const std::string line = format_progress_line(record);
    CHECK(line.rfind("stage: stage3 step: 12/100 loss: 1.5000 ce: 0.5 ld: 0.75 ad: 0.25 lr: 1.00e-03", 0) == 0);
    CHECK(line.find("tok/s: 1234") != std::string::npos);
    CHECK(line.find("eta: 3m12s") != std::string::npos);
    CHECK(format_duration(3725) == "1h02m");
    CHECK(format_duration(7) == "7s");
}
