#pragma once
// ScaledDotProductAttention on CUDA, part 2 of 2: running a plan. Knows nothing of onnxruntime and needs
// no CUDA headers (streams are passed as void*), so the adapter and the test entry points stay plain C++.
// Usage: plan = plan_for(params, tensors, device_info(dev)); allocate plan.scratch_bytes on the device;
// run(params, tensors, plan, stream, scratch, bytes). run() only enqueues work: no host synchronisation,
// no allocation.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/half.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa::cuda {

template <typename T>
constexpr DType dtype_of() {
  if constexpr (sizeof(T) == 4) return DType::kFloat32;
  else if constexpr (sizeof(T) == 2 && std::is_same_v<T, Float16>) return DType::kFloat16;
  else return DType::kBFloat16;
}

// Q, K, V and Y start on 16-byte boundaries (what the mma kernels' 16-byte copies need).
template <typename T>
bool aligned16(const Tensors<T>& t) {
  auto ok = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  return ok(t.q) && ok(t.k) && ok(t.v) && ok(t.y);
}

// The CUDA device's numbers, queried once per device and cached. Throws on a CUDA error.
DeviceInfo device_info(int device);
int current_device();

template <typename T>
LaunchPlan plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device) {
  check_supported_layout(p, t.query_offsets != nullptr || t.kv_lengths != nullptr);
  return make_plan(p, dtype_of<T>(), device, request_from_env(), aligned16(t));
}

// Enqueues the plan's kernels on `stream` (a cudaStream_t). `scratch` must hold plan.scratch_bytes
// device bytes, aligned to 256. Throws std::runtime_error on a launch error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const LaunchPlan& plan, void* stream, void* scratch, size_t scratch_bytes);

}  // namespace onnxattn::sdpa::cuda
