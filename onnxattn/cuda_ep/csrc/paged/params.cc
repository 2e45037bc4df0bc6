#include "paged/params.h"

#include <cmath>

#include "common/errors.h"

namespace onnxattn::paged {
namespace {

const char* const kNames[] = {"query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q",
                              "seq_lens", "position_ids", "q_norm_weight", "k_norm_weight", "rope_inv_freq", "sinks"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == kNumInputs, "one name per input");

const std::vector<int64_t>& expect_rank(const Shapes& s, Input index, size_t rank, const char* layout) {
  const std::vector<int64_t>& shape = *s.inputs[index];
  if (shape.size() != rank) {
    fail(kOpName, ": input '", kNames[index], "' must have rank ", rank, " ", layout, ", got shape ", shape_str(shape));
  }
  return shape;
}

void expect_shape(const Shapes& s, Input index, const std::vector<int64_t>& want, const char* layout) {
  if (expect_rank(s, index, want.size(), layout) != want) {
    fail(kOpName, ": input '", kNames[index], "' must be ", layout, " = ", shape_str(want), ", got ",
         shape_str(*s.inputs[index]));
  }
}

}  // namespace

Params make_params(const Shapes& s, const gqa::Attributes& a) {
  gqa::check_attributes(a, kOpName);
  Params p;
  p.attrs = a;
  p.q_heads = a.num_heads;
  p.kv_heads = a.kv_num_heads;
  const auto& query = expect_rank(s, kQuery, 2, "[T, Hq*D]");
  const auto& key = expect_rank(s, kKey, 2, "[T, Hkv*D]");
  const auto& value = expect_rank(s, kValue, 2, "[T, Hkv*Dv]");
  p.tokens = query[0];
  if (query[1] == 0 || query[1] % p.q_heads) {
    fail(kOpName, ": query width ", query[1], " must be num_heads (", p.q_heads, ") * head size D >= 1");
  }
  p.head_dim = query[1] / p.q_heads;
  if (key[0] != p.tokens || value[0] != p.tokens) {
    fail(kOpName, ": inputs 'key' ", shape_str(key), " and 'value' ", shape_str(value),
         " must have the token count of query ", shape_str(query));
  }
  if (key[1] != p.kv_heads * p.head_dim) {
    fail(kOpName, ": input 'key' must have width kv_num_heads * D = ", p.kv_heads * p.head_dim, ", got ", shape_str(key));
  }
  if (value[1] % p.kv_heads) fail(kOpName, ": value width ", value[1], " must be kv_num_heads (", p.kv_heads, ") * Dv");
  p.v_head_dim = value[1] / p.kv_heads;
  const auto& key_cache = expect_rank(s, kKeyCache, 4, "[num_blocks, block_size, Hkv, D]");
  p.num_blocks = key_cache[0];
  p.block_size = key_cache[1];
  if (p.block_size < 1) fail(kOpName, ": input 'key_cache' must have block_size >= 1, got ", shape_str(key_cache));
  expect_shape(s, kKeyCache, {p.num_blocks, p.block_size, p.kv_heads, p.head_dim}, "[num_blocks, block_size, Hkv, D]");
  expect_shape(s, kValueCache, {p.num_blocks, p.block_size, p.kv_heads, p.v_head_dim},
               "[num_blocks, block_size, Hkv, Dv]");
  const auto& table = expect_rank(s, kBlockTable, 2, "[B, max_blocks]");
  p.batch = table[0];
  p.max_blocks = table[1];
  expect_shape(s, kCuSeqlensQ, {p.batch + 1}, "[B + 1]");
  expect_shape(s, kSeqLens, {p.batch}, "[B]");
  if ((p.has_position_ids = s.inputs[kPositionIds].has_value())) expect_shape(s, kPositionIds, {p.tokens}, "[T]");
  if ((p.q_norm = s.inputs[kQNorm].has_value())) expect_shape(s, kQNorm, {p.head_dim}, "[D]");
  if ((p.k_norm = s.inputs[kKNorm].has_value())) expect_shape(s, kKNorm, {p.head_dim}, "[D]");
  p.rotary_dim = a.rope ? (a.rotary_dim ? a.rotary_dim : p.head_dim) : 0;
  if (p.rotary_dim % 2) fail(kOpName, ": rotary_dim must be even, got ", p.rotary_dim);
  if (p.rotary_dim > p.head_dim) fail(kOpName, ": rotary_dim (", p.rotary_dim, ") must be <= D (", p.head_dim, ")");
  if ((p.has_inv_freq = s.inputs[kInvFreq].has_value()) && a.rope) {
    expect_shape(s, kInvFreq, {p.rotary_dim / 2}, "[rotary_dim / 2]");
  }
  if ((p.has_sinks = s.inputs[kSinks].has_value())) expect_shape(s, kSinks, {p.q_heads}, "[num_heads]");
  p.scale = a.scale != 0.0f ? a.scale : 1.0f / std::sqrt(float(p.head_dim));
  return p;
}

Layout check_layout(const Params& p, const int32_t* table, const int32_t* cu, const int32_t* seq_lens) {
  Layout l;
  const size_t batch = size_t(p.batch);
  l.q_starts.resize(batch);
  l.q_lengths.resize(batch);
  l.query_offsets.resize(batch);
  l.kv_lengths.resize(batch);
  l.sequence_of.resize(size_t(p.tokens));
  if (cu[0] != 0) fail(kOpName, ": input 'cu_seqlens_q' must start at 0, got ", cu[0]);
  if (cu[p.batch] != p.tokens) {
    fail(kOpName, ": input 'cu_seqlens_q' must end at the token count T = ", p.tokens, ", got ", cu[p.batch]);
  }
  // All of cu_seqlens_q first: with it non-decreasing from 0 to T, every row index below is in [0, T).
  for (int64_t b = 0; b < p.batch; ++b) {
    if (cu[b + 1] < cu[b]) {
      fail(kOpName, ": input 'cu_seqlens_q' must not decrease, got ", cu[b], " then ", cu[b + 1], " at ", b);
    }
  }
  const int64_t capacity = p.max_blocks * p.block_size;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t begin = cu[b], end = cu[b + 1], length = seq_lens[b];
    if (length < 0) fail(kOpName, ": input 'seq_lens' must be >= 0, got seq_lens[", b, "] = ", length);
    if (length < end - begin) {
      fail(kOpName, ": seq_lens[", b, "] = ", length, " is smaller than the sequence's ", end - begin, " new tokens");
    }
    if (length > capacity) {
      fail(kOpName, ": seq_lens[", b, "] = ", length, " is larger than its block table can hold (", p.max_blocks,
           " blocks of ", p.block_size, " = ", capacity, ")");
    }
    for (int64_t block = 0; block < (length + p.block_size - 1) / p.block_size; ++block) {
      const int64_t index = table[b * p.max_blocks + block];
      if (index < 0 || index >= p.num_blocks) {
        fail(kOpName, ": block_table[", b, ", ", block, "] = ", index, " is out of range [0, ", p.num_blocks, ")");
      }
    }
    l.q_starts[size_t(b)] = begin;
    l.q_lengths[size_t(b)] = end - begin;
    l.query_offsets[size_t(b)] = length - (end - begin);
    l.kv_lengths[size_t(b)] = length;
    for (int64_t t = begin; t < end; ++t) l.sequence_of[size_t(t)] = b;
  }
  return l;
}

}  // namespace onnxattn::paged
