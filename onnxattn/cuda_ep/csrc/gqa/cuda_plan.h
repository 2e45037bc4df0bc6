#pragma once
// GroupQueryAttention on CUDA, part 1 of 2: the plan. Plain C++ (no CUDA or onnxruntime headers), built
// in every configuration so tests/test_gqa_cuda_host.py checks it without a GPU (gqa/cuda_capi.cc).
//
// One call runs, in order, on the caller's stream:
//   1. the past part of the present caches, only when they are not the past buffers themselves
//      (concatenation: cudaMemcpy2DAsync of P slots per (batch, KV head); shared buffer with distinct
//      outputs: one copy of the whole buffer, stale slots included);
//   2. the new-token kernel (gqa/cuda_kernel.cu): QK-norm and RoPE of the new keys, K and V written to
//      their cache slots; in shared-buffer mode also the per-sequence query offsets and valid lengths the
//      attention reads (past_lengths is read on the device: no host synchronisation);
//   3. the attention core (sdpa/cuda_*) over the cache, with QK-norm and RoPE of the queries fused into its
//      Q load (sdpa/cuda_query_prep.h) and the output written straight into [B, S, Hq*Dv]. With
//      ONNXATTN_GQA_CUDA_QUERY=rotated (tensor-core plans only; for measuring what the fusion costs), a
//      kernel first writes the prepared queries to scratch and the core reads them plainly: the same
//      arithmetic (the tensor-core kernels prepare 16-bit rows in 16 bits), so the same bits. Without QK-norm
//      a thread per 16-byte chunk can do it for several heads with one set of angles (the default, see below); with
//      it, a warp per row (the norm is a row-wide sum, added up as the fused load adds it). With
//      ONNXATTN_GQA_CUDA_ROTATION=joint the chunked query kernel runs inside step 2's kernel instead (one launch).
//   4. with attention sinks only: the core also writes each row's LSE to scratch, and a small kernel scales
//      each output row by 1 / (1 + e^(sink - lse)) (common/sinks.h), in the output's type. The core's
//      kernels stay as they are; the price is one pass over the output (B * S * Hq * Dv) and one launch.
// Every input stays in device memory: nothing is read on the host, and the launches do not depend on
// input values, so a decode step can be captured in a CUDA graph.
#include <cstddef>
#include <cstdint>

#include "common/env.h"
#include "common/errors.h"

#include "gqa/params.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/params.h"

namespace onnxattn::gqa::cuda {

using sdpa::cuda::DeviceInfo;
using sdpa::cuda::DType;
using sdpa::cuda::LaunchPlan;
using sdpa::cuda::Request;

inline constexpr int kAppendRowsPerBlock = 4;  // new-token kernel: one warp per (token, KV head) row
// The chunked query and new-token kernels (RoPE without QK-norm): one CTA of kRotateThreadsPerBlock threads per token,
// its rotary angles (at most kMaxRotaryPairs: rotary_dim <= 256) once in shared memory, then a thread per 16-byte
// chunk of the token's rows.
inline constexpr int kRotateThreadsPerBlock = 256;
inline constexpr int kMaxRotaryPairs = 128;

// ONNXATTN_GQA_CUDA_QUERY = fused | rotated (unset or empty = fused), read on every call. An unknown value is
// an InputError.
inline bool rotated_queries_from_env() {
  return env_choice(kOpName, "ONNXATTN_GQA_CUDA_QUERY", {"fused", "rotated"}) == 1;
}

// ONNXATTN_GQA_CUDA_ROTATION = chunks | rows | joint (unset or empty = chunks): which kernels prepare the queries
// ahead of the core and the new keys. chunks: the kernels by token where they can run (not with QK-norm; the per-row
// ones elsewhere); rows: the per-row kernels always; joint (opt-in until a GPU run times it): where both kernels by
// token run (the prefill's queries prepared ahead: the wgmma core), one kernel does both, each token's CTA computing
// its rotary angles once for its query and key rows (the same angles: the same position and frequencies), so one
// launch and one angle computation fewer. The same bits (tests/gpu compares them). chunks is the default since the
// per-row query kernel proved issue-bound on the H200 at 82087dc (40 of GQA prefill's 182 us at S = 2048); joint is
// aimed at the two kernels by token that remained at 2c9a48e (20.2 + 19.1 us of the prefill's 164 at S = 2048, for
// ~48 MB that the device copies in ~12 us).
enum class Rotation { kChunks, kRows, kJoint };
inline Rotation rotation_from_env() {
  return Rotation(env_choice(kOpName, "ONNXATTN_GQA_CUDA_ROTATION", {"chunks", "rows", "joint"}));
}

struct Plan {
  sdpa::Params attention;  // the core's view: raw queries [B, S, Hq*D], the caches, output [B, S, Hq*Dv]
  LaunchPlan launch;       // the core's launch
  bool per_batch = false;  // shared-buffer mode: query offsets and valid lengths per sequence, on the device
  int64_t append_rows = 0;    // B * S * Hkv
  int64_t append_blocks = 0;  // CTAs of the new-token kernel
  // The chunked new-token kernel (ONNXATTN_GQA_CUDA_ROTATION=chunks, no K-norm, 16-bit 16-byte rows; run() also
  // needs key and value 16-byte aligned): a key row's chunks (turned ones first) and a value row's, its CTAs; 0 key
  // chunks: the per-row kernel.
  int append_key_chunks = 0, append_rotary_chunks = 0, append_value_chunks = 0;
  int64_t append_chunk_blocks = 0;
  // ONNXATTN_GQA_CUDA_ROTATION=joint where both kernels by token run (append_key_chunks and rotate_chunks > 0): one
  // launch of append_chunk_blocks CTAs turns each token's query rows and writes its key and value rows.
  bool joint_new_tokens = false;
  // Scratch, one device block: byte offsets (256-aligned) and the total. lengths: [2][B] int64 (query
  // offsets, then valid lengths; a negative length marks an out-of-range past_lengths entry).
  size_t lengths_offset = 0, attention_offset = 0, present_key_offset = 0, present_value_offset = 0;
  bool present_in_scratch = false;  // the node does not ask for present_key/present_value
  bool rotate_queries = false;      // the queries are prepared into scratch ([B, S, Hq*D]) before the core
  size_t rotated_q_offset = 0;
  // The chunked query kernel (rotate_queries only): 16-byte chunks per row (rotated pairs, then the channels
  // past rotary_dim), its CTAs; 0 chunks: the per-row kernel (QK-norm, float32, unaligned rows, odd splits).
  int rotate_chunks = 0, rotary_chunks = 0;
  int64_t rotate_blocks = 0;
  bool sinks = false;    // step 4 runs; the core's LSE [B, Hq, S] float32 at lse_offset
  size_t lse_offset = 0;
  size_t scratch_bytes = 0;
};

// The attention core's parameters for the cache this call produces (the same rules as the CPU kernel).
sdpa::Params attention_params(const Params& p);

// `aligned16`: every row of query, output and the present caches starts on a 16-byte boundary (base
// pointers; the strides are multiples of D and Dv, checked here). `present_outputs`: the node asks for
// present_key/present_value (else the caches live in scratch). `new_tokens_aligned16`: key and value start on
// 16-byte boundaries (the chunked new-token kernel reads them by 16-byte chunks). Throws InputError naming the op
// when the CUDA kernels cannot run the problem.
Plan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
               bool present_outputs, bool new_tokens_aligned16, bool rotate_queries = rotated_queries_from_env(),
               Rotation rotation = rotation_from_env());

}  // namespace onnxattn::gqa::cuda
