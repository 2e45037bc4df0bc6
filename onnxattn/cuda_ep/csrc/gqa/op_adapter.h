#pragma once
// The onnxruntime adapter of GroupQueryAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc) kernels:
// attributes at session creation; per call, shapes through make_params and the tensors' pointers (the
// present outputs when the node asks for them); the op's signature, including the in-place declaration
// of the KV-cache buffers. Each provider adds only its Compute.
#include "common/ort_adapter.h"
#include "gqa/attributes.h"
#include "gqa/params.h"

namespace onnxattn::gqa::adapter {

inline ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
  switch (index) {
    case kPastLengths:
    case kPositionIds: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case kInvFreq: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case kMask: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
    default: return t;
  }
}

// One call's checked shapes and pointers. present_key/present_value are null when the node does not ask
// for them (the kernel then needs its own buffers); they may equal past_key/past_value (shared-buffer
// mode with I/O binding, or onnxruntime reusing the buffers in place as GetMayInplace allows), and the
// kernel then writes only the new tokens.
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
  t.key = ort::data_of<T>(inputs[kKey]);
  t.value = ort::data_of<T>(inputs[kValue]);
  t.past_key = ort::data_of<T>(inputs[kPastKey]);
  t.past_value = ort::data_of<T>(inputs[kPastValue]);
  t.past_lengths = ort::data_of<int64_t>(inputs[kPastLengths]);
  t.position_ids = ort::data_of<int64_t>(inputs[kPositionIds]);
  t.q_norm_weight = ort::data_of<T>(inputs[kQNorm]);
  t.k_norm_weight = ort::data_of<T>(inputs[kKNorm]);
  t.inv_freq = ort::data_of<float>(inputs[kInvFreq]);
  t.attention_mask = ort::data_of<bool>(inputs[kMask]);
  t.sinks = ort::data_of<T>(inputs[kSinks]);

  Ort::UnownedValue output = ctx.GetOutput(kOutput, p.output_shape());
  t.output = ort::data_of<T>(output);
  if (ctx.GetOutputCount() > kPresentValue) {
    Ort::UnownedValue present_key = ctx.GetOutput(kPresentKey, p.present_shape(p.head_dim));
    Ort::UnownedValue present_value = ctx.GetOutput(kPresentValue, p.present_shape(p.v_head_dim));
    t.present_key = ort::data_of<T>(present_key);
    t.present_value = ort::data_of<T>(present_value);
  }
  return call;
}

// The op's signature, shared by every provider; Derived supplies the provider name, Kernel the Compute
// (constructed from the attributes).
template <typename Derived, typename Kernel, typename T>
struct OpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  OpBase() {
    // present_key/present_value may reuse past_key/past_value's buffers (shared-buffer mode).
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[2]{int(kPastKey), int(kPastValue)};
      *output_index = new int[2]{int(kPresentKey), int(kPresentValue)};
      return 2;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new Kernel{read_attributes(info, kOpName)}; });
  }
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const { return input_type(index, ort::TypeOf<T>::value); }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index <= kValue ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ort::TypeOf<T>::value; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == kOutput ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace onnxattn::gqa::adapter
