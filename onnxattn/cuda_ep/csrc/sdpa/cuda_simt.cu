// The plain CUDA-core kernel of ScaledDotProductAttention and the split combine.
//
// simt_kernel: every dtype, any D and Dv up to 256, prefill (splits = 1) and split-KV decode alike. It is
// the float32 path, the fallback for 16-bit problems the mma kernels cannot take (D % 8 != 0, unaligned
// tensors), and the simple version the tests compare the fast kernels with (ONNXATTN_SDPA_CUDA_KERNEL=simt).
// One CTA = 32 packed rows of one KV head x one split; warp w owns rows 8w..8w+7. Per step of 32 keys the
// CTA stages K and V (as float) in shared memory; lane c scores key c against the warp's 8 rows, the warp
// runs the online softmax per row with shuffles, and lane c then accumulates output columns c, c+32, ...
//
// combine_kernel: one warp per output row merges the splits' partial outputs by their log-sum-exp;
// combine_columns_kernel (opt-in) the same, one warp per 32 columns of a row.
//
// Fused ops' layouts (strided views, per-batch query offsets and lengths, the Q-load hook) as in the mma
// kernels; here the prepared Q stays in float32.
#include "sdpa/cuda_combine.cuh"
#include "sdpa/cuda_query_prep.cuh"

namespace onnxattn::sdpa::cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(tiles::kThreads) simt_kernel(const KernelArgs<T> a) {
  constexpr int kRowsPerWarp = tiles::kSimtRowsPerWarp;
  constexpr int kKeys = tiles::kSimtKeys;
  constexpr int kChunks = tiles::kSimtMaxValueChunks;
  extern __shared__ float simt_smem[];
  const int dim = a.head_dim, v_dim = a.v_head_dim;
  float* const q_s = simt_smem;                        // [32][D], pre-scaled
  float* const k_s = q_s + tiles::kSimtRows * dim;     // [32][D + 1]
  float* const v_s = k_s + kKeys * (dim + 1);          // [32][Dv]
  __shared__ int64_t slot_s[kKeys];                    // paged: the pool slots of this step's keys

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const CtaWork work = cta_work(a, tiles::kSimtRows, /*longest_first=*/false);
  if (work.skip) return;
  const CtaCoords& cta = work.cta;
  const SeqView& seq = work.seq;
  const int64_t row_begin = work.row_begin, row_end = work.row_end;
  const TileKeys keys = tile_keys(seq.structure, row_begin, row_end, a.group, seq.num_keys);
  const KeyRange range = split_keys(keys.any, cta.split, a.splits, kKeys, a.min_split_keys);
  const T* const k_base = kv_base(a, a.k, a.k_stride, cta.batch, cta.kv_head);
  const T* const v_base = kv_base(a, a.v, a.v_stride, cta.batch, cta.kv_head);
  const int64_t k_row_stride = a.k_stride[2], v_row_stride = a.v_stride[2];
  const int32_t* const table = table_row(a, cta.batch);

  const bool prep = a.prep.active();
  for (int idx = tid; idx < tiles::kSimtRows * dim; idx += tiles::kThreads) {
    const int row = idx / dim, d = idx % dim;
    const int64_t r = row_begin + row;
    float value = 0.0f;
    if (r < row_end) {
      const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
      value = to_float(q_row(a, cta.batch, ref.head, ref.query, seq.q_start)[d]) * (prep ? 1.0f : a.scale);
    }
    q_s[idx] = value;
  }
  if (prep) {
    __syncthreads();
    prepare_query_tile(a, seq, cta.batch, cta.kv_head, row_begin, row_end, q_s, dim, tiles::kSimtRows, a.scale);
  }  // the main loop's first barrier publishes the prepared tile

  // The warp's rows (every lane holds the same facts).
  KeyRange row_keys[kRowsPerWarp];
  int64_t mask_rows[kRowsPerWarp];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t r = min(row_begin + warp * kRowsPerWarp + rr, row_end - 1);
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
    row_keys[rr] = seq.structure.visible_keys(ref.query, seq.num_keys);
    mask_rows[rr] = mask_row_offset(a, cta.batch, ref);
  }
  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kChunks];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = kNegInf;
    l[rr] = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunks; ++c) o[rr][c] = 0.0f;
  }

  for (int64_t j0 = range.begin; j0 < range.end; j0 += kKeys) {
    const int count = int(min(int64_t(kKeys), range.end - j0));
    __syncthreads();  // the previous step is done with K, V and the slots
    if (table != nullptr) {  // paged: each key's slot looked up once per step (CTA-uniform branch)
      if (tid < kKeys) slot_s[tid] = tid < count ? key_slot(a, table, int(j0) + tid) : -1;
      __syncthreads();
    }
    // -1: past the range, or a bad block index: zeros
    auto slot_of = [&](int c) -> int64_t { return table != nullptr ? slot_s[c] : c < count ? j0 + c : -1; };
    for (int idx = tid; idx < kKeys * dim; idx += tiles::kThreads) {
      const int c = idx / dim, d = idx % dim;
      const int64_t slot = slot_of(c);
      k_s[c * (dim + 1) + d] = slot >= 0 ? to_float(k_base[slot * k_row_stride + d]) : 0.0f;
    }
    for (int idx = tid; idx < kKeys * v_dim; idx += tiles::kThreads) {
      const int c = idx / v_dim, e = idx % v_dim;
      const int64_t slot = slot_of(c);
      v_s[idx] = slot >= 0 ? to_float(v_base[slot * v_row_stride + e]) : 0.0f;
    }
    __syncthreads();

    float s[kRowsPerWarp];
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = 0.0f;
    const float* const q_warp = q_s + warp * kRowsPerWarp * dim;
    for (int d = 0; d < dim; ++d) {
      const float kd = k_s[lane * (dim + 1) + d];
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) s[rr] = fmaf(q_warp[rr * dim + d], kd, s[rr]);
    }

    const int64_t j = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      float x = s[rr];
      if (a.softcap > 0.0f) x = a.softcap * tanhf(x / a.softcap);
      if (lane >= count || j < row_keys[rr].begin || j >= row_keys[rr].end) {
        x = kNegInf;
      } else if (a.mask_kind != MaskKind::kNone) {
        x = apply_user_mask(a, mask_rows[rr], j, x);
      }
      const float m_new = fmaxf(m[rr], warp_max(x));
      const float shift = m_new == kNegInf ? 0.0f : m_new;
      const float alpha = expf(m[rr] - shift);
      const float p = expf(x - shift);
      l[rr] = l[rr] * alpha + warp_sum(p);
      m[rr] = m_new;
      s[rr] = p;
#pragma unroll
      for (int c = 0; c < kChunks; ++c) o[rr][c] *= alpha;
    }
    for (int c = 0; c < count; ++c) {
#pragma unroll
      for (int rr = 0; rr < kRowsPerWarp; ++rr) {
        const float p = __shfl_sync(0xffffffffu, s[rr], c);
        if (p == 0.0f) continue;  // a key this row does not weigh: NaN in its V must not leak (0 * NaN)
#pragma unroll
        for (int ch = 0; ch < kChunks; ++ch) {
          const int e = ch * 32 + lane;
          if (e < v_dim) o[rr][ch] = fmaf(p, v_s[c * v_dim + e], o[rr][ch]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int64_t r = row_begin + warp * kRowsPerWarp + rr;
    if (r >= row_end) continue;
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
    const int64_t out_row = partial_row(a, work, ref, r);  // the uniform out row when not ragged
    const int64_t y_at = y_row(a, cta.batch, ref.head, ref.query, seq.q_start);
    const float inv = l[rr] != 0.0f ? 1.0f / l[rr] : 0.0f;
#pragma unroll
    for (int ch = 0; ch < kChunks; ++ch) {
      const int e = ch * 32 + lane;
      if (e >= v_dim) break;
      if (a.splits == 1) {
        store_y(a, y_at + e, o[rr][ch] * inv);
      } else {
        a.partial_out[(cta.split * a.out_rows + out_row) * v_dim + e] = o[rr][ch] * inv;
      }
    }
    if (lane == 0) {
      const float lse = l[rr] != 0.0f ? m[rr] + logf(l[rr]) : kNegInf;
      if (a.splits > 1) {
        a.partial_lse[cta.split * a.out_rows + out_row] = lse;
      } else if (a.lse != nullptr) {
        a.lse[lse_row(a, ref, seq.q_start)] = lse;
      }
    }
  }
}

// Where partial row `row` goes: its Y row and LSE entry; false for a row no sequence owns (a skipped sequence, a
// ragged row tile the attention did not run), which is never read.
template <typename T>
__device__ __forceinline__ bool combine_target(const KernelArgs<T>& a, int64_t row, int64_t& y_at, int64_t& lse_at) {
  lse_at = row;
  if (a.work_items == nullptr) {
    if (a.kv_lengths != nullptr && a.kv_lengths[row / (a.q_heads * a.q_len)] < 0) return false;  // a skipped sequence
    y_at = y_row(a, row);
    return true;
  }
  // Ragged: the partial row of (item, KV head, tile row); rows the attention skipped are never read.
  const int64_t item = row / (a.kv_heads * a.rows_per_cta);
  if (item >= min(int64_t(*a.work_total), a.work_tiles)) return false;
  const int2 it = a.work_items[item];
  if (it.x < 0 || it.x >= a.batch) return false;
  const SeqView seq = seq_view(a, it.x);
  const int64_t r = int64_t(it.y) * a.rows_per_cta + row % a.rows_per_cta;
  if (seq.skip || r >= seq.rows) return false;
  const int64_t kv_head = (row / a.rows_per_cta) % a.kv_heads;
  y_at = y_row(a, it.x, kv_head * a.group + r % a.group, r / a.group, seq.q_start);
  lse_at = (seq.q_start + r / a.group) * a.q_heads + kv_head * a.group + r % a.group;  // [T, Hq] (lse_row)
  return true;
}

// One warp a row; the merge itself is cuda_combine.cuh's (shared with the decode kernel's fused merge).
template <typename T>
__global__ void __launch_bounds__(tiles::kThreads) combine_kernel(const KernelArgs<T> a) {
  constexpr int kMaxSplits = int(cuda::kMaxSplits);
  __shared__ float weights[tiles::kWarps][kMaxSplits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  wait_for_prerequisite_grids();  // the partials are complete and visible (LaunchPlan::pdl); at once otherwise
  const int64_t row = int64_t(blockIdx.x) * tiles::kCombineRowsPerCta + warp;
  if (row >= a.out_rows) return;  // whole warps leave; no CTA barrier follows
  int64_t y_at = 0, lse_at = row;
  if (!combine_target(a, row, y_at, lse_at)) return;
  const int splits = int(a.splits);
  const SplitWeights w = split_weights</*kL2Only=*/false>(a.partial_lse, a.out_rows, row, splits, weights[warp], lane);
  __syncwarp();
  const float inv = inverse_total(w);
  const int v_dim = a.v_head_dim;
  const float* const partials = a.partial_out + row * v_dim;
  const int64_t split_stride = a.out_rows * v_dim;
  if (v_dim % 4 == 0) {  // rows 16-byte aligned (the scratch base is 256-byte aligned)
    for (int e = 4 * lane; e < v_dim; e += 128) {
      const float4 acc = weighted_sum4<false>(partials, e, split_stride, weights[warp], splits);
      store_y(a, y_at + e, acc.x * inv);
      store_y(a, y_at + e + 1, acc.y * inv);
      store_y(a, y_at + e + 2, acc.z * inv);
      store_y(a, y_at + e + 3, acc.w * inv);
    }
  } else {
    for (int e = lane; e < v_dim; e += 32) {
      store_y(a, y_at + e, weighted_sum<false>(partials, e, split_stride, weights[warp], splits) * inv);
    }
  }
  if (lane == 0 && a.lse != nullptr) a.lse[lse_at] = merged_lse(w);
}

// The columns combine (ONNXATTN_SDPA_CUDA_COMBINE=columns, cuda_plan.cc rule 13): one warp a (row, 32 columns), lane
// c one column, so a B = 1 decode's 32 rows of 128 take 128 warps, not 32. A lane's partials (a batch of up to 32
// splits) are all in flight at once: two round trips to L2 at 32 splits, the log-sum-exps' and the partials' (ptxas
// issues the partials once the log-sum-exps are in, though they come first here), where the warp a row makes one
// for the log-sum-exps, then one per batch of eight: five. The same weights and sums in the same order as
// combine_kernel: the same bits.
template <typename T>
__global__ void __launch_bounds__(tiles::kThreads) combine_columns_kernel(const KernelArgs<T> a) {
  constexpr int kMaxSplits = int(cuda::kMaxSplits);
  __shared__ float weights[tiles::kWarps][kMaxSplits];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  wait_for_prerequisite_grids();  // the partials are complete and visible (LaunchPlan::pdl); at once otherwise
  const int v_dim = a.v_head_dim;
  const int64_t chunks = tiles::combine_column_chunks(v_dim);
  const int64_t item = int64_t(blockIdx.x) * tiles::kWarps + warp;
  const int64_t row = item / chunks;
  if (row >= a.out_rows) return;  // whole warps leave; no CTA barrier follows
  int64_t y_at = 0, lse_at = row;
  if (!combine_target(a, row, y_at, lse_at)) return;
  const int e = int(item % chunks) * 32 + lane;
  const int splits = int(a.splits), loaded = e < v_dim ? splits : 0;  // lanes past Dv (or Dv = 0) read nothing
  const float* const column = a.partial_out + row * v_dim + e;
  const int64_t split_stride = a.out_rows * v_dim;
  float p[kColumnBatch];
  load_column_batch<false>(column, split_stride, 0, loaded, p);
  const SplitWeights w = split_weights</*kL2Only=*/false>(a.partial_lse, a.out_rows, row, splits, weights[warp], lane);
  __syncwarp();
  float acc = accumulate_column_batch(0.0f, p, weights[warp], 0, loaded);
  for (int s0 = kColumnBatch; s0 < loaded; s0 += kColumnBatch) {
    load_column_batch<false>(column, split_stride, s0, loaded, p);
    acc = accumulate_column_batch(acc, p, weights[warp], s0, loaded);
  }
  if (e < v_dim) store_y(a, y_at + e, acc * inverse_total(w));
  if (e == 0 && a.lse != nullptr) a.lse[lse_at] = merged_lse(w);
}

// One warp per sequence: its class by query count, the row tiles of the sequences before it in that class
// (the warp sums them itself: O(B) reads, no cross-block step), then its own items. Sequences without
// rows, skipped ones (negative length) and those whose rows the sanitising rule drops get no items. Item
// lists never grow past their capacity (the plan's bound; a caller breaking its contract loses rows, it
// never writes outside the lists).
__global__ void __launch_bounds__(tiles::kThreads) schedule_kernel(const ScheduleArgs s) {
  const int lane = threadIdx.x % 32;
  const int64_t b = int64_t(blockIdx.x) * tiles::kWarps + threadIdx.x / 32;
  if (b >= s.batch) return;
  // (class, tiles) of sequence i: class 0 decode, 1 prefill, -1 none.
  auto tiles_of = [&](int64_t i, int& cls) -> int64_t {
    const int64_t n = ragged_rows(s.q_starts, s.q_lengths, i, s.q_len, s.tokens).count;
    cls = n == 0 || s.kv_lengths[i] < 0 ? -1 : n <= s.decode_max_queries ? 0 : 1;
    if (cls < 0 || s.work_tiles[cls] == 0) {
      cls = -1;
      return 0;
    }
    return (n * s.group + s.rows_per_cta[cls] - 1) / s.rows_per_cta[cls];
  };
  int64_t before[2] = {0, 0};
  for (int64_t i = lane; i < b; i += 32) {
    int cls;
    const int64_t n = tiles_of(i, cls);
    if (cls >= 0) before[cls] += n;
  }
  for (int c = 0; c < 2; ++c) {
    for (int o = 16; o > 0; o /= 2) before[c] += __shfl_xor_sync(0xffffffffu, before[c], o);
  }
  int cls;
  const int64_t mine = tiles_of(b, cls);
  if (cls >= 0) {
    for (int64_t t = lane; t < mine && before[cls] + t < s.work_tiles[cls]; t += 32) {
      s.items[cls][before[cls] + t] = make_int2(int(b), int(t));
    }
  }
  if (b == s.batch - 1 && lane == 0) {
    for (int c = 0; c < 2; ++c) {
      const int64_t total = before[c] + (cls == c ? mine : 0);
      s.totals[c] = int(min(total, s.work_tiles[c]));
    }
  }
}

}  // namespace

void launch_schedule(const ScheduleArgs& args, int64_t grid, cudaStream_t stream) {
  schedule_kernel<<<unsigned(grid), tiles::kThreads, 0, stream>>>(args);
}

template <typename T>
void launch_simt(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  allow_smem<simt_kernel<T>>(plan.smem_bytes);
  simt_kernel<T><<<unsigned(plan.grid), plan.threads, plan.smem_bytes, stream>>>(args);
}

template <typename T>
void launch_combine(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  launch_maybe_dependent(plan.combine_columns ? combine_columns_kernel<T> : combine_kernel<T>,
                         unsigned(plan.combine_grid), unsigned(tiles::kThreads), 0, stream, plan.pdl,
                         args);  // errors: checked by the caller (cudaGetLastError)
}

template void launch_simt<float>(const KernelArgs<float>&, const LaunchPlan&, cudaStream_t);
template void launch_simt<Float16>(const KernelArgs<Float16>&, const LaunchPlan&, cudaStream_t);
template void launch_simt<BFloat16>(const KernelArgs<BFloat16>&, const LaunchPlan&, cudaStream_t);
template void launch_combine<float>(const KernelArgs<float>&, const LaunchPlan&, cudaStream_t);
template void launch_combine<Float16>(const KernelArgs<Float16>&, const LaunchPlan&, cudaStream_t);
template void launch_combine<BFloat16>(const KernelArgs<BFloat16>&, const LaunchPlan&, cudaStream_t);

}  // namespace onnxattn::sdpa::cuda
