#pragma once
// onnxruntime custom-op objects for GroupQueryAttention, one per element type and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::gqa {

template <typename T>
const OrtCustomOp* cpu_op();

// Built only with CUDA (gqa/op_cuda.cc).
template <typename T>
const OrtCustomOp* cuda_op();

}  // namespace onnxattn::gqa
