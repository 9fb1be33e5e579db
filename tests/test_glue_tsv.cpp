// GLUE-style TSV readers: well-formed files, every kind of malformed row, and the
// shipped data sets.
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>
#include <string>

#include "bitdistill/io/glue_tsv.hpp"

using namespace bitdistill;

namespace {

std::vector<TextExample> parse(const std::string& text, const TsvFormat& format) {
    std::istringstream in(text);
    return parse_glue_tsv(in, "input.tsv", format);
}

/// Message of the io_error that parsing `text` raises, or "" when none is raised.
std::string parse_error(const std::string& text, const TsvFormat& format) {
    try {
        (void)parse(text, format);
    } catch (const io_error& error) {
        return error.what();
    }
    return "";
}

bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("sst2 rows parse into text and label") {
    const auto rows = parse("sentence\tlabel\na fine film\t1\ndull\t0\n", sst2_format());
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].text_a == "a fine film");
    CHECK(rows[0].text_b.empty());
    CHECK(rows[0].label == 1);
    CHECK(rows[0].line == 2);
    CHECK(rows[1].label == 0);
    CHECK(rows[1].line == 3);
}

TEST_CASE("mnli rows keep both texts and label order") {
    const auto rows = parse(
        "premise\thypothesis\tlabel\np1\th1\tentailment\np2\th2\tneutral\np3\th3\tcontradiction\n",
        mnli_format());
    REQUIRE(rows.size() == 3);
    CHECK(rows[1].text_a == "p2");
    CHECK(rows[1].text_b == "h2");
    CHECK(rows[0].label == 0);
    CHECK(rows[1].label == 1);
    CHECK(rows[2].label == 2);
}

TEST_CASE("qnli rows skip the index column") {
    const auto rows = parse("index\tquestion\tsentence\tlabel\n7\tq?\ts.\tnot_entailment\n", qnli_format());
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].text_a == "q?");
    CHECK(rows[0].text_b == "s.");
    CHECK(rows[0].label == 1);
}

TEST_CASE("crlf line endings read like lf") {
    const auto rows = parse("sentence\tlabel\r\ngood\t1\r\n", sst2_format());
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].text_a == "good");
    CHECK(rows[0].label == 1);
}

TEST_CASE("byte order mark before header is skipped") {
    const auto rows = parse("\xEF\xBB\xBFsentence\tlabel\ngood\t1\n", sst2_format());
    REQUIRE(rows.size() == 1);
    CHECK(rows[0].text_a == "good");
}

TEST_CASE("cr-only line endings are rejected") {
    const std::string message = parse_error("sentence\tlabel\rgood\t1\rbad\t0\r", sst2_format());
    CHECK(contains(message, "input.tsv:1:"));
    CHECK(contains(message, "CR-only line endings"));
}

TEST_CASE("missing final newline is accepted") {
    const auto rows = parse("sentence\tlabel\ngood\t1", sst2_format());
    REQUIRE(rows.size() == 1);
}

TEST_CASE("wrong column count names file and line") {
    const std::string message = parse_error("sentence\tlabel\ngood\t1\nbad\t0\textra\n", sst2_format());
    CHECK(contains(message, "input.tsv:3:"));
    CHECK(contains(message, "expected 2 tab-separated columns"));
    CHECK(contains(message, "found 3"));

    const std::string too_few = parse_error("premise\thypothesis\tlabel\nonly premise\tneutral\n", mnli_format());
    CHECK(contains(too_few, "input.tsv:2:"));
    CHECK(contains(too_few, "found 2"));
}

TEST_CASE("unknown label names the label") {
    const std::string message = parse_error("sentence\tlabel\ngood\t1\nmeh\t2\n", sst2_format());
    CHECK(contains(message, "input.tsv:3:"));
    CHECK(contains(message, "unknown label '2'"));
    CHECK(contains(message, "0, 1"));

    // Labels are case-sensitive, as GLUE writes them.
    const std::string cased = parse_error("premise\thypothesis\tlabel\np\th\tNeutral\n", mnli_format());
    CHECK(contains(cased, "unknown label 'Neutral'"));
}

TEST_CASE("invalid utf8 names the byte") {
    // 0xC3 starts a two-byte sequence; 0x28 '(' is not a continuation byte.
    const std::string message = parse_error("sentence\tlabel\nab\xC3\x28\t1\n", sst2_format());
    CHECK(contains(message, "input.tsv:2:"));
    CHECK(contains(message, "invalid UTF-8 at byte 3"));

    // Overlong encoding of '/' and a lone surrogate are also invalid.
    CHECK(contains(parse_error("sentence\tlabel\n\xC0\xAF\t1\n", sst2_format()), "invalid UTF-8"));
    CHECK(contains(parse_error("sentence\tlabel\n\xED\xA0\x80\t1\n", sst2_format()), "invalid UTF-8"));
    // A sequence cut off by the end of the line.
    CHECK(contains(parse_error("sentence\tlabel\nok\t1\nx\xE2\x82\n", sst2_format()), "input.tsv:3:"));
    // Valid multi-byte text passes.
    CHECK(parse("sentence\tlabel\nna\xC3\xAFve \xE2\x82\xAC 5 \xF0\x9F\x98\x80\t1\n", sst2_format()).size() == 1);
}

TEST_CASE("wrong header is rejected") {
    const std::string message = parse_error("label\tsentence\n1\tgood\n", sst2_format());
    CHECK(contains(message, "input.tsv:1:"));
    CHECK(contains(message, "header"));
}

TEST_CASE("empty field and empty row are rejected") {
    CHECK(contains(parse_error("sentence\tlabel\n\t1\n", sst2_format()), "column 'sentence' is empty"));
    CHECK(contains(parse_error("premise\thypothesis\tlabel\np\t\tneutral\n", mnli_format()),
                   "column 'hypothesis' is empty"));
    CHECK(contains(parse_error("sentence\tlabel\ngood\t1\n\nbad\t0\n", sst2_format()), "input.tsv:3: empty row"));
}

TEST_CASE("empty file is rejected") {
    CHECK(contains(parse_error("", sst2_format()), "file is empty"));
}

TEST_CASE("missing file names the path") {
    try {
        (void)read_glue_tsv("/nonexistent/dir/train.tsv", sst2_format());
        FAIL("no exception");
    } catch (const io_error& error) {
        CHECK(contains(error.what(), "/nonexistent/dir/train.tsv"));
    }
}

TEST_CASE("glue_format looks tasks up by name") {
    CHECK(glue_format("mnli").label_names.size() == 3);
    CHECK_THROWS_AS((void)glue_format("cola"), std::invalid_argument);
}

TEST_CASE("shipped data sets read completely") {
    const std::filesystem::path data = std::filesystem::path(BITDISTILL_SOURCE_DIR) / "examples" / "data";
    if (!std::filesystem::exists(data / "sst2" / "dev.tsv")) {
        MESSAGE("skipped: examples/data/sst2/dev.tsv not found");
        return;
    }
    const auto dev = read_glue_tsv((data / "sst2" / "dev.tsv").string(), sst2_format());
    CHECK(dev.size() == 872);
    int positives = 0;
    for (const auto& row : dev) positives += row.label;
    CHECK(positives == 444);

    const auto train = read_glue_tsv((data / "sst2" / "train.tsv").string(), sst2_format());
    CHECK(train.size() == 67349);
    CHECK(train.front().text_a == "hide new secretions from the parental units");

    if (std::filesystem::exists(data / "mnli" / "sample_b.tsv")) {
        const auto mnli = read_glue_tsv((data / "mnli" / "sample_b.tsv").string(), mnli_format());
        CHECK(mnli.size() == 20617);
    }
}
