// CUDA side of ScaledDotProductAttention. The shared headers compile here under nvcc; the CUDA kernels
// themselves come with the CUDA issue and are registered only once they have been verified on a GPU.
#include "common/half.h"
#include "common/visibility.h"
#include "sdpa/params.h"

namespace onnxattn::sdpa {

// Checks at compile time that the host/device helpers are usable from device code.
__global__ void visibility_probe_kernel(StructuralMask mask, int64_t num_keys, int64_t* begin, int64_t* end) {
  const KeyRange range = mask.visible_keys(int64_t(threadIdx.x), num_keys);
  begin[threadIdx.x] = range.begin;
  end[threadIdx.x] = range.end;
}

}  // namespace onnxattn::sdpa
