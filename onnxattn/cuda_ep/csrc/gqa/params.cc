#include "gqa/params.h"

#include <cmath>

#include "common/errors.h"

namespace onnxattn::gqa {
namespace {

const char* const kInputNames[] = {"query", "key", "value", "past_key", "past_value", "past_lengths", "position_ids",
                                   "q_norm_weight", "k_norm_weight", "rope_inv_freq", "attention_mask", "sinks"};
static_assert(sizeof(kInputNames) / sizeof(kInputNames[0]) == kNumInputs, "one name per input");

const Shape& expect_rank(const Shapes& s, Input index, size_t rank, const char* layout) {
  return onnxattn::expect_rank(*s.inputs[index], kOpName, kInputNames[index], rank, layout);
}

void expect_shape(const Shapes& s, Input index, const Shape& want, const char* layout) {
  onnxattn::expect_shape(*s.inputs[index], kOpName, kInputNames[index], want, layout);
}

}  // namespace

void check_attributes(const Attributes& a, const char* op) {
  if (a.num_heads < 1 || a.kv_num_heads < 1) {
    fail(op, ": attributes 'num_heads' and 'kv_num_heads' are required and must be >= 1, got ", a.num_heads,
         " and ", a.kv_num_heads);
  }
  if (a.num_heads % a.kv_num_heads != 0) {
    fail(op, ": num_heads (", a.num_heads, ") must be a multiple of kv_num_heads (", a.kv_num_heads, ")");
  }
  if (a.causal != 0 && a.causal != 1) fail(op, ": attribute 'causal' must be 0 or 1, got ", a.causal);
  if (a.window < 0) fail(op, ": attribute 'window' must be >= 0 (0 = off), got ", a.window);
  if (a.attention_chunk < 0) {
    fail(op, ": attribute 'attention_chunk' must be >= 0 (0 = off), got ", a.attention_chunk);
  }
  if (!std::isfinite(a.softcap) || a.softcap < 0) {
    fail(op, ": attribute 'softcap' must be finite and >= 0 (0 = off), got ", a.softcap);
  }
  if (!std::isfinite(a.scale)) fail(op, ": attribute 'scale' must be finite (0 = 1/sqrt(D)), got ", a.scale);
  if (a.rope != 0 && a.rope != 1) fail(op, ": attribute 'rope' must be 0 or 1, got ", a.rope);
  if (!(a.rope_base > 0) || !std::isfinite(a.rope_base)) fail(op, ": attribute 'rope_base' must be > 0, got ", a.rope_base);
  if (a.rotary_dim < 0) fail(op, ": attribute 'rotary_dim' must be >= 0 (0 = D), got ", a.rotary_dim);
  if (a.rope_interleaved != 0 && a.rope_interleaved != 1) {
    fail(op, ": attribute 'rope_interleaved' must be 0 or 1, got ", a.rope_interleaved);
  }
  if (!std::isfinite(a.rope_attention_scaling)) {
    fail(op, ": attribute 'rope_attention_scaling' must be finite, got ", a.rope_attention_scaling);
  }
  if (!std::isfinite(a.qk_norm_epsilon) || a.qk_norm_epsilon < 0) {
    fail(op, ": attribute 'qk_norm_epsilon' must be finite and >= 0, got ", a.qk_norm_epsilon);
  }
}

Params make_params(const Shapes& s, const Attributes& a) {
  check_attributes(a);
  Params p;
  p.q_heads = a.num_heads;
  p.kv_heads = a.kv_num_heads;
  const Shape& query = expect_rank(s, kQuery, 3, "[B, S, Hq*D]");
  const Shape& key = expect_rank(s, kKey, 3, "[B, S, Hkv*D]");
  const Shape& value = expect_rank(s, kValue, 3, "[B, S, Hkv*Dv]");
  p.batch = query[0];
  p.seq = query[1];
  if (query[2] % p.q_heads != 0 || query[2] == 0) {
    fail(kOpName, ": query width ", query[2], " (dim 2) must be num_heads (", p.q_heads, ") * head size D >= 1");
  }
  p.head_dim = query[2] / p.q_heads;
  if (key[0] != p.batch || key[1] != p.seq || value[0] != p.batch || value[1] != p.seq) {
    fail(kOpName, ": inputs 'key' ", shape_str(key), " and 'value' ", shape_str(value),
         " must have the batch and sequence dims of query ", shape_str(query));
  }
  if (key[2] != p.kv_heads * p.head_dim) {
    fail(kOpName, ": input 'key' must have width kv_num_heads * D = ", p.kv_heads, " * ", p.head_dim, " = ",
         p.kv_heads * p.head_dim, " (D from query), got shape ", shape_str(key));
  }
  if (value[2] % p.kv_heads != 0) {
    fail(kOpName, ": value width ", value[2], " (dim 2) must be kv_num_heads (", p.kv_heads, ") * value head size");
  }
  p.v_head_dim = value[2] / p.kv_heads;

  const bool has_past_key = s.inputs[kPastKey].has_value(), has_past_value = s.inputs[kPastValue].has_value();
  if (has_past_key != has_past_value) fail(kOpName, ": inputs 'past_key' and 'past_value' must be given together");
  if (has_past_key) {
    const Shape& pk = expect_rank(s, kPastKey, 4, "[B, Hkv, P, D]");
    const Shape& pv = expect_rank(s, kPastValue, 4, "[B, Hkv, P, Dv]");
    if (pk[0] != p.batch || pk[1] != p.kv_heads || pk[3] != p.head_dim) {
      fail(kOpName, ": input 'past_key' must be [B, Hkv, P, D] = [", p.batch, ", ", p.kv_heads, ", P, ", p.head_dim,
           "], got ", shape_str(pk));
    }
    if (pv[0] != p.batch || pv[1] != p.kv_heads || pv[3] != p.v_head_dim) {
      fail(kOpName, ": input 'past_value' must be [B, Hkv, P, Dv] = [", p.batch, ", ", p.kv_heads, ", P, ",
           p.v_head_dim, "], got ", shape_str(pv));
    }
    if (pk[2] != pv[2]) {
      fail(kOpName, ": past_key and past_value must hold the same number of tokens, got ", shape_str(pk), " and ",
           shape_str(pv));
    }
    p.mode = s.inputs[kPastLengths] ? CacheMode::kShared : CacheMode::kConcat;
    p.past = p.mode == CacheMode::kConcat ? pk[2] : 0;
    p.total = p.mode == CacheMode::kConcat ? pk[2] + p.seq : pk[2];
  } else {
    if (s.inputs[kPastLengths]) fail(kOpName, ": input 'past_lengths' (shared-buffer mode) needs past_key and past_value");
    p.total = p.seq;
  }
  if (p.mode == CacheMode::kShared) expect_shape(s, kPastLengths, {p.batch}, "[B]");
  if ((p.has_position_ids = s.inputs[kPositionIds].has_value())) expect_shape(s, kPositionIds, {p.batch, p.seq}, "[B, S]");
  if ((p.q_norm = s.inputs[kQNorm].has_value())) expect_shape(s, kQNorm, {p.head_dim}, "[D]");
  if ((p.k_norm = s.inputs[kKNorm].has_value())) expect_shape(s, kKNorm, {p.head_dim}, "[D]");
  if ((p.has_mask = s.inputs[kMask].has_value())) expect_shape(s, kMask, {p.batch, p.total}, "[B, total keys]");
  if ((p.has_sinks = s.inputs[kSinks].has_value())) expect_shape(s, kSinks, {p.q_heads}, "[num_heads]");

  p.rope = a.rope != 0;
  p.rotary_dim = p.rope ? (a.rotary_dim ? a.rotary_dim : p.head_dim) : 0;
  if (p.rope && p.rotary_dim % 2 != 0) {
    fail(kOpName, ": rotary_dim must be even, got ", p.rotary_dim, a.rotary_dim ? "" : " (rotary_dim=0 means D, which is odd)");
  }
  if (p.rotary_dim > p.head_dim) fail(kOpName, ": rotary_dim (", p.rotary_dim, ") must be <= D (", p.head_dim, ")");
  if ((p.has_inv_freq = s.inputs[kInvFreq].has_value()) && p.rope) {
    expect_shape(s, kInvFreq, {p.rotary_dim / 2}, "[rotary_dim / 2]");
  }
  p.rope_interleaved = a.rope_interleaved != 0;
  p.rope_base = a.rope_base;
  p.rope_attention_scaling = a.rope_attention_scaling;
  p.qk_norm_epsilon = a.qk_norm_epsilon;
  p.causal = a.causal != 0;
  p.window = a.window;
  p.attention_chunk = a.attention_chunk;
  p.softcap = a.softcap;
  p.scale = a.scale != 0.0f ? a.scale : 1.0f / std::sqrt(float(p.head_dim));
  return p;
}

}  // namespace onnxattn::gqa
