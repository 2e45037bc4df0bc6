#include "indexer/cpu_kernel.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/half.h"
#include "mla/cpu_linear.h"
#include "sdpa/cpu_kernel.h"

namespace onnxattn::indexer {
namespace {

using sdpa::as_float;

// Keys per work item: the [D, kKeys] float tile of keys, the matmul's right-hand side read again for every four
// query heads, stays in L1 at D = 128 (32 KiB; with 128 keys it spilled to L2 and decode ran at a third of the
// speed), and the block's [queries * H, kKeys] products in L2.
constexpr int64_t kKeys = 64;
// Score rows (floats) kept at once: a wave of query rows whose visible scores fit, at least one block.
constexpr int64_t kWaveFloats = int64_t(16) << 20;

struct Block {
  int64_t batch, first_row, count;  // rows first_row .. + count of batch `batch` (row = i within the sequence)
};

// The index scores of a block's queries for keys [k0, k1): score[j][t] = sum_h w[j, h] * relu(q_jh . k_t) * scale
// (relu(scale * x) = scale * relu(x) for scale >= 0), for the keys each query sees. The block's query heads are the
// rows of one matmul against the transposed key tile, so each head's products are contiguous over the keys and
// the sum over heads is a vector loop over keys. `scores` holds the block's rows (row stride T).
template <typename T>
void score_range(const Params& p, const Tensors<T>& t, const Block& block, const int64_t* first, int64_t k0, int64_t k1,
                 float* scores) {
  const int64_t H = p.heads, D = p.head_dim, rows = block.count * H, keys = k1 - k0;
  thread_local std::vector<float> queries, key_rows, keys_t, products;
  keys_t.resize(size_t(D * kKeys));
  products.resize(size_t(rows * kKeys));
  // [count * H, D], rows contiguous
  const float* q_rows = as_float(t.query + (block.batch * p.seq + block.first_row) * H * D, rows * D, queries);
  const float* key = as_float(t.key + (block.batch * p.total + k0) * D, keys * D, key_rows);
  for (int64_t k = 0; k < keys; ++k) {
    for (int64_t d = 0; d < D; ++d) keys_t[size_t(d * keys + k)] = key[k * D + d];
  }
  mla::matmul(q_rows, D, rows, D, keys_t.data(), keys, keys, products.data(), keys);
  for (int64_t j = 0; j < block.count; ++j) {
    const int64_t position = first[block.batch] + block.first_row + j;
    const int64_t visible = std::min(k1, position + 1) - k0;
    if (visible <= 0) continue;
    const float* w = t.weights + (block.batch * p.seq + block.first_row + j) * H;
    float* row = scores + j * p.total + k0;
    std::fill(row, row + visible, 0.0f);
    for (int64_t h = 0; h < H; ++h) {
      const float* x = products.data() + (j * H + h) * keys;
      const float weight = w[h] * p.scale;
      for (int64_t k = 0; k < visible; ++k) row[k] += weight * std::max(x[k], 0.0f);
    }
  }
}

// score_range for a block of one query (decode), whose [D, H] transposed heads `q_t` the caller prepared once
// for all its key tiles: the keys are the matmul's rows as they lie in memory (no transposed copy of every key
// tile, which cost as much as the products at H = 64), each key's H products contiguous, summed by dot_rows
// with the scaled head weights after the ReLU.
template <typename T>
void score_range_one_query(const Params& p, const Tensors<T>& t, const Block& block, const int64_t* first,
                           const float* q_t, int64_t k0, int64_t k1, float* scores) {
  const int64_t H = p.heads, D = p.head_dim;
  const int64_t visible = std::min(k1, first[block.batch] + block.first_row + 1) - k0;
  if (visible <= 0) return;
  thread_local std::vector<float> key_rows, products, weights;
  const float* k_rows = as_float(t.key + (block.batch * p.total + k0) * D, visible * D, key_rows);
  products.resize(size_t(kKeys * H));
  mla::matmul(k_rows, D, visible, D, q_t, H, H, products.data(), H);
  for (int64_t i = 0; i < visible * H; ++i) products[size_t(i)] = std::max(products[size_t(i)], 0.0f);
  const float* w = t.weights + (block.batch * p.seq + block.first_row) * H;
  weights.resize(size_t(H));
  for (int64_t h = 0; h < H; ++h) weights[size_t(h)] = w[h] * p.scale;
  mla::dot_rows(weights.data(), products.data(), visible, H, H, scores + k0);
}

// The top_k of scores[0, visible) (ties to the lower position) in ascending position order, -1 padded. Scores
// that are not > -inf (a -inf or NaN score) are never picked.
void select_row(const float* scores, int64_t visible, int64_t top_k, int64_t* out) {
  thread_local std::vector<float> values;
  values.clear();
  const float lowest = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < visible; ++i) {
    if (scores[i] > lowest) values.push_back(scores[i]);
  }
  int64_t written = 0;
  if (int64_t(values.size()) <= top_k) {
    for (int64_t i = 0; i < visible; ++i) {
      if (scores[i] > lowest) out[written++] = i;
    }
  } else {
    std::nth_element(values.begin(), values.begin() + (top_k - 1), values.end(), std::greater<float>());
    const float threshold = values[size_t(top_k - 1)];
    int64_t above = 0;
    for (float v : values) above += v > threshold;
    int64_t ties = top_k - above;  // the lowest positions scoring exactly the threshold fill the list
    for (int64_t i = 0; i < visible && written < top_k; ++i) {
      if (scores[i] > threshold || (scores[i] == threshold && ties-- > 0)) out[written++] = i;
    }
  }
  std::fill(out + written, out + top_k, int64_t(-1));
}

}  // namespace

template <typename T>
void run_cpu(const Params& p, const Tensors<T>& t, const ParallelFor& parallel_for) {
  if (p.rows() == 0) return;
  const std::vector<int64_t> first = first_positions(p, t.past_lengths);
  // Queries per block: about 256 rows of products (H = 64: four queries share each key tile).
  const int64_t per_block = std::clamp<int64_t>(256 / p.heads, 1, 8);
  const bool one_query_blocks = std::min(per_block, p.seq) == 1;
  std::vector<Block> blocks;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t i = 0; i < p.seq; i += per_block) blocks.push_back({b, i, std::min(per_block, p.seq - i)});
  }
  const int64_t wave_rows = std::max<int64_t>(per_block, kWaveFloats / std::max<int64_t>(p.total, 1));
  std::unique_ptr<float[]> scores(new float[size_t(std::min(wave_rows, p.rows() + per_block) * p.total)]);
  struct Item {
    size_t block;
    int64_t k0, k1;
    int64_t offset;  // the block's first score row in the wave's buffer
  };
  std::vector<Item> items;
  std::vector<int64_t> row_offsets;
  std::vector<float> queries_t;
  for (size_t begin = 0; begin < blocks.size();) {
    // a wave: consecutive blocks whose rows fit the buffer
    items.clear();
    row_offsets.clear();
    int64_t rows = 0;
    size_t end = begin;
    for (; end < blocks.size() && (end == begin || rows + blocks[end].count <= wave_rows); ++end) {
      const Block& block = blocks[end];
      const int64_t keys = first[block.batch] + block.first_row + block.count;  // the last query's keys
      // whole tiles of keys, also past the block's last visible one (they exist; their products go unread): a
      // ragged last tile ran the matmul's narrow column tails and took a fifth of a prompt's time
      for (int64_t k0 = 0; k0 < keys; k0 += kKeys) items.push_back({end, k0, std::min(p.total, k0 + kKeys), rows});
      row_offsets.push_back(rows);
      rows += block.count;
    }
    const int64_t H = p.heads, D = p.head_dim;
    if (one_query_blocks) {  // their heads transposed once for all their key tiles
      queries_t.resize(size_t((end - begin) * D * H));
      for (size_t index = begin; index < end; ++index) {
        const T* q = t.query + (blocks[index].batch * p.seq + blocks[index].first_row) * H * D;
        float* q_t = queries_t.data() + (index - begin) * D * H;
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t d = 0; d < D; ++d) q_t[d * H + h] = to_float(q[h * D + d]);
        }
      }
    }
    parallel_for(int64_t(items.size()), [&](int64_t index) {
      const Item& item = items[size_t(index)];
      float* block_scores = scores.get() + item.offset * p.total;
      if (one_query_blocks) {
        score_range_one_query(p, t, blocks[item.block], first.data(), queries_t.data() + (item.block - begin) * D * H,
                              item.k0, item.k1, block_scores);
      } else {
        score_range(p, t, blocks[item.block], first.data(), item.k0, item.k1, block_scores);
      }
    });
    parallel_for(rows, [&](int64_t row) {
      const size_t block_index = begin + size_t(std::upper_bound(row_offsets.begin(), row_offsets.end(), row) -
                                                row_offsets.begin()) - 1;
      const Block& block = blocks[block_index];
      const int64_t i = block.first_row + (row - row_offsets[block_index - begin]);
      const int64_t visible = first[block.batch] + i + 1;
      select_row(scores.get() + row * p.total, visible, p.top_k,
                 t.key_indices + (block.batch * p.seq + i) * p.top_k);
    });
    begin = end;
  }
}

template void run_cpu<float>(const Params&, const Tensors<float>&, const ParallelFor&);
template void run_cpu<Float16>(const Params&, const Tensors<Float16>&, const ParallelFor&);
template void run_cpu<BFloat16>(const Params&, const Tensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::indexer
