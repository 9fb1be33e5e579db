// Element encodings. An encoding is a tag type that names how the elements of an encoded
// tensor are stored and at which granularity their float scales apply. The pair of
// encodings of a product selects its kernel at compile time (see expr/).
#pragma once

#include <string_view>
#include <type_traits>

namespace bitdistill {

/// Scope of a float scale: the whole tensor, one output row of a weight matrix, or one
/// token (row) of an activation matrix.
enum class Granularity { per_tensor, per_row, per_token };

/// Plain 32-bit floats, no scale.
struct Float32 {
    static constexpr std::string_view name = "Float32";
};

/// Signed integers of `A` significant bits (2 <= A <= 8) stored one per byte, with a float
/// scale at granularity `G`. Int8<8> is the absmax per-token activation format.
template <int A = 8, Granularity G = Granularity::per_token>
struct Int8 {
    static_assert(A >= 2 && A <= 8, "Int8<A>: A is the number of bits used and must be in [2, 8]");
    static constexpr int bits = A;
    static constexpr Granularity granularity = G;
    static constexpr int max_value = (1 << (A - 1)) - 1;
    static constexpr int min_value = -(1 << (A - 1));
    static constexpr std::string_view name = "Int8";
};

/// Ternary weights {-1, 0, +1} in `W`-bit storage with a float scale at granularity `G`.
/// Only W = 2 exists: each weight is stored as the code w + 1 in {0, 1, 2}, four a byte.
template <int W = 2, Granularity G = Granularity::per_tensor>
struct Ternary {
    static_assert(W == 2, "Ternary<W>: only 2-bit storage (W = 2) exists; use Ternary1_6 for "
                          "five trits a byte");
    static constexpr int storage_bits = W;
    static constexpr Granularity granularity = G;
    static constexpr std::string_view name = "Ternary";
};

/// Ternary weights packed five trits a byte (3^5 = 243 <= 256): 1.6 bits a weight.
template <Granularity G = Granularity::per_tensor>
struct Ternary1_6 {
    static constexpr Granularity granularity = G;
    static constexpr std::string_view name = "Ternary1_6";
};

template <class T>
struct is_int8_encoding : std::false_type {};
template <int A, Granularity G>
struct is_int8_encoding<Int8<A, G>> : std::true_type {};

template <class T>
struct is_ternary_encoding : std::false_type {};
template <int W, Granularity G>
struct is_ternary_encoding<Ternary<W, G>> : std::true_type {};
template <Granularity G>
struct is_ternary_encoding<Ternary1_6<G>> : std::true_type {};

template <class T>
inline constexpr bool is_int8_encoding_v = is_int8_encoding<T>::value;
template <class T>
inline constexpr bool is_ternary_encoding_v = is_ternary_encoding<T>::value;

}  // namespace bitdistill
