#pragma once
// The onnxruntime adapter of LightningIndexer shared by the CPU (op.cc) and CUDA (op_cuda.cc) kernels:
// attributes at session creation; per call, shapes through make_params and the tensors' pointers; the signature.
#include "common/custom_op.h"
#include "indexer/params.h"

namespace onnxattn::indexer::adapter {

inline Attributes read_attributes(const OrtKernelInfo* info) {
  Attributes a;
  a.num_heads = ort::int_attribute(info, kOpName, "num_heads", a.num_heads);
  a.top_k = ort::int_attribute(info, kOpName, "top_k", a.top_k);
  a.scale = ort::float_attribute(info, kOpName, "scale", a.scale);
  check_attributes(a);
  return a;
}

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
  Tensors<T>& t = call.tensors;
  t.query = ort::data_of<T>(inputs[kQuery]);
  t.key = ort::data_of<T>(inputs[kKey]);
  t.weights = ort::data_of<float>(inputs[kWeights]);
  t.past_lengths = ort::data_of<int64_t>(inputs[kPastLengths]);
  Ort::UnownedValue output = ctx.GetOutput(0, call.params.output_shape());
  t.key_indices = ort::data_of<int64_t>(output);
  return call;
}

// The op's signature, shared by every provider (common/custom_op.h).
struct Signature : ort::SignatureBase<Signature> {
  static constexpr const char* kName = kOpName;
  static constexpr size_t kInputs = kNumInputs, kOutputs = 1, kRequiredInputs = kPastLengths;
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    switch (index) {
      case kWeights: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case kPastLengths: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
      default: return t;
    }
  }
  static ONNXTensorElementDataType output_type(size_t /*index*/, ONNXTensorElementDataType /*t*/) {
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
  static Attributes read_attributes(const OrtKernelInfo* info) { return adapter::read_attributes(info); }
};

}  // namespace onnxattn::indexer::adapter
