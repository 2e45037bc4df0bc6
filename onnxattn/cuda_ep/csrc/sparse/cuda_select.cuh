#pragma once
// The sparse ops' selection and fine-branch launchers (cuda_select.cu), for the plan and run code in
// cuda_kernel.cu: their argument structs and the host-side sizing of the tiled kernels. Included by .cu files.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "common/half.h"
#include "sparse/cuda_kernel.h"

namespace onnxattn::sparse::cuda {

template <typename TQ>
struct SelectArgs {
  const TQ* q;                 // [B, Hq, Sq, D]
  const float* centroids;      // [B, Hkv, Nc, D]
  const TQ* compressed_values; // probabilities mode: [B, Hkv, Nc, Dv]
  float* compressed_out;       // probabilities mode: [B, Hq, Sq, Dv]
  int32_t* lists;              // [B, Hs, Sq, top]
  int64_t* listed;             // optional int64 copy
  int64_t batch, q_heads, kv_heads, q_len, num_centroids, num_blocks, block_size, query_offset, top;
  int dim, v_dim;
  bool causal, shared, probabilities;
  int64_t sink_blocks, local_blocks;
  float scale;
  // The tensor-core kernels' loads overlapped (ONNXATTN_SPARSE_CUDA_LOADS=async, the default): the same bits.
  bool overlap_loads = false;
  // The selection's argmax by two warp reductions (ONNXATTN_SPARSE_CUDA_ARGMAX=redux, the default; warp_select): the
  // same lists.
  bool redux_argmax = false;
  // The routing's lists by group maxima (ONNXATTN_SPARSE_CUDA_ROUTE=groups, select_split_kernel with float32 Q only:
  // warp_select_groups): the same lists.
  bool group_argmax = false;
};

template <typename T>
struct FineArgs {
  const T* q;
  const T* k;
  const T* v;
  float* out;        // [B, Hq, Sq, Dv]
  int64_t* listed;   // optional [B, Hq, Sq, top]
  float* scores;     // [rows of this launch][Skv]
  int64_t row_begin, rows;
  int64_t q_heads, kv_heads, q_len, kv_len, top;
  int dim, v_dim;
  bool causal;
  float scale;
};

template <typename T>
struct FineTiledArgs {
  const T* q;
  const T* k;
  const T* v;
  float* out;       // [B, Hq, Sq, Dv]
  int64_t* listed;  // optional [B, Hq, Sq, top]
  int64_t batch, q_heads, kv_heads, q_len, kv_len, top;
  int dim, v_dim, capacity;
  bool causal;
  float scale;
};

// Sizing (select_tiling, fine_capacity, fine_tiled_smem): sparse/cuda_sizes.h.
template <typename TQ>
void launch_select(const SelectArgs<TQ>& a, const SelectTiling& tiling, cudaStream_t stream);
template <typename T>
void launch_fine(const FineArgs<T>& f, cudaStream_t stream);
template <typename T>
void launch_fine_tiled(const FineTiledArgs<T>& f, size_t smem, cudaStream_t stream);

}  // namespace onnxattn::sparse::cuda
