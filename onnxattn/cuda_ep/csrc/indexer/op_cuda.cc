// The CUDA kernel of LightningIndexer for onnxruntime (built only with CUDA): the shared adapter (op_adapter.h)
// plus a Compute that plans, takes one scratch block from onnxruntime's allocator and enqueues the work on
// onnxruntime's compute stream. Every input stays in device memory; nothing synchronises the host.
#include <exception>
#include <string>

#include "common/element_type.h"
#include "common/errors.h"
#include "common/ort_scratch.h"
#include "indexer/cuda_kernel.h"
#include "indexer/op.h"
#include "indexer/op_adapter.h"

namespace onnxattn::indexer {
namespace {

template <typename T>
struct CudaKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::Call<T> call = adapter::prepare<T>(attrs, ctx);
      const cuda::Plan plan = cuda::make_plan(call.params, int(sizeof(T)), cuda::tensor_cores_allowed());
      const Ort::ConstMemoryInfo memory = ctx.GetInput(kQuery).GetTensorMemoryInfo();
      ort::Scratch scratch(raw_context, memory, plan.scratch_bytes, kOpName);
      cuda::run(call.params, call.tensors, plan, ctx.GetGPUComputeStream(), scratch.data(), plan.scratch_bytes);
    });
  }
};

}  // namespace

template <typename T>
const OrtCustomOp* cuda_op() {
  return ort::custom_op<CudaKernel<T>, T, adapter::Signature, ort::OnCuda>();
}

template const OrtCustomOp* cuda_op<float>();
template const OrtCustomOp* cuda_op<Float16>();
template const OrtCustomOp* cuda_op<BFloat16>();

}  // namespace onnxattn::indexer

// For benchmarks and GPU tests without onnxruntime (benchmarks/bench_indexer_cuda.py): the op on raw device
// pointers {query, key, weights, past_lengths (null: concatenation mode), key_indices} of `dtype` (ONNX element
// type 1, 10 or 16), enqueued on `stream` with the caller's scratch (OnnxAttnIndexerCudaPlan's scratch_bytes).
// Returns null, or the error message.
extern "C" __attribute__((visibility("default"))) const char* OnnxAttnIndexerCudaRun(
    int64_t batch, int64_t seq, int64_t total, int64_t heads, int64_t head_dim, int64_t top_k, float scale,
    void* const* ptrs, int32_t dtype, void* stream, void* scratch, int64_t scratch_bytes) {
  using namespace onnxattn;
  static thread_local std::string error;
  try {
    indexer::Shapes shapes;
    shapes.inputs[indexer::kQuery] = indexer::Shape{batch, seq, heads * head_dim};
    shapes.inputs[indexer::kKey] = indexer::Shape{batch, 1, total, head_dim};
    shapes.inputs[indexer::kWeights] = indexer::Shape{batch, seq, heads};
    if (ptrs[3] != nullptr) shapes.inputs[indexer::kPastLengths] = indexer::Shape{batch};
    const indexer::Params p = indexer::make_params(shapes, indexer::Attributes{heads, top_k, scale});
    auto go = [&](auto tag) {
      using T = decltype(tag);
      const bool tensor_cores = indexer::cuda::tensor_cores_allowed();
      const indexer::cuda::Plan plan = indexer::cuda::make_plan(p, int(sizeof(T)), tensor_cores);
      indexer::Tensors<T> t;
      t.query = static_cast<const T*>(ptrs[0]);
      t.key = static_cast<const T*>(ptrs[1]);
      t.weights = static_cast<const float*>(ptrs[2]);
      t.past_lengths = static_cast<const int64_t*>(ptrs[3]);
      t.key_indices = static_cast<int64_t*>(ptrs[4]);
      indexer::cuda::run(p, t, plan, stream, scratch, size_t(scratch_bytes));
    };
    with_element_type(dtype, indexer::kOpName, go);
    return nullptr;
  } catch (const std::exception& e) {
    error = e.what();
    return error.c_str();
  }
}
