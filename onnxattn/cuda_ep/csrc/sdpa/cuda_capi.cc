// C entry points for tests (ctypes), no onnxruntime involved:
//  - the CUDA plan and its pieces (tile key ranges, splits), pure host code, built in every configuration
//    so tests/test_sdpa_cuda_host.py checks the dispatch on machines without nvcc or a GPU;
//  - OnnxAttnSdpaCudaRunForTest (CUDA builds only), which runs the kernels on raw device pointers such as
//    torch CUDA tensors' (tests/gpu).
// The structs live in sdpa/cuda_capi.h (shared with gqa/cuda_capi.cc).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>

#include "common/element_type.h"
#include "common/errors.h"
#include "common/half.h"
#include "sdpa/cuda_capi.h"
#include "sdpa/cuda_plan.h"
#include "sdpa/cuda_ranges.h"
#include "sdpa/cuda_tiles.h"
#include "sdpa/cuda_wgmma_layout.h"
#include "sdpa/params.h"
#ifdef ONNXATTN_WITH_CUDA
#include "sdpa/cuda_kernel.h"
#endif

namespace onnxattn::sdpa::cuda::capi {

DType dtype_from_onnx(int32_t code, const char* op) {
  switch (code) {
    case 1: return DType::kFloat32;
    case 10: return DType::kFloat16;
    case 16: return DType::kBFloat16;
    default: fail(op, ": unsupported dtype code ", code, " (1 float32, 10 float16, 16 bfloat16)");
  }
}

Request request_from(int32_t path, int32_t kernel, const char* op) {
  Request r = request_from_env(op);  // the splits and the opt-in switches only from the environment
  if (path >= 0) {
    r.path = path == 1 ? Request::Path::kPrefill : path == 2 ? Request::Path::kDecode : Request::Path::kAuto;
  }
  if (kernel >= 0) {
    r.kernel = kernel == 1 ? Request::Kernel::kMma : kernel == 2 ? Request::Kernel::kSimt : Request::Kernel::kAuto;
  }
  return r;
}

DeviceInfo device_from(const OnnxAttnSdpaDevice& d) {
  DeviceInfo info;
  info.sm_count = d.sm_count;
  info.max_smem_per_block = d.max_smem_per_block;
  info.smem_per_sm = d.smem_per_sm;
  info.wgmma = d.wgmma != 0;
  return info;
}

void fill_info(const LaunchPlan& plan, OnnxAttnSdpaPlanInfo* out) {
  if (out == nullptr) return;
  std::memset(out, 0, sizeof *out);
  out->schedule = plan.schedule == Schedule::kDecode ? 1 : 0;
  out->kernel = plan.kernel == Kernel::kSimt ? 1 : plan.kernel == Kernel::kWgmma ? 2 : 0;
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
  out->split_counters = plan.split_counters;
  out->split_counters_offset = int64_t(plan.split_counters_offset);
  out->min_split_keys = plan.min_split_keys;
  out->pdl = plan.pdl ? 1 : 0;
  std::snprintf(out->reason, sizeof out->reason, "%s", plan.reason.c_str());
}

}  // namespace onnxattn::sdpa::cuda::capi

namespace onnxattn::sdpa::cuda {
namespace {

using namespace capi;

// The problem through the same validation as the onnxruntime adapter, then the layout's strides.
Params params_from(const OnnxAttnSdpaProblem& pr, const OnnxAttnSdpaLayout* layout) {
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
  Params p = make_params(shapes, kind, attrs, pr.want_lse != 0);
  if (layout != nullptr) {
    auto view = [](const int64_t (&s)[3], Strides& out) {
      if (s[0] != 0 || s[1] != 0 || s[2] != 0) out = {s[0], s[1], s[2]};
    };
    view(layout->q_strides, p.q_strides);
    view(layout->k_strides, p.k_strides);
    view(layout->v_strides, p.v_strides);
    view(layout->y_strides, p.y_strides);
  }
  return p;
}

#ifdef ONNXATTN_WITH_CUDA
template <typename T>
int run_for_test(const Params& p, const Request& request, const void* q, const void* k, const void* v,
                 const void* mask, void* y, float* lse, const int64_t* query_offsets, const int64_t* kv_lengths,
                 void* scratch, size_t scratch_bytes, void* stream, OnnxAttnSdpaPlanInfo* info) {
  Tensors<T> t;
  t.query_offsets = query_offsets;
  t.kv_lengths = kv_lengths;
  t.q = static_cast<const T*>(q);
  t.k = static_cast<const T*>(k);
  t.v = static_cast<const T*>(v);
  if (p.mask_kind == MaskKind::kBool) t.bool_mask = static_cast<const bool*>(mask);
  if (p.mask_kind == MaskKind::kAdditive) t.additive_mask = static_cast<const T*>(mask);
  t.y = static_cast<T*>(y);
  t.lse = lse;
  Layout layout;
  layout.per_batch_lengths = query_offsets != nullptr || kv_lengths != nullptr;
  layout.wgmma_ok = true;  // plain Q loads and T output, as the SDPA op's own calls
  const LaunchPlan plan = make_plan(p, dtype_of<T>(), device_info(current_device()), request, aligned16(p, t), layout);
  fill_info(plan, info);
  if (plan.scratch_bytes > scratch_bytes) return 2;  // the caller allocates plan.scratch_bytes and calls again
  run(p, t, plan, stream, scratch, scratch_bytes);
  return 0;
}
#endif

}  // namespace
}  // namespace onnxattn::sdpa::cuda

extern "C" {

// The launch plan for `problem` (with `layout`, or null for contiguous tensors) on a described device.
// Returns 0, or 1 with a message in err.
ONNXATTN_EXPORT int OnnxAttnSdpaCudaPlan(const OnnxAttnSdpaProblem* problem, const OnnxAttnSdpaLayout* layout,
                                         const OnnxAttnSdpaDevice* device, int32_t path, int32_t kernel,
                                         int32_t aligned16, OnnxAttnSdpaPlanInfo* out, char* err, size_t err_len) {
  using namespace onnxattn::sdpa::cuda;
  using namespace onnxattn::sdpa::cuda::capi;
  return guarded(err, err_len, [&] {
    const onnxattn::sdpa::Params p = params_from(*problem, layout);
    Layout how;
    how.per_batch_lengths = layout != nullptr && layout->per_batch_lengths != 0;
    how.wgmma_ok = true;  // the plan of the SDPA op's own calls (plain Q loads, T output)
    fill_info(make_plan(p, dtype_from_onnx(problem->dtype), device_from(*device), request_from(path, kernel),
                        aligned16 != 0, how),
              out);
    return 0;
  });
}

ONNXATTN_EXPORT int64_t OnnxAttnSdpaChooseSplits(int64_t ctas, int64_t key_tiles, int64_t slots,
                                                 int64_t min_tiles_per_split, int64_t max_splits) {
  return onnxattn::sdpa::cuda::choose_splits(ctas, key_tiles, slots, min_tiles_per_split, max_splits);
}

// out = {any.begin, any.end, all.begin, all.end} for packed rows [row_begin, row_end) of a KV head.
ONNXATTN_EXPORT void OnnxAttnSdpaTileKeys(int64_t causal, int64_t window, int64_t band, int64_t chunk,
                                          int64_t q_len, int64_t kv_len, int64_t row_begin, int64_t row_end,
                                          int64_t group, int64_t* out) {
  onnxattn::StructuralMask mask;
  mask.query_offset = kv_len - q_len;
  mask.causal = causal != 0;
  mask.window = window;
  mask.band = band;
  mask.chunk = chunk;
  const onnxattn::sdpa::cuda::TileKeys t = onnxattn::sdpa::cuda::tile_keys(mask, row_begin, row_end, group, kv_len);
  out[0] = t.any.begin;
  out[1] = t.any.end;
  out[2] = t.all.begin;
  out[3] = t.all.end;
}

ONNXATTN_EXPORT void OnnxAttnSdpaSplitKeys(int64_t begin, int64_t end, int64_t split, int64_t splits, int64_t granule,
                                           int64_t min_chunk, int64_t* out) {
  const onnxattn::KeyRange r = onnxattn::sdpa::cuda::split_keys({begin, end}, split, splits, granule, min_chunk);
  out[0] = r.begin;
  out[1] = r.end;
}

// The paged kernels' division of key indices by the block size: out = {mul, shift} (sdpa/cuda_tiles.h).
ONNXATTN_EXPORT void OnnxAttnSdpaBlockDivider(int64_t block_size, uint32_t* out) {
  const onnxattn::sdpa::cuda::tiles::BlockDivider d = onnxattn::sdpa::cuda::tiles::block_divider(block_size);
  out[0] = d.mul;
  out[1] = d.shift;
}

// The wgmma prefill kernel's layout (sdpa/cuda_wgmma_layout.h): operand 0 = Q (index = group * 8 + k-step),
// 1 = K (k-step), 2 = V (k-step of 16 keys), for a tile at byte address `tile`; operand 3 = the byte offset of
// chunk index % 16 of row index / 16.
ONNXATTN_EXPORT uint64_t OnnxAttnSdpaWgmmaLayout(int32_t operand, uint32_t tile, uint32_t index) {
  namespace layout = onnxattn::sdpa::cuda::wgmma_layout;
  switch (operand) {
    case 0: return layout::q_descriptor(tile, index / 8, index % 8);
    case 1: return layout::k_descriptor(tile, index);
    case 2: return layout::v_descriptor(tile, index);
    default: return layout::tile_offset(index / 16, index % 16);
  }
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
// path/kernel force the plan as in OnnxAttnSdpaCudaPlan (-1: from the environment). `layout` (nullable)
// gives strided views; query_offsets / kv_lengths (device [B] int64, nullable) the per-batch layout.
ONNXATTN_EXPORT int OnnxAttnSdpaCudaRunForTest(const OnnxAttnSdpaProblem* problem, const OnnxAttnSdpaLayout* layout,
                                               int32_t path, int32_t kernel, const void* q, const void* k,
                                               const void* v, const void* mask, void* y, float* lse,
                                               const int64_t* query_offsets, const int64_t* kv_lengths,
                                               void* scratch, size_t scratch_bytes, void* stream,
                                               OnnxAttnSdpaPlanInfo* info, char* err, size_t err_len) {
  using namespace onnxattn::sdpa::cuda;
  using namespace onnxattn::sdpa::cuda::capi;
#ifdef ONNXATTN_WITH_CUDA
  return guarded(err, err_len, [&] {
    const onnxattn::sdpa::Params p = params_from(*problem, layout);
    const Request request = request_from(path, kernel);
    const int64_t* qo = query_offsets;
    const int64_t* kl = kv_lengths;
    return onnxattn::with_element_type(problem->dtype, onnxattn::sdpa::kOpName, [&](auto tag) {
      return run_for_test<decltype(tag)>(p, request, q, k, v, mask, y, lse, qo, kl, scratch, scratch_bytes, stream,
                                         info);
    });
  });
#else
  (void)problem, (void)layout, (void)path, (void)kernel, (void)q, (void)k, (void)v, (void)mask, (void)y, (void)lse;
  (void)query_offsets, (void)kv_lengths, (void)scratch, (void)scratch_bytes, (void)stream, (void)info;
  write_error(err, err_len, "onnxattn: this library was built without CUDA");
  return 1;
#endif
}

}  // extern "C"
