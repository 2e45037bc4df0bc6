#pragma once
// GroupQueryAttention: the attribute and shape contract (mirrors onnxattn/ops/gqa.py), checked once on the
// host and shared by the kernels. Nothing here depends on onnxruntime.
#include <cstdint>
#include <optional>
#include <vector>

#include "sdpa/params.h"

namespace onnxattn::gqa {

inline constexpr const char* kOpName = "GroupQueryAttention";

struct Attributes {
  int64_t num_heads = 0, kv_num_heads = 0;
  int64_t causal = 1, window = 0;
  int64_t attention_chunk = 0;
  float softcap = 0.0f, scale = 0.0f;
  int64_t rope = 0;
  float rope_base = 10000.0f;
  int64_t rotary_dim = 0, rope_interleaved = 0;
  float rope_attention_scaling = 1.0f, qk_norm_epsilon = 1e-6f;
};

// `op` names the op in error messages (the attributes are shared by the fused decoder ops).
void check_attributes(const Attributes& attrs, const char* op = kOpName);

enum class CacheMode { kNone, kConcat, kShared };

// Input indices, as in the schema.
enum Input : size_t {
  kQuery, kKey, kValue, kPastKey, kPastValue, kPastLengths, kPositionIds, kQNorm, kKNorm, kInvFreq, kMask, kSinks,
  kNumInputs
};
enum Output : size_t { kOutput, kPresentKey, kPresentValue, kNumOutputs };

using Shape = std::vector<int64_t>;

struct Shapes {
  std::optional<Shape> inputs[kNumInputs];  // nullopt: input absent
};

struct Params {
  int64_t batch = 0, seq = 0, q_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;
  CacheMode mode = CacheMode::kNone;
  int64_t past = 0;   // concatenation mode: P
  int64_t total = 0;  // keys in the present cache: S, P + S, or the buffer length M
  bool causal = true;
  int64_t window = 0;
  int64_t attention_chunk = 0;  // > 0: Llama 4's chunked attention (StructuralMask::chunk)
  float scale = 1.0f, softcap = 0.0f;
  bool rope = false, rope_interleaved = false, has_inv_freq = false;
  int64_t rotary_dim = 0;
  float rope_base = 10000.0f, rope_attention_scaling = 1.0f;
  bool q_norm = false, k_norm = false;
  float qk_norm_epsilon = 1e-6f;
  bool has_position_ids = false, has_mask = false;
  bool has_sinks = false;  // attention sinks: the attention core's LSE rescales each output row (common/sinks.h)

  std::vector<int64_t> output_shape() const { return {batch, seq, q_heads * v_head_dim}; }
  std::vector<int64_t> present_shape(int64_t width) const { return {batch, kv_heads, total, width}; }
};

// Validates the shapes (and attributes) and fills Params. Throws InputError naming the op and the input.
Params make_params(const Shapes& shapes, const Attributes& attrs);

template <typename T>
struct Tensors {
  const T* query = nullptr;
  const T* key = nullptr;
  const T* value = nullptr;
  const T* past_key = nullptr;
  const T* past_value = nullptr;
  const int64_t* past_lengths = nullptr;
  const int64_t* position_ids = nullptr;
  const T* q_norm_weight = nullptr;
  const T* k_norm_weight = nullptr;
  const float* inv_freq = nullptr;
  const bool* attention_mask = nullptr;
  const T* sinks = nullptr;  // [Hq]
  T* output = nullptr;
  T* present_key = nullptr;    // may equal past_key (shared buffer, updated in place)
  T* present_value = nullptr;  // may equal past_value
};

}  // namespace onnxattn::gqa
