#pragma once
// Kernel-side input errors. Kernels and parameter checks throw InputError with a message that names the
// op, the input and what was expected; the onnxruntime adapter turns it into an Ort::Status. Nothing here
// depends on onnxruntime.
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace onnxattn {

class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

template <typename... Parts>
std::string str_cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw InputError(str_cat(parts...));
}

// `shape` when it has `rank` dims, none negative; else an InputError naming the op and the input, with the
// expected `layout` (e.g. "[B, S, H*D]").
inline const std::vector<int64_t>& expect_rank(const std::vector<int64_t>& shape, const char* op, const char* input,
                                               size_t rank, const char* layout) {
  if (shape.size() != rank) {
    fail(op, ": input '", input, "' must have rank ", rank, " ", layout, ", got shape ", shape_str(shape));
  }
  for (int64_t d : shape) {
    if (d < 0) fail(op, ": input '", input, "' has a negative dimension: ", shape_str(shape));
  }
  return shape;
}

// expect_rank, and the dims `want` too.
inline void expect_shape(const std::vector<int64_t>& shape, const char* op, const char* input,
                         const std::vector<int64_t>& want, const char* layout) {
  if (expect_rank(shape, op, input, want.size(), layout) != want) {
    fail(op, ": input '", input, "' must be ", layout, " = ", shape_str(want), ", got ", shape_str(shape));
  }
}

}  // namespace onnxattn
