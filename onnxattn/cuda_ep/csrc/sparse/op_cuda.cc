// The CUDA kernels of NativeSparseAttention and SparseRoutedAttention for onnxruntime (built only with CUDA):
// the shared adapters (op_adapter.h) plus a Compute that takes one scratch block from onnxruntime's allocator
// and enqueues the work on onnxruntime's compute stream. Every input (position_ids included) stays in device
// memory; nothing synchronises the host.
#include "common/ort_scratch.h"
#include "sparse/cuda_kernel.h"
#include "sparse/op.h"
#include "sparse/op_adapter.h"

namespace onnxattn::sparse {
namespace {

template <typename T>
struct NsaCudaKernel {
  NsaAttributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::NsaCall<T> call = adapter::prepare_nsa<T>(attrs, ctx);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(adapter::nsa_io::kQ).GetTensorMemoryInfo();
      const cuda::NsaPlan plan = cuda::plan_nsa<T>(call.params, call.tensors);
      ort::Scratch scratch(raw_context, memory, plan.scratch_bytes, kNsaName);
      cuda::run_nsa<T>(call.params, call.tensors, plan, ctx.GetGPUComputeStream(), scratch.data(), plan.scratch_bytes);
    });
  }
};

template <typename T>
struct RoutedCudaKernel {
  RoutedAttributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::RoutedCall<T> call = adapter::prepare_routed<T>(attrs, ctx);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(adapter::routed_io::kQ).GetTensorMemoryInfo();
      const size_t bytes = cuda::routed_scratch_bytes<T>(call.params);
      ort::Scratch scratch(raw_context, memory, bytes, kRoutedName);
      cuda::run_routed<T>(call.params, call.tensors, ctx.GetGPUComputeStream(), scratch.data(), bytes);
    });
  }
};

}  // namespace

template <typename T>
const OrtCustomOp* nsa_cuda_op() {
  return ort::custom_op<NsaCudaKernel<T>, T, adapter::NsaSignature, ort::OnCuda>();
}

template <typename T>
const OrtCustomOp* routed_cuda_op() {
  return ort::custom_op<RoutedCudaKernel<T>, T, adapter::RoutedSignature, ort::OnCuda>();
}

template const OrtCustomOp* nsa_cuda_op<float>();
template const OrtCustomOp* nsa_cuda_op<Float16>();
template const OrtCustomOp* nsa_cuda_op<BFloat16>();
template const OrtCustomOp* routed_cuda_op<float>();
template const OrtCustomOp* routed_cuda_op<Float16>();
template const OrtCustomOp* routed_cuda_op<BFloat16>();

}  // namespace onnxattn::sparse
