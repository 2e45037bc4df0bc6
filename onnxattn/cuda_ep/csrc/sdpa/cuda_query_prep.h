#pragma once
// The Q-load hook of the CUDA attention core: fused ops (GroupQueryAttention) hand the core raw projected
// queries plus this description, and every kernel applies it to its Q tile in shared memory right after
// loading it (QK-norm, then RoPE at the row's position), before the first score. No separate pass over Q,
// no float32 query buffer. The same row transform prepares the new keys (gqa/cuda_kernel.cu).
// Plain C++ (no CUDA headers): filled on the host, read by the kernels (sdpa/cuda_query_prep.cuh).
#include <cstdint>

#include "common/host_device.h"

namespace onnxattn::sdpa::cuda {

// One head row x of width D, in float32: x <- x * rsqrt(mean(x^2) + eps) * weight (when weight is given),
// then the first rotary_dim channels turn by angle position * inv_freq[i], cos and sin multiplied by
// attention_scaling: pairs (i, i + rotary_dim/2), or (2i, 2i + 1) when interleaved.
template <typename T>
struct RowPrep {
  const T* norm_weight = nullptr;  // [D]; null: no norm
  float norm_epsilon = 0.0f;
  int rotary_dim = 0;              // 0: no RoPE; even
  int interleaved = 0;
  const float* inv_freq = nullptr;  // [rotary_dim / 2] (device), or null: exp(-(2i / rotary_dim) * log_base)
  float log_base = 0.0f;            // log(rope_base), computed on the host as the CPU kernel does
  float attention_scaling = 1.0f;

  ONNXATTN_HD bool active() const { return norm_weight != nullptr || rotary_dim > 0; }
};

// The query rows' transform. Query i of batch b sits at position position_ids[b * Sq + i] when given
// (device memory, [B, Sq]; a ragged batch: [T], at its packed row), else at its key position (the query
// offset of its batch + i).
template <typename T>
struct QueryPrep {
  RowPrep<T> row;
  const int64_t* position_ids = nullptr;

  ONNXATTN_HD bool active() const { return row.active(); }
};

}  // namespace onnxattn::sdpa::cuda
