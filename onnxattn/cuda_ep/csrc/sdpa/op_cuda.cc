// The CUDA kernel of ScaledDotProductAttention for onnxruntime (built only with CUDA): the shared adapter
// (op_adapter.h) plus a Compute that plans, takes scratch from onnxruntime's allocator for the input's
// device, and enqueues the kernels on onnxruntime's compute stream. Nothing here synchronises the host.
#include <stdexcept>

#include "sdpa/cuda_kernel.h"
#include "sdpa/op.h"
#include "sdpa/op_adapter.h"

namespace onnxattn::sdpa {
namespace {

using adapter::Call;
using adapter::OpBase;
using adapter::prepare;

// Device scratch from onnxruntime's allocator for `memory_info`. KernelContext_GetScratchBuffer
// allocates against the kernel's compute stream, so returning the block right after the launch is safe:
// the allocator hands it out again only to work ordered after ours on that stream.
class DeviceScratch {
 public:
  DeviceScratch(OrtKernelContext* ctx, const OrtMemoryInfo* memory_info, size_t bytes) {
    if (bytes == 0) return;
    const OrtApi& api = Ort::GetApi();
    Ort::ThrowOnError(api.KernelContext_GetAllocator(ctx, memory_info, &allocator_));
    try {
      Ort::ThrowOnError(api.KernelContext_GetScratchBuffer(ctx, memory_info, bytes, &data_));
      if (data_ == nullptr) throw std::runtime_error(str_cat(kOpName, ": onnxruntime returned no scratch buffer"));
    } catch (...) {
      api.ReleaseAllocator(allocator_);  // the destructor does not run when the constructor throws
      throw;
    }
  }
  ~DeviceScratch() {
    if (data_ != nullptr) allocator_->Free(allocator_, data_);
    if (allocator_ != nullptr) Ort::GetApi().ReleaseAllocator(allocator_);
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  void* data() const { return data_; }

 private:
  OrtAllocator* allocator_ = nullptr;
  void* data_ = nullptr;
};

template <typename T>
struct CudaKernel {
  Attributes attrs;

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return ort::guarded([&] {
      Ort::KernelContext ctx(raw_context);
      const Call<T> call = prepare<T>(attrs, ctx);
      const Ort::ConstMemoryInfo memory = ctx.GetInput(adapter::kQ).GetTensorMemoryInfo();
      const cuda::LaunchPlan plan = cuda::plan_for(call.params, call.tensors, cuda::device_info(memory.GetDeviceId()));
      DeviceScratch scratch(raw_context, memory, plan.scratch_bytes);
      cuda::run(call.params, call.tensors, plan, ctx.GetGPUComputeStream(), scratch.data(), plan.scratch_bytes);
    });
  }
};

template <typename T>
struct CudaOp : OpBase<CudaOp<T>, CudaKernel<T>, T> {
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
};

}  // namespace

template <typename T>
const OrtCustomOp* cuda_op() {
  static const CudaOp<T> op;
  return &op;
}

template const OrtCustomOp* cuda_op<float>();
template const OrtCustomOp* cuda_op<Float16>();
template const OrtCustomOp* cuda_op<BFloat16>();

}  // namespace onnxattn::sdpa
