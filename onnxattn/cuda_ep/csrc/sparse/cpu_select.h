#pragma once
// The block-list producers of the sparse ops on the CPU, compiled per ISA (cpu_select.inc) and dispatched
// like the attention core (ONNXATTN_CPU_ISA lowers the choice):
//
// select_blocks: score every query row against per-(batch, KV head) centroid rows with one GEMM per work
// item (the G heads of the group x a chunk of queries), turn the scores into block scores (raw dot products,
// or the compression branch's attention probabilities, whose output it writes on the way), sum them over the
// group when the selection is shared, and pick each list with a fused top-k (forced blocks first, then the
// best scores, ties to the lower index). The lists feed the core's block-sparse path (sdpa Params::sparse_*).
//
// fine_tokens: NativeSparseAttention's fine branch — per row, the top_tokens keys by score, found with a
// tiled score GEMM and a streaming top-k (a min-heap per row that most keys fail to enter after a vector
// compare), then attention over exactly those keys.
#include <cstdint>

#include "common/half.h"
#include "common/parallel.h"

namespace onnxattn::sparse {

enum class BlockScore { kDot, kCompressedProbability };

struct SelectParams {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, head_dim = 0, v_head_dim = 0;
  int64_t num_centroids = 0;  // Nc: centroid rows per (b, KV head), candidates c < Nc have scores
  int64_t centroid_stride = 0;  // floats per transposed centroid row (Nc rounded up to 16)
  int64_t num_blocks = 0;     // candidates c < num_blocks (those >= Nc have no score: chosen only if forced)
  int64_t block_size = 1;     // keys per block: the own block is p / block_size
  int64_t query_offset = 0;   // query row i sits at key position p = i + query_offset
  int64_t top = 0;            // entries chosen per list (and the list length); 0: no lists
  bool causal = false;        // candidates c <= own block, which is forced
  bool shared = false;        // one list per (b, KV head, i), by scores summed over the group
  int64_t sink_blocks = 0, local_blocks = 0;  // forced: c < sink; own - local <= c < own
  BlockScore score = BlockScore::kDot;
  float scale = 1.0f;         // kCompressedProbability: scores are softmax(scale * <q, centroid>)
};

template <typename TQ>
struct SelectTensors {
  const TQ* q = nullptr;                 // [B, Hq, Sq, D], contiguous
  const float* centroids_t = nullptr;    // [B, Hkv, D, centroid_stride]: centroids transposed, zero padded
  const float* compressed_values = nullptr;  // kCompressedProbability: [B, Hkv, Nc, Dv]
  float* compressed_out = nullptr;       // kCompressedProbability: the branch output [B, Hq, Sq, Dv]
  int32_t* lists = nullptr;              // [B, Hs, Sq, top]: chosen blocks ascending, -1 padded
  int64_t* listed = nullptr;             // optional copy as int64 (the selected_* outputs)
};

struct FineParams {
  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0, head_dim = 0, v_head_dim = 0;
  int64_t top = 0;          // top_tokens
  bool causal = false;      // candidates j <= p = i + kv_len - q_len
  float scale = 1.0f;
};

template <typename T>
struct FineTensors {
  const T* q = nullptr;      // [B, Hq, Sq, D]
  const T* k = nullptr;      // [B, Hkv, Skv, D]
  const T* v = nullptr;      // [B, Hkv, Skv, Dv]
  float* out = nullptr;      // [B, Hq, Sq, Dv]
  int64_t* listed = nullptr; // optional [B, Hq, Sq, top]: chosen keys ascending, -1 padded
};

template <typename TQ>
void select_blocks(const SelectParams& p, const SelectTensors<TQ>& t, const ParallelFor& parallel_for);

template <typename T>
void fine_tokens(const FineParams& p, const FineTensors<T>& t, const ParallelFor& parallel_for);

}  // namespace onnxattn::sparse
