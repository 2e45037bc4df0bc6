#pragma once
// ScaledDotProductAttention on CUDA, part 1 of 2: the launch plan. A plain host struct that says which
// kernel runs, with which tiles, how many key splits, what grid, how much shared memory and scratch.
// make_plan() is a pure function of the problem, the device's numbers and what the caller forces, so it
// is unit-tested on machines without a GPU (tests/test_sdpa_cuda_host.py, through sdpa/cuda_capi.cc).
// Nothing here includes CUDA or onnxruntime headers; the run half lives in sdpa/cuda_kernel.h.
#include <cstddef>
#include <cstdint>
#include <string>

#include "sdpa/params.h"

namespace onnxattn::sdpa::cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// The numbers of one device that the plan depends on (cudaDeviceGetAttribute on the GPU machine;
// made up freely in host tests).
struct DeviceInfo {
  int sm_count = 0;
  int max_smem_per_block = 0;  // opt-in limit for dynamic shared memory, bytes
  int smem_per_sm = 0;         // bytes
  bool wgmma = false;          // an sm_90 device (Hopper) and a library built with sm_90a code
};

// What the caller forces; kAuto lets make_plan decide. Read from the environment by request_from_env().
struct Request {
  enum class Path { kAuto, kPrefill, kDecode };
  enum class Kernel { kAuto, kMma, kSimt };
  enum class Prefill { kAuto, kMma, kWgmma };  // which tensor-core prefill kernel
  Path path = Path::kAuto;
  Kernel kernel = Kernel::kAuto;
  Prefill prefill = Prefill::kAuto;
  bool pdl = false;    // programmatic dependent launch of decode -> combine (ONNXATTN_CUDA_PDL=1)
  int64_t splits = 0;  // > 0: decode launches split their keys this many ways (at most one split per key tile)
  bool direct_decode_loads = true;  // rule 9; false: ONNXATTN_SDPA_CUDA_DECODE_LOADS=lookup
  bool paged_direct_loads = false;  // rule 9 over paged K/V too: ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct
  int decode_stages = 0;  // ONNXATTN_SDPA_CUDA_DECODE_STAGES: 0 auto, 2 the lean decode (rule 10)
  bool fused_combine = false;  // rule 12: ONNXATTN_SDPA_CUDA_COMBINE=fused
  bool columns_combine = false;  // rule 13: ONNXATTN_SDPA_CUDA_COMBINE=columns
  bool lazy_rescale = false;     // rule 14: ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy
};

// ONNXATTN_SDPA_CUDA_PATH = auto | prefill | decode and ONNXATTN_SDPA_CUDA_KERNEL = auto | mma | simt
// (unset or empty = auto), ONNXATTN_SDPA_CUDA_SPLITS = 1 .. kMaxSplits (unset = the plan's choice; for
// benchmarks that sweep the split rule), ONNXATTN_SDPA_CUDA_PREFILL = auto | mma | wgmma (the Hopper
// prefill kernel where it can run, see cuda_plan.cc rule 3; auto = wgmma where it can, mma = mma.sync always),
// ONNXATTN_CUDA_PDL = 0 | 1 (rule 8), ONNXATTN_SDPA_CUDA_DECODE_LOADS = auto | direct | lookup (rule 9),
// ONNXATTN_SDPA_CUDA_DECODE_STAGES = auto | 2 (rule 10), ONNXATTN_SDPA_CUDA_COMBINE = auto | kernel | fused | columns
// (rules 12, 13), ONNXATTN_SDPA_CUDA_DECODE_RESCALE = auto | lazy (rule 14),
// read on every call so tests can switch within one process.
// An unknown value is an InputError naming `op` (the op whose call read them).
Request request_from_env(const char* op = kOpName);

// prefill: one pass over the keys per row tile, the output written directly.
// decode: the keys of each row tile are split into `splits` ranges processed by separate CTAs that write
//         partial results (normalised output + log-sum-exp) to scratch; a combine kernel merges them.
enum class Schedule { kPrefill, kDecode };
// mma: tensor-core kernels (fp16/bf16, mma.sync m16n8k16); simt: the plain CUDA-core kernel (every
// dtype, every head size up to 256), also the simple version the tests compare the fast ones with;
// wgmma: the Hopper prefill kernel (sm_90a warpgroup MMA, sdpa/cuda_prefill_wgmma.cuh).
enum class Kernel { kMma, kSimt, kWgmma };

struct LaunchPlan {
  Schedule schedule = Schedule::kPrefill;
  Kernel kernel = Kernel::kSimt;
  int head_dim_tile = 0;   // mma: D and Dv are padded to this compiled size (64, 128, 256); simt: 0
  int rows_per_cta = 0;    // packed rows per CTA; a KV head's rows are r = i * G + g (query i, head g of the group)
  int keys_per_tile = 0;   // keys per CTA per main-loop step
  int stages = 1;          // decode mma: shared-memory stages per warp
  int threads = 0;
  int64_t rows_per_head = 0;  // Sq * G
  int64_t row_tiles = 0;      // per (batch, KV head)
  int64_t splits = 1;
  int64_t grid = 0;           // CTAs of the attention kernel, one dimension
  size_t smem_bytes = 0;      // dynamic shared memory of the attention kernel
  int64_t min_split_keys = 0; // decode with per-batch lengths: keys a split covers at least (see make_plan)
  // Ragged query batches (make_ragged_plan): the grid's bound on row tiles per KV head; each CTA takes its
  // (sequence, row tile) from the schedule the device writes. 0: a uniform batch (row_tiles per batch).
  int64_t work_tiles = 0;
  int64_t combine_grid = 0;   // CTAs of the combine kernel (0 when splits == 1)
  bool combine_columns = false;  // the combine kernel by columns (rule 13): a warp per 32 columns of a row
  bool pdl = false;           // decode and combine launched as programmatic dependents (rule 8)
  bool direct_loads = false;  // decode mma over contiguous K/V: each lane's addresses stepped directly (rule 9)
  // decode mma: the lean-step kernels (rules 12, 14): the O rescale skipped where no row's max moved, merge rows padded
  bool lean_steps = false;
  size_t scratch_bytes = 0;   // partial outputs + partial LSE (+ the fused merge's counters); 0 when splits == 1
  size_t partial_lse_offset = 0;  // byte offset of the partial LSE inside scratch
  // Rule 12, the fused merge: uint32 counters, one per row tile (grid / splits), at this byte offset of scratch,
  // zeroed before the decode launch; the combine kernel does not run (combine_grid 0). 0 counters: the combine kernel.
  int64_t split_counters = 0;
  size_t split_counters_offset = 0;
  // The caller's kernel, stream-ordered before this launch, zeroes the counters (GroupQueryAttention's joint
  // new-token kernel), so run() launches no memset of its own.
  bool split_counters_zeroed_ahead = false;
  std::string reason;         // why this plan: schedule, kernel and split choice, for logs and tests
};

inline constexpr int64_t kMaxHeadDim = 256;
inline constexpr int64_t kDecodeMaxQueries = 16;  // auto schedule: decode when Sq <= this
inline constexpr int64_t kMinKeysPerSplit = 256;
inline constexpr int64_t kMaxSplits = 256;

// How the attention core is called beyond Params: whether the query offsets and valid key counts come
// per batch from device memory (fused ops with a shared KV-cache buffer; unknown on the host), and the op
// named in error messages. Paged K/V (Params::block_size > 0) works with either.
// wgmma_ok: the caller's launch fits the wgmma prefill kernel's contract beyond Params (no query preparation
// in the Q load, output in Y's dtype, no per-sequence pool starts); callers opt in.
struct Layout {
  bool per_batch_lengths = false;
  const char* op = kOpName;
  bool wgmma_ok = false;
};

// The one place that decides how the CUDA attention core runs (ScaledDotProductAttention and the fused
// ops built on it); see the rules in cuda_plan.cc. `aligned16`: every row of Q, K, V and Y starts on a
// 16-byte boundary (the mma kernels copy 16-byte row chunks). Throws InputError naming the reason when no
// CUDA kernel can run the problem (e.g. D > 256).
LaunchPlan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
                     const Layout& layout = {});

// Ragged query batches (Tensors::q_starts / q_lengths in device memory, with per-sequence query offsets
// and valid lengths; e.g. PagedAttention's packed tokens): the host knows only the packed row count and
// the batch, so one call serves single-token decodes and prefill chunks together by their query count,
// decided on the device. Sequences with 1 .. decode_max_queries queries go to `decode` (split-KV), longer
// ones to `prefill`; a launch whose class may be empty on every input of this shape is left out (grid 0).
// Before them, a schedule kernel (one warp per sequence) lists each launch's (sequence, row tile) items in
// scratch; each grid covers a bound on their count (see make_ragged_plan in cuda_plan.cc) and CTAs past
// the listed items return at once. The launch shapes depend only on the shapes, never on the values.
struct RaggedPlan {
  LaunchPlan decode;   // grid 0: not launched
  LaunchPlan prefill;  // grid 0: not launched
  int64_t tokens = 0;              // packed query rows T
  int64_t decode_max_queries = 0;  // class boundary (0: every sequence goes to prefill)
  int64_t schedule_grid = 0;       // CTAs of the schedule kernel (4 sequences each)
  // Scratch, 256-aligned byte offsets: the item counts (int32 [2]: decode, prefill), the items (int32
  // pairs {sequence, row tile}), then each launch's own scratch (split partials).
  size_t totals_offset = 0, decode_items_offset = 0, prefill_items_offset = 0;
  size_t decode_offset = 0, prefill_offset = 0;
  size_t scratch_bytes = 0;
  std::string reason;
};

// `p` describes sequences of up to p.q_len queries each (an upper bound: at most `tokens`) over keys
// [0, p.kv_len) (paged: the capacity of a block-table row); Q and Y are packed [T, H, D] views (batch
// stride ignored). Per-sequence query offsets and valid lengths are always per batch. Refuses masks and
// LSE output. ONNXATTN_SDPA_CUDA_PATH=decode / prefill sends every sequence to that launch.
RaggedPlan make_ragged_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request,
                            bool aligned16, int64_t tokens, const char* op = kOpName);

// Strided views: every stride of Q, K, V, Y must be >= 0 (the last dim is contiguous by construction).
// Throws InputError naming the tensor otherwise.
void check_layout(const Params& p, const char* op = kOpName);

// Number of key splits for split-KV: `ctas` CTAs exist without splitting, each over `key_tiles` tiles;
// `slots` CTAs fit on the device at once. With at least `min_tiles_per_split` tiles per split and at most
// `max_splits`: all allowed splits when even that stays within one wave; else, when one wave holds the CTAs at
// least twice and at least 85% full, the most splits it holds; else the smallest split count whose last wave
// is nearly as full as the best one's.
int64_t choose_splits(int64_t ctas, int64_t key_tiles, int64_t slots, int64_t min_tiles_per_split, int64_t max_splits);

const char* schedule_name(Schedule s);
const char* kernel_name(Kernel k);

}  // namespace onnxattn::sdpa::cuda
