// The CUDA kernel of MultiHeadLatentAttention for onnxruntime (built only with CUDA): the shared adapter
// (op_adapter.h) plus a Compute that plans, takes one scratch block from onnxruntime's allocator and
// enqueues the work on onnxruntime's compute stream. Every input stays in device memory and nothing
// synchronises the host; the in-place latent cache works as on the CPU (GetMayInplace or I/O binding).
#include "common/ort_scratch.h"
#include "mla/cuda_kernel.h"
#include "mla/op.h"
#include "mla/op_adapter.h"
#include "sdpa/cuda_kernel.h"

namespace onnxattn::mla {
namespace {

template <typename T>
struct CudaKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::Call<T> call = adapter::prepare<T>(attrs, ctx);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(kQuery).GetTensorMemoryInfo();
      const bool present_outputs = call.tensors.present_latent != nullptr && call.tensors.present_k_rope != nullptr;
      const cuda::Plan plan = cuda::make_plan(call.params, sdpa::cuda::device_info(memory.GetDeviceId()).sm_count,
                                              sizeof(T), present_outputs);
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

}  // namespace onnxattn::mla
