#pragma once
// The onnxruntime adapter of MultiHeadLatentAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc)
// kernels: attributes at session creation; per call, shapes through make_params and the tensors'
// pointers; the op's signature, including the in-place declaration of the latent caches.
#include "common/ort_adapter.h"
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
  for (size_t i = 0; i < kNumInputs; ++i) {
    inputs[i] = ort::optional_input(ctx, i);
    if (inputs[i]) shapes.inputs[i] = ort::shape_of(inputs[i]);
  }
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

  Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
  t.output = ort::data_of<T>(output);
  if (ctx.GetOutputCount() > kPresentKRope) {
    Ort::UnownedValue present_latent = ctx.GetOutput(kPresentLatent, p.present_shape(p.rank));
    Ort::UnownedValue present_k_rope = ctx.GetOutput(kPresentKRope, p.present_shape(p.rope_dim));
    t.present_latent = ort::data_of<T>(present_latent);
    t.present_k_rope = ort::data_of<T>(present_k_rope);
  }
  return call;
}

template <typename Derived, typename Kernel, typename T>
struct OpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  OpBase() {
    // present_latent/present_k_rope may reuse past_latent/past_k_rope's buffers (shared-buffer mode).
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[2]{int(kPastLatent), int(kPastKRope)};
      *output_index = new int[2]{int(kPresentLatent), int(kPresentKRope)};
      return 2;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new Kernel{read_attributes(info)}; });
  }
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return input_type(index, ort::TypeOf<T>::value); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index <= kWUv ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ort::TypeOf<T>::value; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == kOutput ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace onnxattn::mla::adapter
