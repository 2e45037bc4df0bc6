#pragma once
// onnxruntime custom-op objects for LightningIndexer, one per element type and provider.
#include <onnxruntime_c_api.h>

namespace onnxattn::indexer {

template <typename T>
const OrtCustomOp* cpu_op();

// Built only with CUDA (indexer/op_cuda.cc).
template <typename T>
const OrtCustomOp* cuda_op();

}  // namespace onnxattn::indexer
