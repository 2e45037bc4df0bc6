// The CPU kernels of NativeSparseAttention and SparseRoutedAttention for onnxruntime: the shared adapters
// (op_adapter.h) plus a Compute that runs them on the session's intra-op thread pool.
#include "sparse/op.h"

#include "sparse/cpu_kernel.h"
#include "sparse/op_adapter.h"

namespace onnxattn::sparse {
namespace {

template <typename T>
struct NsaCpuKernel {
  NsaAttributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::NsaCall<T> call = adapter::prepare_nsa<T>(attrs, ctx);
      run_nsa_cpu<T>(call.params, call.tensors, ort::intra_op_parallel_for(ctx));
    });
  }
};

template <typename T>
struct RoutedCpuKernel {
  RoutedAttributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const adapter::RoutedCall<T> call = adapter::prepare_routed<T>(attrs, ctx);
      run_routed_cpu<T>(call.params, call.tensors, ort::intra_op_parallel_for(ctx));
    });
  }
};

}  // namespace

template <typename T>
const OrtCustomOp* nsa_cpu_op() {
  return ort::custom_op<NsaCpuKernel<T>, T, adapter::NsaSignature, ort::OnCpu>();
}

template <typename T>
const OrtCustomOp* routed_cpu_op() {
  return ort::custom_op<RoutedCpuKernel<T>, T, adapter::RoutedSignature, ort::OnCpu>();
}

template const OrtCustomOp* nsa_cpu_op<float>();
template const OrtCustomOp* nsa_cpu_op<Float16>();
template const OrtCustomOp* nsa_cpu_op<BFloat16>();
template const OrtCustomOp* routed_cpu_op<float>();
template const OrtCustomOp* routed_cpu_op<Float16>();
template const OrtCustomOp* routed_cpu_op<BFloat16>();

}  // namespace onnxattn::sparse
