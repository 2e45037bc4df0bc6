// The onnxruntime CPU kernel of PagedAttention: the shared adapter (op_adapter.h) plus a Compute that runs
// the CPU kernel, with host copies of the pools when the node does not ask for the updated pools.
#include "paged/op.h"

#include <memory>

#include "paged/cpu_kernel.h"
#include "paged/op_adapter.h"

namespace onnxattn::paged {
namespace {

template <typename T>
struct CpuKernel {
  gqa::Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      adapter::Call<T> call = adapter::prepare<T>(attrs, ctx);
      const Params& p = call.params;
      Tensors<T>& t = call.tensors;
      // Without the cache outputs the node still writes the new tokens: into scratch copies of the pools.
      std::unique_ptr<T[]> scratch_key, scratch_value;
      if (t.key_cache_out == nullptr || t.value_cache_out == nullptr) {
        scratch_key.reset(new T[size_t(p.num_blocks * p.block_size * p.kv_heads * p.head_dim)]);
        scratch_value.reset(new T[size_t(p.num_blocks * p.block_size * p.kv_heads * p.v_head_dim)]);
        t.key_cache_out = scratch_key.get();
        t.value_cache_out = scratch_value.get();
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

}  // namespace onnxattn::paged
