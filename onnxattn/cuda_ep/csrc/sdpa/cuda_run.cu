// Runs a LaunchPlan: fills the kernel arguments and enqueues the attention kernel (and the combine when
// the keys are split); a RaggedPlan: the device schedule, then each class's launch. Also the per-device
// facts the plan needs.
#include <algorithm>
#include <climits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common/cuda_errors.h"
#include "common/env.h"
#include "common/errors.h"
#include "sdpa/cuda_device.cuh"
#include "sdpa/cuda_kernel.h"

namespace onnxattn::sdpa::cuda {
namespace {

void check_cuda(cudaError_t status, const char* what) { onnxattn::check_cuda(status, kOpName, what); }

void strides_of(const Strides& s, int64_t (&out)[3]) {
  out[0] = s.batch;
  out[1] = s.head;
  out[2] = s.seq;
}

template <typename T>
KernelArgs<T> make_args(const Params& p, const Tensors<T>& t, const LaunchPlan& plan, void* scratch,
                        const QueryPrep<T>& prep) {
  KernelArgs<T> a{};
  a.q = t.q;
  a.k = t.k;
  a.v = t.v;
  a.bool_mask = t.bool_mask;
  a.additive_mask = t.additive_mask;
  a.y = t.y;
  a.y_float = t.y_float;
  a.lse = p.want_lse ? t.lse : nullptr;
  if (plan.splits > 1) {
    a.partial_out = static_cast<float*>(scratch);
    a.partial_lse = reinterpret_cast<float*>(static_cast<unsigned char*>(scratch) + plan.partial_lse_offset);
    if (plan.split_counters > 0) {  // rule 12
      a.split_counters = reinterpret_cast<uint32_t*>(static_cast<unsigned char*>(scratch) + plan.split_counters_offset);
    }
  }
  a.batch = p.batch;
  a.q_heads = p.q_heads;
  a.kv_heads = p.kv_heads;
  a.q_len = p.q_len;
  a.kv_len = p.kv_len;
  a.head_dim = int(p.head_dim);
  a.v_head_dim = int(p.v_head_dim);
  a.group = p.group_size();
  a.rows_per_head = plan.rows_per_head;
  a.row_tiles = plan.row_tiles;
  a.splits = plan.splits;
  a.out_rows = p.batch * p.q_heads * p.q_len;
  a.scale = p.scale;
  a.softcap = p.softcap;
  a.structure = p.structure;
  a.mask_kind = p.mask_kind;
  for (int i = 0; i < 4; ++i) a.mask_stride[i] = p.mask_strides[i];
  strides_of(p.q_strides, a.q_stride);
  strides_of(p.k_strides, a.k_stride);
  strides_of(p.v_strides, a.v_stride);
  strides_of(p.y_strides, a.y_stride);
  a.query_offsets = t.query_offsets;
  a.kv_lengths = t.kv_lengths;
  a.min_split_keys = plan.min_split_keys;
  a.prep = prep;
  a.rows_per_cta = plan.rows_per_cta;
  if (t.block_table != nullptr) {
    a.block_table = t.block_table;
    a.table_stride = p.block_table_stride;
    a.num_blocks = p.num_blocks;
    a.block_size = int(p.block_size);
    const tiles::BlockDivider divider = tiles::block_divider(p.block_size);
    a.block_mul = divider.mul;
    a.block_shift = divider.shift;
    a.k_stride[0] = a.v_stride[0] = 0;  // the pool: rows by slot, whatever the batch
    a.kv_starts = t.kv_starts;
    if (t.kv_starts != nullptr && plan.kernel == Kernel::kMma && plan.schedule == Schedule::kPrefill) {
      fail(kOpName, ": per-sequence pool starts (kv_starts) run on the decode and SIMT kernels only, not the "
           "tensor-core prefill kernel (ONNXATTN_SDPA_CUDA_PATH=prefill?)");
    }
  }
  return a;
}

template <typename T>
void launch_attention(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (plan.kernel != Kernel::kSimt) throw std::runtime_error(str_cat(kOpName, ": float32 has no tensor-core kernel"));
    launch_simt(args, plan, stream);
  } else {
    // the fused merge counts each row tile's finished splits from 0
    if (args.split_counters != nullptr && !plan.split_counters_zeroed_ahead) {
      check_cuda(cudaMemsetAsync(args.split_counters, 0, size_t(plan.split_counters) * sizeof(uint32_t), stream),
                 "zeroing the split counters");
    }
    if (plan.kernel == Kernel::kSimt) {
      launch_simt(args, plan, stream);
    } else if (plan.kernel == Kernel::kWgmma) {
      launch_prefill_wgmma(args, plan, stream);
    } else if (plan.schedule == Schedule::kDecode) {
      launch_decode_mma(args, plan, stream);
    } else {
      launch_prefill_mma(args, plan, stream);
    }
  }
  check_cuda(cudaGetLastError(), "launching the attention kernel");
  if (plan.splits > 1 && args.split_counters == nullptr) {
    launch_combine(args, plan, stream);
    check_cuda(cudaGetLastError(), "launching the split combine kernel");
  }
}

}  // namespace

int current_device() {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

namespace {

// ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK=N (a test hook): plan as if the device allowed at most N bytes of dynamic shared
// memory per block, so that an H100 or H200 runs the plans of a device with less (cuda_plan.cc rule 11: 101376 for
// sm_86 / sm_89). Read at every call, as the other switches are.
DeviceInfo with_smem_cap(DeviceInfo info) {
  const long long cap = env_integer("onnxattn", "ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK", 1, INT_MAX, 0);
  if (cap == 0) return info;
  info.max_smem_per_block = int(std::min<long long>(cap, info.max_smem_per_block));
  return info;
}

DeviceInfo queried_device_info(int device) {
  static std::mutex mutex;
  static std::vector<std::pair<int, DeviceInfo>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [id, info] : cache) {
    if (id == device) return info;
  }
  // The kernels use mma.sync m16n8k16 with bf16 and cp.async (sm_80+), and the library carries sm_80 code
  // (+ PTX) and sm_90a code: an older GPU would fail at the first launch with "no kernel image". Say so once,
  // with the way out, instead.
  int major = 0, minor = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "querying the compute capability");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device), "querying the compute capability");
  if (major < 8) {
    throw std::runtime_error(str_cat("onnxattn: the CUDA kernels need compute capability 8.0 or newer (Ampere, Hopper, ...); "
                                     "device ", device, " has ", major, ".", minor,
                                     ". Set ONNXATTN_DISABLE_CUDA=1 before registering the library to run onnxattn nodes "
                                     "on its CPU kernels"));
  }
  DeviceInfo info;
  check_cuda(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device), "querying the SM count");
  check_cuda(cudaDeviceGetAttribute(&info.max_smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "querying shared memory per block");
  check_cuda(cudaDeviceGetAttribute(&info.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device),
             "querying shared memory per SM");
#ifdef ONNXATTN_CUDA_SM90A
  info.wgmma = major == 9;  // sm_90a code runs on sm_90 devices only
#endif
  cache.emplace_back(device, info);
  return info;
}

}  // namespace

DeviceInfo device_info(int device) { return with_smem_cap(queried_device_info(device)); }

template <typename T>
void run(const Params& p, const Tensors<T>& t, const LaunchPlan& plan, void* stream_ptr, void* scratch, size_t scratch_bytes,
         const QueryPrep<T>& prep) {
  if (plan.grid == 0) return;  // no output rows
  if (plan.scratch_bytes > 0 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes)) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA plan needs ", plan.scratch_bytes,
                                     " bytes of scratch, got ", scratch_bytes));
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  launch_attention(make_args(p, t, plan, scratch, prep), plan, stream);
}

template <typename T>
void run_ragged(const Params& p, const Tensors<T>& t, const RaggedPlan& plan, void* stream_ptr, void* scratch,
                size_t scratch_bytes, const QueryPrep<T>& prep) {
  if (plan.schedule_grid == 0) return;  // no sequence can have a row
  if (scratch == nullptr || scratch_bytes < plan.scratch_bytes) {
    throw std::runtime_error(str_cat(kOpName, ": the CUDA ragged plan needs ", plan.scratch_bytes,
                                     " bytes of scratch, got ", scratch_bytes));
  }
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  unsigned char* const base = static_cast<unsigned char*>(scratch);
  int* const totals = reinterpret_cast<int*>(base + plan.totals_offset);
  int2* const items[2] = {reinterpret_cast<int2*>(base + plan.decode_items_offset),
                          reinterpret_cast<int2*>(base + plan.prefill_items_offset)};
  const LaunchPlan* const parts[2] = {&plan.decode, &plan.prefill};
  const size_t offsets[2] = {plan.decode_offset, plan.prefill_offset};

  ScheduleArgs s{};
  s.q_starts = t.q_starts;
  s.q_lengths = t.q_lengths;
  s.kv_lengths = t.kv_lengths;
  s.batch = p.batch;
  s.tokens = plan.tokens;
  s.q_len = p.q_len;
  s.group = p.group_size();
  s.decode_max_queries = plan.decode_max_queries;
  s.totals = totals;
  for (int c = 0; c < 2; ++c) {
    s.items[c] = items[c];
    s.work_tiles[c] = parts[c]->grid > 0 ? parts[c]->work_tiles : 0;
    s.rows_per_cta[c] = parts[c]->rows_per_cta > 0 ? parts[c]->rows_per_cta : 1;
  }
  launch_schedule(s, plan.schedule_grid, stream);
  check_cuda(cudaGetLastError(), "launching the ragged schedule kernel");

  for (int c = 0; c < 2; ++c) {
    const LaunchPlan& part = *parts[c];
    if (part.grid == 0) continue;
    KernelArgs<T> args = make_args(p, t, part, base + offsets[c], prep);
    args.q_starts = t.q_starts;
    args.q_lengths = t.q_lengths;
    args.tokens = plan.tokens;
    args.work_items = items[c];
    args.work_total = totals + c;
    args.work_tiles = part.work_tiles;
    args.out_rows = part.work_tiles * p.kv_heads * part.rows_per_cta;
    args.q_stride[0] = args.y_stride[0] = 0;  // packed rows: sequences start at q_starts
    launch_attention(args, part, stream);
  }
}

template void run<float>(const Params&, const Tensors<float>&, const LaunchPlan&, void*, void*, size_t,
                         const QueryPrep<float>&);
template void run<Float16>(const Params&, const Tensors<Float16>&, const LaunchPlan&, void*, void*, size_t,
                           const QueryPrep<Float16>&);
template void run<BFloat16>(const Params&, const Tensors<BFloat16>&, const LaunchPlan&, void*, void*, size_t,
                            const QueryPrep<BFloat16>&);
template void run_ragged<float>(const Params&, const Tensors<float>&, const RaggedPlan&, void*, void*, size_t,
                                const QueryPrep<float>&);
template void run_ragged<Float16>(const Params&, const Tensors<Float16>&, const RaggedPlan&, void*, void*, size_t,
                                  const QueryPrep<Float16>&);
template void run_ragged<BFloat16>(const Params&, const Tensors<BFloat16>&, const RaggedPlan&, void*, void*, size_t,
                                   const QueryPrep<BFloat16>&);

}  // namespace onnxattn::sdpa::cuda
