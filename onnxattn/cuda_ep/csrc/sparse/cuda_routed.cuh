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
  const float* q;        // [rows, D], RoPE'd (unscaled)
  const float* k;        // [B * Hkv * Skv, D], RoPE'd
  const float* v;        // [B * Hkv * Skv, Dv]
  const int32_t* lists;  // [rows, top_k]: chosen segments, -1 for none
  int64_t batch, q_heads, kv_heads, q_len, kv_len, segment_size, num_segments, top_k;
  int dim, v_dim;
  bool causal;
  float scale;
  // Scratch (routed_blocks_scratch_bytes): per (slot, batch, head, segment) key: row counts, their exclusive
  // scan, fill cursors, chunk offsets; the inverted lists; the running row state. `out` is [rows, Dv].
  int32_t* counts;
  int32_t* offsets;        // [keys + 1]
  int32_t* cursors;
  int32_t* chunk_offsets;  // [keys + 1]
  int32_t* entries;        // [rows * top_k]: row indices grouped by key
  float* row_max;          // [rows]
  float* row_sum;          // [rows]
  float* out;              // [rows, Dv]: the running sum of p * v, normalised at the end
};

// Carves a's scratch pointers (counts .. row_sum) from `scratch` (routed_blocks_scratch_bytes of them) and
// enqueues every kernel on `stream`. a.out must be the row kernel's output buffer ([rows, Dv] float).
void run_routed_blocks(RoutedBlocksArgs a, void* scratch, cudaStream_t stream);

}  // namespace onnxattn::sparse::cuda
