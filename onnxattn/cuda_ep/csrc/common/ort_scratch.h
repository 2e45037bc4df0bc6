#pragma once
// Scratch for a custom-op kernel from onnxruntime's allocator of `memory_info`'s device: never a cudaMalloc
// or a fresh page-faulting new[] per call (the arena hands the same blocks out again). On a CUDA device,
// KernelContext_GetScratchBuffer allocates against the kernel's compute stream, so returning the block right
// after the launches is safe: the allocator hands it out again only to work ordered after ours on that stream.
#include <onnxruntime_cxx_api.h>

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>

namespace onnxattn::ort {

class Scratch {
 public:
  Scratch(OrtKernelContext* ctx, const OrtMemoryInfo* memory_info, size_t bytes, const char* op) {
    if (bytes == 0) return;
    const OrtApi& api = Ort::GetApi();
    Ort::ThrowOnError(api.KernelContext_GetAllocator(ctx, memory_info, &allocator_));
    try {
      Ort::ThrowOnError(api.KernelContext_GetScratchBuffer(ctx, memory_info, bytes, &data_));
      if (data_ == nullptr) throw std::runtime_error(std::string(op) + ": onnxruntime returned no scratch buffer");
    } catch (...) {
      api.ReleaseAllocator(allocator_);  // the destructor does not run when the constructor throws
      throw;
    }
  }
  ~Scratch() {
    if (data_ != nullptr) allocator_->Free(allocator_, data_);
    if (allocator_ != nullptr) Ort::GetApi().ReleaseAllocator(allocator_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

// `count` elements of T from onnxruntime's CPU arena, held by `holder`: for an output a node does not ask for but
// the CPU kernel writes (a present cache), where a fresh new[] would be page-faulted in on every call.
template <typename T>
T* host_scratch(OrtKernelContext* ctx, size_t count, const char* op, std::unique_ptr<Scratch>& holder) {
  const Ort::MemoryInfo host = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  holder = std::make_unique<Scratch>(ctx, host, (count > 0 ? count : 1) * sizeof(T), op);
  return static_cast<T*>(holder->data());
}

}  // namespace onnxattn::ort
