#pragma once
// LightningIndexer: the attribute and shape contract (mirrors onnxattn/ops/indexer.py), checked once on the host
// and shared by the CPU and CUDA kernels. Nothing here depends on onnxruntime.
#include <cstdint>
#include <optional>
#include <vector>

namespace onnxattn::indexer {

inline constexpr const char* kOpName = "LightningIndexer";
inline constexpr int64_t kMaxTopK = 2147483647;  // the kernels count picks in 32 bits

struct Attributes {
  int64_t num_heads = 0;  // required
  int64_t top_k = 0;      // required
  float scale = 0.0f;     // 0: 1/sqrt(D)
};
void check_attributes(const Attributes& attrs);

enum Input : size_t { kQuery, kKey, kWeights, kPastLengths, kNumInputs };

using Shape = std::vector<int64_t>;

struct Shapes {
  std::optional<Shape> inputs[kNumInputs];  // nullopt: input absent
};

struct Params {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t total = 0;  // T: keys per row (the buffer length M in shared-buffer mode)
  int64_t top_k = 0;
  float scale = 1.0f;
  bool shared = false;  // past_lengths given: query i of row b sits at past_lengths[b] + i, else at T - S + i

  std::vector<int64_t> output_shape() const { return {batch, seq, top_k}; }
  int64_t rows() const { return batch * seq; }
};

// Validates the shapes (and attributes) and fills Params. Throws InputError naming the op and the input.
Params make_params(const Shapes& shapes, const Attributes& attrs);

// The key position of each row's first query ([B]); throws InputError on a past_lengths value out of range.
// `past_lengths` is host memory (null in concatenation mode).
std::vector<int64_t> first_positions(const Params& p, const int64_t* past_lengths);

template <typename T>
struct Tensors {
  const T* query = nullptr;           // [B, S, H*D]
  const T* key = nullptr;             // [B, T, D]
  const float* weights = nullptr;     // [B, S, H]
  const int64_t* past_lengths = nullptr;  // [B]
  int64_t* key_indices = nullptr;     // [B, S, top_k]
};

}  // namespace onnxattn::indexer
