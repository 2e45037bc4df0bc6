#pragma once
// ScaledDotProductAttention on CUDA, part 2 of 2: running a plan. Knows nothing of onnxruntime and needs
// no CUDA headers (streams are passed as void*), so the adapter and the test entry points stay plain C++.
// Usage: plan = plan_for(params, tensors, device_info(dev)); allocate plan.scratch_bytes on the device;
// run(params, tensors, plan, stream, scratch, bytes). run() only enqueues work: no host synchronisation,
// no allocation. Fused ops pass strided views in Params, per-batch query offsets / valid lengths (device
// pointers) in Tensors, and optionally a QueryPrep that the kernels apply to Q as they load it.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/errors.h"
#include "common/half.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/cuda_query_prep.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa::cuda {

template <typename T>
constexpr DType dtype_of() {
  if constexpr (sizeof(T) == 4) return DType::kFloat32;
  else if constexpr (sizeof(T) == 2 && std::is_same_v<T, Float16>) return DType::kFloat16;
  else return DType::kBFloat16;
}

// Every row of Q, K, V and Y starts on a 16-byte boundary (what the mma kernels' 16-byte copies need):
// the base pointers and all strides, in bytes, are multiples of 16.
template <typename T>
bool aligned16(const Params& p, const Tensors<T>& t) {
  auto ok = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; };
  auto strides_ok = [](const Strides& s) {
    return (s.batch * int64_t(sizeof(T))) % 16 == 0 && (s.head * int64_t(sizeof(T))) % 16 == 0 &&
           (s.seq * int64_t(sizeof(T))) % 16 == 0;
  };
  return ok(t.q) && ok(t.k) && ok(t.v) && ok(t.y) && strides_ok(p.q_strides) && strides_ok(p.k_strides) &&
         strides_ok(p.v_strides) && strides_ok(p.y_strides);
}

// The CUDA device's numbers, queried once per device and cached. Throws on a CUDA error.
DeviceInfo device_info(int device);
int current_device();

template <typename T>
LaunchPlan plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device, const char* op = kOpName) {
  if (t.q_starts != nullptr || t.q_lengths != nullptr || t.block_table != nullptr) {
    fail(op, ": the CUDA kernels do not support ragged query batches or paged K/V yet");
  }
  Layout layout;
  layout.per_batch_lengths = t.query_offsets != nullptr || t.kv_lengths != nullptr;
  layout.op = op;
  return make_plan(p, dtype_of<T>(), device, request_from_env(), aligned16(p, t), layout);
}

// Enqueues the plan's kernels on `stream` (a cudaStream_t). `scratch` must hold plan.scratch_bytes
// device bytes, aligned to 256. `prep` (optional) is applied to every Q row as it is loaded; its pointers
// and t.query_offsets / t.kv_lengths are device memory, read only by the kernels. Throws
// std::runtime_error on a launch error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const LaunchPlan& plan, void* stream, void* scratch, size_t scratch_bytes,
         const QueryPrep<T>& prep = {});

}  // namespace onnxattn::sdpa::cuda
