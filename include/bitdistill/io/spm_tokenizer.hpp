// SentencePiece tokenizer (a .model file) with llama2.c's piece-by-piece decoding.
//
// Needs libsentencepiece (Debian: libsentencepiece-dev; link with -lsentencepiece, or
// pkg-config sentencepiece). That is why the umbrella header bitdistill.hpp does not
// include this file: include it yourself where you need it.
#pragma once

#include <sentencepiece_processor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bitdistill/core/error.hpp"

namespace bitdistill {

/// A SentencePiece model loaded from a .model file, with encode and decode.
///
/// Decoding follows llama2.c's run.c, one token at a time: the word-boundary mark U+2581
/// becomes a space, the leading space of the first piece after BOS is dropped, and byte
/// fallback pieces "<0xNN>" become the raw byte NN. Unlike run.c, control tokens (BOS, EOS,
/// padding) decode to an empty string.
class SentencePieceTokenizer {
public:
    /// Loads `path`; throws io_error naming the file and SentencePiece's message on failure.
    explicit SentencePieceTokenizer(const std::filesystem::path& path)
        : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
        const auto status = processor_->Load(path.string());
        if (!status.ok())
            throw io_error(detail::concat("SentencePiece model '", path.string(),
                                          "': load failed: ", status.ToString()));
        if (processor_->GetPieceSize() <= 0)
            throw io_error(detail::concat("SentencePiece model '", path.string(),
                                          "': the vocabulary is empty"));
        pieces_.reserve(static_cast<std::size_t>(processor_->GetPieceSize()));
        for (int id = 0; id < processor_->GetPieceSize(); ++id)
            pieces_.push_back(display_piece(id));
    }

    [[nodiscard]] int vocab_size() const { return static_cast<int>(pieces_.size()); }
    /// Id of the beginning-of-sequence token, or -1 if the model has none.
    [[nodiscard]] int bos_id() const { return processor_->bos_id(); }
    /// Id of the end-of-sequence token, or -1 if the model has none.
    [[nodiscard]] int eos_id() const { return processor_->eos_id(); }

    /// Token ids of `text`, with BOS in front and EOS behind when asked. SentencePiece adds
    /// the dummy-prefix space itself when the model was trained with it.
    [[nodiscard]] std::vector<int> encode(std::string_view text, bool add_bos = true,
                                          bool add_eos = false) const {
        std::vector<int> pieces;
        const auto status = processor_->Encode(text, &pieces);
        if (!status.ok())
            throw std::runtime_error(detail::concat("SentencePiece encode failed: ", status.ToString()));
        std::vector<int> ids;
        ids.reserve(pieces.size() + 2);
        if (add_bos && bos_id() >= 0) ids.push_back(bos_id());
        ids.insert(ids.end(), pieces.begin(), pieces.end());
        if (add_eos && eos_id() >= 0) ids.push_back(eos_id());
        return ids;
    }

    /// Text of `token` when it follows `previous`, as llama2.c prints it during generation.
    /// Throws std::invalid_argument if `token` is outside [0, vocab_size).
    [[nodiscard]] std::string decode_piece(int previous, int token) const {
        BITDISTILL_REQUIRE(token >= 0 && token < vocab_size(), "SentencePieceTokenizer: token id ",
                           token, " is outside [0, ", vocab_size(), ")");
        const std::string& piece = pieces_[static_cast<std::size_t>(token)];
        if (previous == bos_id() && !piece.empty() && piece.front() == ' ') return piece.substr(1);
        return piece;
    }

    /// Concatenated pieces of `tokens`, the first one following `previous`.
    [[nodiscard]] std::string decode(std::span<const int> tokens, int previous) const {
        std::string text;
        for (int token : tokens) {
            text += decode_piece(previous, token);
            previous = token;
        }
        return text;
    }

    /// Concatenated pieces of `tokens` generated right after BOS.
    [[nodiscard]] std::string decode(std::span<const int> tokens) const {
        return decode(tokens, bos_id());
    }

    /// The underlying SentencePiece processor, for anything this wrapper does not offer.
    [[nodiscard]] const sentencepiece::SentencePieceProcessor& processor() const { return *processor_; }

private:
    /// The piece with U+2581 turned into spaces, byte pieces turned into their byte, and
    /// control pieces empty.
    [[nodiscard]] std::string display_piece(int id) const {
        if (processor_->IsControl(id)) return {};
        const std::string& piece = processor_->IdToPiece(id);
        if (processor_->IsByte(id) && piece.size() == 6 && piece.rfind("<0x", 0) == 0 &&
            piece.back() == '>') {
            const unsigned value = static_cast<unsigned>(std::stoul(piece.substr(3, 2), nullptr, 16));
            return std::string(1, static_cast<char>(value));
        }
        static constexpr std::string_view word_mark = "\xE2\x96\x81";  // U+2581 in UTF-8
        std::string text;
        for (std::size_t at = 0; at < piece.size();) {
            if (piece.compare(at, word_mark.size(), word_mark) == 0) {
                text += ' ';
                at += word_mark.size();
            } else {
                text += piece[at++];
            }
        }
        return text;
    }

    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
    std::vector<std::string> pieces_;
};

}  // namespace bitdistill
