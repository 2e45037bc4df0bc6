#pragma once
// NativeSparseAttention and SparseRoutedAttention on CUDA: the simple, correct first version (SIMT kernels,
// float32 accumulation). Knows nothing of onnxruntime and needs no CUDA headers (streams are void*).
//
// Same structure as the CPU kernels: centroids -> a selection kernel (scores, compression branch, top-k
// with forced blocks, one CTA per list) -> one block-sparse attention kernel serving both ops (one warp per
// query row, visiting the row's listed blocks, or its structural range for the window branch) -> the
// fine branch (one CTA per row: scores into scratch, top-k by repeated block argmax) -> the gated mix.
// Not yet done here (see the issue): tensor-core tiles, one K/V load per GQA group, streaming top-k.
//
// Usage: bytes = *_scratch_bytes(params); allocate that much device scratch (256-byte aligned); run_*()
// only enqueues work on `stream`: no host synchronisation, no allocation.
#include <cstddef>

#include "common/half.h"
#include "sparse/params.h"

namespace onnxattn::sparse::cuda {

size_t nsa_scratch_bytes(const NsaParams& p);
template <typename T>
void run_nsa(const NsaParams& p, const NsaTensors<T>& t, void* stream, void* scratch, size_t scratch_bytes);

size_t routed_scratch_bytes(const RoutedParams& p);
template <typename T>
void run_routed(const RoutedParams& p, const RoutedTensors<T>& t, void* stream, void* scratch, size_t scratch_bytes);

// The limits of this version, checked on the host before anything is enqueued (InputError naming the op).
void check_cuda_support(const char* op, int64_t head_dim, int64_t v_head_dim, int64_t num_centroids, int64_t top);

}  // namespace onnxattn::sparse::cuda
