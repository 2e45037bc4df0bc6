// BFloat16 instantiation of the Hopper (wgmma) prefill kernel, in its own translation unit to build in parallel.
#include "sdpa/cuda_prefill_wgmma.cuh"

namespace onnxattn::sdpa::cuda {
template void launch_prefill_wgmma<BFloat16>(const KernelArgs<BFloat16>&, const LaunchPlan&, cudaStream_t);
}  // namespace onnxattn::sdpa::cuda
