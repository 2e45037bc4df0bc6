#pragma once
// Attention sinks (GPT-OSS; GroupQueryAttention's `sinks` input): a per-head logit that joins each row's
// softmax denominator and carries no value. Applied after attention from the row's log-sum-exp:
//   sum_j e^s_j / (sum_j e^s_j + e^sink) = 1 / (1 + e^(sink - lse)),
// so the kernels that compute attention need no change, only their LSE. A row with no visible key
// (lse = -inf) gets factor 0 and stays zero; a very large sink underflows the factor to 0 as well.
#include <cmath>

#include "common/host_device.h"

namespace onnxattn {

ONNXATTN_HD float sink_factor(float lse, float sink) {
#if defined(__CUDA_ARCH__)
  return 1.0f / (1.0f + __expf(sink - lse));
#else
  return 1.0f / (1.0f + std::exp(sink - lse));
#endif
}

}  // namespace onnxattn
