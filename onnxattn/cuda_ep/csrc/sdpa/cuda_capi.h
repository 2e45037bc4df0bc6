#pragma once
// The C structs of the CUDA test entry points (sdpa/cuda_capi.cc, gqa/cuda_capi.cc) and the helpers they
// share. Plain C++: built in every configuration. The structs mirror tests/gpu/sdpa_cuda_lib.py and
// tests/gpu/gqa_cuda_lib.py field for field; change them together.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>

#include "sdpa/cuda_plan.h"

#define ONNXATTN_EXPORT __attribute__((visibility("default")))

extern "C" {

struct OnnxAttnSdpaProblem {
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim;
  int64_t causal, window, band;
  float scale, softcap;
  int32_t dtype;      // ONNX element type: 1 float32, 10 float16, 16 bfloat16
  int32_t mask_kind;  // 0 none, 1 bool, 2 additive
  int32_t mask_rank;  // 0..4, dims in mask_shape[0 .. mask_rank)
  int32_t want_lse;
  int64_t mask_shape[4];
};

struct OnnxAttnSdpaDevice {
  int32_t sm_count, max_smem_per_block, smem_per_sm;
  int32_t wgmma;  // 1: an sm_90 device with the library's sm_90a code (DeviceInfo::wgmma)
};

struct OnnxAttnSdpaPlanInfo {
  int32_t schedule;  // 0 prefill, 1 decode
  int32_t kernel;    // 0 mma, 1 simt, 2 wgmma
  int32_t head_dim_tile, rows_per_cta, keys_per_tile, stages, threads;
  int32_t pdl;  // 1: decode and combine launched as programmatic dependents
  int64_t rows_per_head, row_tiles, splits, grid, smem_bytes, combine_grid, scratch_bytes, partial_lse_offset;
  int64_t min_split_keys;
  int64_t split_counters, split_counters_offset;  // rule 12, the fused merge (0 counters: the combine kernel)
  char reason[512];
};

// Views of fused ops: element strides (batch, head, seq) of Q, K, V, Y, all 0 = contiguous [B, H, S, D];
// per_batch_lengths: query offsets and valid key counts come per batch from device arrays.
struct OnnxAttnSdpaLayout {
  int64_t q_strides[3], k_strides[3], v_strides[3], y_strides[3];
  int32_t per_batch_lengths, reserved;
};

}  // extern "C"

namespace onnxattn::sdpa::cuda::capi {

inline void write_error(char* err, size_t err_len, const char* message) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", message);
}

// Runs f; returns its result, or 1 with the exception's message in err.
template <typename F>
int guarded(char* err, size_t err_len, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "onnxattn: unknown error");
  }
  return 1;
}

// ONNX element type code (1 float32, 10 float16, 16 bfloat16); InputError naming `op` otherwise.
DType dtype_from_onnx(int32_t code, const char* op = kOpName);
// path: -1 from the environment, 0 auto, 1 prefill, 2 decode; kernel: -1 environment, 0 auto, 1 mma, 2 simt.
// The split count and the prefill kernel choice always come from the environment.
Request request_from(int32_t path, int32_t kernel, const char* op = kOpName);
DeviceInfo device_from(const OnnxAttnSdpaDevice& d);
void fill_info(const LaunchPlan& plan, OnnxAttnSdpaPlanInfo* out);

}  // namespace onnxattn::sdpa::cuda::capi
