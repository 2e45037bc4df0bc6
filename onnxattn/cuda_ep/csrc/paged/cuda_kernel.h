#pragma once
// PagedAttention on CUDA, part 2 of 2: running a plan (paged/cuda_plan.h). Knows nothing of onnxruntime
// and needs no CUDA headers (streams are void*).
// Usage: plan = plan_for(params, tensors, device_info(dev)); allocate plan.scratch_bytes on the device;
// run(params, tensors, plan, stream, scratch, bytes). run() only enqueues work.
#include <cstddef>
#include <cstdint>

#include "paged/cuda_plan.h"
#include "paged/params.h"
#include "sdpa/cuda_kernel.h"

namespace onnxattn::paged::cuda {

template <typename T>
bool aligned16(const Tensors<T>& t) {
  const auto ok = sdpa::cuda::is_aligned16;
  // Pools in scratch are 256-aligned.
  return ok(t.query) && ok(t.output) && ok(t.key_cache_out) && ok(t.value_cache_out);
}

template <typename T>
Plan plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device) {
  const bool pool_outputs = t.key_cache_out != nullptr && t.value_cache_out != nullptr;
  return make_plan(p, sdpa::cuda::dtype_of<T>(), device, sdpa::cuda::request_from_env(kOpName), aligned16(t),
                   pool_outputs);
}

// Enqueues the call on `stream` (a cudaStream_t). Every pointer in `t` is device memory, the index inputs
// included (they are read by the kernels only); t.key_cache_out/value_cache_out are null when the plan
// keeps the pools in scratch, and may equal t.key_cache/value_cache (updated in place: only the new tokens
// are written). `scratch` holds plan.scratch_bytes device bytes, 256-aligned. Bad index inputs are not
// reported (see paged/cuda_plan.h: NaN rows, nothing written for the failing sequences). Throws
// std::runtime_error on a CUDA error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream, void* scratch, size_t scratch_bytes);

}  // namespace onnxattn::paged::cuda
