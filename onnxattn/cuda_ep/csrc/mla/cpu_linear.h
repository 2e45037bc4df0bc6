#pragma once
// The small dense products of the MLA CPU kernel (query absorption, key/value expansion, output projection),
// float32 in and out. Compiled once per x86 ISA level; each call takes the attention core's level
// (sdpa::cpu_isa(), which ONNXATTN_CPU_ISA caps).
#include <cstdint>

namespace onnxattn::mla {

// out[r] = <x, w[r * w_stride .. + n)> for r < rows (x . W^T, W stored by rows).
void dot_rows(const float* x, const float* w, int64_t rows, int64_t n, int64_t w_stride, float* out);

// c[i, :n] = a[i, :k] . b[:k, :n] for i < m (row-major, leading dims lda, ldb, ldc); c is overwritten.
void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const float* b, int64_t ldb, int64_t n, float* c,
            int64_t ldc);

}  // namespace onnxattn::mla
