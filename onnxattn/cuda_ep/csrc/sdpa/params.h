#pragma once
// ScaledDotProductAttention: the attribute and shape contract, checked once on the host and shared by the
// CPU and CUDA kernels. Nothing here depends on onnxruntime (the adapter in op.cc fills these).
#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/visibility.h"

namespace onnxattn::sdpa {

inline constexpr const char* kOpName = "ScaledDotProductAttention";

struct Attributes {
  int64_t causal = 0;
  int64_t window = 0;    // 0: off; > 0: causal sliding window of this many keys
  int64_t band = 0;      // 0: off; > 0: keep |p - j| <= band
  float scale = 0.0f;    // 0: 1/sqrt(head_dim)
  float softcap = 0.0f;  // 0: off; > 0: c * tanh(s / c) before masking
};

// Throws InputError naming the attribute when a value is outside the contract.
void check_attributes(const Attributes& attrs);

enum class MaskKind { kNone, kBool, kAdditive };

// Element strides of a [B, H, S, E] view whose last dim is contiguous. ScaledDotProductAttention's tensors
// are contiguous BNSH; fused ops point the attention core at other layouts (e.g. [B, S, H*E] outputs or
// KV-cache buffers longer than the valid length) through these.
struct Strides {
  int64_t batch = 0, head = 0, seq = 0;
  int64_t at(int64_t b, int64_t h, int64_t s) const { return b * batch + h * head + s * seq; }
  static Strides contiguous(int64_t heads, int64_t len, int64_t width) { return {heads * len * width, len * width, width}; }
};

struct Params {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  // kv_len is the key count of the K/V views (the buffer length with per-batch kv_lengths).
  float scale = 1.0f;  // resolved: never 0
  float softcap = 0.0f;
  StructuralMask structure;
  MaskKind mask_kind = MaskKind::kNone;
  // Element strides of the mask viewed as [B, Hq, Sq, Skv]; 0 on broadcast dimensions.
  std::array<int64_t, 4> mask_strides{};
  bool want_lse = false;
  // Split K rows (with Tensors::k_tail): dims [0, k_split) come from K, [k_split, D) from K's tail at
  // k_tail_strides (e.g. MLA: a latent cache plus rope keys shared by all heads, head stride 0). 0: off.
  int64_t k_split = 0;
  Strides k_tail_strides;
  // Paged K/V (with Tensors::block_table): slots per block and entries per block-table row.
  int64_t block_size = 0;
  int64_t block_table_stride = 0;
  // Blocks in the pool (CUDA kernels: a table entry outside [0, num_blocks) reads as zero keys instead of
  // out-of-bounds memory; 0: unchecked). The CPU kernels rely on the caller's checks (paged::check_layout).
  int64_t num_blocks = 0;
  // Block-sparse attention (with Tensors::sparse_blocks; NativeSparseAttention, SparseRoutedAttention): row
  // (b, h, i) sees only the keys of the blocks its list names — block c is keys [c * sparse_block_size,
  // (c + 1) * sparse_block_size) — within its structural range. Lists have sparse_list_len entries
  // (distinct, any order, -1 = unused): one per (b, KV head, i) when sparse_shared (the heads of a GQA group
  // share it), else one per (b, query head, i). Not combined with paged K/V, ragged queries or split K rows.
  // 0: dense.
  int64_t sparse_block_size = 0;
  int64_t sparse_list_len = 0;
  bool sparse_shared = false;

  int64_t group_size() const { return q_heads / kv_heads; }
  // Layouts of Q, K, V, Y (contiguous [B, H, S, D] unless a fused op says otherwise) and their offsets.
  Strides q_strides, k_strides, v_strides, y_strides;
  int64_t q_offset(int64_t b, int64_t h, int64_t i) const { return q_strides.at(b, h, i); }
  int64_t k_offset(int64_t b, int64_t h, int64_t j) const { return k_strides.at(b, h, j); }
  int64_t v_offset(int64_t b, int64_t h, int64_t j) const { return v_strides.at(b, h, j); }
  int64_t y_offset(int64_t b, int64_t h, int64_t i) const { return y_strides.at(b, h, i); }
  int64_t lse_offset(int64_t b, int64_t h, int64_t i) const { return (b * q_heads + h) * q_len + i; }
  int64_t mask_offset(int64_t b, int64_t h, int64_t i) const {
    return b * mask_strides[0] + h * mask_strides[1] + i * mask_strides[2];
  }
};

struct Shapes {
  std::vector<int64_t> q, k, v;
  std::optional<std::vector<int64_t>> mask;
};

// Validates the input shapes against the contract and resolves the attributes. Throws InputError that
// names the op, the input and the expected shape.
Params make_params(const Shapes& shapes, MaskKind mask_kind, const Attributes& attrs, bool want_lse);

// Output shapes: Y [B, Hq, Sq, Dv] and LSE [B, Hq, Sq].
std::vector<int64_t> output_shape(const Params& p);
std::vector<int64_t> lse_shape(const Params& p);

// TQ is the query's element type: T, or float for fused ops that prepare queries in float32 (QK-norm,
// RoPE) before attention.
template <typename T, typename TQ = T>
struct Tensors {
  const TQ* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const bool* bool_mask = nullptr;   // MaskKind::kBool: true = may attend
  const T* additive_mask = nullptr;  // MaskKind::kAdditive: added to the scores
  T* y = nullptr;
  float* lse = nullptr;  // only when Params::want_lse: [B, Hq, Sq], or [T, Hq] by packed row when ragged
  // Instead of y: the output in float32 at y's strides (fused ops that project or mix the result further,
  // e.g. MLA's latent output times W_UV, NativeSparseAttention's gated branches, so 16-bit types round only
  // once, at the end).
  float* y_float = nullptr;
  // Per-batch overrides of the uniform layout (fused ops with KV caches; null otherwise):
  const int64_t* query_offsets = nullptr;  // [B] key position of query row 0 (instead of Skv - Sq)
  const int64_t* kv_lengths = nullptr;     // [B] valid keys (instead of Skv)
  // Ragged query batches (packed tokens): sequence b's rows start at packed row q_starts[b] (Q and Y use
  // only their head and seq strides from there) and it has q_lengths[b] <= Sq rows; LSE by packed row.
  // (CUDA: device memory, like query_offsets and kv_lengths; see sdpa::cuda::make_ragged_plan.)
  const int64_t* q_starts = nullptr;
  const int64_t* q_lengths = nullptr;
  // Paged K/V: key j of sequence b is slot j % block_size of block block_table[b * block_table_stride +
  // j / block_size]; K/V are addressed as slot * strides.seq + head * strides.head.
  const int32_t* block_table = nullptr;
  // Paged K/V, CUDA decode and SIMT kernels only: sequence b's pool starts kv_starts[b] rows into K/V (its
  // table entries count blocks from there); null = every sequence shares the pool from row 0. Lets
  // per-(batch, head) K/V views serve as pools, e.g. block-sparse lists turned into block tables
  // (sparse/cuda_kernel.cu).
  const int64_t* kv_starts = nullptr;
  const T* k_tail = nullptr;  // Params::k_split > 0; not combined with block_table
  // Block-sparse lists [B, Hkv or Hq, Sq, sparse_list_len] (see Params::sparse_block_size).
  const int32_t* sparse_blocks = nullptr;
};

}  // namespace onnxattn::sdpa
