// The CPU kernel of GroupQueryAttention for onnxruntime: the shared adapter (op_adapter.h) plus a Compute
// that gives the kernel host buffers for the present caches when the node does not ask for them.
#include "gqa/op.h"

#include <memory>

#include "gqa/cpu_kernel.h"
#include "gqa/op_adapter.h"

namespace onnxattn::gqa {
namespace {

using adapter::Call;
using adapter::OpBase;
using adapter::prepare;

// A host buffer for a present cache the node does not ask for: from onnxruntime's CPU allocator, whose arena
// hands the same block out again call after call (a fresh new[] of the caches, 16 MiB at S = 2048 with 8 KV
// heads of 128, page-faulted on every prefill: ~3% of it), or new[] where onnxruntime gives no allocator.
template <typename T>
class HostBuffer {
 public:
  HostBuffer(OrtKernelContext* ctx, size_t count) {
    const OrtApi& api = Ort::GetApi();
    const Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    if (OrtStatus* status = api.KernelContext_GetAllocator(ctx, info, &allocator_)) {
      api.ReleaseStatus(status);
      allocator_ = nullptr;
    }
    if (allocator_ != nullptr) data_ = static_cast<T*>(allocator_->Alloc(allocator_, (count > 0 ? count : 1) * sizeof(T)));
    if (data_ == nullptr) {
      fallback_.reset(new T[count]);
      data_ = fallback_.get();
    }
  }
  ~HostBuffer() {
    if (allocator_ != nullptr) {
      if (fallback_ == nullptr && data_ != nullptr) allocator_->Free(allocator_, data_);
      Ort::GetApi().ReleaseAllocator(allocator_);
    }
  }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  T* get() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  T* data_ = nullptr;
  std::unique_ptr<T[]> fallback_;
};

template <typename T>
struct CpuKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      Call<T> call = prepare<T>(attrs, ctx);
      const Params& p = call.params;
      Tensors<T>& t = call.tensors;
      std::unique_ptr<HostBuffer<T>> scratch_key, scratch_value;
      if (!t.present_key) {
        scratch_key.reset(new HostBuffer<T>(raw_context, size_t(p.batch * p.kv_heads * p.total * p.head_dim)));
        t.present_key = scratch_key->get();
      }
      if (!t.present_value) {
        scratch_value.reset(new HostBuffer<T>(raw_context, size_t(p.batch * p.kv_heads * p.total * p.v_head_dim)));
        t.present_value = scratch_value->get();
      }
      run_cpu<T>(p, t, ort::intra_op_parallel_for(ctx));
    });
  }
};

template <typename T>
struct CpuOp : OpBase<CpuOp<T>, CpuKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
};

}  // namespace

template <typename T>
const OrtCustomOp* cpu_op() {
  static const CpuOp<T> op;
  return &op;
}

template const OrtCustomOp* cpu_op<float>();
template const OrtCustomOp* cpu_op<Float16>();
template const OrtCustomOp* cpu_op<BFloat16>();

}  // namespace onnxattn::gqa
