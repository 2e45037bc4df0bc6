#pragma once
// A failed CUDA runtime call as an exception naming the op and the step it failed in (the onnxruntime adapters turn
// it into an Ort::Status). CUDA sources only.
#include <cuda_runtime.h>

#include <stdexcept>

#include "common/errors.h"

namespace onnxattn {

inline void check_cuda(cudaError_t status, const char* op, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(str_cat(op, ": ", what, ": ", cudaGetErrorName(status), " (", cudaGetErrorString(status),
                                     ")"));
  }
}

}  // namespace onnxattn
