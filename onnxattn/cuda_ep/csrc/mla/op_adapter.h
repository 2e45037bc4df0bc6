#pragma once
// The onnxruntime adapter of MultiHeadLatentAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc)
// kernels: attributes at session creation; per call, shapes through make_params and the tensors'
// pointers; the op's signature, including the in-place declaration of the latent caches.
#include <tuple>

#include "common/custom_op.h"
#include "mla/params.h"

namespace onnxattn::mla::adapter {

inline Attributes read_attributes(const OrtKernelInfo* info) {
  Attributes a;
  a.num_heads = ort::int_attribute(info, kOpName, "num_heads", a.num_heads);
  a.kv_num_heads = 1;
  a.causal = ort::int_attribute(info, kOpName, "causal", a.causal);
  a.window = ort::int_attribute(info, kOpName, "window", a.window);
  a.softcap = ort::float_attribute(info, kOpName, "softcap", a.softcap);
  a.scale = ort::float_attribute(info, kOpName, "scale", a.scale);
  a.rope = 1;
  a.rope_base = ort::float_attribute(info, kOpName, "rope_base", a.rope_base);
  a.rope_interleaved = ort::int_attribute(info, kOpName, "rope_interleaved", a.rope_interleaved);
  a.rope_attention_scaling = ort::float_attribute(info, kOpName, "rope_attention_scaling", a.rope_attention_scaling);
  mla::check_attributes(a);  // qualified: gqa::check_attributes is found by argument lookup too
  return a;
}

inline ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
  switch (index) {
    case kPastLengths:
    case kPositionIds: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case kInvFreq: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case kKeyIndices: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    default: return t;
  }
}

// One call's checked shapes and pointers; present_* are null when the node does not ask for them, and may
// equal past_* (shared-buffer mode with I/O binding, or onnxruntime reusing the buffers as GetMayInplace
// allows): the kernel then writes only the new tokens.
template <typename T>
struct Call {
  Params params;
  Tensors<T> tensors;
};

template <typename T>
Call<T> prepare(const Attributes& attrs, Ort::KernelContext& ctx) {
  Ort::ConstValue inputs[kNumInputs];
  Shapes shapes;
  ort::read_inputs(ctx, inputs, shapes);
  Call<T> call{make_params(shapes, attrs), {}};
  const Params& p = call.params;
  Tensors<T>& t = call.tensors;
  t.query = ort::data_of<T>(inputs[kQuery]);
  t.latent = ort::data_of<T>(inputs[kLatent]);
  t.k_rope = ort::data_of<T>(inputs[kKRope]);
  t.w_uk = ort::data_of<T>(inputs[kWUk]);
  t.w_uv = ort::data_of<T>(inputs[kWUv]);
  t.past_latent = ort::data_of<T>(inputs[kPastLatent]);
  t.past_k_rope = ort::data_of<T>(inputs[kPastKRope]);
  t.past_lengths = ort::data_of<int64_t>(inputs[kPastLengths]);
  t.position_ids = ort::data_of<int64_t>(inputs[kPositionIds]);
  t.inv_freq = ort::data_of<float>(inputs[kInvFreq]);
  t.key_indices = ort::data_of<int64_t>(inputs[kKeyIndices]);

  Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
  t.output = ort::data_of<T>(output);
  std::tie(t.present_latent, t.present_k_rope) =
      ort::paired_outputs<T>(ctx, kOpName, kPresentLatent, "present_latent", p.present_shape(p.rank), "present_k_rope",
                             p.present_shape(p.rope_dim));
  return call;
}

// The op's signature, shared by every provider (common/custom_op.h): present_latent/present_k_rope may reuse
// past_latent/past_k_rope's buffers (shared-buffer mode).
struct Signature : ort::SignatureBase<Signature> {
  static constexpr const char* kName = kOpName;
  static constexpr size_t kInputs = kNumInputs, kOutputs = kNumOutputs, kRequiredInputs = kWUv + 1;
  static constexpr int kCacheInputs[2] = {int(kPastLatent), int(kPastKRope)};
  static constexpr int kCacheOutputs[2] = {int(kPresentLatent), int(kPresentKRope)};
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return adapter::input_type(index, t);
  }
  static Attributes read_attributes(const OrtKernelInfo* info) { return adapter::read_attributes(info); }
};

}  // namespace onnxattn::mla::adapter
