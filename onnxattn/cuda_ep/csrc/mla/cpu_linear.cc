#include "mla/cpu_linear.h"

#include <algorithm>
#include <cstring>

// One clone per x86-64 ISA level (v4: AVX-512, v3: AVX2 + FMA, baseline), chosen by the dynamic loader from
// the CPU's features. The register blocking is written with GCC/clang vector extensions: 16 floats per
// vector (one zmm under v4, two ymm under v3, four xmm otherwise).
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define ONNXATTN_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// The vector helpers below are always inlined: the by-value vector ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define ONNXATTN_ISA_CLONES
#endif

namespace onnxattn::mla {
namespace {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

__attribute__((always_inline)) inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);  // unaligned: compiles to one vector load
  return v;
}
__attribute__((always_inline)) inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }
__attribute__((always_inline)) inline Vec broadcast(float x) { return Vec{} + x; }

__attribute__((always_inline)) inline float sum_lanes(Vec v) {
  float lanes[kLanes];
  store(lanes, v);
  float s = 0.0f;
  for (int64_t l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

}  // namespace

ONNXATTN_ISA_CLONES
void dot_rows(const float* x, const float* w, int64_t rows, int64_t n, int64_t w_stride, float* out) {
  // Eight rows at a time: eight independent accumulator chains (the FMA latency is hidden), x loaded once
  // per eight rows; one horizontal sum per row at the end.
  constexpr int kRows = 8;
  const int64_t full = n / kLanes * kLanes;
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) {
    const float* w0 = w + r * w_stride;
    Vec acc[kRows] = {};
    for (int64_t i = 0; i < full; i += kLanes) {
      const Vec xv = load(x + i);
      for (int k = 0; k < kRows; ++k) acc[k] += xv * load(w0 + k * w_stride + i);
    }
    for (int k = 0; k < kRows; ++k) {
      float s = sum_lanes(acc[k]);
      for (int64_t i = full; i < n; ++i) s += x[i] * w0[k * w_stride + i];
      out[r + k] = s;
    }
  }
  for (; r < rows; ++r) {
    const float* row = w + r * w_stride;
    Vec a{};
    for (int64_t i = 0; i < full; i += kLanes) a += load(x + i) * load(row + i);
    float s = sum_lanes(a);
    for (int64_t i = full; i < n; ++i) s += x[i] * row[i];
    out[r] = s;
  }
}

ONNXATTN_ISA_CLONES
void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const float* b, int64_t ldb, int64_t n, float* c,
            int64_t ldc) {
  // Micro-kernel: 4 rows x 32 columns of c in 8 vector accumulators, one broadcast of a and two vector loads
  // of b per step of k. Column tails (n not a multiple of 32) and row tails take narrower versions.
  constexpr int64_t kCols = 2 * kLanes;
  const int64_t full = n / kCols * kCols;
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    const float* a0 = a + i * lda;
    for (int64_t j = 0; j < full; j += kCols) {
      Vec c00{}, c01{}, c10{}, c11{}, c20{}, c21{}, c30{}, c31{};
      for (int64_t kk = 0; kk < k; ++kk) {
        const float* row = b + kk * ldb + j;
        const Vec b0 = load(row), b1 = load(row + kLanes);
        const Vec x0 = broadcast(a0[kk]), x1 = broadcast(a0[lda + kk]);
        const Vec x2 = broadcast(a0[2 * lda + kk]), x3 = broadcast(a0[3 * lda + kk]);
        c00 += x0 * b0, c01 += x0 * b1, c10 += x1 * b0, c11 += x1 * b1;
        c20 += x2 * b0, c21 += x2 * b1, c30 += x3 * b0, c31 += x3 * b1;
      }
      float* out = c + i * ldc + j;
      store(out, c00), store(out + kLanes, c01), store(out + ldc, c10), store(out + ldc + kLanes, c11);
      store(out + 2 * ldc, c20), store(out + 2 * ldc + kLanes, c21);
      store(out + 3 * ldc, c30), store(out + 3 * ldc + kLanes, c31);
    }
  }
  // Rows past the last group of four (all of them for a single row, e.g. decode), then the columns past
  // the last group of 32: up to 8 vectors of one row at a time, so the FMA chains are independent.
  constexpr int kRowVecs = 8;
  for (int64_t row = 0; row < m; ++row) {
    const float* ar = a + row * lda;
    float* cr = c + row * ldc;
    int64_t j = row < i ? full : 0;
    while (j + kLanes <= n) {
      const int vecs = int(std::min<int64_t>(kRowVecs, (n - j) / kLanes));
      Vec acc[kRowVecs] = {};
      if (vecs == kRowVecs) {
        for (int64_t kk = 0; kk < k; ++kk) {
          const Vec x = broadcast(ar[kk]);
          const float* brow = b + kk * ldb + j;
          for (int v = 0; v < kRowVecs; ++v) acc[v] += x * load(brow + v * kLanes);
        }
      } else {
        for (int64_t kk = 0; kk < k; ++kk) {
          const Vec x = broadcast(ar[kk]);
          const float* brow = b + kk * ldb + j;
          for (int v = 0; v < vecs; ++v) acc[v] += x * load(brow + v * kLanes);
        }
      }
      for (int v = 0; v < vecs; ++v) store(cr + j + v * kLanes, acc[v]);
      j += vecs * kLanes;
    }
    for (; j < n; ++j) {
      float acc = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) acc += ar[kk] * b[kk * ldb + j];
      cr[j] = acc;
    }
  }
}

}  // namespace onnxattn::mla
