#include "mla/cpu_linear.h"

#include <cstdint>
#include <cstring>

#include "common/half.h"  // before the target regions: to_float stays baseline code
#include "sdpa/cpu_kernel.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

// One copy per x86 ISA level (AVX-512, AVX2 + FMA, baseline), each in its own target region like the
// attention core's kernels (sdpa/cpu_kernel_avx2.cc), chosen per call with the core's ISA (so
// ONNXATTN_CPU_ISA caps both). The register blocking is written with GCC/clang vector extensions, one
// register per vector: 16 floats (zmm), 8 (ymm) or 4 (xmm).
#if defined(__GNUC__) && !defined(__clang__)
// The vector helpers are always inlined, so no vector crosses a call by value; GCC reports the ABI note at
// the end of the file, so it stays off for the whole file.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace onnxattn::mla {
namespace generic {
#define ONNXATTN_MLA_LANES 4
#include "mla/cpu_linear.inc"
#undef ONNXATTN_MLA_LANES
}  // namespace generic
}  // namespace onnxattn::mla

#if defined(__x86_64__) || defined(_M_X64)
#define ONNXATTN_MLA_X86 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace onnxattn::mla::avx2 {
#define ONNXATTN_MLA_LANES 8
#include "mla/cpu_linear.inc"
#undef ONNXATTN_MLA_LANES
}  // namespace onnxattn::mla::avx2
#if defined(__clang__)
#pragma clang attribute pop
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC pop_options
#pragma GCC diagnostic push
// GCC 12 flags its own _mm512_undefined_* helpers (inside the fp16 / bfloat16 widening), as in sdpa's AVX-512 file.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#endif
namespace onnxattn::mla::avx512 {
#define ONNXATTN_MLA_LANES 16
#include "mla/cpu_linear.inc"
#undef ONNXATTN_MLA_LANES
}  // namespace onnxattn::mla::avx512
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#pragma GCC diagnostic pop
#endif
#endif

namespace onnxattn::mla {
namespace {

enum class Level { kGeneric, kAvx2, kAvx512 };

Level level() {
  const char* isa = sdpa::cpu_isa();  // the best the CPU has, capped by ONNXATTN_CPU_ISA
  if (std::strcmp(isa, "avx512") == 0) return Level::kAvx512;
  if (std::strcmp(isa, "avx2") == 0) return Level::kAvx2;
  return Level::kGeneric;
}

template <typename W>
void dot_rows_at(const float* x, const W* w, int64_t rows, int64_t n, int64_t w_stride, float* out) {
  switch (level()) {
#ifdef ONNXATTN_MLA_X86
    case Level::kAvx512: return avx512::dot_rows(x, w, rows, n, w_stride, out);
    case Level::kAvx2: return avx2::dot_rows(x, w, rows, n, w_stride, out);
#endif
    default: return generic::dot_rows(x, w, rows, n, w_stride, out);
  }
}

template <typename W>
void matmul_at(const float* a, int64_t lda, int64_t m, int64_t k, const W* b, int64_t ldb, int64_t n, float* c,
               int64_t ldc) {
  switch (level()) {
#ifdef ONNXATTN_MLA_X86
    case Level::kAvx512: return avx512::matmul(a, lda, m, k, b, ldb, n, c, ldc);
    case Level::kAvx2: return avx2::matmul(a, lda, m, k, b, ldb, n, c, ldc);
#endif
    default: return generic::matmul(a, lda, m, k, b, ldb, n, c, ldc);
  }
}

}  // namespace

#define ONNXATTN_MLA_DISPATCH(W)                                                                                    \
  void dot_rows(const float* x, const W* w, int64_t rows, int64_t n, int64_t w_stride, float* out) {               \
    dot_rows_at(x, w, rows, n, w_stride, out);                                                                     \
  }                                                                                                                \
  void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const W* b, int64_t ldb, int64_t n, float* c,      \
              int64_t ldc) {                                                                                       \
    matmul_at(a, lda, m, k, b, ldb, n, c, ldc);                                                                    \
  }
ONNXATTN_MLA_DISPATCH(float)
ONNXATTN_MLA_DISPATCH(Float16)
ONNXATTN_MLA_DISPATCH(BFloat16)
#undef ONNXATTN_MLA_DISPATCH

}  // namespace onnxattn::mla
