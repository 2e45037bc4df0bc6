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

// The 16-bit conversions of one ISA (the caller checked that this CPU has it).
template <typename T>
void widen_at(Isa isa, const T* src, int64_t n, float* dst) {
  switch (isa) {
#if ONNXATTN_HAVE_X86_ISAS
    case Isa::kAvx512: return avx512::widen_array(src, n, dst);
    case Isa::kAvx2: return avx2::widen_array(src, n, dst);
#endif
    default: return generic::widen_array(src, n, dst);
  }
}

template <typename T>
void narrow_at(Isa isa, const float* src, int64_t n, T* dst) {
  switch (isa) {
#if ONNXATTN_HAVE_X86_ISAS
    case Isa::kAvx512: return avx512::narrow_array(src, n, dst);
    case Isa::kAvx2: return avx2::narrow_array(src, n, dst);
#endif
    default: return generic::narrow_array(src, n, dst);
  }
}

// The conversions' ISA: the best this CPU has (ONNXATTN_CPU_ISA is not read: every ISA gives the same values).
Isa conversion_isa() {
  static const Isa best = best_supported_isa();
  return best;
}

// For tests: the ISA named `name` if this CPU has it, else false.
bool named_isa(const char* name, Isa& isa) {
  if (std::strcmp(name, "generic") == 0) {
    isa = Isa::kGeneric;
  } else if (std::strcmp(name, "avx2") == 0) {
    isa = Isa::kAvx2;
  } else if (std::strcmp(name, "avx512") == 0) {
    isa = Isa::kAvx512;
  } else {
    return false;
  }
  return isa <= best_supported_isa();
}

}  // namespace

void widen_cpu(const Float16* src, int64_t n, float* dst) { widen_at(conversion_isa(), src, n, dst); }
void widen_cpu(const BFloat16* src, int64_t n, float* dst) { widen_at(conversion_isa(), src, n, dst); }
void narrow_cpu(const float* src, int64_t n, Float16* dst) { narrow_at(conversion_isa(), src, n, dst); }
void narrow_cpu(const float* src, int64_t n, BFloat16* dst) { narrow_at(conversion_isa(), src, n, dst); }

// Float16 and BFloat16 are a uint16_t each (common/half.h).
bool widen_for_test(const char* name, bool bfloat16, const uint16_t* src, int64_t n, float* dst) {
  Isa isa;
  if (!named_isa(name, isa)) return false;
  if (bfloat16) {
    widen_at(isa, reinterpret_cast<const BFloat16*>(src), n, dst);
  } else {
    widen_at(isa, reinterpret_cast<const Float16*>(src), n, dst);
  }
  return true;
}

bool narrow_for_test(const char* name, bool bfloat16, const float* src, int64_t n, uint16_t* dst) {
  Isa isa;
  if (!named_isa(name, isa)) return false;
  if (bfloat16) {
    narrow_at(isa, src, n, reinterpret_cast<BFloat16*>(dst));
  } else {
    narrow_at(isa, src, n, reinterpret_cast<Float16*>(dst));
  }
  return true;
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
