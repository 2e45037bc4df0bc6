#pragma once
// LightningIndexer on CUDA: running a plan (indexer/cuda_plan.h). Knows nothing of onnxruntime and needs no CUDA
// headers (streams are void*). run() only enqueues work: no host synchronisation, no allocation.
#include <cstddef>

#include "indexer/cuda_plan.h"
#include "indexer/params.h"

namespace onnxattn::indexer::cuda {

// Enqueues the call on `stream` (a cudaStream_t) with `plan` = make_plan(p), which rejects what the kernel does not
// take. Every pointer in `t` is device memory; `scratch` holds plan.scratch_bytes device bytes. A past_lengths entry
// outside [0, T - S] is clamped into it (reporting it would need a host synchronisation). Throws std::runtime_error
// on a CUDA error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream, void* scratch, size_t scratch_bytes);

}  // namespace onnxattn::indexer::cuda
