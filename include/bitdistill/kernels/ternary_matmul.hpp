// Ternary weights x int8 activations: y [tokens x out] = x W^T with int32 accumulation and
// the float scales applied after (PyTorch nn.Linear convention: W is [out x in]).
//
// How the instruction set is chosen. Every path is compiled into this header: the scalar
// one as plain C++, the AVX2 and AVX-512 VNNI ones inside functions that carry a GCC/Clang
// `__attribute__((target(...)))`. So the library needs no -march flag, and one binary
// contains all paths. At run time each call reads active_isa() (core/isa.hpp): the best path the CPU
// supports, lowered by the environment variable BITDISTILL_ISA (scalar, avx2, avx512vnni)
// or by force_isa(). Tests force every path that isa_supported() reports and compare it
// with the *_ref twins of kernels/reference.hpp bit for bit. On non-x86 targets only the
// scalar path is compiled.
//
// One token (decode) runs the GEMV kernels, several tokens (prefill, training) the GEMM
// kernels. Work is split over row groups of 16 output rows on num_threads() threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "bitdistill/core/encoding.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"
#include "bitdistill/kernels/arch/avx2.hpp"
#include "bitdistill/kernels/arch/avx512vnni.hpp"
#include "bitdistill/kernels/arch/common.hpp"
#include "bitdistill/kernels/arch/scalar.hpp"
#include "bitdistill/kernels/reference.hpp"
#include "bitdistill/quant/packing.hpp"
#include "bitdistill/quant/qtensor.hpp"

namespace bitdistill {

namespace kernels::detail {

template <class WeightEnc>
[[nodiscard]] PackedTernaryView packed_view(const QTensor<WeightEnc>& w) noexcept {
    return {w.bytes().data(), w.rows(), w.groups(), w.chunks()};
}

template <int A, Granularity G>
[[nodiscard]] Int8RowsView int8_view(const QTensor<Int8<A, G>>& x) noexcept {
    return {x.codes().data(), x.row_sums().data(), x.rows(), x.stride()};
}

/// Runs the kernel of `WeightEnc` for row groups [first, last) on the path `Arch`.
template <class WeightEnc, class Arch>
void run_groups(const PackedTernaryView& w, const Int8RowsView& x, const MatmulOutput& out,
                std::int64_t first, std::int64_t last, Arch tag) {
    if constexpr (is_ternary1_6_encoding_v<WeightEnc>)
        ternary1_6_matmul_groups(w, x, out, first, last, tag);
    else
        ternary2_matmul_groups(w, x, out, first, last, tag);
}

/// Splits the row groups over the threads and runs the active path on each share.
template <class WeightEnc>
void run_ternary_matmul(const PackedTernaryView& w, const Int8RowsView& x,
                        const MatmulOutput& out, std::int64_t cols) {
    if (w.groups == 0 || x.tokens == 0) return;
    // About 2^18 multiply-adds a grain, so small products stay on one thread.
    const std::int64_t work_per_group = 16 * std::max<std::int64_t>(cols, 1) * x.tokens;
    const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 18) / work_per_group);
    const Isa isa = active_isa();
    parallel_for(w.groups, grain, [&](std::int64_t first, std::int64_t last) {
        switch (isa) {
#if BITDISTILL_X86
            case Isa::avx512vnni:
                run_groups<WeightEnc>(w, x, out, first, last, arch::avx512vnni{});
                return;
            case Isa::avx2:
                run_groups<WeightEnc>(w, x, out, first, last, arch::avx2{});
                return;
#endif
            case Isa::scalar:
            default:
                run_groups<WeightEnc>(w, x, out, first, last, arch::scalar{});
                return;
        }
    });
}

template <class WeightEnc, int A, Granularity Gx>
[[nodiscard]] MatmulOutput scaled_output(const QTensor<WeightEnc>& w,
                                         const QTensor<Int8<A, Gx>>& x, float* y) noexcept {
    MatmulOutput out;
    out.scaled = y;
    out.row_stride = w.rows();
    out.rows = w.rows();
    out.weight_scales = w.scales().data();
    out.weight_scale_per_row = WeightEnc::granularity != Granularity::per_tensor;
    out.token_scales = x.scales().data();
    out.token_scale_per_token = Gx != Granularity::per_tensor;
    return out;
}

}  // namespace kernels::detail

/// y[t][r] = sum_k x[t][k] * w[r][k], exact in int32.
/// Shapes: w [out x in], x [tokens x in], y [tokens x out] (any rank whose last axis is out).
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_int32_into(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                       TensorView<std::int32_t> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_int32_into", w, x, y);
    kernels::MatmulOutput out;
    out.raw = y.data();
    out.row_stride = w.rows();
    out.rows = w.rows();
    kernels::detail::run_ternary_matmul<WeightEnc>(kernels::detail::packed_view(w),
                                                   kernels::detail::int8_view(x), out, w.cols());
}

/// y[t][r] = (sx[t] * sw[r]) * float(sum_k x[t][k] * w[r][k]): the int32 dot product of
/// matmul_int32_into times the activation scale of token t and the weight scale of row r
/// (or the per-tensor scales). Shapes: w [out x in], x [tokens x in], y [tokens x out].
template <class WeightEnc, int A, Granularity Gx>
    requires is_ternary_encoding_v<WeightEnc>
void matmul_into(const QTensor<WeightEnc>& w, const QTensor<Int8<A, Gx>>& x,
                 TensorView<float> y) {
    kernels::detail::check_ternary_matmul_shapes("matmul_into", w, x, y);
    kernels::detail::run_ternary_matmul<WeightEnc>(kernels::detail::packed_view(w),
                                                   kernels::detail::int8_view(x),
                                                   kernels::detail::scaled_output(w, x, y.data()),
                                                   w.cols());
}

}  // namespace bitdistill
