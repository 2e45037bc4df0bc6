// The CUDA kernel of PagedAttention for onnxruntime (built only with CUDA): the shared adapter
// (op_adapter.h) plus a Compute that plans, takes one scratch block from onnxruntime's allocator and
// enqueues the work on onnxruntime's compute stream.
//
// Memory: every input, the index inputs included, stays in device memory (the CUDA execution provider's
// default); nothing is declared as host memory and nothing synchronises the host, so a session with
// enable_cuda_graph can capture the node. The contract therefore differs from the CPU kernel's on bad
// index inputs: instead of an error, the failing sequences get NaN output rows and nothing of theirs is
// written (paged/cuda_plan.h). Callers that want the error check on the host before running, or run the
// CPU kernel. In place: see op_adapter.h (MayInplace, I/O binding of the pools).
#include "common/ort_scratch.h"
#include "paged/cuda_kernel.h"
#include "paged/op.h"
#include "paged/op_adapter.h"

namespace onnxattn::paged {
namespace {

template <typename T>
struct CudaKernel {
  gqa::Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::Call<T> call = adapter::prepare<T>(attrs, ctx);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(kQuery).GetTensorMemoryInfo();
      const cuda::Plan plan =
          cuda::plan_for(call.params, call.tensors, sdpa::cuda::device_info(memory.GetDeviceId()));
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

}  // namespace onnxattn::paged
