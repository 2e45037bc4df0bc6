// The CPU kernels of NativeSparseAttention and SparseRoutedAttention for onnxruntime: the shared adapters
// (op_adapter.h) plus a Compute that runs them on the session's intra-op thread pool.
#include "sparse/op.h"

#include "sparse/cpu_kernel.h"
#include "sparse/op_adapter.h"

namespace onnxattn::sparse {

template <typename T>
const OrtCustomOp* nsa_cpu_op() {
  using Kernel = ort::PreparedCpuKernel<NsaAttributes, adapter::prepare_nsa<T>, run_nsa_cpu<T>>;
  return ort::custom_op<Kernel, T, adapter::NsaSignature, ort::OnCpu>();
}

template <typename T>
const OrtCustomOp* routed_cpu_op() {
  using Kernel = ort::PreparedCpuKernel<RoutedAttributes, adapter::prepare_routed<T>, run_routed_cpu<T>>;
  return ort::custom_op<Kernel, T, adapter::RoutedSignature, ort::OnCpu>();
}

template const OrtCustomOp* nsa_cpu_op<float>();
template const OrtCustomOp* nsa_cpu_op<Float16>();
template const OrtCustomOp* nsa_cpu_op<BFloat16>();
template const OrtCustomOp* routed_cpu_op<float>();
template const OrtCustomOp* routed_cpu_op<Float16>();
template const OrtCustomOp* routed_cpu_op<BFloat16>();

}  // namespace onnxattn::sparse
