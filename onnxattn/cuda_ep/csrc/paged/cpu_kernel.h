#pragma once
// CPU kernel of PagedAttention: the GroupQueryAttention token preparation writing into the blocks, then
// the shared attention core reading K/V from the blocks in place (key tiles cut at block boundaries).
#include "common/half.h"
#include "common/parallel.h"
#include "paged/params.h"

namespace onnxattn::paged {

// Throws InputError (before touching memory) for out-of-range index inputs.
template <typename T>
void run_cpu(const Params& params, const Tensors<T>& tensors, const ParallelFor& parallel_for);

}  // namespace onnxattn::paged
