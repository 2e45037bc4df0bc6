// C entry points for tests (ctypes), no onnxruntime involved:
//  - the CUDA plan and its pieces (tile key ranges, splits), pure host code, built in every configuration
//    so tests/test_sdpa_cuda_host.py checks the dispatch on machines without nvcc or a GPU;
//  - OnnxAttnSdpaCudaRunForTest (CUDA builds only), which runs the kernels on raw device pointers such as
//    torch CUDA tensors' (tests/gpu).
// Structs mirror tests/gpu/sdpa_cuda_lib.py field for field; change both together.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>

#include "common/errors.h"
#include "common/half.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/cuda_ranges.h"
#include "sdpa/params.h"
#ifdef ONNXATTN_WITH_CUDA
#include "sdpa/cuda_kernel.h"
#endif

#define ONNXATTN_EXPORT __attribute__((visibility("default")))

extern "C" {

struct OnnxAttnSdpaProblem {
  int64_t batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_head_dim;
  int64_t causal, window, band;
  float scale, softcap;
  int32_t dtype;      // ONNX element type: 1 float32, 10 float16, 16 bfloat16
  int32_t mask_kind;  // 0 none, 1 bool, 2 additive
  int32_t mask_rank;  // 0..4, dims in mask_shape[0 .. mask_rank)
  int32_t want_lse;
  int64_t mask_shape[4];
};

struct OnnxAttnSdpaDevice {
  int32_t sm_count, max_smem_per_block, smem_per_sm;
};

struct OnnxAttnSdpaPlanInfo {
  int32_t schedule;  // 0 prefill, 1 decode
  int32_t kernel;    // 0 mma, 1 simt
  int32_t head_dim_tile, rows_per_cta, keys_per_tile, stages, threads, reserved;
  int64_t rows_per_head, row_tiles, splits, grid, smem_bytes, combine_grid, scratch_bytes, partial_lse_offset;
  char reason[512];
};

}  // extern "C"

namespace onnxattn::sdpa::cuda {
namespace {

void write_error(char* err, size_t err_len, const char* message) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", message);
}

// Runs f; returns 0, or 1 with the exception's message in err.
template <typename F>
int guarded(char* err, size_t err_len, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    write_error(err, err_len, e.what());
  } catch (...) {
    write_error(err, err_len, "onnxattn: unknown error");
  }
  return 1;
}

DType dtype_from_onnx(int32_t code) {
  switch (code) {
    case 1: return DType::kFloat32;
    case 10: return DType::kFloat16;
    case 16: return DType::kBFloat16;
    default: fail(kOpName, ": unsupported dtype code ", code, " (1 float32, 10 float16, 16 bfloat16)");
  }
}

// The problem through the same validation as the onnxruntime adapter.
Params params_from(const OnnxAttnSdpaProblem& pr) {
  Shapes shapes{{pr.batch, pr.q_heads, pr.q_len, pr.head_dim},
                {pr.batch, pr.kv_heads, pr.kv_len, pr.head_dim},
                {pr.batch, pr.kv_heads, pr.kv_len, pr.v_head_dim},
                std::nullopt};
  MaskKind kind = MaskKind::kNone;
  if (pr.mask_kind != 0) {
    if (pr.mask_rank < 0 || pr.mask_rank > 4) fail(kOpName, ": mask_rank must be 0..4, got ", pr.mask_rank);
    shapes.mask = std::vector<int64_t>(pr.mask_shape, pr.mask_shape + pr.mask_rank);
    kind = pr.mask_kind == 1 ? MaskKind::kBool : MaskKind::kAdditive;
  }
  Attributes attrs;
  attrs.causal = pr.causal;
  attrs.window = pr.window;
  attrs.band = pr.band;
  attrs.scale = pr.scale;
  attrs.softcap = pr.softcap;
  return make_params(shapes, kind, attrs, pr.want_lse != 0);
}

// path: -1 from the environment, 0 auto, 1 prefill, 2 decode; kernel: -1 environment, 0 auto, 1 mma, 2 simt.
Request request_from(int32_t path, int32_t kernel) {
  Request env = (path < 0 || kernel < 0) ? request_from_env() : Request{};
  Request r;
  r.path = path < 0 ? env.path : path == 1 ? Request::Path::kPrefill : path == 2 ? Request::Path::kDecode : Request::Path::kAuto;
  r.kernel = kernel < 0 ? env.kernel : kernel == 1 ? Request::Kernel::kMma : kernel == 2 ? Request::Kernel::kSimt : Request::Kernel::kAuto;
  return r;
}

void fill_info(const LaunchPlan& plan, OnnxAttnSdpaPlanInfo* out) {
  if (out == nullptr) return;
  std::memset(out, 0, sizeof *out);
  out->schedule = plan.schedule == Schedule::kDecode ? 1 : 0;
  out->kernel = plan.kernel == Kernel::kSimt ? 1 : 0;
  out->head_dim_tile = plan.head_dim_tile;
  out->rows_per_cta = plan.rows_per_cta;
  out->keys_per_tile = plan.keys_per_tile;
  out->stages = plan.stages;
  out->threads = plan.threads;
  out->rows_per_head = plan.rows_per_head;
  out->row_tiles = plan.row_tiles;
  out->splits = plan.splits;
  out->grid = plan.grid;
  out->smem_bytes = int64_t(plan.smem_bytes);
  out->combine_grid = plan.combine_grid;
  out->scratch_bytes = int64_t(plan.scratch_bytes);
  out->partial_lse_offset = int64_t(plan.partial_lse_offset);
  std::snprintf(out->reason, sizeof out->reason, "%s", plan.reason.c_str());
}

#ifdef ONNXATTN_WITH_CUDA
template <typename T>
int run_for_test(const Params& p, const Request& request, const void* q, const void* k, const void* v,
                 const void* mask, void* y, float* lse, void* scratch, size_t scratch_bytes, void* stream,
                 OnnxAttnSdpaPlanInfo* info) {
  Tensors<T> t;
  t.q = static_cast<const T*>(q);
  t.k = static_cast<const T*>(k);
  t.v = static_cast<const T*>(v);
  if (p.mask_kind == MaskKind::kBool) t.bool_mask = static_cast<const bool*>(mask);
  if (p.mask_kind == MaskKind::kAdditive) t.additive_mask = static_cast<const T*>(mask);
  t.y = static_cast<T*>(y);
  t.lse = lse;
  const LaunchPlan plan = make_plan(p, dtype_of<T>(), device_info(current_device()), request, aligned16(t));
  fill_info(plan, info);
  if (plan.scratch_bytes > scratch_bytes) return 2;  // the caller allocates plan.scratch_bytes and calls again
  run(p, t, plan, stream, scratch, scratch_bytes);
  return 0;
}
#endif

}  // namespace
}  // namespace onnxattn::sdpa::cuda

extern "C" {

// The launch plan for `problem` on a described device. Returns 0, or 1 with a message in err.
ONNXATTN_EXPORT int OnnxAttnSdpaCudaPlan(const OnnxAttnSdpaProblem* problem, const OnnxAttnSdpaDevice* device,
                                         int32_t path, int32_t kernel, int32_t aligned16,
                                         OnnxAttnSdpaPlanInfo* out, char* err, size_t err_len) {
  using namespace onnxattn::sdpa::cuda;
  return guarded(err, err_len, [&] {
    const onnxattn::sdpa::Params p = params_from(*problem);
    DeviceInfo info;
    info.sm_count = device->sm_count;
    info.max_smem_per_block = device->max_smem_per_block;
    info.smem_per_sm = device->smem_per_sm;
    fill_info(make_plan(p, dtype_from_onnx(problem->dtype), info, request_from(path, kernel), aligned16 != 0), out);
    return 0;
  });
}

ONNXATTN_EXPORT int64_t OnnxAttnSdpaChooseSplits(int64_t ctas, int64_t key_tiles, int64_t slots,
                                                 int64_t min_tiles_per_split, int64_t max_splits) {
  return onnxattn::sdpa::cuda::choose_splits(ctas, key_tiles, slots, min_tiles_per_split, max_splits);
}

// out = {any.begin, any.end, all.begin, all.end} for packed rows [row_begin, row_end) of a KV head.
ONNXATTN_EXPORT void OnnxAttnSdpaTileKeys(int64_t causal, int64_t window, int64_t band, int64_t q_len,
                                          int64_t kv_len, int64_t row_begin, int64_t row_end, int64_t group,
                                          int64_t* out) {
  onnxattn::StructuralMask mask;
  mask.query_offset = kv_len - q_len;
  mask.causal = causal != 0;
  mask.window = window;
  mask.band = band;
  const onnxattn::sdpa::cuda::TileKeys t = onnxattn::sdpa::cuda::tile_keys(mask, row_begin, row_end, group, kv_len);
  out[0] = t.any.begin;
  out[1] = t.any.end;
  out[2] = t.all.begin;
  out[3] = t.all.end;
}

ONNXATTN_EXPORT void OnnxAttnSdpaSplitKeys(int64_t begin, int64_t end, int64_t split, int64_t splits, int64_t granule,
                                           int64_t* out) {
  const onnxattn::KeyRange r = onnxattn::sdpa::cuda::split_keys({begin, end}, split, splits, granule);
  out[0] = r.begin;
  out[1] = r.end;
}

// 1 when the library was built with the CUDA kernels.
ONNXATTN_EXPORT int OnnxAttnHasCuda() {
#ifdef ONNXATTN_WITH_CUDA
  return 1;
#else
  return 0;
#endif
}

// Runs the CUDA kernels on device pointers, on `stream` (a cudaStream_t; null = the legacy default
// stream), without synchronising. Returns 0 when enqueued; 2 when `scratch_bytes` is less than the plan
// needs (info->scratch_bytes; nothing ran: allocate and call again); 1 with a message in err on error.
// path/kernel force the plan as in OnnxAttnSdpaCudaPlan (-1: from the environment).
ONNXATTN_EXPORT int OnnxAttnSdpaCudaRunForTest(const OnnxAttnSdpaProblem* problem, int32_t path, int32_t kernel,
                                               const void* q, const void* k, const void* v, const void* mask,
                                               void* y, float* lse, void* scratch, size_t scratch_bytes,
                                               void* stream, OnnxAttnSdpaPlanInfo* info, char* err, size_t err_len) {
  using namespace onnxattn::sdpa::cuda;
#ifdef ONNXATTN_WITH_CUDA
  return guarded(err, err_len, [&] {
    const onnxattn::sdpa::Params p = params_from(*problem);
    const Request request = request_from(path, kernel);
    switch (dtype_from_onnx(problem->dtype)) {
      case DType::kFloat32:
        return run_for_test<float>(p, request, q, k, v, mask, y, lse, scratch, scratch_bytes, stream, info);
      case DType::kFloat16:
        return run_for_test<onnxattn::Float16>(p, request, q, k, v, mask, y, lse, scratch, scratch_bytes, stream, info);
      default:
        return run_for_test<onnxattn::BFloat16>(p, request, q, k, v, mask, y, lse, scratch, scratch_bytes, stream, info);
    }
  });
#else
  (void)problem, (void)path, (void)kernel, (void)q, (void)k, (void)v, (void)mask, (void)y, (void)lse;
  (void)scratch, (void)scratch_bytes, (void)stream, (void)info;
  write_error(err, err_len, "onnxattn: this library was built without CUDA");
  return 1;
#endif
}

}  // extern "C"
