#include "gqa/cpu_kernel.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "common/errors.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::gqa {
namespace {

// RoPE inverse frequencies, computed as the reference function does (float32 steps).
std::vector<float> inverse_frequencies(const Params& p, const float* given) {
  std::vector<float> inv(size_t(p.rotary_dim / 2));
  const float log_base = std::log(p.rope_base);
  for (size_t i = 0; i < inv.size(); ++i) {
    inv[i] = given ? given[i] : std::exp(-((float(2 * i) / float(p.rotary_dim)) * log_base));
  }
  return inv;
}

// x <- x * rsqrt(mean(x^2) + eps) * weight, over one head.
template <typename T>
void rms_norm(float* x, int64_t n, const T* weight, float eps) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(sum / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] * inv * to_float(weight[i]);
}

// Rotates the first 2 * half channels of x: pairs (i, i + half), or (2i, 2i + 1) when interleaved.
void rotate(float* x, const float* cos, const float* sin, int64_t half, bool interleaved) {
  for (int64_t i = 0; i < half; ++i) {
    float* a = interleaved ? x + 2 * i : x + i;
    float* b = interleaved ? x + 2 * i + 1 : x + i + half;
    const float x1 = *a, x2 = *b;
    *a = x1 * cos[i] - x2 * sin[i];
    *b = x2 * cos[i] + x1 * sin[i];
  }
}

}  // namespace

template <typename T>
void run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, Hq = p.q_heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.v_head_dim;
  const int64_t M = p.total;  // keys per (b, h) in the present buffers

  // Where each sequence's new tokens go: P (concatenation), past_lengths[b] (shared buffer), or 0.
  std::vector<int64_t> past(size_t(B), p.past);
  if (p.mode == CacheMode::kShared) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = t.past_lengths[b];
      if (len < 0 || len + S > M) {
        fail(kOpName, ": past_lengths[", b, "] = ", len, " is out of range: the buffers hold ", M,
             " tokens, so with ", S, " new tokens it must be in [0, ", M - S, "]");
      }
      past[size_t(b)] = len;
    }
  }

  // The cache: the past part (unless the output already is the past buffer, i.e. updated in place).
  auto copy_past = [&](const T* src, T* dst, int64_t width, int64_t src_len) {
    if (src == nullptr || src == dst) return;
    parallel_for(B * Hkv, [&](int64_t bh) {
      std::memcpy(dst + bh * M * width, src + bh * src_len * width, size_t(src_len * width) * sizeof(T));
    });
  };
  if (p.mode != CacheMode::kNone) {
    const int64_t src_len = p.mode == CacheMode::kConcat ? p.past : M;
    copy_past(t.past_key, t.present_key, D, src_len);
    copy_past(t.past_value, t.present_value, Dv, src_len);
  }

  // New tokens: QK-norm -> RoPE; queries to float scratch [B, Hq, S, D], keys/values into the cache.
  const std::vector<float> inv_freq = inverse_frequencies(p, p.has_inv_freq ? t.inv_freq : nullptr);
  const int64_t half = p.rotary_dim / 2;
  std::unique_ptr<float[]> queries(new float[size_t(B * Hq * S * D)]);
  parallel_for(B * S, [&](int64_t token) {
    const int64_t b = token / S, s = token % S;
    const int64_t position = p.has_position_ids ? t.position_ids[token] : past[size_t(b)] + s;
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half)), row(static_cast<size_t>(D));
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(position) * inv_freq[size_t(i)];
      cos[size_t(i)] = std::cos(angle) * p.rope_attention_scaling;
      sin[size_t(i)] = std::sin(angle) * p.rope_attention_scaling;
    }
    for (int64_t h = 0; h < Hq; ++h) {
      const T* src = t.query + token * Hq * D + h * D;
      float* dst = queries.get() + ((b * Hq + h) * S + s) * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = to_float(src[d]);
      if (p.q_norm) rms_norm(dst, D, t.q_norm_weight, p.qk_norm_epsilon);
      rotate(dst, cos.data(), sin.data(), half, p.rope_interleaved);
    }
    const int64_t slot = past[size_t(b)] + s;
    for (int64_t h = 0; h < Hkv; ++h) {
      const T* src = t.key + token * Hkv * D + h * D;
      for (int64_t d = 0; d < D; ++d) row[size_t(d)] = to_float(src[d]);
      if (p.k_norm) rms_norm(row.data(), D, t.k_norm_weight, p.qk_norm_epsilon);
      rotate(row.data(), cos.data(), sin.data(), half, p.rope_interleaved);
      T* key_slot = t.present_key + ((b * Hkv + h) * M + slot) * D;
      for (int64_t d = 0; d < D; ++d) key_slot[d] = from_float<T>(row[size_t(d)]);
      std::memcpy(t.present_value + ((b * Hkv + h) * M + slot) * Dv, t.value + token * Hkv * Dv + h * Dv,
                  size_t(Dv) * sizeof(T));
    }
  });

  // Attention of the prepared queries over the cache, written straight into [B, S, Hq*Dv].
  sdpa::Params a;
  a.batch = B;
  a.q_heads = Hq;
  a.kv_heads = Hkv;
  a.q_len = S;
  a.kv_len = M;
  a.head_dim = D;
  a.v_head_dim = Dv;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.structure.causal = p.causal;
  a.structure.window = p.window;
  a.structure.query_offset = p.past;
  a.q_strides = sdpa::Strides::contiguous(Hq, S, D);
  a.k_strides = sdpa::Strides::contiguous(Hkv, M, D);
  a.v_strides = sdpa::Strides::contiguous(Hkv, M, Dv);
  a.y_strides = {S * Hq * Dv, Dv, Hq * Dv};
  if (p.has_mask) {
    a.mask_kind = sdpa::MaskKind::kBool;
    a.mask_strides = {M, 0, 0, 1};
  }
  std::vector<int64_t> kv_lengths;
  sdpa::Tensors<T, float> at;
  at.q = queries.get();
  at.k = t.present_key;
  at.v = t.present_value;
  at.bool_mask = t.attention_mask;
  at.y = t.output;
  if (p.mode == CacheMode::kShared) {  // per sequence: queries at past[b] + i, keys valid below past[b] + S
    kv_lengths.resize(size_t(B));
    for (int64_t b = 0; b < B; ++b) kv_lengths[size_t(b)] = past[size_t(b)] + S;
    at.query_offsets = past.data();
    at.kv_lengths = kv_lengths.data();
  }
  sdpa::run_cpu<T, float>(a, at, parallel_for);
}

template void run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template void run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template void run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::gqa
