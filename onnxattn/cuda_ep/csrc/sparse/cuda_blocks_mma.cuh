#pragma once
// The sparse ops' attention by block on tensor cores (ONNXATTN_SPARSE_CUDA=mma; float16 and bfloat16): the
// inverted lists of cuda_routed.cuh, but a CTA takes up to kMmaRows rows (whole lists; for NSA's GQA-shared lists
// a list's Hq / Hkv query heads are its rows) that chose one block, stages the block's keys and values once as
// 16-bit tiles, and runs S = Q K^T and O = P V on mma.sync m16n8k16 with float32 accumulators (a warp per 16
// rows, the FlashAttention-2 register layout: P stays in registers). One launch per slot, as the segment kernel:
// each row's partial over the block merges into its running (max, sum, output) in scratch, in the order of its
// list, with no atomics.
//
// Two kernels do this: blocks_mma_kernel, which waits for each load it makes in turn (ONNXATTN_SPARSE_CUDA_LOADS=sync:
// 7.4 ms of NSA's 9.5 at 16k on the H200, ~18 TFLOP/s), and blocks_mma_overlapped_kernel (RoutedBlocksArgs::
// overlap_loads, LOADS=async, the default since the H200 run at 82087dc: the same bits, NSA 9.49 -> 4.58 ms at 16k
// with the redux argmax), the same arithmetic with its loads in flight together: cp.async staging, a warp's search for
// its block, each output row read whole before it is written. A third, blocks_query_tiles_kernel (RoutedBlocksArgs::
// query_tiles, ONNXATTN_SPARSE_CUDA_BLOCKS=queries|auto; opt-in: slower on that run), needs no inverted lists: a CTA
// per run of consecutive queries walks the union of their lists and keeps its rows' outputs in registers (not the
// lists' bits: each row sums its blocks in ascending order).
//
// Serves NativeSparseAttention's block branch (Q, K, V in the input type) and SparseRoutedAttention (RoPE'd
// float32 Q and K, V as float32, rounded to the input type as they are staged). Against the float32 kernels the
// scores see Q and K rounded to 16 bits (routed only: NSA's are 16-bit already) and the weights P are rounded to
// 16 bits before P V, as in every 16-bit flash kernel.
#include <cuda_runtime.h>

#include "sparse/cuda_routed.cuh"

namespace onnxattn::sparse::cuda {

// `TIn`: the element type of a.q, a.k, a.v (float, Float16 or BFloat16); `TMma`: Float16 or BFloat16. `a` as for
// run_routed_blocks, with list_heads and heads_per_list set (blocks_mma_eligible must hold). Carves a's scratch
// (block_lists_scratch_bytes) and enqueues every kernel on `stream`; a.out ([B * Hq * Sq, Dv] float32) ends
// normalised.
template <typename TIn, typename TMma>
void run_blocks_mma(RoutedBlocksArgs a, void* scratch, cudaStream_t stream);

// dst[i] = src[i] rounded to TMma exactly as the kernel's staging rounds float32 rows (load8), so that the kernel
// reading dst in TMma gives the bits it gives reading src in float32. `count` a multiple of 8; src 32-byte and dst
// 16-byte aligned.
template <typename TMma>
void round_for_blocks_mma(const float* src, TMma* dst, int64_t count, cudaStream_t stream);

}  // namespace onnxattn::sparse::cuda
