#pragma once
#include <cstdint>
#include <functional>

namespace onnxattn {

// Runs body(i) for i in [0, count), possibly in parallel. Supplied by the caller (onnxruntime's intra-op
// thread pool in the adapter), so kernels own no threads and honour the session's thread settings.
using ParallelFor = std::function<void(int64_t count, const std::function<void(int64_t)>& body)>;

inline void serial_for(int64_t count, const std::function<void(int64_t)>& body) {
  for (int64_t i = 0; i < count; ++i) body(i);
}

}  // namespace onnxattn
