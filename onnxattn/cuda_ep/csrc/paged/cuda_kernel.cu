// PagedAttention on CUDA: the pool copy (only when the outputs are other buffers), the layout kernel, the
// new-token kernel, then the shared attention core's ragged launches over the blocks.
//
// Why a layout kernel of its own: the index inputs stay on the device (reading them on the host would
// synchronise and break CUDA-graph capture), so the checks the CPU kernel makes before touching memory
// happen here, once per sequence, and their verdict reaches both later kernels through the per-sequence
// key count (-1: failed). The new-token kernel then writes only slots of sequences that passed, and the
// attention core skips the others. The new keys get their own launch for the reasons given in
// gqa/cuda_kernel.cu (written once, visible to every attention CTA by stream order); the same row
// transform (sdpa/cuda_query_prep.cuh) prepares them, so queries and keys turn by the same arithmetic.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>

#include "common/cuda_errors.h"
#include "common/errors.h"
#include "common/sinks_cuda.cuh"
#include "paged/cuda_kernel.h"
#include "sdpa/cuda_query_prep.cuh"

namespace onnxattn::paged::cuda {
namespace {

using sdpa::cuda::QueryPrep;
using sdpa::cuda::RowPrep;

struct LayoutArgs {
  const int32_t* block_table;  // [B, max_blocks]
  const int32_t* cu_seqlens_q;  // [B + 1]
  const int32_t* seq_lens;     // [B]
  int64_t batch, tokens, max_blocks, block_size, num_blocks;
  int64_t* layout;  // out [4][B]: query starts, query counts, query offsets, key counts (-1: failed)
};

// One warp per sequence. Every warp checks all of cu_seqlens_q (B / 32 reads each) rather than waiting
// for another block's verdict; the sequence's own checks read only its table row, and only as far as
// its length reaches (entries past it are never read, as on the CPU).
__global__ void __launch_bounds__(32 * kWarpsPerBlock) layout_kernel(const LayoutArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (b >= a.batch) return;  // whole warps
  const int32_t* const cu = a.cu_seqlens_q;
  bool partition = cu[0] == 0 && int64_t(cu[a.batch]) == a.tokens;
  for (int64_t i = lane; i < a.batch; i += 32) partition = partition && cu[i] <= cu[i + 1];
  partition = __all_sync(0xffffffffu, partition);
  const int64_t start = partition ? cu[b] : 0, count = partition ? int64_t(cu[b + 1]) - cu[b] : 0;
  const int64_t length = a.seq_lens[b];
  bool ok = partition && length >= count && length <= a.max_blocks * a.block_size;  // warp-uniform
  if (ok) {
    const int32_t* const row = a.block_table + b * a.max_blocks;
    const int64_t blocks = (length + a.block_size - 1) / a.block_size;
    for (int64_t k = lane; k < blocks; k += 32) ok = ok && row[k] >= 0 && row[k] < a.num_blocks;
    ok = __all_sync(0xffffffffu, ok);
  }
  if (lane == 0) {
    a.layout[b] = start;
    a.layout[a.batch + b] = count;  // kept when the sequence fails: its rows are still its own (NaN)
    a.layout[2 * a.batch + b] = ok ? length - count : 0;
    a.layout[3 * a.batch + b] = ok ? length : -1;
  }
}

template <typename T>
struct AppendArgs {
  const T* key;    // [T, Hkv*D]
  const T* value;  // [T, Hkv*Dv]
  T* key_pool;     // [num_blocks * block_size, Hkv, D]: the output pools
  T* value_pool;
  const int32_t* block_table;
  const int32_t* cu_seqlens_q;
  const int64_t* layout;        // written by layout_kernel
  const int64_t* position_ids;  // [T] or null
  T* output;                    // [T, Hq*Dv]: NaN rows for tokens of failed sequences
  int64_t batch, tokens, kv_heads, max_blocks, block_size, output_width;
  int head_dim, v_head_dim;
  RowPrep<T> key_prep;
};

// One warp per new (token, KV head) row, rows ordered like the key input so a block reads contiguous
// memory: the token's sequence by binary search in cu_seqlens_q (any values: the search stays inside it,
// and the layout decides validity), QK-norm and RoPE of K in float32, K and V written to the token's slot.
template <typename T>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) append_kernel(const AppendArgs<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= a.tokens * a.kv_heads) return;  // whole warps
  const int64_t h = row % a.kv_heads, token = row / a.kv_heads;
  int64_t lo = 0, hi = a.batch - 1;  // the last b with cu[b] <= token
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (a.cu_seqlens_q[mid] <= token) lo = mid;
    else hi = mid - 1;
  }
  const int64_t b = lo;
  const int64_t* const L = a.layout;
  const bool valid = a.batch > 0 && L[3 * a.batch + b] >= 0 && token >= L[b] && token < L[b] + L[a.batch + b];
  if (!valid) {
    if (h == 0) {
      T* const out = a.output + token * a.output_width;
      for (int64_t e = lane; e < a.output_width; e += 32) out[e] = from_float<T>(__int_as_float(0x7fc00000));
    }
    return;
  }
  const int64_t pos = L[2 * a.batch + b] + token - L[b];  // its key position (< its checked length)
  const int64_t slot = int64_t(a.block_table[b * a.max_blocks + pos / a.block_size]) * a.block_size + pos % a.block_size;
  const int64_t position = a.position_ids != nullptr ? a.position_ids[token] : pos;
  const int64_t pool_row = slot * a.kv_heads + h;
  sdpa::cuda::prepare_row(a.key + row * a.head_dim, a.key_pool + pool_row * a.head_dim, a.head_dim, a.key_prep,
                          position, 1.0f, lane);
  const T* const v_src = a.value + row * a.v_head_dim;
  T* const v_dst = a.value_pool + pool_row * a.v_head_dim;
  const int bytes = a.v_head_dim * int(sizeof(T));
  if (bytes % 16 == 0 && ((reinterpret_cast<uintptr_t>(v_src) | reinterpret_cast<uintptr_t>(v_dst)) & 15u) == 0) {
    const uint4* const src = reinterpret_cast<const uint4*>(v_src);
    uint4* const dst = reinterpret_cast<uint4*>(v_dst);
    for (int c = lane; c < bytes / 16; c += 32) dst[c] = src[c];
  } else {
    for (int e = lane; e < a.v_head_dim; e += 32) v_dst[e] = v_src[e];
  }
}

void check_cuda(cudaError_t status, const char* what) { onnxattn::check_cuda(status, kOpName, what); }

template <typename T>
RowPrep<T> row_prep(const Params& p, const T* norm_weight, const float* inv_freq) {
  RowPrep<T> r;
  r.norm_weight = norm_weight;
  r.norm_epsilon = p.attrs.qk_norm_epsilon;
  r.rotary_dim = int(p.rotary_dim);
  r.interleaved = p.attrs.rope_interleaved ? 1 : 0;
  r.inv_freq = p.has_inv_freq ? inv_freq : nullptr;
  r.log_base = std::log(p.attrs.rope_base);  // as the CPU kernel: float log, then float steps
  r.attention_scaling = p.attrs.rope_attention_scaling;
  return r;
}

}  // namespace

template <typename T>
void run(const Params& p, const Tensors<T>& t_in, const Plan& plan, void* stream_ptr, void* scratch, size_t scratch_bytes) {
  if (plan.scratch_bytes > 0 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes)) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA plan needs ", plan.scratch_bytes, " bytes of scratch, got ",
                                     scratch_bytes));
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  unsigned char* const base = static_cast<unsigned char*>(scratch);
  Tensors<T> t = t_in;
  if (plan.pools_in_scratch) {
    t.key_cache_out = reinterpret_cast<T*>(base + plan.key_pool_offset);
    t.value_cache_out = reinterpret_cast<T*>(base + plan.value_pool_offset);
  }
  if (t.key_cache_out == nullptr || t.value_cache_out == nullptr) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA kernel needs output pools (plan/run mismatch)"));
  }

  // 1. The output pools start as the input pools (nothing to do when they are the same buffers).
  const size_t slots = size_t(p.num_blocks * p.block_size * p.kv_heads);
  const size_t key_bytes = slots * size_t(p.head_dim) * sizeof(T), value_bytes = slots * size_t(p.v_head_dim) * sizeof(T);
  if (t.key_cache_out != t.key_cache && key_bytes > 0) {
    check_cuda(cudaMemcpyAsync(t.key_cache_out, t.key_cache, key_bytes, cudaMemcpyDeviceToDevice, stream), "copying the key pool");
  }
  if (t.value_cache_out != t.value_cache && value_bytes > 0) {
    check_cuda(cudaMemcpyAsync(t.value_cache_out, t.value_cache, value_bytes, cudaMemcpyDeviceToDevice, stream),
               "copying the value pool");
  }

  // 2. The per-sequence checks and layout.
  int64_t* const layout = reinterpret_cast<int64_t*>(base + plan.layout_offset);
  if (plan.layout_blocks > 0) {
    LayoutArgs a{t.block_table, t.cu_seqlens_q, t.seq_lens, p.batch, p.tokens, p.max_blocks, p.block_size,
                 p.num_blocks, layout};
    layout_kernel<<<unsigned(plan.layout_blocks), 32 * kWarpsPerBlock, 0, stream>>>(a);
    check_cuda(cudaGetLastError(), "launching the layout kernel");
  }

  // 3. New keys and values into their blocks; NaN rows for failed sequences.
  if (plan.append_blocks > 0) {
    AppendArgs<T> a{};
    a.key = t.key;
    a.value = t.value;
    a.key_pool = t.key_cache_out;
    a.value_pool = t.value_cache_out;
    a.block_table = t.block_table;
    a.cu_seqlens_q = t.cu_seqlens_q;
    a.layout = layout;
    a.position_ids = p.has_position_ids ? t.position_ids : nullptr;
    a.output = t.output;
    a.batch = p.batch;
    a.tokens = p.tokens;
    a.kv_heads = p.kv_heads;
    a.max_blocks = p.max_blocks;
    a.block_size = p.block_size;
    a.output_width = p.q_heads * p.v_head_dim;
    a.head_dim = int(p.head_dim);
    a.v_head_dim = int(p.v_head_dim);
    a.key_prep = row_prep<T>(p, p.k_norm ? t.k_norm_weight : nullptr, t.inv_freq);
    append_kernel<T><<<unsigned(plan.append_blocks), 32 * kWarpsPerBlock, 0, stream>>>(a);
    check_cuda(cudaGetLastError(), "launching the new-token kernel");
  }

  // 4. Attention over the blocks, queries prepared in the core's Q load.
  if (plan.core.schedule_grid == 0) return;
  sdpa::Tensors<T> at;
  at.q = t.query;
  at.k = t.key_cache_out;
  at.v = t.value_cache_out;
  at.y = t.output;
  at.q_starts = layout;
  at.q_lengths = layout + p.batch;
  at.query_offsets = layout + 2 * p.batch;
  at.kv_lengths = layout + 3 * p.batch;
  at.block_table = t.block_table;
  QueryPrep<T> prep;
  prep.row = row_prep<T>(p, p.q_norm ? t.q_norm_weight : nullptr, t.inv_freq);
  prep.position_ids = p.has_position_ids ? t.position_ids : nullptr;
  if (plan.sinks) at.lse = reinterpret_cast<float*>(base + plan.lse_offset);
  sdpa::cuda::run_ragged(plan.attention, at, plan.core, stream, base + plan.core_offset, plan.core.scratch_bytes, prep);

  // 5. Attention sinks, from the rows' LSE ([T, Hq] by packed row). Rows of failed sequences hold NaN (step
  // 3) and keep it: NaN times any factor, also one from their never-written LSE.
  if (plan.sinks) {
    cuda_sinks::Args<T> k{};
    k.output = t.output;
    k.lse = at.lse;
    k.sinks = t.sinks;
    k.tokens = p.tokens, k.q_heads = p.q_heads;
    k.v_head_dim = int(p.v_head_dim);
    cuda_sinks::apply(k, stream, kOpName);
  }
}

template void run<float>(const Params&, const Tensors<float>&, const Plan&, void*, void*, size_t);
template void run<Float16>(const Params&, const Tensors<Float16>&, const Plan&, void*, void*, size_t);
template void run<BFloat16>(const Params&, const Tensors<BFloat16>&, const Plan&, void*, void*, size_t);

}  // namespace onnxattn::paged::cuda
