#pragma once
// Which keys a query row may see, from the structural attributes shared by every attention op:
// causal (bottom-right aligned), a causal sliding window of W keys, a symmetric band |p - j| <= W, and
// chunked attention (Llama 4: only the keys of the query's own chunk of C positions, floor(j/C) == floor(p/C)).
// Query row i of Sq sits at key position p = i + (Skv - Sq). Every rule bounds j by an interval, so the
// visible keys of a row are one contiguous range [begin, end), and both bounds are non-decreasing in i.
// Kernels use the range to skip whole key tiles and only test elements on tile edges.
#include <cstdint>

#include "common/host_device.h"

namespace onnxattn {

struct KeyRange {
  int64_t begin;
  int64_t end;  // exclusive; begin == end means no visible key
  ONNXATTN_HD bool empty() const { return end <= begin; }
};

struct StructuralMask {
  int64_t query_offset = 0;  // Skv - Sq
  bool causal = false;
  int64_t window = 0;  // > 0: keep the `window` most recent keys, the current one included
  int64_t band = 0;    // > 0: keep |p - j| <= band
  int64_t chunk = 0;   // > 0: keep floor(j / chunk) == floor(p / chunk)

  ONNXATTN_HD KeyRange visible_keys(int64_t query_row, int64_t num_keys) const {
    const int64_t p = query_row + query_offset;
    int64_t begin = 0, end = num_keys;
    if (causal && p + 1 < end) end = p + 1;
    // Windows and bands may be as large as int64 allows (no limit in the spec): compare distances from p,
    // which stay small, and form p -/+ window only when the result lies inside [begin, end), so nothing
    // overflows (p - window wrapped for a huge window when p < 0, i.e. more queries than keys).
    if (window > 0 && p - begin >= window) begin = p - window + 1;
    if (band > 0) {
      if (p - begin > band) begin = p - band;
      if (end - p - 1 > band) end = p + band + 1;
    }
    if (chunk > 0) {
      // p's offset in its chunk, floored for p < 0; p - r and p + (chunk - r) are formed only inside [begin, end)
      int64_t r = p % chunk;
      if (r < 0) r += chunk;
      if (p - begin > r) begin = p - r;
      if (end - p > chunk - r) end = p + (chunk - r);
    }
    if (end < begin) end = begin;
    if (begin > num_keys) begin = end = num_keys;
    if (end < 0) begin = end = 0;
    return {begin, end};
  }

  // Keys visible to at least one row in [row_begin, row_end): the union of the rows' ranges, which is
  // contiguous because both bounds are monotone in the row.
  ONNXATTN_HD KeyRange visible_keys(int64_t row_begin, int64_t row_end, int64_t num_keys) const {
    KeyRange first = visible_keys(row_begin, num_keys);
    KeyRange last = visible_keys(row_end - 1, num_keys);
    return {first.begin, last.end > first.begin ? last.end : first.begin};
  }
};

}  // namespace onnxattn
