#pragma once
// Declarations of the per-ISA instantiations of the sparse block-list producers (cpu_select.inc);
// cpu_select.cc dispatches between them as the attention core does (sdpa::cpu_isa()).
#include "sparse/cpu_select.h"

#define ONNXATTN_DECLARE_SELECT_ISA(isa)                                                   \
  namespace onnxattn::sparse::isa {                                                        \
  void select_blocks(const SelectParams&, const SelectTensors<float>&, const ParallelFor&);    \
  void select_blocks(const SelectParams&, const SelectTensors<Float16>&, const ParallelFor&);  \
  void select_blocks(const SelectParams&, const SelectTensors<BFloat16>&, const ParallelFor&); \
  void fine_tokens(const FineParams&, const FineTensors<float>&, const ParallelFor&);          \
  void fine_tokens(const FineParams&, const FineTensors<Float16>&, const ParallelFor&);        \
  void fine_tokens(const FineParams&, const FineTensors<BFloat16>&, const ParallelFor&);       \
  }

ONNXATTN_DECLARE_SELECT_ISA(generic)
#if defined(__x86_64__) || defined(_M_X64)
#define ONNXATTN_HAVE_X86_SELECT_ISAS 1
ONNXATTN_DECLARE_SELECT_ISA(avx2)
ONNXATTN_DECLARE_SELECT_ISA(avx512)
#endif
#undef ONNXATTN_DECLARE_SELECT_ISA
