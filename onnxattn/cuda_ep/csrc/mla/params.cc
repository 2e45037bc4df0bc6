#include "mla/params.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/errors.h"
#include "common/visibility.h"

namespace onnxattn::mla {
namespace {

const char* const kInputNames[kNumInputs] = {"query", "latent", "k_rope", "w_uk", "w_uv", "past_latent",
                                             "past_k_rope", "past_lengths", "position_ids", "rope_inv_freq",
                                             "key_indices"};

const Shape& expect_rank(const Shapes& s, Input index, size_t rank, const char* layout) {
  return onnxattn::expect_rank(*s.inputs[index], kOpName, kInputNames[index], rank, layout);
}

void expect_shape(const Shapes& s, Input index, const Shape& want, const char* layout) {
  onnxattn::expect_shape(*s.inputs[index], kOpName, kInputNames[index], want, layout);
}

// A past cache as [B, T, width], from [B, T, width] or [B, 1, T, width].
Shape cache_shape(const Shapes& s, Input index, int64_t batch, int64_t width) {
  const Shape& shape = *s.inputs[index];
  const bool bnsh = shape.size() == 4;
  if (shape.size() != 3 && !bnsh) {
    fail(kOpName, ": input '", kInputNames[index], "' must be [B, P, ", width, "] or [B, 1, P, ", width, "], got ",
         shape_str(shape));
  }
  for (int64_t d : shape) {
    if (d < 0) fail(kOpName, ": input '", kInputNames[index], "' has a negative dimension: ", shape_str(shape));
  }
  const Shape flat = bnsh ? Shape{shape[0], shape[2], shape[3]} : shape;
  if (flat[0] != batch || flat[2] != width || (bnsh && shape[1] != 1)) {
    fail(kOpName, ": input '", kInputNames[index], "' must be ", bnsh ? "[B, 1, P, " : "[B, P, ", width, "] = [", batch,
         bnsh ? ", 1, P, " : ", P, ", width, "], got shape ", shape_str(shape));
  }
  return flat;
}

}  // namespace

void check_attributes(const Attributes& a) {
  Attributes checked = a;
  checked.kv_num_heads = 1;  // not an MLA attribute: every head reads the one latent cache
  gqa::check_attributes(checked, kOpName);
}

Params make_params(const Shapes& s, const Attributes& a) {
  mla::check_attributes(a);  // qualified: gqa::check_attributes is found by argument lookup too
  Params p;
  p.heads = a.num_heads;
  const Shape& query = expect_rank(s, kQuery, 3, "[B, S, H*(Dn+Dr)]");
  const Shape& latent = expect_rank(s, kLatent, 3, "[B, S, R]");
  const Shape& k_rope = expect_rank(s, kKRope, 3, "[B, S, Dr]");
  const Shape& w_uk = expect_rank(s, kWUk, 3, "[H, R, Dn]");
  const Shape& w_uv = expect_rank(s, kWUv, 3, "[H, R, Dv]");
  p.batch = query[0];
  p.seq = query[1];
  for (const Shape* x : {&latent, &k_rope}) {
    if ((*x)[0] != p.batch || (*x)[1] != p.seq) {
      fail(kOpName, ": input '", x == &latent ? "latent" : "k_rope", "' must have the batch and sequence dims of query ",
           shape_str(query), ", got shape ", shape_str(*x));
    }
  }
  p.rank = latent[2];
  p.rope_dim = k_rope[2];
  if (p.rope_dim < 2 || p.rope_dim % 2 != 0) {
    fail(kOpName, ": the rope head dim Dr (k_rope dim 2) must be even and >= 2 (RoPE rotates pairs), got ", p.rope_dim);
  }
  const char* names[2] = {"w_uk", "w_uv"};
  const char* widths[2] = {"Dn", "Dv"};
  const Shape* weights[2] = {&w_uk, &w_uv};
  for (int i = 0; i < 2; ++i) {
    const Shape& w = *weights[i];
    if (w[0] != p.heads) {
      fail(kOpName, ": input '", names[i], "' must be [H, R, ", widths[i], "] with H = num_heads = ", p.heads,
           " heads, got shape ", shape_str(w));
    }
    if (w[1] != p.rank) {
      fail(kOpName, ": input '", names[i], "' must be [H, R, ", widths[i], "] with R = ", p.rank,
           " (the latent width, latent dim 2), got shape ", shape_str(w));
    }
    if (w[2] < 1) fail(kOpName, ": input '", names[i], "' must have ", widths[i], " >= 1, got shape ", shape_str(w));
  }
  p.nope_dim = w_uk[2];
  p.v_head_dim = w_uv[2];
  if (query[2] != p.heads * p.query_width()) {
    fail(kOpName, ": query width must be num_heads * (Dn + Dr) = ", p.heads, " * (", p.nope_dim, " + ", p.rope_dim,
         ") = ", p.heads * p.query_width(), " (Dn from w_uk, Dr from k_rope), got shape ", shape_str(query));
  }

  const bool has_latent = s.inputs[kPastLatent].has_value(), has_rope = s.inputs[kPastKRope].has_value();
  if (has_latent != has_rope) fail(kOpName, ": inputs 'past_latent' and 'past_k_rope' must be given together");
  if (has_latent) {
    const Shape pl = cache_shape(s, kPastLatent, p.batch, p.rank);
    const Shape pk = cache_shape(s, kPastKRope, p.batch, p.rope_dim);
    if (s.inputs[kPastLatent]->size() != s.inputs[kPastKRope]->size()) {
      fail(kOpName, ": inputs 'past_latent' and 'past_k_rope' must both be [B, P, .] or both [B, 1, P, .], got ",
           shape_str(*s.inputs[kPastLatent]), " and ", shape_str(*s.inputs[kPastKRope]));
    }
    if (pl[1] != pk[1]) {
      fail(kOpName, ": past_latent and past_k_rope must hold the same number of tokens, got ",
           shape_str(*s.inputs[kPastLatent]), " and ", shape_str(*s.inputs[kPastKRope]));
    }
    p.cache_rank = int64_t(s.inputs[kPastLatent]->size());
    p.mode = s.inputs[kPastLengths] ? CacheMode::kShared : CacheMode::kConcat;
    p.past = p.mode == CacheMode::kConcat ? pl[1] : 0;
    p.total = p.mode == CacheMode::kConcat ? pl[1] + p.seq : pl[1];
  } else {
    if (s.inputs[kPastLengths]) {
      fail(kOpName, ": input 'past_lengths' (shared-buffer mode) needs past_latent and past_k_rope");
    }
    p.total = p.seq;
  }
  if (p.mode == CacheMode::kShared) expect_shape(s, kPastLengths, {p.batch}, "[B]");
  if ((p.has_position_ids = s.inputs[kPositionIds].has_value())) {
    expect_shape(s, kPositionIds, {p.batch, p.seq}, "[B, S]");
  }
  if ((p.has_inv_freq = s.inputs[kInvFreq].has_value())) expect_shape(s, kInvFreq, {p.rope_dim / 2}, "[Dr / 2]");
  if (s.inputs[kKeyIndices]) {
    const Shape& indices = expect_rank(s, kKeyIndices, 3, "[B, S, K]");
    if (indices[0] != p.batch || indices[1] != p.seq) {
      fail(kOpName, ": input 'key_indices' must be [B, S, K] = [", p.batch, ", ", p.seq, ", K], got shape ",
           shape_str(indices));
    }
    p.index_count = indices[2];
  }
  p.rope_interleaved = a.rope_interleaved != 0;
  p.rope_base = a.rope_base;
  p.rope_attention_scaling = a.rope_attention_scaling;
  p.causal = a.causal != 0;
  p.window = a.window;
  p.softcap = a.softcap;
  p.scale = a.scale != 0.0f ? a.scale : 1.0f / std::sqrt(float(p.query_width()));
  return p;
}

Cost estimate_cost(const Params& p, const int64_t* past, const int64_t* valid) {
  Cost cost;
  const double h = double(p.heads), r = double(p.rank), dn = double(p.nope_dim), dr = double(p.rope_dim);
  const double dv = double(p.v_head_dim);
  for (int64_t b = 0; b < p.batch; ++b) {
    StructuralMask structure;
    structure.causal = p.causal;
    structure.window = p.window;
    structure.query_offset = past[b];
    double pairs = 0.0;
    int64_t first_key = valid[b], last_key = 0;
    for (int64_t i = 0; i < p.seq; ++i) {
      const KeyRange keys = structure.visible_keys(i, valid[b]);
      if (keys.empty()) continue;
      pairs += double(keys.end - keys.begin);
      first_key = std::min(first_key, keys.begin);
      last_key = std::max(last_key, keys.end);
    }
    const double expanded_keys = double(std::max<int64_t>(0, last_key - first_key));
    cost.absorbed += h * (double(p.seq) * r * (dn + dv) + pairs * (2.0 * r + dr));
    cost.expanded += h * (expanded_keys * r * (dn + dv) + pairs * (dn + dr + dv));
  }
  return cost;
}

Path choose_path(const Params& p, const int64_t* past, const int64_t* valid) {
  const char* forced = std::getenv("ONNXATTN_MLA_PATH");
  if (forced != nullptr && std::strcmp(forced, "absorbed") == 0) return Path::kAbsorbed;
  if (forced != nullptr && std::strcmp(forced, "expanded") == 0) return Path::kExpanded;
  const Cost cost = estimate_cost(p, past, valid);
  return cost.expanded < cost.absorbed ? Path::kExpanded : Path::kAbsorbed;
}

const char* path_name(Path path) {
  return path == Path::kExpanded ? "expanded" : path == Path::kIndexed ? "indexed" : "absorbed";
}

}  // namespace onnxattn::mla
