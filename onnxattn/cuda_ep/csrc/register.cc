// The one list of every op this library registers, CPU and CUDA kernels side by side. onnxruntime
// calls RegisterCustomOps when the library is registered on a SessionOptions.
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "build_info.h"

#include "common/half.h"
#include "common/ort_adapter.h"
#include "sdpa/cpu_kernel.h"
#include "gqa/op.h"
#include "indexer/op.h"
#include "mla/op.h"
#include "paged/op.h"
#include "sdpa/op.h"
#include "sparse/op.h"

namespace onnxattn {
namespace {

constexpr const char* kDomain = "onnxattn";

#ifdef ONNXATTN_WITH_CUDA
// The CUDA kernels are registered next to the CPU ones (scripts/gpu_check.sh passed on an H100:
// every GPU test through ctypes and through onnxruntime's CUDA execution provider, compute-sanitizer clean).
// ONNXATTN_DISABLE_CUDA=1, read when the library is first registered in the process, leaves them out: a
// session with the CUDA execution provider then places onnxattn nodes on our CPU kernels (onnxruntime
// copies their tensors), e.g. to tell a CUDA kernel problem from a model problem.
bool cuda_kernels_enabled() {
  const char* flag = std::getenv("ONNXATTN_DISABLE_CUDA");
  return !(flag != nullptr && std::strcmp(flag, "1") == 0);
}
#endif

// Every (op, provider, type) kernel. An op registered for CUDA must also be registered for the CPU with
// the same types: onnxruntime does not fall back to the model's function for a missing CPU kernel.
void add_all_ops(Ort::CustomOpDomain& domain) {
  domain.Add(sdpa::cpu_op<float>());
  domain.Add(sdpa::cpu_op<Float16>());
  domain.Add(sdpa::cpu_op<BFloat16>());
  domain.Add(gqa::cpu_op<float>());
  domain.Add(gqa::cpu_op<Float16>());
  domain.Add(gqa::cpu_op<BFloat16>());
  domain.Add(paged::cpu_op<float>());
  domain.Add(paged::cpu_op<Float16>());
  domain.Add(paged::cpu_op<BFloat16>());
  domain.Add(mla::cpu_op<float>());
  domain.Add(mla::cpu_op<Float16>());
  domain.Add(mla::cpu_op<BFloat16>());
  domain.Add(indexer::cpu_op<float>());
  domain.Add(indexer::cpu_op<Float16>());
  domain.Add(indexer::cpu_op<BFloat16>());
  domain.Add(sparse::nsa_cpu_op<float>());
  domain.Add(sparse::nsa_cpu_op<Float16>());
  domain.Add(sparse::nsa_cpu_op<BFloat16>());
  domain.Add(sparse::routed_cpu_op<float>());
  domain.Add(sparse::routed_cpu_op<Float16>());
  domain.Add(sparse::routed_cpu_op<BFloat16>());
#ifdef ONNXATTN_WITH_CUDA
  if (cuda_kernels_enabled()) {
    domain.Add(sdpa::cuda_op<float>());
    domain.Add(sdpa::cuda_op<Float16>());
    domain.Add(sdpa::cuda_op<BFloat16>());
    domain.Add(gqa::cuda_op<float>());
    domain.Add(gqa::cuda_op<Float16>());
    domain.Add(gqa::cuda_op<BFloat16>());
    domain.Add(paged::cuda_op<float>());
    domain.Add(paged::cuda_op<Float16>());
    domain.Add(paged::cuda_op<BFloat16>());
    domain.Add(sparse::nsa_cuda_op<float>());
    domain.Add(sparse::nsa_cuda_op<Float16>());
    domain.Add(sparse::nsa_cuda_op<BFloat16>());
    domain.Add(sparse::routed_cuda_op<float>());
    domain.Add(sparse::routed_cuda_op<Float16>());
    domain.Add(sparse::routed_cuda_op<BFloat16>());
    domain.Add(mla::cuda_op<float>());
    domain.Add(mla::cuda_op<Float16>());
    domain.Add(mla::cuda_op<BFloat16>());
    domain.Add(indexer::cuda_op<float>());
    domain.Add(indexer::cuda_op<Float16>());
    domain.Add(indexer::cuda_op<BFloat16>());
  }
#endif
}

}  // namespace
}  // namespace onnxattn

#if defined(_WIN32)
#define ONNXATTN_EXPORT __declspec(dllexport)
#else
#define ONNXATTN_EXPORT __attribute__((visibility("default")))
#endif

extern "C" {

ONNXATTN_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    std::fprintf(stderr, "onnxattn: this onnxruntime is older than the headers the library was built with "
                         "(ORT API version %d); no kernels registered\n", ORT_API_VERSION);
    return nullptr;
  }
  Ort::InitApi(api);
  return onnxattn::ort::guarded([&] {
    // onnxruntime keeps a pointer to the domain for the lifetime of every session using it.
    static Ort::CustomOpDomain* domain = [] {
      auto* d = new Ort::CustomOpDomain(onnxattn::kDomain);
      onnxattn::add_all_ops(*d);
      return d;
    }();
    Ort::UnownedSessionOptions(options).Add(*domain);
  });
}

// Build facts for `onnxattn info`: provider list, CUDA architectures, compiler, ORT API version.
ONNXATTN_EXPORT const char* OnnxAttnBuildInfo() {
  static const std::string info = std::string(ONNXATTN_BUILD_INFO) + " ort_api=" + std::to_string(ORT_API_VERSION);
  return info.c_str();
}

ONNXATTN_EXPORT const char* OnnxAttnCpuIsa() { return onnxattn::sdpa::cpu_isa(); }

// For tests: the CPU kernels' 16-bit to float32 conversion of one ISA (sdpa::widen_for_test); 0, or 1 where this CPU
// lacks the ISA.
ONNXATTN_EXPORT int32_t OnnxAttnCpuWidenForTest(const char* isa, int32_t bfloat16, const uint16_t* src, int64_t n,
                                               float* dst) {
  return onnxattn::sdpa::widen_for_test(isa, bfloat16 != 0, src, n, dst) ? 0 : 1;
}

// For tests: the CPU kernels' float32 to 16-bit rounding of one ISA (sdpa::narrow_for_test); 0, or 1 where this CPU
// lacks the ISA.
ONNXATTN_EXPORT int32_t OnnxAttnCpuNarrowForTest(const char* isa, int32_t bfloat16, const float* src, int64_t n,
                                                uint16_t* dst) {
  return onnxattn::sdpa::narrow_for_test(isa, bfloat16 != 0, src, n, dst) ? 0 : 1;
}

}  // extern "C"
