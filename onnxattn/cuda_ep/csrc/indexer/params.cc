#include "indexer/params.h"

#include <cmath>

#include "common/errors.h"

namespace onnxattn::indexer {
namespace {

const char* const kInputNames[kNumInputs] = {"query", "key", "weights", "past_lengths"};

const Shape& expect_rank(const Shapes& s, Input index, size_t rank, const char* layout) {
  return onnxattn::expect_rank(*s.inputs[index], kOpName, kInputNames[index], rank, layout);
}

}  // namespace

void check_attributes(const Attributes& a) {
  if (a.num_heads < 1) {
    fail(kOpName, ": attribute 'num_heads' is required and must be >= 1 (the indexer's heads), got ", a.num_heads);
  }
  if (a.top_k < 1 || a.top_k > kMaxTopK) {
    fail(kOpName, ": attribute 'top_k' is required and must be in [1, ", kMaxTopK, "] (keys picked per query), got ",
         a.top_k);
  }
  if (!std::isfinite(a.scale) || a.scale < 0.0f) {
    fail(kOpName, ": attribute 'scale' must be finite and >= 0 (0 = 1/sqrt(D)), got ", a.scale);
  }
}

Params make_params(const Shapes& s, const Attributes& a) {
  check_attributes(a);
  Params p;
  p.heads = a.num_heads;
  p.top_k = a.top_k;
  const Shape& query = expect_rank(s, kQuery, 3, "[B, S, H*D]");
  p.batch = query[0];
  p.seq = query[1];
  const Shape& key_in = *s.inputs[kKey];
  if (key_in.size() != 3 && key_in.size() != 4) {
    fail(kOpName, ": input 'key' must be [B, T, D] or [B, 1, T, D], got shape ", shape_str(key_in));
  }
  const Shape& key = expect_rank(s, kKey, key_in.size(), "");
  const bool bnsh = key.size() == 4;
  if (key[0] != p.batch || (bnsh && key[1] != 1)) {
    fail(kOpName, ": input 'key' must be ", bnsh ? "[B, 1, T, D] = [" : "[B, T, D] = [", p.batch,
         bnsh ? ", 1, T, D]" : ", T, D]", " (B from query), got shape ", shape_str(key));
  }
  p.total = key[key.size() - 2];
  p.head_dim = key.back();
  if (p.head_dim < 1) fail(kOpName, ": input 'key' must have D >= 1, got shape ", shape_str(key));
  if (query[2] != p.heads * p.head_dim) {
    fail(kOpName, ": input 'query' must be [B, S, H*D] with H*D = num_heads * D = ", p.heads, " * ", p.head_dim,
         " = ", p.heads * p.head_dim, " (D from key), got shape ", shape_str(query));
  }
  const Shape& weights = expect_rank(s, kWeights, 3, "[B, S, H]");
  if (weights != Shape{p.batch, p.seq, p.heads}) {
    fail(kOpName, ": input 'weights' must be [B, S, H] = ", shape_str({p.batch, p.seq, p.heads}), ", got shape ",
         shape_str(weights));
  }
  p.shared = s.inputs[kPastLengths].has_value();
  if (p.shared) {
    const Shape& lengths = expect_rank(s, kPastLengths, 1, "[B]");
    if (lengths[0] != p.batch) {
      fail(kOpName, ": input 'past_lengths' must be [B] = [", p.batch, "], got shape ", shape_str(lengths));
    }
  }
  if (p.total < p.seq) {
    fail(kOpName, ": input 'key' must hold at least the S = ", p.seq, " new tokens' keys (T >= S), got shape ",
         shape_str(key));
  }
  p.scale = a.scale > 0.0f ? a.scale : 1.0f / std::sqrt(float(p.head_dim));
  return p;
}

std::vector<int64_t> first_positions(const Params& p, const int64_t* past_lengths) {
  std::vector<int64_t> first(size_t(p.batch), p.total - p.seq);
  if (!p.shared) return first;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t length = past_lengths[b];
    if (length < 0 || length > p.total - p.seq) {
      fail(kOpName, ": input 'past_lengths' must be in [0, T - S] = [0, ", p.total - p.seq,
           "] (the buffer holds T = ", p.total, " keys, S = ", p.seq, " of them new), got past_lengths[", b,
           "] = ", length);
    }
    first[size_t(b)] = length;
  }
  return first;
}

}  // namespace onnxattn::indexer
