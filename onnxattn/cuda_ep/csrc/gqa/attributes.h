#pragma once
// Reading the decoder attention attributes (GroupQueryAttention, PagedAttention) from an onnxruntime node.
#include "common/ort_adapter.h"
#include "gqa/params.h"

namespace onnxattn::gqa {

// Attribute values with the schema's defaults; InputError names `op` and the attribute when invalid.
inline Attributes read_attributes(const OrtKernelInfo* info, const char* op) {
  Attributes a;
  a.num_heads = ort::int_attribute(info, op, "num_heads", a.num_heads);
  a.kv_num_heads = ort::int_attribute(info, op, "kv_num_heads", a.kv_num_heads);
  a.causal = ort::int_attribute(info, op, "causal", a.causal);
  a.window = ort::int_attribute(info, op, "window", a.window);
  a.attention_chunk = ort::int_attribute(info, op, "attention_chunk", a.attention_chunk);
  a.softcap = ort::float_attribute(info, op, "softcap", a.softcap);
  a.scale = ort::float_attribute(info, op, "scale", a.scale);
  a.rope = ort::int_attribute(info, op, "rope", a.rope);
  a.rope_base = ort::float_attribute(info, op, "rope_base", a.rope_base);
  a.rotary_dim = ort::int_attribute(info, op, "rotary_dim", a.rotary_dim);
  a.rope_interleaved = ort::int_attribute(info, op, "rope_interleaved", a.rope_interleaved);
  a.rope_attention_scaling = ort::float_attribute(info, op, "rope_attention_scaling", a.rope_attention_scaling);
  a.qk_norm_epsilon = ort::float_attribute(info, op, "qk_norm_epsilon", a.qk_norm_epsilon);
  check_attributes(a, op);
  return a;
}

}  // namespace onnxattn::gqa
