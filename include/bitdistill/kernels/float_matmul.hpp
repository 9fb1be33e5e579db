// Float products through Eigen for the parts of a model that stay in float (embeddings,
// LM head, the float teacher): y [tokens x out] = x [tokens x in] W^T, W [out x in], the
// same convention as the ternary matmul_into.
//
// Eigen vectorises for the instruction set the including program is compiled for (SSE2
// without -march flags). One token splits the output rows over num_threads() threads; more
// tokens run Eigen's own GEMM with Eigen::setNbThreads(num_threads()).
#pragma once

#include <algorithm>
#include <cstdint>

// GCC 12 reports the `_mm512_undefined_*` placeholders inside Eigen's AVX-512 packet code as
// maybe-uninitialized when a program is compiled with -mavx512f (-march=native here).
// The warning is placed in Eigen's headers, so the pragma has to cover their inclusion.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <Eigen/Core>

#include "bitdistill/core/error.hpp"
#include "bitdistill/core/parallel.hpp"
#include "bitdistill/core/tensor.hpp"

namespace bitdistill {

/// y = x W^T in float. Shapes: w [out x in], x [tokens x in], y [tokens x out] (x and y may
/// have any rank whose last axis is in and out).
/// NOTE: Eigen::setNbThreads is process-wide, so two threads calling this at once with
/// different num_threads() values race on it (the results stay correct).
inline void matmul_into(TensorView<const float> w, TensorView<const float> x,
                        TensorView<float> y) {
    using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const std::int64_t out_features = w.rows();
    const std::int64_t in_features = w.cols();
    const std::int64_t tokens = x.rows();
    BITDISTILL_REQUIRE_AS(shape_error, x.cols() == in_features, "matmul_into: activations ",
                          x.shape().to_string(), " do not fit weights ", w.shape().to_string(),
                          "; their last axes must match");
    BITDISTILL_REQUIRE_AS(shape_error, y.rows() == tokens && y.cols() == out_features,
                          "matmul_into: output ", y.shape().to_string(), " should be [", tokens,
                          ", ", out_features, "] for activations ", x.shape().to_string(),
                          " and weights ", w.shape().to_string());
    if (tokens == 0 || out_features == 0) return;

    Eigen::Map<const RowMajor> weights(w.data(), out_features, in_features);
    Eigen::Map<const RowMajor> activations(x.data(), tokens, in_features);
    Eigen::Map<RowMajor> result(y.data(), tokens, out_features);
    if (tokens == 1) {
        // About 2^16 multiply-adds a grain, so small products stay on one thread.
        const std::int64_t work_per_row = std::max<std::int64_t>(in_features, 1);
        const std::int64_t grain =
            std::max<std::int64_t>(16, (std::int64_t{1} << 16) / work_per_row);
        parallel_for(out_features, grain, [&](std::int64_t first, std::int64_t last) {
            const auto count = static_cast<Eigen::Index>(last - first);
            result.row(0).segment(static_cast<Eigen::Index>(first), count).noalias() =
                activations.row(0) *
                weights.middleRows(static_cast<Eigen::Index>(first), count).transpose();
        });
        return;
    }
    Eigen::setNbThreads(num_threads());
    result.noalias() = activations * weights.transpose();
}

}  // namespace bitdistill

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
