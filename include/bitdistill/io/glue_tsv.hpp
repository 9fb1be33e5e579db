// Readers for GLUE-style classification files: tab-separated, one header line, no quoting.
//
// A format names the header columns, which columns hold the text and the label, and the
// label strings in class order. Every row is checked: the column count, a known label, a
// non-empty text field and valid UTF-8. The first bad row raises io_error naming the file,
// the 1-based line number and the problem. A trailing carriage return is stripped from each
// line, so files with CRLF endings read the same as LF files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <istream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "bitdistill/core/error.hpp"

namespace bitdistill {

/// Column layout and label set of one GLUE-style TSV file.
struct TsvFormat {
    std::string task;                       ///< short task name used in messages ("sst2")
    std::vector<std::string> header;        ///< expected header columns, in file order
    int text_a_column = 0;                  ///< column of the first text field
    int text_b_column = -1;                 ///< column of the second text field, -1 if none
    int label_column = 1;                   ///< column of the label
    std::vector<std::string> label_names;   ///< label strings; class id = index here
};

/// One labelled row. `text_b` is empty for single-sentence tasks.
struct TextExample {
    std::string text_a;
    std::string text_b;
    int label = 0;
    std::int64_t line = 0;  ///< 1-based line number in the source file
};

/// SST-2: `sentence<TAB>label`, labels 0 (negative) and 1 (positive).
[[nodiscard]] inline TsvFormat sst2_format() {
    return {"sst2", {"sentence", "label"}, 0, -1, 1, {"0", "1"}};
}

/// MNLI: `premise<TAB>hypothesis<TAB>label`, labels in GLUE order.
[[nodiscard]] inline TsvFormat mnli_format() {
    return {"mnli", {"premise", "hypothesis", "label"}, 0, 1, 2,
            {"entailment", "neutral", "contradiction"}};
}

/// QNLI: `index<TAB>question<TAB>sentence<TAB>label`.
[[nodiscard]] inline TsvFormat qnli_format() {
    return {"qnli", {"index", "question", "sentence", "label"}, 1, 2, 3,
            {"entailment", "not_entailment"}};
}

/// Returns the built-in format called `task` ("sst2", "mnli" or "qnli").
[[nodiscard]] inline TsvFormat glue_format(std::string_view task) {
    if (task == "sst2") return sst2_format();
    if (task == "mnli") return mnli_format();
    if (task == "qnli") return qnli_format();
    throw std::invalid_argument(
        detail::concat("glue_format: unknown task '", task, "'; expected sst2, mnli or qnli"));
}

namespace detail {

/// Returns the byte offset of the first invalid UTF-8 sequence in `text`, or npos.
/// Rejects overlong forms, surrogates and code points above U+10FFFF.
[[nodiscard]] inline std::size_t find_invalid_utf8(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            ++i;
            continue;
        }
        int length = 0;
        std::uint32_t code = 0;
        std::uint32_t min_code = 0;
        if ((lead & 0xE0) == 0xC0) {
            length = 2, code = lead & 0x1F, min_code = 0x80;
        } else if ((lead & 0xF0) == 0xE0) {
            length = 3, code = lead & 0x0F, min_code = 0x800;
        } else if ((lead & 0xF8) == 0xF0) {
            length = 4, code = lead & 0x07, min_code = 0x10000;
        } else {
            return i;
        }
        if (i + static_cast<std::size_t>(length) > text.size()) return i;
        for (int k = 1; k < length; ++k) {
            const auto next = static_cast<unsigned char>(text[i + static_cast<std::size_t>(k)]);
            if ((next & 0xC0) != 0x80) return i;
            code = (code << 6) | (next & 0x3F);
        }
        if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return i;
        i += static_cast<std::size_t>(length);
    }
    return std::string_view::npos;
}

/// Splits `line` at every tab.
[[nodiscard]] inline std::vector<std::string_view> split_tabs(std::string_view line) {
    std::vector<std::string_view> fields;
    std::size_t start = 0;
    while (true) {
        const std::size_t tab = line.find('\t', start);
        if (tab == std::string_view::npos) {
            fields.push_back(line.substr(start));
            return fields;
        }
        fields.push_back(line.substr(start, tab - start));
        start = tab + 1;
    }
}

[[nodiscard]] inline std::string join_names(const std::vector<std::string>& names,
                                            std::string_view separator) {
    std::string joined;
    for (std::size_t i = 0; i < names.size(); ++i) {
        if (i != 0) joined += separator;
        joined += names[i];
    }
    return joined;
}

}  // namespace detail

/// Parses a GLUE-style TSV stream. `source` names the stream in error messages (a path).
/// Throws io_error on the first malformed line, naming `source`, the line and the problem.
[[nodiscard]] inline std::vector<TextExample> parse_glue_tsv(std::istream& in,
                                                             const std::string& source,
                                                             const TsvFormat& format) {
    const int columns = static_cast<int>(format.header.size());
    BITDISTILL_REQUIRE(columns > 0 && format.text_a_column >= 0 &&
                           format.text_a_column < columns && format.text_b_column < columns &&
                           format.label_column >= 0 && format.label_column < columns &&
                           !format.label_names.empty(),
                       "parse_glue_tsv: format '", format.task, "' has column indices outside ",
                       "its ", columns, " header columns or no label names");

    auto fail = [&](std::int64_t line, const auto&... message) -> void {
        throw io_error(detail::concat(source, ":", line, ": ", message...));
    };

    std::vector<TextExample> examples;
    std::string raw;
    std::int64_t line_number = 0;
    bool seen_header = false;
    while (std::getline(in, raw)) {
        ++line_number;
        std::string_view line = raw;
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        // A UTF-8 byte order mark, as some editors write, is not part of the header.
        if (line_number == 1 && line.starts_with("\xEF\xBB\xBF")) line.remove_prefix(3);
        if (line.find('\r') != std::string_view::npos)
            fail(line_number, "carriage return inside the line; the file may use CR-only line ",
                 "endings, which this reader does not split. Convert it to LF or CRLF line endings");

        const std::size_t bad_byte = detail::find_invalid_utf8(line);
        if (bad_byte != std::string_view::npos) {
            fail(line_number, "invalid UTF-8 at byte ", bad_byte + 1, " of the line (byte 0x",
                 std::hex, static_cast<int>(static_cast<unsigned char>(line[bad_byte])), ")");
        }

        const std::vector<std::string_view> fields = detail::split_tabs(line);
        if (!seen_header) {
            seen_header = true;
            bool header_matches = static_cast<int>(fields.size()) == columns;
            for (int c = 0; header_matches && c < columns; ++c)
                header_matches = fields[static_cast<std::size_t>(c)] == format.header[c];
            if (!header_matches) {
                fail(line_number, "header is '", line, "' but a ", format.task,
                     " file starts with '", detail::join_names(format.header, "<TAB>"), "'");
            }
            continue;
        }
        if (line.empty()) fail(line_number, "empty row");
        if (static_cast<int>(fields.size()) != columns) {
            fail(line_number, "expected ", columns, " tab-separated columns (",
                 detail::join_names(format.header, ", "), ") but found ", fields.size());
        }

        TextExample example;
        example.line = line_number;
        example.text_a = std::string(fields[static_cast<std::size_t>(format.text_a_column)]);
        if (example.text_a.empty())
            fail(line_number, "column '", format.header[format.text_a_column], "' is empty");
        if (format.text_b_column >= 0) {
            example.text_b = std::string(fields[static_cast<std::size_t>(format.text_b_column)]);
            if (example.text_b.empty())
                fail(line_number, "column '", format.header[format.text_b_column], "' is empty");
        }

        const std::string_view label = fields[static_cast<std::size_t>(format.label_column)];
        example.label = -1;
        for (std::size_t k = 0; k < format.label_names.size(); ++k)
            if (label == format.label_names[k]) example.label = static_cast<int>(k);
        if (example.label < 0) {
            fail(line_number, "unknown label '", label, "'; expected one of ",
                 detail::join_names(format.label_names, ", "));
        }
        examples.push_back(std::move(example));
    }
    if (!seen_header) throw io_error(detail::concat(source, ": file is empty; expected a header line"));
    return examples;
}

/// Reads the GLUE-style TSV file at `path`; see parse_glue_tsv for the checks.
[[nodiscard]] inline std::vector<TextExample> read_glue_tsv(const std::string& path,
                                                            const TsvFormat& format) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(detail::concat(path, ": cannot open for reading"));
    return parse_glue_tsv(in, path, format);
}

}  // namespace bitdistill
