#pragma once
// onnxruntime custom-op objects for MultiHeadLatentAttention, one per element type and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::mla {

template <typename T>
const OrtCustomOp* cpu_op();

// Built only with CUDA (mla/op_cuda.cc).
template <typename T>
const OrtCustomOp* cuda_op();

}  // namespace onnxattn::mla
