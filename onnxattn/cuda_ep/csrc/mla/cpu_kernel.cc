#include "mla/cpu_kernel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/errors.h"
#include "gqa/new_tokens.h"
#include "mla/cpu_linear.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::mla {
namespace {

using Buffer = std::unique_ptr<float[]>;

Buffer floats(int64_t count) { return Buffer(new float[size_t(std::max<int64_t>(count, 1))]); }

// `src` as float32: itself for float inputs, else converted into `storage`.
template <typename T>
const float* as_float(const T* src, int64_t count, Buffer& storage, const ParallelFor& parallel_for) {
  if constexpr (std::is_same_v<T, float>) {
    (void)count, (void)storage, (void)parallel_for;
    return src;
  } else {
    storage = floats(count);
    float* dst = storage.get();
    constexpr int64_t kChunk = 1 << 14;
    parallel_for((count + kChunk - 1) / kChunk, [&](int64_t c) {
      const int64_t end = std::min(count, (c + 1) * kChunk);
      sdpa::widen_cpu(src + c * kChunk, end - c * kChunk, dst + c * kChunk);
    });
    return dst;
  }
}

// What every call needs before attention: where each sequence's new tokens go, how many keys it has,
// the caches holding past and new tokens, and the prepared (rotated) rope part of the queries.
template <typename T>
struct Prepared {
  std::vector<int64_t> past;   // [B] key position of the first query (= slot of the first new token)
  std::vector<int64_t> valid;  // [B] valid keys
  Buffer q_rope;               // [B, S, H, Dr] float: the queries' rope part after RoPE
};

template <typename T>
Prepared<T> prepare(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, H = p.heads, R = p.rank, Dr = p.rope_dim, M = p.total;
  const int64_t Dq = p.query_width();
  Prepared<T> out;
  out.past.assign(size_t(B), p.past);
  if (p.mode == CacheMode::kShared) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t len = t.past_lengths[b];
      if (len < 0 || len > M - S) {  // not len + S > M: a huge len would wrap and pass
        fail(kOpName, ": past_lengths[", b, "] = ", len, " is out of range: the buffers hold ", M,
             " tokens, so with ", S, " new tokens it must be in [0, ", M - S, "]");
      }
      out.past[size_t(b)] = len;
    }
  }
  out.valid.resize(size_t(B));
  for (int64_t b = 0; b < B; ++b) out.valid[size_t(b)] = p.mode == CacheMode::kShared ? out.past[size_t(b)] + S : M;

  // The past part of the caches, unless the present already is the past buffer (updated in place).
  auto copy_past = [&](const T* src, T* dst, int64_t width) {
    if (src == nullptr || src == dst) return;
    const int64_t src_len = p.mode == CacheMode::kConcat ? p.past : M;
    parallel_for(B, [&](int64_t b) {
      std::memcpy(dst + b * M * width, src + b * src_len * width, size_t(src_len * width) * sizeof(T));
    });
  };
  if (p.mode != CacheMode::kNone) {
    copy_past(t.past_latent, t.present_latent, R);
    copy_past(t.past_k_rope, t.present_k_rope, Dr);
  }

  // New tokens: latent into its slot as given, the rope key rotated (rounded to T), the queries' rope parts
  // rotated into float scratch.
  gqa::TokenPrep rope;
  rope.interleaved = p.rope_interleaved;
  rope.attention_scaling = p.rope_attention_scaling;
  rope.set_rope(Dr, p.rope_base, p.has_inv_freq ? t.inv_freq : nullptr);
  out.q_rope = floats(B * S * H * Dr);
  float* const q_rope = out.q_rope.get();
  const int64_t half = Dr / 2;
  parallel_for(B * S, [&](int64_t token) {
    const int64_t b = token / S, s = token % S, slot = out.past[size_t(b)] + s;
    const int64_t position = p.has_position_ids ? t.position_ids[token] : slot;
    std::vector<float> cos(static_cast<size_t>(half)), sin(static_cast<size_t>(half)), row(static_cast<size_t>(Dr));
    for (int64_t i = 0; i < half; ++i) {
      const float angle = float(position) * rope.inv_freq[size_t(i)];
      cos[size_t(i)] = std::cos(angle) * rope.attention_scaling;
      sin[size_t(i)] = std::sin(angle) * rope.attention_scaling;
    }
    std::memcpy(t.present_latent + (b * M + slot) * R, t.latent + token * R, size_t(R) * sizeof(T));
    sdpa::widen_cpu(t.k_rope + token * Dr, Dr, row.data());
    gqa::detail::rotate(row.data(), cos.data(), sin.data(), half, rope.interleaved);
    sdpa::narrow_cpu(row.data(), Dr, t.present_k_rope + (b * M + slot) * Dr);
    for (int64_t h = 0; h < H; ++h) {
      const T* src = t.query + (token * H + h) * Dq + p.nope_dim;
      float* dst = q_rope + (token * H + h) * Dr;
      sdpa::widen_cpu(src, Dr, dst);
      gqa::detail::rotate(dst, cos.data(), sin.data(), half, rope.interleaved);
    }
  });
  return out;
}

// Rounds the float output [B, S, H*Dv] to T.
template <typename T>
void store_output(const Params& p, const float* src, T* dst, const ParallelFor& parallel_for) {
  const int64_t width = p.heads * p.v_head_dim;
  parallel_for(p.batch * p.seq,
               [&](int64_t token) { sdpa::narrow_cpu(src + token * width, width, dst + token * width); });
}

// output [B, S, H*Dv] = y [B, S, H, R] . W_UV[h] (read as given), in blocks of tokens per head: W_UV[h] is read
// once per block of up to 16 tokens of the whole batch (rows of one head are evenly strided across sequences).
template <typename T>
void project_output(const Params& p, const float* y, int64_t y_width, const T* w_uv, T* output,
                    const ParallelFor& parallel_for) {
  constexpr int64_t kRows = 16;
  const int64_t H = p.heads, Dv = p.v_head_dim, tokens = p.batch * p.seq, blocks = (tokens + kRows - 1) / kRows;
  Buffer storage;
  float* out = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    out = output;
  } else {
    storage = floats(tokens * H * Dv);
    out = storage.get();
  }
  parallel_for(H * blocks, [&](int64_t item) {
    const int64_t h = item / blocks, t0 = item % blocks * kRows, first = t0 * H + h;
    matmul(y + first * y_width, H * y_width, std::min(kRows, tokens - t0), y_width, w_uv + h * y_width * Dv, Dv, Dv,
           out + first * Dv, H * Dv);
  });
  if constexpr (!std::is_same_v<T, float>) store_output(p, out, output, parallel_for);
}

// The attention core's view of MLA: Hkv = 1 (absorbed) or one KV head per head (expanded).
sdpa::Params core_params(const Params& p, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t kv_len,
                         int64_t head_dim, int64_t k_split, int64_t v_head_dim) {
  sdpa::Params a;
  a.batch = batch;
  a.q_heads = q_heads;
  a.kv_heads = kv_heads;
  a.q_len = p.seq;
  a.kv_len = kv_len;
  a.head_dim = head_dim;
  a.v_head_dim = v_head_dim;
  a.k_split = k_split;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.structure.causal = p.causal;
  a.structure.window = p.window;
  a.structure.query_offset = p.past;
  return a;
}

// The core's view of the latent caches from key `first` on: Q [B, S, H, R + Dr], K the latent rows with
// the rope keys as their split tail, V the latent rows, Y [B, S, H, R]; one KV head (head stride 0).
template <typename T>
sdpa::Tensors<T, float> latent_view(const Params& p, const Tensors<T>& t, sdpa::Params& a, const float* q_abs,
                                    int64_t first) {
  const int64_t S = p.seq, H = p.heads, R = p.rank, Dr = p.rope_dim, M = p.total, Dk = R + Dr;
  a.q_strides = {S * H * Dk, Dk, H * Dk};
  a.k_strides = {M * R, 0, R};
  a.v_strides = {M * R, 0, R};
  a.k_tail_strides = {M * Dr, 0, Dr};
  a.y_strides = {S * H * R, R, H * R};
  sdpa::Tensors<T, float> at;
  at.q = q_abs;
  at.k = t.present_latent + first * R;
  at.v = t.present_latent + first * R;
  at.k_tail = t.present_k_rope + first * Dr;
  return at;
}

// Decode reads a long cache with few query rows: B * (row tiles) work items, too few for the core to spread
// over the threads (every head shares the one latent KV head). Then the keys are split — flash-decoding —
// into ranges of >= 2048 keys (at most 16), each attended on its own thread and merged by log-sum-exp. The
// split depends on the shape only, so results do not depend on the thread count.
template <typename T>
int64_t key_splits(const Params& p, const Prepared<T>& prep) {
  constexpr int64_t kMinKeys = 2048, kMaxSplits = 16, kMaxTokens = 4;
  if (p.batch * p.seq > kMaxTokens) return 1;
  const int64_t keys = *std::max_element(prep.valid.begin(), prep.valid.end());
  return std::clamp<int64_t>(keys / kMinKeys, 1, kMaxSplits);
}

// out[row] ([rows, width]) = the key ranges' normalised outputs part_at(k, row) weighted by exp(lse_at(k, row)):
// flash-decoding's merge; zeros where no range saw a key.
template <typename LseAt, typename PartAt>
void merge_ranges(int64_t splits, int64_t rows, int64_t width, LseAt lse_at, PartAt part_at, float* out_rows,
                  const ParallelFor& parallel_for) {
  parallel_for(rows, [&](int64_t row) {
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t k = 0; k < splits; ++k) m = std::max(m, lse_at(k, row));
    float* out = out_rows + row * width;
    std::fill(out, out + width, 0.0f);
    if (m == -std::numeric_limits<float>::infinity()) return;  // no visible key: zeros
    float total = 0.0f;
    for (int64_t k = 0; k < splits; ++k) {
      const float w = std::exp(lse_at(k, row) - m);
      if (w == 0.0f) continue;
      total += w;
      const float* y = part_at(k, row);
      for (int64_t x = 0; x < width; ++x) out[x] += w * y[x];
    }
    for (int64_t x = 0; x < width; ++x) out[x] /= total;
  });
}

template <typename T>
void attend_split(const Params& p, const Tensors<T>& t, const Prepared<T>& prep, const float* q_abs, int64_t splits,
                  float* latent_out, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, H = p.heads, R = p.rank, Dr = p.rope_dim, M = p.total;
  const int64_t keys = *std::max_element(prep.valid.begin(), prep.valid.end());
  const int64_t chunk = (keys + splits - 1) / splits, rows = B * S * H;
  Buffer partial = floats(splits * rows * R), lse = floats(splits * rows);
  parallel_for(splits, [&](int64_t k) {
    const int64_t first = k * chunk, count = std::min(chunk, M - first);
    sdpa::Params a = core_params(p, B, H, 1, count, R + Dr, R, R);
    a.structure.query_offset = p.past - first;  // key positions relative to the range
    a.want_lse = true;
    sdpa::Tensors<T, float> at = latent_view(p, t, a, q_abs, first);
    at.y_float = partial.get() + k * rows * R;
    at.lse = lse.get() + k * rows;
    std::vector<int64_t> offsets(static_cast<size_t>(B)), lengths(static_cast<size_t>(B));
    if (p.mode == CacheMode::kShared) {
      for (int64_t b = 0; b < B; ++b) {
        offsets[size_t(b)] = prep.past[size_t(b)] - first;
        lengths[size_t(b)] = std::clamp<int64_t>(prep.valid[size_t(b)] - first, 0, count);
      }
      at.query_offsets = offsets.data();
      at.kv_lengths = lengths.data();
    }
    sdpa::run_cpu<T, float>(a, at, serial_for);
  });
  // Merge: row (b, s, h) has LSE [b, h, s] (the core's layout) and output [b, s, h] in each split.
  merge_ranges(
      splits, rows, R,
      [&](int64_t k, int64_t row) {
        const int64_t h = row % H, token = row / H;
        return lse[size_t(k * rows + (token / S * H + h) * S + token % S)];
      },
      [&](int64_t k, int64_t row) { return partial.get() + (k * rows + row) * R; }, latent_out, parallel_for);
}

// q_abs [B, S, H, R + Dr] = [q_nope . W_UK[h]^T ; rotated q_rope]: the absorbed queries. A few tokens take one
// pass over W_UK[h] (R x Dn, read as given) per token and head; from kBlockTokens tokens of the whole batch on, a
// work item transposes W_UK[h] once, as stored, to [Dn, R] and multiplies a block of up to 64 tokens by it (batched
// decode and prefill chunks read each weight once per block, not once per token). At 16 tokens the transposition
// pays for itself in float32 and about breaks even in fp16 (2-core Xeon, H=16, R=512, Dn=128).
template <typename T>
Buffer absorb_queries(const Params& p, const Tensors<T>& t, const Prepared<T>& prep, const ParallelFor& parallel_for) {
  const int64_t H = p.heads, R = p.rank, Dn = p.nope_dim, Dr = p.rope_dim, Dq = p.query_width(), Dk = R + Dr;
  const int64_t tokens = p.batch * p.seq;
  constexpr int64_t kBlockTokens = 16, kRows = 64;
  Buffer q_abs = floats(tokens * H * Dk);
  parallel_for(tokens * H, [&](int64_t item) {
    std::memcpy(q_abs.get() + item * Dk + R, prep.q_rope.get() + item * Dr, size_t(Dr) * sizeof(float));
  });
  if (tokens < kBlockTokens) {
    parallel_for(tokens * H, [&](int64_t item) {
      std::vector<float> nope(static_cast<size_t>(Dn));
      sdpa::widen_cpu(t.query + item * Dq, Dn, nope.data());
      dot_rows(nope.data(), t.w_uk + item % H * R * Dn, R, Dn, Dn, q_abs.get() + item * Dk);
    });
    return q_abs;
  }
  const int64_t blocks = (tokens + kRows - 1) / kRows;
  parallel_for(H * blocks, [&](int64_t item) {
    const int64_t h = item / blocks, t0 = item % blocks * kRows, rows = std::min(kRows, tokens - t0);
    std::unique_ptr<T[]> w_t(new T[size_t(Dn * R)]);  // as stored: the matmul widens 16-bit values in registers
    std::vector<float> nope(static_cast<size_t>(rows * Dn));
    const T* w = t.w_uk + h * R * Dn;
    constexpr int64_t kStrip = 16;  // rows of W_UK[h] per strip: its lines stay in L1, the writes are whole lines
    for (int64_t r0 = 0; r0 < R; r0 += kStrip) {
      const int64_t r1 = std::min(R, r0 + kStrip);
      for (int64_t d = 0; d < Dn; ++d) {
        for (int64_t r = r0; r < r1; ++r) w_t[d * R + r] = w[r * Dn + d];
      }
    }
    for (int64_t i = 0; i < rows; ++i) sdpa::widen_cpu(t.query + ((t0 + i) * H + h) * Dq, Dn, nope.data() + i * Dn);
    matmul(nope.data(), Dn, rows, Dn, w_t.get(), R, R, q_abs.get() + (t0 * H + h) * Dk, H * Dk);
  });
  return q_abs;
}

// Absorbed: attention over the latent rows [latent ; k_rope] (R + Dr) shared by every head.
template <typename T>
void run_absorbed(const Params& p, const Tensors<T>& t, Prepared<T>& prep, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, H = p.heads, R = p.rank, Dr = p.rope_dim, M = p.total, Dk = R + Dr;
  Buffer q_abs = absorb_queries(p, t, prep, parallel_for);

  // Attention of every head over the one latent "KV head"; float output [B, S, H, R].
  Buffer latent_out = floats(B * S * H * R);
  const int64_t splits = key_splits(p, prep);
  if (splits == 1) {
    sdpa::Params a = core_params(p, B, H, 1, M, Dk, R, R);
    sdpa::Tensors<T, float> at = latent_view(p, t, a, q_abs.get(), 0);
    at.y_float = latent_out.get();
    if (p.mode == CacheMode::kShared) {
      at.query_offsets = prep.past.data();
      at.kv_lengths = prep.valid.data();
    }
    sdpa::run_cpu<T, float>(a, at, parallel_for);  // T = float: the core's float instantiation
  } else {
    attend_split(p, t, prep, q_abs.get(), splits, latent_out.get(), parallel_for);
  }

  // output [B, S, H*Dv] = latent output . W_UV[h], blocks of queries per head (W_UV[h] read once per block)
  project_output(p, latent_out.get(), R, t.w_uv, t.output, parallel_for);
}

// key_indices entries must name a cache slot (negative ones list no key); checked before anything is written.
template <typename T>
void check_key_indices(const Params& p, const Tensors<T>& t) {
  const int64_t K = p.index_count, entries = p.batch * p.seq * K;
  for (int64_t e = 0; e < entries; ++e) {
    if (t.key_indices[e] >= p.total) {
      const int64_t token = e / K;
      fail(kOpName, ": key_indices[", token / p.seq, ", ", token % p.seq, ", ", e % K, "] = ", t.key_indices[e],
           " is out of range: the caches hold ", p.total, " tokens (negative entries list no key)");
    }
  }
}

// Indexed (key_indices [B, S, K], DeepSeek sparse attention): each token's absorbed queries attend only to the
// keys it lists that are valid and visible to it, each once, in ascending order (the work grows with K, not with
// the cache). A work item gathers a range of its token's keys, as stored, into contiguous rows and runs the
// attention core over them as the dense path does over the cache (every head at once, the core's tiles and
// softmax). Decode (at most 4 tokens) splits each token's list into ranges of >= 256 keys (at most 16, by K: the
// shape, not the thread count, decides) merged by log-sum-exp, so one token still spreads over the threads;
// longer calls take one item per token.
template <typename T>
void run_indexed(const Params& p, const Tensors<T>& t, Prepared<T>& prep, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, H = p.heads, R = p.rank, Dr = p.rope_dim, M = p.total, Dk = R + Dr;
  const int64_t K = p.index_count, tokens = B * S;
  // Each token's keys: listed, valid and visible, sorted, without repeats.
  std::vector<int64_t> lists(static_cast<size_t>(tokens * K)), counts(static_cast<size_t>(tokens));
  parallel_for(tokens, [&](int64_t token) {
    const int64_t b = token / S, s = token % S;
    StructuralMask structure;
    structure.causal = p.causal;
    structure.window = p.window;
    structure.query_offset = prep.past[size_t(b)];
    const KeyRange visible = structure.visible_keys(s, prep.valid[size_t(b)]);
    int64_t* const list = lists.data() + token * K;
    int64_t n = 0;
    for (int64_t e = 0; e < K; ++e) {
      const int64_t j = t.key_indices[token * K + e];
      if (j >= visible.begin && j < visible.end) list[n++] = j;
    }
    std::sort(list, list + n);
    counts[size_t(token)] = std::unique(list, list + n) - list;
  });

  Buffer q_abs = absorb_queries(p, t, prep, parallel_for);
  constexpr int64_t kMinKeys = 256, kMaxSplits = 16, kMaxTokens = 4;
  const int64_t splits = tokens <= kMaxTokens ? std::clamp<int64_t>(K / kMinKeys, 1, kMaxSplits) : 1;
  const int64_t rows_out = tokens * H;
  Buffer latent_out = floats(rows_out * R);
  Buffer partial = floats(splits > 1 ? splits * rows_out * R : 0), lse = floats(splits * rows_out);
  parallel_for(tokens * splits, [&](int64_t item) {
    const int64_t token = item / splits, k = item % splits, b = token / S, n = counts[size_t(token)];
    const int64_t chunk = (n + splits - 1) / splits, first = std::min(n, k * chunk);
    const int64_t m = std::min(n, first + chunk) - first;
    float* const y = splits > 1 ? partial.get() + (k * rows_out + token * H) * R : latent_out.get() + token * H * R;
    float* const item_lse = lse.get() + k * rows_out + token * H;
    if (m == 0) {  // no key in this range: zeros and weight 0 (a row that sees nothing outputs zeros)
      std::fill(y, y + H * R, 0.0f);
      std::fill(item_lse, item_lse + H, -std::numeric_limits<float>::infinity());
      return;
    }
    // The range's keys gathered as stored into contiguous rows, then attended by the core like the dense
    // path's cache (one KV head for every head, the rope keys as the split tail): every listed key is visible.
    const int64_t* const list = lists.data() + token * K + first;
    // Left uninitialized (every row is copied in): zeroing them first would write the block twice.
    std::unique_ptr<T[]> latent_rows(new T[size_t(m * R)]), rope_rows(new T[size_t(m * Dr)]);
    for (int64_t e = 0; e < m; ++e) {
      const int64_t slot = b * M + list[e];
      std::memcpy(latent_rows.get() + e * R, t.present_latent + slot * R, size_t(R) * sizeof(T));
      std::memcpy(rope_rows.get() + e * Dr, t.present_k_rope + slot * Dr, size_t(Dr) * sizeof(T));
    }
    sdpa::Params a = core_params(p, 1, H, 1, m, Dk, R, R);
    a.q_len = 1;
    a.structure = StructuralMask{};
    a.want_lse = true;
    a.q_strides = {0, Dk, 0};
    a.k_strides = a.v_strides = {0, 0, R};
    a.k_tail_strides = {0, 0, Dr};
    a.y_strides = {0, R, 0};
    sdpa::Tensors<T, float> at;
    at.q = q_abs.get() + token * H * Dk;
    at.k = at.v = latent_rows.get();
    at.k_tail = rope_rows.get();
    at.y_float = y;
    at.lse = item_lse;  // the core's [1, H, 1]
    sdpa::run_cpu<T, float>(a, at, serial_for);
  });
  if (splits > 1) {
    merge_ranges(
        splits, rows_out, R, [&](int64_t k, int64_t row) { return lse[size_t(k * rows_out + row)]; },
        [&](int64_t k, int64_t row) { return partial.get() + (k * rows_out + row) * R; }, latent_out.get(),
        parallel_for);
  }
  project_output(p, latent_out.get(), R, t.w_uv, t.output, parallel_for);
}

// Expanded: per sequence and group of heads, K_h = latent . W_UK[h] and V_h = latent . W_UV[h] for the keys
// some query sees, then attention with Hkv = H (the rope keys as the split tail of every head's K rows).
template <typename T>
void run_expanded(const Params& p, const Tensors<T>& t, Prepared<T>& prep, const ParallelFor& parallel_for) {
  const int64_t B = p.batch, S = p.seq, H = p.heads, R = p.rank, Dn = p.nope_dim, Dr = p.rope_dim;
  const int64_t Dv = p.v_head_dim, M = p.total, Dq = p.query_width();
  const T* const w_uk = t.w_uk;  // read as given: fp16 / bfloat16 widened in the matmul's registers
  const T* const w_uv = t.w_uv;

  // q_full [B, S, H, Dn + Dr] = [q_nope ; rotated q_rope]; output in float [B, S, H, Dv]
  Buffer q_full = floats(B * S * H * Dq);
  parallel_for(B * S * H, [&](int64_t item) {
    const T* src = t.query + item * Dq;
    float* dst = q_full.get() + item * Dq;
    sdpa::widen_cpu(src, Dn, dst);
    std::memcpy(dst + Dn, prep.q_rope.get() + item * Dr, size_t(Dr) * sizeof(float));
  });
  Buffer storage;  // float output [B, S, H, Dv]: the node's output itself for float
  float* out = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    out = t.output;
  } else {
    storage = floats(B * S * H * Dv);
    out = storage.get();
  }

  constexpr int64_t kBudgetFloats = int64_t(64) << 20 >> 2;  // 64 MiB of expanded K/V at a time
  constexpr int64_t kRowBlock = 64;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t past = prep.past[size_t(b)], keys = prep.valid[size_t(b)];
    // keys before the earliest one any query sees are never expanded (sliding windows)
    StructuralMask structure;
    structure.causal = p.causal;
    structure.window = p.window;
    structure.query_offset = past;
    const int64_t first = S > 0 ? std::min(structure.visible_keys(0, keys).begin, keys) : keys;
    const int64_t count = keys - first;
    Buffer lat_storage, rope_storage;
    const float* lat = as_float(t.present_latent + b * M * R, keys * R, lat_storage, parallel_for);
    const float* rope = as_float(t.present_k_rope + b * M * Dr, keys * Dr, rope_storage, parallel_for);
    const int64_t chunk = std::clamp<int64_t>(kBudgetFloats / std::max<int64_t>(1, keys * (Dn + Dv)), 1, H);
    Buffer k_exp = floats(chunk * keys * Dn), v_exp = floats(chunk * keys * Dv);
    for (int64_t h0 = 0; h0 < H; h0 += chunk) {
      const int64_t hc = std::min(chunk, H - h0);
      const int64_t blocks = (count + kRowBlock - 1) / kRowBlock;
      parallel_for(hc * blocks, [&](int64_t item) {
        const int64_t h = item / blocks, j0 = first + (item % blocks) * kRowBlock;
        const int64_t rows = std::min(kRowBlock, keys - j0);
        matmul(lat + j0 * R, R, rows, R, w_uk + (h0 + h) * R * Dn, Dn, Dn, k_exp.get() + (h * keys + j0) * Dn, Dn);
        matmul(lat + j0 * R, R, rows, R, w_uv + (h0 + h) * R * Dv, Dv, Dv, v_exp.get() + (h * keys + j0) * Dv, Dv);
      });
      sdpa::Params a = core_params(p, 1, hc, hc, keys, Dq, Dn, Dv);
      a.structure.query_offset = past;
      a.q_strides = {0, Dq, H * Dq};
      a.k_strides = {0, keys * Dn, Dn};
      a.v_strides = {0, keys * Dv, Dv};
      a.k_tail_strides = {0, 0, Dr};
      a.y_strides = {0, Dv, H * Dv};
      sdpa::Tensors<float> at;
      at.q = q_full.get() + (b * S * H + h0) * Dq;
      at.k = k_exp.get();
      at.v = v_exp.get();
      at.k_tail = rope;
      at.y = out + (b * S * H + h0) * Dv;
      sdpa::run_cpu<float>(a, at, parallel_for);
    }
  }
  if constexpr (!std::is_same_v<T, float>) store_output(p, out, t.output, parallel_for);
}

}  // namespace

template <typename T>
Path run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  if (p.indexed()) check_key_indices(p, t);
  Prepared<T> prep = prepare(p, t, parallel_for);
  if (p.batch == 0 || p.seq == 0) return Path::kAbsorbed;
  if (p.indexed()) {
    run_indexed(p, t, prep, parallel_for);
    return Path::kIndexed;
  }
  const Path path = choose_path(p, prep.past.data(), prep.valid.data());
  if (path == Path::kExpanded) {
    run_expanded(p, t, prep, parallel_for);
  } else {
    run_absorbed(p, t, prep, parallel_for);
  }
  return path;
}

template Path run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template Path run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template Path run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::mla
