// BFloat16 instantiations of the prefill tensor-core kernel (one translation unit per dtype so they build in parallel).
#include "sdpa/cuda_prefill.cuh"

namespace onnxattn::sdpa::cuda {
template void launch_prefill_mma<BFloat16>(const KernelArgs<BFloat16>&, const LaunchPlan&, cudaStream_t);
}  // namespace onnxattn::sdpa::cuda
