#pragma once
// The onnxruntime adapter of GroupQueryAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc) kernels:
// attributes at session creation; per call, shapes through make_params and the tensors' pointers (the
// present outputs when the node asks for them); the op's signature, including the in-place declaration
// of the KV-cache buffers. Each provider adds only its Compute.
#include <tuple>

#include "common/custom_op.h"
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
  ort::read_inputs(ctx, inputs, shapes);
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
  std::tie(t.present_key, t.present_value) =
      ort::paired_outputs<T>(ctx, kOpName, kPresentKey, "present_key", p.present_shape(p.head_dim), "present_value",
                             p.present_shape(p.v_head_dim));
  return call;
}

// The op's signature, shared by every provider (common/custom_op.h): present_key/present_value may reuse
// past_key/past_value's buffers (shared-buffer mode).
struct Signature : ort::SignatureBase<Signature> {
  static constexpr const char* kName = kOpName;
  static constexpr size_t kInputs = kNumInputs, kOutputs = kNumOutputs, kRequiredInputs = kValue + 1;
  static constexpr int kCacheInputs[2] = {int(kPastKey), int(kPastValue)};
  static constexpr int kCacheOutputs[2] = {int(kPresentKey), int(kPresentValue)};
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return adapter::input_type(index, t);
  }
  static Attributes read_attributes(const OrtKernelInfo* info) { return gqa::read_attributes(info, kOpName); }
};

}  // namespace onnxattn::gqa::adapter
