#pragma once
// MultiHeadLatentAttention: the attribute and shape contract (mirrors onnxattn/ops/mla.py), checked once on
// the host and shared by the CPU and CUDA kernels. Nothing here depends on onnxruntime.
#include <cstdint>
#include <optional>
#include <vector>

#include "gqa/params.h"

namespace onnxattn::mla {

inline constexpr const char* kOpName = "MultiHeadLatentAttention";

// The decoder attention attributes MLA shares with GroupQueryAttention (num_heads, causal, window, softcap,
// scale, rope_base, rope_interleaved, rope_attention_scaling); kv_num_heads is 1 (every head reads the one
// latent cache) and RoPE is always on (the rope part of the heads).
using Attributes = gqa::Attributes;
void check_attributes(const Attributes& attrs);

using gqa::CacheMode;

// Input indices, as in the schema.
enum Input : size_t {
  kQuery, kLatent, kKRope, kWUk, kWUv, kPastLatent, kPastKRope, kPastLengths, kPositionIds, kInvFreq, kKeyIndices,
  kNumInputs
};
enum Output : size_t { kOutput, kPresentLatent, kPresentKRope, kNumOutputs };

using Shape = std::vector<int64_t>;

struct Shapes {
  std::optional<Shape> inputs[kNumInputs];  // nullopt: input absent
};

struct Params {
  int64_t batch = 0, seq = 0, heads = 0;
  int64_t rank = 0;       // R: latent width
  int64_t nope_dim = 0;   // Dn: per-head key channels from the latent
  int64_t rope_dim = 0;   // Dr: rope channels (shared rope key)
  int64_t v_head_dim = 0; // Dv
  CacheMode mode = CacheMode::kNone;
  int64_t cache_rank = 3;  // 3: [B, T, .]; 4: [B, 1, T, .] (same memory)
  int64_t past = 0;        // concatenation mode: P
  int64_t total = 0;       // tokens in the present caches: S, P + S, or the buffer length M
  bool causal = true;
  int64_t window = 0;
  float scale = 1.0f, softcap = 0.0f;
  bool rope_interleaved = false, has_inv_freq = false, has_position_ids = false;
  float rope_base = 10000.0f, rope_attention_scaling = 1.0f;
  // key_indices [B, S, K] (DeepSeek sparse attention): each query attends only to the keys it lists (a set;
  // negative entries list nothing), within its usual visibility. index_count = K; -1 without the input.
  int64_t index_count = -1;

  bool indexed() const { return index_count >= 0; }

  int64_t query_width() const { return nope_dim + rope_dim; }
  std::vector<int64_t> output_shape() const { return {batch, seq, heads * v_head_dim}; }
  std::vector<int64_t> present_shape(int64_t width) const {
    if (cache_rank == 4) return {batch, 1, total, width};
    return {batch, total, width};
  }
};

// Validates the shapes (and attributes) and fills Params. Throws InputError naming the op and the input.
Params make_params(const Shapes& shapes, const Attributes& attrs);

template <typename T>
struct Tensors {
  const T* query = nullptr;
  const T* latent = nullptr;
  const T* k_rope = nullptr;
  const T* w_uk = nullptr;  // [H, R, Dn]
  const T* w_uv = nullptr;  // [H, R, Dv]
  const T* past_latent = nullptr;
  const T* past_k_rope = nullptr;
  const int64_t* past_lengths = nullptr;
  const int64_t* position_ids = nullptr;
  const float* inv_freq = nullptr;
  const int64_t* key_indices = nullptr;  // [B, S, K]
  T* output = nullptr;
  T* present_latent = nullptr;  // may equal past_latent (shared buffer, updated in place)
  T* present_k_rope = nullptr;  // may equal past_k_rope
};

// ---- Which formulation computes the attention ----
//
// Absorbed: q_lat = q_nope . W_UK[h]^T per query, attention of [q_lat ; q_rope] over the R + Dr wide
// latent rows shared by every head (one KV head), then . W_UV[h]. Expanded: K_h = latent . W_UK[h] and
// V_h = latent . W_UV[h] for every key, then attention with per-head keys of width Dn + Dr. Multiply-adds:
//   absorbed = H * (S * R * (Dn + Dv) + V * (2R + Dr))      projections per query + wide attention
//   expanded = H * (K * R * (Dn + Dv) + V * (Dn + Dr + Dv)) projections per key   + narrow attention
// with V the (query, key) pairs visible under the mask and K the keys that some query sees. With a past of P
// keys the difference is V * (2R - Dn - Dv) - P * R * (Dn + Dv): decode (S = 1) is absorbed; a chunk over
// a long past is expanded once S (2R - Dn - Dv) outgrows R (Dn + Dv) (DeepSeek-V3 sizes: S > ~170); a
// prompt without a past is expanded (as many keys as queries: the projections cost the same, and the
// expanded attention is narrower). Measured on the CPU kernel (benchmarks/bench_mla_cpu.py) the choice
// matches the faster form.
// Indexed: key_indices given; the absorbed form over each token's listed keys only (see run_indexed).
enum class Path { kAbsorbed, kExpanded, kIndexed };

struct Cost {
  double absorbed = 0.0, expanded = 0.0;  // multiply-adds
};

// `past`: each sequence's key position of its first query ([B]); `valid`: its valid keys ([B]).
Cost estimate_cost(const Params& p, const int64_t* past, const int64_t* valid);

// The cheaper formulation, unless ONNXATTN_MLA_PATH (absorbed | expanded) forces one (read on every call, so
// tests and benchmarks can compare the two in one process).
Path choose_path(const Params& p, const int64_t* past, const int64_t* valid);
const char* path_name(Path path);

}  // namespace onnxattn::mla
