// The sparse ops' selection (block scores, compression branch, top-k lists) and NativeSparseAttention's fine
// branch on CUDA: the simple kernels (one CTA per list / per row) and the tiled ones of the fast path. See
// cuda_kernel.h for the structure and cuda_select.cuh for the launchers the plan and run code call.
#include "sparse/cuda_select.cuh"

#include <algorithm>
#include <type_traits>

#include "sdpa/cuda_device.cuh"  // allow_smem
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_mma_tiles.cuh"
#include "sparse/cuda_warp_select.cuh"

namespace onnxattn::sparse::cuda {
namespace {

// acc[x] = sum over d < dim of q_s[d][first_row + x] * tile_s[lane][d], in d order with fmaf (q_s: [dim][16]
// rows of queries, tile_s: 32 staged rows `width` floats apart). The tiled selection and fine kernels' scores.
__device__ __forceinline__ void score_rows4(const float* q_s, const float* tile_s, int width, int dim, int lane,
                                            int first_row, float (&acc)[4]) {
  acc[0] = acc[1] = acc[2] = acc[3] = 0.0f;
  for (int d = 0; d < dim; ++d) {
    const float c = tile_s[lane * width + d];
    const float4 q = *reinterpret_cast<const float4*>(q_s + d * 16 + first_row);
    acc[0] = fmaf(q.x, c, acc[0]);
    acc[1] = fmaf(q.y, c, acc[1]);
    acc[2] = fmaf(q.z, c, acc[2]);
    acc[3] = fmaf(q.w, c, acc[3]);
  }
}

// ---- selection: one CTA per list (b, selection head, i); its warp's list by warp_select (cuda_warp_select.cuh) ----

template <typename TQ>
__global__ void __launch_bounds__(kThreads) select_kernel(const SelectArgs<TQ> a) {
  extern __shared__ float select_smem[];
  __shared__ float reduce[kWarpsPerBlock];
  const int64_t nc = a.num_centroids;
  float* const key = select_smem;        // [max(Nc, num_blocks)]: the group's scores, then the selection keys
  float* const probs = key + max(nc, a.num_blocks);  // [Nc]: one head's probabilities
  int32_t* const chosen = reinterpret_cast<int32_t*>(probs + nc);  // [top]
  const int64_t group = a.q_heads / a.kv_heads, heads_per_list = a.shared ? group : 1;
  const int64_t list_heads = a.shared ? a.kv_heads : a.q_heads;
  const int64_t i = blockIdx.x % a.q_len, list_head = blockIdx.x / a.q_len % list_heads;
  const int64_t b = blockIdx.x / (a.q_len * list_heads);
  const int64_t kv_head = a.shared ? list_head : list_head / group;
  const int64_t position = i + a.query_offset;
  const float* cents = a.centroids + (b * a.kv_heads + kv_head) * nc * a.dim;
  for (int64_t c = threadIdx.x; c < nc; c += kThreads) key[c] = 0.0f;
  __syncthreads();
  for (int64_t x = 0; x < heads_per_list; ++x) {
    const int64_t h = a.shared ? kv_head * group + x : list_head;
    const TQ* q = a.q + ((b * a.q_heads + h) * a.q_len + i) * a.dim;
    for (int64_t c = threadIdx.x; c < nc; c += kThreads) {
      float s = 0.0f;
      for (int d = 0; d < a.dim; ++d) s += to_float(q[d]) * cents[c * a.dim + d];
      probs[c] = s;
    }
    __syncthreads();
    if (a.probabilities) {  // the compression branch: softmax over the visible tokens, its output, probabilities
      const int64_t visible = a.causal ? min(max(position + 1, int64_t(0)) / a.block_size, nc) : nc;
      float top = kNegInf;
      for (int64_t c = threadIdx.x; c < visible; c += kThreads) top = fmaxf(top, probs[c] * a.scale);
      top = block_reduce(top, reduce, true);
      float sum = 0.0f;
      for (int64_t c = threadIdx.x; c < nc; c += kThreads) {
        const float e = c < visible ? expf(probs[c] * a.scale - top) : 0.0f;
        probs[c] = e;
        sum += e;
      }
      sum = block_reduce(sum, reduce, false);
      const float inv = visible > 0 ? 1.0f / sum : 0.0f;
      for (int64_t c = threadIdx.x; c < nc; c += kThreads) probs[c] *= inv;
      __syncthreads();
      const TQ* values = a.compressed_values + (b * a.kv_heads + kv_head) * nc * a.v_dim;
      float* out = a.compressed_out + ((b * a.q_heads + h) * a.q_len + i) * a.v_dim;
      for (int e = threadIdx.x; e < a.v_dim; e += kThreads) {
        float o = 0.0f;
        for (int64_t c = 0; c < visible; ++c)
          if (probs[c] > 0.0f) o += probs[c] * to_float(values[c * a.v_dim + e]);  // weightless: never read
        out[e] = o;
      }
    }
    for (int64_t c = threadIdx.x; c < nc; c += kThreads) key[c] += probs[c];
    __syncthreads();
  }
  if (a.top == 0 || threadIdx.x >= 32) return;
  warp_select(a, key, position, chosen, ((b * list_heads + list_head) * a.q_len + i) * a.top);
}

// ---- tiled selection: one CTA per (b, selection head, a few queries) ----
//
// The same results as select_kernel, with each centroid (and compressed value) tile staged in shared memory
// once for all the CTA's rows instead of once per list. A row per (query, head of the list): the compression
// branch's softmax is per head (and gives the branch output from staged value tiles), and both kinds of
// score are then summed over the heads in head order. Scores are sums in d order with fmaf (score_rows4), so
// every list scores bit for bit like select_kernel. Then one warp per query: warp_select.

template <typename TQ>
__global__ void __launch_bounds__(kThreads) tiled_select_kernel(const SelectArgs<TQ> a, int queries, int rows_per_query) {
  extern __shared__ float select_tile_smem[];
  const int dim = a.dim, v_dim = a.v_dim, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int tile_width = select_tile_width(dim, v_dim);
  const int64_t nc = a.num_centroids, nb = a.num_blocks, stride = max(nc, nb);
  float* const q_s = select_tile_smem;                       // [dim][kSelectRows]
  float* const tile_s = q_s + dim * kSelectRows;             // [32][tile_width]: centroids, then values
  float* const probs = tile_s + 32 * tile_width;             // [rows][stride]
  const int rows = queries * rows_per_query;
  int32_t* const chosen_s = reinterpret_cast<int32_t*>(probs + int64_t(rows) * stride);  // [warps][top]
  const int64_t group = a.q_heads / a.kv_heads, heads_per_list = a.shared ? group : 1;
  const int64_t list_heads = a.shared ? a.kv_heads : a.q_heads;
  const int64_t tiles = (a.q_len + queries - 1) / queries;
  const int64_t i0 = int64_t(blockIdx.x) % tiles * queries;
  const int64_t list_head = int64_t(blockIdx.x) / tiles % list_heads, b = int64_t(blockIdx.x) / (tiles * list_heads);
  const int64_t kv_head = a.shared ? list_head : list_head / group;
  const int count_q = int(min(int64_t(queries), a.q_len - i0));
  auto head_of = [&](int64_t g) { return a.shared ? kv_head * group + g : list_head; };

  // Row r = x * rows_per_query + g: query i0 + x, head g of the list.
  for (int idx = tid; idx < kSelectRows * dim; idx += kThreads) {  // along d: coalesced reads of Q rows
    const int r = idx / dim, d = idx % dim, x = r / rows_per_query;
    q_s[d * kSelectRows + r] = r < rows && x < count_q
                                   ? to_float(a.q[((b * a.q_heads + head_of(r % rows_per_query)) * a.q_len + i0 + x) * dim + d])
                                   : 0.0f;
  }
  const float* const cents = a.centroids + (b * a.kv_heads + kv_head) * nc * dim;
  const int first_row = 4 * warp;
  for (int64_t c0 = 0; c0 < nc; c0 += 32) {
    __syncthreads();  // the previous tile is consumed (and, the first time, q_s is written)
    for (int idx = tid; idx < 32 * dim; idx += kThreads) {
      const int r = idx / dim, d = idx % dim;
      tile_s[r * tile_width + d] = c0 + r < nc ? cents[(c0 + r) * dim + d] : 0.0f;
    }
    __syncthreads();
    float acc[4];
    score_rows4(q_s, tile_s, tile_width, dim, lane, first_row, acc);
    if (c0 + lane < nc) {
      for (int x = 0; x < 4; ++x) {
        if (first_row + x < rows) probs[int64_t(first_row + x) * stride + c0 + lane] = acc[x];
      }
    }
  }
  __syncthreads();

  if (a.probabilities) {
    // Softmax of each (query, head) row over the compressed tokens it may see (as select_kernel).
    int64_t most_visible = 0;
    for (int r = 0; r < rows; ++r) {
      const int64_t position = i0 + r / rows_per_query + a.query_offset;
      const int64_t visible = r / rows_per_query >= count_q ? 0
                              : a.causal ? min(max(position + 1, int64_t(0)) / a.block_size, nc) : nc;
      most_visible = max(most_visible, visible);
      if (r % kWarpsPerBlock != warp) continue;
      float* const row = probs + int64_t(r) * stride;
      float top = kNegInf;
      for (int64_t c = lane; c < visible; c += 32) top = fmaxf(top, row[c] * a.scale);
      top = warp_max(top);
      float sum = 0.0f;
      for (int64_t c = lane; c < nc; c += 32) {
        const float e = c < visible ? expf(row[c] * a.scale - top) : 0.0f;
        row[c] = e;
        sum += e;
      }
      sum = warp_sum(sum);
      const float inv = visible > 0 ? 1.0f / sum : 0.0f;
      for (int64_t c = lane; c < nc; c += 32) row[c] *= inv;
    }
    __syncthreads();
    // The branch output of each row: probabilities . compressed values, value tiles staged once for all rows.
    // A weightless token's value is never read (NaN there cannot leak), as in select_kernel.
    float out[2][kSelectRows];
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int r = 0; r < kSelectRows; ++r) out[k][r] = 0.0f;
    const TQ* const values = a.compressed_values + (b * a.kv_heads + kv_head) * nc * v_dim;
    for (int64_t c0 = 0; c0 < most_visible; c0 += 32) {
      __syncthreads();
      for (int idx = tid; idx < 32 * v_dim; idx += kThreads) {
        const int c = idx / v_dim, e = idx % v_dim;
        tile_s[c * tile_width + e] = c0 + c < most_visible ? to_float(values[(c0 + c) * v_dim + e]) : 0.0f;
      }
      __syncthreads();
      const int count = int(min(int64_t(32), most_visible - c0));
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int e = tid + k * kThreads;
        if (e >= v_dim) continue;  // not break: a constant k keeps out[][] in registers
        for (int c = 0; c < count; ++c) {
          const float v = tile_s[c * tile_width + e];
#pragma unroll
          for (int r = 0; r < kSelectRows; ++r) {
            if (r >= rows) break;
            const float p = probs[int64_t(r) * stride + c0 + c];
            if (p > 0.0f) out[k][r] += p * v;
          }
        }
      }
    }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int e = tid + k * kThreads;
      if (e >= v_dim) continue;
#pragma unroll
      for (int r = 0; r < kSelectRows; ++r) {
        if (r >= rows) break;
        const int x = r / rows_per_query;
        if (x >= count_q) break;
        const int64_t h = head_of(r % rows_per_query);
        a.compressed_out[((b * a.q_heads + h) * a.q_len + i0 + x) * v_dim + e] = out[k][r];
      }
    }
    __syncthreads();  // every thread is done reading the rows before the sums below overwrite them
  }
  if (rows_per_query > 1) {
    // Selection keys: each query's scores (probabilities) summed over its heads in head order, into its first row.
    for (int64_t idx = tid; idx < int64_t(count_q) * nc; idx += kThreads) {
      const int x = int(idx / nc);
      const int64_t c = idx % nc;
      float key = 0.0f;
      for (int g = 0; g < rows_per_query; ++g) key += probs[int64_t(x * rows_per_query + g) * stride + c];
      probs[int64_t(x * rows_per_query) * stride + c] = key;
    }
    __syncthreads();
  }
  if (a.top == 0) return;

  for (int x = warp; x < count_q; x += kWarpsPerBlock) {
    const int64_t i = i0 + x;
    warp_select(a, probs + int64_t(x * rows_per_query) * stride, i + a.query_offset, chosen_s + warp * a.top,
                ((b * list_heads + list_head) * a.q_len + i) * a.top);
  }
}

// Sorts the first `n` (a power of two) pairs of a buffer, best first (`better`), or by key ascending
// (`by_index`); one warp.
__device__ __forceinline__ void warp_bitonic(float* score, int32_t* index, int n, bool by_index) {
  const int lane = threadIdx.x % 32;
  for (int k = 2; k <= n; k *= 2) {
    for (int j = k / 2; j > 0; j /= 2) {
      for (int i = lane; i < n; i += 32) {
        const int partner = i ^ j;
        if (partner <= i) continue;
        const bool first_ahead = by_index ? index[i] < index[partner]
                                          : better(score[i], index[i], score[partner], index[partner]);
        const bool want_first_ahead = (i & k) == 0;
        if (first_ahead != want_first_ahead) {
          const float s = score[i];
          score[i] = score[partner];
          score[partner] = s;
          const int32_t x = index[i];
          index[i] = index[partner];
          index[partner] = x;
        }
      }
      __syncwarp();
    }
  }
}

// ---- the fine branch: one CTA per query row, scores in global scratch ----

template <typename T>
__global__ void __launch_bounds__(kThreads) fine_kernel(const FineArgs<T> a) {
  extern __shared__ float fine_smem[];
  __shared__ float best_value[kWarpsPerBlock];
  __shared__ int64_t best_index[kWarpsPerBlock];
  float* const chosen_score = fine_smem;                                   // [top]
  int64_t* const chosen_index = reinterpret_cast<int64_t*>(chosen_score + (a.top + 1) / 2 * 2);  // [top]
  const int64_t local = blockIdx.x, row = a.row_begin + local;
  const int64_t i = row % a.q_len, h = row / a.q_len % a.q_heads, b = row / (a.q_len * a.q_heads);
  const int64_t kv_head = h / (a.q_heads / a.kv_heads), p = i + a.kv_len - a.q_len;
  const int64_t end = a.causal ? max(min(p + 1, a.kv_len), int64_t(0)) : a.kv_len;
  const T* q = a.q + row * a.dim;
  const T* k_head = a.k + (b * a.kv_heads + kv_head) * a.kv_len * a.dim;
  float* scores = a.scores + local * a.kv_len;
  for (int64_t j = threadIdx.x; j < end; j += kThreads) {
    float s = 0.0f;
    for (int d = 0; d < a.dim; ++d) s += to_float(q[d]) * to_float(k_head[j * a.dim + d]);
    scores[j] = s;
  }
  __syncthreads();
  int64_t count = 0;
  for (; count < a.top; ++count) {
    float best = kNegInf;
    int64_t at = a.kv_len;
    for (int64_t j = threadIdx.x; j < end; j += kThreads)
      if (better(scores[j], j, best, at)) best = scores[j], at = j;
    warp_best(best, at);
    if (threadIdx.x % 32 == 0) best_value[threadIdx.x / 32] = best, best_index[threadIdx.x / 32] = at;
    __syncthreads();
    best = best_value[0], at = best_index[0];
    for (int w = 1; w < kWarpsPerBlock; ++w)
      if (better(best_value[w], best_index[w], best, at)) best = best_value[w], at = best_index[w];
    __syncthreads();
    if (!(best > kNegInf)) break;
    if (threadIdx.x == 0) {
      chosen_score[count] = best;
      chosen_index[count] = at;
      scores[at] = kNegInf;
    }
    __syncthreads();
  }
  float top = kNegInf;
  for (int64_t x = 0; x < count; ++x) top = fmaxf(top, chosen_score[x]);
  float sum = 0.0f;
  for (int64_t x = 0; x < count; ++x) sum += expf(a.scale * (chosen_score[x] - top));
  const T* v_head = a.v + (b * a.kv_heads + kv_head) * a.kv_len * a.v_dim;
  for (int e = threadIdx.x; e < a.v_dim; e += kThreads) {
    float o = 0.0f;
    for (int64_t x = 0; x < count; ++x) {
      const float w = expf(a.scale * (chosen_score[x] - top)) / sum;
      if (w > 0.0f) o += w * to_float(v_head[chosen_index[x] * a.v_dim + e]);
    }
    a.out[row * a.v_dim + e] = o;
  }
  __syncthreads();  // every thread is done with chosen_index
  if (a.listed && threadIdx.x == 0) {
    for (int64_t x = 1; x < count; ++x) {
      const int64_t v = chosen_index[x];
      int64_t y = x - 1;
      for (; y >= 0 && chosen_index[y] > v; --y) chosen_index[y + 1] = chosen_index[y];
      chosen_index[y + 1] = v;
    }
    for (int64_t x = 0; x < a.top; ++x) a.listed[row * a.top + x] = x < count ? chosen_index[x] : -1;
  }
}

// ---- the fine branch, tiled (the fast path): one CTA per (b, KV head, 16 rows of its group's (query, head)
// pairs), as the CPU kernel. Each tile of 32 keys is staged once and scored for the 16 rows (a thread per
// key and 4 rows, sums in d order); a row keeps a candidate buffer of `capacity` (score, key) pairs that
// takes every key beating the row's threshold (its top-th best so far; keys arrive in index order, so an
// equal score never displaces an earlier key). A buffer that could overflow on the next tile is cut back
// to its best `top` by a warp's bitonic sort (larger score first, lower index on ties, NaN never), which also
// raises the threshold. At the end: each row's best `top` in index order, the softmax over their scores and
// their values.

template <typename T>
__global__ void __launch_bounds__(kThreads) fine_tiled_kernel(const FineTiledArgs<T> a) {
  extern __shared__ float fine_tile_smem[];
  const int dim = a.dim, capacity = a.capacity, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  float* const q_s = fine_tile_smem;                                   // [dim][kFineRows]
  float* const tile_s = q_s + dim * kFineRows;                          // [32][dim + 1]
  float* const buf_score = tile_s + 32 * (dim + 1);                     // [kFineRows][capacity]
  int32_t* const buf_index = reinterpret_cast<int32_t*>(buf_score + kFineRows * capacity);
  int* const count_s = reinterpret_cast<int*>(buf_index + kFineRows * capacity);
  float* const threshold_s = reinterpret_cast<float*>(count_s + kFineRows);
  const int64_t group = a.q_heads / a.kv_heads, rows_per_head = group * a.q_len;
  const int64_t tiles = (rows_per_head + kFineRows - 1) / kFineRows;
  const int64_t row_begin = int64_t(blockIdx.x) % tiles * kFineRows;
  const int64_t kv_head = int64_t(blockIdx.x) / tiles % a.kv_heads, b = int64_t(blockIdx.x) / (tiles * a.kv_heads);
  const int rows = int(min(int64_t(kFineRows), rows_per_head - row_begin));
  // Row r: pair row_begin + r = (query i, head kv_head * G + g), keys [0, end).
  auto end_of = [&](int r) -> int64_t {
    if (r >= rows) return 0;
    const int64_t i = (row_begin + r) / group;
    return a.causal ? max(min(i + a.kv_len - a.q_len + 1, a.kv_len), int64_t(0)) : a.kv_len;
  };
  auto q_offset = [&](int r) {
    const int64_t pair = row_begin + r, i = pair / group, h = kv_head * group + pair % group;
    return ((b * a.q_heads + h) * a.q_len + i);
  };
  for (int idx = tid; idx < kFineRows * dim; idx += kThreads) {
    const int r = idx / dim, d = idx % dim;
    q_s[d * kFineRows + r] = r < rows ? to_float(a.q[q_offset(r) * dim + d]) : 0.0f;
  }
  if (tid < kFineRows) {
    count_s[tid] = 0;
    threshold_s[tid] = kNegInf;
  }
  int64_t key_end = 0;
  for (int r = 0; r < rows; ++r) key_end = max(key_end, end_of(r));
  const int first_row = 4 * warp;
  int64_t ends[4];
#pragma unroll
  for (int x = 0; x < 4; ++x) ends[x] = end_of(first_row + x);
  const T* const k_head = a.k + (b * a.kv_heads + kv_head) * a.kv_len * dim;

  // Cuts row r's buffer back to its best `top` (one warp), raising its threshold when it holds `top`.
  auto cut = [&](int r) {
    float* const sc = buf_score + r * capacity;
    int32_t* const ix = buf_index + r * capacity;
    const int n = count_s[r];
    for (int e = n + lane; e < capacity; e += 32) sc[e] = kNegInf, ix[e] = 0x7fffffff;  // last in the order
    __syncwarp();
    warp_bitonic(sc, ix, capacity, false);
    const int kept = int(min(int64_t(n), a.top));
    if (lane == 0) {
      count_s[r] = kept;
      threshold_s[r] = kept == a.top ? sc[kept - 1] : kNegInf;
    }
    __syncwarp();
  };

  for (int64_t j0 = 0; j0 < key_end; j0 += 32) {
    __syncthreads();  // the previous tile is consumed, the buffers cut (and, the first time, q_s written)
    for (int idx = tid; idx < 32 * dim; idx += kThreads) {
      const int c = idx / dim, d = idx % dim;
      tile_s[c * (dim + 1) + d] = j0 + c < key_end ? to_float(k_head[(j0 + c) * dim + d]) : 0.0f;
    }
    __syncthreads();
    float acc[4];
    score_rows4(q_s, tile_s, dim + 1, dim, lane, first_row, acc);
    const int64_t j = j0 + lane;
#pragma unroll
    for (int x = 0; x < 4; ++x) {
      const int r = first_row + x;
      if (j < ends[x] && acc[x] > threshold_s[r]) {  // NaN never passes
        const int at = atomicAdd(&count_s[r], 1);
        buf_score[r * capacity + at] = acc[x];
        buf_index[r * capacity + at] = int32_t(j);
      }
    }
    __syncthreads();
    // A buffer that the next tile could overflow (32 more at most) is cut back now.
    for (int r = warp; r < rows; r += kWarpsPerBlock) {
      if (count_s[r] > capacity - 32) cut(r);
    }
  }
  __syncthreads();

  // Each row (a warp per row): its best `top`, in index order; softmax over their scores; their values.
  for (int r = warp; r < rows; r += kWarpsPerBlock) {
    cut(r);
    const int n = count_s[r];
    float* const sc = buf_score + r * capacity;
    int32_t* const ix = buf_index + r * capacity;
    const float top_score = n > 0 ? sc[0] : 0.0f;  // the best comes first
    int sorted = 1;
    while (sorted < n) sorted *= 2;
    for (int e = n + lane; e < sorted; e += 32) sc[e] = kNegInf, ix[e] = 0x7fffffff;
    __syncwarp();
    if (n > 1) warp_bitonic(sc, ix, sorted, true);
    float sum = 0.0f;
    for (int x = lane; x < n; x += 32) sum += expf(a.scale * (sc[x] - top_score));
    sum = warp_sum(sum);
    const int64_t row = q_offset(r);
    const T* const v_head = a.v + (b * a.kv_heads + kv_head) * a.kv_len * a.v_dim;
    for (int e = lane; e < a.v_dim; e += 32) {
      float o = 0.0f;
      for (int x = 0; x < n; ++x) {
        const float w = expf(a.scale * (sc[x] - top_score)) / sum;
        if (w > 0.0f) o += w * to_float(v_head[int64_t(ix[x]) * a.v_dim + e]);  // a weightless key is never read
      }
      a.out[row * a.v_dim + e] = o;
    }
    if (a.listed) {
      for (int64_t x = lane; x < a.top; x += 32) a.listed[row * a.top + x] = x < n ? ix[x] : -1;
    }
  }
}


// The lists of a CTA of the tensor-core selection kernels: (batch, list head) and its queries [i0, i0 + count),
// `queries` per CTA.
struct SelectCta {
  int64_t group, list_heads, list_head, b, kv_head, i0;
  int count;
};
template <typename TQ>
__device__ __forceinline__ SelectCta select_cta(const SelectArgs<TQ>& a, int queries) {
  SelectCta c;
  c.group = a.q_heads / a.kv_heads;
  c.list_heads = a.shared ? a.kv_heads : a.q_heads;
  const int64_t tiles = (a.q_len + queries - 1) / queries;
  c.i0 = int64_t(blockIdx.x) % tiles * queries;
  c.list_head = int64_t(blockIdx.x) / tiles % c.list_heads;
  c.b = int64_t(blockIdx.x) / (tiles * c.list_heads);
  c.kv_head = a.shared ? c.list_head : c.list_head / c.group;
  c.count = int(min(int64_t(queries), a.q_len - c.i0));
  return c;
}

// Then a warp per query of the CTA: its list from its row of keys (warp_select, or warp_select_groups under
// kGroups); `chosen`: [warps][top] ints.
template <bool kGroups = false, typename TQ>
__device__ __forceinline__ void select_cta_lists(const SelectArgs<TQ>& a, const SelectCta& cta, float* keys,
                                                 int64_t key_stride, int32_t* chosen) {
  if (a.top == 0) return;
  const int warp = threadIdx.x / 32;
  for (int x = warp; x < cta.count; x += kWarpsPerBlock) {
    const int64_t i = cta.i0 + x;
    const int64_t at = ((cta.b * cta.list_heads + cta.list_head) * a.q_len + i) * a.top;
    if constexpr (kGroups) {
      warp_select_groups(a, keys + x * key_stride, i + a.query_offset, chosen + warp * a.top, at);
    } else {
      warp_select(a, keys + x * key_stride, i + a.query_offset, chosen + warp * a.top, at);
    }
  }
}

// ---- selection on tensor cores (select_mma_tiling; 16-bit Q): one CTA per (b, list head, `queries` queries) ----
//
// Row r = x * rows_per_query + g: query i0 + x, head g of the list (the tiled kernel's rows), 16 per warp. Dot
// scores: S = Q (C_hi + C_lo)^T per tile of 64 centroids, C = C_hi + C_lo the float32 centroids split in two
// 16-bit tiles; products of 16-bit values are exact in float32 and only the order of the sums differs from the
// float32 kernels. The compression branch: pass 1 is a flash attention over the visible compressed tokens (P in
// 16 bits for P V, as every 16-bit flash kernel) giving the branch output and each row's log-sum-exp; pass 2
// recomputes the scores and turns them into probabilities exp(s scale - lse). Then, per tile, the rows' values
// are summed over the heads of each query in head order into its selection keys, and a warp per query picks its
// list (warp_select). kOverlap: a.overlap_loads (LOADS=async, the default) as a template parameter, as in
// select_split_kernel (as a runtime branch it took the default kMaxDv = 64 kernel from 128 to 147 registers).
template <typename TQ, int kMaxDv, bool kOverlap>
__global__ void __launch_bounds__(kThreads) select_mma_kernel(const SelectArgs<TQ> a, int queries, int rows_per_query) {
  using namespace mma_tiles;  // NOLINT: the tile pieces this kernel is made of
  extern __shared__ __align__(16) unsigned char select_mma_smem[];
  const int dim = a.dim, v_dim = a.v_dim, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;
  const int stride = mma_row_stride(dim), v_stride = mma_row_stride(v_dim), per = rows_per_query;
  const int64_t nc = a.num_centroids, key_stride = max(nc, a.num_blocks);
  uint16_t* const qs = reinterpret_cast<uint16_t*>(select_mma_smem);
  uint16_t* const ks = qs + kMmaRows * stride;
  uint16_t* const ks_lo = ks + kMmaKeys * stride;                                   // dot scores only
  uint16_t* const vs = ks_lo + (a.probabilities ? 0 : kMmaKeys * stride);          // compression branch only
  float* const ps = reinterpret_cast<float*>(vs + (a.probabilities ? kMmaKeys * v_stride : 0));  // [rows][65]
  float* const keys = ps + kMmaRows * kMmaScoreStride;                              // [queries][key_stride]
  int32_t* const chosen = reinterpret_cast<int32_t*>(keys + int64_t(queries) * key_stride);  // [warps][top]

  const SelectCta cta = select_cta(a, queries);
  const int64_t group = cta.group, list_head = cta.list_head, b = cta.b;
  const int64_t kv_head = cta.kv_head, i0 = cta.i0;
  const int count_q = cta.count, rows = count_q * per;
  auto head_of = [&](int r) -> int64_t { return a.shared ? kv_head * group + r % per : list_head; };
  auto out_row = [&](int r) -> int64_t { return (b * a.q_heads + head_of(r)) * a.q_len + i0 + r / per; };
  // Compressed tokens row r's query sees (the compression branch), as select_kernel.
  auto visible_of = [&](int r) -> int64_t {
    if (r >= rows) return 0;
    const int64_t position = i0 + r / per + a.query_offset;
    return a.causal ? min(max(position + 1, int64_t(0)) / a.block_size, nc) : nc;
  };
  // Under kOverlap a tile's loads are in flight together (issue_rows, stage_rows_split_batched).
  auto stage = [&](uint16_t* tile, int tile_stride, const auto* src, int src_dim, auto row_at) {
    if constexpr (kOverlap) {
      issue_rows<TQ>(tile, tile_stride, src, src_dim, row_at);
    } else {
      stage_rows<TQ>(tile, tile_stride, src, src_dim, row_at);
    }
  };
  auto staged = [&] {  // before the barrier that publishes what stage() issued
    if constexpr (kOverlap) sdpa::cuda::cp_async_commit(), sdpa::cuda::cp_async_wait<0>();
  };
  stage(qs, stride, a.q, dim, [&](int r) { return r < rows ? out_row(r) : int64_t(-1); });
  staged();
  for (int64_t x = tid; x < int64_t(queries) * key_stride; x += kThreads) keys[x] = 0.0f;
  // Centroids any query of the CTA may need: its visible tokens, or its causal candidates (warp_select hides
  // the rest, and the keys of tokens a query does not see stay 0 as in the float32 kernels).
  int64_t c_end = 0;
  for (int x = 0; x < count_q; ++x) {
    const int64_t position = i0 + x + a.query_offset;
    const int64_t end = a.probabilities ? visible_of(x * per)
                        : a.causal    ? (position >= 0 ? min(position / a.block_size + 1, nc) : 0)
                                      : nc;
    c_end = max(c_end, end);
  }

  const bool warp_live = 16 * warp < rows;
  const int r_lo = 16 * warp + g, r_hi = r_lo + 8;
  const int64_t vis_lo = visible_of(r_lo), vis_hi = visible_of(r_hi);
  const float scale_log2 = a.scale * sdpa::cuda::kLog2e;
  const float* const cents = a.centroids + (b * a.kv_heads + kv_head) * nc * dim;
  auto tile_row = [&](int64_t c0) { return [=](int r) { return c0 + r < c_end ? int64_t(r) : int64_t(-1); }; };
  float lse_lo = 0.0f, lse_hi = 0.0f;  // log2 units of the scaled scores
  if (a.probabilities) {
    const TQ* const values = a.compressed_values + (b * a.kv_heads + kv_head) * nc * v_dim;
    float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};  // rows r_lo, r_hi
    float o[kMaxDv / 8][4];
#pragma unroll
    for (int n = 0; n < kMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    for (int64_t c0 = 0; c0 < c_end; c0 += kMmaKeys) {
      __syncthreads();  // the previous tiles are done with (and, the first time, qs and keys are written)
      stage(ks, stride, cents + c0 * dim, dim, tile_row(c0));
      stage(vs, v_stride, values + c0 * v_dim, v_dim, tile_row(c0));
      staged();
      __syncthreads();
      if (!warp_live) continue;
      float s[kKeyTiles][4];
      zero(s);
      add_scores<TQ>(s, qs, ks, stride, dim, r_lo, lane);
      hide(s, lane, [&](int col, int half) { return c0 + col >= (half == 0 ? vis_lo : vis_hi); });
      softmax_step<kMaxDv>(s, o, m, l, scale_log2);
      add_pv<TQ, kMaxDv>(o, s, vs, v_stride, v_dim, lane);
    }
    if (warp_live) {
      const float l_lo = sdpa::cuda::quad_sum(l[0]), l_hi = sdpa::cuda::quad_sum(l[1]);
      lse_lo = m[0] * scale_log2 + log2f(l_lo);
      lse_hi = m[1] * scale_log2 + log2f(l_hi);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = half == 0 ? r_lo : r_hi;
        if (r >= rows) continue;
        // As select_kernel: a row that sees no token gets 0, a NaN sum stays NaN.
        const float inv = (half == 0 ? vis_lo : vis_hi) > 0 ? 1.0f / (half == 0 ? l_lo : l_hi) : 0.0f;
        float* const out = a.compressed_out + out_row(r) * v_dim + 2 * t;
#pragma unroll
        for (int n = 0; n < kMaxDv / 8; ++n) {
          if (8 * n >= v_dim) break;
          *reinterpret_cast<float2*>(out + 8 * n) = make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
        }
      }
    }
  }
  // Scores (or probabilities) per tile, summed over each query's heads into its keys.
  for (int64_t c0 = 0; c0 < c_end; c0 += kMmaKeys) {
    __syncthreads();
    if (a.probabilities) {
      stage(ks, stride, cents + c0 * dim, dim, tile_row(c0));
      staged();
    } else if (kOverlap) {
      stage_rows_split_batched<TQ>(ks, ks_lo, stride, cents + c0 * dim, dim, kMmaKeys, tile_row(c0), tid, kThreads);
    } else {
      stage_rows_split<TQ>(ks, ks_lo, stride, cents + c0 * dim, dim, kMmaKeys, tile_row(c0), tid, kThreads);
    }
    __syncthreads();
    if (warp_live) {
      float s[kKeyTiles][4];
      zero(s);
      add_scores<TQ>(s, qs, ks, stride, dim, r_lo, lane);
      if (!a.probabilities) add_scores<TQ>(s, qs, ks_lo, stride, dim, r_lo, lane);
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * n + 2 * t + (e & 1);
          float value = s[n][e];
          if (a.probabilities) {
            value = c0 + col < (e < 2 ? vis_lo : vis_hi)
                        ? sdpa::cuda::fast_exp2(fmaf(value, scale_log2, -(e < 2 ? lse_lo : lse_hi))) : 0.0f;
          }
          ps[(e < 2 ? r_lo : r_hi) * kMmaScoreStride + col] = value;
        }
      }
    }
    __syncthreads();
    for (int idx = tid; idx < count_q * kMmaKeys; idx += kThreads) {
      const int x = idx / kMmaKeys, col = idx % kMmaKeys;
      if (c0 + col >= c_end) continue;
      float key = 0.0f;
      for (int h = 0; h < per; ++h) key += ps[(x * per + h) * kMmaScoreStride + col];
      keys[x * key_stride + c0 + col] = key;
    }
  }
  __syncthreads();
  select_cta_lists(a, cta, keys, key_stride, chosen);
}

// ---- selection on tensor cores, one row per list (select_split_tiling): a CTA per (b, list head, 16 queries) ----
//
// Dot scores only. The 4 warps share the 16 query rows (Q as hi + lo TMma tiles) and split the centroids: warp
// w stages and scores tiles of kKeys centroids c0 = kKeys (w + 4 k) on its own (no CTA barrier in the
// loop), S = Qh Ch + Qh Cl + Ql Ch, written straight into the queries' keys; then a warp per query: warp_select.
// TMma: float16 (~21 significant bits for values within its range) for float16 inputs, bfloat16 (~16 bits, float32's
// range) for bfloat16 inputs, whose values float16 may not hold (SelectTiling::split_bf16).
// kOverlap (a.overlap_loads, ONNXATTN_SPARSE_CUDA_LOADS=async, the default) is a template parameter: as a runtime
// branch it took the default path's kernel from 64 to 80 registers with spills (sm_90a). kGroups (a.group_argmax,
// ONNXATTN_SPARSE_CUDA_ROUTE=groups, the routing only) picks the lists by warp_select_groups, from tiles of
// kSplitKeysGrouped centroids (kKeys; kSplitKeys otherwise): the same lists and scores.
template <typename TQ, typename TMma, bool kOverlap, bool kGroups = false>
__global__ void __launch_bounds__(kThreads) select_split_kernel(const SelectArgs<TQ> a) {
  using namespace mma_tiles;  // NOLINT: the tile pieces this kernel is made of
  extern __shared__ __align__(16) unsigned char select_split_smem[];
  constexpr int kKeys = kGroups ? kSplitKeysGrouped : kSplitKeys;  // centroids per warp tile (select_split_tiling)
  const int dim = a.dim, tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int stride = mma_row_stride(dim);
  const int64_t nc = a.num_centroids, key_stride = max(nc, a.num_blocks);
  uint16_t* const q_hi = reinterpret_cast<uint16_t*>(select_split_smem);
  uint16_t* const q_lo = q_hi + kSplitQueries * stride;
  uint16_t* const c_hi = q_lo + kSplitQueries * stride + warp * 2 * kKeys * stride;  // this warp's tiles
  uint16_t* const c_lo = c_hi + kKeys * stride;
  uint16_t* const tiles_end = q_lo + kSplitQueries * stride + kWarpsPerBlock * 2 * kKeys * stride;
  float* const keys = reinterpret_cast<float*>(tiles_end);
  int32_t* const chosen = reinterpret_cast<int32_t*>(keys + int64_t(kSplitQueries) * key_stride);  // [warps][top]

  const SelectCta cta = select_cta(a, kSplitQueries);
  const int64_t list_head = cta.list_head, b = cta.b, kv_head = cta.kv_head, i0 = cta.i0;
  const int64_t head = a.shared ? kv_head * cta.group : list_head;  // one row per list: a shared list has G = 1
  const int count_q = cta.count;
  auto q_row = [&](int r) { return r < count_q ? (b * a.q_heads + head) * a.q_len + i0 + r : int64_t(-1); };
  // Under kOverlap a worker's loads are in flight four chunks at a time (stage_rows_split_batched).
  auto stage_split = [&](uint16_t* hi, uint16_t* lo, const auto* src, int rows, auto row_at, int worker, int workers) {
    if constexpr (kOverlap) {
      stage_rows_split_batched<TMma>(hi, lo, stride, src, dim, rows, row_at, worker, workers);
    } else {
      stage_rows_split<TMma>(hi, lo, stride, src, dim, rows, row_at, worker, workers);
    }
  };
  stage_split(q_hi, q_lo, a.q, kSplitQueries, q_row, tid, kThreads);
  for (int64_t x = tid; x < int64_t(kSplitQueries) * key_stride; x += kThreads) keys[x] = 0.0f;
  // Centroids up to the last query's causal candidates (warp_select hides each query's later ones).
  const int64_t last = i0 + count_q - 1 + a.query_offset;
  const int64_t c_end = a.causal ? (last >= 0 ? min(last / a.block_size + 1, nc) : 0) : nc;
  __syncthreads();
  const float* const cents = a.centroids + (b * a.kv_heads + kv_head) * nc * dim;
  for (int64_t c0 = int64_t(kKeys) * warp; c0 < c_end; c0 += int64_t(kKeys) * kWarpsPerBlock) {
    __syncwarp();  // every lane is done with the previous tile
    stage_split(c_hi, c_lo, cents + c0 * dim, kKeys,
                [&](int r) { return c0 + r < c_end ? int64_t(r) : int64_t(-1); }, lane, 32);
    __syncwarp();
    float s[kKeys / 8][4];
    zero(s);
    add_scores<TMma, kKeys / 8>(s, q_hi, c_hi, stride, dim, g, lane);
    add_scores<TMma, kKeys / 8>(s, q_hi, c_lo, stride, dim, g, lane);
    add_scores<TMma, kKeys / 8>(s, q_lo, c_hi, stride, dim, g, lane);
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int row = g + (e < 2 ? 0 : 8);
        const int64_t c = c0 + 8 * n + 2 * t + (e & 1);
        if (row < count_q && c < c_end) keys[row * key_stride + c] = s[n][e];
      }
    }
  }
  __syncthreads();
  select_cta_lists<kGroups>(a, cta, keys, key_stride, chosen);
}

// f(std::true_type) or f(std::false_type) as `flag` says: a runtime switch as a kernel's template parameter (the
// selection kernels' kOverlap).
template <typename F>
void with_flag(bool flag, F&& f) {
  if (flag) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

template <typename TQ, int kMaxDv>
void launch_select_mma(const SelectArgs<TQ>& a, const SelectTiling& tiling, int64_t grid, cudaStream_t stream) {
  with_flag(a.overlap_loads, [&](auto overlap) {
    constexpr auto kKernel = select_mma_kernel<TQ, kMaxDv, decltype(overlap)::value>;
    sdpa::cuda::allow_smem<kKernel>(tiling.smem);
    kKernel<<<unsigned(grid), kThreads, tiling.smem, stream>>>(a, tiling.queries, tiling.rows_per_query);
  });
  check_launch("sparse tensor-core selection kernel");
}

}  // namespace

// `probabilities`: the compression branch (one row per (query, head) of the list); `heads_per_list`: G for
// shared lists, else 1.
// `tiling.queries` > 0: tiled_select_kernel (select_tiling) or, with tiling.mma, select_mma_kernel
// (select_mma_tiling); else one CTA per list.
template <typename TQ>
void launch_select(const SelectArgs<TQ>& a, const SelectTiling& tiling, cudaStream_t stream) {
  const int64_t list_heads = a.shared ? a.kv_heads : a.q_heads, lists = a.batch * list_heads * a.q_len;
  if (lists == 0) return;
  if (tiling.queries > 0) {
    const int64_t grid = a.batch * list_heads * ((a.q_len + tiling.queries - 1) / tiling.queries);
    if (grid > int64_t(0x7fffffff)) throw std::runtime_error("sparse selection kernel: too many lists for one grid");
    if (tiling.split) {
      const auto launch = [&](auto mma_type, auto overlap) {
        const auto run = [&](auto groups) {
          constexpr auto kKernel =
              select_split_kernel<TQ, decltype(mma_type), decltype(overlap)::value, decltype(groups)::value>;
          sdpa::cuda::allow_smem<kKernel>(tiling.smem);
          kKernel<<<unsigned(grid), kThreads, tiling.smem, stream>>>(a);
        };
        // group_argmax is the routing's (float32 Q): the other instances are not built
        if constexpr (std::is_same_v<TQ, float>) {
          with_flag(a.group_argmax, run);
        } else {
          run(std::false_type{});
        }
      };
      if (tiling.split_bf16) {
        with_flag(a.overlap_loads, [&](auto overlap) { launch(BFloat16{}, overlap); });
      } else {
        with_flag(a.overlap_loads, [&](auto overlap) { launch(Float16{}, overlap); });
      }
      check_launch("sparse tensor-core selection kernel");
      return;
    }
    if (tiling.mma) {
      if constexpr (std::is_same_v<TQ, float>) {
        throw std::runtime_error("sparse selection kernel: the tensor-core selection takes 16-bit queries");
      } else if (!a.probabilities || a.v_dim <= 64) {
        launch_select_mma<TQ, 64>(a, tiling, grid, stream);
      } else if (a.v_dim <= 128) {
        launch_select_mma<TQ, 128>(a, tiling, grid, stream);
      } else {
        launch_select_mma<TQ, 256>(a, tiling, grid, stream);
      }
      return;
    }
    sdpa::cuda::allow_smem<tiled_select_kernel<TQ>>(tiling.smem);  // once per device: launches stay capturable
    tiled_select_kernel<TQ><<<unsigned(grid), kThreads, tiling.smem, stream>>>(a, tiling.queries, tiling.rows_per_query);
    check_launch("sparse selection kernel");
    return;
  }
  const size_t smem = size_t(std::max(a.num_centroids, a.num_blocks) + a.num_centroids) * sizeof(float) +
                      size_t(a.top) * sizeof(int32_t);
  select_kernel<TQ><<<unsigned(lists), kThreads, smem, stream>>>(a);
  check_launch("sparse selection kernel");
}

// The fine branch, one CTA per row over `f.rows` rows from f.row_begin (scores in f.scores).
template <typename T>
void launch_fine(const FineArgs<T>& f, cudaStream_t stream) {
  const size_t smem = size_t(f.top + 1) / 2 * 2 * sizeof(float) + size_t(f.top) * sizeof(int64_t);
  fine_kernel<T><<<unsigned(f.rows), kThreads, smem, stream>>>(f);
  check_launch("sparse fine kernel");
}

// The tiled fine branch (f.capacity from fine_capacity, `smem` from fine_tiled_smem).
template <typename T>
void launch_fine_tiled(const FineTiledArgs<T>& f, size_t smem, cudaStream_t stream) {
  const int64_t grid = f.batch * f.kv_heads * ((f.q_heads / f.kv_heads * f.q_len + kFineRows - 1) / kFineRows);
  if (grid > int64_t(0x7fffffff)) throw std::runtime_error("sparse fine kernel: too many rows for one CUDA grid");
  sdpa::cuda::allow_smem<fine_tiled_kernel<T>>(smem);
  fine_tiled_kernel<T><<<unsigned(grid), kThreads, smem, stream>>>(f);
  check_launch("sparse fine kernel");
}

template void launch_select<float>(const SelectArgs<float>&, const SelectTiling&, cudaStream_t);
template void launch_select<Float16>(const SelectArgs<Float16>&, const SelectTiling&, cudaStream_t);
template void launch_select<BFloat16>(const SelectArgs<BFloat16>&, const SelectTiling&, cudaStream_t);
template void launch_fine<float>(const FineArgs<float>&, cudaStream_t);
template void launch_fine<Float16>(const FineArgs<Float16>&, cudaStream_t);
template void launch_fine<BFloat16>(const FineArgs<BFloat16>&, cudaStream_t);
template void launch_fine_tiled<float>(const FineTiledArgs<float>&, size_t, cudaStream_t);
template void launch_fine_tiled<Float16>(const FineTiledArgs<Float16>&, size_t, cudaStream_t);
template void launch_fine_tiled<BFloat16>(const FineTiledArgs<BFloat16>&, size_t, cudaStream_t);

}  // namespace onnxattn::sparse::cuda
