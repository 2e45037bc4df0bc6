// Float16 instantiations of the split-KV decode tensor-core kernel (one translation unit per dtype).
#include "sdpa/cuda_decode.cuh"

namespace onnxattn::sdpa::cuda {
template void launch_decode_mma<Float16>(const KernelArgs<Float16>&, const LaunchPlan&, cudaStream_t);
}  // namespace onnxattn::sdpa::cuda
