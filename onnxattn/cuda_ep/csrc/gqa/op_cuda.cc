// The CUDA kernel of GroupQueryAttention for onnxruntime (built only with CUDA): the shared adapter
// (op_adapter.h) plus a Compute that plans, takes one scratch block from onnxruntime's allocator and
// enqueues the work on onnxruntime's compute stream.
//
// Memory: every input, past_lengths and position_ids included, stays in device memory (the default of
// the CUDA execution provider); no input is declared as host memory and nothing synchronises the host,
// so a session with enable_cuda_graph can capture the node. The in-place KV cache works as on the CPU:
// GetMayInplace (past -> present, declared by the shared adapter) or I/O binding of present to the past's
// OrtValue hands the kernel the same buffer, and only the new tokens are written.
#include "common/ort_scratch.h"
#include "gqa/cuda_kernel.h"
#include "gqa/op.h"
#include "gqa/op_adapter.h"

namespace onnxattn::gqa {
namespace {

using adapter::Call;
using adapter::prepare;

template <typename T>
struct CudaKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const Call<T> call = prepare<T>(attrs, ctx);
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

}  // namespace onnxattn::gqa
