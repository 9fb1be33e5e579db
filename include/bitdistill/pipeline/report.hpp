// Result files of a run: a JSON document, a Markdown table and an SVG chart of the loss
// curves, all written with temporary file + rename so that a killed run leaves either the
// previous file or the new one.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "bitdistill/core/error.hpp"
#include "bitdistill/io/checkpoint.hpp"
#include "bitdistill/pipeline/progress.hpp"

namespace bitdistill::pipeline {

/// A JSON value with object keys kept in insertion order, for writing result files.
class Json {
public:
    using Array = std::vector<Json>;
    using Object = std::vector<std::pair<std::string, Json>>;

    Json() = default;  ///< null
    Json(bool value) : value_(value) {}
    Json(int value) : value_(static_cast<std::int64_t>(value)) {}
    Json(std::int64_t value) : value_(value) {}
    Json(double value) : value_(value) {}
    Json(float value) : value_(static_cast<double>(value)) {}
    Json(const char* value) : value_(std::string(value)) {}
    Json(std::string value) : value_(std::move(value)) {}
    Json(Array value) : value_(std::move(value)) {}

    [[nodiscard]] static Json object() {
        Json json;
        json.value_ = Object{};
        return json;
    }
    [[nodiscard]] static Json array() {
        Json json;
        json.value_ = Array{};
        return json;
    }

    /// Member `key` of an object, added (as null) when absent. Turns a null into an object.
    Json& operator[](const std::string& key) {
        if (std::holds_alternative<std::monostate>(value_)) value_ = Object{};
        auto* members = std::get_if<Object>(&value_);
        BITDISTILL_REQUIRE(members != nullptr, "Json: member '", key, "' requested from a non-object value");
        for (auto& [name, member] : *members)
            if (name == key) return member;
        members->emplace_back(key, Json{});
        return members->back().second;
    }

    /// Appends to an array. Turns a null into an array.
    void push_back(Json value) {
        if (std::holds_alternative<std::monostate>(value_)) value_ = Array{};
        auto* items = std::get_if<Array>(&value_);
        BITDISTILL_REQUIRE(items != nullptr, "Json: push_back on a non-array value");
        items->push_back(std::move(value));
    }

    /// Serializes with two-space indentation. Non-finite numbers become null, because JSON
    /// has no NaN or Inf.
    [[nodiscard]] std::string dump(int indent = 0) const {
        std::string out;
        write(out, indent);
        return out;
    }

private:
    static void write_string(std::string& out, const std::string& text) {
        out += '"';
        for (const char raw : text) {
            const auto c = static_cast<unsigned char>(raw);
            switch (c) {
                case '"': out += "\\\""; break;
                case '\\': out += "\\\\"; break;
                case '\n': out += "\\n"; break;
                case '\t': out += "\\t"; break;
                case '\r': out += "\\r"; break;
                default:
                    if (c < 0x20) {
                        char escape[8];
                        std::snprintf(escape, sizeof escape, "\\u%04x", c);
                        out += escape;
                    } else {
                        out += raw;
                    }
            }
        }
        out += '"';
    }

    void write(std::string& out, int indent) const {
        const std::string pad(static_cast<std::size_t>(indent + 2), ' ');
        const std::string close_pad(static_cast<std::size_t>(indent), ' ');
        if (std::holds_alternative<std::monostate>(value_)) {
            out += "null";
        } else if (const bool* flag = std::get_if<bool>(&value_)) {
            out += *flag ? "true" : "false";
        } else if (const std::int64_t* integer = std::get_if<std::int64_t>(&value_)) {
            out += std::to_string(*integer);
        } else if (const double* number = std::get_if<double>(&value_)) {
            if (!std::isfinite(*number)) {
                out += "null";
            } else {
                char text[40];
                std::snprintf(text, sizeof text, "%.10g", *number);
                out += text;
            }
        } else if (const std::string* text = std::get_if<std::string>(&value_)) {
            write_string(out, *text);
        } else if (const Array* items = std::get_if<Array>(&value_)) {
            // Arrays of scalars stay on one line; arrays of containers get one item per line.
            bool nested = false;
            for (const Json& item : *items)
                nested = nested || std::holds_alternative<Array>(item.value_) ||
                         std::holds_alternative<Object>(item.value_);
            out += '[';
            for (std::size_t i = 0; i < items->size(); ++i) {
                if (i != 0) out += nested ? "," : ", ";
                if (nested) out += "\n" + pad;
                (*items)[i].write(out, indent + 2);
            }
            if (nested && !items->empty()) out += "\n" + close_pad;
            out += ']';
        } else if (const Object* members = std::get_if<Object>(&value_)) {
            out += '{';
            for (std::size_t i = 0; i < members->size(); ++i) {
                out += i == 0 ? "\n" : ",\n";
                out += pad;
                write_string(out, (*members)[i].first);
                out += ": ";
                (*members)[i].second.write(out, indent + 2);
            }
            if (!members->empty()) out += "\n" + close_pad;
            out += '}';
        }
    }

    std::variant<std::monostate, bool, std::int64_t, double, std::string, Array, Object> value_;
};

/// A Markdown table: a header row and rows of preformatted cells.
struct MarkdownTable {
    std::vector<std::string> header;
    std::vector<std::vector<std::string>> rows;

    /// Formats the table with columns padded to equal width.
    [[nodiscard]] std::string render() const {
        std::vector<std::size_t> widths(header.size(), 3);
        auto widen = [&](const std::vector<std::string>& cells) {
            for (std::size_t c = 0; c < cells.size() && c < widths.size(); ++c)
                widths[c] = std::max(widths[c], cells[c].size());
        };
        widen(header);
        for (const auto& row : rows) widen(row);
        auto line = [&](const std::vector<std::string>& cells) {
            std::string text = "|";
            for (std::size_t c = 0; c < widths.size(); ++c) {
                const std::string cell = c < cells.size() ? cells[c] : "";
                text += " " + cell + std::string(widths[c] - cell.size(), ' ') + " |";
            }
            return text + "\n";
        };
        std::string text = line(header);
        text += "|";
        for (std::size_t width : widths) text += std::string(width + 2, '-') + "|";
        text += "\n";
        for (const auto& row : rows) text += line(row);
        return text;
    }
};

/// Formats `value` with `decimals` digits after the point.
[[nodiscard]] inline std::string fixed(double value, int decimals) {
    char text[48];
    std::snprintf(text, sizeof text, "%.*f", decimals, value);
    return text;
}

namespace detail {

[[nodiscard]] inline std::string xml_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        switch (c) {
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '&': out += "&amp;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

/// Formats an axis label with three significant digits.
[[nodiscard]] inline std::string axis_number(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.3g", value);
    return text;
}

/// Formats an SVG coordinate with one decimal.
[[nodiscard]] inline std::string coordinate(double value) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f", value);
    return text;
}

}  // namespace detail

/// Draws the loss curves as an SVG image: one panel per stage (their losses differ in
/// scale), step on the x axis and the logged loss on a linear y axis that starts at 0 unless
/// the curve goes negative. Stages without points are skipped.
[[nodiscard]] inline std::string loss_curves_svg(const std::vector<LossCurve>& curves, const std::string& title) {
    std::vector<const LossCurve*> drawn;
    for (const LossCurve& curve : curves)
        if (!curve.steps.empty()) drawn.push_back(&curve);

    const int columns = 2;
    const int panel_width = 460;
    const int panel_height = 260;
    const int rows = std::max(1, static_cast<int>((drawn.size() + columns - 1) / columns));
    const int width = columns * panel_width;
    const int height = 40 + rows * panel_height;
    static const char* const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                         "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

    std::string svg;
    svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) + "\" height=\"" +
           std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    svg += "<text x=\"" + std::to_string(width / 2) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">" +
           detail::xml_escape(title) + "</text>\n";

    for (std::size_t p = 0; p < drawn.size(); ++p) {
        const LossCurve& curve = *drawn[p];
        const int left = static_cast<int>(p % columns) * panel_width + 60;
        const int top = 40 + static_cast<int>(p / columns) * panel_height + 20;
        const int plot_width = panel_width - 80;
        const int plot_height = panel_height - 70;

        double x_min = static_cast<double>(curve.steps.front());
        double x_max = static_cast<double>(curve.steps.back());
        if (x_max <= x_min) x_max = x_min + 1;
        double y_min = 0.0;
        double y_max = 0.0;
        for (float loss : curve.losses) {
            if (!std::isfinite(loss)) continue;
            y_min = std::min(y_min, static_cast<double>(loss));
            y_max = std::max(y_max, static_cast<double>(loss));
        }
        if (y_max <= y_min) y_max = y_min + 1;
        auto x_at = [&](double step) { return left + (step - x_min) / (x_max - x_min) * plot_width; };
        auto y_at = [&](double loss) { return top + plot_height - (loss - y_min) / (y_max - y_min) * plot_height; };

        svg += "<g>\n<text x=\"" + std::to_string(left + plot_width / 2) + "\" y=\"" + std::to_string(top - 6) +
               "\" text-anchor=\"middle\" font-weight=\"bold\">" + detail::xml_escape(curve.stage) + "</text>\n";
        svg += "<rect x=\"" + std::to_string(left) + "\" y=\"" + std::to_string(top) + "\" width=\"" +
               std::to_string(plot_width) + "\" height=\"" + std::to_string(plot_height) +
               "\" fill=\"none\" stroke=\"#888\"/>\n";
        for (int tick = 0; tick <= 4; ++tick) {
            const double fraction = tick / 4.0;
            const double y_value = y_min + fraction * (y_max - y_min);
            const double y = y_at(y_value);
            svg += "<line x1=\"" + std::to_string(left) + "\" x2=\"" + std::to_string(left + plot_width) +
                   "\" y1=\"" + detail::coordinate(y) + "\" y2=\"" + detail::coordinate(y) +
                   "\" stroke=\"#eee\"/>\n";
            svg += "<text x=\"" + std::to_string(left - 4) + "\" y=\"" + detail::coordinate(y + 4) +
                   "\" text-anchor=\"end\">" + detail::axis_number(y_value) + "</text>\n";
            const double x_value = x_min + fraction * (x_max - x_min);
            svg += "<text x=\"" + detail::coordinate(x_at(x_value)) + "\" y=\"" +
                   std::to_string(top + plot_height + 16) + "\" text-anchor=\"middle\">" +
                   detail::axis_number(x_value) + "</text>\n";
        }
        svg += "<text x=\"" + std::to_string(left + plot_width / 2) + "\" y=\"" +
               std::to_string(top + plot_height + 34) + "\" text-anchor=\"middle\">step</text>\n";
        svg += "<text transform=\"translate(" + std::to_string(left - 44) + "," +
               std::to_string(top + plot_height / 2) + ") rotate(-90)\" text-anchor=\"middle\">loss</text>\n";

        svg += "<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"" + std::string(colors[p % 8]) + "\" points=\"";
        for (std::size_t i = 0; i < curve.steps.size(); ++i) {
            if (!std::isfinite(curve.losses[i])) continue;
            svg += detail::coordinate(x_at(static_cast<double>(curve.steps[i]))) + "," +
                   detail::coordinate(y_at(static_cast<double>(curve.losses[i]))) + " ";
        }
        svg += "\"/>\n</g>\n";
    }
    svg += "</svg>\n";
    return svg;
}

/// Writes `text` to `path` (temporary file, then rename), creating its folder.
inline void write_text_file(const std::filesystem::path& path, const std::string& text) {
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
    write_file_atomically(path, text);
}

}  // namespace bitdistill::pipeline
