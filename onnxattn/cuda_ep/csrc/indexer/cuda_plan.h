#pragma once
// LightningIndexer on CUDA, the launch plan: plain C++ (built without CUDA too, so the host tests run
// everywhere). The kernel scores tiles of kQueryTile queries x kKeyTile keys (a thread per key, its row in
// registers, padded to `width` channels) into a float32 scratch of whole score rows, then selects each row's top-k
// with one block per row; the rows go in waves of query tiles whose scores fit kScratchBudget, so memory stays
// bounded for any prompt (a 128k-token prompt: 512 rows a wave).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/errors.h"
#include "indexer/params.h"

namespace onnxattn::indexer::cuda {

inline constexpr int64_t kQueryTile = 16;
inline constexpr int64_t kKeyTile = 128;
inline constexpr int64_t kMaxHeadDim = 128;   // a thread holds its key's row in registers
inline constexpr size_t kMaxScoreSmem = size_t(96) << 10;  // one query's heads [H][width] and weights
inline constexpr int kSelectThreads = 512;
inline constexpr size_t kScratchBudget = size_t(256) << 20;

struct Plan {
  int64_t tiles_per_row = 0;   // query tiles per sequence: ceil(S / kQueryTile)
  int64_t tiles = 0;           // B * tiles_per_row
  int64_t tiles_per_wave = 0;  // query tiles scored and selected per wave
  int64_t key_tiles = 0;       // ceil(T / kKeyTile)
  int width = 0;               // D padded to 32, 64 or 128: the score kernel's instance
  size_t score_smem = 0;       // the score kernel's dynamic shared memory
  size_t scratch_bytes = 0;    // one wave's score rows: tiles_per_wave * kQueryTile * T floats
};

// The first flattened row (b * S + i) of query tile `tile` (tile == tiles: B * S).
inline int64_t tile_row(const Params& p, const Plan& plan, int64_t tile) {
  if (tile >= plan.tiles) return p.rows();
  return (tile / plan.tiles_per_row) * p.seq + (tile % plan.tiles_per_row) * kQueryTile;
}

// The plan of a call; InputError, naming the op and the input or attribute, for what the CUDA kernel does not take.
inline Plan make_plan(const Params& p) {
  if (p.head_dim > kMaxHeadDim) {
    fail(kOpName, ": input 'key' has D = ", p.head_dim, "; the CUDA kernel takes D <= ", kMaxHeadDim);
  }
  Plan plan;
  if (p.rows() == 0) return plan;
  plan.tiles_per_row = (p.seq + kQueryTile - 1) / kQueryTile;
  plan.tiles = p.batch * plan.tiles_per_row;
  plan.key_tiles = (p.total + kKeyTile - 1) / kKeyTile;
  const size_t tile_bytes = size_t(kQueryTile) * size_t(p.total) * sizeof(float);
  // at most 65535 tiles a wave: the score kernel's grid.y
  const int64_t fit = int64_t(kScratchBudget / std::max<size_t>(tile_bytes, 1));
  plan.tiles_per_wave = std::clamp<int64_t>(fit, 1, std::min<int64_t>(plan.tiles, 65535));
  plan.scratch_bytes = size_t(plan.tiles_per_wave) * tile_bytes;
  plan.width = p.head_dim <= 32 ? 32 : p.head_dim <= 64 ? 64 : 128;
  plan.score_smem = size_t(p.heads) * size_t(plan.width + 1) * sizeof(float);
  if (plan.score_smem > kMaxScoreSmem) {
    fail(kOpName, ": attribute 'num_heads' (", p.heads, ") times D (", p.head_dim,
         ") is too large for the CUDA kernel, which keeps one query's heads in shared memory (at most ",
         kMaxScoreSmem / sizeof(float), " floats)");
  }
  return plan;
}

}  // namespace onnxattn::indexer::cuda
