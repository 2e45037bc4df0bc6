#include "gqa/cpu_kernel.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/errors.h"
#include "common/sinks.h"
#include "gqa/new_tokens.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::gqa {

template <typename T>
void run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, Hq = p.q_heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.v_head_dim;
  const int64_t M = p.total;  // keys per (b, h) in the present buffers

  // Where each sequence's new tokens go: P (concatenation), past_lengths[b] (shared buffer), or 0.
  std::vector<int64_t> past(size_t(B), p.past);
  if (p.mode == CacheMode::kShared) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = t.past_lengths[b];
      if (len < 0 || len > M - S) {  // not len + S > M: a huge len would wrap and pass
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

  // New tokens: QK-norm -> RoPE; queries to float32, keys/values into the cache. The queries go straight into
  // the output when it is float32 with their row layout (Dv == D): every attention work item reads its rows'
  // queries before it writes the same rows' outputs (see sdpa::run_cpu), so no scratch is needed (a fresh
  // [B, Hq, S, D] buffer per call cost ~5% of a prefill in page faults alone). Otherwise float scratch
  // [B, Hq, S, D].
  sdpa::Strides q_strides = sdpa::Strides::contiguous(Hq, S, D);
  std::unique_ptr<float[]> query_scratch;
  float* queries = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    if (Dv == D) {
      queries = t.output;
      q_strides = {S * Hq * D, D, Hq * D};
    }
  }
  if (queries == nullptr) {
    query_scratch.reset(new float[size_t(B * Hq * S * D)]);
    queries = query_scratch.get();
  }
  TokenPrep prep;
  prep.q_heads = Hq;
  prep.kv_heads = Hkv;
  prep.head_dim = D;
  prep.v_head_dim = Dv;
  prep.q_norm = p.q_norm;
  prep.k_norm = p.k_norm;
  prep.epsilon = p.qk_norm_epsilon;
  prep.interleaved = p.rope_interleaved;
  prep.attention_scaling = p.rope_attention_scaling;
  prep.set_rope(p.rotary_dim, p.rope_base, p.has_inv_freq ? t.inv_freq : nullptr);
  parallel_for(B * S, [&](int64_t token) {
    const int64_t b = token / S, s = token % S, slot = past[size_t(b)] + s;
    const int64_t position = p.has_position_ids ? t.position_ids[token] : slot;
    const TokenSlots<T> out{queries + q_strides.at(b, 0, s), q_strides.head,
                            t.present_key + (b * Hkv * M + slot) * D, M * D,
                            t.present_value + (b * Hkv * M + slot) * Dv, M * Dv};
    prepare_token<T>(prep, t.query + token * Hq * D, t.key + token * Hkv * D, t.value + token * Hkv * Dv,
                     t.q_norm_weight, t.k_norm_weight, position, out);
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
  a.structure.chunk = p.attention_chunk;
  a.structure.query_offset = p.past;
  a.q_strides = q_strides;
  a.k_strides = sdpa::Strides::contiguous(Hkv, M, D);
  a.v_strides = sdpa::Strides::contiguous(Hkv, M, Dv);
  a.y_strides = {S * Hq * Dv, Dv, Hq * Dv};
  if (p.has_mask) {
    a.mask_kind = sdpa::MaskKind::kBool;
    a.mask_strides = {M, 0, 0, 1};
  }
  std::vector<int64_t> kv_lengths;
  sdpa::Tensors<T, float> at;
  at.q = queries;
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
  std::vector<float> lse, y_float;
  if (p.has_sinks) {
    a.want_lse = true;
    lse.resize(size_t(B * Hq * S));
    at.lse = lse.data();
    if constexpr (!std::is_same_v<T, float>) {  // scaled in float, then rounded once
      y_float.resize(size_t(B * S * Hq * Dv));
      at.y_float = y_float.data();
    }
  }
  sdpa::run_cpu<T, float>(a, at, parallel_for);
  if (p.has_sinks) {
    parallel_for(B * S, [&](int64_t token) {  // LSE [B, Hq, S]: a token's heads S apart
      const float* token_lse = lse.data() + a.lse_offset(token / S, 0, token % S);
      if constexpr (std::is_same_v<T, float>) {
        apply_sinks_to_row(t.output + token * Hq * Dv, Hq, Dv, token_lse, S, t.sinks);
      } else {
        float* row = y_float.data() + token * Hq * Dv;
        apply_sinks_to_row(row, Hq, Dv, token_lse, S, t.sinks);
        sdpa::narrow_cpu(row, Hq * Dv, t.output + token * Hq * Dv);
      }
    });
  }
}

template void run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template void run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template void run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::gqa
