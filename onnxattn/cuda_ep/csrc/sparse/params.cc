#include "sparse/params.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/env.h"
#include "common/errors.h"
#include "sdpa/cuda_capi.h"  // guarded: the C entries' error reporting
#include "sparse/cuda_sizes.h"

namespace onnxattn::sparse {
namespace {

void check_rank4(const char* op, const char* input, const std::vector<int64_t>& shape, const char* layout) {
  if (shape.size() != 4) fail(op, ": input '", input, "' must have rank 4 ", layout, ", got shape ", shape_str(shape));
  for (int64_t d : shape) {
    if (d < 0) fail(op, ": input '", input, "' has a negative dimension: ", shape_str(shape));
  }
}

void check_flag(const char* op, const char* name, int64_t value) {
  if (value != 0 && value != 1) fail(op, ": attribute '", name, "' must be 0 or 1, got ", value);
}

void check_count(const char* op, const char* name, int64_t value, const char* what) {
  if (value < 0) fail(op, ": attribute '", name, "' must be >= 0 (", what, "), got ", value);
}

void check_scale(const char* op, float scale) {
  if (!std::isfinite(scale) || scale < 0.0f) {
    fail(op, ": attribute 'scale' must be finite and >= 0 (0 = 1/sqrt(D)), got ", scale);
  }
}

// Q [B, Hq, Sq, D], K [B, Hkv, Skv, D], V [B, Hkv, Skv, Dv] (the rules of ScaledDotProductAttention).
Dims check_qkv(const char* op, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
               const std::vector<int64_t>& v) {
  check_rank4(op, "Q", q, "[B, Hq, Sq, D]");
  check_rank4(op, "K", k, "[B, Hkv, Skv, D]");
  check_rank4(op, "V", v, "[B, Hkv, Skv, Dv]");
  Dims d{q[0], q[1], k[1], q[2], k[2], q[3], v[3]};
  if (k[0] != d.batch || v[0] != d.batch) {
    fail(op, ": batch sizes differ: Q ", shape_str(q), ", K ", shape_str(k), ", V ", shape_str(v));
  }
  if (k[3] != d.head_dim) fail(op, ": input 'K' must have head size D = ", d.head_dim, " (from Q) in dim 3, got shape ", shape_str(k));
  if (v[1] != d.kv_heads || v[2] != d.kv_len) {
    fail(op, ": input 'V' must be [B, Hkv, Skv, Dv] with Hkv = ", d.kv_heads, " and Skv = ", d.kv_len,
         " (from K), got shape ", shape_str(v));
  }
  if (d.head_dim < 1) fail(op, ": input 'Q' must have head size D >= 1, got shape ", shape_str(q));
  if (d.q_heads < 1 || d.kv_heads < 1) {
    fail(op, ": inputs 'Q' and 'K' must have at least one head, got Q ", shape_str(q), ", K ", shape_str(k));
  }
  if (d.q_heads % d.kv_heads != 0) {
    fail(op, ": query heads (", d.q_heads, ", Q dim 1) must be a multiple of key/value heads (", d.kv_heads,
         ", K dim 1)");
  }
  return d;
}

}  // namespace

void check_attributes(const NsaAttributes& a, bool has_compressed) {
  const char* op = kNsaName;
  if (a.block_size < 1) fail(op, ": attribute 'block_size' must be >= 1, got ", a.block_size);
  check_count(op, "top_blocks", a.top_blocks, "0 = off");
  check_count(op, "top_tokens", a.top_tokens, "0 = off");
  check_count(op, "window", a.window, "0 = off");
  check_flag(op, "causal", a.causal);
  check_flag(op, "shared_selection", a.shared_selection);
  check_count(op, "sink_blocks", a.sink_blocks, "count");
  check_count(op, "local_blocks", a.local_blocks, "count");
  check_scale(op, a.scale);
  const int64_t forced = a.sink_blocks + a.local_blocks;
  if (a.top_blocks > 0 && forced + a.causal > a.top_blocks) {
    fail(op, ": the forced blocks (own block ", a.causal, " + sink_blocks ", a.sink_blocks, " + local_blocks ",
         a.local_blocks, ") exceed top_blocks = ", a.top_blocks);
  }
  if (a.top_blocks == 0 && forced > 0) fail(op, ": sink_blocks and local_blocks need the block branch (top_blocks > 0)");
  if (a.top_tokens > 0 && has_compressed) {
    fail(op, ": the fine branch (top_tokens > 0) and the compression branch (compressed_key) share gate 1; use one of them");
  }
  if (a.top_blocks == 0 && a.top_tokens == 0 && a.window == 0 && !has_compressed) {
    fail(op, ": every branch is off; set top_blocks, top_tokens or window > 0, or give compressed_key/compressed_value");
  }
}

void check_attributes(const RoutedAttributes& a) {
  const char* op = kRoutedName;
  if (a.segment_size < 1) fail(op, ": attribute 'segment_size' must be >= 1, got ", a.segment_size);
  if (a.top_k < 1) fail(op, ": attribute 'top_k' must be >= 1, got ", a.top_k);
  check_flag(op, "causal", a.causal);
  check_flag(op, "cosine", a.cosine);
  check_flag(op, "rope", a.rope);
  check_flag(op, "rope_before_routing", a.rope_before_routing);
  check_flag(op, "rope_interleaved", a.rope_interleaved);
  if (!(a.rope_base > 0.0f) || !std::isfinite(a.rope_base)) fail(op, ": attribute 'rope_base' must be > 0, got ", a.rope_base);
  check_count(op, "rotary_dim", a.rotary_dim, "0 = D");
  if (!std::isfinite(a.rope_attention_scaling)) {
    fail(op, ": attribute 'rope_attention_scaling' must be finite (1 = off), got ", a.rope_attention_scaling);
  }
  check_scale(op, a.scale);
}

// The kernels keep `top` entries per row ([rows, top] selection lists, top-k heaps): a top count near INT64_MAX
// overflowed rows * top (undefined behaviour, then an allocation error that named nothing). No list of more
// than 2^40 entries can be allocated anyway, so such a count is an error that names the op and the attribute.
namespace {
void check_list_size(const char* op, const char* name, int64_t top, int64_t rows) {
  constexpr int64_t kMaxEntries = int64_t{1} << 40;
  if (top > 0 && rows > 0 && top > kMaxEntries / rows) {
    fail(op, ": attribute '", name, "' = ", top, " is too large: the selection lists of ", rows,
         " rows would hold more than 2^40 entries");
  }
}
}  // namespace

NsaParams make_nsa_params(const NsaShapes& s, const NsaAttributes& attrs, bool want_blocks, bool want_tokens) {
  const char* op = kNsaName;
  if (s.compressed_key.has_value() != s.compressed_value.has_value()) {
    fail(op, ": inputs 'compressed_key' and 'compressed_value' must be given together");
  }
  NsaParams p;
  p.has_compressed = s.compressed_key.has_value();
  check_attributes(attrs, p.has_compressed);
  p.dims = check_qkv(op, s.q, s.k, s.v);
  p.attrs = attrs;
  const Dims& d = p.dims;
  p.scale = attrs.scale != 0.0f ? attrs.scale : 1.0f / std::sqrt(float(d.head_dim));
  p.full_blocks = d.kv_len / attrs.block_size;
  p.num_blocks = p.full_blocks + (attrs.causal && d.kv_len % attrs.block_size ? 1 : 0);
  p.selection_heads = attrs.shared_selection ? d.kv_heads : d.q_heads;
  check_list_size(op, "top_blocks", attrs.top_blocks, d.batch * p.selection_heads * d.q_len);
  check_list_size(op, "top_tokens", attrs.top_tokens, d.batch * d.q_heads * d.q_len);
  if (p.has_compressed) {
    const std::vector<int64_t>* inputs[] = {&*s.compressed_key, &*s.compressed_value};
    const char* names[] = {"compressed_key", "compressed_value"};
    const int64_t widths[] = {d.head_dim, d.v_head_dim};
    for (int x = 0; x < 2; ++x) {
      const std::vector<int64_t>& c = *inputs[x];
      if (c.size() != 4 || c[0] != d.batch || c[1] != d.kv_heads || c[2] != p.full_blocks || c[3] != widths[x]) {
        fail(op, ": input '", names[x], "' must be [B, Hkv, Nc, .] = ",
             shape_str({d.batch, d.kv_heads, p.full_blocks, widths[x]}), " (Nc = Skv // block_size), got shape ",
             shape_str(c));
      }
    }
  }
  p.has_gates = s.gates.has_value();
  if (p.has_gates) {
    const std::vector<int64_t>& g = *s.gates;
    const std::array<int64_t, 4> target{d.batch, d.q_heads, d.q_len, 3};
    if (g.size() > 4) {
      fail(op, ": input 'gates' must have rank <= 4 (broadcastable to [B, Hq, Sq, 3]), got shape ", shape_str(g));
    }
    int64_t stride = 1;
    for (int axis = 3; axis >= 0; --axis) {
      const int gate_axis = axis - (4 - int(g.size()));
      const int64_t dim = gate_axis >= 0 ? g[size_t(gate_axis)] : 1;
      if (dim != 1 && dim != target[size_t(axis)]) {
        fail(op, ": input 'gates' of shape ", shape_str(g), " does not broadcast to [B, Hq, Sq, 3] = ",
             shape_str({target.begin(), target.end()}), " (dim ", gate_axis, " is ", dim, ", expected 1 or ",
             target[size_t(axis)], ")");
      }
      p.gate_strides[size_t(axis)] = dim == 1 ? 0 : stride;
      stride *= dim;
    }
  }
  p.want_blocks = want_blocks;
  p.want_tokens = want_tokens;
  return p;
}

std::vector<int64_t> nsa_output_shape(const NsaParams& p) {
  return {p.dims.batch, p.dims.q_heads, p.dims.q_len, p.dims.v_head_dim};
}
std::vector<int64_t> nsa_blocks_shape(const NsaParams& p) {
  return {p.dims.batch, p.selection_heads, p.dims.q_len, p.attrs.top_blocks};
}
std::vector<int64_t> nsa_tokens_shape(const NsaParams& p) {
  return {p.dims.batch, p.dims.q_heads, p.dims.q_len, p.attrs.top_tokens};
}

RoutedParams make_routed_params(const RoutedShapes& s, const RoutedAttributes& attrs, bool want_segments) {
  const char* op = kRoutedName;
  check_attributes(attrs);
  RoutedParams p;
  p.dims = check_qkv(op, s.q, s.k, s.v);
  p.attrs = attrs;
  const Dims& d = p.dims;
  p.scale = attrs.scale != 0.0f ? attrs.scale : 1.0f / std::sqrt(float(d.head_dim));
  // A segment longer than the keys is one segment of Skv keys: the kernels size buffers and index keys by the
  // segment length (c * size, (c + 1) * size), so a huge attribute (up to INT64_MAX) would overflow them; the
  // shorter length gives the same segment and the same result.
  if (d.kv_len > 0 && p.attrs.segment_size > d.kv_len) p.attrs.segment_size = d.kv_len;
  p.num_segments = d.kv_len == 0 ? 0 : (d.kv_len - 1) / p.attrs.segment_size + 1;
  check_list_size(op, "top_k", attrs.top_k, d.batch * d.q_heads * d.q_len);
  if (attrs.rope) {
    p.rotary_dim = attrs.rotary_dim ? attrs.rotary_dim : d.head_dim;
    if (p.rotary_dim % 2 || p.rotary_dim > d.head_dim) {
      fail(op, ": attribute 'rotary_dim' must be even and <= D = ", d.head_dim, ", got ", p.rotary_dim);
    }
  }
  if (attrs.rope && d.q_len > d.kv_len) {
    fail(op, ": with rope=1 queries take the positions of the last Sq keys, so Sq (", d.q_len,
         ") must be <= Skv (", d.kv_len, ")");
  }
  p.has_positions = s.position_ids.has_value();
  if (p.has_positions) {
    const std::vector<int64_t>& pos = *s.position_ids;
    if (pos.size() != 2 || (pos[0] != 1 && pos[0] != d.batch) || pos[1] != d.kv_len) {
      fail(op, ": input 'position_ids' must be [B or 1, Skv] = [", d.batch, " or 1, ", d.kv_len, "], got shape ",
           shape_str(pos));
    }
    p.position_batch_stride = pos[0] == 1 ? 0 : d.kv_len;
  }
  p.want_segments = want_segments;
  return p;
}

std::vector<int64_t> routed_output_shape(const RoutedParams& p) {
  return {p.dims.batch, p.dims.q_heads, p.dims.q_len, p.dims.v_head_dim};
}
std::vector<int64_t> routed_segments_shape(const RoutedParams& p) {
  return {p.dims.batch, p.dims.q_heads, p.dims.q_len, p.attrs.top_k};
}

namespace cuda {

// The latency switches (cuda_sizes.h): async and redux unless told otherwise (the H200 run at 82087dc).
bool overlapped_loads_requested(const char* op) {
  return env_choice(op, "ONNXATTN_SPARSE_CUDA_LOADS", {"async", "sync"}) == 0;
}
bool redux_argmax_requested(const char* op) {
  return env_choice(op, "ONNXATTN_SPARSE_CUDA_ARGMAX", {"redux", "shuffle"}) == 0;
}
bool grouped_routing_requested(const char* op) {
  return env_choice(op, "ONNXATTN_SPARSE_CUDA_ROUTE", {"groups", "split"}) == 0;
}

}  // namespace cuda
}  // namespace onnxattn::sparse

// For the host tests (tests/test_sparse_cuda_host.py): list_sequence_keys through a C entry.
extern "C" __attribute__((visibility("default"))) int64_t OnnxAttnSparseListKeys(const int32_t* list, int64_t top,
                                                                                   int64_t position, int32_t causal,
                                                                                   int64_t kv_len, int64_t block_size) {
  return onnxattn::sparse::list_sequence_keys(list, top, position, causal != 0, kv_len, block_size);
}

// The CUDA kernels' sizing (sparse/cuda_sizes.h), for the same tests: out = {queries, rows per query, shared bytes}.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseSelectTiling(int32_t dim, int32_t v_dim,
                                                                                  int64_t num_centroids,
                                                                                  int64_t num_blocks, int64_t top,
                                                                                  int32_t probabilities,
                                                                                  int64_t heads_per_list, int64_t* out) {
  const auto t = onnxattn::sparse::cuda::select_tiling(dim, v_dim, num_centroids, num_blocks, top, probabilities != 0,
                                                       heads_per_list);
  out[0] = t.queries, out[1] = t.rows_per_query, out[2] = int64_t(t.smem);
}

// out = {fine capacity, its tiled kernel's shared bytes (0 without a capacity)}.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseFineTiling(int32_t dim, int64_t top, int64_t* out) {
  const int capacity = onnxattn::sparse::cuda::fine_capacity(top);
  out[0] = capacity;
  out[1] = capacity > 0 ? int64_t(onnxattn::sparse::cuda::fine_tiled_smem(dim, capacity)) : 0;
}

// out = {eligible, shared bytes, scratch bytes} of SparseRoutedAttention by segment.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseRoutedBlocks(int64_t rows, int64_t top_k,
                                                                                  int64_t keys, int32_t dim,
                                                                                  int32_t v_dim,
                                                                                  int32_t max_smem_per_block,
                                                                                  int64_t* out) {
  namespace c = onnxattn::sparse::cuda;
  out[0] = c::routed_blocks_eligible(rows, top_k, keys, dim, v_dim, max_smem_per_block) ? 1 : 0;
  out[1] = int64_t(c::routed_blocks_smem_bytes(dim, v_dim));
  out[2] = int64_t(c::routed_blocks_scratch_bytes(rows, top_k, keys));
}

// out = {eligible, shared bytes, lists per chunk, scratch bytes} of the tensor-core attention by block.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseBlocksMma(int64_t lists, int64_t heads_per_list,
                                                                               int64_t out_rows, int64_t top_k,
                                                                               int64_t keys, int32_t dim,
                                                                               int32_t v_dim,
                                                                               int32_t max_smem_per_block,
                                                                               int64_t* out) {
  namespace c = onnxattn::sparse::cuda;
  out[0] = c::blocks_mma_eligible(lists, heads_per_list, top_k, keys, dim, v_dim, max_smem_per_block) ? 1 : 0;
  out[1] = int64_t(c::blocks_mma_smem_bytes(dim, v_dim));
  out[2] = c::blocks_mma_lists_per_chunk(heads_per_list);
  out[3] = int64_t(c::block_lists_scratch_bytes(lists, out_rows, top_k, keys));
}

// out = {eligible, shared bytes, lists per tile, CTAs} of the tensor-core attention by query tiles.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseQueryTiles(int64_t batch, int64_t list_heads,
                                                                                int64_t q_len, int64_t heads_per_list,
                                                                                int64_t top_k, int64_t num_blocks,
                                                                                int32_t dim, int32_t v_dim,
                                                                                int32_t max_smem_per_block,
                                                                                int64_t* out) {
  namespace c = onnxattn::sparse::cuda;
  out[0] = c::query_tiles_eligible(batch, list_heads, q_len, heads_per_list, top_k, num_blocks, dim, v_dim,
                                   max_smem_per_block) ? 1 : 0;
  out[1] = int64_t(c::query_tiles_smem_bytes(dim, v_dim, heads_per_list, top_k));
  out[2] = c::blocks_mma_lists_per_chunk(heads_per_list);
  out[3] = c::query_tiles_grid(batch, list_heads, q_len, heads_per_list);
}

// A query tile's copy of a list as its walk reads it (normalize_block_list), in place.
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseNormalizeBlockList(int32_t* list, int32_t top_k,
                                                                                        int64_t num_blocks) {
  onnxattn::sparse::cuda::normalize_block_list(list, top_k, num_blocks);
}

// out = {queries, rows per query, shared bytes} of the tensor-core selection (0 queries: it does not fit).
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseSelectMmaTiling(int32_t dim, int32_t v_dim,
                                                                                     int64_t num_centroids,
                                                                                     int64_t num_blocks, int64_t top,
                                                                                     int32_t probabilities,
                                                                                     int64_t heads_per_list,
                                                                                     int32_t max_smem_per_block,
                                                                                     int64_t* out) {
  const auto t = onnxattn::sparse::cuda::select_mma_tiling(dim, v_dim, num_centroids, num_blocks, top,
                                                           probabilities != 0, heads_per_list, max_smem_per_block);
  out[0] = t.queries, out[1] = t.rows_per_query, out[2] = int64_t(t.smem);
}

// out = {queries, rows per query, shared bytes} of the one-row-per-list tensor-core selection (0 queries: no fit).
extern "C" __attribute__((visibility("default"))) void OnnxAttnSparseSelectSplitTiling(int32_t dim, int64_t num_centroids,
                                                                                       int64_t num_blocks, int64_t top,
                                                                                       int32_t max_smem_per_block,
                                                                                       int64_t* out) {
  const auto t = onnxattn::sparse::cuda::select_split_tiling(dim, num_centroids, num_blocks, top, max_smem_per_block);
  out[0] = t.queries, out[1] = t.rows_per_query, out[2] = int64_t(t.smem);
}

// The overlapped block kernel's search (find_key_step, find_key_narrow) with its warp's 32 probes replayed one by one:
// the key whose chunk range holds `chunk` among [lo, hi), the rounds it took in *rounds.
extern "C" __attribute__((visibility("default"))) int64_t OnnxAttnSparseFindKey(const int32_t* chunk_offsets,
                                                                                int64_t lo, int64_t hi, int64_t chunk,
                                                                                int32_t* rounds) {
  namespace c = onnxattn::sparse::cuda;
  *rounds = 0;
  while (hi - lo > 1) {
    unsigned at_or_before = 0;
    for (int lane = 0; lane < 32; ++lane) {
      const int64_t at = lo + lane * c::find_key_step(lo, hi);
      if (at < hi && chunk_offsets[at] <= chunk) at_or_before |= 1u << lane;
    }
    c::find_key_narrow(lo, hi, at_or_before);
    ++*rounds;
  }
  return lo;
}

// The selection's argmax under ONNXATTN_SPARSE_CUDA_ARGMAX=redux, the default (argmax_key), its warp replayed lane by
// lane: up to `top` picks from scores[n] (each pick then hidden as -inf, as warp_select does) into picks; returns
// the count.
extern "C" __attribute__((visibility("default"))) int64_t OnnxAttnSparseArgmaxPicks(float* scores, int64_t n,
                                                                                    int64_t top, int32_t* picks) {
  namespace c = onnxattn::sparse::cuda;
  int64_t count = 0;
  for (; count < top; ++count) {
    unsigned best[32], at[32], top_key = 0u;
    for (int lane = 0; lane < 32; ++lane) {
      best[lane] = 0u, at[lane] = 0xffffffffu;
      for (int64_t j = lane; j < n; j += 32) {
        const unsigned k = c::argmax_key(scores[j]);
        if (k > best[lane]) best[lane] = k, at[lane] = unsigned(j);
      }
      top_key = std::max(top_key, best[lane]);  // __reduce_max_sync
    }
    if (top_key <= c::kNegInfArgmaxKey) break;
    unsigned index = 0xffffffffu;
    for (int lane = 0; lane < 32; ++lane) index = std::min(index, best[lane] == top_key ? at[lane] : 0xffffffffu);
    picks[count] = int32_t(index);
    scores[index] = -std::numeric_limits<float>::infinity();
  }
  return count;
}

// The latency switches as plan_nsa and run_routed read them: out = {overlap_loads, redux_argmax, grouped_routing}, 0
// returned; a bad value returns 1 with the InputError's message in error[error_size].
extern "C" __attribute__((visibility("default"))) int32_t OnnxAttnSparseLatencySwitches(const char* op, int32_t* out,
                                                                                        char* error,
                                                                                        int64_t error_size) {
  namespace c = onnxattn::sparse::cuda;
  return onnxattn::sdpa::cuda::capi::guarded(error, size_t(std::max<int64_t>(error_size, 0)), [&] {
    out[0] = c::overlapped_loads_requested(op) ? 1 : 0;
    out[1] = c::redux_argmax_requested(op) ? 1 : 0;
    out[2] = c::grouped_routing_requested(op) ? 1 : 0;
    return 0;
  });
}
