// The dispatch of ScaledDotProductAttention on CUDA, in one place. Plain C++ (no CUDA headers), built in
// every configuration so the host tests run without nvcc or a GPU.
//
// Rules, in order:
//  1. Refuse D > 256 or Dv > 256 (every kernel keeps a head's row tile in shared memory), and Skv >= 2^31
//     (key indices are 32-bit inside the kernels; element offsets are 64-bit everywhere).
//  2. Schedule: decode (split-KV + combine) when Sq <= 16, else prefill; ONNXATTN_SDPA_CUDA_PATH forces it.
//     Decode is correct for every Sq, so forcing it is a valid test of the split path on any shape.
//  3. Kernel: mma (tensor cores) for float16/bfloat16 when D and Dv are multiples of 8 (16-byte rows) and
//     Q, K, V, Y are 16-byte aligned; simt otherwise (float32 always). ONNXATTN_SDPA_CUDA_KERNEL=simt
//     forces the simple kernel; =mma makes an ineligible problem an error instead of a silent fallback.
//     A tensor-core prefill runs the wgmma kernel instead of mma.sync's where it can: a device with sm_90a
//     code (DeviceInfo::wgmma), max(D, Dv) <= 128, no softcap, no mask, scale > 0, contiguous K/V (not
//     paged), a uniform batch, and a caller whose launch fits (Layout::wgmma_ok); otherwise mma.sync's,
//     with the reason in the plan. On the H100 it runs causal D=128 prefill at 1.30-1.40x mma.sync's
//     TFLOP/s (docs/performance.md). ONNXATTN_SDPA_CUDA_PREFILL=mma keeps mma.sync; =wgmma asks for it
//     explicitly (the plan says why where it cannot).
//  4. Geometry from sdpa/cuda_tiles.h; splits (decode only) from choose_splits() over the keys visible
//     to any query row, so a sliding window splits its window, not the whole cache.
//  5. Per-batch lengths (Layout::per_batch_lengths: a shared KV-cache buffer whose valid lengths live on
//     the device): the host cannot know the visible keys, so the split count is chosen for the longest
//     possible range — the whole view, or window + Sq - 1 under a causal window (chunk + Sq - 1 under a
//     chunk) — and is an upper bound.
//     On the device each CTA splits only its own sequence's visible keys, at least kMinKeysPerSplit per
//     split (LaunchPlan::min_split_keys), so a short sequence uses few splits and the CTAs of the others
//     return at once. No host synchronisation, and the launch shape does not depend on the lengths (a
//     CUDA graph captured once stays valid as the cache grows).
//  6. Paged K/V (Params::block_size > 0, block table on the device): the same kernels, each K/V row read
//     from its block (slot block_table[j / block_size] * block_size + j % block_size) straight from the
//     pool; the table rows must cover the view (checked here). No layout change otherwise.
//  8. ONNXATTN_CUDA_PDL=1 (opt-in: no gain measured on the H100): on sm_90 devices with the library's sm_90a code,
//     the decode kernel and the split combine are launched as programmatic dependents (cudaLaunchKernelEx,
//     programmatic stream serialization): each starts while its predecessor drains and waits in
//     griddepcontrol.wait before reading anything, so a small decode (B = 1) pays less launch latency
//     between kernels. Same kernels, same bits.
//  7. Ragged query batches (make_ragged_plan): classes by query count on the device (see RaggedPlan):
//     decode for 1..16 queries, prefill above; each class's launch is planned by rules 2-5 for the most
//     the class may hold (rows, sequences, queries per sequence), so the grid is a bound and the split
//     count an upper bound, as in rule 5.
//  9. Direct K/V loads (the default; ONNXATTN_SDPA_CUDA_DECODE_LOADS=lookup keeps the slot lookup): the tensor-core
//     decode over contiguous K/V (not paged) addresses its K/V copies directly: a lane copies the same 16-byte chunk
//     of every row it loads, so its source steps by a constant row stride. The lookup path serves paged and
//     contiguous K/V alike: per copy a shuffled pool slot and a 64-bit product, ~30 instructions, about 40% of a
//     warp's ~1200 per 16-key step in the sm_90a SASS. The same copies, so the same bits. H200 at 82087dc (32q/8kv,
//     D 128, fp16, % of copy bandwidth, lookup -> direct): B=16 Skv 32k 69 -> 94, 128k 72 -> 95; B=1 32k 53 -> 63,
//     128k 64 -> 84; Nsight Compute at B=16 32k: DRAM throughput 45% -> 79% of peak, 983 -> 566 us.
//     ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct also takes paged K/V (opt-in until a GPU run has checked and timed it)
//     where every 16-key step lies in one block (block_size a multiple of 16, no window, band or chunk): one lookup a
//     step, then the same direct copies. Why: on the H200 at 2c9a48e paged decode read 0.67x as fast as the
//     contiguous one with direct loads (61% of copy), where it had been within 15% of it.
// 10. ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 (opt-in, with rule 9; no gain on the H200 at 82087dc): the decode of head
//     tiles of 128 keeps two stages in each warp's ring instead of three (73,984 bytes of shared memory instead of
//     108,800), so three CTAs fit an SM where two did, and the split rule counts three slots an SM. Why: at B = 1 a
//     warp's 16-key step took ~3.8 us on the H200 (60 us for 16 steps a warp at 32k), far longer than a load's
//     latency, so a second load in flight buys little while a third warp a scheduler runs another chain. The
//     same steps in each warp: with the same split count, the same bits.
// 11. Devices with less shared memory per block (sm_86 / sm_89 / sm_120: 101,376 bytes; the H100 and A100 allow
//     227 / 163 KB): a tensor-core decode of head tiles of 128 that does not fit with three stages a warp (108,800
//     bytes) takes two (73,984; rule 10's kernel, with either loads, contiguous or paged K/V); any other mma or wgmma
//     launch that does not fit (D or Dv above 128: decode 143,616 bytes, prefill 102,400) falls back to the simt
//     kernel (98,432 bytes at D = Dv = 256), unless ONNXATTN_SDPA_CUDA_KERNEL=mma, which makes it an error. The
//     plan says which. Before this rule every decode with 64 < max(D, Dv) <= 128 on those devices was an error.
// 12. ONNXATTN_SDPA_CUDA_COMBINE=fused (opt-in until a GPU run has checked and timed it; auto = kernel): a
//     tensor-core decode with several splits merges them itself instead of launching the combine kernel. Each CTA,
//     its partial rows written, counts itself in on its row tile's counter (scratch, zeroed by a cudaMemsetAsync
//     before the launch: no host synchronisation, capturable); the last of the tile's splits merges the tile's rows
//     from L2 with the combine kernel's code (sdpa/cuda_combine.cuh), so the same bits. Why: at B = 1 the combine
//     kernel ran 8 CTAs for 32 rows, 9-12 us of a 51-60 us decode at Skv 32k on the H200 (Nsight Systems, 2c9a48e),
//     the gap between B = 1's 60% of copy bandwidth and issue 3's 70%; onnxruntime's decode merges in-kernel the
//     same way. Kernels of their own (the default stages, either loads), so the others keep their code; the SIMT
//     kernel and the two-stage decode (rules 10, 11) keep the combine kernel.
// 13. ONNXATTN_SDPA_CUDA_COMBINE=columns (opt-in until a GPU run has checked and timed it): the combine kernel with a
//     warp per 32 columns of a row instead of a warp per row, each lane's partials of up to 32 splits in flight at
//     once (sdpa/cuda_simt.cu): two round trips to L2 at 32 splits where the warp a row makes five. Why: the combine
//     kernel took 4.7 us (batches of eight, 82087dc) of the B = 1 decode at Skv 32k, whose attention kernel alone
//     runs at 75% of copy bandwidth, and 3.5 of 15 us at 4k, with 8 CTAs waiting on L2 one batch of eight after
//     another. Any decode kernel, any Dv; the same bits as the row kernel.
// 14. ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy (opt-in until a GPU run has checked and timed it): the tensor-core decode
//     at its default stages runs the fused merge's kernels (rule 12) without the fused merge: the main loop skips the
//     rescale of O where no row of a warp's half raised its running max (alpha exactly 1 in every lane, a warp vote;
//     x * 1 == x) and the warps' merge rows are padded against bank conflicts; the same bits. Why: Nsight Compute
//     counted ~620 instructions a 16-key step at B = 1 in a latency-bound warp (0.4 eligible a scheduler, 2c9a48e),
//     and the rescale's 2 x kOutN8 multiplies a lane are ~64 of them (1.56 M non-fused FP32 instructions in all),
//     while after a row's first blocks a new block rarely raises its max. With COMBINE=fused these kernels run anyway.
#include "sdpa/cuda_plan.h"

#include <algorithm>
#include <utility>

#include "common/env.h"
#include "common/errors.h"
#include "sdpa/cuda_tiles.h"

namespace onnxattn::sdpa::cuda {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

}  // namespace

const char* schedule_name(Schedule s) { return s == Schedule::kDecode ? "decode" : "prefill"; }
const char* kernel_name(Kernel k) { return k == Kernel::kMma ? "mma" : k == Kernel::kWgmma ? "wgmma" : "simt"; }

Request request_from_env(const char* op) {
  Request r;
  r.path = Request::Path(env_choice(op, "ONNXATTN_SDPA_CUDA_PATH", {"auto", "prefill", "decode"}));
  r.kernel = Request::Kernel(env_choice(op, "ONNXATTN_SDPA_CUDA_KERNEL", {"auto", "mma", "simt"}));
  r.prefill = Request::Prefill(env_choice(op, "ONNXATTN_SDPA_CUDA_PREFILL", {"auto", "mma", "wgmma"}));
  r.pdl = env_choice(op, "ONNXATTN_CUDA_PDL", {"0", "1"}) == 1;
  const int loads = env_choice(op, "ONNXATTN_SDPA_CUDA_DECODE_LOADS", {"auto", "direct", "lookup"});
  r.direct_decode_loads = loads != 2;
  r.paged_direct_loads = loads == 1;
  r.decode_stages =
      env_choice(op, "ONNXATTN_SDPA_CUDA_DECODE_STAGES", {"auto", "2"}) == 1 ? tiles::kDecodeLeanStages : 0;
  r.splits = env_integer(op, "ONNXATTN_SDPA_CUDA_SPLITS", 1, kMaxSplits, 0);
  const int combine = env_choice(op, "ONNXATTN_SDPA_CUDA_COMBINE", {"auto", "kernel", "fused", "columns"});
  r.fused_combine = combine == 2;
  r.columns_combine = combine == 3;
  r.lazy_rescale = env_choice(op, "ONNXATTN_SDPA_CUDA_DECODE_RESCALE", {"auto", "lazy"}) == 1;
  return r;
}

int64_t choose_splits(int64_t ctas, int64_t key_tiles, int64_t slots, int64_t min_tiles_per_split, int64_t max_splits) {
  if (ctas <= 0 || slots <= 0 || key_tiles <= 1) return 1;
  const int64_t limit = std::max<int64_t>(1, std::min(max_splits, key_tiles / std::max<int64_t>(1, min_tiles_per_split)));
  // Occupancy of the last wave: waves / ceil(waves) (below one wave, the fraction of the device used).
  auto efficiency = [&](int64_t splits) {
    const double waves = double(ctas * splits) / double(slots);
    return waves / double(ceil_div(ctas * splits, slots));
  };
  // Even out the tiles per split so that no split is left nearly empty.
  auto evened = [&](int64_t splits) { return ceil_div(key_tiles, ceil_div(key_tiles, splits)); };
  // Below one wave every extra split adds bandwidth: take them all.
  if (ctas * limit <= slots) return evened(limit);
  // One wave holds the row tiles several times over: the longest split sets the time, since a CTA streams its
  // keys at a rate of its own (B = 1 decode ran at ~1.95 TB/s on both the H100 and the H200, whose copy rates
  // differ 1.4x). So take the most splits one wave holds. H200 sweep at 21d5171, B = 1, 32q/8kv: 33 splits
  // (16 key tiles per split; evened: 32) 6% faster than the 29 (18 tiles) the rule below picks at 32k, 10% at
  // 128k; the H100 (93587a9) within 2% either way.
  const int64_t fill = std::min(limit, slots / ctas);
  if (fill > 1 && double(ctas * fill) >= 0.85 * double(slots)) return evened(fill);
  double best = 0.0;
  for (int64_t s = 1; s <= limit; ++s) best = std::max(best, efficiency(s));
  for (int64_t s = 1; s <= limit; ++s) {
    // Fewer splits mean less scratch traffic and a cheaper combine: take the first that is nearly best.
    if (efficiency(s) >= 0.85 * best) return evened(s);
  }
  return 1;
}

void check_layout(const Params& p, const char* op) {
  const std::pair<const char*, const Strides*> views[] = {
      {"Q", &p.q_strides}, {"K", &p.k_strides}, {"V", &p.v_strides}, {"Y", &p.y_strides}};
  for (const auto& [name, s] : views) {
    if (s->batch < 0 || s->head < 0 || s->seq < 0) {
      fail(op, ": the CUDA kernels take views with non-negative strides; ", name, " has strides (batch ", s->batch,
           ", head ", s->head, ", seq ", s->seq, ")");
    }
  }
}

namespace {

// What one launch serves. A uniform batch has one launch (every batch's Sq rows); a ragged batch up to two,
// one per class of sequences (by query count), each bounded by what the class may hold.
struct Part {
  bool decode = false;
  std::string why;               // the schedule's reason
  bool ragged = false;
  int64_t max_queries = 0;       // ragged: the most queries of one sequence of this class
  int64_t rows = 0;              // ragged: packed query rows the class may hold in all
  int64_t sequences = 0;         // ragged: sequences of the class that may have a query
};

void check_problem(const Params& p, const DeviceInfo& device, const char* op) {
  check_layout(p, op);
  if (p.head_dim > kMaxHeadDim || p.v_head_dim > kMaxHeadDim) {
    fail(op, ": the CUDA kernels support head sizes up to ", kMaxHeadDim, ", got D = ", p.head_dim,
         " (Q, K dim 3) and Dv = ", p.v_head_dim, " (V dim 3)");
  }
  if (device.sm_count <= 0 || device.max_smem_per_block <= 0 || device.smem_per_sm <= 0) {
    fail(op, ": invalid CUDA device description (sm_count ", device.sm_count, ", shared memory per block ",
         device.max_smem_per_block, ", per SM ", device.smem_per_sm, ")");
  }
  if (p.kv_len > int64_t(0x7fffffff) - 1024) {
    fail(op, ": the CUDA kernels index keys with 32 bits; Skv = ", p.kv_len, " (K dim 2) is too long");
  }
  if (p.block_size > 0) {
    // Key j of a sequence reads table entry j / block_size of its row: the row must cover the view.
    if (p.block_size > (int64_t(1) << 30) || p.block_table_stride < 1 ||
        p.block_table_stride * p.block_size < p.kv_len || p.num_blocks < 0) {
      fail(op, ": paged K/V needs 1 <= block_size <= 2^30 and block-table rows covering the ", p.kv_len,
           " keys of the view; got block_size ", p.block_size, ", ", p.block_table_stride, " entries per row, ",
           p.num_blocks, " blocks");
    }
  }
}

// Why the wgmma prefill kernel cannot run a tensor-core prefill (rule 3), or "" when it can.
std::string wgmma_refusal(const Params& p, const DeviceInfo& device, bool wgmma_ok, const Part& part, int head_dim_tile) {
  if (!device.wgmma) return "no sm_90a device and code";
  if (head_dim_tile > tiles::kWgmmaMaxTile) return "max(D, Dv) > 128";
  if (p.softcap > 0.0f || p.mask_kind != MaskKind::kNone || !(p.scale > 0.0f)) return "softcap, mask or scale <= 0";
  if (p.block_size > 0) return "paged K/V";
  if (part.ragged) return "a ragged batch";
  if (!wgmma_ok) return "the caller prepares queries in the load or wants float32 output";
  return "";
}

LaunchPlan plan_launch(const Params& p, DType dtype, const DeviceInfo& device, const Request& request,
                       bool aligned16, bool per_batch, const char* op, const Part& part, bool wgmma_ok = false) {
  LaunchPlan plan;
  const bool decode = part.decode;
  plan.schedule = decode ? Schedule::kDecode : Schedule::kPrefill;
  std::string why = std::string(schedule_name(plan.schedule)) + part.why;

  std::string simt_reason;
  if (request.kernel == Request::Kernel::kSimt) {
    simt_reason = "forced by ONNXATTN_SDPA_CUDA_KERNEL";
  } else if (dtype == DType::kFloat32) {
    simt_reason = "float32 has no tensor-core path";
  } else if (p.head_dim % 8 != 0 || p.v_head_dim % 8 != 0 || p.v_head_dim == 0) {
    simt_reason = "D or Dv is not a positive multiple of 8";
  } else if (!aligned16) {
    simt_reason = "a row of Q, K, V or Y is not 16-byte aligned";
  }
  if (request.kernel == Request::Kernel::kMma && !simt_reason.empty()) {
    fail(op, ": ONNXATTN_SDPA_CUDA_KERNEL=mma, but the tensor-core kernels cannot run this problem: ", simt_reason);
  }
  plan.kernel = simt_reason.empty() ? Kernel::kMma : Kernel::kSimt;
  why += std::string(", ") + kernel_name(plan.kernel) + (simt_reason.empty() ? "" : " (" + simt_reason + ")");

  plan.threads = tiles::kThreads;
  int resident_cap = 2;  // CTAs per SM assumed for the split choice, further limited by shared memory
  std::string lean;      // rule 10's note, after rule 9's
  if (plan.kernel == Kernel::kMma) {
    plan.head_dim_tile = tiles::mma_head_dim_tile(p.head_dim, p.v_head_dim);
    if (decode) {
      plan.rows_per_cta = tiles::kDecodeRows;
      plan.keys_per_tile = tiles::kDecodeKeys;
      plan.stages = tiles::decode_stages(plan.head_dim_tile);
      plan.smem_bytes = tiles::decode_smem_bytes(plan.head_dim_tile);
      if (request.decode_stages == tiles::kDecodeLeanStages) {  // rule 10
        if (request.direct_decode_loads && p.block_size == 0 && plan.head_dim_tile == tiles::kDecodeLeanTile) {
          plan.stages = tiles::kDecodeLeanStages;
          plan.smem_bytes = tiles::decode_smem_bytes(plan.head_dim_tile, plan.stages);
          resident_cap = tiles::kDecodeLeanCtasPerSm;
          lean = ", two stages a warp, up to 3 CTAs an SM (ONNXATTN_SDPA_CUDA_DECODE_STAGES)";
        } else {
          lean = ", not two stages (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 needs direct loads over contiguous K/V and a "
                 "head tile of 128)";
        }
      }
    } else {
      plan.rows_per_cta = tiles::prefill_rows(plan.head_dim_tile);
      plan.keys_per_tile = tiles::kPrefillKeys;
      plan.smem_bytes = tiles::prefill_smem_bytes(plan.head_dim_tile);
      if (request.prefill != Request::Prefill::kMma) {
        const bool asked = request.prefill == Request::Prefill::kWgmma;
        const std::string refusal = wgmma_refusal(p, device, wgmma_ok, part, plan.head_dim_tile);
        if (refusal.empty()) {
          plan.kernel = Kernel::kWgmma;
          plan.threads = tiles::kWgmmaThreads;
          plan.rows_per_cta = tiles::kWgmmaRows;
          plan.keys_per_tile = tiles::kWgmmaKeys;
          plan.smem_bytes = tiles::wgmma_prefill_smem_bytes(plan.head_dim_tile);
          why += asked ? " -> wgmma (ONNXATTN_SDPA_CUDA_PREFILL)" : " -> wgmma";
        } else {
          why += (asked ? " (wgmma requested, not eligible: " : " (not wgmma: ") + refusal + ")";
        }
      } else {
        why += " (mma.sync forced by ONNXATTN_SDPA_CUDA_PREFILL)";
      }
    }
  }
  const size_t max_smem = size_t(device.max_smem_per_block);
  if (plan.kernel != Kernel::kSimt && plan.smem_bytes > max_smem) {  // rule 11
    const size_t needed = plan.smem_bytes;
    const std::string limit = std::to_string(needed) + " bytes of shared memory; this device allows " +
                              std::to_string(max_smem) + " per block";
    const size_t lean_bytes = tiles::decode_smem_bytes(tiles::kDecodeLeanTile, tiles::kDecodeLeanStages);
    if (decode && plan.head_dim_tile == tiles::kDecodeLeanTile && lean_bytes <= max_smem) {
      plan.stages = tiles::kDecodeLeanStages;
      plan.smem_bytes = lean_bytes;
      lean = ", two stages a warp (three need " + limit + ")";
    } else if (request.kernel != Request::Kernel::kMma) {
      why += std::string(" -> simt (the ") + kernel_name(plan.kernel) + " kernel needs " + limit + ")";
      plan.kernel = Kernel::kSimt;
      plan.threads = tiles::kThreads;
      plan.head_dim_tile = 0;
      plan.stages = 1;
    }
  }
  if (plan.kernel == Kernel::kSimt) {
    plan.rows_per_cta = tiles::kSimtRows;
    plan.keys_per_tile = tiles::kSimtKeys;
    plan.smem_bytes = tiles::simt_smem_bytes(p.head_dim, p.v_head_dim);
    resident_cap = 4;
  }
  if (plan.smem_bytes > max_smem) {
    fail(op, ": the ", kernel_name(plan.kernel), " ", schedule_name(plan.schedule), " kernel needs ",
         plan.smem_bytes, " bytes of shared memory for D = ", p.head_dim, ", Dv = ", p.v_head_dim,
         "; this device allows ", device.max_smem_per_block, " per block");
  }

  const int64_t group = p.group_size(), rows_per_cta = plan.rows_per_cta;
  const int64_t queries = part.ragged ? part.max_queries : p.q_len;  // the most of one sequence
  plan.rows_per_head = queries * group;
  plan.row_tiles = ceil_div(plan.rows_per_head, rows_per_cta);
  int64_t row_work = plan.row_tiles * p.batch;  // row tiles per KV head over the batch
  if (part.ragged) {
    // Each sequence's rows round up to whole tiles: at most rows * G / R + (one partial tile per sequence),
    // and (when G <= R) never more tiles than rows, since every tile holds a query of its own.
    plan.work_tiles = part.rows > 0 ? std::min(ceil_div(part.rows * group, rows_per_cta) + part.sequences,
                                               part.rows * ceil_div(group, rows_per_cta))
                                    : 0;
    row_work = plan.work_tiles;
  }
  const int64_t ctas = row_work * p.kv_heads;
  if (decode && ctas > 0) {
    // Keys any query row may see: rows' bounds are monotone, so the first and last rows bound the union.
    // With per-batch lengths only a bound is known here (rule 5).
    int64_t visible = 0;
    if (per_batch) {
      // window + queries - 1 would overflow for a huge window; any window >= kv_len bounds nothing here
      visible = p.structure.causal && p.structure.window > 0 && p.structure.window < p.kv_len
                    ? std::min(p.kv_len, p.structure.window + queries - 1)
                    : p.kv_len;
      // a chunk bounds one sequence's queries the same way (their chunks' keys are contiguous)
      if (p.structure.chunk > 0 && p.structure.chunk < p.kv_len) {
        visible = std::min(visible, std::min(p.kv_len, p.structure.chunk + queries - 1));
      }
      plan.min_split_keys = kMinKeysPerSplit;
    } else {
      const KeyRange keys = p.structure.visible_keys(0, p.q_len, p.kv_len);
      visible = std::max<int64_t>(0, keys.end - keys.begin);
    }
    const int64_t key_tiles = ceil_div(visible, plan.keys_per_tile);
    const int64_t per_sm = std::clamp<int64_t>(int64_t(device.smem_per_sm) / int64_t(plan.smem_bytes + 1024), 1, resident_cap);
    const int64_t slots = int64_t(device.sm_count) * per_sm;
    plan.splits = choose_splits(ctas, key_tiles, slots, ceil_div(kMinKeysPerSplit, plan.keys_per_tile), kMaxSplits);
    if (request.splits > 0) plan.splits = std::clamp<int64_t>(request.splits, 1, std::max<int64_t>(key_tiles, 1));
    why += ", " + std::to_string(plan.splits) + " split(s)" + (request.splits > 0 ? " (ONNXATTN_SDPA_CUDA_SPLITS)" : "") +
           " for " + std::to_string(ctas) + " CTAs over " + std::to_string(key_tiles) + " key tiles on " +
           std::to_string(slots) + " slots";
    if (per_batch) {
      why += " (per-batch lengths: an upper bound, each sequence splits its own keys, >= " +
             std::to_string(kMinKeysPerSplit) + " per split)";
    }
  }
  plan.grid = ctas * plan.splits;
  plan.pdl = request.pdl && device.wgmma && decode && plan.kernel == Kernel::kMma;
  if (plan.pdl) why += ", programmatic dependent launches (ONNXATTN_CUDA_PDL)";
  const bool mma_decode = decode && plan.kernel == Kernel::kMma;
  // Paged K/V (opt-in, ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct): a warp's step of 16 keys starting on a multiple of 16
  // lies in one block when block_size is a multiple of 16, so one lookup a step finds its rows, consecutive slots.
  // Every split starts on a multiple of 16 when nothing moves the first visible key (no window, band or chunk).
  const bool paged_direct_ok = p.block_size % tiles::kDecodeWarpKeys == 0 && p.structure.window == 0 &&
                               p.structure.band == 0 && p.structure.chunk == 0;
  plan.direct_loads = request.direct_decode_loads && mma_decode &&
                      (p.block_size == 0 || (request.paged_direct_loads && paged_direct_ok));
  if (plan.direct_loads) {
    why += p.block_size == 0 ? ", direct K/V loads"
                             : ", direct K/V loads, one block lookup a 16-key step (ONNXATTN_SDPA_CUDA_DECODE_LOADS)";
  } else if (mma_decode && p.block_size == 0) {
    why += ", K/V loads by slot lookup (ONNXATTN_SDPA_CUDA_DECODE_LOADS)";
  } else if (mma_decode && request.paged_direct_loads) {
    why += ", K/V loads by slot lookup (direct paged loads need block_size a multiple of 16 and no window, band or "
           "chunk)";
  }
  why += lean;
  // Rules 12 and 14: the lean-step kernels exist for the tensor-core decode at its default stages.
  const bool lean_ok = mma_decode && plan.stages == tiles::decode_stages(plan.head_dim_tile);
  if (request.lazy_rescale && lean_ok) {  // rule 14
    plan.lean_steps = true;
    why += ", O rescaled only where a row's max moved (ONNXATTN_SDPA_CUDA_DECODE_RESCALE)";
  } else if (request.lazy_rescale && decode) {
    why += ", O rescaled every step (ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy needs the tensor-core decode at its "
           "default stages)";
  }
  if (plan.grid > int64_t(0x7fffffff)) {
    fail(op, ": problem too large for one CUDA grid (", plan.grid, " CTAs)");
  }
  if (plan.splits > 1) {
    // Partial rows: (b, query head, query) of a uniform batch; (row tile item, KV head, tile row) of a
    // ragged one, so the scratch follows the tiles the class may hold, not the packed rows of the call.
    const int64_t out_rows = part.ragged ? plan.work_tiles * p.kv_heads * rows_per_cta : p.batch * p.q_heads * p.q_len;
    plan.combine_grid = ceil_div(out_rows, tiles::kCombineRowsPerCta);
    const size_t partial_out = align_up(size_t(plan.splits) * size_t(out_rows) * size_t(p.v_head_dim) * 4, 256);
    plan.partial_lse_offset = partial_out;
    plan.scratch_bytes = partial_out + align_up(size_t(plan.splits) * size_t(out_rows) * 4, 256);
    if (request.fused_combine && lean_ok) {  // rule 12
      plan.lean_steps = true;
      plan.combine_grid = 0;
      plan.split_counters = plan.grid / plan.splits;
      plan.split_counters_offset = plan.scratch_bytes;
      plan.scratch_bytes += align_up(size_t(plan.split_counters) * 4, 256);
      why += ", splits merged by each row tile's last CTA (ONNXATTN_SDPA_CUDA_COMBINE)";
    } else if (request.fused_combine) {
      why += ", splits merged by the combine kernel (ONNXATTN_SDPA_CUDA_COMBINE=fused needs the tensor-core decode at "
             "its default stages)";
    } else if (request.columns_combine) {  // rule 13
      plan.combine_columns = true;
      plan.combine_grid = ceil_div(out_rows * tiles::combine_column_chunks(p.v_head_dim), tiles::kWarps);
      why += ", splits merged by the combine kernel by columns (ONNXATTN_SDPA_CUDA_COMBINE)";
    }
    if (plan.combine_grid > int64_t(0x7fffffff)) {
      fail(op, ": problem too large for one CUDA grid (", plan.combine_grid, " CTAs of the split combine)");
    }
  }
  plan.reason = why;
  return plan;
}

}  // namespace

LaunchPlan make_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request, bool aligned16,
                     const Layout& layout) {
  const char* const op = layout.op;
  check_problem(p, device, op);
  Part part;
  const bool forced_path = request.path != Request::Path::kAuto;
  part.decode = forced_path ? request.path == Request::Path::kDecode : p.q_len <= kDecodeMaxQueries;
  part.why = forced_path ? " (forced by ONNXATTN_SDPA_CUDA_PATH)"
             : part.decode ? " (Sq <= " + std::to_string(kDecodeMaxQueries) + ")"
                           : " (Sq > " + std::to_string(kDecodeMaxQueries) + ")";
  return plan_launch(p, dtype, device, request, aligned16, layout.per_batch_lengths, op, part, layout.wgmma_ok);
}

RaggedPlan make_ragged_plan(const Params& p, DType dtype, const DeviceInfo& device, const Request& request,
                            bool aligned16, int64_t tokens, const char* op) {
  check_problem(p, device, op);
  if (tokens < 0 || p.q_len < 0) fail(op, ": negative packed query rows (", tokens, ") or queries (", p.q_len, ")");
  if (p.mask_kind != MaskKind::kNone) fail(op, ": the CUDA kernels take no mask with ragged query batches");
  RaggedPlan r;
  r.tokens = tokens;
  const int64_t queries = std::min(p.q_len, tokens);  // the most queries of one sequence
  const bool forced = request.path != Request::Path::kAuto;
  r.decode_max_queries = !forced ? kDecodeMaxQueries : request.path == Request::Path::kDecode ? std::max<int64_t>(queries, 1) : 0;
  const int64_t dmax = r.decode_max_queries;
  const std::string forced_why = " (forced by ONNXATTN_SDPA_CUDA_PATH)";
  if (dmax >= 1 && tokens >= 1 && p.batch >= 1) {
    Part part;
    part.decode = part.ragged = true;
    part.why = forced ? forced_why : " (sequences of 1.." + std::to_string(dmax) + " queries)";
    part.max_queries = std::min(dmax, queries);
    part.rows = std::min(tokens, dmax * p.batch);
    part.sequences = std::min(p.batch, tokens);
    r.decode = plan_launch(p, dtype, device, request, aligned16, /*per_batch=*/true, op, part);
  }
  if (queries > dmax && p.batch >= 1) {
    Part part;
    part.ragged = true;
    part.why = forced ? forced_why : " (sequences of more than " + std::to_string(dmax) + " queries)";
    part.max_queries = queries;
    part.rows = tokens;
    part.sequences = std::min(p.batch, tokens / (dmax + 1));
    r.prefill = plan_launch(p, dtype, device, request, aligned16, /*per_batch=*/true, op, part);
  }
  if (r.decode.grid > 0 || r.prefill.grid > 0) r.schedule_grid = ceil_div(p.batch, tiles::kWarps);

  size_t offset = 0;
  auto take = [&](size_t bytes) {
    const size_t at = offset;
    offset += align_up(bytes, 256);
    return at;
  };
  r.totals_offset = take(2 * sizeof(int32_t));
  r.decode_items_offset = take(size_t(r.decode.work_tiles) * 2 * sizeof(int32_t));
  r.prefill_items_offset = take(size_t(r.prefill.work_tiles) * 2 * sizeof(int32_t));
  r.decode_offset = take(r.decode.scratch_bytes);
  r.prefill_offset = take(r.prefill.scratch_bytes);
  r.scratch_bytes = offset;
  if (std::max(r.decode.work_tiles, r.prefill.work_tiles) > int64_t(0x7fffffff) || p.batch > int64_t(0x7fffffff)) {
    fail(op, ": too many sequences or row tiles for the CUDA schedule");
  }
  r.reason = "ragged: " + (r.decode.grid > 0 ? r.decode.reason + ", " + std::to_string(r.decode.work_tiles) + " row tiles at most" : "no decode launch") +
             "; " + (r.prefill.grid > 0 ? r.prefill.reason + ", " + std::to_string(r.prefill.work_tiles) + " row tiles at most" : "no prefill launch");
  return r;
}

}  // namespace onnxattn::sdpa::cuda
