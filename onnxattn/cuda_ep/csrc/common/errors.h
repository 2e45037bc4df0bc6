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

}  // namespace onnxattn
