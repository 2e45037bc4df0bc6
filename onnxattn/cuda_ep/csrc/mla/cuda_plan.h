#pragma once
// MultiHeadLatentAttention on CUDA, part 1 of 2: the plan (plain C++, built and tested without CUDA).
//
// The CUDA kernel runs the absorbed form only (the expanded form pays off for long prompts; on the GPU a
// tensor-core version of it is future work): (1) new tokens into the latent caches, (2) per chunk of
// query tokens: q_lat = q_nope . W_UK[h]^T next to the rotated rope part, (3) split-KV attention of every
// (token, head) over the R + Dr wide latent rows, each split keeping its own online softmax, (4) the
// splits merged by their log-sum-exp and projected through W_UV[h]. Steps 1, 2 and 4 are SIMT code
// (CUDA cores, float32 arithmetic). Step 3 has two kernels:
//  - simt: one CTA per (token, head, split), every head reading the latent rows on its own;
//  - mma (float16/bfloat16; R and Dr multiples of 8, R <= 512, R + Dr <= 576): one CTA per (token, 16
//    heads, split) reads each tile of 32 latent rows once for its heads and multiplies on tensor cores
//    (mma.sync m16n8k16, FlashMLA's shape of the problem: the heads are the rows of one MQA group). The
//    query row is split into two 16-bit halves (hi + lo: ~22 significant bits in float16, ~16 in bfloat16)
//    so the scores stay close to float32 ones (the absorbed query is a float32 product, unlike an input
//    query); P is rounded to 16 bits for P V as in every flash kernel. With it, steps 2 and 4 run as small GEMMs per head over tiles of 16 tokens, so
//    each weight row is read once per 16 tokens rather than once per token.
// ONNXATTN_MLA_CUDA_KERNEL = auto | simt | mma picks one (read on every call). auto is mma where it can run
// (6.7-11x simt's speed on the H100, docs/performance.md), else simt; mma makes an ineligible problem an
// error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/env.h"
#include "common/errors.h"
#include "mla/params.h"

namespace onnxattn::mla::cuda {

inline constexpr int kAttentionWarps = 4;
inline constexpr int64_t kMmaHeads = 16;       // query heads per CTA of the mma kernel (one m16 block)
inline constexpr int64_t kMmaMaxRank = 512;    // R
inline constexpr int64_t kMmaMaxWidth = 576;   // R + Dr
inline constexpr int kMmaKeys = 32;            // latent rows per step
inline constexpr int kMmaStride = int(kMmaMaxWidth) + 8;  // shared-memory row, elements (conflict-free ldmatrix)
// Two stages of kMmaKeys rows (the first also stages the query halves), then the warps' partial scores.
inline constexpr size_t kMmaSmem = size_t(2) * kMmaKeys * kMmaStride * 2 + size_t(4) * 16 * kMmaKeys * 4;

enum class Kernel { kSimt, kMma };
enum class KernelRequest { kAuto, kSimt, kMma };

// ONNXATTN_MLA_CUDA_KERNEL (unset or empty = auto). An unknown value is an InputError.
inline KernelRequest kernel_request_from_env() {
  return KernelRequest(env_choice(kOpName, "ONNXATTN_MLA_CUDA_KERNEL", {"auto", "simt", "mma"}));  // enum order
}

// Why the mma kernel cannot run a problem ("" when it can).
inline std::string mma_ineligible(const Params& p, size_t element_bytes) {
  if (element_bytes != 2) return "float32 has no tensor-core path";
  if (p.rank < 8 || p.rank % 8 != 0 || p.rope_dim % 8 != 0) return "R and Dr must be multiples of 8 (16-byte rows)";
  if (p.rank > kMmaMaxRank || p.rank + p.rope_dim > kMmaMaxWidth) return "it allows R <= 512 and R + Dr <= 576";
  return "";
}
inline constexpr int64_t kMinKeysPerSplit = 256;
inline constexpr int64_t kMaxSplits = 64;
inline constexpr size_t kScratchBudget = size_t(256) << 20;  // query-side scratch per chunk of tokens
inline constexpr size_t kMaxSharedBytes = 48 * 1024;         // the attention kernel's dynamic shared memory
// key_indices: each token's list is sorted in shared memory, padded to a power of two (DeepSeek-V3.2: 2048).
inline constexpr int64_t kMaxListedKeys = 8192;

struct Plan {
  Kernel kernel = Kernel::kSimt;  // of step 3
  int64_t head_blocks = 1;   // mma: CTAs per (token, split), kMmaHeads heads each
  int64_t splits = 1;        // key splits per (token, head): an upper bound, each row splits its own keys
  int64_t chunk_tokens = 0;  // query tokens per pass of kernels 2-4 (bounds the scratch)
  size_t attention_smem = 0; // dynamic shared memory of the attention kernel
  bool present_in_scratch = false;  // the node asks for no present caches: they live in scratch
  // Scratch layout (byte offsets, 256-aligned): lengths [2][B] int64 (query offsets, valid lengths),
  // q_abs [chunk, H, R + Dr] float, partial [splits, chunk, H, R] float, lse [splits, chunk, H] float,
  // then the caches when present_in_scratch.
  size_t lengths_offset = 0, q_offset = 0, partial_offset = 0, lse_offset = 0;
  size_t present_latent_offset = 0, present_k_rope_offset = 0;
  // key_indices: each token's key list [chunk, K] int32 then each one's count [chunk] int32, and K padded to a
  // power of two (the sort's width)
  size_t key_lists_offset = 0;
  int64_t list_padded = 0;
  size_t scratch_bytes = 0;
};

inline size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// `present_outputs`: the node requests the present caches. Throws InputError for shapes the kernel cannot
// run (a latent too wide for its shared memory).
inline Plan make_plan(const Params& p, int sm_count, size_t element_bytes, bool present_outputs,
                      KernelRequest request = kernel_request_from_env()) {
  Plan plan;
  const int64_t tokens = p.batch * p.seq, heads = p.heads, r = p.rank, dr = p.rope_dim;
  if (request != KernelRequest::kSimt) {
    const std::string why = mma_ineligible(p, element_bytes);
    if (request == KernelRequest::kMma && !why.empty()) {
      fail(kOpName, ": ONNXATTN_MLA_CUDA_KERNEL=mma, but the tensor-core kernel cannot run this problem: ", why);
    }
    if (why.empty()) {
      plan.kernel = Kernel::kMma;
      plan.head_blocks = (heads + kMmaHeads - 1) / kMmaHeads;
    }
  }
  plan.attention_smem = sizeof(float) * size_t((r + dr) + kAttentionWarps * r + 2 * kAttentionWarps);
  if (plan.attention_smem > kMaxSharedBytes) {
    fail(kOpName, ": the CUDA kernel keeps the query row and one latent accumulator per warp in shared memory, "
         "which allows R + Dr + 4R <= ", kMaxSharedBytes / sizeof(float) - 2 * kAttentionWarps, " floats; got R = ",
         r, ", Dr = ", dr);
  }
  if (sizeof(float) * size_t(std::max(p.nope_dim, r)) > kMaxSharedBytes) {
    fail(kOpName, ": the CUDA kernel stages a query's Dn values and a merged latent row in shared memory, which "
         "allows Dn and R up to ", kMaxSharedBytes / sizeof(float), "; got Dn = ", p.nope_dim, ", R = ", r);
  }
  if (p.indexed()) {
    if (p.total > int64_t(INT32_MAX)) {  // the lists hold int32 positions, INT32_MAX marking the unused slots
      fail(kOpName, ": the CUDA kernel keeps each token's key_indices as int32 positions, so the caches may hold "
           "at most ", INT32_MAX, " tokens; got ", p.total);
    }
    if (p.index_count > kMaxListedKeys) {
      fail(kOpName, ": the CUDA kernel sorts each token's key_indices in shared memory, which allows K <= ",
           kMaxListedKeys, " entries per query; got K = ", p.index_count);
    }
    plan.list_padded = 1;
    while (plan.list_padded < p.index_count) plan.list_padded *= 2;
  }
  // Enough blocks to fill the GPU twice over, each split seeing at least kMinKeysPerSplit keys (with
  // key_indices: list entries, the most a row attends to).
  const int64_t rows = std::max<int64_t>(1, plan.kernel == Kernel::kMma ? tokens * plan.head_blocks : tokens * heads);
  const int64_t by_occupancy = (2 * int64_t(std::max(sm_count, 1)) + rows - 1) / rows;
  const int64_t by_keys = std::max<int64_t>(1, (p.indexed() ? p.index_count : p.total) / kMinKeysPerSplit);
  plan.splits = std::clamp<int64_t>(std::min(by_occupancy, by_keys), 1, kMaxSplits);
  const size_t per_token = sizeof(float) * size_t(heads) * size_t((r + dr) + plan.splits * (r + 1)) +
                           sizeof(int32_t) * size_t(std::max<int64_t>(p.index_count + 1, 0));
  plan.chunk_tokens = std::clamp<int64_t>(int64_t(kScratchBudget / std::max<size_t>(per_token, 1)), 1,
                                          std::max<int64_t>(tokens, 1));
  const size_t chunk_rows = size_t(plan.chunk_tokens * heads);
  size_t at = 0;
  plan.lengths_offset = at;
  at += align256(sizeof(int64_t) * size_t(2 * std::max<int64_t>(p.batch, 1)));
  plan.q_offset = at;
  at += align256(sizeof(float) * chunk_rows * size_t(r + dr));
  plan.partial_offset = at;
  at += align256(sizeof(float) * size_t(plan.splits) * chunk_rows * size_t(r));
  plan.lse_offset = at;
  at += align256(sizeof(float) * size_t(plan.splits) * chunk_rows);
  plan.key_lists_offset = at;
  if (p.indexed()) at += align256(sizeof(int32_t) * size_t(plan.chunk_tokens) * size_t(p.index_count + 1));
  plan.present_in_scratch = !present_outputs;
  if (plan.present_in_scratch) {
    plan.present_latent_offset = at;
    at += align256(element_bytes * size_t(p.batch * p.total * r));
    plan.present_k_rope_offset = at;
    at += align256(element_bytes * size_t(p.batch * p.total * dr));
  }
  plan.scratch_bytes = at;
  return plan;
}

}  // namespace onnxattn::mla::cuda
