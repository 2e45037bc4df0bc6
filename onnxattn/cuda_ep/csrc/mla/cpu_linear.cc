#include "mla/cpu_linear.h"

// One clone per ISA level (AVX-512, AVX2 + FMA, baseline), chosen by the dynamic loader from the CPU's
// features: the loops below are written so that the compiler vectorizes them (independent lanes, no
// reassociation of float sums needed).
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define ONNXATTN_ISA_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define ONNXATTN_ISA_CLONES
#endif

namespace onnxattn::mla {

ONNXATTN_ISA_CLONES
void dot_rows(const float* __restrict__ x, const float* __restrict__ w, int64_t rows, int64_t n, int64_t w_stride,
              float* __restrict__ out) {
  constexpr int64_t kLanes = 16;  // partial sums per lane: vectorizes without reassociating one running sum
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = w + r * w_stride;
    float partial[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) partial[l] += x[i + l] * row[i + l];
    }
    float sum = 0.0f;
    for (; i < n; ++i) sum += x[i] * row[i];
    for (int64_t l = 0; l < kLanes; ++l) sum += partial[l];
    out[r] = sum;
  }
}

ONNXATTN_ISA_CLONES
void matmul(const float* __restrict__ a, int64_t lda, int64_t m, int64_t k, const float* __restrict__ b, int64_t ldb,
            int64_t n, float* __restrict__ c, int64_t ldc) {
  // Four rows of c at a time: each row of b is read once per four output rows, and the inner loop is an
  // axpy over n that vectorizes.
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    float* __restrict__ c0 = c + i * ldc;
    float* __restrict__ c1 = c0 + ldc;
    float* __restrict__ c2 = c1 + ldc;
    float* __restrict__ c3 = c2 + ldc;
    for (int64_t j = 0; j < n; ++j) c0[j] = c1[j] = c2[j] = c3[j] = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float a0 = a[i * lda + kk], a1 = a[(i + 1) * lda + kk], a2 = a[(i + 2) * lda + kk];
      const float a3 = a[(i + 3) * lda + kk];
      const float* __restrict__ row = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) {
        const float x = row[j];
        c0[j] += a0 * x;
        c1[j] += a1 * x;
        c2[j] += a2 * x;
        c3[j] += a3 * x;
      }
    }
  }
  for (; i < m; ++i) {
    float* __restrict__ c0 = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) c0[j] = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float a0 = a[i * lda + kk];
      const float* __restrict__ row = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) c0[j] += a0 * row[j];
    }
  }
}

}  // namespace onnxattn::mla
