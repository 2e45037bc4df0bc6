#include "common/ort_adapter.h"

#include <atomic>
#include <exception>
#include <mutex>

namespace onnxattn::ort {
namespace {

// Which attribute kinds the node carries under `name`, probed through the C API (which reports a kind
// mismatch and a missing attribute alike, as an error status).
std::string attribute_kind(const OrtKernelInfo* info, const char* name) {
  const OrtApi& api = Ort::GetApi();
  auto present = [](OrtStatus* status) {
    const bool ok = status == nullptr;
    if (status) Ort::GetApi().ReleaseStatus(status);
    return ok;
  };
  int64_t i = 0;
  float f = 0.0f;
  size_t size = 0;
  if (present(api.KernelInfoGetAttribute_int64(info, name, &i))) return "int";
  if (present(api.KernelInfoGetAttribute_float(info, name, &f))) return "float";
  if (present(api.KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "string";
  if (present(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size))) return "ints";
  if (present(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size))) return "floats";
  return "";
}

}  // namespace

int64_t int_attribute(const OrtKernelInfo* info, const char* op, const char* name, int64_t fallback) {
  int64_t value = 0;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status == nullptr) return value;
  Ort::GetApi().ReleaseStatus(status);
  const std::string kind = attribute_kind(info, name);
  if (!kind.empty()) fail(op, ": attribute '", name, "' must be an int, got a ", kind);
  return fallback;
}

float float_attribute(const OrtKernelInfo* info, const char* op, const char* name, float fallback) {
  float value = 0.0f;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_float(info, name, &value);
  if (status == nullptr) return value;
  Ort::GetApi().ReleaseStatus(status);
  const std::string kind = attribute_kind(info, name);
  if (!kind.empty()) fail(op, ": attribute '", name, "' must be a float, got a ", kind);
  return fallback;
}

std::vector<int64_t> shape_of(const Ort::ConstValue& value) { return value.GetTensorTypeAndShapeInfo().GetShape(); }

ONNXTensorElementDataType element_type_of(const Ort::ConstValue& value) {
  return value.GetTensorTypeAndShapeInfo().GetElementType();
}

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    default: return "another type";
  }
}

Ort::ConstValue optional_input(const Ort::KernelContext& ctx, size_t index) {
  if (index >= ctx.GetInputCount()) return Ort::ConstValue{nullptr};
  return ctx.GetInput(index);
}

namespace {

// One ParallelFor call: the body, and the first exception any item threw.
struct ParallelCall {
  const std::function<void(int64_t)>* body;
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::exception_ptr error;
};

}  // namespace

ParallelFor intra_op_parallel_for(const Ort::KernelContext& ctx) {
  return [&ctx](int64_t count, const std::function<void(int64_t)>& body) {
    if (count <= 0) return;
    if (count == 1) return body(0);
    // No exception may leave an item: onnxruntime's pool runs items on its threads through a C callback, and
    // one escaping (e.g. a std::length_error from a buffer sized by a huge attribute) would terminate a worker
    // or unwind the caller while other workers still run items over its stack (seen: a later segfault). The
    // first one is kept, the remaining items are skipped, and it is rethrown here once every item is done.
    ParallelCall call{&body, {false}, {}, {}};
    auto trampoline = [](void* user, size_t i) noexcept {
      auto* c = static_cast<ParallelCall*>(user);
      if (c->failed.load(std::memory_order_relaxed)) return;
      try {
        (*c->body)(int64_t(i));
      } catch (...) {
        std::lock_guard<std::mutex> lock(c->mutex);
        if (!c->failed.exchange(true)) c->error = std::current_exception();
      }
    };
    // num_batch = 0: onnxruntime balances the items dynamically over its intra-op threads.
    ctx.ParallelFor(trampoline, size_t(count), 0, &call);
    if (call.error) std::rethrow_exception(call.error);
  };
}

}  // namespace onnxattn::ort
