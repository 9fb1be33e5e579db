// Rounding and finiteness helpers shared by the quantizers.
#pragma once

#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>

namespace bitdistill {

/// Rounds to the nearest integer, ties to even: std::nearbyint in the default rounding
/// mode, for |value| <= 2^22. The quantizers clamp before rounding, so their arguments stay
/// far inside that range. Adding 1.5 * 2^23 leaves no fraction bits, so the hardware's
/// round-to-nearest-even mode does the rounding, and subtracting it again restores the
/// magnitude. Unlike a call to nearbyintf, this vectorises on plain x86-64.
/// NOTE: -ffast-math may fold the two additions away and break the rounding.
[[nodiscard]] inline float round_half_even(float value) noexcept {
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
    constexpr float shifter = 12582912.0f;  // 1.5 * 2^23
    return (value + shifter) - shifter;
#else
    return std::nearbyint(value);
#endif
}

namespace detail {

/// Bit pattern of |value|. For finite values the unsigned order of these patterns is the
/// order of the magnitudes, and every NaN or infinity compares above every finite value.
[[nodiscard]] inline std::uint32_t magnitude_bits(float value) noexcept {
    return std::bit_cast<std::uint32_t>(value) & 0x7FFFFFFFu;
}

/// magnitude_bits of +infinity: a maximum at or above this means a NaN or an infinity.
inline constexpr std::uint32_t infinity_bits = 0x7F800000u;

}  // namespace detail
}  // namespace bitdistill
