#pragma once
// GroupQueryAttention on CUDA, part 2 of 2: running a plan (gqa/cuda_plan.h). Knows nothing of
// onnxruntime and needs no CUDA headers (streams are void*).
// Usage: plan = plan_for(params, tensors, device_info(dev), present_outputs); allocate plan.scratch_bytes
// on the device; run(params, tensors, plan, stream, scratch, bytes). run() only enqueues work.
#include <cstddef>
#include <cstdint>

#include "gqa/cuda_plan.h"
#include "gqa/params.h"
#include "sdpa/cuda_kernel.h"

namespace onnxattn::gqa::cuda {

template <typename T>
bool aligned16(const Tensors<T>& t) {
  const auto ok = sdpa::cuda::is_aligned16;
  // Caches in scratch are 256-aligned.
  return ok(t.query) && ok(t.output) && ok(t.present_key) && ok(t.present_value);
}

// The new tokens' key and value (read by 16-byte chunks where the plan chooses the chunked new-token kernel).
template <typename T>
bool new_tokens_aligned16(const Tensors<T>& t) {
  return sdpa::cuda::is_aligned16(t.key) && sdpa::cuda::is_aligned16(t.value);
}

template <typename T>
Plan plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device) {
  const bool present_outputs = t.present_key != nullptr && t.present_value != nullptr;
  return make_plan(p, sdpa::cuda::dtype_of<T>(), device, sdpa::cuda::request_from_env(kOpName), aligned16(t),
                   present_outputs, new_tokens_aligned16(t));
}

// Enqueues the call on `stream` (a cudaStream_t). Every pointer in `t` is device memory;
// t.present_key/present_value are null when the plan keeps the caches in scratch, and may equal
// t.past_key/past_value (updated in place: only the new tokens are written). `scratch` holds
// plan.scratch_bytes device bytes, 256-aligned. Out-of-range past_lengths entries are not reported (that
// would need a host synchronisation): such a sequence's cache is left untouched and its output rows are
// NaN. Throws std::runtime_error on a CUDA error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream, void* scratch, size_t scratch_bytes);

}  // namespace onnxattn::gqa::cuda
