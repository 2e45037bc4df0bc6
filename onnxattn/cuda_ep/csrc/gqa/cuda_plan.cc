// The plan of GroupQueryAttention on CUDA (see gqa/cuda_plan.h). The attention core's own dispatch
// (schedule, kernel, tiles, splits) stays in sdpa/cuda_plan.cc; this file only describes the cache to it
// and lays out the scratch.
#include "gqa/cuda_plan.h"

namespace onnxattn::gqa::cuda {
namespace {

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

size_t element_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

}  // namespace

sdpa::Params attention_params(const Params& p) {
  sdpa::Params a;
  a.batch = p.batch;
  a.q_heads = p.q_heads;
  a.kv_heads = p.kv_heads;
  a.q_len = p.seq;
  a.kv_len = p.total;
  a.head_dim = p.head_dim;
  a.v_head_dim = p.v_head_dim;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.structure.causal = p.causal;
  a.structure.window = p.window;
  a.structure.chunk = p.attention_chunk;
  // Concatenation: query i at P + i for every batch. Shared buffer: per batch, from the device (the value
  // here is never used then).
  a.structure.query_offset = p.past;
  // The raw projected queries: QK-norm and RoPE happen in the core's Q load.
  a.q_strides = {p.seq * p.q_heads * p.head_dim, p.head_dim, p.q_heads * p.head_dim};
  a.k_strides = sdpa::Strides::contiguous(p.kv_heads, p.total, p.head_dim);
  a.v_strides = sdpa::Strides::contiguous(p.kv_heads, p.total, p.v_head_dim);
  a.y_strides = {p.seq * p.q_heads * p.v_head_dim, p.v_head_dim, p.q_heads * p.v_head_dim};
  if (p.has_mask) {  // [B, total keys], the same for every head and query
    a.mask_kind = sdpa::MaskKind::kBool;
    a.mask_strides = {p.total, 0, 0, 1};
  }
  a.want_lse = p.has_sinks;  // the sink factor is a function of the row's LSE
  return a;
}

Plan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
               bool present_outputs, bool new_tokens_aligned16, bool rotate_queries, Rotation rotation) {
  Plan plan;
  plan.attention = attention_params(p);
  plan.per_batch = p.mode == CacheMode::kShared;
  sdpa::cuda::Layout layout;
  layout.per_batch_lengths = plan.per_batch;
  layout.op = kOpName;
  // The wgmma prefill kernel reads plain query rows: with it, the queries are prepared ahead (below), so every
  // GroupQueryAttention launch fits it (the plan consults this only where the request allows wgmma).
  const bool prepares = p.rope || p.q_norm;
  layout.wgmma_ok = true;
  // Rows of the views advance by multiples of D or Dv elements.
  const size_t size = element_size(dtype);
  const bool rows16 = (size_t(p.head_dim) * size) % 16 == 0 && (size_t(p.v_head_dim) * size) % 16 == 0;
  plan.launch = sdpa::cuda::make_plan(plan.attention, dtype, device, request, aligned16 && rows16, layout);

  plan.append_rows = p.batch * p.seq * p.kv_heads;
  plan.append_blocks = (plan.append_rows + kAppendRowsPerBlock - 1) / kAppendRowsPerBlock;
  // 16-byte chunks of a row: pairs (i, i + R/2) of a non-interleaved rotation pair chunk c of the first half with
  // chunk c of the second, so R/2 must split into chunks; interleaved pairs lie inside a chunk. The rotated chunks
  // come first, then the channels past rotary_dim; 0: the rows do not split so.
  const int64_t per_chunk = int64_t(16 / size), rotary = p.rope ? p.rotary_dim : 0;
  const int64_t rotary_span = p.rope_interleaved ? rotary : rotary / 2;
  const bool chunk_rows = size == 2 && aligned16 && rows16 && rotary_span % per_chunk == 0 &&
                          (p.head_dim - rotary) % per_chunk == 0 && rotary <= 2 * kMaxRotaryPairs &&
                          rotation != Rotation::kRows;
  const int rotary_chunks = int(rotary_span / per_chunk);
  const int row_chunks = rotary_chunks + int((p.head_dim - rotary) / per_chunk);
  if (chunk_rows && new_tokens_aligned16 && !p.k_norm && plan.append_rows > 0) {
    plan.append_rotary_chunks = rotary_chunks;
    plan.append_key_chunks = row_chunks;
    plan.append_value_chunks = int(p.v_head_dim / per_chunk);
    plan.append_chunk_blocks = p.batch * p.seq;  // a CTA per new token
  }

  size_t offset = 0;
  auto take = [&](size_t bytes) {
    const size_t at = offset;
    offset += align_up(bytes, 256);
    return at;
  };
  if (plan.per_batch) plan.lengths_offset = take(size_t(2 * p.batch) * sizeof(int64_t));
  plan.attention_offset = take(plan.launch.scratch_bytes);
  plan.present_in_scratch = !present_outputs;
  if (plan.present_in_scratch) {
    const size_t slots = size_t(p.batch * p.kv_heads * p.total);
    plan.present_key_offset = take(slots * size_t(p.head_dim) * size);
    plan.present_value_offset = take(slots * size_t(p.v_head_dim) * size);
  }
  // Queries prepared ahead only where the core would prepare them in 16 bits (its tensor-core kernels), and
  // always for the wgmma kernel, which has no preparation in its Q load.
  const sdpa::cuda::Kernel kernel = plan.launch.kernel;
  plan.rotate_queries = prepares && plan.launch.grid > 0 &&
                        (kernel == sdpa::cuda::Kernel::kWgmma || (rotate_queries && kernel == sdpa::cuda::Kernel::kMma));
  if (plan.rotate_queries) {
    plan.rotated_q_offset = take(size_t(p.batch * p.seq * p.q_heads * p.head_dim) * size);
    if (chunk_rows && !p.q_norm) {
      plan.rotary_chunks = rotary_chunks;
      plan.rotate_chunks = row_chunks;
      plan.rotate_blocks = p.batch * p.seq;  // a CTA per token
    }
  }
  // Both by token, over the same tokens: one kernel (the new-token kernel's CTAs, a token each).
  plan.joint_new_tokens = rotation == Rotation::kJoint && plan.append_key_chunks > 0 && plan.rotate_chunks > 0;
  // The joint kernel also zeroes the fused merge's counters (its CTA 0, before the core's launch): no memset launch.
  plan.launch.split_counters_zeroed_ahead = plan.joint_new_tokens && plan.launch.split_counters > 0;
  plan.sinks = p.has_sinks;
  if (plan.sinks) plan.lse_offset = take(size_t(p.batch * p.q_heads * p.seq) * sizeof(float));
  plan.scratch_bytes = offset;
  return plan;
}

}  // namespace onnxattn::gqa::cuda
