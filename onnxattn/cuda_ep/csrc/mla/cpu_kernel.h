#pragma once
// CPU kernel of MultiHeadLatentAttention: the new tokens into the latent caches (RoPE of the rope keys),
// then attention in the absorbed or the expanded formulation (mla/params.h: choose_path), both on the
// shared flash-attention core.
#include "common/half.h"
#include "common/parallel.h"
#include "mla/params.h"

namespace onnxattn::mla {

// `present_latent`/`present_k_rope` in `tensors` must be set (the adapter allocates scratch when the node
// does not request them). Throws InputError for out-of-range past_lengths. Returns the path it took.
template <typename T>
Path run_cpu(const Params& params, const Tensors<T>& tensors, const ParallelFor& parallel_for);

}  // namespace onnxattn::mla
