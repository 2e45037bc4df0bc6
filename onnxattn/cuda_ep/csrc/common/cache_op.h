#pragma once
// The onnxruntime custom-op signature of the fused attention ops that carry a cache (GroupQueryAttention,
// MultiHeadLatentAttention, PagedAttention), shared by their CPU and CUDA registrations. `Signature` says
// what differs: the op's name (kName), its input and output counts (kInputs, kOutputs), how many leading
// inputs are required (kRequiredInputs; the rest are optional), the two cache inputs the two cache outputs
// may overwrite in place (kCacheInputs -> kCacheOutputs: shared-buffer mode, or onnxruntime reusing the
// buffers), each input's element type (input_type) and the attributes (read_attributes). Every output has
// type T; only output 0 is required.
#include "common/ort_adapter.h"

namespace onnxattn::ort {

template <typename Derived, typename Kernel, typename T, typename Signature>
struct CacheOpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  CacheOpBase() {
    OrtCustomOp::GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[2]{Signature::kCacheInputs[0], Signature::kCacheInputs[1]};
      *output_index = new int[2]{Signature::kCacheOutputs[0], Signature::kCacheOutputs[1]};
      return 2;
    };
    OrtCustomOp::ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&] { *kernel = new Kernel{Signature::read_attributes(info)}; });
  }
  const char* GetName() const { return Signature::kName; }
  size_t GetInputTypeCount() const { return Signature::kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return Signature::input_type(index, TypeOf<T>::value);
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < Signature::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return Signature::kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return TypeOf<T>::value; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

}  // namespace onnxattn::ort
