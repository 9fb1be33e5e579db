// Instruction-set selection for the integer kernels.
//
// Every SIMD kernel is compiled into the header with a GCC/Clang `target` attribute, so
// no -march flag is needed and one binary carries all paths. The path is chosen at run
// time: the best one the CPU supports, unless the environment variable BITDISTILL_ISA
// (scalar, avx2 or avx512vnni) or force_isa() selects a lower one. Tests force each path
// the machine can run this way. On compilers or CPUs without x86 SIMD only the scalar
// path exists.
#pragma once

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "bitdistill/core/error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define BITDISTILL_X86 1
#else
#define BITDISTILL_X86 0
#endif

namespace bitdistill {

/// Kernel paths, ordered from the most portable to the fastest.
enum class Isa { scalar = 0, avx2 = 1, avx512vnni = 2 };

[[nodiscard]] inline std::string_view isa_name(Isa isa) {
    switch (isa) {
        case Isa::scalar: return "scalar";
        case Isa::avx2: return "avx2";
        case Isa::avx512vnni: return "avx512vnni";
    }
    return "unknown";
}

/// Parses "scalar", "avx2" or "avx512vnni"; throws std::invalid_argument otherwise.
[[nodiscard]] inline Isa parse_isa(std::string_view text) {
    if (text == "scalar") return Isa::scalar;
    if (text == "avx2") return Isa::avx2;
    if (text == "avx512vnni") return Isa::avx512vnni;
    throw std::invalid_argument("unknown instruction set '" + std::string(text) +
                                "'; expected scalar, avx2 or avx512vnni");
}

/// The fastest path this CPU supports.
[[nodiscard]] inline Isa detected_isa() {
#if BITDISTILL_X86
    static const Isa detected = [] {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
            return Isa::avx512vnni;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
        return Isa::scalar;
    }();
    return detected;
#else
    return Isa::scalar;
#endif
}

namespace detail {
inline std::atomic<int>& active_isa_slot() {
    static std::atomic<int> slot = [] {
        Isa isa = detected_isa();
        if (const char* requested = std::getenv("BITDISTILL_ISA")) {
            Isa wanted = parse_isa(requested);
            BITDISTILL_REQUIRE(static_cast<int>(wanted) <= static_cast<int>(isa),
                               "BITDISTILL_ISA=", requested, " is not supported by this CPU (best: ",
                               isa_name(isa), ")");
            isa = wanted;
        }
        return static_cast<int>(isa);
    }();
    return slot;
}
}  // namespace detail

/// The path the kernels use now.
[[nodiscard]] inline Isa active_isa() {
    return static_cast<Isa>(detail::active_isa_slot().load(std::memory_order_relaxed));
}

/// Makes the kernels use `isa`; throws std::invalid_argument if this CPU cannot run it.
inline void force_isa(Isa isa) {
    BITDISTILL_REQUIRE(static_cast<int>(isa) <= static_cast<int>(detected_isa()),
                       "force_isa(", isa_name(isa), "): this CPU supports at most ",
                       isa_name(detected_isa()));
    detail::active_isa_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

/// True if this CPU can run `isa`.
[[nodiscard]] inline bool isa_supported(Isa isa) {
    return static_cast<int>(isa) <= static_cast<int>(detected_isa());
}

}  // namespace bitdistill
