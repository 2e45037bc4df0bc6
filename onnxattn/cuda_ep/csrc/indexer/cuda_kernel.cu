// LightningIndexer on CUDA: a score kernel writes whole float32 score rows to scratch, for tiles of kQueryTile
// queries x kKeyTile keys: on tensor cores for 16-bit inputs (score_mma_kernel), else on CUDA cores (score_kernel,
// one thread per key, summed over the heads in registers); a select kernel (one block per row) finds each row's
// top-k by a radix select on the scores' order-preserving bits and writes the picks in ascending position order
// with three block scans (candidates, ties, output slots). Rows go in waves of query tiles (cuda_plan.h).
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "common/cuda_errors.h"
#include "common/errors.h"
#include "common/half.h"
#include "indexer/cuda_kernel.h"
#include "sdpa/cuda_device.cuh"  // allow_smem

namespace onnxattn::indexer::cuda {
namespace {

namespace sc = onnxattn::sdpa::cuda;

constexpr int kSelectWarps = kSelectThreads / 32;
static_assert(kKeyTile == 128, "the score kernel runs one thread per key of its tile");
static_assert(kKeyTile == kMmaWarps * 32, "the tensor-core score kernel's warps take 32 keys each");

// The key position of row b's first query; a past_lengths entry outside [0, T - S] is clamped into it.
__device__ __forceinline__ int64_t first_position(const int64_t* past_lengths, int64_t b, int64_t seq, int64_t total) {
  const int64_t last = total - seq;
  if (past_lengths == nullptr) return last;
  const int64_t length = past_lengths[b];
  return length < 0 ? 0 : (length > last ? last : length);
}

// A score block's tiles: blockIdx.y the wave's query tile (sequence b, queries i0 .. i0 + count - 1 at positions
// first + i), blockIdx.x the key tile (keys k0 .. k0 + kKeyTile - 1).
struct ScoreTile {
  int64_t b, i0, first, k0;
  int count;
  __device__ __forceinline__ bool any_visible() const { return k0 <= first + i0 + count - 1; }  // else: all future
};

__device__ __forceinline__ ScoreTile score_tile(const int64_t* past_lengths, int64_t seq, int64_t total,
                                                int64_t tiles_per_row, int64_t first_tile) {
  const int64_t tile = first_tile + blockIdx.y;
  ScoreTile t;
  t.b = tile / tiles_per_row;
  t.i0 = (tile % tiles_per_row) * kQueryTile;
  t.count = int(seq - t.i0 < kQueryTile ? seq - t.i0 : kQueryTile);
  t.first = first_position(past_lengths, t.b, seq, total);
  t.k0 = int64_t(blockIdx.x) * kKeyTile;
  return t;
}

// ReLU as the contract (and the CPU kernel's std::max(x, 0.0f)) has it: NaN stays NaN, so a key whose product is
// NaN scores NaN and is never picked; fmaxf would turn it into 0, a finite score.
__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }

// One thread per key: its key row (zero-padded to kWidth channels) stays in registers for every query and head of
// the tile, while each query's heads, scaled, sit in shared memory and are read as float4 broadcasts (the same
// address for the whole warp), so an FMA costs a quarter of a shared load. Scores of keys in a query's future are
// not written.
template <typename T, int kWidth>
__global__ void __launch_bounds__(kKeyTile)
    score_kernel(const T* __restrict__ query, const T* __restrict__ key, const float* __restrict__ weights,
                 const int64_t* __restrict__ past_lengths, int64_t seq, int64_t total, int heads, int head_dim,
                 float scale, int64_t tiles_per_row, int64_t first_tile, int64_t first_row,
                 float* __restrict__ scores) {
  extern __shared__ float4 smem[];
  float* const q = reinterpret_cast<float*>(smem);  // one query's heads [H][kWidth], scaled
  float* const w = q + heads * kWidth;              // its head weights [H]
  const ScoreTile tile = score_tile(past_lengths, seq, total, tiles_per_row, first_tile);
  if (!tile.any_visible()) return;
  const int64_t b = tile.b, i0 = tile.i0, first = tile.first, k0 = tile.k0;
  const int count = tile.count;
  const int64_t t = k0 + threadIdx.x;
  float k_row[kWidth];
#pragma unroll
  for (int d = 0; d < kWidth; ++d) {
    k_row[d] = t < total && d < head_dim ? to_float(key[(b * total + t) * head_dim + d]) : 0.0f;
  }
  const int64_t row0 = b * seq + i0;
  for (int j = 0; j < count; ++j) {
    const int64_t position = first + i0 + j;
    if (k0 > position) continue;  // uniform over the block
    __syncthreads();  // the previous query's heads are consumed
    for (int idx = threadIdx.x; idx < heads * kWidth; idx += kKeyTile) {
      const int h = idx / kWidth, d = idx - h * kWidth;
      q[idx] = d < head_dim ? to_float(query[((row0 + j) * heads + h) * head_dim + d]) * scale : 0.0f;
    }
    for (int h = threadIdx.x; h < heads; h += kKeyTile) w[h] = weights[(row0 + j) * heads + h];
    __syncthreads();
    if (t > position || t >= total) continue;
    float score = 0.0f;
    for (int h = 0; h < heads; ++h) {
      const float4* q_head = reinterpret_cast<const float4*>(q + h * kWidth);
      float4 dot = make_float4(0.0f, 0.0f, 0.0f, 0.0f);  // four chains, so the FMAs overlap
#pragma unroll
      for (int d = 0; d < kWidth / 4; ++d) {
        const float4 x = q_head[d];
        dot.x = fmaf(x.x, k_row[4 * d], dot.x);
        dot.y = fmaf(x.y, k_row[4 * d + 1], dot.y);
        dot.z = fmaf(x.z, k_row[4 * d + 2], dot.z);
        dot.w = fmaf(x.w, k_row[4 * d + 3], dot.w);
      }
      score += w[h] * relu((dot.x + dot.y) + (dot.z + dot.w));
    }
    scores[(row0 + j - first_row) * total + t] = score;
  }
}

// Tensor cores (16-bit inputs): per query, the key tile times the query's heads on mma.sync m16n8k16 with the keys
// as rows (a warp's 32 keys are two m16 blocks whose A fragments stay in registers for every query of the tile) and
// the heads as columns (n8 blocks read from shared memory by ldmatrix), float32 accumulators. Each accumulator goes
// through ReLU(scale x) times its head's weight into the lane's per-key sums; the four lanes of a quad hold one key
// row's columns, so a quad sum gives the key's score. The next query's heads load while this one's multiply. Rows
// and channels past H and D are zero (zero weight), keys past T zero and never written, like keys in a query's
// future.
template <typename T, int kWidth>
__global__ void __launch_bounds__(kMmaWarps * 32)
    score_mma_kernel(const T* __restrict__ query, const T* __restrict__ key, const float* __restrict__ weights,
                     const int64_t* __restrict__ past_lengths, int64_t seq, int64_t total, int heads, int mma_heads,
                     int head_dim, float scale, int64_t tiles_per_row, int64_t first_tile, int64_t first_row,
                     float* __restrict__ scores) {
  constexpr int kStride = kWidth + int(kMmaPad);  // elements per shared row
  constexpr int kChunks = kWidth / 8;             // 16-byte chunks per row
  constexpr int kSteps = kWidth / 16;             // k16 steps per product
  constexpr int kThreads = kMmaWarps * 32;
  extern __shared__ float4 smem[];  // as score_kernel's: one declaration of the dynamic shared memory per unit
  uint16_t* const k_s = reinterpret_cast<uint16_t*>(smem);                         // [kKeyTile][kStride]
  uint16_t* const q_s = k_s + kKeyTile * kStride;                                  // [2][mma_heads][kStride]
  float* const w_s = reinterpret_cast<float*>(q_s + 2 * mma_heads * kStride);      // [2][mma_heads]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);
  const ScoreTile tile = score_tile(past_lengths, seq, total, tiles_per_row, first_tile);
  if (!tile.any_visible()) return;
  const int64_t b = tile.b, i0 = tile.i0, first = tile.first, k0 = tile.k0;
  const int count = tile.count;
  // positions grow with j: the queries before j_begin see none of the tile
  const int j_begin = k0 > first + i0 ? int(k0 - first - i0) : 0;
  const int d_chunks = head_dim / 8;  // D % 8 == 0 (the plan)
  const int64_t row0 = b * seq + i0;

  for (int idx = tid; idx < kKeyTile * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = k0 + r < total && c < d_chunks;
    const T* const src = valid ? key + (b * total + k0 + r) * head_dim + c * 8 : key;
    sc::cp_async_16(sc::smem_u32(k_s + r * kStride + c * 8), src, valid);
  }
  sc::cp_async_commit();  // group: the key tile
  auto load_query = [&](int j, int buf) {
    uint16_t* const dst = q_s + buf * mma_heads * kStride;
    const T* const src = query + (row0 + j) * int64_t(heads) * head_dim;
    for (int idx = tid; idx < mma_heads * kChunks; idx += kThreads) {
      const int h = idx / kChunks, c = idx % kChunks;
      const bool valid = h < heads && c < d_chunks;
      sc::cp_async_16(sc::smem_u32(dst + h * kStride + c * 8), valid ? src + h * head_dim + c * 8 : src, valid);
    }
    float* const w_dst = w_s + buf * mma_heads;
    for (int h = tid; h < mma_heads; h += kThreads) w_dst[h] = h < heads ? weights[(row0 + j) * heads + h] : 0.0f;
  };
  load_query(j_begin, 0);
  sc::cp_async_commit();  // group: the first query
  sc::cp_async_wait<1>();  // the key tile has landed (this thread's part)
  __syncthreads();
  uint32_t ka[2][kSteps][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) {
      sc::ldmatrix_x4(ka[mt][ks],
                      sc::smem_u32(k_s + (warp * 32 + mt * 16 + lane % 16) * kStride + ks * 16 + (lane / 16) * 8));
    }
  }

  const int head_blocks = mma_heads / 16;
  for (int j = j_begin; j < count; ++j) {
    const int buf = (j - j_begin) & 1;
    if (j + 1 < count) load_query(j + 1, buf ^ 1);
    sc::cp_async_commit();  // empty past the last query: the group count stays uniform
    sc::cp_async_wait<1>();  // query j has landed (this thread's part) ...
    __syncthreads();         // ... every thread's, and its weights
    const uint16_t* const heads_s = q_s + buf * mma_heads * kStride;
    const float* const w = w_s + buf * mma_heads;
    float part[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [m16 block][row half]: this lane's columns' sum
    for (int hb = 0; hb < head_blocks; ++hb) {
      float acc[2][2][4];  // [m16 block][n8 block][fragment]
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int n = 0; n < 2; ++n) acc[mt][n][0] = acc[mt][n][1] = acc[mt][n][2] = acc[mt][n][3] = 0.0f;
      const uint32_t q_addr =
          sc::smem_u32(heads_s + (hb * 16 + lane % 8 + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8);
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        uint32_t qb[4];
        sc::ldmatrix_x4(qb, q_addr + ks * 32);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          sc::Mma<T>::run(acc[mt][0], ka[mt][ks], qb[0], qb[1]);
          sc::Mma<T>::run(acc[mt][1], ka[mt][ks], qb[2], qb[3]);
        }
      }
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        const float2 wn = *reinterpret_cast<const float2*>(w + hb * 16 + n * 8 + quad_col);
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          part[mt][0] += wn.x * relu(acc[mt][n][0] * scale) + wn.y * relu(acc[mt][n][1] * scale);
          part[mt][1] += wn.x * relu(acc[mt][n][2] * scale) + wn.y * relu(acc[mt][n][3] * scale);
        }
      }
    }
    const int64_t position = first + i0 + j;
    float* const out = scores + (row0 + j - first_row) * total;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float score = sc::quad_sum(part[mt][half]);
        const int64_t t = k0 + warp * 32 + mt * 16 + half * 8 + quad_row;
        if (lane % 4 == 0 && t <= position && t < total) out[t] = score;
      }
    }
    __syncthreads();  // every warp is done with buffer `buf` before the next iteration refills it
  }
}

// Order-preserving bits of a score (a larger key is a larger score), 0 for scores never picked (-inf, NaN);
// -0 counts as +0, as float comparison has it.
__device__ __forceinline__ uint32_t order_key(float x) {
  if (!(x > -INFINITY)) return 0u;
  uint32_t bits = __float_as_uint(x);
  if ((bits << 1) == 0u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// The block's exclusive prefix sum of `value`, and in `total` the sum. `scan`: kSelectWarps + 1 shared ints.
__device__ int block_exclusive_scan(int value, int* scan, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // a previous scan's readers are done with `scan`
  int inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) scan[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int sum = lane < kSelectWarps ? scan[lane] : 0;
    int running = sum;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int other = __shfl_up_sync(0xffffffffu, running, offset);
      if (lane >= offset) running += other;
    }
    if (lane < kSelectWarps) scan[lane] = running - sum;
    if (lane == kSelectWarps - 1) scan[kSelectWarps] = running;
  }
  __syncthreads();
  *total = scan[kSelectWarps];
  return scan[warp] + inclusive - value;
}

// Warp 0 finds the bin holding the rank-th largest of the keys counted in `histogram` (bin 255 first): each lane
// sums 8 bins, a warp scan orders the lanes' sums, and the lane whose range holds the rank walks its own 8 bins,
// instead of one thread walking up to 256 dependent shared reads. Sets `chosen_prefix` (prefix | bin << shift) and
// `chosen_rank` (the rank among that bin's keys) when rank <= the histogram's total, and `counted` to the total.
__device__ void find_bin(const unsigned* histogram, int64_t rank, uint32_t prefix, int shift, uint32_t* chosen_prefix,
                         int64_t* chosen_rank, int64_t* counted) {
  const int lane = threadIdx.x & 31;
  unsigned counts[8];
  int64_t mine = 0;
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    counts[q] = histogram[255 - 8 * lane - q];
    mine += counts[q];
  }
  int64_t inclusive = mine;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int64_t other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  int64_t above = inclusive - mine;  // keys in the bins above this lane's
  if (above < rank && rank <= inclusive) {
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      if (above + counts[q] >= rank) {
        *chosen_prefix = prefix | (uint32_t(255 - 8 * lane - q) << shift);
        *chosen_rank = rank - above;
        break;
      }
      above += counts[q];
    }
  }
  if (lane == 31) *counted = inclusive;
}

__global__ void __launch_bounds__(kSelectThreads, 1)
    select_kernel(const float* __restrict__ scores, const int64_t* __restrict__ past_lengths, int64_t seq,
                  int64_t total, int64_t top_k, int64_t first_row, int64_t* __restrict__ key_indices) {
  __shared__ unsigned histogram[256];
  __shared__ int scan[kSelectWarps + 1];
  __shared__ uint32_t chosen_prefix;
  __shared__ int64_t chosen_rank, counted;
  const int64_t row = first_row + blockIdx.x;
  const int64_t b = row / seq, i = row - b * seq;
  const int64_t visible = first_position(past_lengths, b, seq, total) + i + 1;
  const float* s = scores + int64_t(blockIdx.x) * total;
  int64_t* const out = key_indices + row * top_k;
  const int tid = threadIdx.x, lane = tid & 31;

  // picks: every key above `threshold`, then the first `ties` keys equal to it (lower positions win ties). A radix
  // select finds the top_k-th largest key, 8 bits a pass; the first pass's histogram also counts the candidates
  // (keys that may be picked): with top_k or fewer of them, every one is picked.
  uint32_t threshold = 0u;
  int64_t ties = 0;
  uint32_t prefix = 0u, mask = 0u;
  int64_t rank = top_k;  // the wanted key's rank among the keys matching prefix
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int x = tid; x < 256; x += kSelectThreads) histogram[x] = 0u;
    __syncthreads();
    // scores cluster in a few bins (the first pass sees sign and exponent): one atomic per bin and warp, not one
    // per lane, or the lanes of a warp serialise on the same shared word. Whole warps step together (t0 is the
    // warp's first position), so every lane takes part in the match.
    for (int64_t t0 = tid - lane; t0 < visible; t0 += kSelectThreads) {
      const uint32_t k = t0 + lane < visible ? order_key(s[t0 + lane]) : 0u;
      const uint32_t bin = k != 0u && (k & mask) == prefix ? (k >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin < 256u && lane == __ffs(peers) - 1) atomicAdd(&histogram[bin], unsigned(__popc(peers)));
    }
    __syncthreads();
    if (tid < 32) find_bin(histogram, rank, prefix, shift, &chosen_prefix, &chosen_rank, &counted);
    __syncthreads();
    if (shift == 24 && counted <= top_k) break;  // every candidate is picked: threshold 0, no ties
    prefix = chosen_prefix;
    rank = chosen_rank;
    mask |= 255u << shift;
    if (shift == 0) {
      threshold = prefix;
      ties = rank;
    }
  }
  // each thread a contiguous run of positions, so that the picks come out in ascending order
  const int64_t per_thread = (visible + kSelectThreads - 1) / kSelectThreads;
  const int64_t begin = min(visible, tid * per_thread), end = min(visible, begin + per_thread);
  int above = 0, equal = 0;
  for (int64_t t = begin; t < end; ++t) {
    const uint32_t k = order_key(s[t]);
    above += k > threshold;
    equal += k == threshold;
  }
  int equal_total = 0;
  const int equal_before = block_exclusive_scan(equal, scan, &equal_total);
  int64_t take_equal = ties - equal_before;
  take_equal = take_equal < 0 ? 0 : (take_equal > equal ? equal : take_equal);
  int written = 0;
  int64_t slot = block_exclusive_scan(above + int(take_equal), scan, &written);
  for (int64_t t = begin; t < end; ++t) {
    const uint32_t k = order_key(s[t]);
    if (k > threshold || (k == threshold && take_equal > 0)) {
      if (k == threshold) --take_equal;
      out[slot++] = t;
    }
  }
  for (int64_t x = written + tid; x < top_k; x += kSelectThreads) out[x] = -1;
}

void check_cuda(cudaError_t status, const char* what) { onnxattn::check_cuda(status, kOpName, what); }

}  // namespace

namespace {

template <typename T, int kWidth>
void launch_score(const Params& p, const Tensors<T>& t, const Plan& plan, int64_t tile, int64_t tiles, int64_t row0,
                  float* scores, cudaStream_t stream) {
  const dim3 grid(unsigned(plan.key_tiles), unsigned(tiles));
  if constexpr (!std::is_same_v<T, float>) {
    if (plan.score_kernel == ScoreKernel::kTensorCores) {
      sc::allow_smem<score_mma_kernel<T, kWidth>>(plan.score_smem);
      score_mma_kernel<T, kWidth><<<grid, kMmaWarps * 32, plan.score_smem, stream>>>(
          t.query, t.key, t.weights, t.past_lengths, p.seq, p.total, int(p.heads), int(plan.mma_heads),
          int(p.head_dim), p.scale, plan.tiles_per_row, tile, row0, scores);
      return;
    }
  }
  if (plan.score_kernel != ScoreKernel::kCudaCores) {
    throw std::runtime_error(str_cat(kOpName, ": the tensor-core score kernel takes float16 or bfloat16 inputs"));
  }
  sc::allow_smem<score_kernel<T, kWidth>>(plan.score_smem);
  score_kernel<T, kWidth><<<grid, kKeyTile, plan.score_smem, stream>>>(
      t.query, t.key, t.weights, t.past_lengths, p.seq, p.total, int(p.heads), int(p.head_dim), p.scale,
      plan.tiles_per_row, tile, row0, scores);
}

}  // namespace

template <typename T>
void run(const Params& p, const Tensors<T>& t, const Plan& plan, void* stream_ptr, void* scratch,
         size_t scratch_bytes) {
  if (p.rows() == 0 || p.top_k == 0) return;
  if (scratch == nullptr || scratch_bytes < plan.scratch_bytes) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA plan needs ", plan.scratch_bytes, " bytes of scratch, got ",
                                     scratch_bytes));
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  float* const scores = static_cast<float*>(scratch);
  for (int64_t tile = 0; tile < plan.tiles; tile += plan.tiles_per_wave) {
    const int64_t end = tile + plan.tiles_per_wave < plan.tiles ? tile + plan.tiles_per_wave : plan.tiles;
    const int64_t row0 = tile_row(p, plan, tile), row1 = tile_row(p, plan, end);
    switch (plan.width) {
      case 32: launch_score<T, 32>(p, t, plan, tile, end - tile, row0, scores, stream); break;
      case 64: launch_score<T, 64>(p, t, plan, tile, end - tile, row0, scores, stream); break;
      default: launch_score<T, 128>(p, t, plan, tile, end - tile, row0, scores, stream); break;
    }
    check_cuda(cudaGetLastError(), "launching the score kernel");
    select_kernel<<<unsigned(row1 - row0), kSelectThreads, 0, stream>>>(scores, t.past_lengths, p.seq, p.total,
                                                                         p.top_k, row0, t.key_indices);
    check_cuda(cudaGetLastError(), "launching the select kernel");
  }
}

template void run<float>(const Params&, const Tensors<float>&, const Plan&, void*, void*, size_t);
template void run<Float16>(const Params&, const Tensors<Float16>&, const Plan&, void*, void*, size_t);
template void run<BFloat16>(const Params&, const Tensors<BFloat16>&, const Plan&, void*, void*, size_t);

}  // namespace onnxattn::indexer::cuda
