#pragma once
// Warp-level tensor-core pieces of the sparse ops' mma kernels (cuda_blocks_mma.cu: attention by block;
// cuda_select.cu: the selection on tensor cores): 16-bit tiles staged in shared memory with rows padded by 8
// elements (mma_row_stride), a warp's 16 rows x 64 keys of scores on mma.sync m16n8k16 (the accumulator layout:
// lane l holds rows l/4 and l/4 + 8, columns 8n + 2(l%4) + {0, 1} of n-tile n), the online softmax of those rows,
// and O += P V with P kept in registers. Included by .cu files only.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "sdpa/cuda_device.cuh"  // Mma, ldmatrix, quad reductions, fast_exp2, warp_live_keys / live_halves
#include "sparse/cuda_sizes.h"   // kMmaRows, kMmaKeys, mma_row_stride

namespace onnxattn::sparse::cuda::mma_tiles {

using sdpa::cuda::Mma;
inline constexpr int kKeyTiles = kMmaKeys / 8;  // n-tiles of a warp's scores
inline constexpr float kMinusInf = -__builtin_huge_valf();

// Eight elements (16 bytes of a staged 16-bit row) from `src` (16-byte aligned for 16-bit inputs, 32 for float).
template <typename TMma>
__device__ __forceinline__ uint4 load8(const float* src) {
  const float4 x = *reinterpret_cast<const float4*>(src), y = *reinterpret_cast<const float4*>(src + 4);
  return make_uint4(Mma<TMma>::pack(x.x, x.y), Mma<TMma>::pack(x.z, x.w), Mma<TMma>::pack(y.x, y.y),
                    Mma<TMma>::pack(y.z, y.w));
}
template <typename TMma>
__device__ __forceinline__ uint4 load8(const TMma* src) {
  return *reinterpret_cast<const uint4*>(src);
}

// The two halves of a packed pair as floats.
template <typename TMma>
__device__ __forceinline__ float2 unpack(uint32_t bits);
template <>
__device__ __forceinline__ float2 unpack<Float16>(uint32_t bits) {
  __half2 h;
  memcpy(&h, &bits, sizeof bits);
  return __half22float2(h);
}
template <>
__device__ __forceinline__ float2 unpack<BFloat16>(uint32_t bits) {
  return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
}

// x as hi + lo, both 16-bit (hi = x rounded, lo = the rest rounded): a float32 operand for two mmas whose sum
// keeps ~16 significant bits (every value with at most 16 is exact).
template <typename TMma>
__device__ __forceinline__ void split_pair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  hi = Mma<TMma>::pack(x0, x1);
  const float2 h = unpack<TMma>(hi);
  lo = Mma<TMma>::pack(x0 - h.x, x1 - h.y);
}

// kMmaRows rows of `dim` elements into a staged [kMmaRows][stride] 16-bit tile: row r from src + row_at(r) * dim,
// zeros where row_at(r) < 0. All threads of the CTA.
template <typename TMma, typename TIn, typename RowAt>
__device__ __forceinline__ void stage_rows(uint16_t* tile, int stride, const TIn* src, int dim, RowAt row_at) {
  const int chunks = dim / 8;
  for (int c = threadIdx.x; c < kMmaRows * chunks; c += blockDim.x) {
    const int r = c / chunks, d0 = (c % chunks) * 8;
    const int64_t at = row_at(r);
    const uint4 value = at >= 0 ? load8<TMma>(src + at * dim + d0) : make_uint4(0u, 0u, 0u, 0u);
    *reinterpret_cast<uint4*>(tile + r * stride + d0) = value;
  }
}

// As stage_rows, with a thread's loads issued before its stores so that their latencies overlap. A source of the
// tile's 16-bit type is copied by cp.async, and the copies are only issued: the caller commits and waits
// (sdpa::cuda::cp_async_commit, cp_async_wait) before the barrier that publishes the tile. A float32 source is
// loaded and rounded in batches of four chunks a thread. `src` must hold a row 0: a missing row's load reads it (so
// that no load waits on a branch) and is dropped.
template <typename TMma, typename TIn, typename RowAt>
__device__ __forceinline__ void issue_rows(uint16_t* tile, int stride, const TIn* src, int dim, RowAt row_at) {
  const int chunks = dim / 8, total = kMmaRows * chunks;
  if constexpr (std::is_same_v<TIn, TMma>) {
    for (int c = threadIdx.x; c < total; c += blockDim.x) {
      const int r = c / chunks, d0 = (c % chunks) * 8;
      const int64_t at = row_at(r);
      sdpa::cuda::cp_async_16(sdpa::cuda::smem_u32(tile + r * stride + d0), src + max(at, int64_t(0)) * dim + d0,
                              at >= 0);
    }
  } else {
    constexpr int kBatch = 4;
    for (int c0 = threadIdx.x; c0 < total; c0 += kBatch * int(blockDim.x)) {
      uint4 value[kBatch];
#pragma unroll
      for (int x = 0; x < kBatch; ++x) {
        const int c = c0 + x * int(blockDim.x);
        const int64_t at = c < total ? row_at(c / chunks) : int64_t(-1);
        value[x] = load8<TMma>(src + max(at, int64_t(0)) * dim + (c % chunks) * 8);
        if (at < 0) value[x] = make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int x = 0; x < kBatch; ++x) {
        const int c = c0 + x * int(blockDim.x);
        if (c < total) *reinterpret_cast<uint4*>(tile + (c / chunks) * stride + (c % chunks) * 8) = value[x];
      }
    }
  }
}

// Eight elements of `src` as floats (16-byte aligned for 16-bit inputs, 32 for float).
__device__ __forceinline__ void load8_float(const float* src, float (&x)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
template <typename T16>
__device__ __forceinline__ void load8_float(const T16* src, float (&x)[8]) {
  const uint4 bits = *reinterpret_cast<const uint4*>(src);
  const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float2 pair = unpack<T16>(words[w]);
    x[2 * w] = pair.x, x[2 * w + 1] = pair.y;
  }
}

// `rows` rows of `dim` elements as a hi tile and a lo tile of TMma (split_pair), zeros where row_at(r) < 0; the
// threads `worker` = 0..workers-1 share the work (the CTA, or one warp staging its own tiles).
template <typename TMma, typename TIn, typename RowAt>
__device__ __forceinline__ void stage_rows_split(uint16_t* hi_tile, uint16_t* lo_tile, int stride, const TIn* src,
                                                 int dim, int rows, RowAt row_at, int worker, int workers) {
  const int chunks = dim / 8;
  for (int c = worker; c < rows * chunks; c += workers) {
    const int r = c / chunks, d0 = (c % chunks) * 8;
    const int64_t at = row_at(r);
    uint32_t hi[4] = {0u, 0u, 0u, 0u}, lo[4] = {0u, 0u, 0u, 0u};
    if (at >= 0) {
      float x[8];
      load8_float(src + at * dim + d0, x);
#pragma unroll
      for (int w = 0; w < 4; ++w) split_pair<TMma>(x[2 * w], x[2 * w + 1], hi[w], lo[w]);
    }
    *reinterpret_cast<uint4*>(hi_tile + r * stride + d0) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    *reinterpret_cast<uint4*>(lo_tile + r * stride + d0) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
  }
}

// As stage_rows_split, with each worker's loads issued four chunks at a time before their splits and stores (one
// memory latency per four chunks, not per chunk). `src` must hold a row 0: a missing row's load reads it and is
// dropped, so that no load waits on a branch.
template <typename TMma, typename TIn, typename RowAt>
__device__ __forceinline__ void stage_rows_split_batched(uint16_t* hi_tile, uint16_t* lo_tile, int stride,
                                                         const TIn* src, int dim, int rows, RowAt row_at, int worker,
                                                         int workers) {
  constexpr int kBatch = 4;
  const int chunks = dim / 8, total = rows * chunks;
  for (int c0 = worker; c0 < total; c0 += kBatch * workers) {
    float x[kBatch][8];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int c = c0 + b * workers;
      const int64_t at = c < total ? row_at(c / chunks) : int64_t(-1);
      load8_float(src + max(at, int64_t(0)) * dim + (c % chunks) * 8, x[b]);
      if (at < 0) {
#pragma unroll
        for (int e = 0; e < 8; ++e) x[b][e] = 0.0f;
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int c = c0 + b * workers;
      if (c >= total) break;
      uint32_t hi[4], lo[4];
#pragma unroll
      for (int w = 0; w < 4; ++w) split_pair<TMma>(x[b][2 * w], x[b][2 * w + 1], hi[w], lo[w]);
      const int at = (c / chunks) * stride + (c % chunks) * 8;
      *reinterpret_cast<uint4*>(hi_tile + at) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
      *reinterpret_cast<uint4*>(lo_tile + at) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    }
  }
}

template <int kTiles>
__device__ __forceinline__ void zero(float (&s)[kTiles][4]) {
#pragma unroll
  for (int n = 0; n < kTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
}

// s += Q K^T for the warp's rows r_lo, r_lo + 8 (r_lo = 16 warp + lane / 4) over the staged key tile's 8 kTiles
// rows (64 by default).
template <typename TMma, int kTiles = kKeyTiles>
__device__ __forceinline__ void add_scores(float (&s)[kTiles][4], const uint16_t* qs, const uint16_t* ks, int stride,
                                           int dim, int r_lo, int lane) {
  const int g = lane / 4, t = lane % 4;
  for (int kc = 0; kc < dim / 16; ++kc) {
    const uint16_t* const q_lo = qs + r_lo * stride + 16 * kc + 2 * t;
    const uint16_t* const q_hi = q_lo + 8 * stride;
    const uint32_t frag[4] = {
        *reinterpret_cast<const uint32_t*>(q_lo), *reinterpret_cast<const uint32_t*>(q_hi),
        *reinterpret_cast<const uint32_t*>(q_lo + 8), *reinterpret_cast<const uint32_t*>(q_hi + 8)};
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      const uint16_t* const k_row = ks + (8 * n + g) * stride + 16 * kc + 2 * t;
      Mma<TMma>::run(s[n], frag, *reinterpret_cast<const uint32_t*>(k_row),
                     *reinterpret_cast<const uint32_t*>(k_row + 8));
    }
  }
}

// The online softmax step of row r_lo (half 0: elements 0, 1) or r_lo + 8 (half 1: 2, 3) over this tile's raw
// scores Q.K (-inf where hidden); `m` stays in raw units (scale_log2 > 0 keeps the order), the scores become
// probabilities, `l` is the lane's partial sum (quad_sum at the end). Returns the factor for the row's earlier
// output (0 at a first step: exp2(-inf)).
__device__ __forceinline__ float softmax_half(float (&s)[kKeyTiles][4], int half, float& m, float& l,
                                              float scale_log2) {
  float step = kMinusInf;
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) step = fmaxf(step, fmaxf(s[n][2 * half], s[n][2 * half + 1]));
  const float m_new = fmaxf(m, sdpa::cuda::quad_max(step));
  const float shift = m_new == kMinusInf ? 0.0f : m_new * scale_log2;
  const float alpha = sdpa::cuda::fast_exp2(fmaf(m, scale_log2, -shift));
  m = m_new;
  float sum = 0.0f;
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 2 * half; e < 2 * half + 2; ++e) {
      s[n][e] = sdpa::cuda::fast_exp2(fmaf(s[n][e], scale_log2, -shift));
      sum += s[n][e];
    }
  }
  l = l * alpha + sum;
  return alpha;
}

// Sets the scores `hidden(column of the tile, half)` names to -inf (half 0: row r_lo, half 1: row r_lo + 8).
template <typename Hidden>
__device__ __forceinline__ void hide(float (&s)[kKeyTiles][4], int lane, Hidden hidden) {
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (hidden(8 * n + 2 * (lane % 4) + (e & 1), e >> 1)) s[n][e] = kMinusInf;
    }
  }
}

// The online softmax step of both rows (m, l: [half]) and the rescaling of their earlier output.
template <int kMaxDv>
__device__ __forceinline__ void softmax_step(float (&s)[kKeyTiles][4], float (&o)[kMaxDv / 8][4], float (&m)[2],
                                             float (&l)[2], float scale_log2) {
  const float alpha_lo = softmax_half(s, 0, m[0], l[0], scale_log2);
  const float alpha_hi = softmax_half(s, 1, m[1], l[1], scale_log2);
#pragma unroll
  for (int n = 0; n < kMaxDv / 8; ++n) {
    o[n][0] *= alpha_lo, o[n][1] *= alpha_lo;
    o[n][2] *= alpha_hi, o[n][3] *= alpha_hi;
  }
}

// o += P V for the warp's 16 rows: P = the probabilities in `p` (rounded to 16 bits), V the staged [64][v_dim]
// tile. A key no row of the warp weighs is masked out of the V fragments (0 * NaN would be NaN).
template <typename TMma, int kMaxDv>
__device__ __forceinline__ void add_pv(float (&o)[kMaxDv / 8][4], const float (&p)[kKeyTiles][4], const uint16_t* vs,
                                       int v_stride, int v_dim, int lane) {
  uint32_t live = 0;
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 2; ++e) live |= (p[n][e] != 0.0f || p[n][e + 2] != 0.0f ? 1u : 0u) << (2 * n + e);
  }
  live = sdpa::cuda::warp_live_keys(live);
#pragma unroll
  for (int kc = 0; kc < kMmaKeys / 16; ++kc) {
    const uint32_t a[4] = {Mma<TMma>::pack(p[2 * kc][0], p[2 * kc][1]), Mma<TMma>::pack(p[2 * kc][2], p[2 * kc][3]),
                           Mma<TMma>::pack(p[2 * kc + 1][0], p[2 * kc + 1][1]),
                           Mma<TMma>::pack(p[2 * kc + 1][2], p[2 * kc + 1][3])};
    const uint32_t keep_lo = sdpa::cuda::live_halves(live, 2 * kc), keep_hi = sdpa::cuda::live_halves(live, 2 * kc + 1);
    // ldmatrix.trans: lanes 8m..8m+7 address key rows 16 kc + 8 (m & 1) + [0, 8) at value columns 8 (m >> 1) on.
    const uint16_t* const v_rows = vs + (16 * kc + 8 * ((lane / 8) & 1) + lane % 8) * v_stride + 8 * (lane / 16);
#pragma unroll
    for (int np = 0; np < kMaxDv / 16; ++np) {
      if (16 * np >= v_dim) break;
      uint32_t frag[4];
      sdpa::cuda::ldmatrix_x4_trans(frag, sdpa::cuda::smem_u32(v_rows + 16 * np));
      Mma<TMma>::run(o[2 * np], a, frag[0] & keep_lo, frag[1] & keep_hi);
      Mma<TMma>::run(o[2 * np + 1], a, frag[2] & keep_lo, frag[3] & keep_hi);
    }
  }
}

}  // namespace onnxattn::sparse::cuda::mma_tiles
