#pragma once
// PagedAttention on CUDA, part 1 of 2: the plan. Plain C++ (no CUDA or onnxruntime headers), built in every
// configuration so tests/test_paged_cuda_host.py checks it without a GPU (paged/cuda_capi.cc).
//
// One call runs, in order, on the caller's stream, without a host synchronisation:
//   1. only when the output pools are not the input pools: a copy of each pool into its output (or into
//      scratch when the node does not ask for the pools: the inputs are never written);
//   2. the layout kernel, one warp per sequence: the index inputs checked on the device (the checks of
//      paged::check_layout, which the CPU kernel turns into errors) and the attention core's per-sequence
//      layout written to scratch: query starts and counts, query offsets, key counts (-1: failed);
//   3. the new-token kernel, one warp per (token, KV head): QK-norm and RoPE of the key, key and value
//      written to their slots in the blocks; output rows of failed sequences set to NaN;
//   4. the attention core's ragged launches (sdpa/cuda_plan.h: RaggedPlan): the device schedule, then the
//      decode launch (sequences of <= 16 new tokens, split-KV) and the prefill launch (longer chunks),
//      each K/V tile read from its blocks in the pool, queries prepared (QK-norm, RoPE) in the Q load;
//   5. with attention sinks only: the core also writes each row's LSE ([T, Hq] by packed row) to scratch and
//      a small kernel scales each output row by its sink factor (common/sinks_cuda.cuh).
//
// Bad index inputs (the CUDA kernel cannot raise without synchronising): a sequence that fails a check
// (seq_lens[b] < its new tokens or past its table's capacity, a block index it would use outside
// [0, num_blocks)) gets NaN output rows, and neither its cache slots nor any other memory are written for
// it; when cu_seqlens_q is not a partition of the T rows (not starting at 0, decreasing, or not ending at
// T), every sequence fails. Every other sequence is computed as usual. Nothing is ever read or written
// outside the inputs and outputs. Callers that need an error validate on the host (the CPU kernel does).
#include <cstddef>
#include <cstdint>

#include "paged/params.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/params.h"

namespace onnxattn::paged::cuda {

using sdpa::cuda::DeviceInfo;
using sdpa::cuda::DType;
using sdpa::cuda::Request;

inline constexpr int kWarpsPerBlock = 4;  // layout and new-token kernels: one warp per sequence / row

struct Plan {
  sdpa::Params attention;       // the core's view: packed raw queries, the pools by slot, packed output
  sdpa::cuda::RaggedPlan core;  // the core's launches
  int64_t layout_blocks = 0;    // CTAs of the layout kernel (B warps)
  int64_t append_rows = 0;      // T * Hkv
  int64_t append_blocks = 0;    // CTAs of the new-token kernel
  // Scratch, one device block: byte offsets (256-aligned) and the total. layout: int64 [4][B] (query
  // starts, query counts, query offsets, key counts).
  size_t layout_offset = 0, core_offset = 0, key_pool_offset = 0, value_pool_offset = 0;
  bool pools_in_scratch = false;  // the node does not ask for the updated pools
  bool sinks = false;             // step 5 runs; the core's LSE [T, Hq] float32 at lse_offset
  size_t lse_offset = 0;
  size_t scratch_bytes = 0;
};

// The core's parameters: as the CPU kernel's (paged/cpu_kernel.cc), with the queries per sequence bounded
// by min(T, table capacity) (the counts are on the device) and the pool size for the core's own bound.
sdpa::Params attention_params(const Params& p);

// `aligned16`: query, output and the output pools start on 16-byte boundaries (row strides are checked
// here). `pool_outputs`: the node asks for key_cache_out/value_cache_out (else the updated pools live in
// scratch). Throws InputError naming the op when the CUDA kernels cannot run the problem.
Plan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
               bool pool_outputs);

}  // namespace onnxattn::paged::cuda
