#pragma once
// PagedAttention: the shape contract (mirrors onnxattn/ops/paged.py) and the data checks done before any
// read. Attributes are GroupQueryAttention's. Nothing here depends on onnxruntime.
#include <cstdint>
#include <optional>
#include <vector>

#include "gqa/params.h"

namespace onnxattn::paged {

inline constexpr const char* kOpName = "PagedAttention";

enum Input : size_t {
  kQuery, kKey, kValue, kKeyCache, kValueCache, kBlockTable, kCuSeqlensQ, kSeqLens, kPositionIds, kQNorm, kKNorm,
  kInvFreq, kSinks, kNumInputs
};
enum Output : size_t { kOutput, kKeyCacheOut, kValueCacheOut, kNumOutputs };

struct Shapes {
  std::optional<std::vector<int64_t>> inputs[kNumInputs];  // nullopt: input absent
};

struct Params {
  int64_t tokens = 0, batch = 0, q_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;
  int64_t num_blocks = 0, block_size = 0, max_blocks = 0;
  gqa::Attributes attrs;
  float scale = 1.0f;      // resolved
  int64_t rotary_dim = 0;  // resolved: 0 without RoPE
  bool has_position_ids = false, q_norm = false, k_norm = false, has_inv_freq = false;
  bool has_sinks = false;  // attention sinks: the core's LSE rescales each output row (common/sinks.h)

  std::vector<int64_t> output_shape() const { return {tokens, q_heads * v_head_dim}; }
  std::vector<int64_t> pool_shape(int64_t width) const { return {num_blocks, block_size, kv_heads, width}; }
};

Params make_params(const Shapes& shapes, const gqa::Attributes& attrs);

// Per-sequence layout derived from the index inputs, after checking them (InputError otherwise): every
// later read and write stays inside the pools and the packed rows.
struct Layout {
  std::vector<int64_t> q_starts, q_lengths, query_offsets, kv_lengths;  // [B]
  std::vector<int64_t> sequence_of;                                     // [T]
};
Layout check_layout(const Params& p, const int32_t* block_table, const int32_t* cu_seqlens_q, const int32_t* seq_lens);

template <typename T>
struct Tensors {
  const T* query = nullptr;
  const T* key = nullptr;
  const T* value = nullptr;
  const T* key_cache = nullptr;
  const T* value_cache = nullptr;
  const int32_t* block_table = nullptr;
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* seq_lens = nullptr;
  const int64_t* position_ids = nullptr;
  const T* q_norm_weight = nullptr;
  const T* k_norm_weight = nullptr;
  const float* inv_freq = nullptr;
  const T* sinks = nullptr;  // [Hq]
  T* output = nullptr;
  T* key_cache_out = nullptr;    // may be key_cache itself (updated in place)
  T* value_cache_out = nullptr;  // may be value_cache itself
};

}  // namespace onnxattn::paged
