// The CPU kernel of GroupQueryAttention for onnxruntime: the shared adapter (op_adapter.h) plus a Compute
// that gives the kernel host buffers for the present caches when the node does not ask for them.
#include "gqa/op.h"

#include <memory>

#include "gqa/cpu_kernel.h"
#include "gqa/op_adapter.h"

namespace onnxattn::gqa {
namespace {

using adapter::Call;
using adapter::OpBase;
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
      std::unique_ptr<T[]> scratch_key, scratch_value;
      if (!t.present_key) {
        scratch_key.reset(new T[size_t(p.batch * p.kv_heads * p.total * p.head_dim)]);
        t.present_key = scratch_key.get();
      }
      if (!t.present_value) {
        scratch_value.reset(new T[size_t(p.batch * p.kv_heads * p.total * p.v_head_dim)]);
        t.present_value = scratch_value.get();
      }
      run_cpu<T>(p, t, ort::intra_op_parallel_for(ctx));
    });
  }
};

template <typename T>
struct CpuOp : OpBase<CpuOp<T>, CpuKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
};

}  // namespace

template <typename T>
const OrtCustomOp* cpu_op() {
  static const CpuOp<T> op;
  return &op;
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::gqa
