#pragma once
// Device-side pieces shared by the sparse ops' CUDA translation units (cuda_kernel.cu: the attention branches,
// the plan and the launches; cuda_select.cu: the selection and the fine branch). Included by .cu files only.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "sparse/cuda_sizes.h"  // kThreads, kWarpsPerBlock

namespace onnxattn::sparse::cuda {

inline constexpr float kNegInf = -__builtin_huge_valf();

// Blocks of 256 threads for a grid-stride loop over `count` elements (at least 1, at most 65535).
inline int grid_for(int64_t count) {
  return int(std::min<int64_t>(std::max<int64_t>((count + 255) / 256, 1), 65535));
}

inline void check_launch(const char* what) {
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(error));
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// (value, index) pairs: larger value first, then lower index (ONNX TopK's tie rule); NaN never wins.
__device__ __forceinline__ bool better(float a, int64_t ia, float b, int64_t ib) {
  return a > b || (a == b && ia < ib) || (b != b && a == a);
}
__device__ __forceinline__ void warp_best(float& value, int64_t& index) {
  for (int o = 16; o > 0; o /= 2) {
    const float v = __shfl_xor_sync(0xffffffffu, value, o);
    const int64_t i = __shfl_xor_sync(0xffffffffu, index, o);
    if (better(v, i, value, index)) value = v, index = i;
  }
}
// Block-wide reductions over kThreads threads through `shared` (kWarpsPerBlock floats).
__device__ __forceinline__ float block_reduce(float x, float* shared, bool is_max) {
  x = is_max ? warp_max(x) : warp_sum(x);
  __syncthreads();
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = x;
  __syncthreads();
  float total = shared[0];
  for (int w = 1; w < kWarpsPerBlock; ++w) total = is_max ? fmaxf(total, shared[w]) : total + shared[w];
  return total;
}

}  // namespace onnxattn::sparse::cuda
