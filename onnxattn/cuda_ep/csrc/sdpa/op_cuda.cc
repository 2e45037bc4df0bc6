// The CUDA kernel of ScaledDotProductAttention for onnxruntime (built only with CUDA): the shared adapter
// (op_adapter.h) plus a Compute that plans, takes scratch from onnxruntime's allocator for the input's
// device, and enqueues the kernels on onnxruntime's compute stream. Nothing here synchronises the host.
#include "common/ort_scratch.h"
#include "sdpa/cuda_kernel.h"
#include "sdpa/op.h"
#include "sdpa/op_adapter.h"

namespace onnxattn::sdpa {
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
      const Ort::ConstMemoryInfo memory = ctx.GetInput(adapter::kQ).GetTensorMemoryInfo();
      const cuda::LaunchPlan plan = cuda::plan_for(call.params, call.tensors, cuda::device_info(memory.GetDeviceId()));
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

}  // namespace onnxattn::sdpa
