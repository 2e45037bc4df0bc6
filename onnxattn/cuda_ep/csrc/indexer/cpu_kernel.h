#pragma once
#include "common/parallel.h"
#include "indexer/params.h"

namespace onnxattn::indexer {

// The CPU kernel: scores of a block of queries against a range of keys as one float32 matmul, summed over the
// heads as they leave it, then each query's top-k by a partial selection over its visible scores.
template <typename T>
void run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for);

}  // namespace onnxattn::indexer
