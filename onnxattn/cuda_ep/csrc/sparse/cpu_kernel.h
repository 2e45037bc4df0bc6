#pragma once
// CPU kernels of NativeSparseAttention and SparseRoutedAttention: block-list producers (cpu_select.h) feeding
// the attention core's block-sparse path (sdpa::run_cpu with Params::sparse_*), plus the NSA branches the
// core runs densely (sliding window) and the fine branch.
#include "common/half.h"
#include "common/parallel.h"
#include "sparse/params.h"

namespace onnxattn::sparse {

template <typename T>
void run_nsa_cpu(const NsaParams& p, const NsaTensors<T>& t, const ParallelFor& parallel_for);

template <typename T>
void run_routed_cpu(const RoutedParams& p, const RoutedTensors<T>& t, const ParallelFor& parallel_for);

}  // namespace onnxattn::sparse
