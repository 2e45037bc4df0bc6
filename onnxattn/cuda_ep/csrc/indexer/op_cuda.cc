// The CUDA kernel of LightningIndexer for onnxruntime (built only with CUDA): the shared adapter (op_adapter.h)
// plus a Compute that plans, takes one scratch block from onnxruntime's allocator and enqueues the work on
// onnxruntime's compute stream. Every input stays in device memory; nothing synchronises the host.
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
      cuda::check_support(call.params);
      const cuda::Plan plan = cuda::make_plan(call.params);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(kQuery).GetTensorMemoryInfo();
      ort::Scratch scratch(raw_context, memory, plan.scratch_bytes, kOpName);
      cuda::run(call.params, call.tensors, plan, ctx.GetGPUComputeStream(), scratch.data(), plan.scratch_bytes);
    });
  }
};

template <typename T>
struct CudaOp : adapter::OpBase<CudaOp<T>, CudaKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
};

}  // namespace

template <typename T>
const OrtCustomOp* cuda_op() {
  static const CudaOp<T> op;
  return &op;
}

template const OrtCustomOp* cuda_op<float>();
template const OrtCustomOp* cuda_op<Float16>();
template const OrtCustomOp* cuda_op<BFloat16>();

}  // namespace onnxattn::indexer
