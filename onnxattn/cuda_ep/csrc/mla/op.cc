// The CPU kernel of MultiHeadLatentAttention for onnxruntime: the shared adapter (op_adapter.h) plus a
// Compute that gives the kernel host buffers for the present caches when the node does not ask for them.
#include "mla/op.h"

#include <memory>

#include "common/ort_scratch.h"
#include "mla/cpu_kernel.h"
#include "mla/op_adapter.h"

namespace onnxattn::mla {
namespace {

template <typename T>
struct CpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      adapter::Call<T> call = adapter::prepare<T>(attrs, ctx);
      const Params& p = call.params;
      Tensors<T>& t = call.tensors;
      // Present caches the node does not ask for: from onnxruntime's CPU arena (as GroupQueryAttention's).
      const size_t rows = size_t(p.batch * p.total);
      std::unique_ptr<ort::Scratch> scratch_latent, scratch_rope;
      if (!t.present_latent) {
        t.present_latent = ort::host_scratch<T>(raw_context, rows * p.rank, kOpName, scratch_latent);
      }
      if (!t.present_k_rope) {
        t.present_k_rope = ort::host_scratch<T>(raw_context, rows * p.rope_dim, kOpName, scratch_rope);
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

}  // namespace onnxattn::mla

// For tests and benchmarks: the formulation the CPU kernel picks for a shape (uniform past lengths),
// honouring ONNXATTN_MLA_PATH, and the cost model's estimates (multiply-adds) behind the choice.
extern "C" __attribute__((visibility("default"))) const char* OnnxAttnMlaCpuPath(
    int64_t batch, int64_t seq, int64_t heads, int64_t rank, int64_t nope_dim, int64_t rope_dim, int64_t v_head_dim,
    int64_t past, int64_t causal, int64_t window, double* absorbed_cost, double* expanded_cost) {
  onnxattn::mla::Params p;
  p.batch = batch, p.seq = seq, p.heads = heads, p.rank = rank, p.nope_dim = nope_dim, p.rope_dim = rope_dim;
  p.v_head_dim = v_head_dim, p.past = past, p.total = past + seq, p.causal = causal != 0, p.window = window;
  std::vector<int64_t> pasts(size_t(batch), past), valid(size_t(batch), past + seq);
  const onnxattn::mla::Cost cost = onnxattn::mla::estimate_cost(p, pasts.data(), valid.data());
  if (absorbed_cost) *absorbed_cost = cost.absorbed;
  if (expanded_cost) *expanded_cost = cost.expanded;
  return onnxattn::mla::path_name(onnxattn::mla::choose_path(p, pasts.data(), valid.data()));
}
