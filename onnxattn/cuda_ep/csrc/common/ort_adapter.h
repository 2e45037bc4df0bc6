#pragma once
// Helpers for the thin onnxruntime adapters of each op: attribute reading with type checks, shapes,
// element types, the intra-op thread pool, and exception-to-status conversion. Kernels never include this.
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/errors.h"
#include "common/half.h"
#include "common/parallel.h"

namespace onnxattn::ort {

// Runs f and converts an InputError into INVALID_ARGUMENT and any other exception into FAIL.
template <typename F>
OrtStatusPtr guarded(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const InputError& e) {
    return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, e.what());
  } catch (...) {
    return Ort::GetApi().CreateStatus(ORT_FAIL, "onnxattn: unknown error");
  }
}

// Attribute value, or `fallback` when the node does not set it. A value of another type is an InputError
// naming the op and the attribute.
int64_t int_attribute(const OrtKernelInfo* info, const char* op, const char* name, int64_t fallback);
float float_attribute(const OrtKernelInfo* info, const char* op, const char* name, float fallback);

std::vector<int64_t> shape_of(const Ort::ConstValue& value);
ONNXTensorElementDataType element_type_of(const Ort::ConstValue& value);
const char* type_name(ONNXTensorElementDataType type);

// Input `index`, or an empty value when the node omits this optional input.
Ort::ConstValue optional_input(const Ort::KernelContext& ctx, size_t index);

// Every input of the node (empty values for omitted optional ones) and, in `shapes` (an op's Shapes: optional
// shapes by input index), the shapes of those present.
template <size_t N, typename Shapes>
void read_inputs(const Ort::KernelContext& ctx, Ort::ConstValue (&inputs)[N], Shapes& shapes) {
  for (size_t i = 0; i < N; ++i) {
    inputs[i] = optional_input(ctx, i);
    if (inputs[i]) shapes.inputs[i] = shape_of(inputs[i]);
  }
}

// Runs on the session's intra-op thread pool.
ParallelFor intra_op_parallel_for(const Ort::KernelContext& ctx);

template <typename T>
struct TypeOf;
template <>
struct TypeOf<float> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};
template <>
struct TypeOf<Float16> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
};
template <>
struct TypeOf<BFloat16> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
};

template <typename T>
const T* data_of(const Ort::ConstValue& value) {
  return value ? static_cast<const T*>(value.GetTensorRawData()) : nullptr;
}
template <typename T>
T* data_of(Ort::UnownedValue& value) {
  return value ? static_cast<T*>(value.GetTensorMutableRawData()) : nullptr;
}

// A node's two optional cache outputs `first` and `first + 1`, which go together (as the ops' signatures): both
// allocated at their shapes, or neither (two nulls); one without the other is an InputError naming the op, since
// the kernel would leave the other unwritten.
template <typename T>
std::pair<T*, T*> paired_outputs(Ort::KernelContext& ctx, const char* op, size_t first, const char* first_name,
                                 const std::vector<int64_t>& first_shape, const char* second_name,
                                 const std::vector<int64_t>& second_shape) {
  if (ctx.GetOutputCount() <= first) return {nullptr, nullptr};
  Ort::UnownedValue a = ctx.GetOutput(first, first_shape);
  Ort::UnownedValue b{nullptr};
  if (ctx.GetOutputCount() > first + 1) b = ctx.GetOutput(first + 1, second_shape);
  if (!a || !b) fail(op, ": outputs '", first_name, "' and '", second_name, "' must be requested together");
  return {data_of<T>(a), data_of<T>(b)};
}

}  // namespace onnxattn::ort
