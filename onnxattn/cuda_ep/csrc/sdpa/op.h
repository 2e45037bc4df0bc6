#pragma once
// onnxruntime custom-op objects for ScaledDotProductAttention, one per element type and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::sdpa {

template <typename T>
const OrtCustomOp* cpu_op();

// Defined only in builds with CUDA (op_cuda.cc).
template <typename T>
const OrtCustomOp* cuda_op();

}  // namespace onnxattn::sdpa
