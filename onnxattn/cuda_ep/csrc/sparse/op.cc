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

template <typename T>
struct NsaCpuOp : adapter::NsaOpBase<NsaCpuOp<T>, NsaCpuKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
};

template <typename T>
struct RoutedCpuOp : adapter::RoutedOpBase<RoutedCpuOp<T>, RoutedCpuKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
};

}  // namespace

template <typename T>
const OrtCustomOp* nsa_cpu_op() {
  static const NsaCpuOp<T> op;
  return &op;
}

template <typename T>
const OrtCustomOp* routed_cpu_op() {
  static const RoutedCpuOp<T> op;
  return &op;
}

template const OrtCustomOp* nsa_cpu_op<float>();
template const OrtCustomOp* nsa_cpu_op<Float16>();
template const OrtCustomOp* nsa_cpu_op<BFloat16>();
template const OrtCustomOp* routed_cpu_op<float>();
template const OrtCustomOp* routed_cpu_op<Float16>();
template const OrtCustomOp* routed_cpu_op<BFloat16>();

}  // namespace onnxattn::sparse
