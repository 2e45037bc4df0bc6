// The CPU kernel of ScaledDotProductAttention for onnxruntime: the shared adapter (op_adapter.h) plus
// a Compute that runs the CPU flash kernel on the session's intra-op thread pool.
#include "sdpa/op.h"

#include "sdpa/cpu_kernel.h"
#include "sdpa/op_adapter.h"

namespace onnxattn::sdpa {

template <typename T>
const OrtCustomOp* cpu_op() {
  using Kernel = ort::PreparedCpuKernel<Attributes, adapter::prepare<T>, run_cpu<T>>;
  return ort::custom_op<Kernel, T, adapter::Signature, ort::OnCpu>();
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::sdpa
