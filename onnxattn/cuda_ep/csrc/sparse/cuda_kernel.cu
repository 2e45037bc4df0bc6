// NativeSparseAttention and SparseRoutedAttention on CUDA (see cuda_kernel.h for the structure). Every kernel
// accumulates in float32; 16-bit inputs are converted as they are read.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/env.h"
#include "common/errors.h"
#include "sdpa/cuda_device.cuh"  // allow_smem
#include "sparse/cuda_common.cuh"
#include "sparse/cuda_blocks_mma.cuh"
#include "sparse/cuda_kernel.h"
#include "sparse/cuda_routed.cuh"
#include "sparse/cuda_select.cuh"

namespace onnxattn::sparse::cuda {
namespace {

constexpr int kMaxValueChunks = 8;  // Dv <= 256: 8 output dims per lane
constexpr int64_t kMaxCentroids = 4096;
constexpr int64_t kMaxTop = 1024;
constexpr size_t kFineScratchBytes = size_t(64) << 20;  // fine branch: rows x Skv scores per launch

// A bump allocator over the caller's scratch; with a null base it only counts.
struct Carver {
  char* base;
  size_t used = 0;
  template <typename X>
  X* take(int64_t count) {
    const size_t at = used;
    used += (size_t(count > 0 ? count : 0) * sizeof(X) + 255) / 256 * 256;
    return base ? reinterpret_cast<X*>(base + at) : nullptr;
  }
};

// ---- centroids: per (b, KV head, c), the mean of rows [c * seg, min((c + 1) * seg, len)) of src ----

template <typename S>
__global__ void centroid_kernel(const S* src, float* out, int64_t len, int64_t count, int dim, int64_t seg,
                                bool unit) {
  __shared__ float reduce[kWarpsPerBlock];
  const int64_t c = blockIdx.x, head = blockIdx.y;
  const int64_t begin = c * seg, end = min(begin + seg, len);
  float sq = 0.0f;
  for (int d = threadIdx.x; d < dim; d += kThreads) {
    float sum = 0.0f;
    for (int64_t j = begin; j < end; ++j) sum += to_float(src[(head * len + j) * dim + d]);
    const float mean = sum / float(end - begin);
    out[(head * count + c) * dim + d] = mean;
    sq += mean * mean;
  }
  if (!unit) return;  // (uniform per block: no thread leaves a barrier behind)
  const float norm = fmaxf(sqrtf(block_reduce(sq, reduce, false)), 1e-12f);
  for (int d = threadIdx.x; d < dim; d += kThreads) out[(head * count + c) * dim + d] /= norm;
}

// ---- RoPE: src [rows of len][dim] (T) -> float, rotated at the key positions; `raw` gets the unrotated copy ----

template <typename T>
__global__ void rope_kernel(const T* src, float* dst, float* raw, int64_t rows, int64_t heads, int64_t len, int dim,
                            int rotary, bool interleaved, float base, float scaling, const int64_t* positions,
                            int64_t position_batch_stride, int64_t first_key) {
  const int64_t row = blockIdx.x;
  if (row >= rows) return;
  const int64_t b = row / (heads * len), s = row % len, key = first_key + s;
  const float position = float(positions ? positions[b * position_batch_stride + key] : key);
  const T* x = src + row * dim;
  float* y = dst + row * dim;
  const int half = rotary / 2;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const float value = to_float(x[d]);
    if (raw) raw[row * dim + d] = value;
    if (d >= rotary) {
      y[d] = value;
      continue;
    }
    // the pair (first, second) of channel d and which half of it d is
    const int pair = interleaved ? d / 2 : d % half;
    const bool first = interleaved ? d % 2 == 0 : d < half;
    const int other = interleaved ? (first ? d + 1 : d - 1) : (first ? d + half : d - half);
    // inv_freq as the CPU kernel and the function compute it (float32 steps)
    const float inv_freq = expf(-((float(2 * pair) / float(rotary)) * logf(base)));
    const float angle = position * inv_freq;
    const float c = cosf(angle) * scaling, sn = sinf(angle) * scaling;
    const float partner = to_float(x[other]);
    y[d] = first ? value * c - partner * sn : value * c + partner * sn;
  }
}

template <typename T>
__global__ void to_float_kernel(const T* src, float* dst, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = to_float(src[i]);
  }
}

// ---- NSA's lists as sequences of the attention core's paged decode path (see cuda_kernel.h) ----
//
// Sequence n = (b, selection head, i), in the lists' order, with one query and its list's heads as rows:
// Q and the branch output as [n][heads of the list][D] (a list's query heads are Sq rows apart in Q, so
// shared lists read a regrouped copy), its list as its block-table row, its pool at its KV head's rows.

struct ListLayoutArgs {
  const int32_t* lists;  // [B, Hs, Sq, top]: sorted ascending, -1 after the valid entries
  int64_t items, top, q_len, kv_heads, list_heads, group, kv_len, block_size, query_offset;
  bool shared, causal;
  int64_t *kv_lengths, *kv_starts;  // [items] each
};

// One thread per list: its pool start and its keys (list_sequence_keys, sparse/params.h).
__global__ void list_layout_kernel(const ListLayoutArgs a) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= a.items) return;
  const int64_t i = n % a.q_len, list_head = n / a.q_len % a.list_heads, b = n / (a.q_len * a.list_heads);
  const int64_t kv_head = a.shared ? list_head : list_head / a.group;
  a.kv_starts[n] = (b * a.kv_heads + kv_head) * a.kv_len;
  a.kv_lengths[n] = list_sequence_keys(a.lists + n * a.top, a.top, i + a.query_offset, a.causal, a.kv_len, a.block_size);
}

// Q [B, Hkv * G, Sq, D] -> [B, Hkv, Sq, G, D]: a warp per row, 16-byte chunks when rows allow them.
template <typename T>
__global__ void group_queries_kernel(const T* q, T* out, int64_t rows, int64_t kv_heads, int64_t group,
                                     int64_t q_len, int dim) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // destination row
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const int64_t g = row % group, i = row / group % q_len, bh = row / (group * q_len);  // bh = b * Hkv + kv head
  const T* const src = q + ((bh * group + g) * q_len + i) * dim;
  T* const dst = out + row * dim;
  if ((dim * int(sizeof(T))) % 16 == 0 && ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15u) == 0) {
    for (int c = lane; c < dim * int(sizeof(T)) / 16; c += 32) reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
  } else {
    for (int d = lane; d < dim; d += 32) dst[d] = src[d];
  }
}

// ---- attention: one warp per query row, over its listed blocks (or its structural range) ----

template <typename TK, typename TQ>
struct AttendArgs {
  const TQ* q;          // [B, Hq, Sq, D]
  const TK* k;          // [B, Hkv, Skv, D]
  const TK* v;          // [B, Hkv, Skv, Dv]
  const int32_t* lists; // [B, Hs, Sq, list_len] or null: the whole structural range
  float* out;           // [B, Hq, Sq, Dv]
  int64_t batch, q_heads, kv_heads, q_len, kv_len, block_size, list_len;
  int dim, v_dim;
  bool shared, causal;
  int64_t window;  // > 0: keys p - window < j
  float scale;
};

template <typename TK, typename TQ>
__global__ void __launch_bounds__(kThreads) attend_kernel(const AttendArgs<TK, TQ> a) {
  extern __shared__ float attend_smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + warp;  // (b * Hq + h) * Sq + i
  if (row >= a.batch * a.q_heads * a.q_len) return;  // whole warps; no block barrier below
  const int64_t i = row % a.q_len, h = row / a.q_len % a.q_heads, b = row / (a.q_len * a.q_heads);
  const int64_t group = a.q_heads / a.kv_heads, kv_head = h / group;
  const int64_t p = i + a.kv_len - a.q_len;
  const int64_t begin = a.window > 0 ? max(p - a.window + 1, int64_t(0)) : 0;
  const int64_t end = a.causal || a.window > 0 ? min(p + 1, a.kv_len) : a.kv_len;
  float* q = attend_smem + warp * a.dim;
  const TQ* q_src = a.q + row * a.dim;
  for (int d = lane; d < a.dim; d += 32) q[d] = to_float(q_src[d]) * a.scale;
  __syncwarp();
  const TK* k_head = a.k + (b * a.kv_heads + kv_head) * a.kv_len * a.dim;
  const TK* v_head = a.v + (b * a.kv_heads + kv_head) * a.kv_len * a.v_dim;
  float m = kNegInf, l = 0.0f, o[kMaxValueChunks];
  for (int x = 0; x < kMaxValueChunks; ++x) o[x] = 0.0f;
  const int32_t* list = a.lists ? a.lists + ((b * (a.shared ? a.kv_heads : a.q_heads) + (a.shared ? kv_head : h)) *
                                             a.q_len + i) * a.list_len : nullptr;
  const int64_t ranges = list ? a.list_len : 1;
  for (int64_t r = 0; r < ranges; ++r) {
    int64_t lo = begin, hi = end;
    if (list) {
      const int64_t c = list[r];
      if (c < 0) continue;
      lo = max(lo, c * a.block_size);
      hi = min(hi, (c + 1) * a.block_size);
    }
    for (int64_t j0 = lo; j0 < hi; j0 += 32) {
      const int64_t j = j0 + lane;
      float s = kNegInf;
      if (j < hi) {
        const TK* key = k_head + j * a.dim;
        s = 0.0f;
        for (int d = 0; d < a.dim; ++d) s += q[d] * to_float(key[d]);
      }
      const float m_new = fmaxf(m, warp_max(s));
      const float m_use = m_new == kNegInf ? 0.0f : m_new;
      const float prob = expf(s - m_use), alpha = expf(m - m_use);
      l = l * alpha + warp_sum(prob);
      m = m_new;
      for (int x = 0; x < kMaxValueChunks; ++x) o[x] *= alpha;
      const int keys = int(min(int64_t(32), hi - j0));
      for (int key = 0; key < keys; ++key) {
        const float w = __shfl_sync(0xffffffffu, prob, key);
        if (w == 0.0f) continue;  // a weightless key is never read (NaN in its V cannot leak)
        const TK* value = v_head + (j0 + key) * a.v_dim;
        for (int x = 0; x < kMaxValueChunks; ++x) {
          const int e = lane + 32 * x;
          if (e < a.v_dim) o[x] += w * to_float(value[e]);
        }
      }
    }
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int x = 0; x < kMaxValueChunks; ++x) {
    const int e = lane + 32 * x;
    if (e < a.v_dim) a.out[row * a.v_dim + e] = o[x] * inv;
  }
}

// ---- the gated mix: y = sum over present branches of gate * branch ----

template <typename T>
struct MixArgs {
  const float* branch[3];  // null: branch off; [B, Hq, Sq, Dv], but see grouped
  const T* gates;          // null: every gate is 1
  int64_t gate_strides[4];
  T* y;
  int64_t q_heads, q_len, rows;
  int v_dim;
  int64_t grouped;  // > 1: branch 0 is [B, Hq / grouped, Sq, grouped, Dv] (the core's shared-list layout)
};

// A warp per output row (grid-stride over rows): the row's (b, h, i), gates and branch rows once, its columns by the
// lanes (coalesced). The sum runs over the branches in order, as the CPU kernel's.
template <typename T>
__global__ void mix_kernel(const MixArgs<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; row < a.rows; row += warps) {
    const int64_t i = row % a.q_len, h = row / a.q_len % a.q_heads, b = row / (a.q_len * a.q_heads);
    const float* src[3];
    float gate[3];
#pragma unroll
    for (int g = 0; g < 3; ++g) {
      src[g] = a.branch[g];
      gate[g] = 1.0f;
      if (!src[g]) continue;
      if (a.gates) {
        gate[g] = to_float(a.gates[b * a.gate_strides[0] + h * a.gate_strides[1] + i * a.gate_strides[2] +
                                   g * a.gate_strides[3]]);
      }
      const int64_t at = g == 0 && a.grouped > 1
                             ? (b * a.q_heads + h - h % a.grouped) * a.q_len + i * a.grouped + h % a.grouped
                             : row;
      src[g] += at * a.v_dim;
    }
    T* const y_row = a.y + row * a.v_dim;
    for (int e = lane; e < a.v_dim; e += 32) {
      float y = 0.0f;
#pragma unroll
      for (int g = 0; g < 3; ++g) {
        if (src[g]) y += gate[g] * src[g][e];
      }
      y_row[e] = from_float<T>(y);
    }
  }
}

template <typename T>
void launch_mix(const MixArgs<T>& m, cudaStream_t stream, const char* what) {
  mix_kernel<T><<<grid_for(m.rows * 32), 256, 0, stream>>>(m);  // a warp per row
  check_launch(what);
}


// Scores of the fine branch's rows per launch: as many rows as fit kFineScratchBytes (at least one).
int64_t fine_rows_per_launch(const Dims& d) {
  return std::max<int64_t>(1, int64_t(kFineScratchBytes / sizeof(float)) / std::max<int64_t>(d.kv_len, 1));
}
// The branches with an output buffer: blocks, fine or compression, window.
bool branch_used(const NsaParams& p, int branch) {
  const NsaAttributes& a = p.attrs;
  return branch == 0 ? a.top_blocks > 0 : branch == 1 ? p.has_compressed || a.top_tokens > 0 : a.window > 0;
}

int64_t fine_scratch_floats(const NsaParams& p) {
  const Dims& d = p.dims;
  if (p.has_compressed || p.attrs.top_tokens == 0) return 0;
  return std::min(fine_rows_per_launch(d), d.batch * d.q_heads * d.q_len) * d.kv_len;
}

template <typename TK, typename TQ>
void launch_attend(const AttendArgs<TK, TQ>& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.q_heads * a.q_len;
  if (rows == 0) return;
  attend_kernel<TK, TQ><<<unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock), kThreads,
                          size_t(kWarpsPerBlock) * a.dim * sizeof(float), stream>>>(a);
  check_launch("sparse attention kernel");
}

}  // namespace

void check_cuda_support(const char* op, int64_t head_dim, int64_t v_head_dim, int64_t num_centroids, int64_t top) {
  if (v_head_dim > 32 * kMaxValueChunks || head_dim > 1024) {
    fail(op, ": the CUDA kernel supports head sizes D <= 1024 and Dv <= ", 32 * kMaxValueChunks, ", got D = ", head_dim,
         ", Dv = ", v_head_dim);
  }
  if (num_centroids > kMaxCentroids || top > kMaxTop) {
    fail(op, ": the CUDA kernel supports at most ", kMaxCentroids, " blocks (segments) and top-k <= ", kMaxTop,
         " (its selection lives in shared memory), got ", num_centroids, " and ", top);
  }
}

// ---- NativeSparseAttention: the plan and the launches ----
namespace {

// ONNXATTN_SPARSE_CUDA = auto | simple | fast | mma (see cuda_kernel.h); `op` names the caller in the error.
enum class SparsePath { kSimple, kFast, kMma };
SparsePath requested_path(const char* op) {
  const char* value = std::getenv("ONNXATTN_SPARSE_CUDA");
  const std::string v = value == nullptr ? "" : value;
  // auto: mma (fast where the tensor-core kernels do not take the problem: float32, odd sizes, unaligned)
  if (v.empty() || v == "auto" || v == "mma") return SparsePath::kMma;
  if (v == "fast") return SparsePath::kFast;  // 5-20x simple's speed on the H100
  if (v == "simple") return SparsePath::kSimple;
  fail(op, ": environment variable ONNXATTN_SPARSE_CUDA must be auto, simple, fast or mma, got '", v, "'");
}
bool fast_requested(const char* op) { return requested_path(op) != SparsePath::kSimple; }
// ONNXATTN_SPARSE_CUDA_LOADS (async | sync) and _ARGMAX (redux | shuffle): overlapped_loads_requested and
// redux_argmax_requested (cuda_sizes.h, defined in params.cc so that the host tests read them too).

// ONNXATTN_SPARSE_CUDA_BLOCKS = lists | queries | auto: the tensor-core attention by block over the inverted lists, or
// by query tiles walking the union of their lists (cuda_blocks_mma.cu; each row then sums its blocks in ascending
// order, not in its list's: not the same bits) wherever that kernel takes the problem, or (auto) where its CTAs also
// fill the device: a decode step (Sq = 1) makes one CTA per (batch, list head), a handful for a whole GPU, where the
// inverted lists spread each list's blocks over CTAs. lists until a GPU run has checked and timed the others.
enum class BlocksMode { kLists, kQueries, kAuto };
BlocksMode blocks_mode(const char* op) {
  return BlocksMode(env_choice(op, "ONNXATTN_SPARSE_CUDA_BLOCKS", {"lists", "queries", "auto"}));
}
int max_smem_per_block() { return sdpa::cuda::device_info(sdpa::cuda::current_device()).max_smem_per_block; }
bool query_tiles_wanted(BlocksMode mode, int64_t batch, int64_t list_heads, int64_t q_len, int64_t heads_per_list,
                        int64_t top_k, int64_t num_blocks, const Dims& d) {
  if (mode == BlocksMode::kLists) return false;
  const sdpa::cuda::DeviceInfo device = sdpa::cuda::device_info(sdpa::cuda::current_device());
  return (mode == BlocksMode::kQueries ||
          query_tiles_grid(batch, list_heads, q_len, heads_per_list) >= device.sm_count) &&
         query_tiles_eligible(batch, list_heads, q_len, heads_per_list, top_k, num_blocks, int(d.head_dim),
                              int(d.v_head_dim), device.max_smem_per_block);
}

// The tensor-core attention by block (cuda_blocks_mma.cuh) for 16-bit T under ONNXATTN_SPARSE_CUDA=mma, where it
// takes the problem (its sizes; Q, K, V 16-byte aligned: it reads 16-byte chunks).
template <typename T>
bool blocks_mma_wanted(const char* op, int64_t lists, int64_t heads_per_list, int64_t top, int64_t keys,
                       const Dims& d, float scale, std::initializer_list<const void*> tensors) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    if (requested_path(op) != SparsePath::kMma) return false;
    for (const void* x : tensors) {
      if (reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
    }
    const int max_smem = max_smem_per_block();
    return scale > 0.0f && blocks_mma_eligible(lists, heads_per_list, top, keys, int(d.head_dim),
                                               int(d.v_head_dim), max_smem);
  }
}

// NSA's block branch on the tensor-core kernel: its lists, keys and rows per list.
int64_t nsa_lists(const NsaParams& p) { return p.dims.batch * p.selection_heads * p.dims.q_len; }
int64_t nsa_list_keys(const NsaParams& p) {
  return p.attrs.top_blocks * p.dims.batch * p.selection_heads * std::max<int64_t>(p.num_blocks, 0);
}
int64_t nsa_heads_per_list(const NsaParams& p) { return p.attrs.shared_selection != 0 ? p.dims.group() : 1; }

// The block branch on the core: one sequence per list, its heads as rows (see "NSA's lists" above).
sdpa::Params blocks_core_params(const NsaParams& p, int64_t block_size) {
  const Dims& d = p.dims;
  const int64_t heads = p.attrs.shared_selection != 0 ? d.group() : 1;
  sdpa::Params a;
  a.batch = d.batch * p.selection_heads * d.q_len;
  a.q_heads = heads;
  a.kv_heads = 1;
  a.q_len = 1;
  // A table row's capacity (each list has its own length): no list holds more than the blocks there are.
  a.kv_len = std::min(p.attrs.top_blocks, (d.kv_len + block_size - 1) / block_size) * block_size;
  a.head_dim = d.head_dim;
  a.v_head_dim = d.v_head_dim;
  a.scale = p.scale;
  a.q_strides = {heads * d.head_dim, d.head_dim, d.head_dim};
  a.y_strides = {heads * d.v_head_dim, d.v_head_dim, d.v_head_dim};
  a.k_strides = {0, 0, d.head_dim};  // per-list pools (kv_starts)
  a.v_strides = {0, 0, d.v_head_dim};
  a.block_size = block_size;
  a.block_table_stride = p.attrs.top_blocks;
  a.num_blocks = (d.kv_len + block_size - 1) / block_size;
  return a;
}

bool grouped_queries(const NsaParams& p) { return p.attrs.shared_selection != 0 && p.dims.group() > 1; }

sdpa::Params window_core_params(const NsaParams& p) {
  sdpa::Params a = core_params(p.dims, p.scale);
  a.structure.causal = true;
  a.structure.window = p.attrs.window;
  return a;
}

int64_t core_block_size(const NsaParams& p) {
  // A block longer than the keys holds them all (block 0), as on the CPU (sparse/cpu_kernel.cc).
  return std::min(p.attrs.block_size, p.dims.kv_len);
}

// Scratch of run_nsa, in order; with a null base it only counts (plan) and else it hands out the pointers.
struct NsaScratch {
  float* centroids;
  int32_t* lists;
  float* branch[3];
  float* fine_scores;
  int64_t* layout;  // [2][lists]: valid keys, pool starts
  unsigned char* grouped_q;  // shared lists with G > 1: Q regrouped as [B, Hkv, Sq, G, D]
  unsigned char *blocks_core, *window_core;
  unsigned char* blocks_mma;  // the tensor-core block branch's inverted lists and row state
};

NsaScratch carve_nsa(const NsaParams& p, const NsaPlan& plan, Carver& c) {
  const Dims& d = p.dims;
  const int64_t out = d.batch * d.q_heads * d.q_len * d.v_head_dim;
  NsaScratch s{};
  s.centroids = c.take<float>(d.batch * d.kv_heads * std::max<int64_t>(p.full_blocks, 1) * d.head_dim);
  s.lists = c.take<int32_t>(d.batch * p.selection_heads * d.q_len * p.attrs.top_blocks);
  for (int branch = 0; branch < 3; ++branch) s.branch[branch] = c.take<float>(branch_used(p, branch) ? out : 0);
  s.fine_scores = c.take<float>(plan.fine_capacity > 0 ? 0 : fine_scratch_floats(p));
  s.layout = c.take<int64_t>(plan.core_blocks ? 2 * plan.blocks_params.batch : 0);
  s.grouped_q = c.take<unsigned char>(plan.core_blocks && grouped_queries(p) ? int64_t(plan.element_bytes) *
                                      d.batch * d.q_heads * d.q_len * d.head_dim : 0);
  s.blocks_core = c.take<unsigned char>(plan.core_blocks ? int64_t(plan.blocks.scratch_bytes) : 0);
  s.window_core = c.take<unsigned char>(plan.core_window ? int64_t(plan.window.scratch_bytes) : 0);
  s.blocks_mma = c.take<unsigned char>(plan.mma_blocks && !plan.query_tiles ? int64_t(block_lists_scratch_bytes(
                                           nsa_lists(p), d.batch * d.q_heads * d.q_len, p.attrs.top_blocks,
                                           nsa_list_keys(p))) : 0);
  return s;
}

}  // namespace

template <typename T>
NsaPlan plan_nsa(const NsaParams& p, const NsaTensors<T>& t) {
  const Dims& d = p.dims;
  const NsaAttributes& a = p.attrs;
  NsaPlan plan;
  plan.element_bytes = sizeof(T);
  const bool fast = fast_requested(kNsaName);
  // The core's limits (head sizes up to 256); empty problems stay on the simple kernels, which write zeros.
  const bool core = fast && d.head_dim > 0 && d.head_dim <= sdpa::cuda::kMaxHeadDim && d.v_head_dim > 0 &&
                    d.v_head_dim <= sdpa::cuda::kMaxHeadDim && d.kv_len > 0 && d.batch > 0 && d.q_len > 0;
  check_cuda_support(kNsaName, d.head_dim, d.v_head_dim, std::max(p.num_blocks, p.full_blocks),
                     std::max(a.top_blocks, a.top_tokens));
  plan.overlap_loads = overlapped_loads_requested(kNsaName);
  plan.redux_argmax = redux_argmax_requested(kNsaName);
  const BlocksMode blocks = blocks_mode(kNsaName);
  if (core) {
    const sdpa::cuda::DeviceInfo device = sdpa::cuda::device_info(sdpa::cuda::current_device());
    // read outside the refusals caught below: a malformed switch is an error, not a silent fallback
    const sdpa::cuda::Request request = sdpa::cuda::request_from_env(kNsaName);
    sdpa::Tensors<T> view;
    view.q = t.q, view.k = t.k, view.v = t.v;
    // A branch the core refuses (a forced ONNXATTN_SDPA_CUDA_KERNEL it cannot honour, sizes past its limits)
    // runs on the simple kernels, as it would without the fast path.
    plan.mma_blocks = a.top_blocks > 0 && p.num_blocks > 0 &&
                      blocks_mma_wanted<T>(kNsaName, nsa_lists(p), nsa_heads_per_list(p), a.top_blocks,
                                           nsa_list_keys(p), d, p.scale, {t.q, t.k, t.v});
    plan.query_tiles = plan.mma_blocks && query_tiles_wanted(blocks, d.batch, p.selection_heads, d.q_len,
                                                             nsa_heads_per_list(p), a.top_blocks, p.num_blocks, d);
    if (a.top_blocks > 0 && !plan.mma_blocks) try {
      plan.core_blocks = true;
      plan.blocks_params = blocks_core_params(p, core_block_size(p));
      // One query per sequence: the decode launch, with per-sequence lengths (known on the device only).
      plan.blocks = sdpa::cuda::make_plan(plan.blocks_params, sdpa::cuda::dtype_of<T>(), device, request,
                                          sdpa::cuda::aligned16(plan.blocks_params, view), {true, kNsaName});
      // The pool starts run on the decode and SIMT kernels; a forced prefill schedule keeps the simple kernel.
      plan.core_blocks = plan.blocks.schedule == sdpa::cuda::Schedule::kDecode ||
                         plan.blocks.kernel == sdpa::cuda::Kernel::kSimt;
    } catch (const InputError&) {
      plan.core_blocks = false;
    }
    if (a.window > 0) try {
      plan.core_window = true;
      plan.window_params = window_core_params(p);
      plan.window = sdpa::cuda::make_plan(plan.window_params, sdpa::cuda::dtype_of<T>(), device, request,
                                          sdpa::cuda::aligned16(plan.window_params, view), {false, kNsaName});
    } catch (const InputError&) {
      plan.core_window = false;
    }
  }
  if (fast && !p.has_compressed && a.top_tokens > 0 && d.head_dim <= 256) {
    const int capacity = fine_capacity(a.top_tokens);
    if (capacity > 0 && fine_tiled_smem(int(d.head_dim), capacity) <= kSelectSmemBudget) {
      plan.fine_capacity = capacity;
      plan.fine_smem = fine_tiled_smem(int(d.head_dim), capacity);
    }
  }
  if (fast && (a.top_blocks > 0 || p.has_compressed)) {
    plan.select = select_tiling(int(d.head_dim), int(d.v_head_dim), p.full_blocks, p.num_blocks, a.top_blocks,
                                p.has_compressed, a.shared_selection != 0 ? d.group() : 1);
    // Under ONNXATTN_SPARSE_CUDA=mma, 16-bit Q: the selection on tensor cores where it fits (16-byte rows).
    const void* const values = p.has_compressed ? static_cast<const void*>(t.compressed_value) : nullptr;
    if (!std::is_same_v<T, float> && requested_path(kNsaName) == SparsePath::kMma &&
        reinterpret_cast<uintptr_t>(t.q) % 16 == 0 && (!p.has_compressed || p.scale > 0.0f) &&
        reinterpret_cast<uintptr_t>(values) % 16 == 0) {
      const int max_smem = max_smem_per_block();
      const int64_t heads_per_list = a.shared_selection != 0 ? d.group() : 1;
      SelectTiling tensor_cores = select_mma_tiling(int(d.head_dim), int(d.v_head_dim), p.full_blocks, p.num_blocks,
                                                    a.top_blocks, p.has_compressed, heads_per_list, max_smem);
      if (tensor_cores.queries == 0 && heads_per_list == 1 && !p.has_compressed) {  // too many keys for 64 queries
        tensor_cores = select_split_tiling(int(d.head_dim), p.full_blocks, p.num_blocks, a.top_blocks, max_smem);
        tensor_cores.split_bf16 = std::is_same_v<T, BFloat16>;  // hi + lo in the inputs' type: float16 may overflow
      }
      if (tensor_cores.queries > 0) plan.select = tensor_cores;
    }
  }
  Carver c{nullptr};
  carve_nsa(p, plan, c);
  plan.scratch_bytes = c.used;
  return plan;
}

template <typename T>
void run_nsa(const NsaParams& p, const NsaTensors<T>& t, const NsaPlan& plan, void* stream_ptr, void* scratch,
             size_t scratch_bytes) {
  const Dims& d = p.dims;
  const NsaAttributes& a = p.attrs;
  if (scratch_bytes < plan.scratch_bytes) fail(kNsaName, ": CUDA scratch too small");
  if (d.batch == 0 || d.q_len == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Carver c{static_cast<char*>(scratch)};
  const NsaScratch sc = carve_nsa(p, plan, c);
  const int64_t rows = d.batch * d.q_heads * d.q_len, nc = p.full_blocks;
  float* const* branch = sc.branch;

  if (nc > 0) {  // compressed keys (a "mean" over one row each) or the complete blocks' mean keys
    const dim3 grid(unsigned(nc), unsigned(d.batch * d.kv_heads));
    if (p.has_compressed) {
      centroid_kernel<T><<<grid, kThreads, 0, stream>>>(t.compressed_key, sc.centroids, nc, nc, int(d.head_dim), 1, false);
    } else {
      centroid_kernel<T><<<grid, kThreads, 0, stream>>>(t.k, sc.centroids, d.kv_len, nc, int(d.head_dim), a.block_size,
                                                        false);
    }
    check_launch("sparse centroid kernel");
  }
  if (a.top_blocks > 0 || p.has_compressed) {
    SelectArgs<T> s{t.q, sc.centroids, t.compressed_value, p.has_compressed ? branch[1] : nullptr, sc.lists,
                    p.want_blocks ? t.selected_blocks : nullptr, d.batch, d.q_heads, d.kv_heads, d.q_len, nc,
                    p.num_blocks, a.block_size, d.query_offset(), a.top_blocks, int(d.head_dim), int(d.v_head_dim),
                    a.causal != 0, a.shared_selection != 0, p.has_compressed, a.sink_blocks, a.local_blocks, p.scale,
                    plan.overlap_loads, plan.redux_argmax};
    launch_select(s, plan.select, stream);
  }
  AttendArgs<T, T> base{t.q, t.k, t.v, nullptr, nullptr, d.batch, d.q_heads, d.kv_heads, d.q_len, d.kv_len, 1, 0,
                        int(d.head_dim), int(d.v_head_dim), false, false, 0, p.scale};
  if (plan.mma_blocks) {
    if constexpr (!std::is_same_v<T, float>) {
      RoutedBlocksArgs r{};
      r.q = t.q, r.k = t.k, r.v = t.v, r.lists = sc.lists, r.out = branch[0];
      r.batch = d.batch, r.q_heads = d.q_heads, r.kv_heads = d.kv_heads, r.q_len = d.q_len, r.kv_len = d.kv_len;
      r.segment_size = a.block_size, r.num_segments = p.num_blocks, r.top_k = a.top_blocks;
      r.list_heads = p.selection_heads, r.heads_per_list = nsa_heads_per_list(p);
      r.dim = int(d.head_dim), r.v_dim = int(d.v_head_dim), r.causal = a.causal != 0, r.scale = p.scale;
      r.overlap_loads = plan.overlap_loads, r.query_tiles = plan.query_tiles;
      run_blocks_mma<T, T>(r, sc.blocks_mma, stream);
    }
  } else if (plan.core_blocks) {
    const int64_t items = plan.blocks_params.batch;
    ListLayoutArgs l{sc.lists, items, a.top_blocks, d.q_len, d.kv_heads, p.selection_heads, d.group(), d.kv_len,
                     core_block_size(p), d.query_offset(), a.shared_selection != 0, a.causal != 0, sc.layout,
                     sc.layout + items};
    list_layout_kernel<<<unsigned((items + 255) / 256), 256, 0, stream>>>(l);
    check_launch("sparse list layout kernel");
    sdpa::Tensors<T> core;
    core.q = t.q, core.k = t.k, core.v = t.v, core.y_float = branch[0];
    if (grouped_queries(p)) {
      T* const grouped = reinterpret_cast<T*>(sc.grouped_q);
      const int64_t q_rows = rows;  // B * Hq * Sq
      group_queries_kernel<T><<<unsigned((q_rows * 32 + 255) / 256), 256, 0, stream>>>(
          t.q, grouped, q_rows, d.kv_heads, d.group(), d.q_len, int(d.head_dim));
      check_launch("sparse query regrouping kernel");
      core.q = grouped;
    }
    core.kv_lengths = l.kv_lengths, core.kv_starts = l.kv_starts, core.block_table = sc.lists;
    sdpa::cuda::run(plan.blocks_params, core, plan.blocks, stream, sc.blocks_core, plan.blocks.scratch_bytes);
  } else if (a.top_blocks > 0) {
    AttendArgs<T, T> blocks = base;
    blocks.lists = sc.lists, blocks.out = branch[0], blocks.block_size = a.block_size, blocks.list_len = a.top_blocks;
    blocks.shared = a.shared_selection != 0, blocks.causal = a.causal != 0;
    launch_attend(blocks, stream);
  }
  if (!p.has_compressed && a.top_tokens > 0 && plan.fine_capacity > 0) {
    FineTiledArgs<T> f{t.q, t.k, t.v, branch[1], p.want_tokens ? t.selected_tokens : nullptr, d.batch, d.q_heads,
                       d.kv_heads, d.q_len, d.kv_len, a.top_tokens, int(d.head_dim), int(d.v_head_dim),
                       plan.fine_capacity, a.causal != 0, p.scale};
    launch_fine_tiled(f, plan.fine_smem, stream);
  } else if (!p.has_compressed && a.top_tokens > 0) {
    const int64_t per_launch = fine_rows_per_launch(d);
    for (int64_t begin = 0; begin < rows; begin += per_launch) {
      FineArgs<T> f{t.q, t.k, t.v, branch[1], p.want_tokens ? t.selected_tokens : nullptr, sc.fine_scores, begin,
                    std::min(per_launch, rows - begin), d.q_heads, d.kv_heads, d.q_len, d.kv_len, a.top_tokens,
                    int(d.head_dim), int(d.v_head_dim), a.causal != 0, p.scale};
      launch_fine(f, stream);
    }
  }
  if (plan.core_window) {
    sdpa::Tensors<T> core;
    core.q = t.q, core.k = t.k, core.v = t.v, core.y_float = branch[2];
    sdpa::cuda::run(plan.window_params, core, plan.window, stream, sc.window_core, plan.window.scratch_bytes);
  } else if (a.window > 0) {
    AttendArgs<T, T> recent = base;
    recent.out = branch[2], recent.causal = true, recent.window = a.window;
    launch_attend(recent, stream);
  }
  MixArgs<T> m{{branch_used(p, 0) ? branch[0] : nullptr, branch_used(p, 1) ? branch[1] : nullptr,
                branch_used(p, 2) ? branch[2] : nullptr},
               t.gates, {p.gate_strides[0], p.gate_strides[1], p.gate_strides[2], p.gate_strides[3]}, t.y, d.q_heads,
               d.q_len, rows, int(d.v_head_dim), plan.core_blocks && grouped_queries(p) ? d.group() : 1};
  launch_mix(m, stream, "sparse mix kernel");
}

namespace {

// The routed attention by segment (cuda_routed.cuh) under ONNXATTN_SPARSE_CUDA=fast, where it takes the problem.
int64_t routed_rows(const RoutedParams& p) { return p.dims.batch * p.dims.q_heads * p.dims.q_len; }
int64_t routed_list_keys(const RoutedParams& p) {
  return p.attrs.top_k * p.dims.batch * p.dims.q_heads * std::max<int64_t>(p.num_segments, 0);
}
bool routed_by_segment(const RoutedParams& p) {
  if (!fast_requested(kRoutedName) || routed_rows(p) == 0 || p.num_segments == 0) return false;
  const int max_smem = max_smem_per_block();
  return routed_blocks_eligible(routed_rows(p), p.attrs.top_k, routed_list_keys(p), int(p.dims.head_dim),
                                int(p.dims.v_head_dim), max_smem);
}
// The tensor-core kernel by block for 16-bit T (ONNXATTN_SPARSE_CUDA=mma; one row per list). It reads the float32
// RoPE'd copies of Q, K and V carved from the scratch (256-byte aligned offsets), so no alignment test here.
template <typename T>
bool routed_by_block_mma(const RoutedParams& p) {
  return routed_rows(p) > 0 && p.num_segments > 0 &&
         blocks_mma_wanted<T>(kRoutedName, routed_rows(p), 1, p.attrs.top_k, routed_list_keys(p), p.dims, p.scale, {});
}

// Which attention over the routed segments run_routed launches for T (its scratch is sized by the same answer).
struct RoutedRoute {
  bool by_mma = false;       // the tensor-core kernel by block (16-bit T)
  bool by_segment = false;   // the attention by segment (cuda_routed.cuh)
  bool query_tiles = false;  // by_mma by query tiles (ONNXATTN_SPARSE_CUDA_BLOCKS): no inverted lists
  bool inverted_lists() const { return by_segment || (by_mma && !query_tiles); }
};
template <typename T>
RoutedRoute routed_route(const RoutedParams& p) {
  const Dims& d = p.dims;
  const BlocksMode blocks = blocks_mode(kRoutedName);  // read whatever the dtype: a malformed value is an error
  RoutedRoute r;
  r.by_mma = routed_by_block_mma<T>(p);
  r.by_segment = !r.by_mma && routed_by_segment(p);
  r.query_tiles =
      r.by_mma && query_tiles_wanted(blocks, d.batch, d.q_heads, d.q_len, 1, p.attrs.top_k, p.num_segments, d);
  return r;
}

// Scratch of run_routed, in order (as NsaScratch): with a null base it only counts, else it hands out the pointers.
struct RoutedScratch {
  float *q_att, *k_att, *q_raw, *k_raw, *v, *centroids;
  int32_t* lists;
  float* out;
  char* inverted_lists;  // the inverted lists of the attention by segment / by tensor-core blocks (route)
};

RoutedScratch carve_routed(const RoutedParams& p, const RoutedRoute& route, Carver& c) {
  const Dims& d = p.dims;
  const int64_t q = d.batch * d.q_heads * d.q_len, k = d.batch * d.kv_heads * d.kv_len;
  RoutedScratch s{};
  s.q_att = c.take<float>(q * d.head_dim);
  s.k_att = c.take<float>(k * d.head_dim);
  s.q_raw = c.take<float>(q * d.head_dim);
  s.k_raw = c.take<float>(k * d.head_dim);
  s.v = c.take<float>(k * d.v_head_dim);
  s.centroids = c.take<float>(d.batch * d.kv_heads * std::max<int64_t>(p.num_segments, 1) * d.head_dim);
  s.lists = c.take<int32_t>(q * p.attrs.top_k);
  s.out = c.take<float>(q * d.v_head_dim);
  s.inverted_lists = route.inverted_lists()
                         ? c.take<char>(int64_t(routed_blocks_scratch_bytes(q, p.attrs.top_k, routed_list_keys(p))))
                         : nullptr;
  return s;
}

size_t routed_scratch_bytes_of(const RoutedParams& p, const RoutedRoute& route) {
  Carver c{nullptr};
  carve_routed(p, route, c);
  return c.used;
}

}  // namespace

template <typename T>
size_t routed_scratch_bytes(const RoutedParams& p) {
  return routed_scratch_bytes_of(p, routed_route<T>(p));
}

template <typename T>
void run_routed(const RoutedParams& p, const RoutedTensors<T>& t, void* stream_ptr, void* scratch, size_t scratch_bytes) {
  const Dims& d = p.dims;
  const RoutedAttributes& a = p.attrs;
  check_cuda_support(kRoutedName, d.head_dim, d.v_head_dim, p.num_segments, a.top_k);
  const RoutedRoute route = routed_route<T>(p);  // the environment read once, before any launch
  if (scratch_bytes < routed_scratch_bytes_of(p, route)) fail(kRoutedName, ": CUDA scratch too small");
  // the carved float32 copies the tensor-core kernel reads by 16-byte chunks are aligned through the base
  if (reinterpret_cast<uintptr_t>(scratch) % 256 != 0) fail(kRoutedName, ": CUDA scratch not 256-byte aligned");
  if (d.batch == 0 || d.q_len == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  Carver c{static_cast<char*>(scratch)};
  const RoutedScratch sc = carve_routed(p, route, c);
  const int64_t q_rows = d.batch * d.q_heads * d.q_len, k_rows = d.batch * d.kv_heads * d.kv_len;
  const bool route_raw = a.rope && !a.rope_before_routing;
  float *const q_att = sc.q_att, *const k_att = sc.k_att, *const q_raw = sc.q_raw, *const k_raw = sc.k_raw;
  float *const v = sc.v, *const centroids = sc.centroids, *const out = sc.out;
  int32_t* const lists = sc.lists;
  char* const by_segment_scratch = sc.inverted_lists;
  const bool by_mma = route.by_mma, by_segment = route.by_segment, query_tiles = route.query_tiles;
  // read before any launch
  const bool overlap_loads = overlapped_loads_requested(kRoutedName), redux = redux_argmax_requested(kRoutedName);
  const bool grouped = grouped_routing_requested(kRoutedName);  // (the tensor-core routing's only)
  // Under LOADS=async the tensor-core kernel reads 16-bit copies of the RoPE'd Q and K (rounded as its staging rounds
  // the float32 ones) and V in its own type: half the bytes, staged by cp.async, the same bits.
  const bool mma_16bit = by_mma && overlap_loads && reinterpret_cast<uintptr_t>(t.v) % 16 == 0;

  const int rotary = a.rope ? int(p.rotary_dim) : 0;
  if (q_rows) {
    rope_kernel<T><<<unsigned(q_rows), kThreads, 0, stream>>>(t.q, q_att, route_raw ? q_raw : nullptr, q_rows, d.q_heads,
                                                             d.q_len, int(d.head_dim), rotary, a.rope_interleaved != 0,
                                                             a.rope_base, a.rope_attention_scaling, t.position_ids,
                                                             p.position_batch_stride, d.query_offset());
  }
  if (k_rows) {
    rope_kernel<T><<<unsigned(k_rows), kThreads, 0, stream>>>(t.k, k_att, route_raw ? k_raw : nullptr, k_rows,
                                                             d.kv_heads, d.kv_len, int(d.head_dim), rotary,
                                                             a.rope_interleaved != 0, a.rope_base,
                                                             a.rope_attention_scaling, t.position_ids,
                                                             p.position_batch_stride, 0);
    if (!mma_16bit) {  // (the 16-bit kernel reads V as it is)
      to_float_kernel<T><<<grid_for(k_rows * d.v_head_dim), 256, 0, stream>>>(t.v, v, k_rows * d.v_head_dim);
    }
  }
  check_launch("routed RoPE kernel");
  const float* q_route = route_raw ? q_raw : q_att;
  const float* k_route = route_raw ? k_raw : k_att;
  if (p.num_segments > 0) {
    const dim3 grid(unsigned(p.num_segments), unsigned(d.batch * d.kv_heads));
    centroid_kernel<float><<<grid, kThreads, 0, stream>>>(k_route, centroids, d.kv_len, p.num_segments, int(d.head_dim),
                                                          a.segment_size, a.cosine != 0);
    check_launch("routed centroid kernel");
  }
  SelectArgs<float> s{q_route, centroids, nullptr, nullptr, lists, p.want_segments ? t.selected_segments : nullptr,
                      d.batch, d.q_heads, d.kv_heads, d.q_len, p.num_segments, p.num_segments, a.segment_size,
                      d.query_offset(), a.top_k, int(d.head_dim), int(d.v_head_dim), a.causal != 0, false, false, 0, 0,
                      p.scale, overlap_loads, redux};
  SelectTiling routing = fast_requested(kRoutedName) ? select_tiling(int(d.head_dim), int(d.v_head_dim),
                                                                     p.num_segments, p.num_segments, a.top_k, false, 1)
                                                       : SelectTiling{};
  // Under ONNXATTN_SPARSE_CUDA=mma, 16-bit inputs: the routing on tensor cores (its float32 RoPE'd Q and centroids as
  // hi + lo pairs of the inputs' type: bfloat16 values may lie outside float16's range) where it fits.
  if (!std::is_same_v<T, float> && requested_path(kRoutedName) == SparsePath::kMma &&
      reinterpret_cast<uintptr_t>(q_route) % 32 == 0) {
    const int max_smem = max_smem_per_block();
    SelectTiling split = select_split_tiling(int(d.head_dim), p.num_segments, p.num_segments, a.top_k, max_smem);
    // ROUTE=groups only where the default takes this kernel (its smaller tiles fit more blocks): the same bits
    if (split.queries > 0 && grouped) {
      split = select_split_tiling(int(d.head_dim), p.num_segments, p.num_segments, a.top_k, max_smem,
                                  kSplitKeysGrouped);
    }
    if (split.queries > 0) {
      routing = split;
      routing.split_bf16 = std::is_same_v<T, BFloat16>;
    }
  }
  s.group_argmax = grouped && routing.split;
  launch_select(s, routing, stream);
  if (by_segment || by_mma) {
    RoutedBlocksArgs r{};
    r.q = q_att, r.k = k_att, r.v = v, r.lists = lists, r.out = out;
    r.batch = d.batch, r.q_heads = d.q_heads, r.kv_heads = d.kv_heads, r.q_len = d.q_len, r.kv_len = d.kv_len;
    r.segment_size = a.segment_size, r.num_segments = p.num_segments, r.top_k = a.top_k;
    r.list_heads = d.q_heads, r.heads_per_list = 1;
    r.dim = int(d.head_dim), r.v_dim = int(d.v_head_dim), r.causal = a.causal != 0, r.scale = p.scale;
    if constexpr (!std::is_same_v<T, float>) {
      r.overlap_loads = overlap_loads, r.query_tiles = query_tiles;
      if (mma_16bit) {  // into the raw Q and K buffers: the routing, their last reader, is done
        T* const q16 = reinterpret_cast<T*>(q_raw);
        T* const k16 = reinterpret_cast<T*>(k_raw);
        round_for_blocks_mma<T>(q_att, q16, q_rows * d.head_dim, stream);
        round_for_blocks_mma<T>(k_att, k16, k_rows * d.head_dim, stream);
        r.q = q16, r.k = k16, r.v = t.v;
        run_blocks_mma<T, T>(r, by_segment_scratch, stream);
      } else if (by_mma) {
        run_blocks_mma<float, T>(r, by_segment_scratch, stream);
      }
    }
    if (by_segment) run_routed_blocks(r, by_segment_scratch, stream);
  } else {
    AttendArgs<float, float> attend{q_att, k_att, v, lists, out, d.batch, d.q_heads, d.kv_heads, d.q_len, d.kv_len,
                                    a.segment_size, a.top_k, int(d.head_dim), int(d.v_head_dim), false, a.causal != 0, 0,
                                    p.scale};
    launch_attend(attend, stream);
  }
  MixArgs<T> m{{out, nullptr, nullptr}, nullptr, {0, 0, 0, 0}, t.y, d.q_heads, d.q_len, q_rows, int(d.v_head_dim), 1};
  launch_mix(m, stream, "routed output kernel");
}

template NsaPlan plan_nsa<float>(const NsaParams&, const NsaTensors<float>&);
template NsaPlan plan_nsa<Float16>(const NsaParams&, const NsaTensors<Float16>&);
template NsaPlan plan_nsa<BFloat16>(const NsaParams&, const NsaTensors<BFloat16>&);
template void run_nsa<float>(const NsaParams&, const NsaTensors<float>&, const NsaPlan&, void*, void*, size_t);
template void run_nsa<Float16>(const NsaParams&, const NsaTensors<Float16>&, const NsaPlan&, void*, void*, size_t);
template void run_nsa<BFloat16>(const NsaParams&, const NsaTensors<BFloat16>&, const NsaPlan&, void*, void*, size_t);
template size_t routed_scratch_bytes<float>(const RoutedParams&);
template size_t routed_scratch_bytes<Float16>(const RoutedParams&);
template size_t routed_scratch_bytes<BFloat16>(const RoutedParams&);
template void run_routed<float>(const RoutedParams&, const RoutedTensors<float>&, void*, void*, size_t);
template void run_routed<Float16>(const RoutedParams&, const RoutedTensors<Float16>&, void*, void*, size_t);
template void run_routed<BFloat16>(const RoutedParams&, const RoutedTensors<BFloat16>&, void*, void*, size_t);

}  // namespace onnxattn::sparse::cuda
