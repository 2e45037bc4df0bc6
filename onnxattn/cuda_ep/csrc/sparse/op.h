#pragma once
// onnxruntime custom-op objects for NativeSparseAttention and SparseRoutedAttention, one per element type
// and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::sparse {

template <typename T>
const OrtCustomOp* nsa_cpu_op();
template <typename T>
const OrtCustomOp* routed_cpu_op();

// Built only with CUDA (sparse/op_cuda.cc).
template <typename T>
const OrtCustomOp* nsa_cuda_op();
template <typename T>
const OrtCustomOp* routed_cuda_op();

}  // namespace onnxattn::sparse
