// Projection weights of the inference engine in one of four encodings, and the activation
// buffers that feed them.
//
// Encodings of a projection W [out x in] (y = x W^T):
// - fp32: W as float; y computed by matmul_f32_into.
// - bf16: W rounded to bfloat16; x is rounded to bf16 once per input, products summed in
//   fp32 (matmul_bf16_into).
// - ternary2 / ternary1_6: W quantized absmean (delta = max(mean|W|, 1e-5), codes
//   clamp(round(W / delta), -1, 1)) with one delta per tensor (the default) or per output
//   row, and packed 2 bits or 1.6 bits a weight. x is quantized absmax per token to int8
//   (the training-side quantizer), and the product is the exact int32 kernel scaled by
//   delta * gamma / 127.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/kernels/gemv_float.hpp"
#include "bitdistill/kernels/ternary_matmul.hpp"
#include "bitdistill/quant/qtensor.hpp"
#include "bitdistill/quant/quantize_int8.hpp"
#include "bitdistill/quant/quantize_ternary.hpp"

namespace bitdistill {

/// Storage of a projection matrix.
enum class ProjectionEncoding { fp32, bf16, ternary2, ternary1_6 };

[[nodiscard]] inline std::string_view encoding_name(ProjectionEncoding encoding) {
    switch (encoding) {
        case ProjectionEncoding::fp32: return "fp32";
        case ProjectionEncoding::bf16: return "bf16";
        case ProjectionEncoding::ternary2: return "ternary2";
        case ProjectionEncoding::ternary1_6: return "ternary1_6";
    }
    return "unknown";
}

[[nodiscard]] constexpr bool is_ternary(ProjectionEncoding encoding) noexcept {
    return encoding == ProjectionEncoding::ternary2 || encoding == ProjectionEncoding::ternary1_6;
}

/// Ternary formats of the engine: one absmean scale per tensor, or one per output row.
using Ternary2Weights = QTensor<Ternary<2, Granularity::per_tensor>>;
using Ternary1_6Weights = QTensor<Ternary1_6<Granularity::per_tensor>>;
using Ternary2RowWeights = QTensor<Ternary<2, Granularity::per_row>>;
using Ternary1_6RowWeights = QTensor<Ternary1_6<Granularity::per_row>>;
/// Activations of the ternary projections: int8 codes with one absmax scale per token.
using Int8Activations = QTensor<Int8<8, Granularity::per_token>>;

/// One activation matrix x [tokens x in] made ready for projections of one encoding: kept
/// as float, rounded to bf16, or quantized to int8 per token. Preparing once lets q, k and v
/// (or gate and up) share the conversion. Buffers are kept between calls, so preparing the
/// same shape again allocates nothing.
class ProjectionInput {
public:
    /// Prepares `x` for `encoding`. `x` must stay alive and unchanged while the input is used.
    void prepare(TensorView<const float> x, ProjectionEncoding encoding) {
        BITDISTILL_REQUIRE_AS(shape_error, x.shape().rank() == 2,
                              "ProjectionInput: x must be [tokens x in], got ", x.shape().to_string());
        x_ = x;
        encoding_ = encoding;
        if (encoding == ProjectionEncoding::bf16) {
            const std::size_t count = static_cast<std::size_t>(x.numel());
            if (bf16_.size() < count) bf16_ = AlignedBuffer<BFloat16>(count);
            to_bfloat16_into(x, bf16_view());
        } else if (is_ternary(encoding)) {
            quantize_int8_into(x, int8_);
        }
    }

    [[nodiscard]] ProjectionEncoding encoding() const noexcept { return encoding_; }
    [[nodiscard]] TensorView<const float> float_view() const noexcept { return x_; }
    [[nodiscard]] TensorView<const BFloat16> bf16_view() const noexcept {
        return {bf16_.data(), x_.shape()};
    }
    [[nodiscard]] const Int8Activations& int8() const noexcept { return int8_; }

private:
    [[nodiscard]] TensorView<BFloat16> bf16_view() noexcept { return {bf16_.data(), x_.shape()}; }

    TensorView<const float> x_;
    ProjectionEncoding encoding_ = ProjectionEncoding::fp32;
    AlignedBuffer<BFloat16> bf16_;
    Int8Activations int8_;
};

/// A projection W [out x in] stored in one ProjectionEncoding.
class PackedLinear {
public:
    /// The alternatives in ProjectionEncoding order, then the per-row ternary ones.
    using Storage = std::variant<Tensor<float>, Tensor<BFloat16>, Ternary2Weights, Ternary1_6Weights,
                                 Ternary2RowWeights, Ternary1_6RowWeights>;

    PackedLinear() = default;
    explicit PackedLinear(Storage storage) : storage_(std::move(storage)) {}

    /// Encodes the float matrix `w` [out x in]. Ternary encodings quantize absmean with
    /// `scales` per_tensor or per_row; float encodings ignore it.
    [[nodiscard]] static PackedLinear encode(TensorView<const float> w, ProjectionEncoding encoding,
                                             Granularity scales = Granularity::per_tensor) {
        BITDISTILL_REQUIRE(scales != Granularity::per_token, "PackedLinear::encode: weights take per_tensor ",
                           "or per_row scales, not per_token");
        BITDISTILL_REQUIRE_AS(shape_error, w.shape().rank() == 2 && w.numel() > 0,
                              "PackedLinear::encode: w must be a non-empty [out x in] matrix, got ",
                              w.shape().to_string());
        switch (encoding) {
            case ProjectionEncoding::fp32: {
                Tensor<float> copy(w.shape());
                std::copy(w.data(), w.data() + w.numel(), copy.data());
                return PackedLinear(std::move(copy));
            }
            case ProjectionEncoding::bf16: {
                Tensor<BFloat16> rounded(w.shape());
                to_bfloat16_into(w, rounded.view());
                return PackedLinear(std::move(rounded));
            }
            case ProjectionEncoding::ternary2:
                if (scales == Granularity::per_row) return PackedLinear(quantize_ternary<Ternary2RowWeights::encoding>(w));
                return PackedLinear(quantize_ternary<Ternary2Weights::encoding>(w));
            case ProjectionEncoding::ternary1_6:
                if (scales == Granularity::per_row) return PackedLinear(quantize_ternary<Ternary1_6RowWeights::encoding>(w));
                return PackedLinear(quantize_ternary<Ternary1_6Weights::encoding>(w));
        }
        throw std::invalid_argument("PackedLinear::encode: unknown encoding");
    }

    [[nodiscard]] ProjectionEncoding encoding() const noexcept {
        const std::size_t index = storage_.index();
        return static_cast<ProjectionEncoding>(index < 4 ? index : index - 2);
    }
    /// Where the ternary scales apply: per_row for the per-row alternatives, per_tensor
    /// otherwise (float encodings included).
    [[nodiscard]] Granularity scale_granularity() const noexcept {
        return storage_.index() >= 4 ? Granularity::per_row : Granularity::per_tensor;
    }
    /// True for a default-constructed projection (no weights).
    [[nodiscard]] bool empty() const {
        return std::visit(
            [](const auto& w) {
                using W = std::decay_t<decltype(w)>;
                if constexpr (std::is_same_v<W, Tensor<float>> || std::is_same_v<W, Tensor<BFloat16>>)
                    return w.shape().rank() == 0 || w.numel() == 0;
                else
                    return w.rows() == 0 || w.cols() == 0;
            },
            storage_);
    }
    /// Output features (0 when empty).
    [[nodiscard]] std::int64_t rows() const {
        if (empty()) return 0;
        return std::visit([](const auto& w) -> std::int64_t { return w.rows(); }, storage_);
    }
    /// Input features (0 when empty).
    [[nodiscard]] std::int64_t cols() const {
        if (empty()) return 0;
        return std::visit([](const auto& w) -> std::int64_t { return w.cols(); }, storage_);
    }
    [[nodiscard]] const Storage& storage() const noexcept { return storage_; }

    /// Bytes the weights occupy in memory: elements, or packed codes plus scales.
    [[nodiscard]] std::size_t resident_bytes() const {
        if (empty()) return 0;
        return std::visit(
            [](const auto& w) -> std::size_t {
                using W = std::decay_t<decltype(w)>;
                if constexpr (std::is_same_v<W, Tensor<float>>)
                    return static_cast<std::size_t>(w.numel()) * sizeof(float);
                else if constexpr (std::is_same_v<W, Tensor<BFloat16>>)
                    return static_cast<std::size_t>(w.numel()) * sizeof(BFloat16);
                else
                    return w.storage_bytes();
            },
            storage_);
    }

    /// y = x W^T. Shape contract: x [tokens x in] prepared for encoding(), y [tokens x out].
    void apply(const ProjectionInput& x, TensorView<float> y) const {
        BITDISTILL_REQUIRE(x.encoding() == encoding(), "PackedLinear::apply: input prepared for ",
                           encoding_name(x.encoding()), " but the weights are ",
                           encoding_name(encoding()));
        switch (encoding()) {
            case ProjectionEncoding::fp32:
                matmul_f32_into(x.float_view(), std::get<Tensor<float>>(storage_).view(), y);
                return;
            case ProjectionEncoding::bf16:
                matmul_bf16_into(x.bf16_view(), std::get<Tensor<BFloat16>>(storage_).view(), y);
                return;
            case ProjectionEncoding::ternary2:
            case ProjectionEncoding::ternary1_6:
                std::visit(
                    [&](const auto& w) {
                        using W = std::decay_t<decltype(w)>;
                        if constexpr (is_qtensor_v<W>) matmul_into(w, x.int8(), y);
                    },
                    storage_);
                return;
        }
    }

private:
    Storage storage_;
};

}  // namespace bitdistill
