#pragma once
// Device-side building blocks shared by the CUDA kernels of ScaledDotProductAttention: the kernel
// argument struct, PTX wrappers (cp.async, ldmatrix, mma.sync), and the score hooks (scale, softcap,
// user mask, structural edge mask) applied in registers. Included by the .cu files only.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "common/half.h"
#include "common/visibility.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/cuda_query_prep.h"
#include "sdpa/cuda_ranges.h"
#include "sdpa/cuda_tiles.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa::cuda {

// Everything a kernel reads, by value. Q, K, V, Y are [B, H, S, D] views with a contiguous last dim and
// the element strides below (batch, head, seq): contiguous tensors for ScaledDotProductAttention, other
// layouts for fused ops ([B, S, H*D] activations, KV-cache buffers longer than the valid length).
// "Out row" is the flat index (b * Hq + h) * Sq + i of LSE's and the split scratch's rows.
template <typename T>
struct KernelArgs {
  const T* q;
  const T* k;
  const T* v;
  const bool* bool_mask;
  const T* additive_mask;
  T* y;
  float* y_float;       // non-null: the output in float32 at Y's strides instead of y (fused ops that mix or
                        // project the result further round to T only once, at the end)
  float* lse;           // null when not requested
  float* partial_out;   // decode with splits > 1: [splits][out_rows][Dv]
  float* partial_lse;   // [splits][out_rows]
  int64_t batch, q_heads, kv_heads, q_len, kv_len;
  int head_dim, v_head_dim;
  int64_t group;
  int64_t rows_per_head;  // q_len * group
  int64_t row_tiles, splits, out_rows;
  float scale, softcap;
  StructuralMask structure;
  MaskKind mask_kind;
  int64_t mask_stride[4];
  int64_t q_stride[3], k_stride[3], v_stride[3], y_stride[3];
  // Per-batch layout of fused ops (device memory, [B]; null = uniform): the key position of query row 0,
  // and the valid keys (a negative length marks a sequence the caller found invalid: its rows are skipped).
  const int64_t* query_offsets;
  const int64_t* kv_lengths;
  int64_t min_split_keys;  // decode: a split covers at least this many of its sequence's keys (0: no floor)
  QueryPrep<T> prep;       // applied to the Q tile after loading it (fused ops); inactive otherwise
  // Ragged query batches (run_ragged; null q_starts = uniform): sequence b's queries are packed rows
  // q_starts[b] .. + q_lengths[b] of `tokens` (sanitised by ragged_rows), and this launch's CTAs take their
  // (sequence, row tile) from work_items[w], w < min(*work_total, work_tiles). Partial rows (splits > 1)
  // are then ((w * kv_heads + kv_head) * rows_per_cta + tile row).
  const int64_t* q_starts;
  const int64_t* q_lengths;
  int64_t tokens;
  const int2* work_items;
  const int* work_total;
  int64_t work_tiles;
  int rows_per_cta;
  // Paged K/V (null block_table = contiguous views): key j of sequence b is slot block * block_size +
  // j % block_size of the pool, block = block_table[b * table_stride + j / block_size]; K/V rows are then
  // addressed as slot * stride[2] + head * stride[1] (stride[0] unused). j / block_size is computed as
  // (umulhi(j, block_mul) + j) >> block_shift (block_divider below: one multiply, no division, for every
  // block size). A block outside [0, num_blocks) (num_blocks > 0) reads as zeros.
  const int32_t* block_table;
  int64_t table_stride, num_blocks;
  int block_size;
  uint32_t block_mul, block_shift;
  // Paged K/V only (null = 0): sequence b's pool starts kv_starts[b] rows into K/V, its table entries count
  // blocks from there (block-sparse lists over per-(batch, head) K/V, e.g. NativeSparseAttention's).
  const int64_t* kv_starts;
  // Decode with splits > 1: the fused merge's counters, one per row tile, zeroed before the launch (cuda_combine.cuh,
  // cuda_plan.cc rule 12); null: the combine kernel merges the splits. Last, so the other fields keep their offsets.
  uint32_t* split_counters;
};

// Q's row of query i of head h of batch b; `q_start` is the packed row of the batch's query 0 in a ragged
// batch (whose batch strides are 0), else 0.
template <typename T>
__device__ __forceinline__ const T* q_row(const KernelArgs<T>& a, int64_t b, int64_t h, int64_t i, int64_t q_start = 0) {
  return a.q + b * a.q_stride[0] + h * a.q_stride[1] + (q_start + i) * a.q_stride[2];
}
// Y's row (element offset into y or y_float), the same way.
template <typename T>
__device__ __forceinline__ int64_t y_row(const KernelArgs<T>& a, int64_t b, int64_t h, int64_t i, int64_t q_start = 0) {
  return b * a.y_stride[0] + h * a.y_stride[1] + (q_start + i) * a.y_stride[2];
}
// Y's row for a flat out row (b * Hq + h) * Sq + i.
template <typename T>
__device__ __forceinline__ int64_t y_row(const KernelArgs<T>& a, int64_t out_row) {
  const int64_t i = out_row % a.q_len, bh = out_row / a.q_len;
  return y_row(a, bh / a.q_heads, bh % a.q_heads, i);
}
// Element `at` of the output: T, or float32 when the caller asked for y_float.
template <typename T>
__device__ __forceinline__ void store_y(const KernelArgs<T>& a, int64_t at, float value) {
  if (a.y_float != nullptr) {
    a.y_float[at] = value;
  } else {
    a.y[at] = from_float<T>(value);
  }
}

// K's or V's rows of (batch, KV head): `data` at the view's strides, plus the sequence's pool start.
template <typename T>
__device__ __forceinline__ const T* kv_base(const KernelArgs<T>& a, const T* data, const int64_t (&stride)[3],
                                            int64_t batch, int64_t kv_head) {
  const int64_t start = a.kv_starts != nullptr ? a.kv_starts[batch] : 0;
  return data + batch * stride[0] + kv_head * stride[1] + start * stride[2];
}

// A ragged batch's query rows of sequence b, as every kernel (and the schedule) reads them: the caller's
// start and count, or no rows at all when they would leave the packed rows [0, tokens) or exceed the
// plan's queries per sequence (never a read or write outside Q and Y, whatever the caller says).
struct QueryRows {
  int64_t start, count;
};

__device__ __forceinline__ QueryRows ragged_rows(const int64_t* q_starts, const int64_t* q_lengths, int64_t b,
                                                 int64_t q_len, int64_t tokens) {
  const int64_t start = q_starts[b], count = q_lengths[b];
  if (start < 0 || count < 0 || count > q_len || start > tokens - count) return {0, 0};
  return {start, count};
}

// What one batch's rows see: the structural rules with this batch's query offset, how many keys are valid
// (the rest of the K/V view is never read, e.g. stale KV-cache slots), and its rows.
struct SeqView {
  StructuralMask structure;
  int64_t num_keys;
  int64_t q_start;  // ragged: packed row of query 0 (else 0)
  int64_t rows;     // packed rows r = i * G + g of each KV head
  bool skip;        // the caller marked the sequence invalid: write nothing for its rows
};

template <typename T>
__device__ __forceinline__ SeqView seq_view(const KernelArgs<T>& a, int64_t batch) {
  SeqView s;
  s.structure = a.structure;
  s.num_keys = a.kv_len;
  s.q_start = 0;
  s.rows = a.rows_per_head;
  s.skip = false;
  if (a.query_offsets != nullptr) s.structure.query_offset = a.query_offsets[batch];
  if (a.kv_lengths != nullptr) {
    const int64_t n = a.kv_lengths[batch];
    s.skip = n < 0;
    s.num_keys = n < 0 ? 0 : n < a.kv_len ? n : a.kv_len;  // never past the view, whatever the caller says
  }
  if (a.q_starts != nullptr) {
    const QueryRows q = ragged_rows(a.q_starts, a.q_lengths, batch, a.q_len, a.tokens);
    s.q_start = q.start;
    s.rows = q.count * a.group;
  }
  return s;
}

// ---- Paged K/V: the pool slot of key j (j itself for contiguous views), or -1 for a block index outside
// the pool. `table_row` is the sequence's block-table row (null: not paged). Reads the table through the
// read-only cache: the entries of one block are read by every lane that loads one of its rows.
template <typename T>
__device__ __forceinline__ const int32_t* table_row(const KernelArgs<T>& a, int64_t batch) {
  return a.block_table != nullptr ? a.block_table + batch * a.table_stride : nullptr;
}

template <typename T>
__device__ __forceinline__ int64_t key_slot(const KernelArgs<T>& a, const int32_t* table, int j) {
  if (table == nullptr) return j;
  const int index = int((__umulhi(uint32_t(j), a.block_mul) + uint32_t(j)) >> a.block_shift);
  const int offset = j - index * a.block_size;
  const int64_t block = __ldg(table + index);
  if (block < 0 || (a.num_blocks > 0 && block >= a.num_blocks)) return -1;
  return block * a.block_size + offset;
}

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
inline constexpr float kNegInf = -__builtin_huge_valf();

// ---- CTA coordinates. Flattened into blockIdx.x (no 65535 limit on heads or batch); row tiles vary
// fastest so CTAs that share a KV head run together and share K/V in L2.
struct CtaCoords {
  int64_t row_tile, split, kv_head, batch;
};

// In 32-bit unsigned arithmetic: the grid (their product with the batch) is below 2^31 (the plans check it), where a
// 64-bit division compiles to a range test, a 32-bit sequence and a routine call, at the start of every CTA.
template <typename T>
__device__ __forceinline__ CtaCoords cta_coords(const KernelArgs<T>& a) {
  const uint32_t row_tiles = uint32_t(a.row_tiles), splits = uint32_t(a.splits), kv_heads = uint32_t(a.kv_heads);
  uint32_t bid = blockIdx.x;
  CtaCoords c;
  c.row_tile = bid % row_tiles;
  bid /= row_tiles;
  c.split = bid % splits;
  bid /= splits;
  c.kv_head = bid % kv_heads;
  c.batch = bid / kv_heads;
  return c;
}

// One CTA's work: coordinates, its batch's view, and its packed rows [row_begin, row_end) of the KV head.
// `work` is the schedule item of a ragged batch (-1 otherwise). skip: nothing to do (an invalid sequence,
// or a CTA past the items the schedule listed); the kernel returns at once and writes nothing.
struct CtaWork {
  CtaCoords cta;
  SeqView seq;
  int64_t work;
  int64_t row_begin, row_end;
  bool skip;
};

// `longest_first` (prefill): the last row tiles see the most keys under a causal mask, so they start first.
template <typename T>
__device__ __forceinline__ CtaWork cta_work(const KernelArgs<T>& a, int rows_per_cta, bool longest_first) {
  CtaWork w{};
  w.work = -1;
  if (a.work_items == nullptr) {
    w.cta = cta_coords(a);
    if (longest_first) w.cta.row_tile = a.row_tiles - 1 - w.cta.row_tile;
  } else {
    int64_t bid = blockIdx.x;
    int64_t item = bid % a.work_tiles;
    bid /= a.work_tiles;
    w.cta.split = bid % a.splits;
    w.cta.kv_head = bid / a.splits;
    const int64_t total = min(int64_t(*a.work_total), a.work_tiles);
    if (item >= total) {
      w.skip = true;
      return w;
    }
    if (longest_first) item = total - 1 - item;
    const int2 it = a.work_items[item];
    w.work = item;
    w.cta.batch = it.x;
    w.cta.row_tile = it.y;
    if (w.cta.batch < 0 || w.cta.batch >= a.batch) {  // never written by the schedule; defensive
      w.skip = true;
      return w;
    }
  }
  w.seq = seq_view(a, w.cta.batch);
  w.row_begin = w.cta.row_tile * rows_per_cta;
  w.row_end = min(w.row_begin + rows_per_cta, w.seq.rows);
  w.skip = w.seq.skip || w.row_begin >= w.row_end;
  return w;
}

// Query index, query head and flat output row of packed row r of KV head `kv_head`.
struct RowRef {
  int64_t query, head, out_row;
};

template <typename T>
__device__ __forceinline__ RowRef row_ref(const KernelArgs<T>& a, int64_t batch, int64_t kv_head, int64_t r) {
  RowRef ref;
  ref.query = r / a.group;
  ref.head = kv_head * a.group + r % a.group;
  ref.out_row = (batch * a.q_heads + ref.head) * a.q_len + ref.query;
  return ref;
}

// The split scratch's row of packed row r = row_begin + tile_row of a CTA of KV head `kv_head` working on
// schedule item `item` (-1: a uniform batch, whose partial rows are the out rows; see KernelArgs).
template <typename T>
__device__ __forceinline__ int64_t partial_row(const KernelArgs<T>& a, int64_t item, int64_t kv_head,
                                               int64_t tile_row, const RowRef& ref) {
  if (item < 0) return ref.out_row;
  return (item * a.kv_heads + kv_head) * a.rows_per_cta + tile_row;
}
template <typename T>
__device__ __forceinline__ int64_t partial_row(const KernelArgs<T>& a, const CtaWork& w, const RowRef& ref, int64_t r) {
  return partial_row(a, w.work, w.cta.kv_head, r - w.row_begin, ref);
}

// The LSE of a row: [B, Hq, Sq] (the out row), or [T, Hq] by packed row for ragged batches (work items).
template <typename T>
__device__ __forceinline__ int64_t lse_row(const KernelArgs<T>& a, const RowRef& ref, int64_t q_start) {
  return a.work_items == nullptr ? ref.out_row : (q_start + ref.query) * a.q_heads + ref.head;
}

template <typename T>
__device__ __forceinline__ int64_t mask_row_offset(const KernelArgs<T>& a, int64_t batch, const RowRef& ref) {
  return batch * a.mask_stride[0] + ref.head * a.mask_stride[1] + ref.query * a.mask_stride[2];
}

// ---- Score hooks, in the contract's order: scale, softcap, user mask, structural mask.
// c * tanh(x / c) as c - 2c / (exp(2x/c) + 1): exact limits, a few ulps (fast exp and reciprocal), no tanhf. The
// divisions by the cap are made once per kernel, the last one a fast reciprocal (__fdividef(y, inf) = 0
// keeps the +c limit; e + 1 >= 1 otherwise).
struct SoftCap {
  float cap, two_over_cap, two_cap;
  __device__ explicit SoftCap(float c) : cap(c), two_over_cap(c > 0.0f ? 2.0f / c : 0.0f), two_cap(2.0f * c) {}
  __device__ __forceinline__ float apply(float x) const {
    return cap - __fdividef(two_cap, __expf(x * two_over_cap) + 1.0f);
  }
};

// Applies the user mask at key j to score x, for a row whose mask row starts at `row_offset`: a bool mask
// replaces hidden scores by -inf (so NaN in a hidden key's K never leaks), an additive one adds.
template <typename T>
__device__ __forceinline__ float apply_user_mask(const KernelArgs<T>& a, int64_t row_offset, int64_t j, float x) {
  const int64_t at = row_offset + j * a.mask_stride[3];
  if (a.mask_kind == MaskKind::kBool) return a.bool_mask[at] ? x : kNegInf;
  return x + to_float(a.additive_mask[at]);
}

// NaN safety for V: a key that no row of a warp weighs must not reach that warp's O += P V, since
// 0 * NaN = NaN (an unwritten cache slot hidden by a mask). `live` has bit 2n + e set when key
// 8n + 2(l%4) + e of the step has weight in some row of this lane's quad column; OR-ing over the lanes
// that share l%4 covers every row of the warp. Those are exactly the keys of this lane's V fragments.
__device__ __forceinline__ uint32_t warp_live_keys(uint32_t live) {
  live |= __shfl_xor_sync(0xffffffffu, live, 4);
  live |= __shfl_xor_sync(0xffffffffu, live, 8);
  return live | __shfl_xor_sync(0xffffffffu, live, 16);
}
// Mask keeping the 16-bit halves of a B fragment register whose keys are live: keys 8n + 2(l%4) + {0, 1}.
__device__ __forceinline__ uint32_t live_halves(uint32_t live, int n) {
  return ((live >> (2 * n)) & 1u ? 0x0000ffffu : 0u) | ((live >> (2 * n + 1)) & 1u ? 0xffff0000u : 0u);
}

// ex2.approx: one MUFU op; exp2(-inf) = +0, which the online softmax relies on.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
// Reductions over the 4 lanes of a quad: in an mma accumulator, the lanes holding one row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- PTX wrappers.
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

// 16-byte global -> shared copy that bypasses L1; `valid` false writes 16 zero bytes and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// A CTA's Q tile by cp.async (the caller commits the group): 16-byte chunk c < `chunks` of tile row `row` (packed row
// work.row_begin + row) to the shared-memory address dst(row, c); rows past the end and columns past D are zero.
template <int kRows, int kChunks, int kThreads, typename T, typename Dst>
__device__ __forceinline__ void load_query_tile(const KernelArgs<T>& a, const CtaWork& work, int chunks, Dst dst) {
  for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
    const int row = idx / kChunks, c = idx % kChunks;
    if (c >= chunks) continue;
    const int64_t r = work.row_begin + row;
    const bool valid = r < work.row_end && c * 8 < a.head_dim;
    const T* src = a.q;
    if (valid) {
      const RowRef ref = row_ref(a, work.cta.batch, work.cta.kv_head, r);
      src = q_row(a, work.cta.batch, ref.head, ref.query, work.seq.q_start) + c * 8;
    }
    cp_async_16(dst(row, c), src, valid);
  }
}

// Four 8x8 b16 matrices; lanes 8m..8m+7 give the row addresses of matrix m. Lane l receives, of each
// matrix, row l/4 and columns 2(l%4), 2(l%4)+1 (transposed: rows 2(l%4), 2(l%4)+1 of column l/4).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A B + D for A 16x16 (row-major fragments a0..a3), B 16x8 (b0, b1), fp32 accumulators: lane l holds
// rows l/4 and l/4 + 8, columns 2(l%4) and 2(l%4)+1 of D in d[0..1] and d[2..3].
template <typename T>
struct Mma;

template <>
struct Mma<Float16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // Two floats as one register, `lo` in the low half (the lower column index).
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
  }
};

template <>
struct Mma<BFloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    uint32_t bits;
    memcpy(&bits, &h, sizeof bits);
    return bits;
  }
};

// ---- Online softmax over one row's slice held by a quad of lanes (the mma accumulator layout).
// `x` holds the row's scores of this step (natural-log units, -inf where hidden) and becomes the
// probabilities; returns the factor by which the row's earlier output and sum must be scaled.
// A row that has seen no visible key yet keeps m = -inf and subtracts 0 instead, so exp gives exact zeros.
template <int kCount>
__device__ __forceinline__ float online_softmax_step(float (&x)[kCount], float& m, float& l) {
  float step_max = kNegInf;
#pragma unroll
  for (int e = 0; e < kCount; ++e) step_max = fmaxf(step_max, x[e]);
  const float m_new = fmaxf(m, quad_max(step_max));
  const float shift = (m_new == kNegInf ? 0.0f : m_new) * kLog2e;
  const float alpha = fast_exp2(m * kLog2e - shift);
  m = m_new;
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < kCount; ++e) {
    x[e] = fast_exp2(x[e] * kLog2e - shift);
    sum += x[e];
  }
  l = l * alpha + sum;  // per-lane partial sum; reduced over the quad once, at the end
  return alpha;
}

// Online softmax step in log2 units for the prefill tiles (mma.sync and wgmma kernels): `x` holds this step's scores of one row slice (a
// quad of lanes), raw (kRaw: Q.K, to be scaled by `scale_log2` > 0) or already in log2 units, -inf where
// hidden; it becomes the probabilities. `m` (in the same units as x) and the per-lane sum `l` are updated;
// returns the factor for the row's earlier output. A row with no visible key yet keeps m = -inf and exact
// zeros.
template <bool kRaw, int kCount>
__device__ __forceinline__ float prefill_softmax_step(float (&x)[kCount], float& m, float& l, float scale_log2) {
  static_assert(kCount % 4 == 0, "four partial reductions");
  // Four interleaved partial reductions (dependency depth kCount / 4 + 2, not kCount) in four registers:
  // with two warps per scheduler the loop is latency-bound between the mmas, and a full tree spills.
  float part[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) part[c] = x[c];
#pragma unroll
  for (int e = 4; e < kCount; ++e) part[e % 4] = fmaxf(part[e % 4], x[e]);
  const float m_new = fmaxf(m, quad_max(fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3]))));
  const float unit = kRaw ? scale_log2 : 1.0f;
  const float shift = m_new == kNegInf ? 0.0f : m_new * unit;
  const float alpha = fast_exp2(fmaf(m, unit, -shift));
  m = m_new;
#pragma unroll
  for (int c = 0; c < 4; ++c) part[c] = 0.0f;
#pragma unroll
  for (int e = 0; e < kCount; ++e) {
    x[e] = fast_exp2(fmaf(x[e], unit, -shift));
    part[e % 4] += x[e];
  }
  l = l * alpha + ((part[0] + part[1]) + (part[2] + part[3]));  // per-lane partial sum; quad-reduced at the end
  return alpha;
}

// ---- Programmatic dependent launch (sm_90; LaunchPlan::pdl, cuda_plan.cc rule 8). A kernel launched as a
// programmatic dependent may start before its predecessor in the stream has finished: it must call
// wait_for_prerequisite_grids() before reading anything the predecessor writes (here: first thing). For a
// kernel launched normally the wait returns at once. allow_dependent_grids() lets the next kernel launch early
// (it then waits in turn). Compiled to nothing before sm_90, where the plan never asks for it.
__device__ __forceinline__ void wait_for_prerequisite_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void allow_dependent_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Launches kernel<<<grid, threads, smem, stream>>>(args), as a programmatic dependent when `pdl`.
template <typename Args>
cudaError_t launch_maybe_dependent(void (*kernel)(Args), unsigned grid, unsigned threads, size_t smem,
                                   cudaStream_t stream, bool pdl, const Args& args) {
  if (!pdl) {
    kernel<<<grid, threads, smem, stream>>>(args);
    return cudaGetLastError();
  }
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args);
}

// ---- Launchers, one per kernel family, instantiated in their own translation units.
template <typename T>
void launch_prefill_mma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream);
template <typename T>
void launch_prefill_wgmma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream);
template <typename T>
void launch_decode_mma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream);
template <typename T>
void launch_simt(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream);
template <typename T>
void launch_combine(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream);

// The ragged schedule (run_ragged): one warp per sequence lists its row tiles for the launch of its class.
struct ScheduleArgs {
  const int64_t* q_starts;
  const int64_t* q_lengths;
  const int64_t* kv_lengths;  // negative: the sequence is skipped, so it gets no items
  int64_t batch, tokens, q_len, group, decode_max_queries;
  int* totals;                // [2]: item counts (decode, prefill)
  int2* items[2];             // {sequence, row tile}
  int64_t work_tiles[2];      // capacity of each list (0: that launch does not run)
  int rows_per_cta[2];
};
void launch_schedule(const ScheduleArgs& args, int64_t grid, cudaStream_t stream);

// Raises kKernel's dynamic shared-memory limit when it needs more than the default 48 KiB. The attribute
// persists per device, so it is set only when a launch needs more than before: later launches make no
// such call, which also keeps them capturable into CUDA graphs.
template <auto kKernel>
void allow_smem(size_t bytes) {
  if (bytes <= 48 * 1024) return;
  constexpr int kMaxDevices = 64;
  static std::atomic<size_t> granted[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) device = -1;
  if (device >= 0 && granted[device].load(std::memory_order_relaxed) >= bytes) return;
  if (cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)) == cudaSuccess &&
      device >= 0) {
    size_t seen = granted[device].load(std::memory_order_relaxed);
    while (seen < bytes && !granted[device].compare_exchange_weak(seen, bytes)) {
    }
  }
}

}  // namespace onnxattn::sdpa::cuda
