#pragma once
// Device half of the Q-load hook (sdpa/cuda_query_prep.h): QK-norm and RoPE of one head row, done by one
// warp in float32, and its application to a Q tile already in shared memory. Also used for the new keys of
// GroupQueryAttention (gqa/cuda_kernel.cu), so queries and keys turn by exactly the same arithmetic.
#include "sdpa/cuda_device.cuh"

namespace onnxattn::sdpa::cuda {

// The angle of rotary pair i at a position: (cos, sin), each times attention_scaling. One definition for every
// kernel that turns rows (this Q-load hook, GroupQueryAttention's new-token and query kernels), so they agree.
template <typename TW>
__device__ __forceinline__ float2 rope_angle(const RowPrep<TW>& prep, int i, float position_f) {
  const float inv_freq = prep.inv_freq != nullptr
                             ? prep.inv_freq[i]
                             : expf(-((float(2 * i) / float(prep.rotary_dim)) * prep.log_base));
  float sin_v, cos_v;
  sincosf(position_f * inv_freq, &sin_v, &cos_v);
  return make_float2(cos_v * prep.attention_scaling, sin_v * prep.attention_scaling);
}

// The pair (x1, x2) turned by `angle` (cos, sin). Every product and sum is rounded on its own: the compiler
// may contract such expressions into FMAs differently in different kernels, and the kernels must give the
// same bits (tests/gpu: the rotated queries against the fused Q load).
__device__ __forceinline__ float2 rope_turn(float x1, float x2, float2 angle) {
  return make_float2(__fsub_rn(__fmul_rn(x1, angle.x), __fmul_rn(x2, angle.y)),
                     __fadd_rn(__fmul_rn(x2, angle.x), __fmul_rn(x1, angle.y)));
}

// Warp-cooperative: all 32 lanes call it with the same arguments. dst[d] = prep(src)[d] * post_scale for
// d < dim. src and dst may be the same row (in place): every lane reads for the norm first, then each
// element is read and written by exactly one lane, with __syncwarp between the phases. Arithmetic follows
// the CPU kernel (gqa/cpu_kernel.cc): sum of squares, 1 / sqrt(mean + eps), x * inv * w, then the
// rotation with float32 angle = float(position) * inv_freq and accurate sincosf (no fast-math), rope_turn.
template <typename TW, typename TS, typename TD>
__device__ __forceinline__ void prepare_row(const TS* src, TD* dst, int dim, const RowPrep<TW>& prep,
                                            int64_t position, float post_scale, int lane) {
  const bool norm = prep.norm_weight != nullptr;
  float inv_norm = 1.0f;
  if (norm) {
    float sum = 0.0f;
    for (int d = lane; d < dim; d += 32) {
      const float x = to_float(src[d]);
      sum += x * x;
    }
    inv_norm = 1.0f / sqrtf(warp_sum(sum) / float(dim) + prep.norm_epsilon);
  }
  __syncwarp();  // every lane has read the row before any lane overwrites it
  auto normed = [&](int d) {
    const float x = to_float(src[d]);
    return norm ? x * inv_norm * to_float(prep.norm_weight[d]) : x;
  };
  const int half = prep.rotary_dim / 2;
  const float position_f = float(position);
  for (int i = lane; i < half; i += 32) {
    const int first = prep.interleaved ? 2 * i : i;
    const int second = prep.interleaved ? 2 * i + 1 : i + half;
    const float2 turned = rope_turn(normed(first), normed(second), rope_angle(prep, i, position_f));
    dst[first] = from_float<TD>(turned.x * post_scale);
    dst[second] = from_float<TD>(turned.y * post_scale);
  }
  for (int d = prep.rotary_dim + lane; d < dim; d += 32) dst[d] = from_float<TD>(normed(d) * post_scale);
  __syncwarp();
}

// Applies a.prep to the rows of a Q tile in shared memory: tile row `row` holds packed row row_begin + row
// (rows at or past row_end are padding and stay as they are), `stride` elements apart. One warp per row;
// the caller synchronises the CTA before and after.
template <typename T, typename E>
__device__ __forceinline__ void prepare_query_tile(const KernelArgs<T>& a, const SeqView& seq, int64_t batch,
                                                   int64_t kv_head, int64_t row_begin, int64_t row_end, E* tile,
                                                   int stride, int rows, float post_scale) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int row = warp; row < rows; row += tiles::kWarps) {
    const int64_t r = row_begin + row;
    if (r >= row_end) break;  // warp-uniform
    const RowRef ref = row_ref(a, batch, kv_head, r);
    // position_ids: [B, Sq], or [T] (packed rows) in a ragged batch
    const int64_t at = a.q_starts != nullptr ? seq.q_start + ref.query : batch * a.q_len + ref.query;
    const int64_t position = a.prep.position_ids != nullptr ? a.prep.position_ids[at]
                                                            : seq.structure.query_offset + ref.query;
    E* const x = tile + int64_t(row) * stride;
    prepare_row(x, x, a.head_dim, a.prep.row, position, post_scale, lane);
  }
}

}  // namespace onnxattn::sdpa::cuda
