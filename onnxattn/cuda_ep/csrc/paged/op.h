#pragma once
// onnxruntime custom-op objects for PagedAttention, one per element type and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::paged {

template <typename T>
const OrtCustomOp* cpu_op();

// Built only with CUDA (paged/op_cuda.cc).
template <typename T>
const OrtCustomOp* cuda_op();

}  // namespace onnxattn::paged
