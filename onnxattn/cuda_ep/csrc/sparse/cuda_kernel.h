#pragma once
// NativeSparseAttention and SparseRoutedAttention on CUDA. Knows nothing of onnxruntime and needs no CUDA
// headers (streams are void*).
//
// Same structure as the CPU kernels: centroids -> selection -> attention over the selected blocks -> the
// fine branch -> the gated mix.
//  - Selection by dot product (NSA's block scores summed over a GQA group, MoBA's routing): one CTA per
//    (batch, selection head, up to 16 queries) scores every centroid tile once for all its queries (the
//    group's queries summed first: sum_g q_g . c = (sum_g q_g) . c), then a warp per query takes the top-k
//    (forced blocks first, lower index on ties). The compression branch (softmax over compressed tokens,
//    per head) keeps one CTA per list.
//  - NSA's block branch and window branch run on the attention core (sdpa/cuda_kernel.h; tensor cores for
//    float16/bfloat16): each selection list becomes one short "sequence" of the paged decode path — its
//    query heads as rows (one K/V load per GQA group), its listed blocks as the block table, its pool
//    starting at its (batch, KV head) rows, its length on the device — and the window branch is a causal
//    sliding-window attention.
//    Both write float32 branch outputs, so 16-bit outputs round once, after the mix. Lists must be sorted
//    ascending with -1 after the valid entries (what the selection writes): every block but the last is
//    then complete, and the last one's visible keys end the sequence.
//  - Not yet on the core: the fine branch (one CTA per row: dense scores, top-k by repeated block argmax)
//    and SparseRoutedAttention's attention (its RoPE'd Q and K stay float32 to match the oracle's rounding;
//    one warp per row). ONNXATTN_SPARSE_CUDA_ATTENTION=simple runs NSA on the first, simple kernels only
//    (one CTA per selection list, a warp per row in every branch): the comparison the GPU tests and the
//    benchmark make.
//
// Usage: plan = plan_nsa(params, tensors); allocate plan.scratch_bytes of device scratch (256-byte
// aligned); run_nsa() only enqueues work on `stream`: no host synchronisation, no allocation.
#include <cstddef>

#include "common/half.h"
#include "sdpa/cuda_kernel.h"
#include "sparse/params.h"

namespace onnxattn::sparse::cuda {

struct NsaPlan {
  bool core_blocks = false, core_window = false;  // the branch runs on the attention core
  sdpa::Params blocks_params, window_params;
  sdpa::cuda::LaunchPlan blocks, window;
  size_t element_bytes = 0;
  int select_queries = 0;  // queries per CTA of the dot-product selection (0: one CTA per list)
  size_t select_smem = 0;
  size_t scratch_bytes = 0;
};

// Reads the current device's numbers and ONNXATTN_SPARSE_CUDA_ATTENTION (core | simple; unset = core).
template <typename T>
NsaPlan plan_nsa(const NsaParams& p, const NsaTensors<T>& t);
template <typename T>
void run_nsa(const NsaParams& p, const NsaTensors<T>& t, const NsaPlan& plan, void* stream, void* scratch,
             size_t scratch_bytes);

size_t routed_scratch_bytes(const RoutedParams& p);
template <typename T>
void run_routed(const RoutedParams& p, const RoutedTensors<T>& t, void* stream, void* scratch, size_t scratch_bytes);

// The limits of the simple kernels, checked on the host before anything is enqueued (InputError naming the op).
void check_cuda_support(const char* op, int64_t head_dim, int64_t v_head_dim, int64_t num_centroids, int64_t top);

}  // namespace onnxattn::sparse::cuda
