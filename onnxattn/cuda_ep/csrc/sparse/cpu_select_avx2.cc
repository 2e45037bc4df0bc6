// The sparse block-list producers compiled for AVX2 + FMA, with target pragmas around the code only (as the
// attention core's cpu_kernel_avx2.cc); cpu_select.cc calls them only when the CPU has the instructions.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "sdpa/cpu_flash_prelude.h"
#include "sparse/cpu_select_isa.h"
#if ONNXATTN_HAVE_X86_SELECT_ISAS
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace onnxattn::sparse::avx2 {
#include "sdpa/simd_avx2.inc"
#include "sparse/cpu_select.inc"
}  // namespace onnxattn::sparse::avx2

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif
#endif  // ONNXATTN_HAVE_X86_SELECT_ISAS
