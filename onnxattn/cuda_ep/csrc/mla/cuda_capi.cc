// C entry points for tests (ctypes) of MultiHeadLatentAttention on CUDA, no onnxruntime involved:
//  - OnnxAttnMlaCudaPlan: the plan (splits, chunking, scratch), pure host code built in every
//    configuration (tests/test_mla_cuda_host.py);
//  - OnnxAttnMlaCudaRunForTest (CUDA builds only): the whole op on raw device pointers such as torch CUDA
//    tensors' (tests/gpu/test_mla_cuda.py) on a given stream: with its own scratch and synchronised, or
//    with the caller's scratch and only enqueued (benchmarks/bench_mla_cuda.py);
//  - OnnxAttnMlaCudaScratchBytes (CUDA builds only): the scratch the current device's plan needs.
// The integer and float parameter arrays and the pointer array are documented at mla_problem below and
// mirrored by tests/gpu/mla_cuda_lib.py; change both together.
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#include "common/element_type.h"
#include "common/errors.h"
#include "common/half.h"
#include "mla/cuda_plan.h"
#include "mla/params.h"
#ifdef ONNXATTN_WITH_CUDA
#include "mla/cuda_kernel.h"
#endif

namespace onnxattn::mla::cuda {
namespace {

// ints: batch, seq, heads, rank, nope_dim, rope_dim, v_head_dim, past (P, or the buffer length M),
//       mode (0 none, 1 concatenation, 2 shared buffer), causal, window, rope_interleaved, cache_rank,
//       has_position_ids, has_inv_freq, index_count (K of key_indices [B, S, K]; -1: no key_indices)
// floats: softcap, scale, rope_base, rope_attention_scaling
Params mla_problem(const int64_t* n, const float* f) {
  const int64_t b = n[0], s = n[1], h = n[2], r = n[3], dn = n[4], dr = n[5], dv = n[6], past = n[7], mode = n[8];
  Shapes shapes;
  shapes.inputs[kQuery] = Shape{b, s, h * (dn + dr)};
  shapes.inputs[kLatent] = Shape{b, s, r};
  shapes.inputs[kKRope] = Shape{b, s, dr};
  shapes.inputs[kWUk] = Shape{h, r, dn};
  shapes.inputs[kWUv] = Shape{h, r, dv};
  if (mode != 0) {
    shapes.inputs[kPastLatent] = n[12] == 4 ? Shape{b, 1, past, r} : Shape{b, past, r};
    shapes.inputs[kPastKRope] = n[12] == 4 ? Shape{b, 1, past, dr} : Shape{b, past, dr};
  }
  if (mode == 2) shapes.inputs[kPastLengths] = Shape{b};
  if (n[13]) shapes.inputs[kPositionIds] = Shape{b, s};
  if (n[14]) shapes.inputs[kInvFreq] = Shape{dr / 2};
  if (n[15] >= 0) shapes.inputs[kKeyIndices] = Shape{b, s, n[15]};
  Attributes a;
  a.num_heads = h;
  a.causal = n[9];
  a.window = n[10];
  a.rope_interleaved = n[11];
  a.softcap = f[0];
  a.scale = f[1];
  a.rope_base = f[2];
  a.rope_attention_scaling = f[3];
  return make_params(shapes, a);
}

thread_local std::string last_error;

template <typename F>
const char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    last_error = e.what();
    return last_error.c_str();
  }
}

}  // namespace
}  // namespace onnxattn::mla::cuda

extern "C" {

// out: splits, chunk_tokens, attention_smem, present_in_scratch, scratch_bytes, kernel (0 simt, 1 mma),
// head_blocks, list_padded (key_indices: the sort's width; 0 without). The kernel request comes from ONNXATTN_MLA_CUDA_KERNEL. Returns an error message or null.
__attribute__((visibility("default"))) const char* OnnxAttnMlaCudaPlan(const int64_t* ints, const float* floats,
                                                                       int32_t sm_count, int32_t element_bytes,
                                                                       int32_t present_outputs, int64_t* out) {
  using namespace onnxattn::mla::cuda;
  return guarded([&] {
    const Plan plan = make_plan(mla_problem(ints, floats), sm_count, size_t(element_bytes), present_outputs != 0);
    out[0] = plan.splits;
    out[1] = plan.chunk_tokens;
    out[2] = int64_t(plan.attention_smem);
    out[3] = plan.present_in_scratch ? 1 : 0;
    out[4] = int64_t(plan.scratch_bytes);
    out[5] = plan.kernel == Kernel::kMma ? 1 : 0;
    out[6] = plan.head_blocks;
    out[7] = plan.list_padded;
  });
}

#ifdef ONNXATTN_WITH_CUDA
// ptrs: query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids, rope_inv_freq,
// output, present_latent, present_k_rope, key_indices (device pointers; null where absent). dtype: ONNX element type
// (1, 10, 16). stream: a cudaStream_t (null: the default stream). scratch null: its own, synchronised.
__attribute__((visibility("default"))) const char* OnnxAttnMlaCudaRunForTest(const int64_t* ints, const float* floats,
                                                                             void* const* ptrs, int32_t dtype,
                                                                             void* stream, void* scratch,
                                                                             int64_t scratch_bytes) {
  using namespace onnxattn;
  using namespace onnxattn::mla::cuda;
  return guarded([&] {
    const mla::Params p = mla_problem(ints, floats);
    auto go = [&](auto tag) {
      using T = decltype(tag);
      mla::Tensors<T> t;
      t.query = static_cast<const T*>(ptrs[0]);
      t.latent = static_cast<const T*>(ptrs[1]);
      t.k_rope = static_cast<const T*>(ptrs[2]);
      t.w_uk = static_cast<const T*>(ptrs[3]);
      t.w_uv = static_cast<const T*>(ptrs[4]);
      t.past_latent = static_cast<const T*>(ptrs[5]);
      t.past_k_rope = static_cast<const T*>(ptrs[6]);
      t.past_lengths = static_cast<const int64_t*>(ptrs[7]);
      t.position_ids = static_cast<const int64_t*>(ptrs[8]);
      t.inv_freq = static_cast<const float*>(ptrs[9]);
      t.output = static_cast<T*>(ptrs[10]);
      t.present_latent = static_cast<T*>(ptrs[11]);
      t.present_k_rope = static_cast<T*>(ptrs[12]);
      t.key_indices = static_cast<const int64_t*>(ptrs[13]);
      run_for_test(p, t, stream, scratch, size_t(scratch_bytes));
    };
    onnxattn::with_element_type(dtype, "OnnxAttnMlaCudaRunForTest", go);
  });
}

__attribute__((visibility("default"))) const char* OnnxAttnMlaCudaScratchBytes(const int64_t* ints, const float* floats,
                                                                               int32_t element_bytes,
                                                                               int32_t present_outputs, int64_t* out) {
  using namespace onnxattn::mla::cuda;
  return guarded([&] {
    *out = int64_t(plan_for_current_device(mla_problem(ints, floats), size_t(element_bytes), present_outputs != 0)
                       .scratch_bytes);
  });
}
#endif

}  // extern "C"
