#pragma once
// The per-token preparation shared by the fused decoder ops (GroupQueryAttention, PagedAttention):
// QK-norm, then RoPE at the token's position; the query goes to float32 scratch for the attention core,
// the key (after RoPE, rounded to T) and the value to their cache slots.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/half.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::gqa {

struct TokenPrep {
  int64_t q_heads = 0, kv_heads = 0, head_dim = 0, v_head_dim = 0;
  bool q_norm = false, k_norm = false;
  float epsilon = 1e-6f;
  bool interleaved = false;
  float attention_scaling = 1.0f;
  std::vector<float> inv_freq;  // [rotary_dim / 2]; empty without RoPE

  // Inverse frequencies as the reference function computes them (float32 steps), unless given.
  void set_rope(int64_t rotary_dim, float base, const float* given) {
    inv_freq.resize(size_t(rotary_dim / 2));
    const float log_base = std::log(base);
    for (size_t i = 0; i < inv_freq.size(); ++i) {
      inv_freq[i] = given ? given[i] : std::exp(-((float(2 * i) / float(rotary_dim)) * log_base));
    }
  }
};

// Where one token's outputs go: the prepared query heads (float) and the key/value heads in the cache.
template <typename T>
struct TokenSlots {
  float* query;             // head h at query + h * query_head_stride
  int64_t query_head_stride;
  T* key;                   // head h at key + h * key_head_stride
  int64_t key_head_stride;
  T* value;                 // head h at value + h * value_head_stride
  int64_t value_head_stride;
};

namespace detail {

template <typename T>
void rms_norm(float* x, int64_t n, const T* weight, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv * to_float(weight[i]);
}

// Rotates the first 2 * half channels: pairs (i, i + half), or (2i, 2i + 1) when interleaved. One loop per
// layout, over non-overlapping halves, so the compiler vectorizes it.
inline void rotate(float* x, const float* cos, const float* sin, int64_t half, bool interleaved) {
  if (interleaved) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = x[2 * i], x2 = x[2 * i + 1];
      x[2 * i] = x1 * cos[i] - x2 * sin[i];
      x[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
    }
    return;
  }
  float* __restrict a = x;
  float* __restrict b = x + half;
  const float* __restrict c = cos;
  const float* __restrict s = sin;
  for (int64_t i = 0; i < half; ++i) {
    const float x1 = a[i], x2 = b[i];
    a[i] = x1 * c[i] - x2 * s[i];
    b[i] = x2 * c[i] + x1 * s[i];
  }
}

}  // namespace detail

// Prepares one token: query/key/value rows [H*D] of the packed inputs, norm weights (null when absent).
template <typename T>
void prepare_token(const TokenPrep& p, const T* query, const T* key, const T* value, const T* q_norm_weight,
                   const T* k_norm_weight, int64_t position, const TokenSlots<T>& out) {
  const int64_t half = int64_t(p.inv_freq.size()), d = p.head_dim;
  // cos, sin [half] and one key row [d]: per-thread storage reused token after token (no allocation per token)
  thread_local std::vector<float> storage;
  if (storage.size() < size_t(2 * half + d)) storage.resize(size_t(2 * half + d));
  float* const cos = storage.data();
  float* const sin = cos + half;
  float* const row = sin + half;
  for (int64_t i = 0; i < half; ++i) {
    const float angle = float(position) * p.inv_freq[size_t(i)];
    cos[i] = std::cos(angle) * p.attention_scaling;
    sin[i] = std::sin(angle) * p.attention_scaling;
  }
  for (int64_t h = 0; h < p.q_heads; ++h) {
    float* dst = out.query + h * out.query_head_stride;
    sdpa::widen_cpu(query + h * d, d, dst);
    if (p.q_norm) detail::rms_norm(dst, d, q_norm_weight, p.epsilon);
    detail::rotate(dst, cos, sin, half, p.interleaved);
  }
  for (int64_t h = 0; h < p.kv_heads; ++h) {
    sdpa::widen_cpu(key + h * d, d, row);
    if (p.k_norm) detail::rms_norm(row, d, k_norm_weight, p.epsilon);
    detail::rotate(row, cos, sin, half, p.interleaved);
    sdpa::narrow_cpu(row, d, out.key + h * out.key_head_stride);
    std::memcpy(out.value + h * out.value_head_stride, value + h * p.v_head_dim, size_t(p.v_head_dim) * sizeof(T));
  }
}

}  // namespace onnxattn::gqa
