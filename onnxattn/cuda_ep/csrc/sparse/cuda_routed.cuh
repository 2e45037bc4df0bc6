#pragma once
// SparseRoutedAttention's attention by segment (cuda_routed.cu), the fast path's replacement for the warp per
// (query, head) row of cuda_kernel.cu, which reads each row's top_k segments of K and V on its own: at S = 64k
// with 16 heads and 16 segments of 64 keys chosen per row that is ~1 TB of L2 traffic, slower than dense
// attention. Here every chosen segment is read once per slot for all the rows that chose it (MoBA's
// "gather the queries of a block" form):
//
//   1. invert the routing lists: for each (slot k, batch, head, segment) the rows whose k-th choice it is
//      (count, one exclusive scan, fill; a row chooses a segment at most once, so slot k's lists hold each
//      row at most once);
//   2. one launch per slot k: a CTA per chunk of up to kRoutedChunk rows of one (batch, head, segment) list
//      stages the segment's keys and values (tiles of kRoutedKeys, float32) once, takes each row's softmax
//      over them (causal: keys up to the row's position) and merges the partial result into the row's running
//      (max, sum, output) in scratch. Only one CTA touches a row per launch, and the launches run in slot
//      order, so each row's partials merge in the order of its list: no atomics on outputs, the same bits
//      on every run;
//   3. normalise (the gated mix kernel then writes Y in T).
//
// The math is the row kernel's (float32 RoPE'd Q and K, V in float32, exp of scores minus the running max;
// a weightless key's V is never read); only the order of the sums differs.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sparse/cuda_sizes.h"  // kRouted*, the sizing and eligibility functions

namespace onnxattn::sparse::cuda {

struct RoutedBlocksArgs {
  // [rows, D] RoPE'd (unscaled), [B * Hkv * Skv, D] RoPE'd, [B * Hkv * Skv, Dv]: float32 for the segment kernel
  // here; the tensor-core kernel (cuda_blocks_mma.cuh) reads them in its input type (float32 or 16-bit).
  const void* q;
  const void* k;
  const void* v;
  const int32_t* lists;  // [lists, top_k]: chosen segments (blocks), -1 for none
  int64_t batch, q_heads, kv_heads, q_len, kv_len, segment_size, num_segments, top_k;
  // List (b, list head, i) owns the query rows of heads list head * heads_per_list + [0, heads_per_list) at query
  // i: list_heads = Hq, heads_per_list = 1 for SparseRoutedAttention (and NSA's per-head lists); list_heads = Hkv,
  // heads_per_list = Hq / Hkv for NSA's lists shared by a GQA group. The segment kernel takes one row per list.
  int64_t list_heads = 0, heads_per_list = 1;
  int lists_per_chunk = kRoutedChunk;  // lists per CTA (the chunks the scan counts)
  // The tensor-core kernel's loads overlapped (ONNXATTN_SPARSE_CUDA_LOADS=async, the default; cuda_blocks_mma.cu): the
  // same bits.
  bool overlap_loads = false;
  // The tensor-core attention by query tiles instead of the inverted lists (ONNXATTN_SPARSE_CUDA_BLOCKS=queries;
  // cuda_blocks_mma.cu, query_tiles_eligible must hold): a.out is written normalised, the scratch is not used.
  bool query_tiles = false;
  int dim, v_dim;
  bool causal;
  float scale;
  // Scratch (block_lists_scratch_bytes): per (slot, batch, list head, segment) key: list counts, their exclusive
  // scan, fill cursors, chunk offsets; the inverted lists; the running row state. `out` is [B * Hq * Sq, Dv].
  int32_t* counts;
  int32_t* offsets;        // [keys + 1]
  int32_t* cursors;
  int32_t* chunk_offsets;  // [keys + 1]
  int32_t* entries;        // [lists * top_k]: list indices grouped by key
  float* row_max;          // [out rows]
  float* row_sum;          // [out rows]
  float* out;              // [out rows, Dv]: the running sum of p * v, normalised at the end
};

inline int64_t block_lists(const RoutedBlocksArgs& a) { return a.batch * a.list_heads * a.q_len; }
inline int64_t block_list_keys(const RoutedBlocksArgs& a) { return a.top_k * a.batch * a.list_heads * a.num_segments; }

// Carves a's scratch pointers (counts .. row_sum) from `scratch` (block_lists_scratch_bytes of them), enqueues
// the inversion (count, scan, fill) and clears the running row state.
void invert_block_lists(RoutedBlocksArgs& a, void* scratch, cudaStream_t stream);
// out[row] /= row_sum[row] (0 for a row that saw no key).
void normalize_block_rows(const RoutedBlocksArgs& a, cudaStream_t stream);

// SparseRoutedAttention by segment on the float32 segment kernel: `a` with one row per list (list_heads = Hq),
// q/k/v float32. Carves a's scratch (routed_blocks_scratch_bytes) and enqueues every kernel on `stream`. a.out
// must be the row kernel's output buffer ([rows, Dv] float).
void run_routed_blocks(RoutedBlocksArgs a, void* scratch, cudaStream_t stream);

}  // namespace onnxattn::sparse::cuda
