// The CPU kernel of ScaledDotProductAttention for onnxruntime: the shared adapter (op_adapter.h) plus
// a Compute that runs the CPU flash kernel on the session's intra-op thread pool.
#include "sdpa/op.h"

#include "sdpa/cpu_kernel.h"
#include "sdpa/op_adapter.h"

namespace onnxattn::sdpa {
namespace {

using adapter::Call;
using adapter::prepare;

template <typename T>
struct CpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const Call<T> call = prepare<T>(attrs, ctx);
      run_cpu<T>(call.params, call.tensors, ort::intra_op_parallel_for(ctx));
    });
  }
};

}  // namespace

template <typename T>
const OrtCustomOp* cpu_op() {
  return ort::custom_op<CpuKernel<T>, T, adapter::Signature, ort::OnCpu>();
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::sdpa
