#pragma once
// The one onnxruntime custom-op class of every op, provider and dtype. What differs between ops is their
// `Signature` (in each op's op_adapter.h, deriving from SignatureBase<itself>):
//   kName                   the op's name in the onnxattn domain
//   kInputs, kOutputs       input and output counts
//   kRequiredInputs         how many leading inputs are required (the rest are optional); likewise
//   kRequiredOutputs        (default 1)
//   input_type(i, t)        input i's element type when the op is registered for element type t
//   output_type(i, t)       likewise for outputs (default t)
//   read_attributes(info)   the attributes, read and checked once at session creation
//   kCacheInputs/Outputs    optional: the two cache inputs whose buffers the two cache outputs may take over
//                           (shared-buffer mode, or onnxruntime reusing the buffers)
// and the provider, a tag (OnCpu, OnCuda). Kernel is the per-node state: built from the attributes, it
// has ComputeV2.
#include <type_traits>

#include "common/ort_adapter.h"

namespace onnxattn::ort {

struct OnCpu {
  static constexpr const char* kName = "CPUExecutionProvider";
};
struct OnCuda {
  static constexpr const char* kName = "CUDAExecutionProvider";
};

template <typename Self>
struct SignatureBase {
  static constexpr size_t kRequiredOutputs = 1;
  static ONNXTensorElementDataType output_type(size_t /*index*/, ONNXTensorElementDataType t) { return t; }
};

template <typename Signature, typename = void>
struct HasCacheAliases : std::false_type {};
template <typename Signature>
struct HasCacheAliases<Signature, std::void_t<decltype(Signature::kCacheInputs), decltype(Signature::kCacheOutputs)>>
    : std::true_type {};

template <typename Kernel, typename T, typename Signature, typename Provider>
struct CustomOp : Ort::CustomOpBase<CustomOp<Kernel, T, Signature, Provider>, Kernel, /*WithStatus=*/true> {
  CustomOp() {
    if constexpr (HasCacheAliases<Signature>::value) {
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
  }
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return guarded([&] { *kernel = new Kernel{Signature::read_attributes(info)}; });
  }
  const char* GetName() const { return Signature::kName; }
  const char* GetExecutionProviderType() const { return Provider::kName; }
  size_t GetInputTypeCount() const { return Signature::kInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return Signature::input_type(index, TypeOf<T>::value);
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < Signature::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return Signature::kOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return Signature::output_type(index, TypeOf<T>::value);
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index < Signature::kRequiredOutputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

// The per-node state and Compute of an op whose CPU Compute is only: check the inputs and make the outputs
// (Prepare(attributes, context) -> a call with .params and .tensors), then run the CPU kernel on onnxruntime's
// intra-op threads (Run(params, tensors, parallel_for)).
template <typename Attributes, auto Prepare, auto Run>
struct PreparedCpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const auto call = Prepare(attrs, ctx);
      Run(call.params, call.tensors, intra_op_parallel_for(ctx));
    });
  }
};

// The registered instance (onnxruntime keeps the pointer for the library's lifetime).
template <typename Kernel, typename T, typename Signature, typename Provider>
const OrtCustomOp* custom_op() {
  static const CustomOp<Kernel, T, Signature, Provider> op;
  return &op;
}

}  // namespace onnxattn::ort
