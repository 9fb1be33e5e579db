// Small pieces shared by the decoder layers: the batch layout, weight shape checks and
// parameter construction.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/nn/parameter.hpp"

namespace bitdistill::nn {

/// Layout of the rows of an activation [batch * seq_len x width]: `batch` sequences of
/// `seq_len` tokens one after another. The optional padding mask has batch * seq_len bytes,
/// 1 for a real token and 0 for padding. Padded tokens are never
/// attended to as keys. Positions for RoPE count from 0 at the start of every sequence,
/// so pad on the right.
struct BatchLayout {
    std::int64_t batch = 0;
    std::int64_t seq_len = 0;
    std::span<const std::uint8_t> mask;

    [[nodiscard]] std::int64_t tokens() const noexcept { return batch * seq_len; }
};

namespace detail {

/// Throws shape_error naming `name` unless `tensor` has exactly `expected` shape.
inline void require_weight_shape(const Tensor<float>& tensor, const Shape& expected,
                                 const std::string& name) {
    BITDISTILL_REQUIRE_AS(shape_error, tensor.shape() == expected, "weight ", name, " has shape ",
                          tensor.shape().to_string(), ", expected ", expected.to_string());
}

/// A copy of `tensor`, which must have shape `expected`.
inline Tensor<float> checked_tensor(const std::string& name, const Tensor<float>& tensor,
                                    const Shape& expected) {
    require_weight_shape(tensor, expected, name);
    return tensor;
}

/// A gain parameter: `tensor` when `enabled` (it must then have `width` elements), empty
/// otherwise. A missing gain of an enabled norm is an error.
inline Parameter optional_gain(const std::string& name, const Tensor<float>& tensor, bool enabled,
                               std::int64_t width) {
    if (!enabled) return Parameter();
    return Parameter(name, checked_tensor(name, tensor, Shape{width}));
}

/// Returns a gain of ones with `width` elements, so that a freshly inserted norm (SubLN)
/// only rescales by the RMS.
inline Parameter unit_gain(const std::string& name, std::int64_t width) {
    return Parameter(name, Tensor<float>(Shape{width}, 1.0f));
}

/// `parameter`'s value, or an empty tensor for an absent parameter.
inline Tensor<float> exported(const Parameter& parameter) { return parameter.value; }

}  // namespace detail

}  // namespace bitdistill::nn
