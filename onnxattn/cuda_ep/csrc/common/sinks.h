#pragma once
// Attention sinks (GPT-OSS; GroupQueryAttention's `sinks` input): a per-head logit that joins each row's
// softmax denominator and carries no value. Applied after attention from the row's log-sum-exp:
//   sum_j e^s_j / (sum_j e^s_j + e^sink) = 1 / (1 + e^(sink - lse)),
// so the kernels that compute attention need no change, only their LSE. A row with no visible key
// (lse = -inf) gets factor 0 and stays zero; a very large sink underflows the factor to 0 as well.
#include <cmath>
#include <cstdint>

#include "common/half.h"
#include "common/host_device.h"

namespace onnxattn {

ONNXATTN_HD float sink_factor(float lse, float sink) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + __expf(sink - lse));
#else
  return 1.0f / (1.0f + std::exp(sink - lse));
#endif
}

// The CPU kernels' step: one float output row of q_heads heads of v_dim values, each head scaled by its factor
// (16-bit outputs are rounded after it, once); head h's LSE is lse[h * lse_head_stride] (the layouts differ:
// [B, Hq, S] for GroupQueryAttention, [T, Hq] for PagedAttention's packed rows).
template <typename TS>
inline void apply_sinks_to_row(float* row, int64_t q_heads, int64_t v_dim, const float* lse, int64_t lse_head_stride,
                               const TS* sinks) {
  for (int64_t h = 0; h < q_heads; ++h) {
    const float factor = sink_factor(lse[h * lse_head_stride], to_float(sinks[h]));
    for (int64_t c = 0; c < v_dim; ++c) row[h * v_dim + c] *= factor;
  }
}

}  // namespace onnxattn
