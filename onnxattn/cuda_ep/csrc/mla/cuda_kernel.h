#pragma once
// MultiHeadLatentAttention on CUDA, part 2 of 2: running a plan (mla/cuda_plan.h). Knows nothing of
// onnxruntime and needs no CUDA headers (streams are void*). run() only enqueues work: no host
// synchronisation, no allocation.
#include <cstddef>

#include "mla/cuda_plan.h"
#include "mla/params.h"

namespace onnxattn::mla::cuda {

// Enqueues the call on `stream` (a cudaStream_t). Every pointer in `t` is device memory; present_latent /
// present_k_rope are null when plan.present_in_scratch, and may equal past_latent / past_k_rope (updated in
// place: only the new tokens are written). `scratch` holds plan.scratch_bytes device bytes, 256-aligned.
// Out-of-range past_lengths entries are not reported (that would need a host synchronisation): such a
// sequence's caches are left untouched and its output rows are NaN. Throws std::runtime_error on a CUDA
// error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream, void* scratch, size_t scratch_bytes);

// For the C test entry (mla/cuda_capi.cc): plans for the current device and runs on `stream`. Without
// `scratch` (null) it takes its own (cudaMalloc) and synchronises; with it (at least the plan's bytes) it
// only enqueues, for benchmarks. Throws std::runtime_error / InputError.
template <typename T>
void run_for_test(const Params& p, const Tensors<T>& t, void* stream, void* scratch, size_t scratch_bytes);

// The plan run_for_test makes on the current device.
Plan plan_for_current_device(const Params& p, size_t element_bytes, bool present_outputs);

}  // namespace onnxattn::mla::cuda
