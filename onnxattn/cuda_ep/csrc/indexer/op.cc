// The CPU kernel of LightningIndexer for onnxruntime: the shared adapter (op_adapter.h) plus its Compute.
#include "indexer/op.h"

#include <algorithm>
#include <string>

#include "common/errors.h"
#include "indexer/cpu_kernel.h"
#include "indexer/cuda_plan.h"
#include "indexer/op_adapter.h"

namespace onnxattn::indexer {

template <typename T>
const OrtCustomOp* cpu_op() {
  using Kernel = ort::PreparedCpuKernel<Attributes, adapter::prepare<T>, run_cpu<T>>;
  return ort::custom_op<Kernel, T, adapter::Signature, ort::OnCpu>();
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::indexer

// For tests: the CUDA launch plan of a shape (built without CUDA too) on elements of `element_bytes` (4 or 2), with
// tensor cores allowed (1) or not (0), or as ONNXATTN_INDEXER_CUDA says (-1). `out` receives tiles_per_row, tiles,
// tiles_per_wave, key_tiles, width, score_smem, scratch_bytes, score_kernel (0: CUDA cores, 1: tensor cores) and
// mma_heads. Returns null, or the InputError message the CUDA kernel would give (make_plan's) with `out` untouched.
extern "C" __attribute__((visibility("default"))) const char* OnnxAttnIndexerCudaPlan(
    int64_t batch, int64_t seq, int64_t total, int64_t heads, int64_t head_dim, int64_t top_k, int64_t element_bytes,
    int64_t tensor_cores, int64_t* out) {
  static thread_local std::string error;
  onnxattn::indexer::Params p;
  p.batch = batch, p.seq = seq, p.total = total, p.heads = heads, p.head_dim = head_dim, p.top_k = top_k;
  onnxattn::indexer::cuda::Plan plan;
  try {
    const bool allowed = tensor_cores < 0 ? onnxattn::indexer::cuda::tensor_cores_allowed() : tensor_cores != 0;
    plan = onnxattn::indexer::cuda::make_plan(p, int(element_bytes), allowed);
  } catch (const onnxattn::InputError& e) {
    error = e.what();
    return error.c_str();
  }
  const int64_t values[9] = {plan.tiles_per_row, plan.tiles, plan.tiles_per_wave, plan.key_tiles, plan.width,
                             int64_t(plan.score_smem), int64_t(plan.scratch_bytes), int64_t(plan.score_kernel),
                             plan.mma_heads};
  std::copy(values, values + 9, out);
  return nullptr;
}
