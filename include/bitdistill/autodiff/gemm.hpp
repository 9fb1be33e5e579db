// Float matrix products for the autodiff ops: row-major C = alpha * op(A) op(B) (+ C).
//
// On CPUs where the active instruction set is avx512vnni (see core/isa.hpp) the products
// run on the AVX-512 kernel of gemm_avx512.hpp, elsewhere on Eigen's cache-blocked GEMM
// kernel. Eigen's expression API allocates its packing buffers on every product, so this
// header calls Eigen's kernel with packing buffers that each thread keeps between calls.
// With either kernel, a product allocates nothing after the first one of the largest
// shape. Threads come from bitdistill::parallel_for, which splits the rows of C; inside an
// enclosing parallel region the product runs serially.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <Eigen/Core>

#include "bitdistill/autodiff/gemm_avx512.hpp"
#include "bitdistill/core/aligned.hpp"
#include "bitdistill/core/error.hpp"
#include "bitdistill/core/isa.hpp"
#include "bitdistill/core/parallel.hpp"

#if EIGEN_VERSION_AT_LEAST(3, 3, 90)
#define BITDISTILL_EIGEN_LOW_LEVEL_GEMM 1
#else
#define BITDISTILL_EIGEN_LOW_LEVEL_GEMM 0
#endif

namespace bitdistill::autodiff {

/// Whether an operand of gemm is used as stored or transposed.
enum class Trans { no, yes };

namespace detail {

#if BITDISTILL_EIGEN_LOW_LEVEL_GEMM
/// Eigen's blocking description backed by packing buffers that survive between products.
class PersistentBlocking : public Eigen::internal::level3_blocking<float, float> {
public:
    /// Sets the block sizes for a column-major product [rows x depth] * [depth x cols] and
    /// grows the packing buffers to fit them.
    void prepare(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth) {
        m_mc = rows;
        m_nc = cols;
        m_kc = depth;
        Eigen::internal::computeProductBlockingSizes<float, float, 1>(m_kc, m_mc, m_nc,
                                                                    Eigen::Index{1});
        // Eigen's packing routines read whole SIMD panels; one panel of slack is enough.
        const std::size_t slack = 64;
        const auto size_a = static_cast<std::size_t>(m_mc * m_kc) + slack;
        const auto size_b = static_cast<std::size_t>(m_kc * m_nc) + slack;
        if (block_a_.size() < size_a) block_a_ = AlignedBuffer<float>(size_a);
        if (block_b_.size() < size_b) block_b_ = AlignedBuffer<float>(size_b);
        m_blockA = block_a_.data();
        m_blockB = block_b_.data();
    }

private:
    AlignedBuffer<float> block_a_;
    AlignedBuffer<float> block_b_;
};

/// Packing buffers of the calling thread (OpenMP keeps its worker threads alive, so these
/// persist between steps).
inline PersistentBlocking& thread_blocking() {
    thread_local PersistentBlocking blocking;
    return blocking;
}

/// Column-major res[rows x cols] += alpha * lhs[rows x depth] * rhs[depth x cols], with
/// the storage order of each operand chosen at compile time.
template <int LhsOrder, int RhsOrder>
void colmajor_gemm(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth, const float* lhs,
                   Eigen::Index lhs_stride, const float* rhs, Eigen::Index rhs_stride, float* res,
                   Eigen::Index res_stride, float alpha) {
    PersistentBlocking& blocking = thread_blocking();
    blocking.prepare(rows, cols, depth);
    Eigen::internal::general_matrix_matrix_product<Eigen::Index, float, LhsOrder, false, float,
                                                   RhsOrder, false, Eigen::ColMajor, 1>::
        run(rows, cols, depth, lhs, lhs_stride, rhs, rhs_stride, res, 1, res_stride, alpha,
            blocking, nullptr);
}
#endif

/// Serial row-major product C (+)= alpha * op(A) op(B) on Eigen's kernel; see gemm.
inline void gemm_serial_eigen(Trans trans_a, Trans trans_b, std::int64_t m, std::int64_t n,
                              std::int64_t k, float alpha, const float* a, std::int64_t lda,
                              const float* b, std::int64_t ldb, bool accumulate, float* c,
                              std::int64_t ldc) {
    if (!accumulate)
        for (std::int64_t i = 0; i < m; ++i)
            std::memset(c + i * ldc, 0, static_cast<std::size_t>(n) * sizeof(float));
#if BITDISTILL_EIGEN_LOW_LEVEL_GEMM
    // Row-major C [m x n] is column-major C^T [n x m] = op(B)^T [n x k] * op(A)^T [k x m].
    // op(B)^T is B read column-major (no transpose) or row-major (transpose); op(A)^T
    // likewise.
    constexpr int col = Eigen::ColMajor;
    constexpr int row = Eigen::RowMajor;
    if (trans_b == Trans::no && trans_a == Trans::no)
        colmajor_gemm<col, col>(n, m, k, b, ldb, a, lda, c, ldc, alpha);
    else if (trans_b == Trans::no && trans_a == Trans::yes)
        colmajor_gemm<col, row>(n, m, k, b, ldb, a, lda, c, ldc, alpha);
    else if (trans_b == Trans::yes && trans_a == Trans::no)
        colmajor_gemm<row, col>(n, m, k, b, ldb, a, lda, c, ldc, alpha);
    else
        colmajor_gemm<row, row>(n, m, k, b, ldb, a, lda, c, ldc, alpha);
#else
    // NOTE: Eigen older than 3.4 uses the expression API, which allocates packing buffers
    // on every product.
    using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using ConstMap = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;
    Eigen::Map<RowMatrix, 0, Eigen::OuterStride<>> cm(c, m, n, Eigen::OuterStride<>(ldc));
    ConstMap am(a, trans_a == Trans::no ? m : k, trans_a == Trans::no ? k : m, Eigen::OuterStride<>(lda));
    ConstMap bm(b, trans_b == Trans::no ? k : n, trans_b == Trans::no ? n : k, Eigen::OuterStride<>(ldb));
    if (trans_a == Trans::no && trans_b == Trans::no) cm.noalias() += alpha * am * bm;
    else if (trans_a == Trans::no) cm.noalias() += alpha * am * bm.transpose();
    else if (trans_b == Trans::no) cm.noalias() += alpha * am.transpose() * bm;
    else cm.noalias() += alpha * am.transpose() * bm.transpose();
#endif
}

/// Serial row-major product C (+)= alpha * op(A) op(B) on the best kernel available.
inline void gemm_serial(Trans trans_a, Trans trans_b, std::int64_t m, std::int64_t n,
                        std::int64_t k, float alpha, const float* a, std::int64_t lda,
                        const float* b, std::int64_t ldb, bool accumulate, float* c,
                        std::int64_t ldc) {
#if BITDISTILL_GEMM_AVX512
    if (active_isa() == Isa::avx512vnni) {
        gemm_avx512(trans_a == Trans::yes, trans_b == Trans::yes, m, n, k, alpha, a, lda, b, ldb,
                    accumulate, c, ldc);
        return;
    }
#endif
    gemm_serial_eigen(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
}

inline bool inside_parallel_region() {
#if defined(_OPENMP)
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

}  // namespace detail

/// Row-major product C = alpha * op(A) * op(B), or C += alpha * op(A) * op(B) when
/// `accumulate` is true.
///
/// Shapes: op(A) [m x k], op(B) [k x n], C [m x n]. A is stored [m x k] (Trans::no) or
/// [k x m] (Trans::yes) with row stride lda. B is stored [k x n] or [n x k] with row
/// stride ldb, and C has row stride ldc. C must not overlap A or B. Rows of C are split
/// over num_threads() threads unless the call is already inside a parallel region.
inline void gemm(Trans trans_a, Trans trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                 float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                 bool accumulate, float* c, std::int64_t ldc) {
    BITDISTILL_ASSERT(m >= 0 && n >= 0 && k >= 0);
    if (m == 0 || n == 0) return;
    if (k == 0) {
        if (!accumulate)
            for (std::int64_t i = 0; i < m; ++i)
                std::memset(c + i * ldc, 0, static_cast<std::size_t>(n) * sizeof(float));
        return;
    }

    // Split only products big enough to pay for a fork (about 2 MFLOP per thread).
    const std::int64_t flops = 2 * m * n * k;
    const int threads = detail::inside_parallel_region()
                            ? 1
                            : static_cast<int>(std::min<std::int64_t>(
                                  num_threads(), std::max<std::int64_t>(1, flops / 2'000'000)));
    if (threads <= 1 || m < 32) {
        detail::gemm_serial(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
        return;
    }
    // Row chunks are multiples of 16 so that every thread gets whole SIMD panels.
    const std::int64_t chunk = (m + threads - 1) / threads;
    const std::int64_t grain = (chunk + 15) / 16 * 16;
    parallel_for(m, grain, [&](std::int64_t first, std::int64_t last) {
        const float* a_rows = trans_a == Trans::no ? a + first * lda : a + first;
        detail::gemm_serial(trans_a, trans_b, last - first, n, k, alpha, a_rows, lda, b, ldb,
                            accumulate, c + first * ldc, ldc);
    });
}

}  // namespace bitdistill::autodiff
