#pragma once
// CPU kernel of GroupQueryAttention: a pass over the new tokens (QK-norm, RoPE, cache write), then the
// shared flash-attention core over the cache.
#include "common/half.h"
#include "common/parallel.h"
#include "gqa/params.h"

namespace onnxattn::gqa {

// `present_key`/`present_value` in `tensors` must be set (the adapter allocates scratch when the node does
// not request them). Throws InputError for out-of-range past_lengths.
template <typename T>
void run_cpu(const Params& params, const Tensors<T>& tensors, const ParallelFor& parallel_for);

}  // namespace onnxattn::gqa
