#pragma once
// The onnxruntime adapter of LightningIndexer shared by the CPU (op.cc) and CUDA (op_cuda.cc) kernels:
// attributes at session creation; per call, shapes through make_params and the tensors' pointers; the signature.
#include "common/ort_adapter.h"
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

// Derived supplies the provider (GetExecutionProviderType), Kernel the ComputeV2.
template <typename Derived, typename Kernel, typename T>
struct OpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new Kernel{read_attributes(info)}; });
  }
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case kWeights: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case kPastLengths: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
      default: return ort::TypeOf<T>::value;
    }
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < kPastLengths ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
};

}  // namespace onnxattn::indexer::adapter
