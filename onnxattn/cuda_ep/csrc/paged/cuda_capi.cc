// C entry points for tests (ctypes) of PagedAttention on CUDA, no onnxruntime involved:
//  - OnnxAttnPagedCudaPlan: the plan (the attention core's view of the pools, its ragged launches, the
//    scratch layout), pure host code built in every configuration (tests/test_paged_cuda_host.py);
//  - OnnxAttnPagedCudaRunForTest (CUDA builds only): the whole op on raw device pointers such as torch
//    CUDA tensors' (tests/gpu).
// Structs mirror tests/gpu/paged_cuda_lib.py field for field; change both together.
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "common/element_type.h"
#include "common/errors.h"
#include "common/half.h"
#include "paged/cuda_plan.h"
#include "paged/params.h"
#include "sdpa/cuda_capi.h"
#ifdef ONNXATTN_WITH_CUDA
#include "paged/cuda_kernel.h"
#endif

extern "C" {

struct OnnxAttnPagedProblem {
  int64_t tokens, batch, q_heads, kv_heads, head_dim, v_head_dim;
  int64_t num_blocks, block_size, max_blocks, window, rotary_dim;
  int32_t dtype;  // ONNX element type: 1 float32, 10 float16, 16 bfloat16
  int32_t causal, rope, rope_interleaved, has_position_ids, q_norm, k_norm, has_inv_freq;
  float softcap, scale, rope_base, rope_attention_scaling, qk_norm_epsilon;
  int32_t has_sinks;
  int64_t attention_chunk;
};

struct OnnxAttnPagedPlanInfo {
  OnnxAttnSdpaPlanInfo decode, prefill;  // grid 0: that launch does not run
  int64_t decode_work_tiles, prefill_work_tiles, decode_max_queries, schedule_grid;
  int64_t q_len, kv_len, block_table_stride, num_blocks;
  int64_t q_strides[3], k_strides[3], v_strides[3], y_strides[3];
  int64_t layout_blocks, append_rows, append_blocks;
  int64_t totals_offset, decode_items_offset, prefill_items_offset, decode_offset, prefill_offset;
  int64_t core_scratch_bytes, layout_offset, core_offset, key_pool_offset, value_pool_offset, scratch_bytes;
  int32_t pools_in_scratch, sinks;
  int64_t lse_offset;
  char reason[1024];
};

// Device pointers of one call; null where the input is absent. key_cache_out/value_cache_out null: the
// pools live in scratch (the node does not ask for them); equal to key_cache/value_cache: in place.
struct OnnxAttnPagedTensors {
  const void *query, *key, *value, *key_cache, *value_cache;
  const int32_t *block_table, *cu_seqlens_q, *seq_lens;
  const int64_t* position_ids;
  const void *q_norm_weight, *k_norm_weight;
  const float* inv_freq;
  void *output, *key_cache_out, *value_cache_out;
  const void* sinks;
};

}  // extern "C"

namespace onnxattn::paged::cuda {
namespace {

using namespace sdpa::cuda::capi;
using Shape = std::vector<int64_t>;

// The problem through the op's shared validation (paged::make_params), as the onnxruntime adapter does.
Params params_from(const OnnxAttnPagedProblem& pr) {
  Shapes shapes;
  const int64_t t = pr.tokens, hkv = pr.kv_heads;
  shapes.inputs[kQuery] = Shape{t, pr.q_heads * pr.head_dim};
  shapes.inputs[kKey] = Shape{t, hkv * pr.head_dim};
  shapes.inputs[kValue] = Shape{t, hkv * pr.v_head_dim};
  shapes.inputs[kKeyCache] = Shape{pr.num_blocks, pr.block_size, hkv, pr.head_dim};
  shapes.inputs[kValueCache] = Shape{pr.num_blocks, pr.block_size, hkv, pr.v_head_dim};
  shapes.inputs[kBlockTable] = Shape{pr.batch, pr.max_blocks};
  shapes.inputs[kCuSeqlensQ] = Shape{pr.batch + 1};
  shapes.inputs[kSeqLens] = Shape{pr.batch};
  if (pr.has_position_ids) shapes.inputs[kPositionIds] = Shape{t};
  if (pr.q_norm) shapes.inputs[kQNorm] = Shape{pr.head_dim};
  if (pr.k_norm) shapes.inputs[kKNorm] = Shape{pr.head_dim};
  const int64_t rotary = pr.rotary_dim ? pr.rotary_dim : pr.head_dim;
  if (pr.has_inv_freq) shapes.inputs[kInvFreq] = Shape{rotary / 2};
  if (pr.has_sinks) shapes.inputs[kSinks] = Shape{pr.q_heads};
  gqa::Attributes a;
  a.num_heads = pr.q_heads;
  a.kv_num_heads = pr.kv_heads;
  a.causal = pr.causal;
  a.window = pr.window;
  a.attention_chunk = pr.attention_chunk;
  a.softcap = pr.softcap;
  a.scale = pr.scale;
  a.rope = pr.rope;
  a.rope_base = pr.rope_base;
  a.rotary_dim = pr.rotary_dim;
  a.rope_interleaved = pr.rope_interleaved;
  a.rope_attention_scaling = pr.rope_attention_scaling;
  a.qk_norm_epsilon = pr.qk_norm_epsilon;
  return make_params(shapes, a);
}

void copy3(const sdpa::Strides& s, int64_t (&out)[3]) {
  out[0] = s.batch;
  out[1] = s.head;
  out[2] = s.seq;
}

void fill_plan_info(const Plan& plan, OnnxAttnPagedPlanInfo* out) {
  if (out == nullptr) return;
  std::memset(out, 0, sizeof *out);
  const sdpa::cuda::RaggedPlan& core = plan.core;
  fill_info(core.decode, &out->decode);
  fill_info(core.prefill, &out->prefill);
  out->decode_work_tiles = core.decode.work_tiles;
  out->prefill_work_tiles = core.prefill.work_tiles;
  out->decode_max_queries = core.decode_max_queries;
  out->schedule_grid = core.schedule_grid;
  const sdpa::Params& a = plan.attention;
  out->q_len = a.q_len;
  out->kv_len = a.kv_len;
  out->block_table_stride = a.block_table_stride;
  out->num_blocks = a.num_blocks;
  copy3(a.q_strides, out->q_strides);
  copy3(a.k_strides, out->k_strides);
  copy3(a.v_strides, out->v_strides);
  copy3(a.y_strides, out->y_strides);
  out->layout_blocks = plan.layout_blocks;
  out->append_rows = plan.append_rows;
  out->append_blocks = plan.append_blocks;
  out->totals_offset = int64_t(core.totals_offset);
  out->decode_items_offset = int64_t(core.decode_items_offset);
  out->prefill_items_offset = int64_t(core.prefill_items_offset);
  out->decode_offset = int64_t(core.decode_offset);
  out->prefill_offset = int64_t(core.prefill_offset);
  out->core_scratch_bytes = int64_t(core.scratch_bytes);
  out->layout_offset = int64_t(plan.layout_offset);
  out->core_offset = int64_t(plan.core_offset);
  out->key_pool_offset = int64_t(plan.key_pool_offset);
  out->value_pool_offset = int64_t(plan.value_pool_offset);
  out->scratch_bytes = int64_t(plan.scratch_bytes);
  out->pools_in_scratch = plan.pools_in_scratch ? 1 : 0;
  out->sinks = plan.sinks ? 1 : 0;
  out->lse_offset = int64_t(plan.lse_offset);
  std::snprintf(out->reason, sizeof out->reason, "%s", core.reason.c_str());
}

#ifdef ONNXATTN_WITH_CUDA
template <typename T>
int run_for_test(const Params& p, const OnnxAttnPagedTensors& in, const Request& request, void* scratch,
                 size_t scratch_bytes, void* stream, OnnxAttnPagedPlanInfo* info) {
  Tensors<T> t;
  t.query = static_cast<const T*>(in.query);
  t.key = static_cast<const T*>(in.key);
  t.value = static_cast<const T*>(in.value);
  t.key_cache = static_cast<const T*>(in.key_cache);
  t.value_cache = static_cast<const T*>(in.value_cache);
  t.block_table = in.block_table;
  t.cu_seqlens_q = in.cu_seqlens_q;
  t.seq_lens = in.seq_lens;
  t.position_ids = in.position_ids;
  t.q_norm_weight = static_cast<const T*>(in.q_norm_weight);
  t.k_norm_weight = static_cast<const T*>(in.k_norm_weight);
  t.inv_freq = in.inv_freq;
  t.sinks = static_cast<const T*>(in.sinks);
  t.output = static_cast<T*>(in.output);
  t.key_cache_out = static_cast<T*>(in.key_cache_out);
  t.value_cache_out = static_cast<T*>(in.value_cache_out);
  const bool pool_outputs = t.key_cache_out != nullptr && t.value_cache_out != nullptr;
  const Plan plan = make_plan(p, sdpa::cuda::dtype_of<T>(), sdpa::cuda::device_info(sdpa::cuda::current_device()),
                              request, aligned16(t), pool_outputs);
  fill_plan_info(plan, info);
  if (plan.scratch_bytes > scratch_bytes) return 2;  // the caller allocates plan.scratch_bytes and calls again
  run(p, t, plan, stream, scratch, scratch_bytes);
  return 0;
}
#endif

}  // namespace
}  // namespace onnxattn::paged::cuda

extern "C" {

// The plan of `problem` on a described device. `aligned16`: the pointers the caller will pass are
// 16-byte aligned; `pool_outputs`: the caller provides output pools. Returns 0, or 1 with a message in err.
ONNXATTN_EXPORT int OnnxAttnPagedCudaPlan(const OnnxAttnPagedProblem* problem, const OnnxAttnSdpaDevice* device,
                                          int32_t path, int32_t kernel, int32_t aligned16, int32_t pool_outputs,
                                          OnnxAttnPagedPlanInfo* out, char* err, size_t err_len) {
  using namespace onnxattn::paged::cuda;
  return guarded(err, err_len, [&] {
    const onnxattn::paged::Params p = params_from(*problem);
    const Plan plan = make_plan(p, dtype_from_onnx(problem->dtype, onnxattn::paged::kOpName), device_from(*device),
                                request_from(path, kernel, onnxattn::paged::kOpName), aligned16 != 0,
                                pool_outputs != 0);
    fill_plan_info(plan, out);
    return 0;
  });
}

// Runs PagedAttention's CUDA kernels on device pointers, on `stream` (a cudaStream_t; null = the legacy
// default stream), without synchronising. Returns 0 when enqueued; 2 when `scratch_bytes` is less than the
// plan needs (info->scratch_bytes; nothing ran: allocate and call again); 1 with a message in err on error.
// path/kernel force the attention core's plan as in OnnxAttnSdpaCudaPlan.
ONNXATTN_EXPORT int OnnxAttnPagedCudaRunForTest(const OnnxAttnPagedProblem* problem, const OnnxAttnPagedTensors* tensors,
                                                int32_t path, int32_t kernel, void* scratch, size_t scratch_bytes,
                                                void* stream, OnnxAttnPagedPlanInfo* info, char* err, size_t err_len) {
  using namespace onnxattn::paged::cuda;
#ifdef ONNXATTN_WITH_CUDA
  return guarded(err, err_len, [&] {
    const onnxattn::paged::Params p = params_from(*problem);
    const Request request = request_from(path, kernel, onnxattn::paged::kOpName);
    return onnxattn::with_element_type(problem->dtype, onnxattn::paged::kOpName, [&](auto tag) {
      return run_for_test<decltype(tag)>(p, *tensors, request, scratch, scratch_bytes, stream, info);
    });
  });
#else
  (void)problem, (void)tensors, (void)path, (void)kernel, (void)scratch, (void)scratch_bytes, (void)stream, (void)info;
  write_error(err, err_len, "onnxattn: this library was built without CUDA");
  return 1;
#endif
}

}  // extern "C"
