#pragma once
// Lets one header serve CPU and CUDA translation units.
#if defined(__CUDACC__)
#define ONNXATTN_HD __host__ __device__ __forceinline__
#else
#define ONNXATTN_HD inline
#endif
