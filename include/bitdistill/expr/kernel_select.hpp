// Which kernel computes a matrix product, decided at compile time from the encodings of the
// two operands. The left operand is the weights [out x in], the right one the activations
// [tokens x in], and the product is activations x weights^T.
//
//     left (weights)              right (activations)   kernel
//     Float32                     Float32               float GEMM (kernels/float_matmul.hpp)
//     Ternary<2, G>, Ternary1_6<G> Int8<A, G'>           ternary x int8 (kernels/ternary_matmul.hpp)
//
// Every other pair has no kernel. Asking for one instantiates no_matmul_kernel_for<Lhs, Rhs>,
// whose static_assert stops the compilation; the compiler prints that instantiation with
// both encodings as its template arguments. This is the only place that rejects a pair.
#pragma once

#include <type_traits>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/expr/simd.hpp"

namespace bitdistill::inline BITDISTILL_EXPR_ABI {
namespace expr {

/// The kernels a matrix product can run on.
enum class MatmulKernel { none, float_gemm, ternary_int8 };

}  // namespace expr

/// Both operands are plain floats.
template <class LhsEncoding, class RhsEncoding>
inline constexpr bool is_float_product =
    std::is_same_v<LhsEncoding, Float32> && std::is_same_v<RhsEncoding, Float32>;

/// Ternary weights (2-bit or 1.6-bit storage) times int8 activations.
template <class LhsEncoding, class RhsEncoding>
inline constexpr bool is_ternary_int8_product =
    is_ternary_encoding_v<LhsEncoding> && is_int8_encoding_v<RhsEncoding>;

/// True when some kernel multiplies weights in `LhsEncoding` by activations in `RhsEncoding`.
template <class LhsEncoding, class RhsEncoding>
inline constexpr bool has_matmul_kernel = is_float_product<LhsEncoding, RhsEncoding> ||
                                          is_ternary_int8_product<LhsEncoding, RhsEncoding>;

namespace expr {

template <class...>
inline constexpr bool always_false = false;

/// Instantiated only for a pair without a kernel, so that the compiler names both types.
template <class LhsEncoding, class RhsEncoding>
struct no_matmul_kernel_for {
    static_assert(always_false<LhsEncoding, RhsEncoding>,
                  "matmul: no kernel multiplies these two encodings. The template arguments "
                  "of no_matmul_kernel_for<LhsEncoding, RhsEncoding> in this instantiation "
                  "name the weight (left) and activation (right) encodings. Supported pairs: "
                  "Float32 x Float32, and Ternary or Ternary1_6 weights x Int8 activations "
                  "(quantize the activations with quantize_int8).");
};

/// The kernel for the pair; fails to compile, naming both encodings, if there is none.
template <class LhsEncoding, class RhsEncoding>
[[nodiscard]] consteval MatmulKernel select_matmul_kernel() {
    if constexpr (is_float_product<LhsEncoding, RhsEncoding>) {
        return MatmulKernel::float_gemm;
    } else if constexpr (is_ternary_int8_product<LhsEncoding, RhsEncoding>) {
        return MatmulKernel::ternary_int8;
    } else {
        (void)sizeof(no_matmul_kernel_for<LhsEncoding, RhsEncoding>);
        return MatmulKernel::none;
    }
}

}  // namespace expr
}  // namespace bitdistill::inline BITDISTILL_EXPR_ABI
