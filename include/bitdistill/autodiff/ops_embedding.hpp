// Embedding lookup tape op: rows of a table selected by token ids.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

#include "bitdistill/autodiff/ops_basic.hpp"

namespace bitdistill::autodiff {

/// y[i] = table[ids[i]]. Shapes: table [vocab x dim], ids `count` values in [0, vocab),
/// y [count x dim].
inline void embedding_forward(const float* table, std::int64_t dim, const std::int32_t* ids,
                              std::int64_t count, float* y) {
    parallel_for(count, 64, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i)
            std::memcpy(y + i * dim, table + static_cast<std::int64_t>(ids[i]) * dim,
                        static_cast<std::size_t>(dim) * sizeof(float));
    });
}

/// dtable[ids[i]] += dy[i] for every i (a token repeated in the batch adds up). Serial,
/// because two rows of dy may target the same table row. dtable is in add mode.
inline void embedding_backward(const float* dy, std::int64_t dim, const std::int32_t* ids,
                               std::int64_t count, float* dtable) {
    for (std::int64_t i = 0; i < count; ++i) {
        float* row = dtable + static_cast<std::int64_t>(ids[i]) * dim;
        const float* g = dy + i * dim;
        for (std::int64_t j = 0; j < dim; ++j) row[j] += g[j];
    }
}

/// Looks up one table row per token id. The ids are copied, so the span may go away after
/// the call. Throws std::invalid_argument naming the first id outside [0, vocab).
/// Shapes: table [vocab x dim], ids N values; the result is [N x dim].
inline Var embedding(Tape& tape, Var table, std::span<const std::int32_t> ids) {
    const Shape table_shape = tape.shape(table);
    BITDISTILL_REQUIRE_AS(shape_error, table_shape.rank() == 2, "embedding: table must be 2-D, got ",
                          table_shape.to_string());
    const std::int64_t vocab = table_shape[0];
    const std::int64_t dim = table_shape[1];
    const auto count = static_cast<std::int64_t>(ids.size());
    for (std::int64_t i = 0; i < count; ++i)
        BITDISTILL_REQUIRE(ids[i] >= 0 && ids[i] < vocab, "embedding: token id ", ids[i],
                           " at position ", i, " is outside the vocabulary [0, ", vocab, ")");

    Var y = tape.record(Shape{count, dim}, [](Tape& t, std::int32_t self) {
        float* dtable = t.gradient_accumulator(t.node(self).inputs[0]);
        const Node& n = t.node(self);
        if (dtable == nullptr) return;
        embedding_backward(n.grad, n.integers[1], n.saved_ids.data(), n.integers[0], dtable);
    }, {table});
    tape.node(y).integers = {count, dim};
    std::int32_t* saved_ids = tape.saved_ids(y, count);
    if (count != 0) std::memcpy(saved_ids, ids.data(), static_cast<std::size_t>(count) * sizeof(std::int32_t));
    embedding_forward(tape.value(table).data(), dim, ids.data(), count, tape.value(y).data());
    return y;
}

}  // namespace bitdistill::autodiff
