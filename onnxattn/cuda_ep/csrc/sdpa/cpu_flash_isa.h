#pragma once
// Declarations of the per-ISA instantiations of the CPU flash kernel (cpu_flash.inc); cpu_kernel.cc
// dispatches between them.
#include "sdpa/cpu_kernel.h"

#define ONNXATTN_DECLARE_ISA(isa)                                                       \
  namespace onnxattn::sdpa::isa {                                                       \
  void run(const Params&, const Tensors<float>&, const ParallelFor&);                   \
  void run(const Params&, const Tensors<Float16>&, const ParallelFor&);                 \
  void run(const Params&, const Tensors<BFloat16>&, const ParallelFor&);                \
  void run(const Params&, const Tensors<Float16, float>&, const ParallelFor&);          \
  void run(const Params&, const Tensors<BFloat16, float>&, const ParallelFor&);         \
  void widen_array(const Float16*, int64_t, float*);                                    \
  void widen_array(const BFloat16*, int64_t, float*);                                   \
  void narrow_array(const float*, int64_t, Float16*);                                   \
  void narrow_array(const float*, int64_t, BFloat16*);                                  \
  }

ONNXATTN_DECLARE_ISA(generic)
#if defined(__x86_64__) || defined(_M_X64)
#define ONNXATTN_HAVE_X86_ISAS 1
ONNXATTN_DECLARE_ISA(avx2)
ONNXATTN_DECLARE_ISA(avx512)
#endif
#undef ONNXATTN_DECLARE_ISA
