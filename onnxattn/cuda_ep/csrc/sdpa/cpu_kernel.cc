// Portable instantiation of the CPU flash kernel and the run-time ISA dispatch.
#include "sdpa/cpu_kernel.h"

#include <cstdlib>
#include <cstring>

#include "common/errors.h"
#include "sdpa/cpu_flash_prelude.h"

namespace onnxattn::sdpa {
namespace generic {
#include "sdpa/simd_generic.inc"
#include "sdpa/cpu_flash.inc"
}  // namespace generic

namespace {

enum class Isa { kGeneric, kAvx2, kAvx512 };

Isa best_supported_isa() {
#if ONNXATTN_HAVE_X86_ISAS && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kGeneric;
}

Isa selected_isa() {
  static const Isa best = best_supported_isa();
  // Read on every call so tests can compare the ISA variants within one process.
  const char* forced = std::getenv("ONNXATTN_CPU_ISA");
  if (forced == nullptr || *forced == '\0') return best;
  Isa wanted = best;
  if (std::strcmp(forced, "generic") == 0) wanted = Isa::kGeneric;
  if (std::strcmp(forced, "avx2") == 0) wanted = Isa::kAvx2;
  if (std::strcmp(forced, "avx512") == 0) wanted = Isa::kAvx512;
  return wanted < best ? wanted : best;  // never run an ISA the CPU lacks
}

}  // namespace

const char* cpu_isa() {
  switch (selected_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

namespace {

template <typename T>
void widen_best(const T* src, int64_t n, float* dst) {
  static const Isa best = best_supported_isa();
  switch (best) {
#if ONNXATTN_HAVE_X86_ISAS
    case Isa::kAvx512: return avx512::widen_array(src, n, dst);
    case Isa::kAvx2: return avx2::widen_array(src, n, dst);
#endif
    default: return generic::widen_array(src, n, dst);
  }
}

template <typename T>
void narrow_best(const float* src, int64_t n, T* dst) {
  static const Isa best = best_supported_isa();
  switch (best) {
#if ONNXATTN_HAVE_X86_ISAS
    case Isa::kAvx512: return avx512::narrow_array(src, n, dst);
    case Isa::kAvx2: return avx2::narrow_array(src, n, dst);
#endif
    default: return generic::narrow_array(src, n, dst);
  }
}

}  // namespace

void widen_cpu(const Float16* src, int64_t n, float* dst) { widen_best(src, n, dst); }
void widen_cpu(const BFloat16* src, int64_t n, float* dst) { widen_best(src, n, dst); }
void narrow_cpu(const float* src, int64_t n, Float16* dst) { narrow_best(src, n, dst); }
void narrow_cpu(const float* src, int64_t n, BFloat16* dst) { narrow_best(src, n, dst); }

bool widen_for_test(const char* isa, bool bfloat16, const uint16_t* src, int64_t n, float* dst) {
  // Float16 and BFloat16 are a uint16_t each (common/half.h)
  const auto* half = reinterpret_cast<const Float16*>(src);
  const auto* brain = reinterpret_cast<const BFloat16*>(src);
  const Isa best = best_supported_isa();
  if (std::strcmp(isa, "generic") == 0) {
    bfloat16 ? generic::widen_array(brain, n, dst) : generic::widen_array(half, n, dst);
    return true;
  }
#if ONNXATTN_HAVE_X86_ISAS
  if (std::strcmp(isa, "avx2") == 0 && best >= Isa::kAvx2) {
    bfloat16 ? avx2::widen_array(brain, n, dst) : avx2::widen_array(half, n, dst);
    return true;
  }
  if (std::strcmp(isa, "avx512") == 0 && best >= Isa::kAvx512) {
    bfloat16 ? avx512::widen_array(brain, n, dst) : avx512::widen_array(half, n, dst);
    return true;
  }
#endif
  (void)best;
  return false;
}

bool narrow_for_test(const char* isa, bool bfloat16, const float* src, int64_t n, uint16_t* dst) {
  auto* half = reinterpret_cast<Float16*>(dst);
  auto* brain = reinterpret_cast<BFloat16*>(dst);
  const Isa best = best_supported_isa();
  if (std::strcmp(isa, "generic") == 0) {
    bfloat16 ? generic::narrow_array(src, n, brain) : generic::narrow_array(src, n, half);
    return true;
  }
#if ONNXATTN_HAVE_X86_ISAS
  if (std::strcmp(isa, "avx2") == 0 && best >= Isa::kAvx2) {
    bfloat16 ? avx2::narrow_array(src, n, brain) : avx2::narrow_array(src, n, half);
    return true;
  }
  if (std::strcmp(isa, "avx512") == 0 && best >= Isa::kAvx512) {
    bfloat16 ? avx512::narrow_array(src, n, brain) : avx512::narrow_array(src, n, half);
    return true;
  }
#endif
  (void)best;
  return false;
}

template <typename T, typename TQ>
void run_cpu(const Params& params, const Tensors<T, TQ>& tensors, const ParallelFor& parallel_for) {
  if (tensors.kv_starts != nullptr) fail(kOpName, ": per-sequence pool starts (kv_starts) are a CUDA-only layout");
  switch (selected_isa()) {
#if ONNXATTN_HAVE_X86_ISAS
    case Isa::kAvx512: return avx512::run(params, tensors, parallel_for);
    case Isa::kAvx2: return avx2::run(params, tensors, parallel_for);
#endif
    default: return generic::run(params, tensors, parallel_for);
  }
}

template void run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template void run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template void run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);
template void run_cpu<Float16, float>(const Params&, const Tensors<Float16, float>&, const ParallelFor&);
template void run_cpu<BFloat16, float>(const Params&, const Tensors<BFloat16, float>&, const ParallelFor&);

}  // namespace onnxattn::sdpa
