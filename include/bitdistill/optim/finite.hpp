// NaN/Inf detection for losses and gradients, so that a diverging run stops at the first
// bad step with the tensor and the value instead of training on garbage.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/optim/adamw.hpp"

namespace bitdistill {

namespace detail {

/// True when the float is NaN or +-Inf, that is when all exponent bits are set. A bit
/// test keeps the scan vectorisable and still works under -ffast-math.
inline bool is_non_finite(float value) noexcept {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(bits));
    return (bits & 0x7f800000u) == 0x7f800000u;
}

/// Index of the first NaN or Inf among `count` floats, or -1 when all are finite.
inline std::int64_t first_non_finite(const float* data, std::int64_t count) noexcept {
    // A branch-free OR over the whole tensor first; the search runs only on failure.
    bool any_bad = false;
    for (std::int64_t k = 0; k < count; ++k) any_bad |= is_non_finite(data[k]);
    if (!any_bad) return -1;
    for (std::int64_t k = 0; k < count; ++k)
        if (is_non_finite(data[k])) return k;
    return -1;
}

[[noreturn]] inline void throw_non_finite_element(std::int64_t step, std::string_view name,
                                          std::string_view suffix, TensorView<const float> values,
                                          std::int64_t index) {
    const std::int64_t cols = values.cols() > 0 ? values.cols() : 1;
    throw numeric_error(concat("step ", step, ": tensor '", name, suffix, "' ", values.shape().to_string(),
                               " contains ", values[index], " at index ", index, " (row ", index / cols,
                               ", column ", index % cols,
                               "); lower the learning rate, clip the gradients or check this step's inputs"));
}

}  // namespace detail

/// Throws numeric_error unless every element of `values` is finite. The message names
/// the step, the tensor, the flat index (with the row and column of the 2-D view) and the
/// value of the first NaN or Inf. An empty view passes.
inline void check_finite(std::int64_t step, std::string_view name, TensorView<const float> values) {
    if (values.data() == nullptr) return;
    const std::int64_t index = detail::first_non_finite(values.data(), values.numel());
    if (index >= 0) detail::throw_non_finite_element(step, name, "", values, index);
}

/// Throws numeric_error naming the step, `name` and the value unless `value` is finite.
inline void check_finite(std::int64_t step, std::string_view name, float value) {
    if (!detail::is_non_finite(value)) return;
    throw numeric_error(detail::concat("step ", step, ": ", name, " is ", value,
                                       "; lower the learning rate or check this step's inputs"));
}

/// Checks the loss, then the gradient of every parameter, and throws numeric_error at the
/// first NaN or Inf. A gradient is named "<parameter name>.grad" in the message.
/// Allocates nothing unless it throws.
inline void check_loss_and_gradients(std::int64_t step, float loss, std::span<const ParamRef> params) {
    check_finite(step, "loss", loss);
    for (const ParamRef& param : params) {
        if (param.grad.data() == nullptr) continue;
        const std::int64_t index = detail::first_non_finite(param.grad.data(), param.grad.numel());
        if (index >= 0) detail::throw_non_finite_element(step, param.name, ".grad", param.grad, index);
    }
}

}  // namespace bitdistill
