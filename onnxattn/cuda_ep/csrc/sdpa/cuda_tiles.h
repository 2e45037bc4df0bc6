#pragma once
// Tile geometry of the CUDA kernels, shared by the host plan (cuda_plan.cc, plain C++) and the kernels
// (*.cu), so the shared-memory sizes and grids the plan computes are the ones the kernels use.
#include <cstddef>
#include <cstdint>

namespace onnxattn::sdpa::cuda::tiles {

inline constexpr int kWarps = 4;  // every kernel runs 4 warps per CTA
inline constexpr int kThreads = 32 * kWarps;

// 16-bit row elements in shared memory are padded by 8 (16 bytes): consecutive rows then start 4 banks
// apart, so the 8 row addresses of one ldmatrix phase hit distinct banks.
constexpr int smem_stride(int head_dim_tile) { return head_dim_tile + 8; }

// Head sizes the mma kernels are compiled for; D and Dv are padded up to one of these.
constexpr int mma_head_dim_tile(int64_t head_dim, int64_t v_head_dim) {
  const int64_t d = head_dim > v_head_dim ? head_dim : v_head_dim;
  return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

// ---- prefill mma: warps split the rows; each warp owns `prefill_row_blocks` blocks of 16 rows.
// Two blocks per warp (128 rows per CTA) halve the shared-memory reads of K and V per flop; at D = 256
// the output accumulator leaves registers for one block only.
constexpr int prefill_row_blocks(int head_dim_tile) { return head_dim_tile <= 128 ? 2 : 1; }
constexpr int prefill_rows(int head_dim_tile) { return 16 * prefill_row_blocks(head_dim_tile) * kWarps; }
inline constexpr int kPrefillKeys = 64;
// Per row of the tile, for edge tiles and masks: visible key range (2 x int32) and mask row offset (int64).
inline constexpr int kPrefillRowInfoBytes = 16;
// Q tile, one K tile and one V tile (V of step t loads during S = Q K^T, K of step t+1 during O += P V),
// then the row facts.
constexpr size_t prefill_smem_bytes(int head_dim_tile) {
  return size_t(prefill_rows(head_dim_tile) + 2 * kPrefillKeys) * smem_stride(head_dim_tile) * 2 +
         size_t(prefill_rows(head_dim_tile)) * kPrefillRowInfoBytes;
}

// ---- prefill wgmma (sm_90a): two warpgroups of 64 rows each (128 rows per CTA), 128 keys per step, D and Dv
// padded to the mma head tile (64 or 128); Q, two K stages and two V stages as 128-byte-swizzled tiles
// (cuda_wgmma_layout.h), then the row facts, plus 1024 bytes to align the tiles to the swizzle atom.
inline constexpr int kWgmmaThreads = 256;
inline constexpr int kWgmmaRows = 128;
inline constexpr int kWgmmaKeys = 128;
inline constexpr int kWgmmaMaxTile = 128;
constexpr size_t wgmma_tile_bytes(int head_dim_tile) { return size_t(kWgmmaRows) * head_dim_tile * 2; }
constexpr size_t wgmma_prefill_smem_bytes(int head_dim_tile) {
  return 1024 + 5 * wgmma_tile_bytes(head_dim_tile) + size_t(kWgmmaRows) * kPrefillRowInfoBytes;
}

// ---- decode mma: one block of 16 rows per CTA; warps split the keys, 16 keys per warp per step, each
// warp with its own ring of `decode_stages` shared-memory stages (no CTA barrier in the main loop).
inline constexpr int kDecodeRows = 16;
inline constexpr int kDecodeWarpKeys = 16;
inline constexpr int kDecodeKeys = kDecodeWarpKeys * kWarps;  // keys per CTA step
constexpr int decode_stages(int head_dim_tile) { return head_dim_tile <= 64 ? 4 : head_dim_tile <= 128 ? 3 : 2; }
// The lean decode (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2, cuda_plan.cc rule 10): head tiles of 128 with two stages per
// warp's ring instead of three, so that three CTAs fit an SM (shared memory; its registers stay within 65536 / 384)
// where two did: 12 warps an SM instead of 8.
inline constexpr int kDecodeLeanTile = 128;
inline constexpr int kDecodeLeanStages = 2;
inline constexpr int kDecodeLeanCtasPerSm = 3;
// `stages` 0: decode_stages(head_dim_tile).
constexpr size_t decode_pipeline_bytes(int head_dim_tile, int stages = 0) {
  return size_t(kWarps) * (stages > 0 ? stages : decode_stages(head_dim_tile)) * kDecodeWarpKeys *
         smem_stride(head_dim_tile) * 2 * 2;
}
// Q tile [16][stride] 16-bit; the pipeline area is reused for the cross-warp merge (fp32 [warps][16][tile]).
constexpr size_t decode_merge_bytes(int head_dim_tile) { return size_t(kWarps) * kDecodeRows * head_dim_tile * 4; }
constexpr size_t decode_smem_bytes(int head_dim_tile, int stages = 0) {
  const size_t pipe = decode_pipeline_bytes(head_dim_tile, stages), merge = decode_merge_bytes(head_dim_tile);
  return size_t(kDecodeRows) * smem_stride(head_dim_tile) * 2 + (pipe > merge ? pipe : merge);
}

// ---- simt: 32 rows per CTA (8 per warp), 32 keys per step (one per lane), fp32 tiles in shared memory.
inline constexpr int kSimtRows = 32;
inline constexpr int kSimtKeys = 32;
inline constexpr int kSimtRowsPerWarp = kSimtRows / kWarps;
inline constexpr int kSimtMaxValueChunks = 8;  // Dv <= 8 * 32
// Q [32][D], K [32][D + 1] (odd stride: lanes reading a column of K hit distinct banks), V [32][Dv].
constexpr size_t simt_smem_bytes(int64_t head_dim, int64_t v_head_dim) {
  return size_t(kSimtRows * head_dim + kSimtKeys * (head_dim + 1) + kSimtKeys * v_head_dim) * 4;
}

// ---- paged K/V: division of key indices (0 <= j < 2^31) by the block size d (1 <= d <= 2^30) without a
// divide instruction: j / d == (umulhi(j, mul) + j) >> shift with shift = ceil(log2 d) and
// mul = floor(2^32 (2^shift - d) / d) + 1 (the round-up method; tests/test_paged_cuda_host.py checks it).
struct BlockDivider {
  uint32_t mul, shift;
};
constexpr BlockDivider block_divider(int64_t d) {
  if (d < 1 || d > (int64_t(1) << 30)) return {0, 0};  // outside the contract (the plan refuses it)
  uint32_t shift = 0;
  while ((int64_t(1) << shift) < d) ++shift;
  const uint64_t mul = ((uint64_t(1) << 32) * ((uint64_t(1) << shift) - uint64_t(d))) / uint64_t(d) + 1;
  return {uint32_t(mul), shift};
}

// ---- combine: one warp per output row; the columns combine (cuda_plan.cc rule 13) one warp per 32 columns of a row
// (Dv = 0: one, for its log-sum-exp).
inline constexpr int kCombineRowsPerCta = kWarps;
constexpr int64_t combine_column_chunks(int64_t v_head_dim) { return v_head_dim > 32 ? (v_head_dim + 31) / 32 : 1; }

}  // namespace onnxattn::sdpa::cuda::tiles
