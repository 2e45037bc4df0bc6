#pragma once
// ScaledDotProductAttention on CUDA, part 2 of 2: running a plan. Knows nothing of onnxruntime and needs
// no CUDA headers (streams are passed as void*), so the adapter and the test entry points stay plain C++.
// Usage: plan = plan_for(params, tensors, device_info(dev)); allocate plan.scratch_bytes on the device;
// run(params, tensors, plan, stream, scratch, bytes). run() only enqueues work: no host synchronisation,
// no allocation. Fused ops pass strided views in Params, per-batch query offsets / valid lengths (device
// pointers) in Tensors, and optionally a QueryPrep that the kernels apply to Q as they load it; paged K/V
// (block table on the device) in either form; ragged query batches through ragged_plan_for / run_ragged.
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

// A pointer the kernels' 16-byte copies can use.
inline bool is_aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Every row of Q, K, V and Y starts on a 16-byte boundary (what the mma kernels' 16-byte copies need):
// the base pointers and all strides, in bytes, are multiples of 16.
template <typename T>
bool aligned16(const Params& p, const Tensors<T>& t) {
  auto strides_ok = [](const Strides& s) {
    return (s.batch * int64_t(sizeof(T))) % 16 == 0 && (s.head * int64_t(sizeof(T))) % 16 == 0 &&
           (s.seq * int64_t(sizeof(T))) % 16 == 0;
  };
  return is_aligned16(t.q) && is_aligned16(t.k) && is_aligned16(t.v) && is_aligned16(t.y) &&
         strides_ok(p.q_strides) && strides_ok(p.k_strides) && strides_ok(p.v_strides) && strides_ok(p.y_strides);
}

// The CUDA device's numbers, queried once per device and cached. Throws on a CUDA error.
DeviceInfo device_info(int device);
int current_device();

template <typename T>
void check_paged(const Params& p, const Tensors<T>& t, const char* op) {
  if ((t.block_table != nullptr) != (p.block_size > 0)) {
    fail(op, ": paged K/V needs both a block table and Params::block_size (got ",
         t.block_table != nullptr ? "a table" : "no table", ", block_size ", p.block_size, ")");
  }
  if (t.kv_starts != nullptr && t.block_table == nullptr) {
    fail(op, ": per-sequence pool starts (kv_starts) need paged K/V");
  }
  if (t.k_tail != nullptr || t.sparse_blocks != nullptr) {
    fail(op, ": the CUDA kernels take no split K rows or block-sparse lists (turn lists into block tables)");
  }
  if (t.y != nullptr && t.y_float != nullptr) fail(op, ": the CUDA kernels write y or y_float, not both");
}

// A uniform batch (every batch's Sq rows; paged K/V allowed).
template <typename T>
LaunchPlan plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device, const char* op = kOpName) {
  if (t.q_starts != nullptr || t.q_lengths != nullptr) fail(op, ": ragged query batches take ragged_plan_for");
  check_paged(p, t, op);
  Layout layout;
  layout.per_batch_lengths = t.query_offsets != nullptr || t.kv_lengths != nullptr;
  layout.op = op;
  layout.wgmma_ok = t.y_float == nullptr && t.kv_starts == nullptr;  // callers of plan_for pass no QueryPrep
  return make_plan(p, dtype_of<T>(), device, request_from_env(op), aligned16(p, t), layout);
}

// A ragged batch of `tokens` packed query rows: t.q_starts, q_lengths, query_offsets and kv_lengths are
// all given (device memory).
template <typename T>
RaggedPlan ragged_plan_for(const Params& p, const Tensors<T>& t, const DeviceInfo& device, int64_t tokens,
                           const char* op = kOpName) {
  if (t.q_starts == nullptr || t.q_lengths == nullptr || t.query_offsets == nullptr || t.kv_lengths == nullptr) {
    fail(op, ": a ragged query batch needs per-sequence query starts, query counts, query offsets and lengths");
  }
  check_paged(p, t, op);
  return make_ragged_plan(p, dtype_of<T>(), device, request_from_env(op), aligned16(p, t), tokens, op);
}

// Enqueues the plan's kernels on `stream` (a cudaStream_t). `scratch` must hold plan.scratch_bytes
// device bytes, aligned to 256. `prep` (optional) is applied to every Q row as it is loaded; its pointers
// and t.query_offsets / t.kv_lengths are device memory, read only by the kernels. Throws
// std::runtime_error on a launch error.
template <typename T>
void run(const Params& p, const Tensors<T>& t, const LaunchPlan& plan, void* stream, void* scratch, size_t scratch_bytes,
         const QueryPrep<T>& prep = {});

// The ragged counterpart: the schedule kernel, then each class's launch (and combine). The query
// starts and counts are read on the device only, by every kernel through the same sanitising rule: a
// sequence whose rows would leave [0, plan.tokens) or exceed p.q_len has no rows (nothing is read or
// written for it). Sequences must not share rows (the callers' layout pass guarantees it). A negative
// kv_lengths entry skips the sequence, as in run(). QueryPrep's position_ids are [T] (packed rows).
template <typename T>
void run_ragged(const Params& p, const Tensors<T>& t, const RaggedPlan& plan, void* stream, void* scratch,
                size_t scratch_bytes, const QueryPrep<T>& prep = {});

}  // namespace onnxattn::sdpa::cuda
