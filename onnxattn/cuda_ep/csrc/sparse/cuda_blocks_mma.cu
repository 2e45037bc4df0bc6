// The sparse ops' attention by block on tensor cores (see cuda_blocks_mma.cuh).
#include "sparse/cuda_blocks_mma.cuh"

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include "sdpa/cuda_device.cuh"  // allow_smem
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_mma_tiles.cuh"

namespace onnxattn::sparse::cuda {
namespace {

using namespace mma_tiles;  // NOLINT: the tile pieces this kernel is made of
static_assert(kMmaRows == 16 * kWarpsPerBlock, "a warp per 16 rows");

// The chunk of slot `slot` that CTA blockIdx.x takes: its (batch, list head, block) key, its lists and rows.
struct ChunkWork {
  int32_t e0;  // its first entry in a.entries
  int per_list, rows;
  int64_t b, list_head, kv_head, j_begin, j_end;
};

__device__ __forceinline__ ChunkWork chunk_work(const RoutedBlocksArgs& a, int64_t k0, int64_t key, int64_t chunk) {
  ChunkWork w;
  w.e0 = a.offsets[key] + int32_t(chunk - a.chunk_offsets[key]) * a.lists_per_chunk;
  const int lists = min(a.lists_per_chunk, a.offsets[key + 1] - w.e0);
  w.per_list = int(a.heads_per_list), w.rows = lists * w.per_list;
  const int64_t list_key = key - k0, bh = list_key / a.num_segments, block = list_key % a.num_segments;
  w.list_head = bh % a.list_heads, w.b = bh / a.list_heads;
  w.kv_head = w.list_head * a.heads_per_list / (a.q_heads / a.kv_heads);
  w.j_begin = block * a.segment_size, w.j_end = min(w.j_begin + a.segment_size, a.kv_len);
  return w;
}

// Row r < kMmaRows of the chunk: its output row and query position (-1, -1: no row).
__device__ __forceinline__ void chunk_row(const RoutedBlocksArgs& a, const ChunkWork& w, int r, int64_t& row,
                                          int64_t& pos) {
  row = -1, pos = -1;
  if (r < w.rows) {
    const int64_t list = a.entries[w.e0 + r / w.per_list], i = list % a.q_len;
    const int64_t head = w.list_head * a.heads_per_list + r % w.per_list;
    row = (w.b * a.q_heads + head) * a.q_len + i;
    pos = i + a.kv_len - a.q_len;  // bottom-right aligned
  }
}

// The kernels' shared memory (blocks_mma_smem_bytes): Q rows [kMmaRows], a key tile and a value tile [kMmaKeys]
// (16-bit, padded rows), then each row's output row (-1: none) and query position.
struct BlocksSmem {
  int q_stride, v_stride;
  uint16_t *qs, *ks, *vs;
  int64_t *row_of, *pos_of;
};
__device__ __forceinline__ BlocksSmem carve_blocks_smem(unsigned char* base, int dim, int v_dim) {
  BlocksSmem sm;
  sm.q_stride = mma_row_stride(dim), sm.v_stride = mma_row_stride(v_dim);
  sm.qs = reinterpret_cast<uint16_t*>(base);
  sm.ks = sm.qs + kMmaRows * sm.q_stride;
  sm.vs = sm.ks + kMmaKeys * sm.q_stride;
  sm.row_of = reinterpret_cast<int64_t*>(sm.vs + kMmaKeys * sm.v_stride);
  sm.pos_of = sm.row_of + kMmaRows;
  return sm;
}

// One staged tile of keys t0.. for the warp's rows r_lo, r_lo + 8: scores, the hidden ones masked, the online
// softmax step and O += P V.
template <typename TMma, int kMaxDv>
__device__ __forceinline__ void attend_tile(const RoutedBlocksArgs& a, const uint16_t* qs, const uint16_t* ks,
                                            const uint16_t* vs, int q_stride, int v_stride, int64_t t0,
                                            int64_t j_end, int r_lo, bool live_lo, bool live_hi, int64_t pos_lo,
                                            int64_t pos_hi, float (&o)[kMaxDv / 8][4], float (&m)[2], float (&l)[2],
                                            float scale_log2) {
  const int lane = threadIdx.x % 32;
  float s[kKeyTiles][4];
  zero(s);
  add_scores<TMma>(s, qs, ks, q_stride, a.dim, r_lo, lane);
  // Hidden: keys past the block's end, and under causal keys past the row's position; rows past the chunk's.
  hide(s, lane, [&](int col, int half) {
    const int64_t j = t0 + col;
    return !(half == 0 ? live_lo : live_hi) || j >= j_end || (a.causal && j > (half == 0 ? pos_lo : pos_hi));
  });
  softmax_step<kMaxDv>(s, o, m, l, scale_log2);
  add_pv<TMma, kMaxDv>(o, s, vs, v_stride, a.v_dim, lane);
}

// The last key in [lo, hi) whose chunks start at or before `chunk` (chunk_offsets ascend; an empty key repeats
// the next one's offset), given chunk_offsets[lo] <= chunk < chunk_offsets[hi]: the binary search's answer. A warp
// probes 32 evenly spaced keys a round (find_key_narrow), so ~log32(hi - lo) dependent loads instead of log2.
// Every lane returns it.
__device__ __forceinline__ int64_t warp_find_key(const int32_t* chunk_offsets, int64_t lo, int64_t hi, int64_t chunk) {
  const int lane = threadIdx.x % 32;
  while (hi - lo > 1) {
    const int64_t at = lo + lane * find_key_step(lo, hi);
    find_key_narrow(lo, hi, __ballot_sync(0xffffffffu, at < hi && chunk_offsets[at] <= chunk));
  }
  return lo;
}

// The running state (max, sum) of the rows r_lo and r_hi of a warp, for those that are live.
struct RowState {
  float max[2], sum[2];
};
__device__ __forceinline__ RowState row_state(const RoutedBlocksArgs& a, bool live_lo, bool live_hi, int64_t row_lo,
                                              int64_t row_hi) {
  RowState s;
  s.max[0] = live_lo ? a.row_max[row_lo] : 0.0f, s.sum[0] = live_lo ? a.row_sum[row_lo] : 0.0f;
  s.max[1] = live_hi ? a.row_max[row_hi] : 0.0f, s.sum[1] = live_hi ? a.row_sum[row_hi] : 0.0f;
  return s;
}

// Merges each live row's partial over this block (o, m, l) into its running state (`state`, read before) and its
// output row: the only CTA touching the row in this slot. kReadWhole: the lane's part of the output row is read
// whole before any of it is written (one memory latency, not one per 8 columns).
template <int kMaxDv, bool kReadWhole>
__device__ __forceinline__ void merge_rows(const RoutedBlocksArgs& a, const float (&o)[kMaxDv / 8][4],
                                           const float (&m)[2], const float (&l)[2], bool live_lo, bool live_hi,
                                           int64_t row_lo, int64_t row_hi, const RowState& state, float scale_log2) {
  const int t = threadIdx.x % 4, v_dim = a.v_dim;
  const float l_lo = sdpa::cuda::quad_sum(l[0]), l_hi = sdpa::cuda::quad_sum(l[1]);
  const bool merge_lo = live_lo && !(m[0] == kNegInf && l_lo == 0.0f);
  const bool merge_hi = live_hi && !(m[1] == kNegInf && l_hi == 0.0f);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half == 0 ? merge_lo : merge_hi)) continue;
    const int64_t row = half == 0 ? row_lo : row_hi;
    const float m_row = state.max[half], s_row = state.sum[half];
    // The running state is in log2 units of the scaled score (the normalisation only needs the sum).
    const float m_part = m[half] * scale_log2, l_part = half == 0 ? l_lo : l_hi;
    const float m_new = fmaxf(m_row, m_part), m_use = m_new == kNegInf ? 0.0f : m_new;
    const float keep = exp2f(m_row - m_use), add = exp2f(m_part - m_use);
    float* const out = a.out + row * v_dim + 2 * t;
    if constexpr (kReadWhole) {
      float2 before[kMaxDv / 8];
#pragma unroll
      for (int n = 0; n < kMaxDv / 8; ++n) {
        if (8 * n < v_dim) before[n] = *reinterpret_cast<const float2*>(out + 8 * n);
      }
#pragma unroll
      for (int n = 0; n < kMaxDv / 8; ++n) {
        if (8 * n >= v_dim) break;
        const float2 value = {before[n].x * keep + o[n][2 * half] * add, before[n].y * keep + o[n][2 * half + 1] * add};
        *reinterpret_cast<float2*>(out + 8 * n) = value;
      }
    } else {
#pragma unroll
      for (int n = 0; n < kMaxDv / 8; ++n) {
        if (8 * n >= v_dim) break;
        float2 value = *reinterpret_cast<float2*>(out + 8 * n);
        value.x = value.x * keep + o[n][2 * half] * add;
        value.y = value.y * keep + o[n][2 * half + 1] * add;
        *reinterpret_cast<float2*>(out + 8 * n) = value;
      }
    }
    if (t == 0) a.row_sum[row] = s_row * keep + l_part * add, a.row_max[row] = m_new;
  }
}

// Slot `slot`'s chunk blockIdx.x (past the slot's chunks: nothing). kMaxDv >= Dv bounds the output registers.
template <typename TIn, typename TMma, int kMaxDv>
__global__ void __launch_bounds__(kThreads) blocks_mma_kernel(const RoutedBlocksArgs a, int64_t slot) {
  extern __shared__ __align__(16) unsigned char blocks_smem[];
  const int64_t keys_per_slot = a.batch * a.list_heads * a.num_segments, k0 = slot * keys_per_slot;
  const int64_t chunk = int64_t(a.chunk_offsets[k0]) + blockIdx.x;
  if (chunk >= a.chunk_offsets[k0 + keys_per_slot]) return;
  int64_t lo = k0, hi = k0 + keys_per_slot;  // chunk_offsets[lo] <= chunk < chunk_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a.chunk_offsets[mid] <= chunk) lo = mid; else hi = mid;
  }
  const ChunkWork w = chunk_work(a, k0, lo, chunk);
  const int rows = w.rows, dim = a.dim, v_dim = a.v_dim;
  const BlocksSmem sm = carve_blocks_smem(blocks_smem, dim, v_dim);
  const int q_stride = sm.q_stride, v_stride = sm.v_stride;
  uint16_t *const qs = sm.qs, *const ks = sm.ks, *const vs = sm.vs;
  int64_t *const row_of = sm.row_of, *const pos_of = sm.pos_of;

  for (int r = threadIdx.x; r < kMmaRows; r += kThreads) chunk_row(a, w, r, row_of[r], pos_of[r]);
  __syncthreads();
  stage_rows<TMma>(qs, q_stride, static_cast<const TIn*>(a.q), dim, [&](int r) { return row_of[r]; });

  const int64_t head_rows = (w.b * a.kv_heads + w.kv_head) * a.kv_len;
  const TIn* const k_head = static_cast<const TIn*>(a.k) + head_rows * dim;
  const TIn* const v_head = static_cast<const TIn*>(a.v) + head_rows * v_dim;
  // Causal: keys past every row's position are hidden from all of them, so their tiles are never staged.
  int64_t tiles_end = w.j_end;
  if (a.causal) {
    int64_t last = -1;
    for (int r = 0; r < rows; ++r) last = max(last, pos_of[r]);
    tiles_end = min(w.j_end, last + 1);
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const bool warp_live = 16 * warp < rows;
  const int r_lo = 16 * warp + g, r_hi = r_lo + 8;
  const bool live_lo = r_lo < rows, live_hi = r_hi < rows;
  const int64_t pos_lo = pos_of[r_lo], pos_hi = pos_of[r_hi];
  const float scale_log2 = a.scale * sdpa::cuda::kLog2e;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};  // rows r_lo, r_hi
  float o[kMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  for (int64_t t0 = w.j_begin; t0 < tiles_end; t0 += kMmaKeys) {
    const int64_t tile_keys = min(int64_t(kMmaKeys), w.j_end - t0);
    __syncthreads();  // the previous tile is done with
    stage_rows<TMma>(ks, q_stride, k_head + t0 * dim, dim, [&](int r) { return r < tile_keys ? int64_t(r) : -1; });
    stage_rows<TMma>(vs, v_stride, v_head + t0 * v_dim, v_dim,
                     [&](int r) { return r < tile_keys ? int64_t(r) : -1; });
    __syncthreads();
    if (!warp_live) continue;
    attend_tile<TMma, kMaxDv>(a, qs, ks, vs, q_stride, v_stride, t0, w.j_end, r_lo, live_lo, live_hi, pos_lo, pos_hi,
                              o, m, l, scale_log2);
  }
  if (!warp_live) return;  // no barrier below
  const int64_t row_lo = live_lo ? row_of[r_lo] : 0, row_hi = live_hi ? row_of[r_hi] : 0;
  // The quad's four lanes read the running state before its first lane writes it.
  const RowState state = row_state(a, live_lo, live_hi, row_lo, row_hi);
  __syncwarp();
  merge_rows<kMaxDv, false>(a, o, m, l, live_lo, live_hi, row_lo, row_hi, state, scale_log2);
}

// blocks_mma_kernel with its memory latencies overlapped (ONNXATTN_SPARSE_CUDA_LOADS=async, the default): the same
// arithmetic in the same order, so the same bits. Its key is found by warp_find_key; the block's first key and value
// tiles are issued before the rows are known and the query rows right after (cp.async for 16-bit inputs, so all three
// are in flight at once); each row's running state is read before the tiles are scored, and its output row read whole
// before any of it is written back. (The other kernel, kept under LOADS=sync, waits for each 16-byte chunk it stages,
// each step of its search and each 8-byte piece of an output row in turn.)
template <typename TIn, typename TMma, int kMaxDv>
__global__ void __launch_bounds__(kThreads) blocks_mma_overlapped_kernel(const RoutedBlocksArgs a, int64_t slot) {
  static_assert(kThreads >= kMmaRows && kMmaRows == 64, "a thread per row; two rows per lane of a warp");
  extern __shared__ __align__(16) unsigned char blocks_smem[];
  const int64_t keys_per_slot = a.batch * a.list_heads * a.num_segments, k0 = slot * keys_per_slot;
  const int64_t chunk = int64_t(a.chunk_offsets[k0]) + blockIdx.x;
  if (chunk >= a.chunk_offsets[k0 + keys_per_slot]) return;
  const ChunkWork w = chunk_work(a, k0, warp_find_key(a.chunk_offsets, k0, k0 + keys_per_slot, chunk), chunk);
  const int rows = w.rows, dim = a.dim, v_dim = a.v_dim;
  const BlocksSmem sm = carve_blocks_smem(blocks_smem, dim, v_dim);
  const int q_stride = sm.q_stride, v_stride = sm.v_stride;
  uint16_t *const qs = sm.qs, *const ks = sm.ks, *const vs = sm.vs;
  int64_t *const row_of = sm.row_of, *const pos_of = sm.pos_of;

  const int64_t head_rows = (w.b * a.kv_heads + w.kv_head) * a.kv_len;
  const TIn* const k_head = static_cast<const TIn*>(a.k) + head_rows * dim;
  const TIn* const v_head = static_cast<const TIn*>(a.v) + head_rows * v_dim;
  auto issue_tile = [&](int64_t t0) {
    const int64_t tile_keys = min(int64_t(kMmaKeys), w.j_end - t0);
    const auto tile_row = [tile_keys](int r) { return r < tile_keys ? int64_t(r) : int64_t(-1); };
    issue_rows<TMma>(ks, q_stride, k_head + t0 * dim, dim, tile_row);
    issue_rows<TMma>(vs, v_stride, v_head + t0 * v_dim, v_dim, tile_row);
  };
  issue_tile(w.j_begin);  // staged even where causality hides it all (harmless: the keys exist)
  if (threadIdx.x < kMmaRows) chunk_row(a, w, threadIdx.x, row_of[threadIdx.x], pos_of[threadIdx.x]);
  __syncthreads();
  issue_rows<TMma>(qs, q_stride, static_cast<const TIn*>(a.q), dim, [&](int r) { return row_of[r]; });
  sdpa::cuda::cp_async_commit();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  // Causal: keys past every row's position are hidden from all of them, so their tiles are never staged. Each warp
  // reduces the positions itself (a missing row's is -1).
  int64_t tiles_end = w.j_end;
  if (a.causal) {
    int64_t last = max(pos_of[lane], pos_of[lane + 32]);
    for (int step = 16; step > 0; step /= 2) last = max(last, __shfl_xor_sync(0xffffffffu, last, step));
    tiles_end = min(w.j_end, last + 1);
  }
  const bool warp_live = 16 * warp < rows;
  const int r_lo = 16 * warp + g, r_hi = r_lo + 8;
  const bool live_lo = r_lo < rows, live_hi = r_hi < rows;
  const int64_t pos_lo = pos_of[r_lo], pos_hi = pos_of[r_hi];
  const int64_t row_lo = live_lo ? row_of[r_lo] : 0, row_hi = live_hi ? row_of[r_hi] : 0;
  // Final since the slot before's launch: read now, used after the tiles (no lane writes it before the barriers).
  const RowState state = row_state(a, live_lo, live_hi, row_lo, row_hi);
  const float scale_log2 = a.scale * sdpa::cuda::kLog2e;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};  // rows r_lo, r_hi
  float o[kMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  sdpa::cuda::cp_async_wait<0>();
  __syncthreads();

  for (int64_t t0 = w.j_begin; t0 < tiles_end; t0 += kMmaKeys) {
    if (t0 != w.j_begin) {  // the first tile is staged above
      __syncthreads();      // the previous tile is done with
      issue_tile(t0);
      sdpa::cuda::cp_async_commit();
      sdpa::cuda::cp_async_wait<0>();
      __syncthreads();
    }
    if (warp_live) {
      attend_tile<TMma, kMaxDv>(a, qs, ks, vs, q_stride, v_stride, t0, w.j_end, r_lo, live_lo, live_hi, pos_lo,
                                pos_hi, o, m, l, scale_log2);
    }
  }
  if (!warp_live) return;  // no barrier below
  merge_rows<kMaxDv, true>(a, o, m, l, live_lo, live_hi, row_lo, row_hi, state, scale_log2);
}

// ---- By query tiles (RoutedBlocksArgs::query_tiles, ONNXATTN_SPARSE_CUDA_BLOCKS=queries) ----
//
// The inverted lists read each chosen block once per slot for up to 64 rows, but every row then merges its float32
// output row through global memory once per slot (at 64k, NSA's ~16 GB of merges). A query tile instead keeps its 64
// rows' outputs in registers from the first block to the last: a CTA takes consecutive queries of one (batch, list
// head), walks the union of their lists in ascending block order, and scores each staged tile for the rows whose list
// holds its block (the others are hidden, as causality hides keys); a tile's copies are issued one step ahead, into
// the other of two stages. What it stages depends on how alike neighbouring queries' lists are: on random inputs
// little beyond the forced blocks (NSA: 8 lists of 16 join into ~84-100 blocks, ~10-12 a query where a query alone
// reads 16; benchmarks/sparse_tile_unions.py), fewer where scores move slowly with the position. A NaN or infinity
// in V reaches every row of the warp that scores its tile (zero weights times it, in P V on tensor cores), also rows
// whose list lacks the block, where the inverted lists pass it only to rows that chose the block (finite V: such
// rows get exactly nothing).

// One step of a tile's walk: keys t0.. of `block` (kNoBlock: the walk is over) and the CTA's lists holding the block
// (list l is bit l % 32 of lists[l / 32]).
struct WalkStep {
  int32_t block;
  int64_t t0;
  unsigned lists[2];
};

// A warp's place in the CTA's lists (lane l: lists l and l + 32): each one's next entry and its index.
struct ListCursors {
  int at[2];
  int32_t next[2];
};

__device__ __forceinline__ int32_t list_entry(const int32_t* lists, int count, int top_k, int list, int at) {
  return list < count && at < top_k ? lists[list * top_k + at] : kNoBlock;
}

// The step after `step`, the same in every lane: the block's next tile, else the first tile of the lowest block a
// list holds next (passing over blocks with no key to stage: tiles_end(block) <= its first key).
template <typename TilesEnd>
__device__ __forceinline__ WalkStep next_step(const WalkStep& step, ListCursors& c, const int32_t* lists, int count,
                                              int top_k, int64_t segment_size, TilesEnd tiles_end) {
  if (step.block != kNoBlock && step.t0 + kMmaKeys < tiles_end(step.block)) {
    return {step.block, step.t0 + kMmaKeys, {step.lists[0], step.lists[1]}};
  }
  const int lane = threadIdx.x % 32;
  for (;;) {
    WalkStep next{__reduce_min_sync(0xffffffffu, min(c.next[0], c.next[1])), 0, {0u, 0u}};
    if (next.block == kNoBlock) return next;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool holds = c.next[h] == next.block;  // (each list holds a block once: normalize_block_list)
      next.lists[h] = __ballot_sync(0xffffffffu, holds);
      if (holds) c.next[h] = list_entry(lists, count, top_k, lane + 32 * h, ++c.at[h]);
    }
    next.t0 = int64_t(next.block) * segment_size;
    if (next.t0 < tiles_end(next.block)) return next;
  }
}

// Query tile blockIdx.x: (batch, list head) blockIdx.x / tiles, its queries from i0 on. Writes its rows of a.out
// normalised (0 for a row that saw no key). kMaxDv >= Dv bounds the output registers.
template <typename TIn, typename TMma, int kMaxDv>
__global__ void __launch_bounds__(kThreads) blocks_query_tiles_kernel(const RoutedBlocksArgs a) {
  extern __shared__ __align__(16) unsigned char tiles_smem[];
  const int per_list = int(a.heads_per_list), per_tile = kMmaRows / per_list, top_k = int(a.top_k);
  const int64_t tiles = (a.q_len + per_tile - 1) / per_tile;
  const int64_t bh = blockIdx.x / tiles, i0 = blockIdx.x % tiles * per_tile;  // bh = b * list heads + list head
  const int count = int(min(int64_t(per_tile), a.q_len - i0)), rows = count * per_list;
  const int64_t b = bh / a.list_heads, first_head = bh % a.list_heads * a.heads_per_list;
  const int64_t kv_head = first_head / (a.q_heads / a.kv_heads);
  const int dim = a.dim, v_dim = a.v_dim, q_stride = mma_row_stride(dim), v_stride = mma_row_stride(v_dim);
  // Q, then stage s's key tile at stages + s * stage_size and its value tile after it (offsets, not an array of
  // pointers a runtime index would put on the stack), then the lists.
  uint16_t* const qs = reinterpret_cast<uint16_t*>(tiles_smem);
  uint16_t* const stages = qs + kMmaRows * q_stride;
  const int stage_size = kMmaKeys * (q_stride + v_stride), values_at = kMmaKeys * q_stride;
  int32_t* const lists = reinterpret_cast<int32_t*>(stages + 2 * stage_size);

  // Row r: query i0 + r / per_list, head first_head + r % per_list; Q's row and the output's (-1: none).
  const auto row_of = [&](int r) {
    return r < rows ? (b * a.q_heads + first_head + r % per_list) * a.q_len + i0 + r / per_list : int64_t(-1);
  };
  const int32_t* const chosen = a.lists + (bh * a.q_len + i0) * a.top_k;  // the tile's lists, one after another
  for (int x = threadIdx.x; x < count * top_k; x += kThreads) lists[x] = chosen[x];
  issue_rows<TMma>(qs, q_stride, static_cast<const TIn*>(a.q), dim, row_of);
  __syncthreads();
  for (int list = threadIdx.x; list < count; list += kThreads) {
    normalize_block_list(lists + list * top_k, top_k, a.num_segments);
  }
  __syncthreads();

  const int64_t head_rows = (b * a.kv_heads + kv_head) * a.kv_len;
  const TIn* const k_head = static_cast<const TIn*>(a.k) + head_rows * dim;
  const TIn* const v_head = static_cast<const TIn*>(a.v) + head_rows * v_dim;
  const int64_t seg = a.segment_size, last_pos = i0 + count - 1 + a.kv_len - a.q_len;  // bottom-right aligned
  const auto block_end = [&](int32_t block) { return min((int64_t(block) + 1) * seg, a.kv_len); };
  // Causal: keys past the tile's last query are hidden from every row, so they are never staged.
  const auto tiles_end = [&](int32_t block) {
    return a.causal ? min(block_end(block), last_pos + 1) : block_end(block);
  };
  const auto issue_tile = [&](int stage, const WalkStep& step) {
    const int64_t tile_keys = min(int64_t(kMmaKeys), block_end(step.block) - step.t0);
    const auto tile_row = [tile_keys](int r) { return r < tile_keys ? int64_t(r) : int64_t(-1); };
    uint16_t* const ks = stages + stage * stage_size;
    issue_rows<TMma>(ks, q_stride, k_head + step.t0 * dim, dim, tile_row);
    issue_rows<TMma>(ks + values_at, v_stride, v_head + step.t0 * v_dim, v_dim, tile_row);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  ListCursors cursors;
#pragma unroll
  for (int h = 0; h < 2; ++h) cursors.at[h] = 0, cursors.next[h] = list_entry(lists, count, top_k, lane + 32 * h, 0);
  WalkStep step = next_step({kNoBlock, 0, {0u, 0u}}, cursors, lists, count, top_k, seg, tiles_end);
  if (step.block != kNoBlock) issue_tile(0, step);
  sdpa::cuda::cp_async_commit();  // Q and the first tile

  const int r_lo = 16 * warp + lane / 4, r_hi = r_lo + 8;
  const int list_lo = r_lo / per_list, list_hi = r_hi / per_list;  // < 64
  const int64_t pos_lo = i0 + list_lo + a.kv_len - a.q_len, pos_hi = i0 + list_hi + a.kv_len - a.q_len;
  const float scale_log2 = a.scale * sdpa::cuda::kLog2e;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};  // rows r_lo, r_hi
  float o[kMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  for (int stage = 0; step.block != kNoBlock; stage ^= 1) {
    const WalkStep next = next_step(step, cursors, lists, count, top_k, seg, tiles_end);
    if (next.block != kNoBlock) issue_tile(stage ^ 1, next);  // its stage was last read before the barrier below
    sdpa::cuda::cp_async_commit();
    sdpa::cuda::cp_async_wait<1>();  // this step's tile (and Q) has landed
    __syncthreads();
    const bool live_lo = r_lo < rows && ((list_lo < 32 ? step.lists[0] : step.lists[1]) >> (list_lo % 32) & 1u);
    const bool live_hi = r_hi < rows && ((list_hi < 32 ? step.lists[0] : step.lists[1]) >> (list_hi % 32) & 1u);
    if (__any_sync(0xffffffffu, live_lo || live_hi)) {
      const uint16_t* const ks = stages + stage * stage_size;
      attend_tile<TMma, kMaxDv>(a, qs, ks, ks + values_at, q_stride, v_stride, step.t0, block_end(step.block), r_lo,
                                live_lo, live_hi, pos_lo, pos_hi, o, m, l, scale_log2);
    }
    __syncthreads();  // the stage is done with before the next step's copies go into it
    step = next;
  }
  sdpa::cuda::cp_async_wait<0>();  // (a tile whose lists are all empty still issued its Q rows)

  const float sum[2] = {sdpa::cuda::quad_sum(l[0]), sdpa::cuda::quad_sum(l[1])};
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half == 0 ? r_lo : r_hi;
    if (r >= rows) continue;
    const float inv = sum[half] > 0.0f ? 1.0f / sum[half] : 0.0f;
    float* const out = a.out + row_of(r) * v_dim + 2 * (lane % 4);
#pragma unroll
    for (int n = 0; n < kMaxDv / 8; ++n) {
      if (8 * n >= v_dim) break;
      *reinterpret_cast<float2*>(out + 8 * n) = make_float2(o[n][2 * half] * inv, o[n][2 * half + 1] * inv);
    }
  }
}

template <typename TIn, typename TMma, int kMaxDv>
void launch_query_tiles(const RoutedBlocksArgs& a, cudaStream_t stream) {
  constexpr auto kKernel = blocks_query_tiles_kernel<TIn, TMma, kMaxDv>;
  const size_t smem = query_tiles_smem_bytes(a.dim, a.v_dim, a.heads_per_list, a.top_k);
  sdpa::cuda::allow_smem<kKernel>(smem);
  kKernel<<<unsigned(query_tiles_grid(a.batch, a.list_heads, a.q_len, a.heads_per_list)), kThreads, smem, stream>>>(a);
  check_launch("sparse tensor-core query-tile kernel");
}

// round_for_blocks_mma's: a thread per 8 elements.
template <typename TMma>
__global__ void round_kernel(const float* src, TMma* dst, int64_t chunks) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < chunks; c += int64_t(gridDim.x) * blockDim.x) {
    *reinterpret_cast<uint4*>(dst + 8 * c) = load8<TMma>(src + 8 * c);
  }
}

template <auto kKernel>
void launch_slots_on(const RoutedBlocksArgs& a, cudaStream_t stream) {
  const size_t smem = blocks_mma_smem_bytes(a.dim, a.v_dim);
  sdpa::cuda::allow_smem<kKernel>(smem);
  // A list is in at most one key of a slot: at most lists / chunk + (one partial chunk per non-empty key) CTAs.
  const int64_t lists = block_lists(a), keys_per_slot = a.batch * a.list_heads * a.num_segments;
  const int64_t grid = (lists + a.lists_per_chunk - 1) / a.lists_per_chunk + std::min(keys_per_slot, lists);
  if (grid > int64_t(0x7fffffff)) throw std::runtime_error("sparse attention by block: too many lists");
  for (int64_t slot = 0; slot < a.top_k; ++slot) kKernel<<<unsigned(grid), kThreads, smem, stream>>>(a, slot);
  check_launch("sparse tensor-core block kernel");
}

template <typename TIn, typename TMma, int kMaxDv>
void launch_slots(const RoutedBlocksArgs& a, cudaStream_t stream) {
  if (a.overlap_loads) {
    launch_slots_on<blocks_mma_overlapped_kernel<TIn, TMma, kMaxDv>>(a, stream);
  } else {
    launch_slots_on<blocks_mma_kernel<TIn, TMma, kMaxDv>>(a, stream);
  }
}

}  // namespace

template <typename TIn, typename TMma>
void run_blocks_mma(RoutedBlocksArgs a, void* scratch, cudaStream_t stream) {
  a.lists_per_chunk = blocks_mma_lists_per_chunk(a.heads_per_list);
  if (a.lists_per_chunk < 1 || a.dim % 16 != 0 || a.v_dim % 16 != 0 || a.dim > kMmaMaxDim || a.v_dim > kMmaMaxDim ||
      !(a.scale > 0.0f)) {
    throw std::runtime_error("sparse attention by block: the tensor-core kernel does not take this problem");
  }
  // kMaxDv: the output registers' bound for Dv
  const auto by_max_dv = [&](auto launch) {
    if (a.v_dim <= 64) {
      launch(std::integral_constant<int, 64>{});
    } else if (a.v_dim <= 128) {
      launch(std::integral_constant<int, 128>{});
    } else {
      launch(std::integral_constant<int, 256>{});
    }
  };
  if (a.query_tiles) {
    by_max_dv([&](auto max_dv) { launch_query_tiles<TIn, TMma, decltype(max_dv)::value>(a, stream); });
    return;
  }
  invert_block_lists(a, scratch, stream);
  by_max_dv([&](auto max_dv) { launch_slots<TIn, TMma, decltype(max_dv)::value>(a, stream); });
  normalize_block_rows(a, stream);
}

template <typename TMma>
void round_for_blocks_mma(const float* src, TMma* dst, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  if (count % 8 != 0) throw std::logic_error("sparse rounding kernel: a count of whole 8-element chunks");
  round_kernel<TMma><<<grid_for(count / 8), 256, 0, stream>>>(src, dst, count / 8);
  check_launch("sparse rounding kernel");
}

template void round_for_blocks_mma<Float16>(const float*, Float16*, int64_t, cudaStream_t);
template void round_for_blocks_mma<BFloat16>(const float*, BFloat16*, int64_t, cudaStream_t);
template void run_blocks_mma<float, Float16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<float, BFloat16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<Float16, Float16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<BFloat16, BFloat16>(RoutedBlocksArgs, void*, cudaStream_t);

}  // namespace onnxattn::sparse::cuda
