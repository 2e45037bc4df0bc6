#pragma once
// CPU entry point of ScaledDotProductAttention: a tiled, fused kernel with an online softmax (memory per
// work item is O(tile), never Sq x Skv), compiled for several x86 ISAs and dispatched at run time.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/half.h"
#include "common/parallel.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa {

// T: K, V, Y (and mask) element type; TQ: the query's (T, or float32 for fused ops' prepared queries).
// Q may be the output buffer itself when TQ == T and q_strides == y_strides (each query row where its output
// row goes; GroupQueryAttention's fp32 prepared queries): every work item reads all of its rows' queries
// before it writes any of their outputs, and no item reads another's rows.
template <typename T, typename TQ = T>
void run_cpu(const Params& params, const Tensors<T, TQ>& tensors, const ParallelFor& parallel_for);

// The instruction set run_cpu uses on this machine: "avx512", "avx2" or "generic". The environment
// variable ONNXATTN_CPU_ISA (generic | avx2 | avx512) lowers it, for tests and benchmarks.
const char* cpu_isa();

// n 16-bit floats of src as float32 into dst, exactly, with the best conversion this CPU has (AVX-512 or F16C
// vectors; ONNXATTN_CPU_ISA is not read: every ISA gives the same values, and the kernels' own conversions follow it).
// For the ops' code outside the ISA-compiled kernels, which converted a value at a time.
void widen_cpu(const Float16* src, int64_t n, float* dst);
void widen_cpu(const BFloat16* src, int64_t n, float* dst);
inline void widen_cpu(const float* src, int64_t n, float* dst) { std::copy(src, src + n, dst); }

// n floats of src rounded to 16 bits into dst, exactly as from_float (to nearest even; a NaN to its quiet NaN with
// the sign), with the best conversion this CPU has (vcvtps2ph, or integer rounding for bfloat16). For the ops' code
// outside the ISA-compiled kernels that rounded a value at a time (outputs, rotated keys).
void narrow_cpu(const float* src, int64_t n, Float16* dst);
void narrow_cpu(const float* src, int64_t n, BFloat16* dst);
inline void narrow_cpu(const float* src, int64_t n, float* dst) { std::copy(src, src + n, dst); }

// For tests: the conversion of the ISA named `isa` ("avx512", "avx2", "generic") on n raw 16-bit values (fp16 when
// `bfloat16` is false); false where this CPU lacks the ISA or the name is unknown.
bool widen_for_test(const char* isa, bool bfloat16, const uint16_t* src, int64_t n, float* dst);
// For tests: the same for the rounding of n floats to raw 16-bit values.
bool narrow_for_test(const char* isa, bool bfloat16, const float* src, int64_t n, uint16_t* dst);

// `count` values of src as float32: src itself for float32, else widened into `storage`.
template <typename T>
const float* as_float(const T* src, int64_t count, std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    (void)count, (void)storage;
    return src;
  } else {
    storage.resize(size_t(count));
    widen_cpu(src, count, storage.data());
    return storage.data();
  }
}

}  // namespace onnxattn::sdpa
