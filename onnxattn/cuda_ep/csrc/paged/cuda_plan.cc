// The plan of PagedAttention on CUDA (see paged/cuda_plan.h). The attention core's dispatch (classes,
// kernels, tiles, splits) stays in sdpa/cuda_plan.cc; this file describes the pools to it and lays out the
// scratch.
#include "paged/cuda_plan.h"

#include <algorithm>

#include "common/errors.h"

namespace onnxattn::paged::cuda {
namespace {

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace

sdpa::Params attention_params(const Params& p) {
  sdpa::Params a;
  a.batch = p.batch;
  a.q_heads = p.q_heads;
  a.kv_heads = p.kv_heads;
  a.kv_len = p.max_blocks * p.block_size;                // a table row's capacity; lengths come per sequence
  a.q_len = std::min(p.tokens, a.kv_len);               // new tokens of one sequence: <= T and <= its length
  a.head_dim = p.head_dim;
  a.v_head_dim = p.v_head_dim;
  a.scale = p.scale;
  a.softcap = p.attrs.softcap;
  a.structure.causal = p.attrs.causal != 0;
  a.structure.window = p.attrs.window;
  a.structure.chunk = p.attrs.attention_chunk;
  // Raw packed queries (QK-norm and RoPE happen in the core's Q load), the packed output, and the pools as
  // [slots, Hkv, .] (slot-major: a block holds every head's rows of its slots).
  a.q_strides = {0, p.head_dim, p.q_heads * p.head_dim};
  a.y_strides = {0, p.v_head_dim, p.q_heads * p.v_head_dim};
  a.k_strides = {0, p.head_dim, p.kv_heads * p.head_dim};
  a.v_strides = {0, p.v_head_dim, p.kv_heads * p.v_head_dim};
  a.block_size = p.block_size;
  a.block_table_stride = p.max_blocks;
  a.num_blocks = p.num_blocks;
  a.want_lse = p.has_sinks;  // by packed row [T, Hq]: the sink factor of each output row
  return a;
}

Plan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
               bool pool_outputs) {
  Plan plan;
  plan.attention = attention_params(p);
  // Rows of the views advance by multiples of D or Dv elements.
  const size_t size = element_size(dtype);
  const bool rows16 = (size_t(p.head_dim) * size) % 16 == 0 && (size_t(p.v_head_dim) * size) % 16 == 0;
  if (p.max_blocks >= 1) {  // else every sequence is empty (or fails the layout checks): no attention
    plan.core = sdpa::cuda::make_ragged_plan(plan.attention, dtype, device, request, aligned16 && rows16, p.tokens,
                                             kOpName);
  }
  plan.layout_blocks = (p.batch + kWarpsPerBlock - 1) / kWarpsPerBlock;
  plan.append_rows = p.tokens * p.kv_heads;
  plan.append_blocks = (plan.append_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (std::max(plan.append_blocks, plan.layout_blocks) > int64_t(0x7fffffff)) {
    fail(kOpName, ": too many tokens or sequences for one CUDA grid");
  }

  size_t offset = 0;
  auto take = [&](size_t bytes) {
    const size_t at = offset;
    offset += align_up(bytes, 256);
    return at;
  };
  plan.layout_offset = take(size_t(4 * p.batch) * sizeof(int64_t));
  plan.core_offset = take(plan.core.scratch_bytes);
  plan.pools_in_scratch = !pool_outputs;
  if (plan.pools_in_scratch) {
    const size_t slots = size_t(p.num_blocks * p.block_size * p.kv_heads);
    plan.key_pool_offset = take(slots * size_t(p.head_dim) * size);
    plan.value_pool_offset = take(slots * size_t(p.v_head_dim) * size);
  }
  plan.sinks = p.has_sinks;
  if (plan.sinks) plan.lse_offset = take(size_t(p.tokens * p.q_heads) * sizeof(float));
  plan.scratch_bytes = offset;
  return plan;
}

}  // namespace onnxattn::paged::cuda
