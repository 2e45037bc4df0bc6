// The CPU kernel of GroupQueryAttention for onnxruntime: the shared adapter (op_adapter.h) plus a Compute
// that gives the kernel host buffers for the present caches when the node does not ask for them.
#include "gqa/op.h"

#include <memory>

#include "common/ort_scratch.h"
#include "gqa/cpu_kernel.h"
#include "gqa/op_adapter.h"

namespace onnxattn::gqa {
namespace {

using adapter::Call;
using adapter::prepare;

template <typename T>
struct CpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      Call<T> call = prepare<T>(attrs, ctx);
      const Params& p = call.params;
      Tensors<T>& t = call.tensors;
      // Present caches the node does not ask for: from onnxruntime's CPU arena (a fresh new[] of them, 16 MiB at
      // S = 2048 with 8 KV heads of 128, page-faulted on every prefill: ~3% of it).
      const size_t rows = size_t(p.batch * p.kv_heads * p.total);
      std::unique_ptr<ort::Scratch> scratch_key, scratch_value;
      if (!t.present_key) t.present_key = ort::host_scratch<T>(raw_context, rows * p.head_dim, kOpName, scratch_key);
      if (!t.present_value) {
        t.present_value = ort::host_scratch<T>(raw_context, rows * p.v_head_dim, kOpName, scratch_value);
      }
      run_cpu<T>(p, t, ort::intra_op_parallel_for(ctx));
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

}  // namespace onnxattn::gqa
