// Portable instantiation of the sparse block-list producers and the run-time ISA dispatch, which follows the
// attention core's choice (sdpa::cpu_isa(): the best the CPU has, lowered by ONNXATTN_CPU_ISA).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "sdpa/cpu_flash_prelude.h"
#include "sdpa/cpu_kernel.h"
#include "sparse/cpu_select_isa.h"

namespace onnxattn::sparse {
namespace generic {
#include "sdpa/simd_generic.inc"
#include "sparse/cpu_select.inc"
}  // namespace generic

namespace {
enum class Isa { kGeneric, kAvx2, kAvx512 };
Isa isa() {
  const char* name = sdpa::cpu_isa();
  if (std::strcmp(name, "avx512") == 0) return Isa::kAvx512;
  if (std::strcmp(name, "avx2") == 0) return Isa::kAvx2;
  return Isa::kGeneric;
}
}  // namespace

template <typename TQ>
void select_blocks(const SelectParams& p, const SelectTensors<TQ>& t, const ParallelFor& parallel_for) {
  switch (isa()) {
#if ONNXATTN_HAVE_X86_SELECT_ISAS
    case Isa::kAvx512: return avx512::select_blocks(p, t, parallel_for);
    case Isa::kAvx2: return avx2::select_blocks(p, t, parallel_for);
#endif
    default: return generic::select_blocks(p, t, parallel_for);
  }
}

template <typename T>
void fine_tokens(const FineParams& p, const FineTensors<T>& t, const ParallelFor& parallel_for) {
  switch (isa()) {
#if ONNXATTN_HAVE_X86_SELECT_ISAS
    case Isa::kAvx512: return avx512::fine_tokens(p, t, parallel_for);
    case Isa::kAvx2: return avx2::fine_tokens(p, t, parallel_for);
#endif
    default: return generic::fine_tokens(p, t, parallel_for);
  }
}

template void select_blocks<float>(const SelectParams&, const SelectTensors<float>&, const ParallelFor&);
template void select_blocks<Float16>(const SelectParams&, const SelectTensors<Float16>&, const ParallelFor&);
template void select_blocks<BFloat16>(const SelectParams&, const SelectTensors<BFloat16>&, const ParallelFor&);
template void fine_tokens<float>(const FineParams&, const FineTensors<float>&, const ParallelFor&);
template void fine_tokens<Float16>(const FineParams&, const FineTensors<Float16>&, const ParallelFor&);
template void fine_tokens<BFloat16>(const FineParams&, const FineTensors<BFloat16>&, const ParallelFor&);

}  // namespace onnxattn::sparse
