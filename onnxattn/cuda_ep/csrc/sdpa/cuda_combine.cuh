#pragma once
// The merge of split-KV partials (Flash-Decoding's second step), written once for the two places that run it: the
// combine kernel (cuda_simt.cu; one warp a row, a launch of its own) and the decode kernel's fused merge
// (cuda_decode.cuh; the last CTA of a row tile's splits merges them, cuda_plan.cc rule 12). Both take the same weights
// and the same sums in the same order, so they give the same bits.
//
// Y = sum_s w_s O_s / sum_s w_s with w_s = exp(lse_s - max lse); LSE = max lse + log(sum w_s).
#include "sdpa/cuda_device.cuh"

namespace onnxattn::sdpa::cuda {

// Loads of the partials: plain in the combine kernel, which runs after the decode grid has finished; through L2 only
// (ld.global.cg) in the fused merge, which reads what other CTAs of its own grid wrote (L1 is not coherent with them).
template <bool kL2Only>
__device__ __forceinline__ float load_partial(const float* p) {
  if constexpr (kL2Only) {
    return __ldcg(p);
  } else {
    return *p;
  }
}
template <bool kL2Only>
__device__ __forceinline__ float4 load_partial4(const float* p) {
  const float4* const p4 = reinterpret_cast<const float4*>(p);
  if constexpr (kL2Only) {
    return __ldcg(p4);
  } else {
    return *p4;
  }
}

struct SplitWeights {
  float big;    // the largest log-sum-exp (-inf: no split saw a key)
  float total;  // sum of the weights
};

__device__ __forceinline__ float merged_lse(const SplitWeights& w) {
  return w.total != 0.0f ? w.big + logf(w.total) : kNegInf;
}

// The factor of the merged row's weighted sum: 1 / sum of the weights, 0 where no split saw a key (zero rows).
__device__ __forceinline__ float inverse_total(const SplitWeights& w) {
  return w.total != 0.0f ? 1.0f / w.total : 0.0f;
}

// One warp: weights[s] = exp(lse_s - max lse) for the splits of partial row `row` (lane l takes splits l, l + 32, ...;
// its log-sum-exps stay in registers between the max and the weights: one round trip to L2, not two). The caller syncs
// the warp before reading `weights`.
template <bool kL2Only>
__device__ __forceinline__ SplitWeights split_weights(const float* partial_lse, int64_t out_rows, int64_t row,
                                                      int splits, float* weights, int lane) {
  constexpr int kMax = int(kMaxSplits);
  float lse[kMax / 32];
  float big = kNegInf;
#pragma unroll
  for (int x = 0; x < kMax / 32; ++x) {
    const int s = lane + 32 * x;
    lse[x] = s < splits ? load_partial<kL2Only>(partial_lse + s * out_rows + row) : kNegInf;
    big = fmaxf(big, lse[x]);
  }
  big = warp_max(big);
  const float shift = big == kNegInf ? 0.0f : big;
  float total = 0.0f;
#pragma unroll
  for (int x = 0; x < kMax / 32; ++x) {
    const int s = lane + 32 * x;
    if (s >= splits) break;
    const float w = expf(lse[x] - shift);
    weights[s] = w;
    total += w;
  }
  return {big, warp_sum(total)};
}

// sum_s weights[s] * row[s * split_stride + e + 0..3], split by split in order; row + e 16-byte aligned. The loads are
// unconditional (an empty split's partial is never written: its weight-0 value is selected away after the load) and
// come in batches written before their uses, so several are in flight. A load under `if (w != 0)` went out one at a
// time (~splits x Dv/32 dependent L2 round trips, most of a B=1 decode); a float4 loop that had kept that `if` was
// predicated load by load, two or three in flight (sm_90a SASS); batches of eight issue four before the first use.
// Batches of 32 were slower (ptxas kept 40 registers; B=1 32k combine 4.7 -> 9.1 us on the H200). Weight 0 adds
// fma(0, 0, acc) = acc (acc is never -0): the same sums.
template <bool kL2Only>
__device__ __forceinline__ float4 weighted_sum4(const float* row, int e, int64_t split_stride, const float* weights,
                                                int splits) {
  constexpr int kLoadBatch = 8;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int s0 = 0; s0 < splits; s0 += kLoadBatch) {
    float4 p[kLoadBatch];
#pragma unroll
    for (int x = 0; x < kLoadBatch; ++x) {  // past the last split: the last one again, selected away below
      p[x] = load_partial4<kL2Only>(row + min(s0 + x, splits - 1) * split_stride + e);
    }
#pragma unroll
    for (int x = 0; x < kLoadBatch; ++x) {
      const float w = s0 + x < splits ? weights[s0 + x] : 0.0f;
      const bool live = w != 0.0f;
      acc.x = fmaf(w, live ? p[x].x : 0.0f, acc.x);
      acc.y = fmaf(w, live ? p[x].y : 0.0f, acc.y);
      acc.z = fmaf(w, live ? p[x].z : 0.0f, acc.z);
      acc.w = fmaf(w, live ? p[x].w : 0.0f, acc.w);
    }
  }
  return acc;
}

// The same for one element (Dv not a multiple of 4: the simt kernel's problems only).
template <bool kL2Only>
__device__ __forceinline__ float weighted_sum(const float* row, int e, int64_t split_stride, const float* weights,
                                              int splits) {
  float acc = 0.0f;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) {
    const float w = weights[s];
    const float p = load_partial<kL2Only>(row + s * split_stride + e);
    acc = fmaf(w, w != 0.0f ? p : 0.0f, acc);
  }
  return acc;
}

// The columns combine (ONNXATTN_SDPA_CUDA_COMBINE=columns): a lane sums one column of a row, its partials loaded a
// batch of up to kColumnBatch splits before the first use, so all of a B = 1 decode's 32 splits are in flight at
// once: one 4-byte register a split where weighted_sum4 needs four (its batches of 32 stayed at 40 registers, not in
// flight; the columns kernel holds 112-114, and its sm_80 / sm_90a SASS issues the 32 loads back to back). The same
// sums in the same order as weighted_sum4's lanes, so the same bits: a split past `splits` added nothing there
// (fma(0, 0, acc) = acc) and is not added here.
inline constexpr int kColumnBatch = 32;

// p[x] = the partial of split s0 + x, for the splits below `splits` (the others are never read)
template <bool kL2Only>
__device__ __forceinline__ void load_column_batch(const float* column, int64_t split_stride, int s0, int splits,
                                                  float (&p)[kColumnBatch]) {
#pragma unroll
  for (int x = 0; x < kColumnBatch; ++x) {
    p[x] = s0 + x < splits ? load_partial<kL2Only>(column + (s0 + x) * split_stride) : 0.0f;
  }
}

__device__ __forceinline__ float accumulate_column_batch(float acc, const float (&p)[kColumnBatch],
                                                         const float* weights, int s0, int splits) {
#pragma unroll
  for (int x = 0; x < kColumnBatch; ++x) {
    if (s0 + x < splits) {
      const float w = weights[s0 + x];
      acc = fmaf(w, w != 0.0f ? p[x] : 0.0f, acc);
    }
  }
  return acc;
}

// Shared memory the fused merge borrows from its caller: the weights of each row, then each row's partial row,
// Y row and 1 / total.
template <int kRows>
inline constexpr size_t kFusedMergeSmemBytes = size_t(kRows) * (size_t(kMaxSplits) * 4 + 8 + 8 + 4);

// The fused merge (cuda_plan.cc rule 12, KernelArgs::split_counters non-null). Every CTA of a split decode calls it
// with all its threads once its partial rows are written (a CTA without keys writes zero rows, LSE -inf). Each counts
// itself in on its row tile's counter (zeroed before the launch, cuda_run.cu); the last of the tile's a.splits CTAs
// merges rows [row_begin, row_end) of the tile into Y (and LSE), as the combine kernel would, reading the other CTAs'
// partials from L2. `smem`: kFusedMergeSmemBytes<kRows> bytes, 8-byte aligned, that the caller no longer uses. Dv is a
// multiple of 8 (the tensor-core decode's rule).
template <typename T, int kRows>
__device__ __forceinline__ void merge_splits_if_last(const KernelArgs<T>& a, const CtaWork& work, unsigned char* smem) {
  __shared__ bool last_s;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, warps = blockDim.x / 32;
  // The CTA's writes, then one fence and the count (the pattern of a grid-wide barrier: the barrier orders the other
  // threads' writes before thread 0's fence, which is cumulative), so the last CTA to count reads every partial.
  __syncthreads();
  if (tid == 0) {
    // blockIdx.x = (outer * splits + split) * inner + inner_index (cta_work): the tile drops the split digit.
    const uint32_t inner = uint32_t(a.work_items == nullptr ? a.row_tiles : a.work_tiles);
    const uint32_t splits = uint32_t(a.splits), bid = blockIdx.x;
    const uint32_t tile = bid / (inner * splits) * inner + bid % inner;
    __threadfence();  // release: this CTA's partials are visible device-wide before its count
    const bool last = atomicAdd(a.split_counters + tile, 1u) == splits - 1;
    if (last) __threadfence();  // acquire: the partials of the CTAs counted before are read after their counts
    last_s = last;
  }
  __syncthreads();
  if (!last_s) return;

  float* const weights = reinterpret_cast<float*>(smem);  // [kRows][kMaxSplits]
  int64_t* const partial_at = reinterpret_cast<int64_t*>(weights + kRows * kMaxSplits);
  int64_t* const y_at = partial_at + kRows;
  float* const inverse = reinterpret_cast<float*>(y_at + kRows);
  const int rows = int(work.row_end - work.row_begin), splits = int(a.splits);
  for (int r = warp; r < rows; r += warps) {
    const RowRef ref = row_ref(a, work.cta.batch, work.cta.kv_head, work.row_begin + r);
    const int64_t partial = partial_row(a, work, ref, work.row_begin + r);
    const SplitWeights w =
        split_weights<true>(a.partial_lse, a.out_rows, partial, splits, weights + r * kMaxSplits, lane);
    if (lane == 0) {
      partial_at[r] = partial * a.v_head_dim;
      y_at[r] = y_row(a, work.cta.batch, ref.head, ref.query, work.seq.q_start);
      inverse[r] = inverse_total(w);
      if (a.lse != nullptr) a.lse[lse_row(a, ref, work.seq.q_start)] = merged_lse(w);
    }
  }
  __syncthreads();
  // Every thread one 4-column chunk of a row at a time: at B = 1 (4 rows of 128) each thread's splits are one batch
  // of loads in flight per 8 splits, where a warp a row would walk 4 rows one after another.
  const int chunks = a.v_head_dim / 4;
  const int64_t split_stride = a.out_rows * a.v_head_dim;
  for (int item = tid; item < rows * chunks; item += blockDim.x) {
    const int r = item / chunks, e = 4 * (item % chunks);
    const float4 acc = weighted_sum4<true>(a.partial_out + partial_at[r], e, split_stride, weights + r * kMaxSplits,
                                           splits);
    const float inv = inverse[r];
    const int64_t at = y_at[r] + e;
    store_y(a, at, acc.x * inv);
    store_y(a, at + 1, acc.y * inv);
    store_y(a, at + 2, acc.z * inv);
    store_y(a, at + 3, acc.w * inv);
  }
}

}  // namespace onnxattn::sdpa::cuda
