#include "sparse/cpu_kernel.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "gqa/new_tokens.h"
#include "sdpa/cpu_kernel.h"
#include "sparse/cpu_select.h"

namespace onnxattn::sparse {
namespace {

using sdpa::as_float;

int64_t round_up16(int64_t n) { return (std::max<int64_t>(n, 1) + 15) / 16 * 16; }

// Block-sparse attention over lists of `list_len` blocks of `block_size` keys.
void make_sparse(sdpa::Params& a, int64_t block_size, int64_t list_len, bool shared, bool causal) {
  a.structure.causal = causal;
  // A block longer than the keys holds them all (block 0): the core packs and indexes keys by the block length
  // (pitch, c * size, (c + 1) * size), which would overflow for a size near INT64_MAX, so give it Skv instead:
  // the same blocks, the same lists, the same result.
  a.sparse_block_size = a.kv_len > 0 ? std::min(block_size, a.kv_len) : block_size;
  a.sparse_list_len = list_len;
  a.sparse_shared = shared;
}

}  // namespace

template <typename T>
void run_nsa_cpu(const NsaParams& p, const NsaTensors<T>& t, const ParallelFor& parallel_for) {
  const Dims& d = p.dims;
  const NsaAttributes& a = p.attrs;
  if (d.batch == 0 || d.q_len == 0) return;
  const int64_t bs = a.block_size, nc = p.full_blocks, ldc = round_up16(nc), rows = d.batch * d.q_heads * d.q_len;
  const int64_t dim = d.head_dim, v_dim = d.v_head_dim;

  // Centroids of the complete blocks (mean key, or the compressed keys), transposed for the score GEMM.
  std::vector<float> centroids_t(size_t(d.batch * d.kv_heads * dim * ldc), 0.0f), values;
  parallel_for(d.batch * d.kv_heads, [&](int64_t bh) {
    float* dst = centroids_t.data() + bh * dim * ldc;
    for (int64_t c = 0; c < nc; ++c) {
      for (int64_t x = 0; x < dim; ++x) {
        float value;
        if (p.has_compressed) {
          value = to_float(t.compressed_key[(bh * nc + c) * dim + x]);
        } else {
          float sum = 0.0f;
          for (int64_t j = c * bs; j < (c + 1) * bs; ++j) sum += to_float(t.k[(bh * d.kv_len + j) * dim + x]);
          value = sum / float(bs);
        }
        dst[x * ldc + c] = value;
      }
    }
  });
  SelectParams sp;
  sp.batch = d.batch, sp.q_heads = d.q_heads, sp.kv_heads = d.kv_heads, sp.q_len = d.q_len;
  sp.head_dim = dim, sp.v_head_dim = v_dim;
  sp.num_centroids = nc, sp.centroid_stride = ldc, sp.num_blocks = p.num_blocks, sp.block_size = bs;
  sp.query_offset = d.query_offset(), sp.top = a.top_blocks, sp.causal = a.causal != 0;
  sp.shared = a.shared_selection != 0, sp.sink_blocks = a.sink_blocks, sp.local_blocks = a.local_blocks;
  sp.score = p.has_compressed ? BlockScore::kCompressedProbability : BlockScore::kDot;
  sp.scale = p.scale;
  std::vector<int32_t> lists(size_t(d.batch * p.selection_heads * d.q_len * a.top_blocks));
  SelectTensors<T> st;
  st.q = t.q;
  st.centroids_t = centroids_t.data();
  st.lists = lists.data();
  st.listed = p.want_blocks ? t.selected_blocks : nullptr;
  // The branches, each into `branch` (the compression branch straight into `mixed`), mixed into `mixed` by
  // their gates. Left uninitialized: every element is written before it is read (fresh zeroed pages of
  // rows x Dv floats per buffer cost as much as a branch's softmax at long S).
  const size_t out_floats = size_t(rows * v_dim);
  std::unique_ptr<float[]> mixed(new float[out_floats]), branch(new float[out_floats]);
  bool mixed_written = false;
  if (p.has_compressed) {
    st.compressed_values = as_float(t.compressed_value, d.batch * d.kv_heads * nc * v_dim, values);
    st.compressed_out = mixed.get();
  }
  if (a.top_blocks > 0 || p.has_compressed) select_blocks<T>(sp, st, parallel_for);

  // mixed = (mixed or 0) + gate * src; src == mixed scales it in place
  auto mix = [&](const float* src, int64_t gate) {
    const bool add = mixed_written && src != mixed.get();
    parallel_for(rows, [&](int64_t row) {
      const int64_t b = row / (d.q_heads * d.q_len), h = row / d.q_len % d.q_heads, i = row % d.q_len;
      const std::array<int64_t, 4>& s = p.gate_strides;
      const float g = t.gates ? to_float(t.gates[b * s[0] + h * s[1] + i * s[2] + gate * s[3]]) : 1.0f;
      float* out = mixed.get() + row * v_dim;
      const float* in = src + row * v_dim;
      for (int64_t e = 0; e < v_dim; ++e) out[e] = add ? out[e] + g * in[e] : g * in[e];
    });
    mixed_written = true;
  };
  if (p.has_compressed) mix(mixed.get(), 1);
  sdpa::Tensors<T> core;
  core.q = t.q;
  core.k = t.k;
  core.v = t.v;
  core.y_float = branch.get();
  if (a.top_blocks > 0) {
    sdpa::Params blocks = core_params(d, p.scale);
    make_sparse(blocks, bs, a.top_blocks, a.shared_selection != 0, a.causal != 0);
    sdpa::Tensors<T> selected = core;
    selected.sparse_blocks = lists.data();
    sdpa::run_cpu<T>(blocks, selected, parallel_for);
    mix(branch.get(), 0);
  }
  if (!p.has_compressed && a.top_tokens > 0) {
    FineParams fp;
    fp.batch = d.batch, fp.q_heads = d.q_heads, fp.kv_heads = d.kv_heads, fp.q_len = d.q_len, fp.kv_len = d.kv_len;
    fp.head_dim = dim, fp.v_head_dim = v_dim, fp.top = a.top_tokens, fp.causal = a.causal != 0, fp.scale = p.scale;
    FineTensors<T> ft{t.q, t.k, t.v, branch.get(), p.want_tokens ? t.selected_tokens : nullptr};
    fine_tokens<T>(fp, ft, parallel_for);
    mix(branch.get(), 1);
  }
  if (a.window > 0) {  // the causal sliding window: the core's dense path
    sdpa::Params recent = core_params(d, p.scale);
    recent.structure.causal = true;
    recent.structure.window = a.window;
    sdpa::run_cpu<T>(recent, core, parallel_for);
    mix(branch.get(), 2);
  }
  parallel_for(rows, [&](int64_t row) {
    sdpa::narrow_cpu(mixed.get() + row * v_dim, v_dim, t.y + row * v_dim);
  });
}

template <typename T>
void run_routed_cpu(const RoutedParams& p, const RoutedTensors<T>& t, const ParallelFor& parallel_for) {
  const Dims& d = p.dims;
  const RoutedAttributes& a = p.attrs;
  if (d.batch == 0 || d.q_len == 0) return;
  const int64_t dim = d.head_dim, v_dim = d.v_head_dim, seg = a.segment_size, ns = p.num_segments, ldc = round_up16(ns);
  const int64_t q_rows = d.batch * d.q_heads * d.q_len, k_rows = d.batch * d.kv_heads * d.kv_len;
  const bool rope = a.rope != 0, route_raw = rope && !a.rope_before_routing;

  // float32 Q and K, rotated at their positions (raw copies too when routing precedes RoPE); V as float.
  std::vector<float> q_att(size_t(q_rows * dim)), k_att(size_t(k_rows * dim)), q_raw, k_raw, v_storage;
  gqa::TokenPrep rope_prep;
  rope_prep.interleaved = a.rope_interleaved != 0;
  if (rope) rope_prep.set_rope(p.rotary_dim, a.rope_base, nullptr);
  const int64_t half = int64_t(rope_prep.inv_freq.size());
  // cos/sin per (position row, key) once, shared by every head: [B or 1][Skv][half]
  const int64_t position_rows = t.position_ids && p.position_batch_stride ? d.batch : 1;
  std::vector<float> cos_table, sin_table;
  if (rope) {
    cos_table.resize(size_t(position_rows * d.kv_len * half));
    sin_table.resize(cos_table.size());
    parallel_for(position_rows * d.kv_len, [&](int64_t at) {
      const int64_t b = at / d.kv_len, key = at % d.kv_len;
      const float position = float(t.position_ids ? t.position_ids[b * p.position_batch_stride + key] : key);
      for (int64_t c = 0; c < half; ++c) {
        const float angle = position * rope_prep.inv_freq[size_t(c)];
        cos_table[size_t(at * half + c)] = std::cos(angle) * a.rope_attention_scaling;
        sin_table[size_t(at * half + c)] = std::sin(angle) * a.rope_attention_scaling;
      }
    });
  }
  auto prepare = [&](const T* src, float* dst, float* raw, int64_t heads, int64_t len, int64_t first_key) {
    parallel_for(d.batch * heads * len, [&](int64_t row) {
      const int64_t b = row / (heads * len), s = row % len;
      sdpa::widen_cpu(src + row * dim, dim, dst + row * dim);
      if (raw) std::copy(dst + row * dim, dst + (row + 1) * dim, raw + row * dim);
      if (!rope) return;
      const int64_t at = ((position_rows > 1 ? b : 0) * d.kv_len + first_key + s) * half;
      gqa::detail::rotate(dst + row * dim, cos_table.data() + at, sin_table.data() + at, half, rope_prep.interleaved);
    });
  };
  if (route_raw) {
    q_raw.resize(q_att.size());
    k_raw.resize(k_att.size());
  }
  prepare(t.q, q_att.data(), route_raw ? q_raw.data() : nullptr, d.q_heads, d.q_len, d.query_offset());
  prepare(t.k, k_att.data(), route_raw ? k_raw.data() : nullptr, d.kv_heads, d.kv_len, 0);
  const float* q_route = route_raw ? q_raw.data() : q_att.data();
  const float* k_route = route_raw ? k_raw.data() : k_att.data();

  // Centroids: each segment's mean key (the partial last one over its own keys), unit length for cosine.
  std::vector<float> centroids_t(size_t(d.batch * d.kv_heads * dim * ldc), 0.0f);
  parallel_for(d.batch * d.kv_heads, [&](int64_t bh) {
    float* dst = centroids_t.data() + bh * dim * ldc;
    std::vector<float> mean(static_cast<size_t>(dim));
    for (int64_t c = 0; c < ns; ++c) {
      const int64_t end = std::min((c + 1) * seg, d.kv_len);
      for (int64_t x = 0; x < dim; ++x) {
        float sum = 0.0f;
        for (int64_t j = c * seg; j < end; ++j) sum += k_route[(bh * d.kv_len + j) * dim + x];
        mean[size_t(x)] = sum / float(end - c * seg);
      }
      float norm = 1.0f;
      if (a.cosine) {
        float sq = 0.0f;
        for (float x : mean) sq += x * x;
        norm = std::max(std::sqrt(sq), 1e-12f);
      }
      for (int64_t x = 0; x < dim; ++x) dst[x * ldc + c] = mean[size_t(x)] / norm;
    }
  });

  SelectParams sp;
  sp.batch = d.batch, sp.q_heads = d.q_heads, sp.kv_heads = d.kv_heads, sp.q_len = d.q_len;
  sp.head_dim = dim, sp.v_head_dim = v_dim;
  sp.num_centroids = ns, sp.centroid_stride = ldc, sp.num_blocks = ns, sp.block_size = seg;
  sp.query_offset = d.query_offset(), sp.top = a.top_k, sp.causal = a.causal != 0;
  std::vector<int32_t> lists(size_t(q_rows * a.top_k));
  SelectTensors<float> st;
  st.q = q_route;
  st.centroids_t = centroids_t.data();
  st.lists = lists.data();
  st.listed = p.want_segments ? t.selected_segments : nullptr;
  select_blocks<float>(sp, st, parallel_for);

  sdpa::Params attend = core_params(d, p.scale);
  make_sparse(attend, seg, a.top_k, false, a.causal != 0);
  sdpa::Tensors<float> core;
  core.q = q_att.data();
  core.k = k_att.data();
  core.v = as_float(t.v, k_rows * v_dim, v_storage);
  core.sparse_blocks = lists.data();
  std::vector<float> out;
  if constexpr (std::is_same_v<T, float>) {
    core.y = t.y;
  } else {
    out.resize(size_t(q_rows * v_dim));
    core.y = out.data();
  }
  sdpa::run_cpu<float>(attend, core, parallel_for);
  if constexpr (!std::is_same_v<T, float>) {
    parallel_for(q_rows, [&](int64_t row) {
      sdpa::narrow_cpu(out.data() + row * v_dim, v_dim, t.y + row * v_dim);
    });
  }
}

template void run_nsa_cpu<float>(const NsaParams&, const NsaTensors<float>&, const ParallelFor&);
template void run_nsa_cpu<Float16>(const NsaParams&, const NsaTensors<Float16>&, const ParallelFor&);
template void run_nsa_cpu<BFloat16>(const NsaParams&, const NsaTensors<BFloat16>&, const ParallelFor&);
template void run_routed_cpu<float>(const RoutedParams&, const RoutedTensors<float>&, const ParallelFor&);
template void run_routed_cpu<Float16>(const RoutedParams&, const RoutedTensors<Float16>&, const ParallelFor&);
template void run_routed_cpu<BFloat16>(const RoutedParams&, const RoutedTensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::sparse
