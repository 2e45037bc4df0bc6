#pragma once
// A warp's top-k list from a row of selection scores in shared memory, for every CUDA selection kernel
// (cuda_select.cu): warp_select (each pick scans the row) and warp_select_groups (the routing's default: each pick
// rescans one group of 32 keys). The same candidates, pick rule and output.
#include <cstdint>

#include "sparse/cuda_common.cuh"
#include "sparse/cuda_select.cuh"

namespace onnxattn::sparse::cuda {

// One warp picks a list from `key` (the num_blocks candidates' scores, in shared memory, used up): the forced
// blocks first (the own block under causal, sinks, local blocks; in index order, at most `top`), then the
// best other candidates up to the causal limit by repeated warp argmax (larger first, lower index on ties;
// -inf and NaN never), sorted ascending, -1 after the valid entries, written at lists[at] (and listed).
// (Forced blocks taken apart, not as +inf scores: a score that overflowed to +inf must not displace them.)
// `chosen`: a.top ints of shared scratch.
template <typename TQ>
__device__ __forceinline__ void warp_select(const SelectArgs<TQ>& a, float* key, int64_t position, int32_t* chosen, int64_t at) {
  const int lane = threadIdx.x % 32;
  const int64_t nb = a.num_blocks, nc = a.num_centroids;
  const int64_t own = position >= 0 ? position / a.block_size : -1;
  const int64_t limit = a.causal ? min(own + 1, nb) : nb;
  int64_t count = 0;
  for (int64_t c0 = 0; c0 < nb; c0 += 32) {
    const int64_t c = c0 + lane;
    const bool forced = c < limit && ((a.causal && c == own) || c < a.sink_blocks || (c < own && c >= own - a.local_blocks));
    if (c < nb) key[c] = c >= limit || forced || c >= nc ? kNegInf : key[c];
    unsigned mask = __ballot_sync(0xffffffffu, forced);
    while (mask != 0u) {  // in index order, the same on every lane
      const int bit = __ffs(mask) - 1;
      mask &= mask - 1u;
      if (count < a.top) {
        if (lane == 0) chosen[count] = int32_t(c0 + bit);
        ++count;
      }
    }
  }
  __syncwarp();
  for (; count < a.top; ++count) {
    int64_t index;
    if (a.redux_argmax) {  // each lane's best key (its lowest index on ties), then two warp reductions
      unsigned best = 0u, at = 0xffffffffu;
      for (int64_t c = lane; c < nb; c += 32) {
        const unsigned k = argmax_key(key[c]);
        if (k > best) best = k, at = unsigned(c);
      }
      const unsigned top_key = __reduce_max_sync(0xffffffffu, best);
      if (top_key <= kNegInfArgmaxKey) break;
      index = __reduce_min_sync(0xffffffffu, best == top_key ? at : 0xffffffffu);
    } else {  // five rounds of (value, index) shuffles
      float best = kNegInf;
      index = nb;
      for (int64_t c = lane; c < nb; c += 32)
        if (better(key[c], c, best, index)) best = key[c], index = c;
      warp_best(best, index);
      if (!(best > kNegInf)) break;
    }
    if (lane == 0) {
      chosen[count] = int32_t(index);
      key[index] = kNegInf;
    }
    __syncwarp();
  }
  if (lane == 0) {
    for (int64_t x = 1; x < count; ++x) {  // insertion sort: lists are short
      const int32_t v = chosen[x];
      int64_t y = x - 1;
      for (; y >= 0 && chosen[y] > v; --y) chosen[y + 1] = chosen[y];
      chosen[y + 1] = v;
    }
  }
  __syncwarp();
  for (int64_t x = lane; x < a.top; x += 32) {
    const int32_t value = x < count ? chosen[x] : -1;
    a.lists[at + x] = value;
    if (a.listed) a.listed[at + x] = value;
  }
  __syncwarp();  // `chosen` may be reused by this warp
}

// warp_select's list by group maxima (ONNXATTN_SPARSE_CUDA_ROUTE=groups; the routing's select_split_kernel): the
// same candidates (below the causal limit and Nc, not forced), picks (largest argmax_key, lowest index on ties;
// -inf and NaN never) and output. warp_select scans all Nb keys on every lane for each pick (top * Nb / 32 reads a
// lane); here lane l keeps the best of the key groups [32 j, 32 j + 32) with j = l mod 32 below the limit, a pick is
// two warp reductions over those bests, and only the winning lane's groups are rescanned, by the whole warp (a key a
// lane): limit / 32 + top reads a lane for limit <= 1024. A lane reads its own group rotated by its lane so that the
// 32 lanes hit 32 banks; ties are broken by index explicitly, so the scan order does not matter.
template <typename TQ>
__device__ __forceinline__ void warp_select_groups(const SelectArgs<TQ>& a, float* key, int64_t position,
                                                   int32_t* chosen, int64_t at) {
  const int lane = threadIdx.x % 32;
  const int64_t nb = a.num_blocks;
  const int64_t own = position >= 0 ? position / a.block_size : -1;
  const int64_t limit = a.causal ? min(own + 1, nb) : nb;
  // warp_select's forced blocks below the limit, as 32-bit bounds (Nb <= 2^24, select_split_tiling): the own block
  // (causal), [0, sinks), [local_lo, local_hi) = [own - local_blocks, own).
  auto clip = [&](int64_t x) { return int(max(int64_t(0), min(x, limit))); };
  const int own_c = a.causal && own >= 0 && own < limit ? int(own) : -1, sinks = clip(a.sink_blocks);
  const int local_lo = clip(own - a.local_blocks), local_hi = clip(own), lim = int(limit);
  auto forced = [&](int c) { return c < lim && (c == own_c || c < sinks || (c >= local_lo && c < local_hi)); };
  int64_t count = 0;
  for (int c0 = 0; c0 < lim; c0 += 32) {  // the forced blocks in index order, as warp_select
    unsigned mask = __ballot_sync(0xffffffffu, forced(c0 + lane));
    while (mask != 0u) {
      const int bit = __ffs(mask) - 1;
      mask &= mask - 1u;
      if (count < a.top) {
        if (lane == 0) chosen[count] = int32_t(c0 + bit);
        ++count;
      }
    }
  }
  // A candidate's key (argmax_key), 0 (never picked) for the rest; a pick's key is then set to -inf below.
  const int end = int(min(limit, a.num_centroids)), groups = (end + 31) / 32;
  auto key_at = [&](int c) { return c < end && !forced(c) ? argmax_key(key[c]) : 0u; };
  unsigned best = 0u, best_at = 0xffffffffu;
  for (int j = lane; j < groups; j += 32) {
#pragma unroll 8
    for (int i = 0; i < 32; ++i) {
      const int c = 32 * j + ((i + lane) & 31);
      const unsigned k = key_at(c);
      if (k > best || (k == best && unsigned(c) < best_at)) best = k, best_at = unsigned(c);
    }
  }
  for (; count < a.top; ++count) {
    const unsigned top_key = __reduce_max_sync(0xffffffffu, best);
    if (top_key <= kNegInfArgmaxKey) break;
    const unsigned index = __reduce_min_sync(0xffffffffu, best == top_key ? best_at : 0xffffffffu);
    if (lane == 0) {
      chosen[count] = int32_t(index);
      key[index] = kNegInf;  // used up, as in warp_select
    }
    __syncwarp();
    // The winner's groups again, a key a lane; their best goes back to the winning lane.
    const int owner = int(index / 32u % 32u);
    unsigned group_best = 0u, group_at = 0xffffffffu;
    for (int j = owner; j < groups; j += 32) {
      const int c = 32 * j + lane;
      const unsigned k = key_at(c);
      const unsigned k_max = __reduce_max_sync(0xffffffffu, k);
      const unsigned c_min = __reduce_min_sync(0xffffffffu, k == k_max ? unsigned(c) : 0xffffffffu);
      if (k_max > group_best) group_best = k_max, group_at = c_min;  // groups ascend: an equal key comes later
    }
    if (lane == owner) best = group_best, best_at = group_at;
  }
  __syncwarp();
  // Ascending order: each entry's rank among the distinct picks (forced blocks are never picked again).
  for (int64_t x = lane; x < a.top; x += 32) {
    int32_t value = -1;
    int64_t slot = x;
    if (x < count) {
      value = chosen[x];
      slot = 0;
      for (int64_t y = 0; y < count; ++y) slot += chosen[y] < value ? 1 : 0;
    }
    a.lists[at + slot] = value;
    if (a.listed) a.listed[at + slot] = value;
  }
  __syncwarp();  // `chosen` may be reused by this warp
}

}  // namespace onnxattn::sparse::cuda
