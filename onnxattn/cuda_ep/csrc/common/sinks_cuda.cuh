#pragma once
// Attention sinks on CUDA (GroupQueryAttention, PagedAttention): one warp per output (token, query head) row
// scales the row by the sink factor of its LSE (common/sinks.h), after the attention core has written
// both. The output is [tokens, Hq * Dv]; the LSE is [B, Hq, S] (uniform batches of S tokens: `seq` = S) or
// [T, Hq] by packed row (ragged batches: `seq` = 0), as the core writes it.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>

#include "common/errors.h"
#include "common/half.h"
#include "common/sinks.h"

namespace onnxattn::cuda_sinks {

inline constexpr int kRowsPerBlock = 4;

template <typename T>
struct Args {
  T* output;
  const float* lse;
  const T* sinks;  // [Hq]
  // Uniform batches only, or null: [2][B] per-sequence (query offset, key count); a negative count marks a
  // sequence the core skipped (its rows hold NaN and its LSE was never written), left alone here.
  const int64_t* lengths;
  int64_t tokens, seq, batch, q_heads;
  int v_head_dim;
};

template <typename T>
__global__ void __launch_bounds__(32 * kRowsPerBlock) apply_kernel(const Args<T> a) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= a.tokens * a.q_heads) return;  // whole warps
  const int64_t h = row % a.q_heads, token = row / a.q_heads;
  int64_t at = row;  // [T, Hq]
  if (a.seq > 0) {
    const int64_t b = token / a.seq, i = token % a.seq;
    if (a.lengths != nullptr && a.lengths[a.batch + b] < 0) return;
    at = (b * a.q_heads + h) * a.seq + i;
  }
  const float factor = sink_factor(a.lse[at], to_float(a.sinks[h]));
  T* const out = a.output + row * a.v_head_dim;
  for (int e = lane; e < a.v_head_dim; e += 32) out[e] = from_float<T>(to_float(out[e]) * factor);
}

// Enqueues the kernel on `stream` (nothing for zero rows). Throws naming `op` when the launch fails.
template <typename T>
void apply(const Args<T>& a, cudaStream_t stream, const char* op) {
  const int64_t blocks = (a.tokens * a.q_heads + kRowsPerBlock - 1) / kRowsPerBlock;
  if (blocks == 0) return;
  if (blocks > int64_t(0x7fffffff)) throw std::runtime_error(str_cat(op, ": too many query rows"));
  apply_kernel<T><<<unsigned(blocks), 32 * kRowsPerBlock, 0, stream>>>(a);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw std::runtime_error(str_cat(op, ": launching the attention-sink kernel: ", cudaGetErrorName(status), " (",
                                     cudaGetErrorString(status), ")"));
  }
}

}  // namespace onnxattn::cuda_sinks
