#pragma once
// CPU entry point of ScaledDotProductAttention: a tiled, fused kernel with an online softmax (memory per
// work item is O(tile), never Sq x Skv), compiled for several x86 ISAs and dispatched at run time.
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

}  // namespace onnxattn::sdpa
