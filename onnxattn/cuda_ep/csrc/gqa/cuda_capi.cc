// C entry points for tests (ctypes) of GroupQueryAttention on CUDA, no onnxruntime involved:
//  - OnnxAttnGqaCudaPlan: the plan (the attention core's view of the cache, its launch, the scratch
//    layout), pure host code built in every configuration (tests/test_gqa_cuda_host.py);
//  - OnnxAttnGqaCudaRunForTest (CUDA builds only): the whole op on raw device pointers such as torch CUDA
//    tensors' (tests/gpu).
// Structs mirror tests/gpu/gqa_cuda_lib.py field for field; change both together.
#include <cstdint>
#include <cstring>

#include "common/element_type.h"
#include "common/errors.h"
#include "common/half.h"
#include "gqa/cuda_plan.h"
#include "gqa/params.h"
#include "sdpa/cuda_capi.h"
#ifdef ONNXATTN_WITH_CUDA
#include "gqa/cuda_kernel.h"
#endif

extern "C" {

struct OnnxAttnGqaProblem {
  int64_t batch, seq, q_heads, kv_heads, head_dim, v_head_dim;
  int64_t past;  // mode 1: the past length P; mode 2: the buffer length M
  int64_t window, rotary_dim;
  int32_t mode;  // 0 no past, 1 concatenation, 2 shared buffer (past_lengths given)
  int32_t dtype;  // ONNX element type: 1 float32, 10 float16, 16 bfloat16
  int32_t causal, rope, rope_interleaved, has_position_ids, q_norm, k_norm, has_inv_freq, has_mask;
  float softcap, scale, rope_base, rope_attention_scaling, qk_norm_epsilon;
  int32_t has_sinks;
  int64_t attention_chunk;
};

struct OnnxAttnGqaPlanInfo {
  OnnxAttnSdpaPlanInfo attention;
  int64_t q_strides[3], k_strides[3], v_strides[3], y_strides[3];
  int64_t kv_len, query_offset, mask_strides[4];
  int32_t per_batch, present_in_scratch;
  int64_t append_rows, append_blocks, lengths_offset, attention_offset, present_key_offset, present_value_offset;
  int64_t scratch_bytes;
  int64_t rotated_q_offset;
  int32_t rotate_queries, sinks;
  int64_t lse_offset;
  int32_t rotate_chunks, rotary_chunks;
  int64_t rotate_blocks;
  int32_t append_key_chunks, append_rotary_chunks, append_value_chunks, joint_new_tokens;
  int64_t append_chunk_blocks;
  int32_t split_counters_zeroed_ahead, reserved;  // the joint kernel zeroes the core's fused-merge counters
};

// Device pointers of one call; null where the input is absent. present_key/present_value null: the
// caches live in scratch (the node does not ask for them); equal to past_key/past_value: in place.
struct OnnxAttnGqaTensors {
  const void *query, *key, *value, *past_key, *past_value;
  const int64_t *past_lengths, *position_ids;
  const void *q_norm_weight, *k_norm_weight;
  const float* inv_freq;
  const bool* attention_mask;
  void *output, *present_key, *present_value;
  const void* sinks;
};

}  // extern "C"

namespace onnxattn::gqa::cuda {
namespace {

using namespace sdpa::cuda::capi;

// The problem through the op's shared validation (gqa::make_params), as the onnxruntime adapter does.
Params params_from(const OnnxAttnGqaProblem& pr) {
  const int64_t b = pr.batch, s = pr.seq;
  Shapes shapes;
  shapes.inputs[kQuery] = Shape{b, s, pr.q_heads * pr.head_dim};
  shapes.inputs[kKey] = Shape{b, s, pr.kv_heads * pr.head_dim};
  shapes.inputs[kValue] = Shape{b, s, pr.kv_heads * pr.v_head_dim};
  if (pr.mode != 0) {
    shapes.inputs[kPastKey] = Shape{b, pr.kv_heads, pr.past, pr.head_dim};
    shapes.inputs[kPastValue] = Shape{b, pr.kv_heads, pr.past, pr.v_head_dim};
  }
  if (pr.mode == 2) shapes.inputs[kPastLengths] = Shape{b};
  if (pr.has_position_ids) shapes.inputs[kPositionIds] = Shape{b, s};
  if (pr.q_norm) shapes.inputs[kQNorm] = Shape{pr.head_dim};
  if (pr.k_norm) shapes.inputs[kKNorm] = Shape{pr.head_dim};
  const int64_t rotary = pr.rotary_dim ? pr.rotary_dim : pr.head_dim;
  if (pr.has_inv_freq) shapes.inputs[kInvFreq] = Shape{rotary / 2};
  const int64_t total = pr.mode == 2 ? pr.past : pr.mode == 1 ? pr.past + s : s;
  if (pr.has_mask) shapes.inputs[kMask] = Shape{b, total};
  if (pr.has_sinks) shapes.inputs[kSinks] = Shape{pr.q_heads};
  Attributes a;
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

void fill_plan_info(const Plan& plan, OnnxAttnGqaPlanInfo* out) {
  if (out == nullptr) return;
  std::memset(out, 0, sizeof *out);
  fill_info(plan.launch, &out->attention);
  const sdpa::Params& a = plan.attention;
  copy3(a.q_strides, out->q_strides);
  copy3(a.k_strides, out->k_strides);
  copy3(a.v_strides, out->v_strides);
  copy3(a.y_strides, out->y_strides);
  out->kv_len = a.kv_len;
  out->query_offset = a.structure.query_offset;
  for (int i = 0; i < 4; ++i) out->mask_strides[i] = a.mask_strides[size_t(i)];
  out->per_batch = plan.per_batch ? 1 : 0;
  out->present_in_scratch = plan.present_in_scratch ? 1 : 0;
  out->rotate_queries = plan.rotate_queries ? 1 : 0;
  out->rotated_q_offset = int64_t(plan.rotated_q_offset);
  out->sinks = plan.sinks ? 1 : 0;
  out->lse_offset = int64_t(plan.lse_offset);
  out->rotate_chunks = plan.rotate_chunks;
  out->rotary_chunks = plan.rotary_chunks;
  out->rotate_blocks = plan.rotate_blocks;
  out->append_key_chunks = plan.append_key_chunks;
  out->append_rotary_chunks = plan.append_rotary_chunks;
  out->append_value_chunks = plan.append_value_chunks;
  out->append_chunk_blocks = plan.append_chunk_blocks;
  out->joint_new_tokens = plan.joint_new_tokens ? 1 : 0;
  out->split_counters_zeroed_ahead = plan.launch.split_counters_zeroed_ahead ? 1 : 0;
  out->append_rows = plan.append_rows;
  out->append_blocks = plan.append_blocks;
  out->lengths_offset = int64_t(plan.lengths_offset);
  out->attention_offset = int64_t(plan.attention_offset);
  out->present_key_offset = int64_t(plan.present_key_offset);
  out->present_value_offset = int64_t(plan.present_value_offset);
  out->scratch_bytes = int64_t(plan.scratch_bytes);
}

#ifdef ONNXATTN_WITH_CUDA
template <typename T>
int run_for_test(const Params& p, const OnnxAttnGqaTensors& in, const Request& request, void* scratch,
                 size_t scratch_bytes, void* stream, OnnxAttnGqaPlanInfo* info) {
  Tensors<T> t;
  t.query = static_cast<const T*>(in.query);
  t.key = static_cast<const T*>(in.key);
  t.value = static_cast<const T*>(in.value);
  t.past_key = static_cast<const T*>(in.past_key);
  t.past_value = static_cast<const T*>(in.past_value);
  t.past_lengths = in.past_lengths;
  t.position_ids = in.position_ids;
  t.q_norm_weight = static_cast<const T*>(in.q_norm_weight);
  t.k_norm_weight = static_cast<const T*>(in.k_norm_weight);
  t.inv_freq = in.inv_freq;
  t.attention_mask = in.attention_mask;
  t.output = static_cast<T*>(in.output);
  t.present_key = static_cast<T*>(in.present_key);
  t.present_value = static_cast<T*>(in.present_value);
  t.sinks = static_cast<const T*>(in.sinks);
  const bool present_outputs = t.present_key != nullptr && t.present_value != nullptr;
  const Plan plan = make_plan(p, sdpa::cuda::dtype_of<T>(), sdpa::cuda::device_info(sdpa::cuda::current_device()),
                              request, aligned16(t), present_outputs, new_tokens_aligned16(t));
  fill_plan_info(plan, info);
  if (plan.scratch_bytes > scratch_bytes) return 2;  // the caller allocates plan.scratch_bytes and calls again
  run(p, t, plan, stream, scratch, scratch_bytes);
  return 0;
}
#endif

}  // namespace
}  // namespace onnxattn::gqa::cuda

extern "C" {

// The plan of `problem` on a described device. `aligned16`: the pointers the caller will pass (key and value
// included) are 16-byte aligned; `present_outputs`: the caller provides present buffers. Returns 0, or 1 with a
// message in err.
ONNXATTN_EXPORT int OnnxAttnGqaCudaPlan(const OnnxAttnGqaProblem* problem, const OnnxAttnSdpaDevice* device,
                                        int32_t path, int32_t kernel, int32_t aligned16, int32_t present_outputs,
                                        OnnxAttnGqaPlanInfo* out, char* err, size_t err_len) {
  using namespace onnxattn::gqa::cuda;
  return guarded(err, err_len, [&] {
    const onnxattn::gqa::Params p = params_from(*problem);
    const Plan plan = make_plan(p, dtype_from_onnx(problem->dtype, onnxattn::gqa::kOpName), device_from(*device),
                                request_from(path, kernel, onnxattn::gqa::kOpName), aligned16 != 0,
                                present_outputs != 0, /*new_tokens_aligned16=*/aligned16 != 0);
    fill_plan_info(plan, out);
    return 0;
  });
}

// Runs GroupQueryAttention's CUDA kernels on device pointers, on `stream` (a cudaStream_t; null = the
// legacy default stream), without synchronising. Returns 0 when enqueued; 2 when `scratch_bytes` is less
// than the plan needs (info->scratch_bytes; nothing ran: allocate and call again); 1 with a message in
// err on error. path/kernel force the attention core's plan as in OnnxAttnSdpaCudaPlan.
ONNXATTN_EXPORT int OnnxAttnGqaCudaRunForTest(const OnnxAttnGqaProblem* problem, const OnnxAttnGqaTensors* tensors,
                                              int32_t path, int32_t kernel, void* scratch, size_t scratch_bytes,
                                              void* stream, OnnxAttnGqaPlanInfo* info, char* err, size_t err_len) {
  using namespace onnxattn::gqa::cuda;
#ifdef ONNXATTN_WITH_CUDA
  return guarded(err, err_len, [&] {
    const onnxattn::gqa::Params p = params_from(*problem);
    const Request request = request_from(path, kernel, onnxattn::gqa::kOpName);
    return onnxattn::with_element_type(problem->dtype, onnxattn::gqa::kOpName, [&](auto tag) {
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
