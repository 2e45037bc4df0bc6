#pragma once
// The shared-memory layout of the wgmma prefill kernel (sdpa/cuda_prefill_wgmma.cuh) and the matrix
// descriptors its MMAs read it through, host+device so tests/test_sdpa_cuda_host.py checks on the CPU that
// every descriptor, decoded by the PTX ISA's canonical layouts, addresses exactly the elements the loads
// stored there (sdpa/cuda_capi.cc exports them).
//
// Tiles are 128 rows x 64 or 128 16-bit columns, 1024-byte aligned: one or two 64-column halves of 128-byte
// rows, 16 KiB apart; 16-byte chunk c of row r of a half is stored at chunk c ^ (r % 8) (the 128-byte swizzle, which the
// hardware applies to address bits 4..6 from bits 7..9).
//
// Descriptor (PTX ISA, "matrix descriptor"): start address >> 4 in bits 0..13, leading-dimension byte
// offset (LBO) >> 4 in 16..29, stride-dimension byte offset (SBO) >> 4 in 32..45, layout 1 (128-byte
// swizzle) in bits 62..63.
//  - K-major operands (Q as A, K as B of S = Q K^T: rows along M/N, the instruction's 16 k-elements inside a
//    128-byte row): SBO = 1024 (the next 8 rows), LBO unused (1); k-step ks of 16 elements starts
//    (ks % 4) * 32 bytes into half ks / 4.
//  - MN-major operand (V as B of O += P V: one 128-byte row of 64 N-elements per key): LBO = the distance
//    between the two 64-column halves along N, SBO = 1024 (the next 8 keys); k-step kk of 16 keys starts
//    kk * 16 rows (2048 bytes) in.
#include <cstdint>

#include "common/host_device.h"

namespace onnxattn::sdpa::cuda::wgmma_layout {

inline constexpr uint32_t kRows = 128;                 // rows of every tile (Q rows, K/V keys)
inline constexpr uint32_t kHalfBytes = kRows * 128;    // one 64-column half
constexpr uint32_t tile_bytes(int columns) { return uint32_t(columns / 64) * kHalfBytes; }  // 16 or 32 KiB
inline constexpr uint32_t kAtomBytes = 1024;           // 8 rows of 128 bytes: the swizzle's period

// Byte offset in its tile of 16-byte chunk `chunk` (columns 8 chunk .. 8 chunk + 7, 0 <= chunk < 16) of `row`.
ONNXATTN_HD uint32_t tile_offset(uint32_t row, uint32_t chunk) {
  return (chunk / 8) * kHalfBytes + row * 128 + (((chunk % 8) ^ (row % 8)) * 16);
}

ONNXATTN_HD uint64_t descriptor(uint32_t smem_addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  const uint64_t lbo_field = lbo_bytes == 0 ? 1 : lbo_bytes >> 4;  // 0: unused (K-major swizzled)
  return uint64_t((smem_addr & 0x3ffffu) >> 4) | (lbo_field << 16) | (uint64_t(sbo_bytes >> 4) << 32) |
         (uint64_t(1) << 62);
}

// A of S = Q K^T for warpgroup `group` (rows 64 group ..), k-step ks (0..7) of the Q tile at `q_tile`.
ONNXATTN_HD uint64_t q_descriptor(uint32_t q_tile, uint32_t group, uint32_t ks) {
  return descriptor(q_tile + group * 64 * 128 + (ks / 4) * kHalfBytes + (ks % 4) * 32, 0, kAtomBytes);
}
// B of S = Q K^T: all 128 keys of the K tile at `k_tile`, k-step ks (0..7).
ONNXATTN_HD uint64_t k_descriptor(uint32_t k_tile, uint32_t ks) {
  return descriptor(k_tile + (ks / 4) * kHalfBytes + (ks % 4) * 32, 0, kAtomBytes);
}
// B of O += P V: keys 16 kk .. 16 kk + 15 (kk 0..7) of the V tile at `v_tile`, all 128 columns (transposed).
ONNXATTN_HD uint64_t v_descriptor(uint32_t v_tile, uint32_t kk) {
  return descriptor(v_tile + kk * 16 * 128, kHalfBytes, kAtomBytes);
}

}  // namespace onnxattn::sdpa::cuda::wgmma_layout
