#pragma once
// NativeSparseAttention and SparseRoutedAttention on CUDA. Knows nothing of onnxruntime and needs no CUDA
// headers (streams are void*).
//
// Same structure as the CPU kernels: centroids -> selection -> attention over the selected blocks -> the
// fine branch -> the gated mix.
//  - Selection (NSA's block scores, MoBA's routing; cuda_select.cu): one CTA per (batch, selection head, up
//    to 16 (query, head) rows) stages every centroid tile once for all its rows — dot-product scores, or,
//    for the compression branch, each row's softmax and the branch output from value tiles staged the same
//    way — and sums each query's rows over its heads in head order (the CPU kernel's bits); then a warp per
//    query takes the forced blocks and the top-k of the rest (lower index on ties).
//  - NSA's block branch and window branch run on the attention core (sdpa/cuda_kernel.h; tensor cores for
//    float16/bfloat16): each selection list becomes one short "sequence" of the paged decode path — its
//    query heads as rows (one K/V load per GQA group), its listed blocks as the block table, its pool
//    starting at its (batch, KV head) rows, its length on the device — and the window branch is a causal
//    sliding-window attention.
//    Both write float32 branch outputs, so 16-bit outputs round once, after the mix. Lists must be sorted
//    ascending with -1 after the valid entries (what the selection writes): every block but the last is
//    then complete, and the last one's visible keys end the sequence.
//  - The fine branch (exact: every key scored): a CTA per 16 (query, head) rows of a GQA group scores each
//    staged tile of 32 keys for all of them and keeps a streaming top-k per row (candidates past the row's
//    threshold into a buffer, cut back by a bitonic sort), as the CPU kernel does with its heaps.
//  - SparseRoutedAttention's attention (its RoPE'd Q and K stay float32 to match the oracle's rounding) by
//    segment (cuda_routed.cuh): the routing lists inverted, each chosen segment staged once per slot for all
//    the rows that chose it, each row's partials merged in the order of its list.
// ONNXATTN_SPARSE_CUDA = auto | simple | fast | mma (read on every call): fast is the above; simple the first
// kernels (one CTA per selection list, a warp per row in every branch, SparseRoutedAttention included). auto is
// mma (since stop 23: it passed every GPU test on the H200 at 21d5171, and ran NSA 1.3x / 4.1x and the routed
// attention 3.3x / 2.2x as fast as fast at 16k / 64k, bf16, docs/performance.md); the tests and the benchmark ask
// for each path explicitly. mma is fast with, for float16 and bfloat16, NSA's block branch and the routed
// attention on the tensor-core kernel by block (cuda_blocks_mma.cuh: the inverted lists, a chosen block staged
// once per slot for up to 64 rows, mma.sync) and NSA's selection on tensor cores (cuda_select.cu,
// select_mma_kernel: dot scores against the float32 centroids as hi + lo 16-bit tiles; the compression branch as a
// flash pass for its output and log-sum-exp, then a pass for its probabilities; a CTA per 64 (query, head) rows
// of whole queries; one row per list, as SparseRoutedAttention's routing: a CTA per 16 queries whose warps split
// the centroids, float32 inputs as float16 hi + lo pairs). float32 inputs give fast's bits under mma
// (tests/gpu/test_sparse_cuda_ort.py); 16-bit ones round P (and the routed Q, K after RoPE) to the input dtype.
// ONNXATTN_SPARSE_CUDA_LOADS = async | sync (read by plan_nsa and run_routed): mma's tensor-core kernels (by block,
// selection) overlap their loads, or wait for them in turn (the same bits; cuda_blocks_mma.cuh). async is the default
// since the H200 run at 82087dc (NSA 9.49 -> 4.58 ms at 16k with redux; cuda_sizes.h); sync keeps the old kernels.
// ONNXATTN_SPARSE_CUDA_BLOCKS = lists | queries | auto (likewise): mma's attention by block over the inverted lists,
// or by query tiles: a CTA per run of consecutive queries walks the union of their lists, its rows' outputs in
// registers throughout (cuda_blocks_mma.cu; a row sums its blocks in ascending order, so not the lists' bits);
// auto: query tiles where their CTAs fill the device (not a decode step).
// ONNXATTN_SPARSE_CUDA_ARGMAX = redux | shuffle (likewise): every path's selection picks each entry by a warp argmax
// of two warp reductions, or of five shuffle rounds (the same lists; cuda_select.cu warp_select). redux is the
// default with async (the same run); shuffle keeps the old argmax.
//
// Usage: plan = plan_nsa(params, tensors); allocate plan.scratch_bytes of device scratch (256-byte
// aligned); run_nsa() only enqueues work on `stream`: no host synchronisation, no allocation.
#include <cstddef>

#include "common/half.h"
#include "sdpa/cuda_kernel.h"
#include "sparse/cuda_sizes.h"
#include "sparse/params.h"

namespace onnxattn::sparse::cuda {

struct NsaPlan {
  bool core_blocks = false, core_window = false;  // the branch runs on the attention core
  bool mma_blocks = false;  // the block branch runs on the tensor-core kernel by block (ONNXATTN_SPARSE_CUDA=mma)
  bool overlap_loads = false;  // the tensor-core kernels' loads overlapped (ONNXATTN_SPARSE_CUDA_LOADS=async, default)
  bool redux_argmax = false;   // the selection's argmax by warp reductions (ONNXATTN_SPARSE_CUDA_ARGMAX=redux, default)
  bool query_tiles = false;    // the tensor-core block branch by query tiles (ONNXATTN_SPARSE_CUDA_BLOCKS=queries)
  sdpa::Params blocks_params, window_params;
  sdpa::cuda::LaunchPlan blocks, window;
  size_t element_bytes = 0;
  SelectTiling select;
  int fine_capacity = 0;  // the fine branch's tiled kernel: candidates kept per row (0: one CTA per row)
  size_t fine_smem = 0;
  size_t scratch_bytes = 0;
};

// Reads the current device's numbers and ONNXATTN_SPARSE_CUDA, ONNXATTN_SPARSE_CUDA_LOADS, _BLOCKS and _ARGMAX.
template <typename T>
NsaPlan plan_nsa(const NsaParams& p, const NsaTensors<T>& t);
template <typename T>
void run_nsa(const NsaParams& p, const NsaTensors<T>& t, const NsaPlan& plan, void* stream, void* scratch,
             size_t scratch_bytes);

// Reads ONNXATTN_SPARSE_CUDA and _BLOCKS, as run_routed<T> does: the inverted lists' scratch only where it uses them.
template <typename T>
size_t routed_scratch_bytes(const RoutedParams& p);
// `scratch`: routed_scratch_bytes<T>(p) device bytes, 256-byte aligned (onnxruntime's allocations are).
template <typename T>
void run_routed(const RoutedParams& p, const RoutedTensors<T>& t, void* stream, void* scratch, size_t scratch_bytes);

// The limits of the simple kernels, checked on the host before anything is enqueued (InputError naming the op).
void check_cuda_support(const char* op, int64_t head_dim, int64_t v_head_dim, int64_t num_centroids, int64_t top);

}  // namespace onnxattn::sparse::cuda
