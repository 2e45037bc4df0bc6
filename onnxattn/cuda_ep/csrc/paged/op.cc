// The onnxruntime CPU kernel of PagedAttention: the shared adapter (op_adapter.h) plus a Compute that runs
// the CPU kernel, with host copies of the pools when the node does not ask for the updated pools.
#include "paged/op.h"

#include <memory>

#include "common/ort_scratch.h"
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
      std::unique_ptr<ort::Scratch> scratch_key, scratch_value;
      if (t.key_cache_out == nullptr || t.value_cache_out == nullptr) {
        const size_t slots = size_t(p.num_blocks * p.block_size * p.kv_heads);
        t.key_cache_out = ort::host_scratch<T>(raw_context, slots * p.head_dim, kOpName, scratch_key);
        t.value_cache_out = ort::host_scratch<T>(raw_context, slots * p.v_head_dim, kOpName, scratch_value);
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
