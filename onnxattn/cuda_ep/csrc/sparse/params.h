#pragma once
// NativeSparseAttention and SparseRoutedAttention: the attribute and shape contracts, checked once on the
// host and shared by the CPU and CUDA kernels (onnxattn/ops/nsa.py and routed.py state the same rules).
// Nothing here depends on onnxruntime.
#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/host_device.h"
#include "sdpa/params.h"

namespace onnxattn::sparse {

inline constexpr const char* kNsaName = "NativeSparseAttention";
inline constexpr const char* kRoutedName = "SparseRoutedAttention";

struct NsaAttributes {
  int64_t block_size = 64;
  int64_t top_blocks = 16;  // 0: block branch off
  int64_t top_tokens = 0;   // 0: fine branch off
  int64_t window = 0;       // 0: window branch off
  int64_t causal = 0;
  int64_t shared_selection = 0;
  int64_t sink_blocks = 0;
  int64_t local_blocks = 0;
  float scale = 0.0f;  // 0: 1/sqrt(D)
};

struct RoutedAttributes {
  int64_t segment_size = 64;
  int64_t top_k = 3;
  int64_t causal = 0;
  int64_t cosine = 1;
  int64_t rope = 0;
  int64_t rope_before_routing = 0;
  float rope_base = 10000.0f;
  int64_t rotary_dim = 0;
  int64_t rope_interleaved = 0;
  float rope_attention_scaling = 1.0f;
  float scale = 0.0f;
};

// Throw InputError naming the op and the attribute (the cross-attribute rules of NSA need to know whether
// the compressed inputs are present).
void check_attributes(const NsaAttributes& a, bool has_compressed);
void check_attributes(const RoutedAttributes& a);

// The sizes shared by both ops.
struct Dims {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  int64_t group() const { return q_heads / kv_heads; }
  int64_t query_offset() const { return kv_len - q_len; }  // p = i + query_offset
};

// The attention core (sdpa::Params) over the ops' contiguous [B, H, S, D] tensors, bottom-right aligned, no
// structure yet: each branch adds its own (the CPU and CUDA kernels alike).
inline sdpa::Params core_params(const Dims& d, float scale) {
  sdpa::Params a;
  a.batch = d.batch;
  a.q_heads = d.q_heads;
  a.kv_heads = d.kv_heads;
  a.q_len = d.q_len;
  a.kv_len = d.kv_len;
  a.head_dim = d.head_dim;
  a.v_head_dim = d.v_head_dim;
  a.scale = scale;
  a.structure.query_offset = d.query_offset();
  a.q_strides = sdpa::Strides::contiguous(d.q_heads, d.q_len, d.head_dim);
  a.k_strides = sdpa::Strides::contiguous(d.kv_heads, d.kv_len, d.head_dim);
  a.v_strides = sdpa::Strides::contiguous(d.kv_heads, d.kv_len, d.v_head_dim);
  a.y_strides = sdpa::Strides::contiguous(d.q_heads, d.q_len, d.v_head_dim);
  return a;
}

// The keys of one block-sparse list as a sequence of the attention core's paged path (the CUDA fast path,
// sparse/cuda_kernel.cu): the list's blocks in order as one key range, so every block but the last must be
// complete and inside the row's structural range — true of the lists the selection writes (sorted
// ascending, -1 after the valid entries, candidates up to the own block under causal, complete blocks
// otherwise) — and the last one holds the keys up to the end of the range. `position`: the row's query
// position (i + Skv - Sq); `block_size`: the list's block length, at most Skv.
ONNXATTN_HD int64_t list_sequence_keys(const int32_t* list, int64_t top, int64_t position, bool causal, int64_t kv_len,
                                       int64_t block_size) {
  int64_t count = 0, last = -1;
  for (; count < top; ++count) {
    const int32_t c = list[count];
    if (c < 0) break;
    last = c;
  }
  if (count == 0) return 0;
  int64_t end = kv_len;
  if (causal && position + 1 < end) end = position + 1;
  int64_t extent = end - last * block_size;
  if (extent > block_size) extent = block_size;
  if (extent < 0) extent = 0;
  return (count - 1) * block_size + extent;
}

struct NsaShapes {
  std::vector<int64_t> q, k, v;
  std::optional<std::vector<int64_t>> gates, compressed_key, compressed_value;
};

struct NsaParams {
  Dims dims;
  NsaAttributes attrs;
  float scale = 1.0f;             // resolved
  int64_t full_blocks = 0;        // complete blocks: Skv / block_size (= compressed tokens)
  int64_t num_blocks = 0;         // candidate blocks: full, plus the partial last one when causal
  int64_t selection_heads = 0;    // lists per (b, i): Hkv (shared) or Hq
  bool has_gates = false, has_compressed = false;
  std::array<int64_t, 4> gate_strides{};  // element strides of gates viewed as [B, Hq, Sq, 3]; 0 = broadcast
  bool want_blocks = false, want_tokens = false;  // selected_blocks / selected_tokens outputs
};

NsaParams make_nsa_params(const NsaShapes& shapes, const NsaAttributes& attrs, bool want_blocks, bool want_tokens);
std::vector<int64_t> nsa_output_shape(const NsaParams& p);
std::vector<int64_t> nsa_blocks_shape(const NsaParams& p);
std::vector<int64_t> nsa_tokens_shape(const NsaParams& p);

template <typename T>
struct NsaTensors {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const T* gates = nullptr;             // optional
  const T* compressed_key = nullptr;    // optional, with compressed_value
  const T* compressed_value = nullptr;
  T* y = nullptr;
  int64_t* selected_blocks = nullptr;   // optional outputs
  int64_t* selected_tokens = nullptr;
};

struct RoutedShapes {
  std::vector<int64_t> q, k, v;
  std::optional<std::vector<int64_t>> position_ids;
};

struct RoutedParams {
  Dims dims;
  RoutedAttributes attrs;
  float scale = 1.0f;
  int64_t rotary_dim = 0;           // resolved: 0 without RoPE
  int64_t num_segments = 0;         // ceil(Skv / segment_size)
  bool has_positions = false;
  int64_t position_batch_stride = 0;  // 0 when position_ids is [1, Skv]
  bool want_segments = false;
};

RoutedParams make_routed_params(const RoutedShapes& shapes, const RoutedAttributes& attrs, bool want_segments);
std::vector<int64_t> routed_output_shape(const RoutedParams& p);
std::vector<int64_t> routed_segments_shape(const RoutedParams& p);

template <typename T>
struct RoutedTensors {
  const T* q = nullptr;
  const T* k = nullptr;
  const T* v = nullptr;
  const int64_t* position_ids = nullptr;  // optional
  T* y = nullptr;
  int64_t* selected_segments = nullptr;   // optional output
};

}  // namespace onnxattn::sparse
