#pragma once
// The float element types the ops take, from their ONNX codes (TensorProto.DataType): one dispatch for the entry
// points that get a code instead of a typed tensor (the ctypes test entries of sdpa, gqa, paged, mla and the
// indexer).
#include <cstdint>

#include "common/errors.h"
#include "common/half.h"

namespace onnxattn {

// f(float{}), f(Float16{}) or f(BFloat16{}) for code 1, 10 or 16; an InputError naming `op` for any other code.
template <typename F>
decltype(auto) with_element_type(int32_t code, const char* op, F&& f) {
  switch (code) {
    case 1: return f(float{});
    case 10: return f(Float16{});
    case 16: return f(BFloat16{});
    default: fail(op, ": unsupported dtype code ", code, " (1 float32, 10 float16, 16 bfloat16)");
  }
}

}  // namespace onnxattn
