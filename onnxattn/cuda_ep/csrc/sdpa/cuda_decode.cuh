#pragma once
// Split-KV decode kernel (Flash-Decoding) for float16/bfloat16 on tensor cores, included by one .cu per
// dtype. One CTA = 16 packed rows of one KV head (for Sq = 1 these are the query heads of the GQA group,
// so the group's K/V is read once) x one split of the keys those rows may see.
//
// Decode is bound by reading K and V, so the 4 warps split the keys rather than the rows: warp w takes
// steps w, w+4, ... of 16 keys, each through its own ring of shared-memory stages filled by cp.async
// (no CTA-wide barrier in the main loop, several loads in flight per warp). Each warp keeps its own
// online-softmax state; at the end the warps merge through shared memory and the CTA writes either the
// final output (one split) or a partial output normalised by its own sum plus its log-sum-exp, which
// the combine kernel (cuda_simt.cu) merges across splits, or, with the fused merge (cuda_plan.cc rule 12), the last
// CTA of the row tile's splits does (cuda_combine.cuh). All offsets are 64-bit.
// Over contiguous K/V a second instantiation (kDirectLoads, the default; cuda_plan.cc rule 9) addresses
// the K/V copies directly instead of through the paged path's slot lookup: the same copies. A third, for head tiles
// of 128, keeps two stages a warp instead of three (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2): three CTAs an SM.
//
// Fused ops: the Q tile is prepared in place (QK-norm, RoPE; cuda_query_prep.cuh) before its fragments go
// to registers, so decode needs no separate pass over Q. With per-batch lengths (a shared KV-cache buffer)
// each CTA splits only its own sequence's visible keys, at least a.min_split_keys per split: the plan's
// split count is an upper bound from the buffer length, and CTAs left without keys return at once.
#include <stdexcept>

#include "sdpa/cuda_combine.cuh"
#include "sdpa/cuda_query_prep.cuh"

namespace onnxattn::sdpa::cuda {

// kDirectLoads: contiguous K/V addressed directly (load_step_direct below; a kernel of its own, so the lookup path's
// registers stay as they were). kStagesAsked > 0: that many stages in each warp's ring instead of
// decode_stages(kTile) (the lean decode, cuda_plan.cc rules 10 and 11). Rule 10's plan counts three CTAs an SM for
// the lean kernel with direct loads: its launch bounds hold it to the registers that allows (65536 / 384). (0 for the
// others: no bound, as before; a bound of 1 let ptxas take 180-184 registers where it had taken 168.)
// kLeanSteps: the kernels of the fused merge (cuda_plan.cc rule 12: where a.split_counters is set, each row tile's last
// CTA merges the splits) and of the lazy rescale (rule 14, the combine kernel merging them): the O rescale skipped
// where no row's max moved, the merge rows padded (below). Kernels of their own, so the others stay as run.
template <typename T, int kTile, bool kDirectLoads = false, int kStagesAsked = 0, bool kLeanSteps = false>
__global__ void __launch_bounds__(tiles::kThreads, kDirectLoads && kStagesAsked == tiles::kDecodeLeanStages
                                                       ? tiles::kDecodeLeanCtasPerSm
                                                       : 0) decode_mma_kernel(const KernelArgs<T> a) {
  constexpr int kWarps = tiles::kWarps;
  constexpr int kRows = tiles::kDecodeRows;
  constexpr int kWarpKeys = tiles::kDecodeWarpKeys;
  constexpr int kStages = kStagesAsked > 0 ? kStagesAsked : tiles::decode_stages(kTile);
  constexpr int kStride = tiles::smem_stride(kTile);
  constexpr int kChunks = kTile / 8;
  constexpr int kOutN8 = kTile / 8;
  constexpr int kSteps = kTile / 16;
  static_assert(kRows == 16 && kWarpKeys == 16, "one m16 block of rows, one k16 step of keys per warp step");
  static_assert(kStages >= 2, "the prologue's first stage and the Q tile are its two oldest groups");
  static_assert(size_t(kWarps) * kStages * 2 * kWarpKeys * kStride * sizeof(uint16_t) >= kFusedMergeSmemBytes<kRows>,
                "the fused merge borrows the pipeline area");
  // The warps' output rows in the merge area (the epilogue below), kMergeStride floats apart. A store of an mma
  // fragment puts 8 rows' float2s in one instruction: rows kTile floats apart share their banks (an 8-way conflict,
  // 4x the wavefronts of each of a warp's 2 * kOutN8 stores), rows 8 floats further apart each take their own banks.
  // The padded rows in the lean-step kernels only, not yet verified on a GPU; the others stay as run.
  constexpr int kMergeStride = kLeanSteps ? kTile + 8 : kTile;
  // Likewise the main loop's rescale of O skipped where no row of the warp's half changed its running max (alpha is
  // then exactly 1 in every lane, and x * 1 == x: the same bits). After the first steps a new block of keys rarely
  // raises a row's max, and the 2 * kOutN8 multiplies a lane are ~64 issue slots a step of a latency-bound warp.
  constexpr bool kSkipUnitRescale = kLeanSteps;
  static_assert(size_t(kWarps) * kStages * 2 * kWarpKeys * kStride * sizeof(uint16_t) >=
                    size_t(kWarps) * kRows * kMergeStride * sizeof(float),
                "the warps' merge borrows the pipeline area");

  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* const q_s = reinterpret_cast<uint16_t*>(smem);
  unsigned char* const pipe = smem + kRows * kStride * sizeof(uint16_t);
  __shared__ float merge_m[kWarps][kRows], merge_l[kWarps][kRows];
  __shared__ float final_m[kRows], final_l[kRows];
  // Row facts for edge steps and masks (visible key range, mask row offset), kept in shared memory so the
  // main loop holds no registers for them.
  __shared__ int2 row_keys_s[kRows];
  __shared__ int64_t mask_row_s[kRows];
  // Facts only the epilogue needs, likewise: where each row's output (the final row of Y, or this split's partial
  // row) and its log-sum-exp go (-1: nowhere), worked out once per row instead of once per element.
  __shared__ int64_t out_at_s[kRows], lse_at_s[kRows];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);

  wait_for_prerequisite_grids();  // before any read (LaunchPlan::pdl); at once otherwise
  allow_dependent_grids();        // the split combine may launch now and wait for this grid in turn
  const CtaWork work = cta_work(a, kRows, /*longest_first=*/false);
  if (work.skip) return;
  const CtaCoords& cta = work.cta;
  const SeqView& seq = work.seq;
  const int64_t row_begin = work.row_begin, row_end = work.row_end;
  const TileKeys keys = tile_keys(seq.structure, row_begin, row_end, a.group, seq.num_keys);
  const KeyRange range = split_keys(keys.any, cta.split, a.splits, kWarpKeys, a.min_split_keys);
  if (!kLeanSteps && a.splits > 1 && range.empty()) {
    // Nothing to merge: an empty partial (LSE = -inf) has weight 0 in the combine, which never reads its
    // output. A single split must still write its (zero) rows, so it takes the normal path; so does a split of the
    // fused merge, which must count itself in and may be the tile's last (one copy of the merge: fewer registers),
    // and any split of a lean-step kernel, with or without the fused merge (this exit in their prologue cost the
    // main loop a spilled register, sm_90a).
    if (tid < kRows && row_begin + tid < row_end) {
      const int64_t r = row_begin + tid;
      a.partial_lse[cta.split * a.out_rows + partial_row(a, work, row_ref(a, cta.batch, cta.kv_head, r), r)] = kNegInf;
    }
    return;
  }

  const int d_chunks = (a.head_dim + 15) / 16 * 2;
  const int dv_chunks = (a.v_head_dim + 15) / 16 * 2;
  const int d_steps = d_chunks / 2, dv_pairs = dv_chunks / 2;
  const T* const k_base = kv_base(a, a.k, a.k_stride, cta.batch, cta.kv_head);
  const T* const v_base = kv_base(a, a.v, a.v_stride, cta.batch, cta.kv_head);
  const int64_t k_row_stride = a.k_stride[2], v_row_stride = a.v_stride[2];

  // ---- This warp's stages: K then V, [kWarpKeys][kStride] each.
  uint16_t* const warp_pipe = reinterpret_cast<uint16_t*>(pipe) + warp * kStages * 2 * kWarpKeys * kStride;
  // Key indices fit in 32 bits (the plan refuses Skv >= 2^31); element offsets are 64-bit.
  const int range_begin = int(range.begin), range_end = int(range.end);
  const int all_begin = int(keys.all.begin), all_end = int(keys.all.end);
  const int key_steps = (range_end - range_begin + kWarpKeys - 1) / kWarpKeys;
  const int my_steps = key_steps > warp ? (key_steps - warp + kWarps - 1) / kWarps : 0;
  auto load_step = [&](int it) {
    const int j0 = range_begin + (warp + it * kWarps) * kWarpKeys;
    const int j_end = min(j0 + kWarpKeys, range_end);
    uint16_t* const k_dst = warp_pipe + (it % kStages) * 2 * kWarpKeys * kStride;
    uint16_t* const v_dst = k_dst + kWarpKeys * kStride;
    // Paged: lane l < 16 looks up the slot of key row l in its block (a bad block index reads zeros) and
    // the lanes loading that row take it by shuffle; the table is read only for keys of the range, which
    // the caller's lengths keep inside the sequence's table row.
    const int64_t lane_slot =
        j0 + lane % kWarpKeys < j_end ? key_slot(a, table_row(a, cta.batch), j0 + lane % kWarpKeys) : -1;
    for (int idx = lane; idx < kWarpKeys * kChunks; idx += 32) {
      const int row = idx / kChunks, c = idx % kChunks;
      const int64_t slot = __shfl_sync(0xffffffffu, lane_slot, row);
      if (c < d_chunks) {
        const bool valid = slot >= 0 && c * 8 < a.head_dim;
        cp_async_16(smem_u32(k_dst + row * kStride + c * 8), valid ? k_base + slot * k_row_stride + c * 8 : k_base,
                    valid);
      }
      if (c < dv_chunks) {
        const bool valid = slot >= 0 && c * 8 < a.v_head_dim;
        cp_async_16(smem_u32(v_dst + row * kStride + c * 8), valid ? v_base + slot * v_row_stride + c * 8 : v_base,
                    valid);
      }
    }
  };

  // Direct loads (kDirectLoads, cuda_plan.cc rule 9): a step's 16 keys are 16 consecutive rows from the slot of its
  // first key (key j's row is j itself over contiguous K/V; over paged K/V, which the plan sends here only where a
  // step lies in one block, one lookup a step), and a lane copies the same chunk of every row it loads (rows
  // lane / kChunks + i * kRowStep), so its source pointer steps by a constant and its shared-memory address by an
  // immediate, where load_step computes each copy's address from a shuffled slot and a 64-bit product. The same
  // copies (a bad block index reads zeros, as there).
  constexpr int kRowStep = 32 / kChunks, kCopies = kWarpKeys / kRowStep;
  static_assert(32 % kChunks == 0 && kWarpKeys % kRowStep == 0, "a lane keeps its chunk from row to row");
  const int lane_chunk = lane % kChunks, lane_row = lane / kChunks;
  const bool k_chunk = lane_chunk < d_chunks, v_chunk = lane_chunk < dv_chunks;  // copied (zeros past D, Dv)
  const bool k_data = lane_chunk * 8 < a.head_dim, v_data = lane_chunk * 8 < a.v_head_dim;
  const uint32_t lane_pipe = smem_u32(warp_pipe + lane_row * kStride + lane_chunk * 8);
  const T* const k_lane = k_base + int64_t(lane_row) * k_row_stride + lane_chunk * 8;
  const T* const v_lane = v_base + int64_t(lane_row) * v_row_stride + lane_chunk * 8;
  const int64_t k_step = kRowStep * k_row_stride, v_step = kRowStep * v_row_stride;
  auto load_step_direct = [&](int it) {
    const int j0 = range_begin + (warp + it * kWarps) * kWarpKeys;
    const int rows = min(kWarpKeys, range_end - j0);
    const uint32_t k_dst = lane_pipe + uint32_t((it % kStages) * 2 * kWarpKeys * kStride * 2);
    const uint32_t v_dst = k_dst + uint32_t(kWarpKeys * kStride * 2);
    const int64_t first = key_slot(a, table_row(a, cta.batch), j0);  // j0 itself over contiguous K/V
    const T* k_src = k_lane + first * k_row_stride;
    const T* v_src = v_lane + first * v_row_stride;
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const bool in = lane_row + i * kRowStep < rows && first >= 0;
      const uint32_t offset = uint32_t(i * kRowStep * kStride * 2);
      if (k_chunk) cp_async_16(k_dst + offset, in && k_data ? k_src : k_base, in && k_data);
      if (v_chunk) cp_async_16(v_dst + offset, in && v_data ? v_src : v_base, in && v_data);
      if (i + 1 < kCopies) k_src += k_step, v_src += v_step;
    }
  };
  auto load = [&](int it) {
    if constexpr (kDirectLoads) {
      load_step_direct(it);
    } else {
      load_step(it);
    }
  };

  // The first stage's K/V loads go out before anything else (the Q tile's row arithmetic, the row facts), then the
  // Q tile's, then the other stages': groups S0, Q, S1 .. S(kStages - 2). At B = 1 a CTA streams only ~16 steps a warp,
  // and the ~1,000 instructions of index arithmetic before the first K/V load were a visible part of each call.
  if (my_steps > 0) load(0);
  cp_async_commit();  // group S0 (empty groups keep the count uniform)
  // ---- Q tile (whole CTA); its A fragments go to registers for the whole loop once it has landed.
  load_query_tile<kRows, kChunks, tiles::kThreads>(
      a, work, d_chunks, [&](int row, int c) { return smem_u32(q_s + row * kStride + c * 8); });
  cp_async_commit();  // group: Q
#pragma unroll
  for (int st = 1; st < kStages - 1; ++st) {
    if (st < my_steps) load(st);
    cp_async_commit();
  }
  if (tid < kRows) {  // rows past the end repeat the last row (their results are never written)
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, min(row_begin + tid, row_end - 1));
    const KeyRange keys_of_row = seq.structure.visible_keys(ref.query, seq.num_keys);
    row_keys_s[tid] = make_int2(int(keys_of_row.begin), int(keys_of_row.end));
    mask_row_s[tid] = mask_row_offset(a, cta.batch, ref);
    const int64_t partial = cta.split * a.out_rows + partial_row(a, work.work, cta.kv_head, tid, ref);
    if (a.splits > 1) {
      out_at_s[tid] = partial * a.v_head_dim;
      lse_at_s[tid] = partial;
    } else {
      out_at_s[tid] = y_row(a, cta.batch, ref.head, ref.query, seq.q_start);
      lse_at_s[tid] = a.lse != nullptr ? lse_row(a, ref, seq.q_start) : -1;
    }
  }  // read after the barrier that publishes the Q tile

  cp_async_wait<kStages - 2>();  // the two oldest groups, S0 and Q, have landed (this thread's part)
  __syncthreads();
  if (a.prep.active()) {
    prepare_query_tile(a, seq, cta.batch, cta.kv_head, row_begin, row_end, reinterpret_cast<T*>(q_s), kStride, kRows,
                       1.0f);
    __syncthreads();
  }
  uint32_t qa[kSteps][4];
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    if (ks < d_steps) ldmatrix_x4(qa[ks], smem_u32(q_s + (lane % 16) * kStride + ks * 16 + (lane / 16) * 8));
  }

  float o[kOutN8][4];
#pragma unroll
  for (int n = 0; n < kOutN8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
  const bool has_mask = a.mask_kind != MaskKind::kNone;
  const bool has_softcap = a.softcap > 0.0f;
  const SoftCap softcap(a.softcap);  // its divisions once, not per score

  for (int it = 0; it < my_steps; ++it) {
    if (it + kStages - 1 < my_steps) load(it + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // the group of step `it` has landed (this lane's part)
    __syncwarp();                  // ... and every lane's part is visible
    const uint16_t* const k_s = warp_pipe + (it % kStages) * 2 * kWarpKeys * kStride;
    const uint16_t* const v_s = k_s + kWarpKeys * kStride;
    const int j0 = range_begin + (warp + it * kWarps) * kWarpKeys;
    const int j_end = min(j0 + kWarpKeys, range_end);

    // S = Q K^T for 16 rows x 16 keys (two n8 tiles). When D fills the tile the step count is a constant
    // (no per-step exit between an ldmatrix and its mmas), and even and odd k-steps accumulate apart: two
    // dependent mma chains of half the length, since a warp's step latency is what bounds small batches.
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
    const uint32_t k_frag_addr = smem_u32(k_s + (lane % 8 + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8);
    if (d_steps == kSteps && kSteps % 2 == 0) {
      float odd[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
      for (int ks = 0; ks < kSteps; ks += 2) {
        uint32_t kb[4], kb_odd[4];
        ldmatrix_x4(kb, k_frag_addr + ks * 32);
        ldmatrix_x4(kb_odd, k_frag_addr + (ks + 1) * 32);
        Mma<T>::run(s[0], qa[ks], kb[0], kb[1]);
        Mma<T>::run(s[1], qa[ks], kb[2], kb[3]);
        Mma<T>::run(odd[0], qa[ks + 1], kb_odd[0], kb_odd[1]);
        Mma<T>::run(odd[1], qa[ks + 1], kb_odd[2], kb_odd[3]);
      }
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) s[n][i] += odd[n][i];
    } else {
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        if (ks >= d_steps) break;
        uint32_t kb[4];
        ldmatrix_x4(kb, k_frag_addr + ks * 32);
        Mma<T>::run(s[0], qa[ks], kb[0], kb[1]);
        Mma<T>::run(s[1], qa[ks], kb[2], kb[3]);
      }
    }

    // Keys past this split's end belong to another split: the element test runs on them too.
    const bool edge = j0 < all_begin || j0 + kWarpKeys > all_end || j0 + kWarpKeys > j_end;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float x[4];
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float v = s[n][2 * h + e] * a.scale;
          x[2 * n + e] = has_softcap ? softcap.apply(v) : v;
        }
      }
      if (edge || has_mask) {
        const int2 row_keys = row_keys_s[quad_row + 8 * h];
        const int64_t mask_row = mask_row_s[quad_row + 8 * h];
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = j0 + n * 8 + quad_col + e;
            if (j >= j_end || j < row_keys.x || j >= row_keys.y) {
              x[2 * n + e] = kNegInf;
            } else if (has_mask) {
              x[2 * n + e] = apply_user_mask(a, mask_row, j, x[2 * n + e]);
            }
          }
        }
      }
      const float alpha = online_softmax_step(x, m[h], l[h]);
      s[0][2 * h] = x[0];
      s[0][2 * h + 1] = x[1];
      s[1][2 * h] = x[2];
      s[1][2 * h + 1] = x[3];
      if (!kSkipUnitRescale || __any_sync(0xffffffffu, alpha != 1.0f)) {
#pragma unroll
        for (int n = 0; n < kOutN8; ++n) {
          o[n][2 * h] *= alpha;
          o[n][2 * h + 1] *= alpha;
        }
      }
    }

    // O += P V: P (16 x 16) is one A fragment. Where a mask or an edge may hide keys from every row,
    // V of keys without weight is zeroed in registers (NaN safety, see warp_live_keys).
    const uint32_t pa[4] = {Mma<T>::pack(s[0][0], s[0][1]), Mma<T>::pack(s[0][2], s[0][3]),
                            Mma<T>::pack(s[1][0], s[1][1]), Mma<T>::pack(s[1][2], s[1][3])};
    const bool sanitize = edge || has_mask;
    uint32_t keep0 = ~0u, keep1 = ~0u;
    if (sanitize) {
      uint32_t live = 0;
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) live |= s[n][i] > 0.0f ? 1u << (2 * n + i % 2) : 0u;
      live = warp_live_keys(live);
      keep0 = live_halves(live, 0);
      keep1 = live_halves(live, 1);
    }
#pragma unroll
    for (int np = 0; np < kTile / 16; ++np) {
      if (np >= dv_pairs) break;
      uint32_t vb[4];
      const int key = lane % 8 + ((lane / 8) % 2) * 8;
      ldmatrix_x4_trans(vb, smem_u32(v_s + key * kStride + np * 16 + (lane / 16) * 8));
      if (sanitize) {
        vb[0] &= keep0;
        vb[1] &= keep1;
        vb[2] &= keep0;
        vb[3] &= keep1;
      }
      Mma<T>::run(o[2 * np], pa, vb[0], vb[1]);
      Mma<T>::run(o[2 * np + 1], pa, vb[2], vb[3]);
    }
    __syncwarp();  // every lane is done with this stage before it is refilled
  }
  cp_async_wait<0>();

  // ---- Merge the 4 warps: M = max m_w, L = sum l_w exp(m_w - M), O = sum O_w exp(m_w - M).
  l[0] = quad_sum(l[0]);
  l[1] = quad_sum(l[1]);
  if (lane % 4 == 0) {
    merge_m[warp][quad_row] = m[0];
    merge_m[warp][quad_row + 8] = m[1];
    merge_l[warp][quad_row] = l[0];
    merge_l[warp][quad_row + 8] = l[1];
  }
  __syncthreads();  // also: every warp is done with the pipeline area, reused below
  float* const merge_o = reinterpret_cast<float*>(pipe);  // [kWarps][kRows][kMergeStride]
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = quad_row + 8 * h;
    float big = kNegInf;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) big = fmaxf(big, merge_m[w][row]);
    const float shift = (big == kNegInf ? 0.0f : big) * kLog2e;
    const float factor = fast_exp2(m[h] * kLog2e - shift);
    float* const dst = merge_o + (warp * kRows + row) * kMergeStride;
#pragma unroll
    for (int n = 0; n < kOutN8; ++n) {
      if (n >= dv_chunks) break;
      *reinterpret_cast<float2*>(dst + n * 8 + quad_col) = make_float2(o[n][2 * h] * factor, o[n][2 * h + 1] * factor);
    }
    if (warp == 0 && lane % 4 == 0) {
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += merge_l[w][row] * fast_exp2(merge_m[w][row] * kLog2e - shift);
      final_m[row] = big;
      final_l[row] = total;
    }
  }
  __syncthreads();

  // ---- Write: coalesced along Dv, row by row (the rows' destinations were worked out in the prologue).
  const int dv = a.v_head_dim;
  const int valid_rows = int(row_end - row_begin);
  for (int row = 0; row < valid_rows; ++row) {
    const float total = final_l[row];
    const int64_t at = out_at_s[row];
    for (int col = tid; col < dv; col += tiles::kThreads) {
      float value = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) value += merge_o[(w * kRows + row) * kMergeStride + col];
      value = total != 0.0f ? value / total : 0.0f;
      if (a.splits == 1) {
        store_y(a, at + col, value);
      } else {
        a.partial_out[at + col] = value;
      }
    }
  }
  if (tid < valid_rows) {
    const float total = final_l[tid];
    const float lse = total != 0.0f ? final_m[tid] + logf(total) : kNegInf;
    if (a.splits > 1) {
      a.partial_lse[lse_at_s[tid]] = lse;
    } else if (lse_at_s[tid] >= 0) {
      a.lse[lse_at_s[tid]] = lse;
    }
  }
  // The fused merge (cuda_plan.cc rule 12): the row tile's last split merges them all; the pipeline area is free.
  if constexpr (kLeanSteps) {
    if (a.split_counters != nullptr) merge_splits_if_last<T, kRows>(a, work, pipe);
  }
}

template <typename T, int kTile, bool kDirectLoads, int kStagesAsked = 0, bool kLeanSteps = false>
void launch_decode_kernel(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  constexpr auto kKernel = decode_mma_kernel<T, kTile, kDirectLoads, kStagesAsked, kLeanSteps>;
  constexpr int kStages = kStagesAsked > 0 ? kStagesAsked : tiles::decode_stages(kTile);
  // The plan sized the shared memory for its stages: a kernel with more would run past it. Only the lean-step
  // kernels merge the splits themselves (with their counters); the others leave them to the combine kernel.
  if (plan.stages != kStages || plan.smem_bytes < tiles::decode_smem_bytes(kTile, kStages) ||
      kLeanSteps != plan.lean_steps || (args.split_counters != nullptr && !kLeanSteps)) {
    throw std::logic_error("decode launch: the plan's stages, shared memory or split merge are not the kernel's");
  }
  allow_smem<kKernel>(plan.smem_bytes);
  launch_maybe_dependent(kKernel, unsigned(plan.grid), unsigned(plan.threads), plan.smem_bytes, stream, plan.pdl,
                         args);  // errors: checked by the caller (cudaGetLastError)
}

template <typename T, int kTile>
void launch_decode_tile(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  const bool direct = plan.direct_loads;  // contiguous K/V, or paged K/V whose steps lie in one block (rule 9)
  if constexpr (kTile == tiles::kDecodeLeanTile) {
    if (plan.stages == tiles::kDecodeLeanStages) {  // rules 10 and 11
      if (direct) return launch_decode_kernel<T, kTile, true, tiles::kDecodeLeanStages>(args, plan, stream);
      return launch_decode_kernel<T, kTile, false, tiles::kDecodeLeanStages>(args, plan, stream);
    }
  }
  if (plan.lean_steps) {  // rules 12 and 14: the default stages only
    if (direct) return launch_decode_kernel<T, kTile, true, 0, true>(args, plan, stream);
    return launch_decode_kernel<T, kTile, false, 0, true>(args, plan, stream);
  }
  if (direct) {
    launch_decode_kernel<T, kTile, true>(args, plan, stream);
  } else {
    launch_decode_kernel<T, kTile, false>(args, plan, stream);
  }
}

template <typename T>
void launch_decode_mma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  switch (plan.head_dim_tile) {
    case 64: return launch_decode_tile<T, 64>(args, plan, stream);
    case 128: return launch_decode_tile<T, 128>(args, plan, stream);
    default: return launch_decode_tile<T, 256>(args, plan, stream);
  }
}

}  // namespace onnxattn::sdpa::cuda
