#pragma once
// The small dense products of the MLA CPU kernel (query absorption, key/value expansion, output projection),
// float32 arithmetic and output; the second operand (the weights W_UK / W_UV, in the op's type) may be fp16 or
// bfloat16, widened in registers as it is read. Compiled once per x86 ISA level; each call takes the attention
// core's level (sdpa::cpu_isa(), which ONNXATTN_CPU_ISA caps).
#include <cstdint>

#include "common/half.h"

namespace onnxattn::mla {

// out[r] = <x, w[r * w_stride .. + n)> for r < rows (x . W^T, W stored by rows).
void dot_rows(const float* x, const float* w, int64_t rows, int64_t n, int64_t w_stride, float* out);
void dot_rows(const float* x, const Float16* w, int64_t rows, int64_t n, int64_t w_stride, float* out);
void dot_rows(const float* x, const BFloat16* w, int64_t rows, int64_t n, int64_t w_stride, float* out);

// c[i, :n] = a[i, :k] . b[:k, :n] for i < m (row-major, leading dims lda, ldb, ldc); c is overwritten.
void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const float* b, int64_t ldb, int64_t n, float* c,
            int64_t ldc);
void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const Float16* b, int64_t ldb, int64_t n, float* c,
            int64_t ldc);
void matmul(const float* a, int64_t lda, int64_t m, int64_t k, const BFloat16* b, int64_t ldb, int64_t n, float* c,
            int64_t ldc);

}  // namespace onnxattn::mla
