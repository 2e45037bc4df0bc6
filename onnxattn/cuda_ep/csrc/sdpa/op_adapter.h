#pragma once
// The onnxruntime adapter of ScaledDotProductAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc)
// kernels: attribute reading (at session creation), the input checks that fill Params through the
// shared validation, and the op's signature. Each provider adds only its Compute.
#include "common/ort_adapter.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa::adapter {

enum Input : size_t { kQ = 0, kK = 1, kV = 2, kMask = 3, kNumInputs = 4 };
enum Output : size_t { kY = 0, kLse = 1, kNumOutputs = 2 };

inline Attributes read_attributes(const OrtKernelInfo* info) {
  Attributes a;
  a.causal = ort::int_attribute(info, kOpName, "causal", a.causal);
  a.window = ort::int_attribute(info, kOpName, "window", a.window);
  a.band = ort::int_attribute(info, kOpName, "band", a.band);
  a.scale = ort::float_attribute(info, kOpName, "scale", a.scale);
  a.softcap = ort::float_attribute(info, kOpName, "softcap", a.softcap);
  check_attributes(a);
  return a;
}

// The tensors of one call, checked: shapes through make_params, the mask's element type here.
template <typename T>
struct Call {
  Params params;
  Tensors<T> tensors;
};

template <typename T>
Call<T> prepare(const Attributes& attrs, Ort::KernelContext& ctx) {
  const Ort::ConstValue q = ctx.GetInput(kQ), k = ctx.GetInput(kK), v = ctx.GetInput(kV);
  const Ort::ConstValue mask = ort::optional_input(ctx, kMask);
  Shapes shapes{ort::shape_of(q), ort::shape_of(k), ort::shape_of(v), std::nullopt};
  MaskKind mask_kind = MaskKind::kNone;
  if (mask) {
    shapes.mask = ort::shape_of(mask);
    const ONNXTensorElementDataType type = ort::element_type_of(mask);
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL) {
      mask_kind = MaskKind::kBool;
    } else if (type == ort::TypeOf<T>::value) {
      mask_kind = MaskKind::kAdditive;
    } else {
      fail(kOpName, ": input 'attn_mask' must be bool or ", ort::type_name(ort::TypeOf<T>::value),
           " (the type of Q), got ", ort::type_name(type));
    }
  }
  const bool want_lse = ctx.GetOutputCount() > kLse;
  Call<T> call{make_params(shapes, mask_kind, attrs, want_lse), {}};
  Ort::UnownedValue y = ctx.GetOutput(kY, output_shape(call.params));
  Ort::UnownedValue lse{nullptr};
  if (want_lse) lse = ctx.GetOutput(kLse, lse_shape(call.params));
  call.params.want_lse = bool(lse);
  call.tensors.q = ort::data_of<T>(q);
  call.tensors.k = ort::data_of<T>(k);
  call.tensors.v = ort::data_of<T>(v);
  if (mask_kind == MaskKind::kBool) call.tensors.bool_mask = ort::data_of<bool>(mask);
  if (mask_kind == MaskKind::kAdditive) call.tensors.additive_mask = ort::data_of<T>(mask);
  call.tensors.y = ort::data_of<T>(y);
  call.tensors.lse = ort::data_of<float>(lse);
  return call;
}

// The op's signature, shared by every provider; Derived supplies the provider name, Kernel the Compute.
template <typename Derived, typename Kernel, typename T>
struct OpBase : Ort::CustomOpBase<Derived, Kernel, /*WithStatus=*/true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return ort::guarded([&] { *kernel = new Kernel{read_attributes(info)}; });
  }
  const char* GetName() const { return kOpName; }
  size_t GetInputTypeCount() const { return kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    // The mask may be bool or T; the kernel checks which.
    return index == kMask ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : ort::TypeOf<T>::value;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == kMask ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return kNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == kLse ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ort::TypeOf<T>::value;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == kLse ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
};

}  // namespace onnxattn::sdpa::adapter
