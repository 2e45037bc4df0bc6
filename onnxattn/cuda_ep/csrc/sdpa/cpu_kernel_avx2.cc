// The CPU flash kernel compiled for AVX2 + FMA. Only functions defined inside the target region use
// these instructions; cpu_kernel.cc calls them only when the CPU reports AVX2 and FMA.
#include "sdpa/cpu_flash_prelude.h"
#if ONNXATTN_HAVE_X86_ISAS
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC diagnostic push
// GCC 12 flags its own _mm512_undefined_* helpers; the by-value vector ABI note is moot for inlined code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace onnxattn::sdpa::avx2 {
#include "sdpa/simd_avx2.inc"
#include "sdpa/cpu_flash.inc"
}  // namespace onnxattn::sdpa::avx2

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif
#endif  // ONNXATTN_HAVE_X86_ISAS
