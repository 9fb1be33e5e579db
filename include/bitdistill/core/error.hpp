// Error types and the two runtime assertion levels.
//
// Caller preconditions (BITDISTILL_REQUIRE) are always on and throw, because a wrong
// shape or a bad argument at a public boundary is the caller's bug and must name the
// values involved. Internal invariants (BITDISTILL_ASSERT) abort with file:line and are
// compiled out under NDEBUG unless BITDISTILL_ALWAYS_ASSERT is defined.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

namespace bitdistill {

/// Raised when operand shapes do not fit together; the message names both shapes.
struct shape_error : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

/// Raised when a file cannot be read or written or its content is malformed; the message
/// names the file and, where it applies, the line or byte offset.
struct io_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// Raised when a NaN or Inf appears in a loss or gradient; the message names the step,
/// the tensor and the value.
struct numeric_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace detail {

/// Concatenates the streamable arguments into one string.
template <class... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}

[[noreturn]] inline void assertion_failed(const char* condition, const char* file, int line) {
    std::fprintf(stderr, "bitdistill: internal invariant failed: %s at %s:%d\n", condition, file,
                 line);
    std::abort();
}

}  // namespace detail
}  // namespace bitdistill

/// Throws `Exception` with the concatenated message parts when `condition` is false.
#define BITDISTILL_REQUIRE_AS(Exception, condition, ...)                                       \
    do {                                                                                       \
        if (!(condition)) throw Exception(::bitdistill::detail::concat(__VA_ARGS__));         \
    } while (false)

/// Caller precondition: throws std::invalid_argument with the message parts.
#define BITDISTILL_REQUIRE(condition, ...) \
    BITDISTILL_REQUIRE_AS(std::invalid_argument, condition, __VA_ARGS__)

#if defined(NDEBUG) && !defined(BITDISTILL_ALWAYS_ASSERT)
#define BITDISTILL_ASSERT(condition) ((void)0)
#else
/// Internal invariant: aborts with the condition, file and line.
#define BITDISTILL_ASSERT(condition)                                                        \
    ((condition) ? (void)0                                                                  \
                 : ::bitdistill::detail::assertion_failed(#condition, __FILE__, __LINE__))
#endif
