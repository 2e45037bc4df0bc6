#include "sdpa/params.h"

#include <cmath>

#include "common/errors.h"

namespace onnxattn::sdpa {
namespace {

void check_rank4(const char* input, const std::vector<int64_t>& shape, const char* layout) {
  if (shape.size() != 4) {
    fail(kOpName, ": input '", input, "' must have rank 4 ", layout, ", got shape ", shape_str(shape));
  }
  for (int64_t d : shape) {
    if (d < 0) fail(kOpName, ": input '", input, "' has a negative dimension: ", shape_str(shape));
  }
}

}  // namespace

void check_attributes(const Attributes& a) {
  if (a.causal != 0 && a.causal != 1) fail(kOpName, ": attribute 'causal' must be 0 or 1, got ", a.causal);
  if (a.window < 0) fail(kOpName, ": attribute 'window' must be >= 0 (0 = off), got ", a.window);
  if (a.band < 0) fail(kOpName, ": attribute 'band' must be >= 0 (0 = off), got ", a.band);
  if (!std::isfinite(a.scale)) fail(kOpName, ": attribute 'scale' must be finite (0 = 1/sqrt(D)), got ", a.scale);
  if (!(a.softcap >= 0.0f) || !std::isfinite(a.softcap)) {
    fail(kOpName, ": attribute 'softcap' must be finite and >= 0 (0 = off), got ", a.softcap);
  }
}

Params make_params(const Shapes& s, MaskKind mask_kind, const Attributes& attrs, bool want_lse) {
  check_attributes(attrs);
  check_rank4("Q", s.q, "[B, Hq, Sq, D]");
  check_rank4("K", s.k, "[B, Hkv, Skv, D]");
  check_rank4("V", s.v, "[B, Hkv, Skv, Dv]");
  Params p;
  p.batch = s.q[0];
  p.q_heads = s.q[1];
  p.q_len = s.q[2];
  p.head_dim = s.q[3];
  p.kv_heads = s.k[1];
  p.kv_len = s.k[2];
  p.v_head_dim = s.v[3];
  if (s.k[0] != p.batch || s.v[0] != p.batch) {
    fail(kOpName, ": batch sizes differ: Q ", shape_str(s.q), ", K ", shape_str(s.k), ", V ", shape_str(s.v));
  }
  if (s.k[3] != p.head_dim) {
    fail(kOpName, ": input 'K' must have head size D = ", p.head_dim, " (from Q) in dim 3, got shape ", shape_str(s.k));
  }
  if (s.v[1] != p.kv_heads || s.v[2] != p.kv_len) {
    fail(kOpName, ": input 'V' must be [B, Hkv, Skv, Dv] with Hkv = ", p.kv_heads, " and Skv = ", p.kv_len,
         " (from K), got shape ", shape_str(s.v));
  }
  if (p.head_dim < 1) fail(kOpName, ": input 'Q' must have head size D >= 1, got shape ", shape_str(s.q));
  if (p.q_heads < 1 || p.kv_heads < 1) {
    fail(kOpName, ": inputs 'Q' and 'K' must have at least one head, got Q ", shape_str(s.q), ", K ", shape_str(s.k));
  }
  if (p.q_heads % p.kv_heads != 0) {
    fail(kOpName, ": query heads (", p.q_heads, ", Q dim 1) must be a multiple of key/value heads (", p.kv_heads,
         ", K dim 1)");
  }

  p.mask_kind = s.mask ? mask_kind : MaskKind::kNone;
  if (s.mask) {
    const std::vector<int64_t>& m = *s.mask;
    const std::array<int64_t, 4> target{p.batch, p.q_heads, p.q_len, p.kv_len};
    if (m.size() > 4) {
      fail(kOpName, ": input 'attn_mask' must have rank <= 4 (broadcastable to [B, Hq, Sq, Skv] = ",
           shape_str({target.begin(), target.end()}), "), got shape ", shape_str(m));
    }
    // Right-align the mask's dims with the target, numpy style; contiguous strides, 0 where broadcast.
    int64_t stride = 1;
    for (int axis = 3; axis >= 0; --axis) {
      const int mask_axis = axis - (4 - int(m.size()));
      const int64_t dim = mask_axis >= 0 ? m[mask_axis] : 1;
      if (dim != 1 && dim != target[axis]) {
        fail(kOpName, ": input 'attn_mask' of shape ", shape_str(m), " does not broadcast to [B, Hq, Sq, Skv] = ",
             shape_str({target.begin(), target.end()}), " (dim ", mask_axis, " is ", dim, ", expected 1 or ",
             target[axis], ")");
      }
      p.mask_strides[axis] = dim == 1 ? 0 : stride;
      stride *= dim;
    }
  }

  p.scale = attrs.scale != 0.0f ? attrs.scale : 1.0f / std::sqrt(float(p.head_dim));
  p.softcap = attrs.softcap;
  p.structure.query_offset = p.kv_len - p.q_len;
  p.structure.causal = attrs.causal != 0;
  p.structure.window = attrs.window;
  p.structure.band = attrs.band;
  p.want_lse = want_lse;
  p.q_strides = Strides::contiguous(p.q_heads, p.q_len, p.head_dim);
  p.k_strides = Strides::contiguous(p.kv_heads, p.kv_len, p.head_dim);
  p.v_strides = Strides::contiguous(p.kv_heads, p.kv_len, p.v_head_dim);
  p.y_strides = Strides::contiguous(p.q_heads, p.q_len, p.v_head_dim);
  return p;
}

std::vector<int64_t> output_shape(const Params& p) { return {p.batch, p.q_heads, p.q_len, p.v_head_dim}; }
std::vector<int64_t> lse_shape(const Params& p) { return {p.batch, p.q_heads, p.q_len}; }

}  // namespace onnxattn::sdpa
