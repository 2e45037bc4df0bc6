#include "paged/cpu_kernel.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/sinks.h"
#include "gqa/new_tokens.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::paged {

template <typename T>
void run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  const Layout layout = check_layout(p, t.block_table, t.cu_seqlens_q, t.seq_lens);
  const int64_t Hq = p.q_heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.v_head_dim, bs = p.block_size;

  // The output pools start as the input pools (nothing to do when they are the same buffers).
  const size_t slots = size_t(p.num_blocks * bs * Hkv);
  if (t.key_cache_out != t.key_cache) std::memcpy(t.key_cache_out, t.key_cache, slots * size_t(D) * sizeof(T));
  if (t.value_cache_out != t.value_cache) std::memcpy(t.value_cache_out, t.value_cache, slots * size_t(Dv) * sizeof(T));

  gqa::TokenPrep prep;
  prep.q_heads = Hq;
  prep.kv_heads = Hkv;
  prep.head_dim = D;
  prep.v_head_dim = Dv;
  prep.q_norm = p.q_norm;
  prep.k_norm = p.k_norm;
  prep.epsilon = p.attrs.qk_norm_epsilon;
  prep.interleaved = p.attrs.rope_interleaved != 0;
  prep.attention_scaling = p.attrs.rope_attention_scaling;
  prep.set_rope(p.rotary_dim, p.attrs.rope_base, p.has_inv_freq ? t.inv_freq : nullptr);
  std::unique_ptr<float[]> queries(new float[size_t(p.tokens * Hq * D)]);  // [T, Hq, D]
  parallel_for(p.tokens, [&](int64_t token) {
    const size_t b = size_t(layout.sequence_of[size_t(token)]);
    const int64_t position = layout.query_offsets[b] + token - layout.q_starts[b];
    const int64_t slot = int64_t(t.block_table[int64_t(b) * p.max_blocks + position / bs]) * bs + position % bs;
    const gqa::TokenSlots<T> out{queries.get() + token * Hq * D, D, t.key_cache_out + slot * Hkv * D, D,
                                 t.value_cache_out + slot * Hkv * Dv, Dv};
    gqa::prepare_token<T>(prep, t.query + token * Hq * D, t.key + token * Hkv * D, t.value + token * Hkv * Dv,
                          t.q_norm_weight, t.k_norm_weight, p.has_position_ids ? t.position_ids[token] : position, out);
  });

  sdpa::Params a;
  a.batch = p.batch;
  a.q_heads = Hq;
  a.kv_heads = Hkv;
  a.q_len = p.batch ? *std::max_element(layout.q_lengths.begin(), layout.q_lengths.end()) : 0;
  a.kv_len = p.max_blocks * bs;
  a.head_dim = D;
  a.v_head_dim = Dv;
  a.scale = p.scale;
  a.softcap = p.attrs.softcap;
  a.structure.causal = p.attrs.causal != 0;
  a.structure.window = p.attrs.window;
  a.structure.chunk = p.attrs.attention_chunk;
  a.q_strides = {0, D, Hq * D};  // packed rows [T, Hq, D]
  a.y_strides = {0, Dv, Hq * Dv};
  a.k_strides = {0, D, Hkv * D};  // slot-major pools [slots, Hkv, D]
  a.v_strides = {0, Dv, Hkv * Dv};
  a.block_size = bs;
  a.block_table_stride = p.max_blocks;
  sdpa::Tensors<T, float> at;
  at.q = queries.get();
  at.k = t.key_cache_out;
  at.v = t.value_cache_out;
  at.y = t.output;
  at.q_starts = layout.q_starts.data();
  at.q_lengths = layout.q_lengths.data();
  at.query_offsets = layout.query_offsets.data();
  at.kv_lengths = layout.kv_lengths.data();
  at.block_table = t.block_table;
  std::vector<float> lse, y_float;  // LSE [T, Hq]: the core's LSE of ragged batches is by packed row
  if (p.has_sinks) {
    a.want_lse = true;
    lse.resize(size_t(p.tokens * Hq));
    at.lse = lse.data();
    if constexpr (!std::is_same_v<T, float>) {  // scaled in float, then rounded once
      y_float.resize(size_t(p.tokens * Hq * Dv));
      at.y_float = y_float.data();
    }
  }
  sdpa::run_cpu<T, float>(a, at, parallel_for);
  if (p.has_sinks) {
    parallel_for(p.tokens, [&](int64_t token) {  // a token's heads side by side
      if constexpr (std::is_same_v<T, float>) {
        apply_sinks_to_row(t.output + token * Hq * Dv, Hq, Dv, lse.data() + token * Hq, 1, t.sinks);
      } else {
        float* row = y_float.data() + token * Hq * Dv;
        apply_sinks_to_row(row, Hq, Dv, lse.data() + token * Hq, 1, t.sinks);
        sdpa::narrow_cpu(row, Hq * Dv, t.output + token * Hq * Dv);
      }
    });
  }
}

template void run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template void run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template void run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::paged
