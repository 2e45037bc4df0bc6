#pragma once
// Which keys a CTA visits: the block-list half of "which KV blocks to visit vs which elements are
// masked" (STYLE.md #5). Host+device, so the host tests check exactly what the kernels run.
//
// A CTA serves packed rows [row_begin, row_end) of one KV head; row r is query i = r / G of head g = r % G
// of the group. Row bounds of the visible key range are monotone in i, hence in r, so:
//   any: keys some row of the tile may see  = [first row's begin, last row's end)
//   all: keys every row of the tile sees    = [last row's begin, first row's end)   (may be empty)
// Key tiles inside `all` need no element test; tiles outside `any` are never loaded.
#include <cstdint>

#include "common/host_device.h"
#include "common/visibility.h"

namespace onnxattn::sdpa::cuda {

struct TileKeys {
  KeyRange any;
  KeyRange all;
};

ONNXATTN_HD TileKeys tile_keys(const StructuralMask& mask, int64_t row_begin, int64_t row_end, int64_t group,
                               int64_t num_keys) {
  const KeyRange first = mask.visible_keys(row_begin / group, num_keys);
  const KeyRange last = mask.visible_keys((row_end - 1) / group, num_keys);
  TileKeys t;
  t.any = {first.begin, last.end > first.begin ? last.end : first.begin};
  t.all = {last.begin, first.end};
  return t;
}

// Split `split` of `splits` of the key range `keys`: contiguous chunks of equal length, at least
// `min_chunk` keys, rounded up to a multiple of `granule` keys so each split starts on a step boundary;
// trailing splits may be empty. The floor matters when `splits` was chosen on the host for the longest
// possible range and this range (one sequence's visible keys) is shorter: it then uses fewer splits, and
// the CTAs of the empty ones return at once.
ONNXATTN_HD KeyRange split_keys(KeyRange keys, int64_t split, int64_t splits, int64_t granule, int64_t min_chunk = 0) {
  const int64_t length = keys.end > keys.begin ? keys.end - keys.begin : 0;
  int64_t per_split = (length + splits - 1) / splits;
  if (per_split < min_chunk) per_split = min_chunk;
  const int64_t chunk = (per_split + granule - 1) / granule * granule;
  int64_t begin = keys.begin + split * chunk;
  if (begin > keys.end) begin = keys.end;
  const int64_t end = begin + chunk < keys.end ? begin + chunk : keys.end;
  return {begin, end};
}

}  // namespace onnxattn::sdpa::cuda
