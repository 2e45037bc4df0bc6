// SparseRoutedAttention's attention by segment (see cuda_routed.cuh): invert the routing lists, then one
// launch per slot in which a CTA stages one chosen segment for up to kRoutedChunk rows that chose it.
#include "sparse/cuda_routed.cuh"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sdpa/cuda_device.cuh"  // allow_smem
#include "sparse/cuda_common.cuh"

namespace onnxattn::sparse::cuda {
namespace {

inline constexpr int kScanThreads = 1024;
inline constexpr int kScanPerThread = 4;
inline constexpr int kQueriesPerPass = 4;  // rows a warp scores together (each staged key read once for them)
inline constexpr int kMaxValueRegs = kRoutedMaxDim / 32;


// The (slot, batch * list head, segment) key of entry `idx` = list * top_k + slot, or -1 for an empty choice.
__device__ __forceinline__ int64_t entry_key(const RoutedBlocksArgs& a, int64_t idx, int64_t* list) {
  const int32_t segment = a.lists[idx];
  *list = idx / a.top_k;
  if (segment < 0 || segment >= a.num_segments) return -1;
  const int64_t slot = idx % a.top_k, bh = *list / a.q_len;
  return (slot * a.batch * a.list_heads + bh) * a.num_segments + segment;
}

__global__ void count_kernel(const RoutedBlocksArgs a, int64_t entries) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < entries; idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t row;
    const int64_t key = entry_key(a, idx, &row);
    if (key >= 0) atomicAdd(a.counts + key, 1);
  }
}

__global__ void fill_kernel(const RoutedBlocksArgs a, int64_t entries) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < entries; idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t row;
    const int64_t key = entry_key(a, idx, &row);
    if (key >= 0) a.entries[a.offsets[key] + atomicAdd(a.cursors + key, 1)] = int32_t(row);
  }
}

// Inclusive scan over the block of (x, y) pairs; returns the block's totals through `total_*`.
__device__ __forceinline__ void block_scan_pair(int& x, int& y, int* warp_x, int* warp_y, int& total_x, int& total_y) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int o = 1; o < 32; o *= 2) {
    const int ux = __shfl_up_sync(0xffffffffu, x, o), uy = __shfl_up_sync(0xffffffffu, y, o);
    if (lane >= o) x += ux, y += uy;
  }
  if (lane == 31) warp_x[warp] = x, warp_y[warp] = y;
  __syncthreads();
  if (warp == 0) {
    int wx = warp_x[lane], wy = warp_y[lane];  // kScanThreads / 32 == 32 warps
    for (int o = 1; o < 32; o *= 2) {
      const int ux = __shfl_up_sync(0xffffffffu, wx, o), uy = __shfl_up_sync(0xffffffffu, wy, o);
      if (lane >= o) wx += ux, wy += uy;
    }
    warp_x[lane] = wx, warp_y[lane] = wy;
  }
  __syncthreads();
  if (warp > 0) x += warp_x[warp - 1], y += warp_y[warp - 1];
  total_x = warp_x[31], total_y = warp_y[31];
  __syncthreads();  // warp_x / warp_y are reused by the next call
}

// One CTA: offsets = exclusive scan of counts, chunk_offsets = exclusive scan of ceil(counts / lists_per_chunk),
// each with its total at [n].
__global__ void __launch_bounds__(kScanThreads) scan_kernel(const RoutedBlocksArgs a, int64_t n) {
  __shared__ int warp_x[32], warp_y[32];
  int carry_x = 0, carry_y = 0;
  for (int64_t base = 0; base < n; base += int64_t(kScanThreads) * kScanPerThread) {
    const int64_t first = base + int64_t(threadIdx.x) * kScanPerThread;
    int cx[kScanPerThread], cy[kScanPerThread], x = 0, y = 0;
    for (int e = 0; e < kScanPerThread; ++e) {
      cx[e] = first + e < n ? a.counts[first + e] : 0;
      cy[e] = (cx[e] + a.lists_per_chunk - 1) / a.lists_per_chunk;
      x += cx[e], y += cy[e];
    }
    int total_x, total_y;
    block_scan_pair(x, y, warp_x, warp_y, total_x, total_y);
    int run_x = carry_x + x, run_y = carry_y + y;  // inclusive end of this thread's elements
    for (int e = kScanPerThread - 1; e >= 0; --e) {
      run_x -= cx[e], run_y -= cy[e];
      if (first + e < n) a.offsets[first + e] = run_x, a.chunk_offsets[first + e] = run_y;
    }
    carry_x += total_x, carry_y += total_y;
  }
  if (threadIdx.x == 0) a.offsets[n] = carry_x, a.chunk_offsets[n] = carry_y;
}

__global__ void init_rows_kernel(const RoutedBlocksArgs a, int64_t rows) {
  const int64_t values = rows * a.v_dim;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < values; x += int64_t(gridDim.x) * blockDim.x) {
    a.out[x] = 0.0f;
    if (x < rows) a.row_max[x] = kNegInf, a.row_sum[x] = 0.0f;
  }
}

__global__ void normalize_kernel(const RoutedBlocksArgs a, int64_t rows) {
  const int64_t values = rows * a.v_dim;
  for (int64_t x = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; x < values; x += int64_t(gridDim.x) * blockDim.x) {
    // As the row kernel: a NaN sum (a NaN score) keeps the output NaN (NaN * 0), an empty row gives 0.
    const float sum = a.row_sum[x / a.v_dim];
    a.out[x] *= sum > 0.0f ? 1.0f / sum : 0.0f;
  }
}

// Slot `slot`'s chunk blockIdx.x (past the slot's chunks: nothing). Shared memory: the chunk's scaled query
// rows [kRoutedChunk][D], a key tile [kRoutedKeys][D + 1] (odd stride: a lane per key reads its own row
// conflict-free), a value tile [kRoutedKeys][Dv], the rows' partial outputs [kRoutedChunk][Dv], maxima, sums.
__global__ void __launch_bounds__(kThreads) segment_kernel(const RoutedBlocksArgs a, int64_t slot) {
  extern __shared__ float smem[];
  const int64_t lists_per_slot = a.batch * a.q_heads * a.num_segments;
  const int64_t k0 = slot * lists_per_slot;
  const int64_t chunk = int64_t(a.chunk_offsets[k0]) + blockIdx.x;
  if (chunk >= a.chunk_offsets[k0 + lists_per_slot]) return;
  // The key whose chunks hold this one: chunk_offsets[lo] <= chunk < chunk_offsets[hi] throughout.
  int64_t lo = k0, hi = k0 + lists_per_slot;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a.chunk_offsets[mid] <= chunk) lo = mid; else hi = mid;
  }
  const int64_t key = lo;
  const int32_t e0 = a.offsets[key] + int32_t(chunk - a.chunk_offsets[key]) * kRoutedChunk;
  const int rows = min(kRoutedChunk, a.offsets[key + 1] - e0);
  const int64_t list = key - k0, bh = list / a.num_segments, segment = list % a.num_segments;
  const int64_t kv_head = (bh % a.q_heads) / (a.q_heads / a.kv_heads), b = bh / a.q_heads;
  const int64_t j_begin = segment * a.segment_size, j_end = min(j_begin + a.segment_size, a.kv_len);
  const int dim = a.dim, v_dim = a.v_dim, k_stride = dim + 1;

  float* const qs = smem;
  float* const ks = qs + kRoutedChunk * dim;
  float* const vs = ks + kRoutedKeys * k_stride;
  float* const os = vs + kRoutedKeys * v_dim;
  float* const ms = os + kRoutedChunk * v_dim;
  float* const ls = ms + kRoutedChunk;
  int* const row_of = reinterpret_cast<int*>(ls + kRoutedChunk);
  int64_t* const pos_of = reinterpret_cast<int64_t*>(row_of + 2 * kRoutedChunk);  // 8-byte aligned

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int r = threadIdx.x; r < kRoutedChunk; r += kThreads) {
    const int row = r < rows ? a.entries[e0 + r] : -1;
    row_of[r] = row;
    // The row's query position (bottom-right aligned); causal rows see keys up to it.
    pos_of[r] = row >= 0 ? row % a.q_len + a.kv_len - a.q_len : -1;
    ms[r] = kNegInf;
    ls[r] = 0.0f;
  }
  __syncthreads();
  for (int x = threadIdx.x; x < kRoutedChunk * dim; x += kThreads) {
    const int r = x / dim;
    qs[x] = r < rows ? static_cast<const float*>(a.q)[int64_t(row_of[r]) * dim + x % dim] * a.scale : 0.0f;
  }
  for (int x = threadIdx.x; x < kRoutedChunk * v_dim; x += kThreads) os[x] = 0.0f;

  const float* const k_head = static_cast<const float*>(a.k) + (b * a.kv_heads + kv_head) * a.kv_len * dim;
  const float* const v_head = static_cast<const float*>(a.v) + (b * a.kv_heads + kv_head) * a.kv_len * v_dim;
  const int value_regs = (v_dim + 31) / 32;
  // Causal: tiles past every row's position are hidden from all of them; skipping them changes no bit (a
  // wholly hidden tile leaves each row's max, sum and output as they were).
  int64_t tiles_end = j_end;
  if (a.causal) {
    int64_t last = -1;
    for (int r = 0; r < rows; ++r) last = max(last, pos_of[r]);
    tiles_end = min(j_end, last + 1);
  }
  for (int64_t t0 = j_begin; t0 < tiles_end; t0 += kRoutedKeys) {
    const int keys = int(min(int64_t(kRoutedKeys), j_end - t0));
    __syncthreads();  // the previous tile is done with
    for (int x = threadIdx.x; x < keys * dim; x += kThreads) ks[(x / dim) * k_stride + x % dim] = k_head[t0 * dim + x];
    for (int x = threadIdx.x; x < keys * v_dim; x += kThreads) vs[x] = v_head[t0 * v_dim + x];
    __syncthreads();
    // Each warp: its rows kQueriesPerPass at a time; lane l scores keys l and l + 32 of the tile.
    for (int r0 = warp * (kRoutedChunk / kWarpsPerBlock); r0 < (warp + 1) * (kRoutedChunk / kWarpsPerBlock) && r0 < rows;
         r0 += kQueriesPerPass) {
      float s[kQueriesPerPass][2];
      for (int q = 0; q < kQueriesPerPass; ++q) s[q][0] = s[q][1] = 0.0f;
      for (int d = 0; d < dim; ++d) {
        const float k_lo = lane < keys ? ks[lane * k_stride + d] : 0.0f;
        const float k_hi = lane + 32 < keys ? ks[(lane + 32) * k_stride + d] : 0.0f;
#pragma unroll
        for (int q = 0; q < kQueriesPerPass; ++q) {
          const float qd = qs[(r0 + q) * dim + d];
          s[q][0] = fmaf(qd, k_lo, s[q][0]);
          s[q][1] = fmaf(qd, k_hi, s[q][1]);
        }
      }
      float p[kQueriesPerPass][2], alpha[kQueriesPerPass];
#pragma unroll
      for (int q = 0; q < kQueriesPerPass; ++q) {
        const int r = r0 + q;
        const bool live = r < rows;
        const int64_t limit = live ? (a.causal ? min(pos_of[r] + 1, j_end) : j_end) : t0;  // keys < limit visible
        for (int h = 0; h < 2; ++h) {
          const int64_t j = t0 + lane + 32 * h;
          if (lane + 32 * h >= keys || j >= limit) s[q][h] = kNegInf;
        }
        const float m_old = live ? ms[r] : kNegInf;
        const float m_new = fmaxf(m_old, warp_max(fmaxf(s[q][0], s[q][1])));
        const float m_use = m_new == kNegInf ? 0.0f : m_new;
        p[q][0] = expf(s[q][0] - m_use);
        p[q][1] = expf(s[q][1] - m_use);
        alpha[q] = expf(m_old - m_use);
        const float sum = warp_sum(p[q][0] + p[q][1]);
        __syncwarp();
        if (live && lane == 0) ms[r] = m_new, ls[r] = ls[r] * alpha[q] + sum;
      }
      float o[kQueriesPerPass][kMaxValueRegs];
#pragma unroll
      for (int q = 0; q < kQueriesPerPass; ++q) {
#pragma unroll
        for (int x = 0; x < kMaxValueRegs; ++x) {
          const int e = lane + 32 * x;
          o[q][x] = x < value_regs && e < v_dim && r0 + q < rows ? os[(r0 + q) * v_dim + e] * alpha[q] : 0.0f;
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // keys 32 h + kl, whose probabilities lane kl holds in p[.][h]
        for (int kl = 0; kl < 32 && 32 * h + kl < keys; ++kl) {
          float w[kQueriesPerPass];
          bool any = false;
#pragma unroll
          for (int q = 0; q < kQueriesPerPass; ++q) {
            w[q] = __shfl_sync(0xffffffffu, p[q][h], kl);
            any = any || w[q] != 0.0f;
          }
          if (!any) continue;  // a weightless key is never read (NaN in its V cannot leak)
          const float* const value_row = vs + (32 * h + kl) * v_dim;
#pragma unroll
          for (int x = 0; x < kMaxValueRegs; ++x) {
            const int e = lane + 32 * x;
            if (x < value_regs && e < v_dim) {
              const float value = value_row[e];
#pragma unroll
              for (int q = 0; q < kQueriesPerPass; ++q) {
                if (w[q] != 0.0f) o[q][x] = fmaf(w[q], value, o[q][x]);
              }
            }
          }
        }
      }
#pragma unroll
      for (int q = 0; q < kQueriesPerPass; ++q) {
#pragma unroll
        for (int x = 0; x < kMaxValueRegs; ++x) {
          const int e = lane + 32 * x;
          if (x < value_regs && e < v_dim && r0 + q < rows) os[(r0 + q) * v_dim + e] = o[q][x];
        }
      }
    }
  }
  __syncthreads();
  // Merge each row's partial over this segment into its running state (the only CTA touching it in this slot).
  for (int r = warp; r < rows; r += kWarpsPerBlock) {
    const float m_part = ms[r];
    // No visible key here. (A partial whose scores were all NaN also keeps m = -inf, fmaxf skipping NaN, but
    // its sum is NaN: it merges, and the row turns NaN as in the row kernel.)
    if (m_part == kNegInf && ls[r] == 0.0f) continue;
    const int64_t row = row_of[r];
    const float m_row = a.row_max[row], m_new = fmaxf(m_row, m_part);
    const float m_use = m_new == kNegInf ? 0.0f : m_new;  // never -inf - -inf
    const float keep = expf(m_row - m_use), add = expf(m_part - m_use);  // exp(-inf) = 0 for a first partial
    for (int e = lane; e < v_dim; e += 32) {
      a.out[row * v_dim + e] = a.out[row * v_dim + e] * keep + os[r * v_dim + e] * add;
    }
    __syncwarp();
    if (lane == 0) a.row_sum[row] = a.row_sum[row] * keep + ls[r] * add, a.row_max[row] = m_new;
  }
}

void check(cudaError_t error, const char* what) {
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("sparse attention by block: ") + what + ": " + cudaGetErrorString(error));
  }
}

}  // namespace

void invert_block_lists(RoutedBlocksArgs& a, void* scratch, cudaStream_t stream) {
  const int64_t lists = block_lists(a), entries = lists * a.top_k, keys = block_list_keys(a);
  const int64_t rows = a.batch * a.q_heads * a.q_len;
  char* at = static_cast<char*>(scratch);
  auto take = [&](size_t bytes) {
    char* p = at;
    at += routed_align256(bytes);
    return p;
  };
  a.counts = reinterpret_cast<int32_t*>(take(size_t(keys) * 4));
  a.cursors = reinterpret_cast<int32_t*>(take(size_t(keys) * 4));
  a.offsets = reinterpret_cast<int32_t*>(take(size_t(keys + 1) * 4));
  a.chunk_offsets = reinterpret_cast<int32_t*>(take(size_t(keys + 1) * 4));
  a.entries = reinterpret_cast<int32_t*>(take(size_t(entries) * 4));
  a.row_max = reinterpret_cast<float*>(take(size_t(rows) * 4));
  a.row_sum = reinterpret_cast<float*>(take(size_t(rows) * 4));

  check(cudaMemsetAsync(a.counts, 0, size_t(keys) * 4, stream), "clearing the list counts");
  check(cudaMemsetAsync(a.cursors, 0, size_t(keys) * 4, stream), "clearing the list cursors");
  count_kernel<<<grid_for(entries), 256, 0, stream>>>(a, entries);
  scan_kernel<<<1, kScanThreads, 0, stream>>>(a, keys);
  fill_kernel<<<grid_for(entries), 256, 0, stream>>>(a, entries);
  init_rows_kernel<<<grid_for(rows * a.v_dim), 256, 0, stream>>>(a, rows);
  check_launch("block list inversion kernels");
}

void normalize_block_rows(const RoutedBlocksArgs& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.q_heads * a.q_len;
  normalize_kernel<<<grid_for(rows * a.v_dim), 256, 0, stream>>>(a, rows);
  check_launch("block list normalize kernel");
}

void run_routed_blocks(RoutedBlocksArgs a, void* scratch, cudaStream_t stream) {
  a.list_heads = a.q_heads, a.heads_per_list = 1, a.lists_per_chunk = kRoutedChunk;
  const int64_t rows = block_lists(a), lists_per_slot = a.batch * a.q_heads * a.num_segments;
  invert_block_lists(a, scratch, stream);
  const size_t smem = routed_blocks_smem_bytes(a.dim, a.v_dim);
  sdpa::cuda::allow_smem<segment_kernel>(smem);
  // Each row is in at most one list of a slot: at most rows / chunk + (one partial chunk per non-empty list).
  const int64_t grid = (rows + kRoutedChunk - 1) / kRoutedChunk + std::min(lists_per_slot, rows);
  if (grid > int64_t(0x7fffffff)) throw std::runtime_error("SparseRoutedAttention: too many rows for the segment kernel");
  for (int64_t slot = 0; slot < a.top_k; ++slot) {
    segment_kernel<<<unsigned(grid), kThreads, smem, stream>>>(a, slot);
  }
  check_launch("routed segment kernel");
  normalize_block_rows(a, stream);
}

}  // namespace onnxattn::sparse::cuda
