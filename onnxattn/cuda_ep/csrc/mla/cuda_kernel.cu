// MultiHeadLatentAttention on CUDA (absorbed form, SIMT): see mla/cuda_plan.h for the four steps.
//
// Layouts on the device: caches [B, M, R] and [B, M, Dr] (a [B, 1, M, .] cache is the same memory);
// q_abs [chunk, H, R + Dr] float, pre-scaled; each split's normalised latent output [chunk, H, R] and its
// log-sum-exp. Why a separate merge-and-project kernel: the W_UV projection needs the whole merged latent
// row, which exists only after every split of the row has finished.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "common/cuda_errors.h"
#include "common/errors.h"
#include "common/half.h"
#include "mla/cuda_kernel.h"
#include "sdpa/cuda_device.cuh"  // the PTX wrappers (cp.async, ldmatrix, mma.sync) and the online softmax step

namespace onnxattn::mla::cuda {
namespace {

constexpr int kAppendThreads = 128;
constexpr int kAbsorbWarps = 8;
constexpr int kOutputThreads = 128;
constexpr float kNegInf = -__builtin_huge_valf();

struct Shape {
  int64_t batch, seq, heads, rank, nope, rope, v_dim, total, past;
  int mode;  // CacheMode as int
  int causal, interleaved;
  int64_t window;
  float scale, softcap, log_base, rope_scaling;
  int64_t index_count;  // K of key_indices; -1 without
};

Shape shape_of(const Params& p) {
  Shape s;
  s.batch = p.batch, s.seq = p.seq, s.heads = p.heads, s.rank = p.rank, s.nope = p.nope_dim, s.rope = p.rope_dim;
  s.v_dim = p.v_head_dim, s.total = p.total, s.past = p.past, s.mode = int(p.mode);
  s.index_count = p.index_count;
  s.causal = p.causal ? 1 : 0, s.interleaved = p.rope_interleaved ? 1 : 0, s.window = p.window;
  s.scale = p.scale, s.softcap = p.softcap, s.log_base = std::log(p.rope_base);  // as the CPU kernel
  s.rope_scaling = p.rope_attention_scaling;
  return s;
}

// RoPE angle of pair i at `position`: the CPU kernel's float steps (gqa::TokenPrep::set_rope).
__device__ __forceinline__ float rope_angle(const Shape& s, const float* inv_freq, int64_t i, int64_t position) {
  const float freq = inv_freq != nullptr ? inv_freq[i] : expf(-((float(2 * i) / float(s.rope)) * s.log_base));
  return float(position) * freq;
}

// Rotates the Dr values of `src` into `dst` (both float views through load/store functors).
template <typename Load, typename Store>
__device__ __forceinline__ void rotate_pairs(const Shape& s, const float* inv_freq, int64_t position, Load load,
                                             Store store, int thread, int threads) {
  const int64_t half = s.rope / 2;
  for (int64_t i = thread; i < half; i += threads) {
    float sn, cs;
    sincosf(rope_angle(s, inv_freq, i, position), &sn, &cs);
    cs *= s.rope_scaling;
    sn *= s.rope_scaling;
    const int64_t a = s.interleaved ? 2 * i : i, b = s.interleaved ? 2 * i + 1 : i + half;
    const float x1 = load(a), x2 = load(b);
    store(a, x1 * cs - x2 * sn);
    store(b, x2 * cs + x1 * sn);
  }
}

template <typename T>
struct Pointers {
  const T *query, *latent, *k_rope, *w_uk, *w_uv;
  const int64_t *past_lengths, *position_ids;
  const float* inv_freq;
  T *output, *present_latent, *present_k_rope;
  int64_t* lengths;  // [2][B]: key position of each sequence's first query, its valid keys (-1: invalid)
  float *q_abs, *partial, *lse;
};

__device__ __forceinline__ int64_t position_of(const Shape& s, const int64_t* position_ids, int64_t token,
                                               int64_t slot) {
  return position_ids != nullptr ? position_ids[token] : slot;
}

// 1. One block per new token: its latent and rotated rope key into slot start + s of the caches; the
// sequence's lengths. An out-of-range past_lengths entry leaves the caches alone and NaN-fills the rows.
template <typename T>
__global__ void __launch_bounds__(kAppendThreads) append_kernel(const Shape s, const Pointers<T> ptr) {
  const int64_t token = blockIdx.x, b = token / s.seq, i = token % s.seq;
  const int64_t start = s.mode == int(CacheMode::kShared) ? ptr.past_lengths[b] : s.past;
  const bool valid = start >= 0 && start <= s.total - s.seq;
  if (i == 0 && threadIdx.x == 0) {
    ptr.lengths[b] = valid ? start : 0;
    ptr.lengths[s.batch + b] = valid ? (s.mode == int(CacheMode::kShared) ? start + s.seq : s.total) : -1;
  }
  if (!valid) {
    T* out = ptr.output + token * s.heads * s.v_dim;
    for (int64_t e = threadIdx.x; e < s.heads * s.v_dim; e += blockDim.x) out[e] = from_float<T>(__int_as_float(0x7fc00000));
    return;
  }
  const int64_t slot = start + i;
  const T* latent = ptr.latent + token * s.rank;
  T* latent_dst = ptr.present_latent + (b * s.total + slot) * s.rank;
  for (int64_t x = threadIdx.x; x < s.rank; x += blockDim.x) latent_dst[x] = latent[x];
  const T* rope = ptr.k_rope + token * s.rope;
  T* rope_dst = ptr.present_k_rope + (b * s.total + slot) * s.rope;
  rotate_pairs(
      s, ptr.inv_freq, position_of(s, ptr.position_ids, token, slot), [&](int64_t x) { return to_float(rope[x]); },
      [&](int64_t x, float v) { rope_dst[x] = from_float<T>(v); }, threadIdx.x, blockDim.x);
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// 2. One block per (token of the chunk, head): q_abs = scale * [q_nope . W_UK[h]^T ; RoPE(q_rope)]. Each warp
// takes rows r of W_UK[h] ([R, Dn], read along Dn by its lanes) and reduces the dot product.
template <typename T>
__global__ void __launch_bounds__(32 * kAbsorbWarps) absorb_kernel(const Shape s, const Pointers<T> ptr, int64_t first) {
  extern __shared__ float q_nope[];  // [Dn]
  const int64_t token = first + blockIdx.x, h = blockIdx.y, b = token / s.seq, i = token % s.seq;
  if (ptr.lengths[s.batch + b] < 0) return;
  const T* q = ptr.query + (token * s.heads + h) * (s.nope + s.rope);
  for (int64_t x = threadIdx.x; x < s.nope; x += blockDim.x) q_nope[x] = to_float(q[x]);
  __syncthreads();
  float* dst = ptr.q_abs + (int64_t(blockIdx.x) * s.heads + h) * (s.rank + s.rope);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* w = ptr.w_uk + h * s.rank * s.nope;
  for (int64_t r = warp; r < s.rank; r += kAbsorbWarps) {
    float sum = 0.0f;
    for (int64_t d = lane; d < s.nope; d += 32) sum += q_nope[d] * to_float(w[r * s.nope + d]);
    sum = warp_sum(sum);
    if (lane == 0) dst[r] = sum * s.scale;
  }
  const int64_t slot = ptr.lengths[b] + i;
  rotate_pairs(
      s, ptr.inv_freq, position_of(s, ptr.position_ids, token, slot),
      [&](int64_t x) { return to_float(q[s.nope + x]); }, [&](int64_t x, float v) { dst[s.rank + x] = v * s.scale; },
      threadIdx.x, blockDim.x);
}

// What a row walks: keys begin..end-1 of the cache, or (key_indices) the first entries of its token's list (up to
// its count), each naming a key or -1 (a repeat to skip).
struct KeyWalk {
  const int32_t* list;  // the token's list; null: the keys themselves
  int64_t begin, end;
  __device__ __forceinline__ int64_t key(int64_t e) const { return list != nullptr ? int64_t(list[e]) : e; }
};

// The cache keys a query at key position p sees among the `valid` ones (causal, window).
__device__ __forceinline__ KeyWalk visible_keys(const Shape& s, int64_t valid, int64_t p) {
  int64_t begin = 0, end = valid;
  if (s.causal && p + 1 < end) end = p + 1;
  if (s.window > 0 && p - begin >= s.window) begin = p - s.window + 1;  // no p - window: it may overflow
  return KeyWalk{nullptr, begin, end};
}

__device__ __forceinline__ KeyWalk key_walk(const Shape& s, const int32_t* key_lists, int64_t tok, int64_t tokens,
                                            int64_t valid, int64_t p) {
  if (key_lists == nullptr) return visible_keys(s, valid, p);
  const int64_t count = s.index_count > 0 ? key_lists[tokens * s.index_count + tok] : 0;
  return KeyWalk{key_lists + tok * s.index_count, 0, count};
}

// 2b. key_indices: one block per token of the chunk turns its K listed entries into the keys it will attend to,
// each once and ascending (the order the attention walks the cache in): entries that are padding, past the
// sequence's valid keys or hidden by the mask become INT_MAX, a bitonic sort in shared memory (K padded to a
// power of two) puts them last, and a repeat of its predecessor becomes -1 (the attention skips it). The count
// of entries before the first dropped one goes to key_lists[chunk * K + token], so a row walks no trailing
// padding (a prompt's early queries see few keys but list K).
constexpr int kListThreads = 256;

// key_lists [chunk, K] (scratch): each token's visible listed keys, ascending, repeats as -1. Passed on their own,
// not in Pointers: a larger Pointers made ptxas spill in output_kernel (sm_90a).
template <typename T>
__global__ void __launch_bounds__(kListThreads) key_list_kernel(const Shape s, const Pointers<T> ptr, int64_t first,
                                                                int padded, const int64_t* key_indices,
                                                                int32_t* key_lists) {
  extern __shared__ int listed[];  // [padded]
  const int64_t tok = blockIdx.x, token = first + tok, b = token / s.seq, i = token % s.seq, k = s.index_count;
  const int64_t valid = ptr.lengths[s.batch + b];
  const KeyWalk seen = visible_keys(s, valid < 0 ? 0 : valid, ptr.lengths[b] + i);
  const int64_t* entries = key_indices + token * k;
  for (int e = threadIdx.x; e < padded; e += blockDim.x) {
    const int64_t j = e < k ? entries[e] : -1;
    listed[e] = j >= seen.begin && j < seen.end ? int(j) : INT_MAX;
  }
  __syncthreads();
  for (int width = 2; width <= padded; width *= 2) {
    for (int stride = width / 2; stride > 0; stride /= 2) {
      for (int e = threadIdx.x; e < padded; e += blockDim.x) {
        const int other = e ^ stride;
        if (other > e) {
          const int x = listed[e], y = listed[other];
          if ((x > y) == ((e & width) == 0)) {
            listed[e] = y;
            listed[other] = x;
          }
        }
      }
      __syncthreads();
    }
  }
  int32_t* out = key_lists + tok * k;
  for (int e = threadIdx.x; e < k; e += blockDim.x) {
    const int j = listed[e];
    out[e] = j != INT_MAX && (e == 0 || listed[e - 1] != j) ? j : -1;
    if (j == INT_MAX && (e == 0 || listed[e - 1] != INT_MAX)) key_lists[int64_t(gridDim.x) * k + tok] = e;
  }
  if (threadIdx.x == 0 && listed[k - 1] != INT_MAX) key_lists[int64_t(gridDim.x) * k + tok] = int(k);
}

// 3. One block per (row = token of the chunk x head, split): the split's share of the row's visible keys,
// each warp an online softmax over every kAttentionWarps-th key (scores reduced across lanes, the latent
// accumulator in shared memory), then the warps merged. Writes the split's normalised output and its
// log-sum-exp (-inf when it saw no key).
template <typename T>
__global__ void __launch_bounds__(32 * kAttentionWarps) attention_kernel(const Shape s, const Pointers<T> ptr,
                                                                          int64_t first, int64_t splits,
                                                                          const int32_t* key_lists) {
  extern __shared__ float smem[];
  float* q = smem;                                  // [R + Dr]
  float* acc = q + (s.rank + s.rope);               // [warps][R]
  float* stats = acc + kAttentionWarps * s.rank;    // [warps][2]: m, l
  const int64_t row = blockIdx.x, split = blockIdx.y;
  const int64_t token = first + row / s.heads, b = token / s.seq, i = token % s.seq;
  const int64_t chunk_rows = int64_t(gridDim.x);
  float* out = ptr.partial + (split * chunk_rows + row) * s.rank;
  float* lse = ptr.lse + split * chunk_rows + row;
  const int64_t valid = ptr.lengths[s.batch + b];
  if (valid < 0) return;  // NaN rows already written; kernel 4 skips the sequence
  const int64_t p = ptr.lengths[b] + i;  // the query's key position
  const KeyWalk walk = key_walk(s, key_lists, row / s.heads, int64_t(gridDim.x) / s.heads, valid, p);
  const int64_t count = walk.end > walk.begin ? walk.end - walk.begin : 0, per = (count + splits - 1) / splits;
  const int64_t lo = walk.begin + split * per, hi = lo + per < walk.end ? lo + per : walk.end;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t x = threadIdx.x; x < s.rank + s.rope; x += blockDim.x) q[x] = ptr.q_abs[row * (s.rank + s.rope) + x];
  float* my_acc = acc + warp * s.rank;
  for (int64_t x = lane; x < s.rank; x += 32) my_acc[x] = 0.0f;
  __syncthreads();
  float m = kNegInf, l = 0.0f;
  const T* latent = ptr.present_latent + b * s.total * s.rank;
  const T* rope = ptr.present_k_rope + b * s.total * s.rope;
  for (int64_t e = lo + warp; e < hi; e += kAttentionWarps) {
    const int64_t j = walk.key(e);
    if (j < 0) continue;  // a repeated listed key (warp-uniform)
    const T* key = latent + j * s.rank;
    float dot = 0.0f;
    for (int64_t x = lane; x < s.rank; x += 32) dot += q[x] * to_float(key[x]);
    for (int64_t x = lane; x < s.rope; x += 32) dot += q[s.rank + x] * to_float(rope[j * s.rope + x]);
    float score = warp_sum(dot);
    if (s.softcap > 0.0f) score = s.softcap * tanhf(score / s.softcap);
    const float m_new = fmaxf(m, score);
    const float alpha = __expf(m - m_new), weight = __expf(score - m_new);
    l = l * alpha + weight;
    m = m_new;
    for (int64_t x = lane; x < s.rank; x += 32) my_acc[x] = my_acc[x] * alpha + weight * to_float(key[x]);
  }
  if (lane == 0) {
    stats[2 * warp] = m;
    stats[2 * warp + 1] = l;
  }
  __syncthreads();
  float m_all = kNegInf;
  for (int w = 0; w < kAttentionWarps; ++w) m_all = fmaxf(m_all, stats[2 * w]);
  float l_all = 0.0f, factor[kAttentionWarps];
  for (int w = 0; w < kAttentionWarps; ++w) {
    factor[w] = stats[2 * w + 1] != 0.0f ? __expf(stats[2 * w] - m_all) : 0.0f;
    l_all += stats[2 * w + 1] * factor[w];
  }
  const float inv = l_all != 0.0f ? 1.0f / l_all : 0.0f;
  for (int64_t x = threadIdx.x; x < s.rank; x += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kAttentionWarps; ++w) o += acc[w * s.rank + x] * factor[w];
    out[x] = o * inv;
  }
  if (threadIdx.x == 0) *lse = l_all != 0.0f ? m_all + __logf(l_all) : kNegInf;
}

// 3'. The tensor-core attention (mla/cuda_plan.h): one CTA per (token of the chunk, block of 16 heads,
// split), 4 warps. Each step of 32 latent rows (latent | rope, cp.async double-buffered):
//   S = Q K^T   each warp a quarter of the k-steps over all 32 keys (its query fragments, hi and lo halves,
//               stay in registers for the whole loop); the partial scores meet in shared memory and every
//               warp sums them in the same order, so all warps hold the same S;
//   softmax     online, per row, in registers (natural-log units, as the SIMT kernel's LSE);
//   O += P V    V = the latent columns of the same tile (ldmatrix.trans); each warp a quarter of the R
//               output columns.
// Every row of the CTA is the same token, so they share the key range: only the last step is partial.
// Writes each row's normalised latent output and its log-sum-exp, as attention_kernel does.
namespace sc = onnxattn::sdpa::cuda;

constexpr int kMmaThreads = 128;
constexpr int kMmaQSteps = int(kMmaMaxWidth) / 16 / 4;  // a warp's k-steps of S (9)
constexpr int kMmaOutPairs = int(kMmaMaxRank) / 16 / 4; // a warp's pairs of output n8-tiles (8)

template <typename T>
__global__ void __launch_bounds__(kMmaThreads, 2)
    attention_mma_kernel(const Shape s, const Pointers<T> ptr, int64_t first, int64_t count, int64_t splits,
                         int64_t head_blocks, const int32_t* key_lists) {
  extern __shared__ __align__(16) unsigned char mma_smem[];
  uint16_t* const stage0 = reinterpret_cast<uint16_t*>(mma_smem);
  uint16_t* const stage1 = stage0 + kMmaKeys * kMmaStride;
  float* const s_part = reinterpret_cast<float*>(stage1 + kMmaKeys * kMmaStride);  // [warp][16 rows][32 keys]
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
  const int64_t head_block = int64_t(blockIdx.x) % head_blocks, tok = int64_t(blockIdx.x) / head_blocks;
  const int64_t split = blockIdx.y, token = first + tok, b = token / s.seq, i = token % s.seq;
  const int64_t chunk_rows = count * s.heads;
  const int64_t valid = ptr.lengths[s.batch + b];
  if (valid < 0) return;  // NaN rows already written; kernel 4 skips the sequence
  const int64_t p = ptr.lengths[b] + i;  // the query's key position
  const KeyWalk walk = key_walk(s, key_lists, tok, count, valid, p);
  const int64_t n_keys = walk.end > walk.begin ? walk.end - walk.begin : 0, per = (n_keys + splits - 1) / splits;
  const int64_t lo = walk.begin + split * per, hi = lo + per < walk.end ? lo + per : walk.end;
  const int h0 = int(head_block * kMmaHeads);
  const int rows = int(min(kMmaHeads, s.heads - h0));
  const int rank = int(s.rank), width = int(s.rank + s.rope);
  const int k_steps = (width + 15) / 16, out_pairs = (rank + 15) / 16;

  // ---- The 16 query rows as two 16-bit halves (x = hi + lo: ~22 significant bits in float16, ~16 in
  // bfloat16, against 11 and 8 for one), rows and columns past the problem zero; their A fragments to
  // registers. stage0 holds them until the first K tile. float16: the rows are first scaled by a power of two
  // that keeps their largest value inside float16's range (the scores are scaled back, exactly), where one
  // value past 65504 would otherwise make the row's scores Inf - Inf.
  uint16_t* const q_hi = stage0;
  uint16_t* const q_lo = stage0 + 16 * kMmaStride;
  const int q_cols = k_steps * 16;
  auto q_value = [&](int idx) {
    const int r = idx / q_cols, c = idx % q_cols;
    return r < rows && c < width ? ptr.q_abs[(tok * s.heads + h0 + r) * width + c] : 0.0f;
  };
  __shared__ float score_scale_s;  // read each step rather than held in a register (the loop is at 255)
  float q_scale = 1.0f;
  if constexpr (std::is_same_v<T, Float16>) {
    float biggest = 0.0f;
    for (int idx = tid; idx < 16 * q_cols; idx += kMmaThreads) biggest = fmaxf(biggest, fabsf(q_value(idx)));
    biggest = sc::warp_max(biggest);
    if (lane == 0) s_part[warp] = biggest;  // s_part is free until the first step
    __syncthreads();
    biggest = fmaxf(fmaxf(s_part[0], s_part[1]), fmaxf(s_part[2], s_part[3]));
    int exponent = 0;
    if (isfinite(biggest)) frexpf(biggest, &exponent);  // biggest < 2^exponent
    const int shift = exponent > 14 ? exponent - 14 : 0;  // largest scaled value < 2^14
    q_scale = ldexpf(1.0f, -shift);
    if (tid == 0) score_scale_s = ldexpf(1.0f, shift);
  }
  for (int idx = tid; idx < 16 * q_cols; idx += kMmaThreads) {
    const int r = idx / q_cols, c = idx % q_cols;
    const float x = q_value(idx) * q_scale;
    const T high = from_float<T>(x);
    q_hi[r * kMmaStride + c] = high.bits;
    q_lo[r * kMmaStride + c] = from_float<T>(x - to_float(high)).bits;
  }
  __syncthreads();
  uint32_t qa_hi[kMmaQSteps][4], qa_lo[kMmaQSteps][4];
  const int q_frag = (lane % 16) * kMmaStride + (lane / 16) * 8;
#pragma unroll
  for (int n = 0; n < kMmaQSteps; ++n) {
    const int ks = warp + 4 * n;  // this warp's k-steps: warp, warp + 4, ...
    if (ks < k_steps) {
      sc::ldmatrix_x4(qa_hi[n], sc::smem_u32(q_hi + q_frag + ks * 16));
      sc::ldmatrix_x4(qa_lo[n], sc::smem_u32(q_lo + q_frag + ks * 16));
    } else {
      qa_hi[n][0] = qa_hi[n][1] = qa_hi[n][2] = qa_hi[n][3] = 0u;
      qa_lo[n][0] = qa_lo[n][1] = qa_lo[n][2] = qa_lo[n][3] = 0u;
    }
  }
  __syncthreads();  // stage0 now takes K

  // ---- K tiles: row r = the latent row of entry e0 + r (walk.key) as [latent (R) | rope (Dr) | zeros up to the
  // k-steps' width]; rows past the split or skipped (-1) read nothing and are zero (their scores are masked below).
  const T* const latent = ptr.present_latent + b * s.total * s.rank;
  const T* const rope = ptr.present_k_rope + b * s.total * s.rope;
  const int lat_chunks = rank / 8, rope_chunks = int(s.rope) / 8, row_chunks = k_steps * 2;
  auto load_tile = [&](uint16_t* dst, int64_t e0) {
    for (int idx = tid; idx < kMmaKeys * row_chunks; idx += kMmaThreads) {
      const int r = idx / row_chunks, c = idx % row_chunks;
      const int64_t j = e0 + r < hi ? walk.key(e0 + r) : -1;
      const T* src = latent;
      bool valid_chunk = false;
      if (j >= 0 && c < lat_chunks) {
        src = latent + j * s.rank + c * 8;
        valid_chunk = true;
      } else if (j >= 0 && c < lat_chunks + rope_chunks) {
        src = rope + j * s.rope + (c - lat_chunks) * 8;
        valid_chunk = true;
      }
      sc::cp_async_16(sc::smem_u32(dst + r * kMmaStride + c * 8), src, valid_chunk);
    }
  };

  float o[kMmaOutPairs][2][4];
#pragma unroll
  for (int n = 0; n < kMmaOutPairs; ++n)
#pragma unroll
    for (int t = 0; t < 2; ++t) o[n][t][0] = o[n][t][1] = o[n][t][2] = o[n][t][3] = 0.0f;
  float m[2] = {sc::kNegInf, sc::kNegInf}, l[2] = {0.0f, 0.0f};
  const int64_t steps = hi > lo ? (hi - lo + kMmaKeys - 1) / kMmaKeys : 0;
  if (steps > 0) load_tile(stage0, lo);
  sc::cp_async_commit();
  const bool has_softcap = s.softcap > 0.0f;
  const sc::SoftCap softcap(s.softcap);
  // ldmatrix row addresses (elements), as the SDPA prefill kernel's K and V fragments.
  const int k_frag = (lane % 8 + (lane / 16) * 8) * kMmaStride + ((lane / 8) % 2) * 8;
  const int v_frag = (lane % 8 + ((lane / 8) % 2) * 8) * kMmaStride + (lane / 16) * 8;
  float* const my_part = s_part + warp * 16 * kMmaKeys;

  for (int64_t step = 0; step < steps; ++step) {
    uint16_t* const cur = step % 2 == 0 ? stage0 : stage1;
    uint16_t* const next = step % 2 == 0 ? stage1 : stage0;
    const int64_t e0 = lo + step * kMmaKeys;  // the step's first entry of the walk
    sc::cp_async_wait<0>();
    __syncthreads();  // `cur` landed for every warp; all are done with `next` and with s_part of the last step
    if (step + 1 < steps) load_tile(next, e0 + kMmaKeys);
    sc::cp_async_commit();

    // ---- Partial S over this warp's k-steps, all 32 keys (n8 tiles t: keys 8t..8t+7).
    float sp[4][4];
#pragma unroll
    for (int t = 0; t < 4; ++t) sp[t][0] = sp[t][1] = sp[t][2] = sp[t][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < kMmaQSteps; ++n) {
      const int ks = warp + 4 * n;
      if (ks >= k_steps) break;
#pragma unroll
      for (int np = 0; np < 2; ++np) {
        uint32_t kb[4];  // keys 16np + 0..7 (cols +0..7, +8..15), keys 16np + 8..15 (the same)
        sc::ldmatrix_x4(kb, sc::smem_u32(cur + k_frag + np * 16 * kMmaStride + ks * 16));
        sc::Mma<T>::run(sp[2 * np], qa_hi[n], kb[0], kb[1]);
        sc::Mma<T>::run(sp[2 * np + 1], qa_hi[n], kb[2], kb[3]);
        sc::Mma<T>::run(sp[2 * np], qa_lo[n], kb[0], kb[1]);
        sc::Mma<T>::run(sp[2 * np + 1], qa_lo[n], kb[2], kb[3]);
      }
    }
    // Partial scores at row * 32 + (key ^ swizzle(row)): the swizzle (bits 3-4 of the key, from the row) keeps
    // each lane pair's two keys adjacent and spreads a warp's 8 rows over the banks (unswizzled, 32-float
    // rows put them all on the same 8 banks).
    auto part_at = [](int row, int key) { return row * kMmaKeys + (key ^ ((row & 3) << 3)); };
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      *reinterpret_cast<float2*>(my_part + part_at(quad_row, 8 * t + quad_col)) = make_float2(sp[t][0], sp[t][1]);
      *reinterpret_cast<float2*>(my_part + part_at(quad_row + 8, 8 * t + quad_col)) = make_float2(sp[t][2], sp[t][3]);
    }
    __syncthreads();

    // ---- The whole S in every warp (the same sums in the same order), masked past the split; softmax.
    float x[2][8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = quad_row + 8 * h;
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        float2 v = *reinterpret_cast<const float2*>(s_part + part_at(row, 8 * t + quad_col));
#pragma unroll 1  // unrolled, the hoisted loads pushed the bfloat16 kernel past 255 registers
        for (int w = 1; w < 4; ++w) {
          const float2 p = *reinterpret_cast<const float2*>(s_part + part_at(w * 16 + row, 8 * t + quad_col));
          v.x += p.x;
          v.y += p.y;
        }
        if constexpr (std::is_same_v<T, Float16>) {  // a power of two: exact
          v.x *= score_scale_s;
          v.y *= score_scale_s;
        }
        if (has_softcap) {
          v.x = softcap.apply(v.x);
          v.y = softcap.apply(v.y);
        }
        const int key = 8 * t + quad_col;
        x[h][2 * t] = e0 + key < hi && walk.key(e0 + key) >= 0 ? v.x : sc::kNegInf;
        x[h][2 * t + 1] = e0 + key + 1 < hi && walk.key(e0 + key + 1) >= 0 ? v.y : sc::kNegInf;
      }
    }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) alpha[h] = sc::online_softmax_step<8>(x[h], m[h], l[h]);
#pragma unroll
    for (int n = 0; n < kMmaOutPairs; ++n)
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        o[n][t][0] *= alpha[0];
        o[n][t][1] *= alpha[0];
        o[n][t][2] *= alpha[1];
        o[n][t][3] *= alpha[1];
      }

    // ---- O += P V over this warp's output column pairs (np = warp, warp + 4, ...).
    uint32_t pa[2][4];  // k-step kk: keys 16kk..16kk+15
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      pa[kk][0] = sc::Mma<T>::pack(x[0][4 * kk], x[0][4 * kk + 1]);
      pa[kk][1] = sc::Mma<T>::pack(x[1][4 * kk], x[1][4 * kk + 1]);
      pa[kk][2] = sc::Mma<T>::pack(x[0][4 * kk + 2], x[0][4 * kk + 3]);
      pa[kk][3] = sc::Mma<T>::pack(x[1][4 * kk + 2], x[1][4 * kk + 3]);
    }
#pragma unroll
    for (int n = 0; n < kMmaOutPairs; ++n) {
      const int np = warp + 4 * n;
      if (np >= out_pairs) break;
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t vb[4];  // columns 16np + 0..7 (keys +0..7, +8..15), columns 16np + 8..15 (the same)
        sc::ldmatrix_x4_trans(vb, sc::smem_u32(cur + v_frag + kk * 16 * kMmaStride + np * 16));
        sc::Mma<T>::run(o[n][0], pa[kk], vb[0], vb[1]);
        sc::Mma<T>::run(o[n][1], pa[kk], vb[2], vb[3]);
      }
    }
  }
  sc::cp_async_wait<0>();

  // ---- Each row's normalised output and log-sum-exp (zeros and -inf when the split saw no key).
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = quad_row + 8 * h;
    const float sum = sc::quad_sum(l[h]);
    if (r >= rows) continue;
    const int64_t row = tok * s.heads + h0 + r;
    const float inv = sum != 0.0f ? 1.0f / sum : 0.0f;
    float* const out = ptr.partial + (split * chunk_rows + row) * s.rank;
#pragma unroll
    for (int n = 0; n < kMmaOutPairs; ++n) {
      const int np = warp + 4 * n;
      if (np >= out_pairs) break;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = np * 16 + t * 8 + quad_col + e;
          if (col < rank) out[col] = o[n][t][2 * h + e] * inv;
        }
      }
    }
    if (warp == 0 && lane % 4 == 0) ptr.lse[split * chunk_rows + row] = sum != 0.0f ? m[h] + logf(sum) : sc::kNegInf;
  }
}

// 4. One block per row: the splits merged by their log-sum-exp (a row that saw no key gives zeros), then
// output[token, h] = merged latent output . W_UV[h] ([R, Dv], read along Dv by the threads).
template <typename T>
__global__ void __launch_bounds__(kOutputThreads) output_kernel(const Shape s, const Pointers<T> ptr, int64_t first,
                                                                int64_t splits) {
  extern __shared__ float merged[];  // [R]
  const int64_t row = blockIdx.x, chunk_rows = int64_t(gridDim.x);
  const int64_t token = first + row / s.heads, h = row % s.heads, b = token / s.seq;
  if (ptr.lengths[s.batch + b] < 0) return;
  float m = kNegInf;
  for (int64_t k = 0; k < splits; ++k) m = fmaxf(m, ptr.lse[k * chunk_rows + row]);
  float total = 0.0f;
  for (int64_t k = 0; k < splits; ++k) {
    const float v = ptr.lse[k * chunk_rows + row];
    total += v == kNegInf ? 0.0f : __expf(v - m);
  }
  const float inv = total != 0.0f ? 1.0f / total : 0.0f;
  for (int64_t x = threadIdx.x; x < s.rank; x += blockDim.x) {
    float o = 0.0f;
    for (int64_t k = 0; k < splits; ++k) {
      const float v = ptr.lse[k * chunk_rows + row];
      if (v != kNegInf) o += __expf(v - m) * ptr.partial[(k * chunk_rows + row) * s.rank + x];
    }
    merged[x] = o * inv;
  }
  __syncthreads();
  const T* w = ptr.w_uv + h * s.rank * s.v_dim;
  T* out = ptr.output + (token * s.heads + h) * s.v_dim;
  for (int64_t e = threadIdx.x; e < s.v_dim; e += blockDim.x) {
    float y = 0.0f;
    for (int64_t r = 0; r < s.rank; ++r) y += merged[r] * to_float(w[r * s.v_dim + e]);
    out[e] = from_float<T>(y);
  }
}

// 2'. and 4'. with the mma attention: the projections as small GEMMs per head, a CTA per (16 tokens, head,
// 64 output columns), so each weight row is read once per 16 tokens instead of once per token (at B = 64,
// H = 128 the per-token kernels read W_UK and W_UV ~64 times each from L2). Thread (column c, group g): the
// 8 tokens 8g..8g+7 of column c, their inputs from shared memory ([k][token]: two float4 per k).
constexpr int kTileTokens = 16;
constexpr int kTileCols = 64;
constexpr int kTileThreads = 128;
constexpr int kTileDepth = 128;  // q_nope columns staged per pass

// acc[x] += in[x] * w for 8 consecutive floats of shared memory (16-byte aligned: two float4 loads).
__device__ __forceinline__ void add_scaled8(float (&acc)[8], const float* in, float w) {
  const float4 a = *reinterpret_cast<const float4*>(in);
  const float4 b = *reinterpret_cast<const float4*>(in + 4);
  acc[0] = fmaf(a.x, w, acc[0]);
  acc[1] = fmaf(a.y, w, acc[1]);
  acc[2] = fmaf(a.z, w, acc[2]);
  acc[3] = fmaf(a.w, w, acc[3]);
  acc[4] = fmaf(b.x, w, acc[4]);
  acc[5] = fmaf(b.y, w, acc[5]);
  acc[6] = fmaf(b.z, w, acc[6]);
  acc[7] = fmaf(b.w, w, acc[7]);
}

// q_abs[token, h, r] = scale * q_nope[token, h] . W_UK[h, r] for r < R (the rope part: rope_query_kernel).
template <typename T>
__global__ void __launch_bounds__(kTileThreads) absorb_tiled_kernel(const Shape s, const Pointers<T> ptr, int64_t first,
                                                                    int64_t count) {
  __shared__ __align__(16) float q_s[kTileDepth][kTileTokens];
  __shared__ float w_s[kTileCols][kTileDepth + 1];
  const int tid = threadIdx.x, col = tid % kTileCols, group = tid / kTileCols;
  const int64_t t0 = int64_t(blockIdx.x) * kTileTokens, h = blockIdx.y, r0 = int64_t(blockIdx.z) * kTileCols;
  const T* const w = ptr.w_uk + h * s.rank * s.nope;  // [R, Dn]
  const int64_t q_width = s.nope + s.rope;
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t d0 = 0; d0 < s.nope; d0 += kTileDepth) {
    const int depth = int(min(int64_t(kTileDepth), s.nope - d0));
    __syncthreads();  // the previous pass is consumed
    for (int idx = tid; idx < kTileTokens * kTileDepth; idx += kTileThreads) {
      const int tok = idx / kTileDepth, d = idx % kTileDepth;
      const int64_t token = first + t0 + tok;
      q_s[d][tok] = d < depth && t0 + tok < count ? to_float(ptr.query[(token * s.heads + h) * q_width + d0 + d]) : 0.0f;
    }
    for (int idx = tid; idx < kTileCols * kTileDepth; idx += kTileThreads) {
      const int c = idx / kTileDepth, d = idx % kTileDepth;
      w_s[c][d] = d < depth && r0 + c < s.rank ? to_float(w[(r0 + c) * s.nope + d0 + d]) : 0.0f;
    }
    __syncthreads();
    for (int d = 0; d < depth; ++d) {
      add_scaled8(acc, &q_s[d][8 * group], w_s[col][d]);
    }
  }
  if (r0 + col >= s.rank) return;
  for (int x = 0; x < 8; ++x) {
    const int64_t tok = t0 + 8 * group + x;
    if (tok >= count) break;
    if (ptr.lengths[s.batch + (first + tok) / s.seq] < 0) continue;  // an invalid sequence: NaN rows already
    ptr.q_abs[(tok * s.heads + h) * (s.rank + s.rope) + r0 + col] = acc[x] * s.scale;
  }
}

// The rope part of q_abs: one warp per (token of the chunk, head).
template <typename T>
__global__ void __launch_bounds__(32) rope_query_kernel(const Shape s, const Pointers<T> ptr, int64_t first) {
  const int64_t token = first + blockIdx.x, h = blockIdx.y, b = token / s.seq, i = token % s.seq;
  if (ptr.lengths[s.batch + b] < 0) return;
  const T* const q = ptr.query + (token * s.heads + h) * (s.nope + s.rope);
  float* const dst = ptr.q_abs + (int64_t(blockIdx.x) * s.heads + h) * (s.rank + s.rope);
  const int64_t slot = ptr.lengths[b] + i;
  rotate_pairs(
      s, ptr.inv_freq, position_of(s, ptr.position_ids, token, slot),
      [&](int64_t x) { return to_float(q[s.nope + x]); }, [&](int64_t x, float v) { dst[s.rank + x] = v * s.scale; },
      threadIdx.x, 32);
}

// The splits merged by their log-sum-exp (as output_kernel), then output[token, h, e] = merged . W_UV[h][:, e].
// Dynamic shared memory: the merged rows, [R][kTileTokens] floats.
template <typename T>
__global__ void __launch_bounds__(kTileThreads) output_tiled_kernel(const Shape s, const Pointers<T> ptr, int64_t first,
                                                                    int64_t count, int64_t splits) {
  extern __shared__ __align__(16) float merged_s[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t t0 = int64_t(blockIdx.x) * kTileTokens, h = blockIdx.y, e0 = int64_t(blockIdx.z) * kTileCols;
  const int64_t chunk_rows = count * s.heads;
  auto live = [&](int64_t tok) { return tok < count && ptr.lengths[s.batch + (first + tok) / s.seq] >= 0; };
  for (int tok = warp; tok < kTileTokens; tok += kTileThreads / 32) {
    const int64_t row = (t0 + tok) * s.heads + h;
    const bool ok = live(t0 + tok);
    float m = kNegInf, total = 0.0f;
    if (ok) {
      for (int64_t k = 0; k < splits; ++k) m = fmaxf(m, ptr.lse[k * chunk_rows + row]);
      for (int64_t k = 0; k < splits; ++k) {
        const float v = ptr.lse[k * chunk_rows + row];
        total += v == kNegInf ? 0.0f : __expf(v - m);
      }
    }
    const float inv = total != 0.0f ? 1.0f / total : 0.0f;
    for (int64_t r = lane; r < s.rank; r += 32) {
      float o = 0.0f;
      if (ok) {
        for (int64_t k = 0; k < splits; ++k) {
          const float v = ptr.lse[k * chunk_rows + row];
          if (v != kNegInf) o += __expf(v - m) * ptr.partial[(k * chunk_rows + row) * s.rank + r];
        }
      }
      merged_s[r * kTileTokens + tok] = o * inv;
    }
  }
  __syncthreads();
  const int col = tid % kTileCols, group = tid / kTileCols;
  const int64_t e = e0 + col;
  if (e >= s.v_dim) return;
  const T* const w = ptr.w_uv + h * s.rank * s.v_dim;  // [R, Dv]
  float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t r = 0; r < s.rank; ++r) {
    add_scaled8(acc, merged_s + r * kTileTokens + 8 * group, to_float(w[r * s.v_dim + e]));
  }
  for (int x = 0; x < 8; ++x) {
    const int64_t tok = t0 + 8 * group + x;
    if (!live(tok)) continue;
    ptr.output[((first + tok) * s.heads + h) * s.v_dim + e] = from_float<T>(acc[x]);
  }
}

void check_cuda(cudaError_t status, const char* what) { onnxattn::check_cuda(status, kOpName, what); }

// The past part of a present cache of `width` channels; nothing when present is the past buffer.
template <typename T>
void copy_past(const Params& p, const T* past, T* present, int64_t width, cudaStream_t stream) {
  if (past == nullptr || past == present || p.mode == CacheMode::kNone) return;
  const size_t row_bytes = size_t(width) * sizeof(T);
  if (p.mode == CacheMode::kShared) {  // the whole buffer: stale slots are outputs too
    const size_t bytes = size_t(p.batch * p.total) * row_bytes;
    if (bytes > 0) check_cuda(cudaMemcpyAsync(present, past, bytes, cudaMemcpyDeviceToDevice, stream), "copying the past");
    return;
  }
  if (p.past == 0 || p.batch == 0 || width == 0) return;
  check_cuda(cudaMemcpy2DAsync(present, size_t(p.total) * row_bytes, past, size_t(p.past) * row_bytes,
                               size_t(p.past) * row_bytes, size_t(p.batch), cudaMemcpyDeviceToDevice, stream),
             "copying the past");
}

// The mma kernel's shared memory is above the default 48 KiB: raised once per device (the attribute
// persists), so later launches make no such call and stay capturable into CUDA graphs.
template <typename T>
void allow_mma_smem() {
  if constexpr (!std::is_same_v<T, float>) sc::allow_smem<attention_mma_kernel<T>>(kMmaSmem);
}

unsigned grid_dim(int64_t n, const char* what) {
  if (n > int64_t(0x7fffffff)) throw std::runtime_error(str_cat(kOpName, ": too many ", what, " for one launch"));
  return unsigned(n);
}

}  // namespace

template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream_ptr, void* scratch, size_t scratch_bytes) {
  if (plan.scratch_bytes > 0 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes)) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA plan needs ", plan.scratch_bytes, " bytes of scratch, got ",
                                     scratch_bytes));
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  unsigned char* const base = static_cast<unsigned char*>(scratch);
  Pointers<T> ptr{};
  ptr.query = t.query, ptr.latent = t.latent, ptr.k_rope = t.k_rope, ptr.w_uk = t.w_uk, ptr.w_uv = t.w_uv;
  ptr.past_lengths = p.mode == CacheMode::kShared ? t.past_lengths : nullptr;
  ptr.position_ids = p.has_position_ids ? t.position_ids : nullptr;
  ptr.inv_freq = p.has_inv_freq ? t.inv_freq : nullptr;
  ptr.output = t.output;
  ptr.present_latent = plan.present_in_scratch ? reinterpret_cast<T*>(base + plan.present_latent_offset) : t.present_latent;
  ptr.present_k_rope = plan.present_in_scratch ? reinterpret_cast<T*>(base + plan.present_k_rope_offset) : t.present_k_rope;
  if (ptr.present_latent == nullptr || ptr.present_k_rope == nullptr) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA kernel needs present buffers (plan/run mismatch)"));
  }
  ptr.lengths = reinterpret_cast<int64_t*>(base + plan.lengths_offset);
  ptr.q_abs = reinterpret_cast<float*>(base + plan.q_offset);
  ptr.partial = reinterpret_cast<float*>(base + plan.partial_offset);
  ptr.lse = reinterpret_cast<float*>(base + plan.lse_offset);
  const Shape s = shape_of(p);
  const int64_t tokens = p.batch * p.seq;
  int32_t* const key_lists = p.indexed() ? reinterpret_cast<int32_t*>(base + plan.key_lists_offset) : nullptr;

  copy_past(p, t.past_latent, ptr.present_latent, p.rank, stream);
  copy_past(p, t.past_k_rope, ptr.present_k_rope, p.rope_dim, stream);
  if (tokens == 0) return;  // the presents are the pasts
  append_kernel<T><<<grid_dim(tokens, "tokens"), kAppendThreads, 0, stream>>>(s, ptr);
  check_cuda(cudaGetLastError(), "launching the new-token kernel");

  // The mma kernel copies 16-byte chunks of the cache rows: a misaligned cache buffer takes the SIMT kernel.
  const bool aligned = ((reinterpret_cast<uintptr_t>(ptr.present_latent) | reinterpret_cast<uintptr_t>(ptr.present_k_rope)) &
                        15u) == 0;
  const bool use_mma = !std::is_same_v<T, float> && plan.kernel == Kernel::kMma && aligned;
  if (use_mma) allow_mma_smem<T>();

  for (int64_t first = 0; first < tokens; first += plan.chunk_tokens) {
    const int64_t count = std::min(plan.chunk_tokens, tokens - first);
    const dim3 tiles(grid_dim((count + kTileTokens - 1) / kTileTokens, "tokens"), grid_dim(p.heads, "heads"));
    if (use_mma) {
      absorb_tiled_kernel<T><<<dim3(tiles.x, tiles.y, grid_dim((p.rank + kTileCols - 1) / kTileCols, "columns")),
                               kTileThreads, 0, stream>>>(s, ptr, first, count);
      check_cuda(cudaGetLastError(), "launching the query absorption");
      rope_query_kernel<T><<<dim3(grid_dim(count, "tokens"), grid_dim(p.heads, "heads")), 32, 0, stream>>>(s, ptr, first);
    } else {
      absorb_kernel<T><<<dim3(grid_dim(count, "tokens"), grid_dim(p.heads, "heads")), 32 * kAbsorbWarps,
                         sizeof(float) * size_t(p.nope_dim), stream>>>(s, ptr, first);
    }
    check_cuda(cudaGetLastError(), "launching the query absorption");
    if (p.indexed() && p.index_count > 0) {
      key_list_kernel<T><<<grid_dim(count, "tokens"), kListThreads, sizeof(int) * size_t(plan.list_padded), stream>>>(
          s, ptr, first, int(plan.list_padded), t.key_indices, key_lists);
      check_cuda(cudaGetLastError(), "launching the key lists");
    }
    if (use_mma) {
      if constexpr (!std::is_same_v<T, float>) {
        attention_mma_kernel<T><<<dim3(grid_dim(count * plan.head_blocks, "rows"), unsigned(plan.splits)),
                                  kMmaThreads, kMmaSmem, stream>>>(s, ptr, first, count, plan.splits, plan.head_blocks,
                                                                   key_lists);
      }
    } else {
      attention_kernel<T><<<dim3(grid_dim(count * p.heads, "rows"), unsigned(plan.splits)), 32 * kAttentionWarps,
                            plan.attention_smem, stream>>>(s, ptr, first, plan.splits, key_lists);
    }
    check_cuda(cudaGetLastError(), "launching the attention");
    if (use_mma) {  // R <= 512: the merged rows take at most 32 KiB
      output_tiled_kernel<T><<<dim3(tiles.x, tiles.y, grid_dim((p.v_head_dim + kTileCols - 1) / kTileCols, "columns")),
                               kTileThreads, sizeof(float) * size_t(p.rank) * kTileTokens, stream>>>(
          s, ptr, first, count, plan.splits);
    } else {
      output_kernel<T><<<grid_dim(count * p.heads, "rows"), kOutputThreads, sizeof(float) * size_t(p.rank), stream>>>(
          s, ptr, first, plan.splits);
    }
    check_cuda(cudaGetLastError(), "launching the output projection");
  }
}

Plan plan_for_current_device(const Params& p, size_t element_bytes, bool present_outputs) {
  int device = 0, sm_count = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return make_plan(p, sm_count, element_bytes, present_outputs);
}

template <typename T>
void run_for_test(const Params& p, const Tensors<T>& t, void* stream, void* scratch, size_t scratch_bytes) {
  const Plan plan = plan_for_current_device(p, sizeof(T), t.present_latent != nullptr && t.present_k_rope != nullptr);
  if (scratch != nullptr) return run(p, t, plan, stream, scratch, scratch_bytes);
  if (plan.scratch_bytes > 0) check_cuda(cudaMalloc(&scratch, plan.scratch_bytes), "cudaMalloc of the scratch");
  try {
    run(p, t, plan, stream, scratch, plan.scratch_bytes);
    check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "running the kernels");
  } catch (...) {
    cudaFree(scratch);
    throw;
  }
  check_cuda(cudaFree(scratch), "cudaFree");
}

template void run<float>(const Params&, const Tensors<float>&, const Plan&, void*, void*, size_t);
template void run<Float16>(const Params&, const Tensors<Float16>&, const Plan&, void*, void*, size_t);
template void run<BFloat16>(const Params&, const Tensors<BFloat16>&, const Plan&, void*, void*, size_t);
template void run_for_test<float>(const Params&, const Tensors<float>&, void*, void*, size_t);
template void run_for_test<Float16>(const Params&, const Tensors<Float16>&, void*, void*, size_t);
template void run_for_test<BFloat16>(const Params&, const Tensors<BFloat16>&, void*, void*, size_t);

}  // namespace onnxattn::mla::cuda
