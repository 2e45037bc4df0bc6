// GroupQueryAttention on CUDA: the past copy, the new-token kernel, then the shared attention core.
//
// Why the new keys get their own (tiny) kernel while the queries are prepared inside the attention
// kernels' Q load: every new K/V row must land in the cache anyway (it is an output, and later steps read
// it), and in one call many attention CTAs read each new key — the CTAs of every query tile and every
// key split of its KV head. Preparing K inside those CTAs would either repeat the work per CTA and race on
// the cache write, or need a grid-wide barrier. A separate launch of B*S*Hkv warps writes each row once,
// and stream order makes the rows visible to the attention. A query row, by contrast, is read by exactly
// one attention CTA per split, so its QK-norm and RoPE cost nothing extra in the Q load and need no
// float32 query buffer. In decode this makes two launches (three with split-KV's combine), none of which
// waits on the host.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>

#include "common/cuda_errors.h"
#include "common/errors.h"
#include "common/sinks_cuda.cuh"
#include "gqa/cuda_kernel.h"
#include "sdpa/cuda_query_prep.cuh"

namespace onnxattn::gqa::cuda {
namespace {

using sdpa::cuda::QueryPrep;
using sdpa::cuda::RowPrep;

template <typename T>
struct AppendArgs {
  const T* key;    // [B, S, Hkv*D]
  const T* value;  // [B, S, Hkv*Dv]
  T* present_key;  // [B, Hkv, total, D]
  T* present_value;
  const int64_t* past_lengths;  // shared-buffer mode [B], else null (every sequence starts at `past`)
  const int64_t* position_ids;  // [B, S] or null
  int64_t* lengths;             // shared-buffer mode: out [2][B] (query offsets, valid lengths)
  T* output;                    // [B, S, Hq*Dv]: NaN rows for sequences with out-of-range past_lengths
  int64_t batch, seq, kv_heads, total, past, output_width;
  int head_dim, v_head_dim;
  RowPrep<T> key_prep;
};

// One warp per new (token, KV head) row, rows ordered like the key input so a block reads contiguous
// memory: QK-norm and RoPE of K in float32, K and V written to slot past_b + s of the cache.
template <typename T>
__global__ void __launch_bounds__(32 * kAppendRowsPerBlock) append_kernel(const AppendArgs<T> a) {
  // A decode launched as a programmatic dependent (ONNXATTN_CUDA_PDL) may start now: it waits for this grid
  // to complete before its first read. A no-op otherwise.
  sdpa::cuda::allow_dependent_grids();
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kAppendRowsPerBlock + threadIdx.x / 32;
  if (row >= a.batch * a.seq * a.kv_heads) return;  // whole warps
  const int64_t h = row % a.kv_heads, token = row / a.kv_heads;
  const int64_t b = token / a.seq, s = token % a.seq;
  const int64_t start = a.past_lengths != nullptr ? a.past_lengths[b] : a.past;
  // The CPU kernel rejects such values with an error; here that would need a host synchronisation.
  const bool valid = start >= 0 && start <= a.total - a.seq;
  if (a.lengths != nullptr && s == 0 && h == 0 && lane == 0) {
    a.lengths[b] = valid ? start : 0;
    a.lengths[a.batch + b] = valid ? start + a.seq : -1;  // -1: the attention skips the sequence
  }
  if (!valid) {
    if (h == 0) {
      T* const out = a.output + token * a.output_width;
      for (int64_t e = lane; e < a.output_width; e += 32) out[e] = from_float<T>(__int_as_float(0x7fc00000));
    }
    return;
  }
  const int64_t slot = start + s;
  const int64_t position = a.position_ids != nullptr ? a.position_ids[token] : slot;
  const int64_t cache_row = (b * a.kv_heads + h) * a.total + slot;
  sdpa::cuda::prepare_row(a.key + row * a.head_dim, a.present_key + cache_row * a.head_dim, a.head_dim, a.key_prep,
                          position, 1.0f, lane);
  const T* const v_src = a.value + row * a.v_head_dim;
  T* const v_dst = a.present_value + cache_row * a.v_head_dim;
  const int bytes = a.v_head_dim * int(sizeof(T));
  if (bytes % 16 == 0 && ((reinterpret_cast<uintptr_t>(v_src) | reinterpret_cast<uintptr_t>(v_dst)) & 15u) == 0) {
    const uint4* const src = reinterpret_cast<const uint4*>(v_src);
    uint4* const dst = reinterpret_cast<uint4*>(v_dst);
    for (int c = lane; c < bytes / 16; c += 32) dst[c] = src[c];
  } else {
    for (int e = lane; e < a.v_head_dim; e += 32) v_dst[e] = v_src[e];
  }
}

// Queries prepared ahead of the core (always for the wgmma kernel; for mma.sync with
// ONNXATTN_GQA_CUDA_QUERY=rotated). The per-row kernel (QK-norm, or rows the chunked kernel below cannot take):
// one warp per query (token, head) row, prepared into scratch exactly as the core's Q load would prepare it
// (sdpa/cuda_query_prep.cuh: 16-bit in, float32 arithmetic, 16-bit out) at the query's position. Rows of a
// sequence the new-token kernel found invalid are left alone (the core skips that sequence).
template <typename T>
struct RotateArgs {
  const T* query;  // [B, S, Hq*D]
  T* rotated;      // the same layout
  const int64_t* position_ids;  // [B, S] or null
  const int64_t* lengths;       // shared-buffer mode: [2][B] from the new-token kernel, else null
  int64_t batch, seq, q_heads, past;
  int head_dim;
  RowPrep<T> prep;
};

template <typename T>
__global__ void __launch_bounds__(32 * kAppendRowsPerBlock) rotate_queries_kernel(const RotateArgs<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kAppendRowsPerBlock + threadIdx.x / 32;
  if (row >= a.batch * a.seq * a.q_heads) return;  // whole warps
  const int64_t token = row / a.q_heads, b = token / a.seq, i = token % a.seq;
  if (a.lengths != nullptr && a.lengths[a.batch + b] < 0) return;
  const int64_t start = a.lengths != nullptr ? a.lengths[b] : a.past;
  const int64_t position = a.position_ids != nullptr ? a.position_ids[token] : start + i;
  sdpa::cuda::prepare_row(a.query + row * a.head_dim, a.rotated + row * a.head_dim, a.head_dim, a.prep, position, 1.0f,
                          lane);
}

// ONNXATTN_GQA_CUDA_ROTATION=chunks, without QK-norm (plan.rotate_chunks > 0): one CTA per token. Its threads
// compute the token's rotary angles once into shared memory, then each turns (or copies) 16-byte chunks of the
// token's rows, every head's. Why: on the H200 (82087dc, S = 2048, Nsight Compute) the per-row kernel above
// executed ~527 instructions a row at 3.5 IPC (issue-bound, 52 us under the profiler for 34 MB): every head
// recomputed every angle (accurate expf and sincosf), 32 times per token here. A first chunked kernel (a thread per
// chunk of four heads) kept 8 computations per token but ran 12 of 32 lanes a warp, at 30% occupancy: no faster.
// The same arithmetic as prepare_row (rope_angle, rope_turn, the same conversions), so the same bits.
template <typename T>
union Chunk {
  uint4 bits;
  T e[16 / sizeof(T)];
};

// The angles of a token's rotary pairs at position_f, once per CTA, in `angles`; the barrier publishes them.
template <typename T>
__device__ __forceinline__ void token_angles(const RowPrep<T>& prep, float position_f, float2* angles) {
  for (int i = threadIdx.x; i < prep.rotary_dim / 2; i += blockDim.x) {
    angles[i] = sdpa::cuda::rope_angle(prep, i, position_f);
  }
  __syncthreads();
}

// Chunk `chunk` of one row from src to dst: the rotated chunks (pairs inside a chunk when interleaved, else chunk c of
// the first half with the chunk rotary_dim / 2 elements further on) or, from rotary_chunks on, a channel chunk past
// rotary_dim copied as raw bits (where the per-row kernels pass such channels through float, a NaN comes out
// canonical, so only NaN payloads in the inputs can differ between the two).
template <typename T>
__device__ __forceinline__ void turn_row_chunk(const uint4* src, uint4* dst, int chunk, int rotary_chunks,
                                               const RowPrep<T>& prep, const float2* angles) {
  static_assert(sizeof(T) == 2, "16-bit rows");
  constexpr int kVec = 16 / sizeof(T);
  const int rotary_dim = prep.rotary_dim;
  if (chunk >= rotary_chunks) {
    const int c = rotary_dim / kVec + (chunk - rotary_chunks);
    dst[c] = src[c];
    return;
  }
  if (prep.interleaved) {  // pairs (2p, 2p + 1) inside the chunk: kVec / 2 of them
    Chunk<T> x, y;
    x.bits = src[chunk];
#pragma unroll
    for (int k = 0; k < kVec / 2; ++k) {
      const float2 turned =
          sdpa::cuda::rope_turn(to_float(x.e[2 * k]), to_float(x.e[2 * k + 1]), angles[chunk * (kVec / 2) + k]);
      y.e[2 * k] = from_float<T>(turned.x);
      y.e[2 * k + 1] = from_float<T>(turned.y);
    }
    dst[chunk] = y.bits;
    return;
  }
  const int second = chunk + rotary_dim / 2 / kVec;
  Chunk<T> x1, x2, y1, y2;
  x1.bits = src[chunk];
  x2.bits = src[second];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const float2 turned = sdpa::cuda::rope_turn(to_float(x1.e[k]), to_float(x2.e[k]), angles[chunk * kVec + k]);
    y1.e[k] = from_float<T>(turned.x);
    y2.e[k] = from_float<T>(turned.y);
  }
  dst[chunk] = y1.bits;
  dst[second] = y2.bits;
}

// Token `token`'s query rows turned into the rotated buffer at `angles`: row_chunks chunks of each of its Hq rows, the
// CTA's threads an item at a time.
template <typename T>
__device__ __forceinline__ void turn_query_token(const RotateArgs<T>& a, int64_t token, int rotary_chunks,
                                                 int row_chunks, const float2* angles) {
  constexpr int kVec = 16 / sizeof(T);
  const int row_stride = a.head_dim / kVec;  // in chunks
  const uint4* const src = reinterpret_cast<const uint4*>(a.query) + token * a.q_heads * row_stride;
  uint4* const dst = reinterpret_cast<uint4*>(a.rotated) + token * a.q_heads * row_stride;
  // 32-bit item indices (the launcher checks that a token's items fit): a 64-bit division per item was part of the
  // new-token kernel's cost (Nsight Compute, H200, 2c9a48e).
  const int items = int(a.q_heads) * row_chunks;
  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    const int h = item / row_chunks;
    turn_row_chunk(src + h * row_stride, dst + h * row_stride, item - h * row_chunks, rotary_chunks, a.prep, angles);
  }
}

// The queries: a CTA per token (grid B * S), row_chunks chunks of each of its Hq rows.
template <typename T>
__global__ void __launch_bounds__(kRotateThreadsPerBlock)
    rotate_query_tokens_kernel(const RotateArgs<T> a, const int rotary_chunks, const int row_chunks) {
  __shared__ float2 angles[kMaxRotaryPairs];
  const int64_t token = blockIdx.x, b = token / a.seq, i = token % a.seq;
  if (a.lengths != nullptr && a.lengths[a.batch + b] < 0) return;  // the whole CTA: a skipped sequence
  const int64_t start = a.lengths != nullptr ? a.lengths[b] : a.past;
  token_angles(a.prep, float(a.position_ids != nullptr ? a.position_ids[token] : start + i), angles);
  turn_query_token(a, token, rotary_chunks, row_chunks, angles);
}

// The new-token kernels by tokens' first step, for token `token` (sequence b, new token s): false where
// past_lengths[b] is out of range (then its output row is NaN, written here), else its cache slot in `slot`. As
// append_kernel, also the sequence's lengths for the attention (shared-buffer mode).
template <typename T>
__device__ __forceinline__ bool new_token_slot(const AppendArgs<T>& a, int64_t token, int64_t b, int64_t s,
                                               int64_t& slot) {
  const int64_t start = a.past_lengths != nullptr ? a.past_lengths[b] : a.past;
  const bool valid = start >= 0 && start <= a.total - a.seq;  // as append_kernel
  if (a.lengths != nullptr && s == 0 && threadIdx.x == 0) {
    a.lengths[b] = valid ? start : 0;
    a.lengths[a.batch + b] = valid ? start + a.seq : -1;
  }
  if (!valid) {  // the whole CTA: the token's output row NaN
    T* const out = a.output + token * a.output_width;
    const T nan = from_float<T>(__int_as_float(0x7fc00000));
    for (int64_t e = threadIdx.x; e < a.output_width; e += blockDim.x) out[e] = nan;
    return false;
  }
  slot = start + s;
  return true;
}

// Token `token`'s key rows turned at `angles` into cache slot `slot` of each KV head (batch b), its value rows copied
// there, the CTA's threads an item at a time.
template <typename T>
__device__ __forceinline__ void write_new_token(const AppendArgs<T>& a, int64_t token, int64_t b, int64_t slot,
                                                int key_chunks, int rotary_chunks, int value_chunks,
                                                const float2* angles) {
  constexpr int kVec = 16 / sizeof(T);
  const int key_stride = a.head_dim / kVec, value_stride = a.v_head_dim / kVec;  // rows, in chunks
  const uint4* const key = reinterpret_cast<const uint4*>(a.key) + token * a.kv_heads * key_stride;
  const uint4* const value = reinterpret_cast<const uint4*>(a.value) + token * a.kv_heads * value_stride;
  // The token's slot in head 0's cache rows; head h's is a.total rows further per head.
  const int64_t first_row = b * a.kv_heads * a.total + slot;
  uint4* const key_rows = reinterpret_cast<uint4*>(a.present_key) + first_row * key_stride;
  uint4* const value_rows = reinterpret_cast<uint4*>(a.present_value) + first_row * value_stride;
  const int64_t key_head_stride = a.total * key_stride, value_head_stride = a.total * value_stride;
  // Every head's key chunks first, then every head's value chunks, so a warp runs one kind: with the kinds mixed
  // within a head's items a warp ran 12.6 of 32 lanes, and divided 64-bit item indices (Nsight Compute, H200,
  // 2c9a48e: 19.1 us at S = 2048 where the per-row kernel took 15.5). 32-bit items (the launcher checks they fit).
  const int heads = int(a.kv_heads), key_items = heads * key_chunks, items = key_items + heads * value_chunks;
  for (int item = threadIdx.x; item < items; item += blockDim.x) {
    if (item < key_items) {
      const int h = item / key_chunks;
      turn_row_chunk(key + h * key_stride, key_rows + h * key_head_stride, item - h * key_chunks, rotary_chunks,
                     a.key_prep, angles);
    } else {
      const int h = (item - key_items) / value_chunks, c = item - key_items - h * value_chunks;
      value_rows[h * value_head_stride + c] = value[h * value_stride + c];
    }
  }
}

// The new-token kernel by tokens (ONNXATTN_GQA_CUDA_ROTATION=chunks, without K-norm; plan.append_key_chunks > 0): a
// CTA per new token, the key's chunks of each KV head turned at the key's position into its cache slot, then the
// value's copied. The same arithmetic as append_kernel's prepare_row, so the same cache bits; its lengths and NaN
// rows likewise. (The per-row kernel: 15.3 us at S = 2048 for ~16 MB on the H200 at 82087dc.)
template <typename T>
__global__ void __launch_bounds__(kRotateThreadsPerBlock)
    append_tokens_kernel(const AppendArgs<T> a, const int key_chunks, const int rotary_chunks, const int value_chunks) {
  __shared__ float2 angles[kMaxRotaryPairs];
  sdpa::cuda::allow_dependent_grids();  // as append_kernel
  const int64_t token = blockIdx.x, b = token / a.seq, s = token % a.seq;
  int64_t slot;
  if (!new_token_slot(a, token, b, s, slot)) return;
  token_angles(a.key_prep, float(a.position_ids != nullptr ? a.position_ids[token] : slot), angles);
  write_new_token(a, token, b, slot, key_chunks, rotary_chunks, value_chunks, angles);
}

// ONNXATTN_GQA_CUDA_ROTATION=joint (plan.joint_new_tokens): the two kernels above in one, a CTA per token: its angles
// once (the query's position is the key's, start + s or position_ids, and both rows take the same frequencies and
// scaling: rope_angle reads nothing else), its query rows turned into the rotated buffer, then its key and value rows
// written. The same calls with the same angles, so the same bits as the two launches. A token of an invalid sequence
// leaves its query rows alone, as the query kernel does (the core skips the sequence).
template <typename T>
__global__ void __launch_bounds__(kRotateThreadsPerBlock)
    joint_new_tokens_kernel(const AppendArgs<T> a, const RotateArgs<T> r, const int key_chunks,
                            const int key_rotary_chunks, const int value_chunks, const int query_rotary_chunks,
                            const int query_chunks, uint32_t* const split_counters, const int64_t split_counter_count) {
  __shared__ float2 angles[kMaxRotaryPairs];
  sdpa::cuda::allow_dependent_grids();  // as append_kernel
  // The core's fused-merge counters (Plan::launch.split_counters_zeroed_ahead; null: none), before any exit: the
  // merge counts each row tile's splits from 0, and this kernel completes before the core reads them.
  if (split_counters != nullptr && blockIdx.x == 0) {
    for (int64_t i = threadIdx.x; i < split_counter_count; i += blockDim.x) split_counters[i] = 0;
  }
  const int64_t token = blockIdx.x, b = token / a.seq, s = token % a.seq;
  int64_t slot;
  if (!new_token_slot(a, token, b, s, slot)) return;
  token_angles(a.key_prep, float(a.position_ids != nullptr ? a.position_ids[token] : slot), angles);
  turn_query_token(r, token, query_rotary_chunks, query_chunks, angles);
  write_new_token(a, token, b, slot, key_chunks, key_rotary_chunks, value_chunks, angles);
}

// The kernels by token index a token's items in 32 bits and take a CTA per token: what their launchers check.
void check_query_items(int64_t q_heads, const Plan& plan) {
  if (plan.rotate_blocks > int64_t(0x7fffffff)) throw std::runtime_error(str_cat(kOpName, ": too many query rows"));
  if (q_heads * plan.rotate_chunks > int64_t(0x7fffffff)) {
    throw std::runtime_error(str_cat(kOpName, ": too many query heads"));
  }
}
void check_new_token_items(int64_t kv_heads, const Plan& plan) {
  if (plan.append_chunk_blocks > int64_t(0x7fffffff) ||
      kv_heads * (plan.append_key_chunks + plan.append_value_chunks) > int64_t(0x7fffffff)) {
    throw std::runtime_error(str_cat(kOpName, ": too many new tokens or KV heads"));
  }
}

template <typename T>
void launch_query_chunks(const RotateArgs<T>& r, const Plan& plan, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    check_query_items(r.q_heads, plan);
    rotate_query_tokens_kernel<T><<<unsigned(plan.rotate_blocks), kRotateThreadsPerBlock, 0, stream>>>(
        r, plan.rotary_chunks, plan.rotate_chunks);
  } else {
    throw std::runtime_error(str_cat(kOpName, ": the chunked query kernel takes 16-bit rows (plan/run mismatch)"));
  }
}

template <typename T>
void launch_append_chunks(const AppendArgs<T>& a, const Plan& plan, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    check_new_token_items(a.kv_heads, plan);
    append_tokens_kernel<T><<<unsigned(plan.append_chunk_blocks), kRotateThreadsPerBlock, 0, stream>>>(
        a, plan.append_key_chunks, plan.append_rotary_chunks, plan.append_value_chunks);
  } else {
    throw std::runtime_error(str_cat(kOpName, ": the chunked new-token kernel takes 16-bit rows (plan/run mismatch)"));
  }
}

// `attention_scratch`: the core's scratch, whose fused-merge counters the kernel zeroes where the plan says so.
template <typename T>
void launch_joint_chunks(const AppendArgs<T>& a, const RotateArgs<T>& r, const Plan& plan,
                         unsigned char* attention_scratch, cudaStream_t stream) {
  if constexpr (sizeof(T) == 2) {
    check_query_items(r.q_heads, plan);
    check_new_token_items(a.kv_heads, plan);
    if (plan.rotate_blocks != plan.append_chunk_blocks) {
      throw std::runtime_error(str_cat(kOpName, ": the joint kernel's tokens differ (plan/run mismatch)"));
    }
    const bool zero = plan.launch.split_counters_zeroed_ahead;
    uint32_t* const counters =
        zero ? reinterpret_cast<uint32_t*>(attention_scratch + plan.launch.split_counters_offset) : nullptr;
    joint_new_tokens_kernel<T><<<unsigned(plan.append_chunk_blocks), kRotateThreadsPerBlock, 0, stream>>>(
        a, r, plan.append_key_chunks, plan.append_rotary_chunks, plan.append_value_chunks, plan.rotary_chunks,
        plan.rotate_chunks, counters, zero ? plan.launch.split_counters : 0);
  } else {
    throw std::runtime_error(str_cat(kOpName, ": the joint new-token kernel takes 16-bit rows (plan/run mismatch)"));
  }
}

void check_cuda(cudaError_t status, const char* what) { onnxattn::check_cuda(status, kOpName, what); }

template <typename T>
RowPrep<T> row_prep(const Params& p, const T* norm_weight, const float* inv_freq) {
  RowPrep<T> r;
  r.norm_weight = norm_weight;
  r.norm_epsilon = p.qk_norm_epsilon;
  r.rotary_dim = p.rope ? int(p.rotary_dim) : 0;
  r.interleaved = p.rope_interleaved ? 1 : 0;
  r.inv_freq = p.has_inv_freq ? inv_freq : nullptr;
  r.log_base = std::log(p.rope_base);  // as the CPU kernel: float log, then float steps
  r.attention_scaling = p.rope_attention_scaling;
  return r;
}

// The past part of a present cache of `width` channels. Nothing when the present cache is the past
// buffer (shared buffer updated in place) or there is no past.
template <typename T>
void copy_past(const Params& p, const T* past, T* present, int64_t width, cudaStream_t stream) {
  if (past == nullptr || past == present || p.mode == CacheMode::kNone) return;
  const size_t row_bytes = size_t(width) * sizeof(T);
  if (p.mode == CacheMode::kShared) {  // the whole buffer: stale slots are outputs too
    const size_t bytes = size_t(p.batch * p.kv_heads * p.total) * row_bytes;
    if (bytes > 0) check_cuda(cudaMemcpyAsync(present, past, bytes, cudaMemcpyDeviceToDevice, stream), "copying the past");
    return;
  }
  if (p.past == 0 || p.batch * p.kv_heads == 0 || width == 0) return;
  // Concatenation: P slots of each (batch, KV head) to the front of its P + S slots.
  check_cuda(cudaMemcpy2DAsync(present, size_t(p.total) * row_bytes, past, size_t(p.past) * row_bytes,
                               size_t(p.past) * row_bytes, size_t(p.batch * p.kv_heads), cudaMemcpyDeviceToDevice,
                               stream),
             "copying the past");
}

}  // namespace

template <typename T>
void run(const Params& p, const Tensors<T>& t_in, const Plan& plan, void* stream_ptr, void* scratch, size_t scratch_bytes) {
  if (plan.scratch_bytes > 0 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes)) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA plan needs ", plan.scratch_bytes, " bytes of scratch, got ",
                                     scratch_bytes));
  }
  // An empty cache (B = 0, or no past and no new tokens) leaves nothing to write or attend: the output has
  // no rows either (S <= cache length), and onnxruntime hands empty tensors over without data.
  if (p.batch * p.kv_heads * p.total == 0) return;
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  unsigned char* const base = static_cast<unsigned char*>(scratch);
  Tensors<T> t = t_in;
  if (plan.present_in_scratch) {
    t.present_key = reinterpret_cast<T*>(base + plan.present_key_offset);
    t.present_value = reinterpret_cast<T*>(base + plan.present_value_offset);
  }
  if (t.present_key == nullptr || t.present_value == nullptr) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA kernel needs present buffers (plan/run mismatch)"));
  }
  int64_t* const lengths = plan.per_batch ? reinterpret_cast<int64_t*>(base + plan.lengths_offset) : nullptr;

  // 1. The past part of the caches (stream-ordered before the new rows land).
  copy_past(p, t.past_key, t.present_key, p.head_dim, stream);
  copy_past(p, t.past_value, t.present_value, p.v_head_dim, stream);

  // The queries' preparation: in the core's Q load, or (plan.rotate_queries) ahead of it into scratch, by a kernel of
  // its own (step 3) or with the new tokens (step 2, plan.joint_new_tokens).
  QueryPrep<T> prep;
  prep.row = row_prep<T>(p, p.q_norm ? t.q_norm_weight : nullptr, t.inv_freq);
  prep.position_ids = p.has_position_ids ? t.position_ids : nullptr;
  RotateArgs<T> r{};
  if (plan.rotate_queries) {
    r.query = t.query;
    r.rotated = reinterpret_cast<T*>(base + plan.rotated_q_offset);
    r.position_ids = prep.position_ids;
    r.lengths = lengths;
    r.batch = p.batch, r.seq = p.seq, r.q_heads = p.q_heads, r.past = p.past;
    r.head_dim = int(p.head_dim);
    r.prep = prep.row;
  }

  // 2. New keys and values into the cache; per-sequence lengths for the attention.
  if (plan.append_blocks > 0) {
    AppendArgs<T> a{};
    a.key = t.key;
    a.value = t.value;
    a.present_key = t.present_key;
    a.present_value = t.present_value;
    a.past_lengths = p.mode == CacheMode::kShared ? t.past_lengths : nullptr;
    a.position_ids = p.has_position_ids ? t.position_ids : nullptr;
    a.lengths = lengths;
    a.output = t.output;
    a.batch = p.batch;
    a.seq = p.seq;
    a.kv_heads = p.kv_heads;
    a.total = p.total;
    a.past = p.past;
    a.output_width = p.q_heads * p.v_head_dim;
    a.head_dim = int(p.head_dim);
    a.v_head_dim = int(p.v_head_dim);
    a.key_prep = row_prep<T>(p, p.k_norm ? t.k_norm_weight : nullptr, t.inv_freq);
    if (plan.append_key_chunks > 0) {
      // the plan's condition (plan_for: the same tensors); 16-byte loads from anything else would fault
      if (!new_tokens_aligned16(t)) {
        throw std::runtime_error(str_cat(kOpName, ": unaligned key/value for the chunked kernel (plan/run mismatch)"));
      }
      if (plan.joint_new_tokens) {
        launch_joint_chunks(a, r, plan, base + plan.attention_offset, stream);
      } else {
        launch_append_chunks(a, plan, stream);
      }
    } else {
      if (plan.append_blocks > int64_t(0x7fffffff)) throw std::runtime_error(str_cat(kOpName, ": too many new tokens"));
      append_kernel<T><<<unsigned(plan.append_blocks), 32 * kAppendRowsPerBlock, 0, stream>>>(a);
    }
    check_cuda(cudaGetLastError(), "launching the new-token kernel");
  }

  // 3. Attention over the cache, queries prepared in the core's Q load.
  sdpa::Tensors<T> at;
  at.q = t.query;
  at.k = t.present_key;
  at.v = t.present_value;
  at.bool_mask = p.has_mask ? t.attention_mask : nullptr;
  at.y = t.output;
  if (lengths != nullptr) {
    at.query_offsets = lengths;
    at.kv_lengths = lengths + p.batch;
  }
  if (plan.rotate_queries && !plan.joint_new_tokens) {  // (joint: prepared with the new tokens in step 2)
    if (plan.rotate_chunks > 0) {
      launch_query_chunks(r, plan, stream);  // rotate_queries implies rows to turn (the plan's grid > 0)
    } else {
      const int64_t blocks = (p.batch * p.seq * p.q_heads + kAppendRowsPerBlock - 1) / kAppendRowsPerBlock;
      if (blocks > int64_t(0x7fffffff)) throw std::runtime_error(str_cat(kOpName, ": too many query rows"));
      rotate_queries_kernel<T><<<unsigned(blocks), 32 * kAppendRowsPerBlock, 0, stream>>>(r);
    }
    check_cuda(cudaGetLastError(), "launching the query kernel");
  }
  if (plan.rotate_queries) {
    at.q = r.rotated;
    prep = QueryPrep<T>{};  // the core reads prepared rows
  }
  if (plan.sinks) at.lse = reinterpret_cast<float*>(base + plan.lse_offset);
  sdpa::cuda::run(plan.attention, at, plan.launch, stream, base + plan.attention_offset, plan.launch.scratch_bytes, prep);

  // 4. Attention sinks, from the rows' LSE ([B, Hq, S]).
  if (plan.sinks) {
    cuda_sinks::Args<T> k{};
    k.output = t.output;
    k.lse = at.lse;
    k.sinks = t.sinks;
    k.lengths = lengths;
    k.tokens = p.batch * p.seq, k.seq = p.seq, k.batch = p.batch, k.q_heads = p.q_heads;
    k.v_head_dim = int(p.v_head_dim);
    cuda_sinks::apply(k, stream, kOpName);
  }
}

template void run<float>(const Params&, const Tensors<float>&, const Plan&, void*, void*, size_t);
template void run<Float16>(const Params&, const Tensors<Float16>&, const Plan&, void*, void*, size_t);
template void run<BFloat16>(const Params&, const Tensors<BFloat16>&, const Plan&, void*, void*, size_t);

}  // namespace onnxattn::gqa::cuda
