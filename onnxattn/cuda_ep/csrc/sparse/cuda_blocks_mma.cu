// The sparse ops' attention by block on tensor cores (see cuda_blocks_mma.cuh).
#include "sparse/cuda_blocks_mma.cuh"

#include <algorithm>
#include <stdexcept>

#include "sdpa/cuda_device.cuh"  // allow_smem
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_mma_tiles.cuh"

namespace onnxattn::sparse::cuda {
namespace {

using namespace mma_tiles;  // NOLINT: the tile pieces this kernel is made of
static_assert(kMmaRows == 16 * kWarpsPerBlock, "a warp per 16 rows");

// Slot `slot`'s chunk blockIdx.x (past the slot's chunks: nothing). kMaxDv >= Dv bounds the output registers.
template <typename TIn, typename TMma, int kMaxDv>
__global__ void __launch_bounds__(kThreads) blocks_mma_kernel(const RoutedBlocksArgs a, int64_t slot) {
  extern __shared__ __align__(16) unsigned char blocks_smem[];
  const int64_t keys_per_slot = a.batch * a.list_heads * a.num_segments, k0 = slot * keys_per_slot;
  const int64_t chunk = int64_t(a.chunk_offsets[k0]) + blockIdx.x;
  if (chunk >= a.chunk_offsets[k0 + keys_per_slot]) return;
  int64_t lo = k0, hi = k0 + keys_per_slot;  // chunk_offsets[lo] <= chunk < chunk_offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a.chunk_offsets[mid] <= chunk) lo = mid; else hi = mid;
  }
  const int64_t key = lo;
  const int32_t e0 = a.offsets[key] + int32_t(chunk - a.chunk_offsets[key]) * a.lists_per_chunk;
  const int lists = min(a.lists_per_chunk, a.offsets[key + 1] - e0);
  const int per_list = int(a.heads_per_list), rows = lists * per_list;
  const int64_t list_key = key - k0, bh = list_key / a.num_segments, block = list_key % a.num_segments;
  const int64_t list_head = bh % a.list_heads, b = bh / a.list_heads;
  const int64_t kv_head = list_head * a.heads_per_list / (a.q_heads / a.kv_heads);
  const int64_t j_begin = block * a.segment_size, j_end = min(j_begin + a.segment_size, a.kv_len);
  const int dim = a.dim, v_dim = a.v_dim;
  const int q_stride = mma_row_stride(dim), v_stride = mma_row_stride(v_dim);

  uint16_t* const qs = reinterpret_cast<uint16_t*>(blocks_smem);
  uint16_t* const ks = qs + kMmaRows * q_stride;
  uint16_t* const vs = ks + kMmaKeys * q_stride;
  int64_t* const row_of = reinterpret_cast<int64_t*>(vs + kMmaKeys * v_stride);  // output row, -1: none
  int64_t* const pos_of = row_of + kMmaRows;                                     // query position

  for (int r = threadIdx.x; r < kMmaRows; r += kThreads) {
    int64_t row = -1, pos = -1;
    if (r < rows) {
      const int64_t list = a.entries[e0 + r / per_list], i = list % a.q_len;
      const int64_t head = list_head * a.heads_per_list + r % per_list;
      row = (b * a.q_heads + head) * a.q_len + i;
      pos = i + a.kv_len - a.q_len;  // bottom-right aligned
    }
    row_of[r] = row, pos_of[r] = pos;
  }
  __syncthreads();
  stage_rows<TMma>(qs, q_stride, static_cast<const TIn*>(a.q), dim, [&](int r) { return row_of[r]; });

  const int64_t head_rows = (b * a.kv_heads + kv_head) * a.kv_len;
  const TIn* const k_head = static_cast<const TIn*>(a.k) + head_rows * dim;
  const TIn* const v_head = static_cast<const TIn*>(a.v) + head_rows * v_dim;
  // Causal: keys past every row's position are hidden from all of them, so their tiles are never staged.
  int64_t tiles_end = j_end;
  if (a.causal) {
    int64_t last = -1;
    for (int r = 0; r < rows; ++r) last = max(last, pos_of[r]);
    tiles_end = min(j_end, last + 1);
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bool warp_live = 16 * warp < rows;
  const int r_lo = 16 * warp + g, r_hi = r_lo + 8;
  const bool live_lo = r_lo < rows, live_hi = r_hi < rows;
  const int64_t pos_lo = pos_of[r_lo], pos_hi = pos_of[r_hi];
  const float scale_log2 = a.scale * sdpa::cuda::kLog2e;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};  // rows r_lo, r_hi
  float o[kMaxDv / 8][4];
#pragma unroll
  for (int n = 0; n < kMaxDv / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  for (int64_t t0 = j_begin; t0 < tiles_end; t0 += kMmaKeys) {
    const int64_t tile_keys = min(int64_t(kMmaKeys), j_end - t0);
    __syncthreads();  // the previous tile is done with
    stage_rows<TMma>(ks, q_stride, k_head + t0 * dim, dim, [&](int r) { return r < tile_keys ? int64_t(r) : -1; });
    stage_rows<TMma>(vs, v_stride, v_head + t0 * v_dim, v_dim,
                     [&](int r) { return r < tile_keys ? int64_t(r) : -1; });
    __syncthreads();
    if (!warp_live) continue;

    float s[kKeyTiles][4];
    zero(s);
    add_scores<TMma>(s, qs, ks, q_stride, dim, r_lo, lane);
    // Hidden: keys past the block's end, and under causal keys past the row's position; rows past the chunk's.
    hide(s, lane, [&](int col, int half) {
      const int64_t j = t0 + col;
      return !(half == 0 ? live_lo : live_hi) || j >= j_end || (a.causal && j > (half == 0 ? pos_lo : pos_hi));
    });
    softmax_step<kMaxDv>(s, o, m, l, scale_log2);
    add_pv<TMma, kMaxDv>(o, s, vs, v_stride, v_dim, lane);
  }
  if (!warp_live) return;  // no barrier below
  const float m_lo = m[0], m_hi = m[1], l_lo = sdpa::cuda::quad_sum(l[0]), l_hi = sdpa::cuda::quad_sum(l[1]);
  // Merge each row's partial over this block into its running state (the only CTA touching it in this slot); the
  // quad's four lanes read the state before its first lane writes it.
  const bool merge_lo = live_lo && !(m_lo == kNegInf && l_lo == 0.0f);
  const bool merge_hi = live_hi && !(m_hi == kNegInf && l_hi == 0.0f);
  const int64_t row_lo = merge_lo ? row_of[r_lo] : 0, row_hi = merge_hi ? row_of[r_hi] : 0;
  const float max_lo = merge_lo ? a.row_max[row_lo] : 0.0f, max_hi = merge_hi ? a.row_max[row_hi] : 0.0f;
  const float sum_lo = merge_lo ? a.row_sum[row_lo] : 0.0f, sum_hi = merge_hi ? a.row_sum[row_hi] : 0.0f;
  __syncwarp();
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!(half == 0 ? merge_lo : merge_hi)) continue;
    const int64_t row = half == 0 ? row_lo : row_hi;
    const float m_row = half == 0 ? max_lo : max_hi, s_row = half == 0 ? sum_lo : sum_hi;
    // The running state is in log2 units of the scaled score (the normalisation only needs the sum).
    const float m_part = (half == 0 ? m_lo : m_hi) * scale_log2, l_part = half == 0 ? l_lo : l_hi;
    const float m_new = fmaxf(m_row, m_part), m_use = m_new == kNegInf ? 0.0f : m_new;
    const float keep = exp2f(m_row - m_use), add = exp2f(m_part - m_use);
    float* const out = a.out + row * v_dim + 2 * t;
#pragma unroll
    for (int n = 0; n < kMaxDv / 8; ++n) {
      if (8 * n >= v_dim) break;
      float2 value = *reinterpret_cast<float2*>(out + 8 * n);
      value.x = value.x * keep + o[n][2 * half] * add;
      value.y = value.y * keep + o[n][2 * half + 1] * add;
      *reinterpret_cast<float2*>(out + 8 * n) = value;
    }
    if (t == 0) a.row_sum[row] = s_row * keep + l_part * add, a.row_max[row] = m_new;
  }
}

template <typename TIn, typename TMma, int kMaxDv>
void launch_slots(const RoutedBlocksArgs& a, cudaStream_t stream) {
  const size_t smem = blocks_mma_smem_bytes(a.dim, a.v_dim);
  sdpa::cuda::allow_smem<blocks_mma_kernel<TIn, TMma, kMaxDv>>(smem);
  // A list is in at most one key of a slot: at most lists / chunk + (one partial chunk per non-empty key) CTAs.
  const int64_t lists = block_lists(a), keys_per_slot = a.batch * a.list_heads * a.num_segments;
  const int64_t grid = (lists + a.lists_per_chunk - 1) / a.lists_per_chunk + std::min(keys_per_slot, lists);
  if (grid > int64_t(0x7fffffff)) throw std::runtime_error("sparse attention by block: too many lists");
  for (int64_t slot = 0; slot < a.top_k; ++slot) {
    blocks_mma_kernel<TIn, TMma, kMaxDv><<<unsigned(grid), kThreads, smem, stream>>>(a, slot);
  }
  check_launch("sparse tensor-core block kernel");
}

}  // namespace

template <typename TIn, typename TMma>
void run_blocks_mma(RoutedBlocksArgs a, void* scratch, cudaStream_t stream) {
  a.lists_per_chunk = blocks_mma_lists_per_chunk(a.heads_per_list);
  if (a.lists_per_chunk < 1 || a.dim % 16 != 0 || a.v_dim % 16 != 0 || a.dim > kMmaMaxDim || a.v_dim > kMmaMaxDim ||
      !(a.scale > 0.0f)) {
    throw std::runtime_error("sparse attention by block: the tensor-core kernel does not take this problem");
  }
  invert_block_lists(a, scratch, stream);
  if (a.v_dim <= 64) {
    launch_slots<TIn, TMma, 64>(a, stream);
  } else if (a.v_dim <= 128) {
    launch_slots<TIn, TMma, 128>(a, stream);
  } else {
    launch_slots<TIn, TMma, 256>(a, stream);
  }
  normalize_block_rows(a, stream);
}

template void run_blocks_mma<float, Float16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<float, BFloat16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<Float16, Float16>(RoutedBlocksArgs, void*, cudaStream_t);
template void run_blocks_mma<BFloat16, BFloat16>(RoutedBlocksArgs, void*, cudaStream_t);

}  // namespace onnxattn::sparse::cuda
