#pragma once
// Hopper (sm_90a) warpgroup MMA: the PTX wrappers the wgmma prefill kernel uses (sdpa/cuda_prefill_wgmma.cuh).
// Compiled to real instructions only in the sm_90a pass (__CUDA_ARCH_FEAT_SM90_ALL); other passes get
// empty bodies, and the plan sends work to the wgmma kernel only on devices this build has sm_90a code for
// (DeviceInfo::wgmma).
//
// Shared-memory operands are read through 64-bit matrix descriptors; the tiles' layout and the descriptors
// are in sdpa/cuda_wgmma_layout.h (host-tested).
#include <cstdint>
#include <type_traits>

#include "common/half.h"

// The 64 fp32 accumulator registers of an m64n128 tile, as asm operands %0..%63.
#define ONNXATTN_WGMMA_D_REGS \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, " \
  "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, " \
  "%46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define ONNXATTN_WGMMA_D_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// The 32 fp32 accumulator registers of an m64n64 tile, as asm operands %0..%31.
#define ONNXATTN_WGMMA_D32_REGS \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define ONNXATTN_WGMMA_D32_OPERANDS(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

namespace onnxattn::sdpa::cuda::wgmma {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ONNXATTN_WGMMA_ENABLED 1
#endif

// Orders the warpgroup's register writes before the wgmma that reads them (accumulators, A fragments).
__device__ __forceinline__ void fence() {
#ifdef ONNXATTN_WGMMA_ENABLED
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void commit() {
#ifdef ONNXATTN_WGMMA_ENABLED
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void wait() {
#ifdef ONNXATTN_WGMMA_ENABLED
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}
// wait<kPending> kept below the instructions that compute `ready`, which must be the same in every warp of the
// warpgroup (wgmma.wait_group is .aligned: they must all execute the same instruction): ptxas
// treats a wait as free to hoist and moved the prefill loop's wait<0> above two thirds of the softmax's
// exponentials, which then ran after the P V product instead of beside it; a branch on a value computed last
// pins it (the sm_90a SASS then has every MUFU.EX2 of the step before the WARPGROUP.DEPBAR).
template <int kPending>
__device__ __forceinline__ void wait_after(bool ready) {
#ifdef ONNXATTN_WGMMA_ENABLED
  if (ready) {
    wait<kPending>();
  } else {  // a different string, so the two branches are not merged back into one unconditional wait
    asm volatile("wgmma.wait_group.sync.aligned %0; // pinned\n" ::"n"(kPending) : "memory");
  }
#endif
}
// Makes this thread's generic-proxy shared-memory writes (cp.async) visible to the async proxy (wgmma's
// operand reads); followed by a barrier before the wgmma is issued.
__device__ __forceinline__ void fence_shared_for_async() {
#ifdef ONNXATTN_WGMMA_ENABLED
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of `d` across the asynchronous MMA (an empty asm that "writes" it).
template <int kCount>
__device__ __forceinline__ void fence_registers(float (&d)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int kRows, int kCount>
__device__ __forceinline__ void fence_registers(uint32_t (&r)[kRows][kCount]) {
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < kCount; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}

// D[64x128] (+)= A[64x16] B[16x128]^T-as-stored: A and B K-major in shared memory (S = Q K^T).
// `accumulate` 0 overwrites D.
template <typename T>
__device__ __forceinline__ void mma_ss(float (&d)[64], uint64_t desc_a, uint64_t desc_b, uint32_t accumulate) {
#ifdef ONNXATTN_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, Float16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " ONNXATTN_WGMMA_D_REGS
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : ONNXATTN_WGMMA_D_OPERANDS(d)
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " ONNXATTN_WGMMA_D_REGS
                 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : ONNXATTN_WGMMA_D_OPERANDS(d)
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  }
#endif
}

// D[64x64] (+)= A[64x16] B[16x64]: as below, for a 64-column output (head tile 64).
template <typename T>
__device__ __forceinline__ void mma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, uint32_t accumulate) {
#ifdef ONNXATTN_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, Float16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " ONNXATTN_WGMMA_D32_REGS
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : ONNXATTN_WGMMA_D32_OPERANDS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " ONNXATTN_WGMMA_D32_REGS
                 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
                 : ONNXATTN_WGMMA_D32_OPERANDS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  }
#endif
}

// D[64x128] (+)= A[64x16] B[16x128]: A from registers (the mma.sync m16n8k16 A-fragment layout, warp w of
// the warpgroup holding rows 16w..16w+15), B MN-major in shared memory (O += P V).
template <typename T>
__device__ __forceinline__ void mma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, uint32_t accumulate) {
#ifdef ONNXATTN_WGMMA_ENABLED
  if constexpr (std::is_same_v<T, Float16>) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " ONNXATTN_WGMMA_D_REGS
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : ONNXATTN_WGMMA_D_OPERANDS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " ONNXATTN_WGMMA_D_REGS
                 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : ONNXATTN_WGMMA_D_OPERANDS(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  }
#endif
}

}  // namespace onnxattn::sdpa::cuda::wgmma
