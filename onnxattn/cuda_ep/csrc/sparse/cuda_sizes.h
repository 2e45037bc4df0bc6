#pragma once
// The launch geometry and shared-memory / scratch sizing of the sparse ops' CUDA kernels (cuda_select.cu,
// cuda_routed.cu, cuda_blocks_mma.cu; planned in cuda_kernel.cu). Plain C++, built in every configuration, so
// tests/test_sparse_cuda_host.py checks it without a GPU (C entries in sparse/params.cc).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/host_device.h"

namespace onnxattn::sparse::cuda {

inline constexpr int kThreads = 128;
inline constexpr int kWarpsPerBlock = kThreads / 32;

// ---- The latency switches, read by plan_nsa and run_routed on every call (defined in params.cc, whose C entry
// OnnxAttnSparseLatencySwitches lets the host tests read them; a bad value is an InputError naming `op`).
// ONNXATTN_SPARSE_CUDA_LOADS = async | sync: the tensor-core kernels (by block, selection) with their loads
// overlapped, or waiting for each in turn: the same bits. ONNXATTN_SPARSE_CUDA_ARGMAX = redux | shuffle: the
// selection's warp argmax by two warp reductions, or five shuffle rounds: the same lists. async and redux are the
// default since the H200 run at 82087dc checked their bits and timed them (B1 16q/2kv D128 bf16 causal, blocks of 64,
// top 16: NSA 9.49 -> 4.58 ms at 16k, 40.49 -> 23.66 at 64k; routed 13.59 -> 7.93, 111.0 -> 70.44); sync and shuffle
// keep the old kernels.
bool overlapped_loads_requested(const char* op);
bool redux_argmax_requested(const char* op);
// ONNXATTN_SPARSE_CUDA_ROUTE = groups | split (run_routed): SparseRoutedAttention's tensor-core routing
// (select_split_kernel) picking its lists by group maxima (warp_select_groups: a pick rescans 32 keys, not all of
// them) from tiles of kSplitKeysGrouped centroids (two CTAs an SM), or by warp_select: the same lists and bits.
// groups is the default since the H200 run at 2c9a48e checked its bits and timed it (the routing 51.5 -> 19.6 ms,
// the op 70.0 -> 38.1 ms at 64k, B1 16q/2kv D128 bf16 causal, blocks of 64, top 16).
bool grouped_routing_requested(const char* op);

// ---- selection and the fine branch (cuda_select.cu)
inline constexpr int kSelectRows = 16;  // tiled selection: rows per CTA, 4 per warp
inline constexpr int kFineRows = 16;    // tiled fine branch: rows per CTA, 4 per warp
inline constexpr size_t kSelectSmemBudget = 96 << 10;  // below every sm_80+ device's opt-in limit (sm_86: 99 KB)

// How the tiled selection kernel runs (select_tiling, select_mma_tiling); queries 0: one CTA per list.
struct SelectTiling {
  int queries = 0;  // per CTA
  int rows_per_query = 1;
  size_t smem = 0;
  bool mma = false;    // the tensor-core selection (select_mma_tiling, select_split_tiling)
  bool split = false;  // ... its one-row-per-list form (select_split_tiling)
  bool split_bf16 = false;  // ... with bfloat16 hi + lo halves (bfloat16 inputs: float16's range may not hold them)
};

// Floats between staged rows of centroids / values: odd, so lanes reading a column hit distinct banks.
ONNXATTN_HD int select_tile_width(int dim, int v_dim) { return ((dim > v_dim ? dim : v_dim) + 1) | 1; }

// `probabilities`: the compression branch (one row per (query, head) of the list); `heads_per_list`: G for
// shared lists, else 1. queries 0: the tiled kernel cannot run this (one CTA per list instead). A row per
// (query, head): the compression branch's softmax is per head, and dot scores are summed over the heads in
// head order as the CPU kernel and select_kernel sum them (the same bits; summing the queries first would
// round differently and could turn a near-tie).
inline SelectTiling select_tiling(int dim, int v_dim, int64_t num_centroids, int64_t num_blocks, int64_t top,
                                  bool probabilities, int64_t heads_per_list) {
  SelectTiling t;
  const int64_t per_query = heads_per_list;
  if (dim > 256 || v_dim > 256 || per_query > kSelectRows || (top < 1 && !probabilities)) return t;
  const int tile_width = select_tile_width(dim, v_dim);
  const size_t fixed = (size_t(dim) * kSelectRows + size_t(32) * tile_width) * sizeof(float) +
                       size_t(kWarpsPerBlock) * size_t(std::max<int64_t>(top, 0)) * sizeof(int32_t);
  if (fixed >= kSelectSmemBudget) return t;
  const size_t per_row = size_t(std::max(num_centroids, num_blocks)) * sizeof(float);
  const int64_t rows = per_row == 0 ? kSelectRows : int64_t((kSelectSmemBudget - fixed) / per_row);
  const int64_t queries = std::min<int64_t>(rows, kSelectRows) / per_query;
  if (queries < 1) return t;
  t.queries = int(queries);
  t.rows_per_query = int(per_query);
  t.smem = fixed + size_t(queries * per_query) * per_row;
  return t;
}

// Buffer entries per row (a power of two) for `top`, or 0 when the tiled fine kernel takes no such top.
inline int fine_capacity(int64_t top) {
  int capacity = 64;
  while (capacity < 2 * top + 32) capacity *= 2;
  return capacity <= 1024 ? capacity : 0;
}

inline size_t fine_tiled_smem(int dim, int capacity) {
  return (size_t(dim) * kFineRows + size_t(32) * (dim + 1)) * sizeof(float) +
         size_t(kFineRows) * capacity * (sizeof(float) + sizeof(int32_t)) + kFineRows * (sizeof(int) + sizeof(float));
}

// ---- SparseRoutedAttention by segment (cuda_routed.cuh)
inline constexpr int kRoutedChunk = 32;  // rows per CTA (8 per warp)
inline constexpr int kRoutedKeys = 64;   // keys per staged tile
inline constexpr int kRoutedMaxDim = 256;

inline size_t routed_align256(size_t n) { return (n + 255) / 256 * 256; }

// Shared memory of the segment kernel: the chunk's query rows [32][D], a key tile [64][D + 1], a value tile
// [64][Dv], the rows' partial outputs [32][Dv], maxima and sums, row indices (2 x 32 ints: 8-byte alignment for
// what follows) and positions (32 int64).
inline size_t routed_blocks_smem_bytes(int dim, int v_dim) {
  return (size_t(kRoutedChunk) * dim + size_t(kRoutedKeys) * (dim + 1) + size_t(kRoutedKeys) * v_dim +
          size_t(kRoutedChunk) * v_dim + 2 * kRoutedChunk) * sizeof(float) +
         2 * kRoutedChunk * sizeof(int) + kRoutedChunk * sizeof(int64_t);
}

// Whether the by-segment path takes the problem: head sizes up to kRoutedMaxDim, list entries and keys
// within int32, its shared memory within the device's limit (`max_smem_per_block`).
// The inverted lists' int32 scans: entries (rows x top_k) and keys, and the chunk count, at most one chunk per
// entry plus one per non-empty key (the last, partial chunk of each), i.e. entries + min(keys, entries).
inline bool block_lists_fit_int32(int64_t rows, int64_t top_k, int64_t keys) {
  if (rows > int64_t(0x7fffffff) / top_k - 1 || keys + 1 >= int64_t(0x7fffffff)) return false;
  const int64_t entries = rows * top_k;
  return entries + (keys < entries ? keys : entries) < int64_t(0x7fffffff);
}

inline bool routed_blocks_eligible(int64_t rows, int64_t top_k, int64_t keys, int dim, int v_dim,
                                   int max_smem_per_block) {
  return dim >= 1 && dim <= kRoutedMaxDim && v_dim >= 1 && v_dim <= kRoutedMaxDim && rows >= 1 && top_k >= 1 &&
         block_lists_fit_int32(rows, top_k, keys) && routed_blocks_smem_bytes(dim, v_dim) <= size_t(max_smem_per_block);
}

// Scratch of the inverted lists, carved in this order by invert_block_lists: counts and cursors [keys], offsets
// and chunk offsets [keys + 1], entries [lists * top_k] (int32 each), row maxima and sums [out_rows] (float32),
// each 256-byte aligned. `keys` = top_k * B * (list heads) * blocks.
inline size_t block_lists_scratch_bytes(int64_t lists, int64_t out_rows, int64_t top_k, int64_t keys) {
  return 2 * routed_align256(size_t(keys) * 4) + 2 * routed_align256(size_t(keys + 1) * 4) +
         routed_align256(size_t(lists * top_k) * 4) + 2 * routed_align256(size_t(out_rows) * 4);
}

// SparseRoutedAttention by segment: one list per row.
inline size_t routed_blocks_scratch_bytes(int64_t rows, int64_t top_k, int64_t keys) {
  return block_lists_scratch_bytes(rows, rows, top_k, keys);
}

// ---- The tensor-core attention by block (cuda_blocks_mma.cu; ONNXATTN_SPARSE_CUDA=mma, 16-bit types): the same
// inverted lists, a CTA per chunk of kMmaRows rows (whole lists: a list's query heads are its rows) that chose one
// block, S = Q K^T and O = P V on mma.sync m16n8k16 with float32 accumulators.
inline constexpr int kMmaRows = 64;  // 16 per warp
inline constexpr int kMmaKeys = 64;  // keys per staged tile
inline constexpr int kMmaMaxDim = 256;

// 16-bit elements per staged row: 8 more than the row, so the 8 rows a quad of lanes reads sit 4 banks apart.
ONNXATTN_HD int mma_row_stride(int dim) { return dim + 8; }

// Q rows [kMmaRows], a key tile and a value tile [kMmaKeys] (16-bit, padded rows), then each row's output row
// index and query position.
inline size_t blocks_mma_smem_bytes(int dim, int v_dim) {
  return (size_t(kMmaRows) * mma_row_stride(dim) + size_t(kMmaKeys) * mma_row_stride(dim) +
          size_t(kMmaKeys) * mma_row_stride(v_dim)) * 2 +
         size_t(kMmaRows) * (sizeof(int64_t) + sizeof(int64_t));
}

// The selection's argmax under ONNXATTN_SPARSE_CUDA_ARGMAX=redux, the default (warp_select in cuda_select.cu; the
// host tests replay it): a score as an unsigned key in the scores' order, -0 equal to +0 and NaN below everything. A
// warp's largest key (one __reduce_max_sync), then the lowest index among its holders (one __reduce_min_sync), is the
// pick the shuffle argmax makes by better(): the larger value, then the lower index, NaN never; a largest key at or
// below kNegInfArgmaxKey (-inf or NaN) ends the list.
ONNXATTN_HD unsigned argmax_key(float x) {
  if (x != x) return 0u;
  if (x == 0.0f) x = 0.0f;
  unsigned bits;
  memcpy(&bits, &x, sizeof bits);
  return (bits & 0x80000000u) != 0u ? ~bits : bits | 0x80000000u;
}
inline constexpr unsigned kNegInfArgmaxKey = 0x007fffffu;  // argmax_key(-inf)

// The rounds of the overlapped kernel's search for a CTA's key (warp_find_key in cuda_blocks_mma.cu; the host tests
// replay them): among keys [lo, hi) with chunk_offsets[lo] <= chunk < chunk_offsets[hi] (offsets ascend, an empty
// key repeats the next one's), a warp probes keys lo + p * find_key_step(lo, hi) for p < 32. `at_or_before` has bit
// p set where probe p is below hi and its offset <= chunk: a prefix of the bits, bit 0 (lo itself) always set. The
// invariant holds for the narrowed range, and it shrinks to one key (the binary search's) in ~log32 rounds.
ONNXATTN_HD int64_t find_key_step(int64_t lo, int64_t hi) { return (hi - lo + 31) / 32; }
ONNXATTN_HD void find_key_narrow(int64_t& lo, int64_t& hi, unsigned at_or_before) {
#ifdef __CUDA_ARCH__
  const int last = 31 - __clz(at_or_before);
#else
  const int last = 31 - __builtin_clz(at_or_before);
#endif
  const int64_t step = find_key_step(lo, hi);
  lo += last * step;
  hi = hi < lo + step ? hi : lo + step;
}

// Lists of `heads_per_list` rows each that a chunk holds: whole lists only (0: a list has too many rows).
inline int blocks_mma_lists_per_chunk(int64_t heads_per_list) {
  return heads_per_list >= 1 && heads_per_list <= kMmaRows ? int(kMmaRows / heads_per_list) : 0;
}

// Whether the tensor-core kernel takes the problem: head sizes multiples of 16 up to kMmaMaxDim, whole lists per
// chunk, the inverted lists within int32 (block_lists_fit_int32), its shared memory within the device's limit.
inline bool blocks_mma_eligible(int64_t lists, int64_t heads_per_list, int64_t top_k, int64_t keys, int dim,
                                int v_dim, int max_smem_per_block) {
  return dim >= 16 && dim <= kMmaMaxDim && dim % 16 == 0 && v_dim >= 16 && v_dim <= kMmaMaxDim && v_dim % 16 == 0 &&
         blocks_mma_lists_per_chunk(heads_per_list) > 0 && lists >= 1 && top_k >= 1 &&
         block_lists_fit_int32(lists, top_k, keys) && blocks_mma_smem_bytes(dim, v_dim) <= size_t(max_smem_per_block);
}

// The attention by block by query tiles (ONNXATTN_SPARSE_CUDA_BLOCKS=queries; cuda_blocks_mma.cu): a CTA per
// (batch, list head, blocks_mma_lists_per_chunk consecutive queries), its kMmaRows rows those queries' lists' heads,
// walks the union of their lists in ascending block order, each block's tiles staged once (two stages, the next
// tile's copies in flight during this one's mma) for every row whose list holds it: no inverted lists, no per-slot
// merges of float32 output rows through global memory. Shared memory: Q's rows, two stages of a key and a value tile
// (16-bit, padded rows), and the CTA's lists (normalize_block_list).
inline size_t query_tiles_smem_bytes(int dim, int v_dim, int64_t heads_per_list, int64_t top_k) {
  const int64_t lists = blocks_mma_lists_per_chunk(heads_per_list);
  return (size_t(kMmaRows) * mma_row_stride(dim) +
          2 * size_t(kMmaKeys) * (size_t(mma_row_stride(dim)) + size_t(mma_row_stride(v_dim)))) * 2 +
         size_t(lists) * size_t(top_k > 0 ? top_k : 0) * sizeof(int32_t);
}

// The longest list a query tile takes: one thread sorts each list (normalize_block_list), in top_k^2 / 2 steps at
// most. (The NSA paper chooses 16 blocks, MoBA a few.)
inline constexpr int64_t kQueryTilesMaxTopK = 256;

// Whether the query-tile kernel takes the problem: the tensor-core kernel's head sizes, whole lists per tile, lists
// of at most kQueryTilesMaxTopK, int32 block indices, the CTAs within one launch, its shared memory within the
// device's limit.
inline bool query_tiles_eligible(int64_t batch, int64_t list_heads, int64_t q_len, int64_t heads_per_list,
                                 int64_t top_k, int64_t num_blocks, int dim, int v_dim, int max_smem_per_block) {
  const int64_t per_tile = blocks_mma_lists_per_chunk(heads_per_list);
  if (dim < 16 || dim > kMmaMaxDim || dim % 16 != 0 || v_dim < 16 || v_dim > kMmaMaxDim || v_dim % 16 != 0 ||
      per_tile < 1 || batch < 1 || list_heads < 1 || q_len < 1 || top_k < 1 || top_k > kQueryTilesMaxTopK ||
      num_blocks < 1 || num_blocks >= int64_t(0x7fffffff)) {
    return false;
  }
  const int64_t tiles = (q_len + per_tile - 1) / per_tile;
  if (batch > int64_t(0x7fffffff) / list_heads || batch * list_heads > int64_t(0x7fffffff) / tiles) return false;
  return query_tiles_smem_bytes(dim, v_dim, heads_per_list, top_k) <= size_t(max_smem_per_block);
}

// The query-tile kernel's CTAs: one per (batch, list head, run of blocks_mma_lists_per_chunk queries).
inline int64_t query_tiles_grid(int64_t batch, int64_t list_heads, int64_t q_len, int64_t heads_per_list) {
  const int64_t per_tile = blocks_mma_lists_per_chunk(heads_per_list);
  return per_tile < 1 ? 0 : batch * list_heads * ((q_len + per_tile - 1) / per_tile);
}

// The end of the walk's lists: above every block.
inline constexpr int32_t kNoBlock = 0x7fffffff;

// A query tile's copy of one list, as its walk reads it: the blocks in ascending order, each once, then kNoBlock
// (the selection writes -1 for none; an entry outside [0, num_blocks) is none too). In place, by one thread.
ONNXATTN_HD void normalize_block_list(int32_t* list, int top_k, int64_t num_blocks) {
  for (int k = 0; k < top_k; ++k) {  // insertion sort: top_k is small
    const int32_t x = list[k] < 0 || list[k] >= num_blocks ? kNoBlock : list[k];
    int at = k;
    for (; at > 0 && list[at - 1] > x; --at) list[at] = list[at - 1];
    list[at] = x;
  }
  int kept = 0;
  for (int k = 0; k < top_k; ++k) {
    if (list[k] != kNoBlock && (kept == 0 || list[kept - 1] != list[k])) list[kept++] = list[k];
  }
  for (int k = kept; k < top_k; ++k) list[k] = kNoBlock;
}

// ---- The selection on tensor cores (cuda_select.cu, ONNXATTN_SPARSE_CUDA=mma, 16-bit Q): a CTA per (batch, list
// head, kMmaRows / heads_per_list queries), its rows (query, head of the list) scored against tiles of 64
// centroids on mma.sync. Dot-product scores take the float32 centroids as hi + lo 16-bit tiles (two mmas); the
// compression branch takes its compressed keys (16-bit already) and values, one flash pass for the softmax
// statistics and the branch output, a second for the probabilities. Each tile's scores go through shared memory
// ([kMmaRows][kMmaScoreStride] floats) to be summed over the heads of a query in head order, into the query's row
// of selection keys ([queries][max(Nc, num_blocks)] floats); then a warp per query picks its list.
inline constexpr int kMmaScoreStride = kMmaKeys + 1;

inline SelectTiling select_mma_tiling(int dim, int v_dim, int64_t num_centroids, int64_t num_blocks, int64_t top,
                                      bool probabilities, int64_t heads_per_list, int max_smem_per_block) {
  SelectTiling t;
  const bool dims_ok = dim >= 16 && dim <= kMmaMaxDim && dim % 16 == 0 &&
                       (!probabilities || (v_dim >= 16 && v_dim <= kMmaMaxDim && v_dim % 16 == 0));
  if (!dims_ok || heads_per_list < 1 || heads_per_list > kMmaRows || top < 0 || (!probabilities && top < 1) ||
      num_centroids < 0 || num_blocks < 0 || std::max(num_centroids, num_blocks) > (int64_t(1) << 24)) {
    return t;
  }
  const int64_t queries = kMmaRows / heads_per_list;
  const size_t halves = size_t(kMmaRows) * mma_row_stride(dim) * (probabilities ? 2 : 3) +
                        (probabilities ? size_t(kMmaKeys) * mma_row_stride(v_dim) : 0);
  const size_t smem = halves * 2 + size_t(kMmaRows) * kMmaScoreStride * sizeof(float) +
                      size_t(queries) * size_t(std::max(num_centroids, num_blocks)) * sizeof(float) +
                      size_t(kWarpsPerBlock) * size_t(top) * sizeof(int32_t);
  if (smem > size_t(max_smem_per_block)) return t;
  t.queries = int(queries);
  t.rows_per_query = int(heads_per_list);
  t.smem = smem;
  t.mma = true;
  return t;
}

// One row per list (SparseRoutedAttention's routing, NSA's per-head lists), dot scores only: a CTA per (batch,
// list head, kSplitQueries queries); its 4 warps share those 16 rows and split the centroids, a warp scoring its own
// tiles of kSplitKeys. Q and the centroids go in as hi + lo pairs of the inputs' 16-bit type (S = Qh Ch + Qh Cl +
// Ql Ch: about 21 significant bits in float16, 16 in bfloat16, whose range float16 lacks; SelectTiling::split_bf16).
// Shared memory: Q's two tiles, each warp's two centroid tiles, the queries' keys [16][max(Nc, num_blocks)] and each
// warp's chosen blocks.
inline constexpr int kSplitQueries = 16;
inline constexpr int kSplitKeys = 32;
// Under ONNXATTN_SPARSE_CUDA_ROUTE=groups: tiles of 16 centroids, so that two CTAs fit an SM at D = 128 and Nb = 1024
// (107 KB each instead of 141: twice the warps to hide the staging's and the picks' latencies). The same bits: a
// score's sums run over D in the same order whatever the tile's width.
inline constexpr int kSplitKeysGrouped = 16;

inline SelectTiling select_split_tiling(int dim, int64_t num_centroids, int64_t num_blocks, int64_t top,
                                        int max_smem_per_block, int keys_per_warp = kSplitKeys) {
  SelectTiling t;
  if (dim < 16 || dim > kMmaMaxDim || dim % 16 != 0 || top < 1 || num_centroids < 0 || num_blocks < 0 ||
      std::max(num_centroids, num_blocks) > (int64_t(1) << 24)) {
    return t;
  }
  const size_t halves = size_t(mma_row_stride(dim)) * (2 * kSplitQueries + 2 * keys_per_warp * kWarpsPerBlock);
  const size_t smem = halves * 2 + size_t(kSplitQueries) * size_t(std::max(num_centroids, num_blocks)) * sizeof(float) +
                      size_t(kWarpsPerBlock) * size_t(top) * sizeof(int32_t);
  if (smem > size_t(max_smem_per_block)) return t;
  t.queries = kSplitQueries;
  t.rows_per_query = 1;
  t.smem = smem;
  t.mma = t.split = true;
  return t;
}

}  // namespace onnxattn::sparse::cuda
