#pragma once
// The onnxruntime adapter of ScaledDotProductAttention shared by the CPU (op.cc) and CUDA (op_cuda.cc)
// kernels: attribute reading (at session creation), the input checks that fill Params through the
// shared validation, and the op's signature. Each provider adds only its Compute.
#include "common/custom_op.h"
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

// The op's signature, shared by every provider (common/custom_op.h).
struct Signature : ort::SignatureBase<Signature> {
  static constexpr const char* kName = kOpName;
  static constexpr size_t kInputs = kNumInputs, kOutputs = kNumOutputs, kRequiredInputs = kMask;
  static ONNXTensorElementDataType input_type(size_t index, ONNXTensorElementDataType t) {
    return index == kMask ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED : t;  // bool or T; the kernel checks which
  }
  static ONNXTensorElementDataType output_type(size_t index, ONNXTensorElementDataType t) {
    return index == kLse ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : t;
  }
  static Attributes read_attributes(const OrtKernelInfo* info) { return adapter::read_attributes(info); }
};

}  // namespace onnxattn::sdpa::adapter
