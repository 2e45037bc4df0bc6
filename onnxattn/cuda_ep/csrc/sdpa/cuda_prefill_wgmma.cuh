#pragma once
// Prefill kernel on Hopper's warpgroup MMA (sm_90a), for float16/bfloat16 with max(D, Dv) <= 128 (head
// tiles of 64 and 128 columns), no softcap, no user mask, no fused query preparation and contiguous (not
// paged) K/V: the plan's Kernel::kWgmma (cuda_plan.cc says when). Included by one .cu per dtype.
//
// One CTA = 128 packed rows of one KV head (the same row tiles as the mma.sync prefill kernel), two
// warpgroups of 64 rows each, steps of 128 keys; K and V have two shared-memory stages each. Before the loop,
// S_0 = Q K_0^T and its softmax give P_0. Step t:
//
//   wait K_{t+1}, V_t; barrier
//   issue S_{t+1} = Q K_{t+1}^T   8 x wgmma m64n128k16, Q and K from shared memory (K-major)
//   issue O += P_t V_t            8 x wgmma m64n128k16, P from registers, V from shared memory (MN-major)
//   async-load K_{t+2}, V_{t+1} (into the stages S_t and P_{t-1} V_{t-1} read)
//   wait for S_{t+1}; edge mask and online softmax (fp32, in place), while P_t V_t runs on the tensor cores
//   wait for P_t V_t (kept after the softmax: wgmma::wait_after); rescale O for step t+1's maxima; pack
//   P_{t+1} to 16 bits where P_t was
//
// (FlashAttention-3's intra-warpgroup overlap, without its producer warps: every thread issues cp.async),
// so each load has a whole step to land. Unlike the mma.sync kernel, V is read by the tensor cores straight
// from shared memory, so it cannot be zeroed per warp for keys no row weighs: keys outside the
// tile's visible range are zero-filled by the load, and a key that the causal or window structure hides
// from some rows of a warpgroup but not others reaches them with weight 0 (a NaN in such a key's V then
// propagates, as it does in the reference function). Rows without a visible key write 0 and LSE -inf.
#include <type_traits>

#include "common/errors.h"
#include "sdpa/cuda_device.cuh"
#include "sdpa/cuda_wgmma.cuh"
#include "sdpa/cuda_wgmma_layout.h"

namespace onnxattn::sdpa::cuda {

template <typename T, int kTile>
__global__ void __launch_bounds__(tiles::kWgmmaThreads, 1) prefill_wgmma_kernel(const KernelArgs<T> a) {
#ifdef ONNXATTN_WGMMA_ENABLED
  constexpr int kRows = tiles::kWgmmaRows;
  constexpr int kKeys = tiles::kWgmmaKeys;
  constexpr int kChunks = kTile / 8;  // 16-byte chunks per row
  constexpr int kDimSteps = kTile / 16;  // k-steps of S = Q K^T
  constexpr int kOutN8 = kTile / 8;      // n8 tiles of O per row
  constexpr int kThreads = tiles::kWgmmaThreads;
  constexpr uint32_t kTileBytes = wgmma_layout::tile_bytes(kTile);
  static_assert((kTile == 64 || kTile == 128) && kRows == kKeys && kRows == int(wgmma_layout::kRows) &&
                    kTileBytes == tiles::wgmma_tile_bytes(kTile),
                "Q, K and V tiles share one layout (sdpa/cuda_wgmma_layout.h)");

  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t q_start_s;
  // The swizzle is a function of the address: tiles start on 1024-byte boundaries.
  const uint32_t raw = smem_u32(smem);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t q_addr = base;
  // Stage s of K at base + (1 + s) tiles, of V at base + (3 + s) tiles (arithmetic, not an indexed array:
  // that would live in local memory).
  auto k_addr = [&](int stage) { return base + uint32_t(1 + stage) * kTileBytes; };
  auto v_addr = [&](int stage) { return base + uint32_t(3 + stage) * kTileBytes; };
  int2* const row_keys_s = reinterpret_cast<int2*>(smem + (base - raw) + 5 * kTileBytes);

  const int tid = threadIdx.x, lane = tid % 32;
  const int group = tid / 128;          // warpgroup: rows 64 group .. 64 group + 63
  const int warp_in_group = (tid / 32) % 4;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);

  const CtaWork work = cta_work(a, kRows, /*longest_first=*/true);
  if (work.skip) return;
  const CtaCoords& cta = work.cta;
  const SeqView& seq = work.seq;
  const int64_t row_begin = work.row_begin, row_end = work.row_end;
  const TileKeys keys = tile_keys(seq.structure, row_begin, row_end, a.group, seq.num_keys);
  const T* const k_base = a.k + cta.batch * a.k_stride[0] + cta.kv_head * a.k_stride[1];
  const T* const v_base = a.v + cta.batch * a.v_stride[0] + cta.kv_head * a.v_stride[1];

  const int any_begin = int(keys.any.begin), any_end = int(keys.any.end);
  const int all_begin = int(keys.all.begin), all_end = int(keys.all.end);
  const int steps = any_end > any_begin ? (any_end - any_begin + kKeys - 1) / kKeys : 0;
  auto step_end = [&](int step) { return min(any_begin + (step + 1) * kKeys, any_end); };
  if (steps == 0) {  // no row of the tile sees a key: Y = 0, LSE = -inf (Dv is a multiple of 8)
    for (int idx = tid; idx < kRows * kChunks; idx += kThreads) {
      const int64_t r = row_begin + idx / kChunks;
      const int col = (idx % kChunks) * 8;
      if (r >= row_end || col >= a.v_head_dim) continue;
      const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
      *reinterpret_cast<uint4*>(a.y + y_row(a, cta.batch, ref.head, ref.query, seq.q_start) + col) = make_uint4(0, 0, 0, 0);
      if (a.lse != nullptr && col == 0) a.lse[ref.out_row] = kNegInf;
    }
    return;
  }

  // ---- Q tile; rows past the end and columns past D are zero (every k-step runs).
  load_query_tile<kRows, kChunks, kThreads>(
      a, work, kChunks, [&](int row, int c) { return q_addr + wgmma_layout::tile_offset(row, c); });
  // Rows [j0, j_end) of K or V into a stage; rows outside and columns past `width` are zero. Each thread
  // keeps one chunk column (so one swizzled chunk position) and strides over rows.
  auto load_rows = [&](uint32_t dst, const T* rows, int64_t row_stride, int width, int j0, int j_end) {
    constexpr int kRowStep = kThreads / kChunks;
    const int c = tid % kChunks, row0 = tid / kChunks;
    const bool col_valid = c * 8 < width;
    const T* src = rows + int64_t(j0 + row0) * row_stride + c * 8;
    const int64_t step = int64_t(kRowStep) * row_stride;
#pragma unroll
    for (int i = 0; i < kKeys / kRowStep; ++i) {
      const bool valid = col_valid && j0 + row0 + i * kRowStep < j_end;
      cp_async_16(dst + wgmma_layout::tile_offset(row0 + i * kRowStep, c), valid ? src : rows, valid);
      src += step;
    }
  };

  if (tid == 0) q_start_s = seq.q_start;
  for (int row = tid; row < kRows; row += kThreads) {
    const int64_t r = min(row_begin + row, row_end - 1);
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
    const KeyRange keys_of_row = seq.structure.visible_keys(ref.query, seq.num_keys);
    row_keys_s[row] = make_int2(int(keys_of_row.begin), int(keys_of_row.end));
  }  // read after the first barrier

  // Groups: [Q, K_0], then [K_1, V_0]; each step t then commits [K_{t+2}, V_{t+1}] (see the loop).
  load_rows(k_addr(0), k_base, a.k_stride[2], a.head_dim, any_begin, step_end(0));
  cp_async_commit();
  if (steps > 1) load_rows(k_addr(1), k_base, a.k_stride[2], a.head_dim, any_begin + kKeys, step_end(1));
  load_rows(v_addr(0), v_base, a.v_stride[2], a.v_head_dim, any_begin, step_end(0));
  cp_async_commit();

  float s[64], o[kTile / 2];
  uint32_t p[8][4];  // P of the step whose O += P V is issued next (the A fragments of its 8 k-steps)
  float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int i = 0; i < 64; ++i) s[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kTile / 2; ++i) o[i] = 0.0f;

  const float scale_log2 = a.scale * kLog2e;  // raw Q.K to log2 units
  // Tile rows of this lane's two accumulator rows.
  const int row_lo = group * 64 + warp_in_group * 16 + quad_row, row_hi = row_lo + 8;

  // S = Q K^T of key step `step` into s (this warpgroup's 64 rows), issued and committed (every k-step of the
  // padded head); the caller waits.
  auto issue_scores = [&](int step) {
    const uint32_t k_tile = k_addr(step & 1);
#pragma unroll
    for (int ks = 0; ks < kDimSteps; ++ks) {
      wgmma::mma_ss<T>(s, wgmma_layout::q_descriptor(q_addr, uint32_t(group), uint32_t(ks)),
                       wgmma_layout::k_descriptor(k_tile, uint32_t(ks)), ks > 0 ? 1u : 0u);
    }
    wgmma::commit();
  };
  // O += P V_step with P in p, issued and committed; the caller waits.
  auto issue_values = [&](int step) {
    const uint32_t v_tile = v_addr(step & 1);
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      wgmma::mma_rs<T>(o, p[kk], wgmma_layout::v_descriptor(v_tile, uint32_t(kk)), 1u);
    }
    wgmma::commit();
  };
  // The scores of key step `step` (in s) to probabilities, in place: edge mask, online softmax per row (raw
  // scores, scaled inside the exponent). Returns through `alpha` the factors for O.
  auto softmax_step = [&](int step, float (&alpha)[2]) {
    const int j0 = any_begin + step * kKeys, j_end = step_end(step);
    const bool edge = j0 < all_begin || j0 + kKeys > all_end;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float x[32];
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        x[2 * n] = s[4 * n + 2 * h];
        x[2 * n + 1] = s[4 * n + 2 * h + 1];
      }
      if (edge) {
        const int2 row_keys = row_keys_s[h == 0 ? row_lo : row_hi];
#pragma unroll
        for (int n = 0; n < 16; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int j = j0 + n * 8 + quad_col + e;
            if (j >= j_end || j < row_keys.x || j >= row_keys.y) x[2 * n + e] = kNegInf;
          }
        }
      }
      alpha[h] = prefill_softmax_step<true>(x, m[h], l[h], scale_log2);
#pragma unroll
      for (int n = 0; n < 16; ++n) {
        s[4 * n + 2 * h] = x[2 * n];
        s[4 * n + 2 * h + 1] = x[2 * n + 1];
      }
    }
  };
  // P (in s) to the 16-bit A fragments of O += P V: the S accumulators of n-tiles 2kk, 2kk+1 are the fragment
  // of k-step kk. Called only when no product reads p (ptxas serializes every wgmma of a kernel in which a
  // register of a wgmma in flight, or moved into place for one, is written by other instructions).
  auto pack_probabilities = [&] {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      p[kk][0] = Mma<T>::pack(s[8 * kk], s[8 * kk + 1]);
      p[kk][1] = Mma<T>::pack(s[8 * kk + 2], s[8 * kk + 3]);
      p[kk][2] = Mma<T>::pack(s[8 * kk + 4], s[8 * kk + 5]);
      p[kk][3] = Mma<T>::pack(s[8 * kk + 6], s[8 * kk + 7]);
    }
  };

  // Step 0's scores and P before the loop. (No wgmma sits under a branch: ptxas serializes the MMAs of a
  // kernel where one might run in a divergent path. steps >= 1 here.)
  cp_async_wait<1>();
  wgmma::fence_shared_for_async();
  __syncthreads();  // Q, K_0 and the row facts visible to both warpgroups
  wgmma::fence_registers(s);
  wgmma::fence();
  issue_scores(0);
  wgmma::wait<0>();
  wgmma::fence_registers(s);
  {
    float alpha[2];
    softmax_step(0, alpha);  // O is still zero: nothing to rescale
    pack_probabilities();
  }

  // Step t < steps - 1: O += P_t V_t runs on the tensor cores while the softmax of step t+1's scores runs
  // beside it. The last step (below) has no next scores.
  for (int step = 0; step + 1 < steps; ++step) {
    cp_async_wait<0>();
    wgmma::fence_shared_for_async();
    __syncthreads();  // K_{t+1}, V_t visible; both warpgroups are done with K_t (S_t) and V_{t-1} (P_{t-1} V_{t-1})
    wgmma::fence_registers(s);
    wgmma::fence_registers(o);
    wgmma::fence_registers(p);
    wgmma::fence();
    issue_scores(step + 1);
    issue_values(step);
    // The next loads go out once the tensor cores have their work: into the stages S_t and P_{t-1} V_{t-1}
    // read, which no product in flight touches.
    if (step + 2 < steps) {
      load_rows(k_addr(step & 1), k_base, a.k_stride[2], a.head_dim, any_begin + (step + 2) * kKeys, step_end(step + 2));
    }
    load_rows(v_addr((step + 1) & 1), v_base, a.v_stride[2], a.v_head_dim, any_begin + (step + 1) * kKeys,
              step_end(step + 1));
    cp_async_commit();
    wgmma::wait<1>();  // S_{t+1} done; P_t V_t may still run
    wgmma::fence_registers(s);
    float alpha[2];
    softmax_step(step + 1, alpha);
    // P_t V_t done. The condition depends on every exponential of the softmax and is true for every l (sums
    // of exponentials are >= 0 or NaN), so all warps of the warpgroup take the same branch (.aligned).
    wgmma::wait_after<0>(__all_sync(0xffffffffu, !(l[0] + l[1] < 0.0f)));
    wgmma::fence_registers(o);
    wgmma::fence_registers(p);  // P_t stays in its registers until its product is done
    if (!__all_sync(0xffffffffu, alpha[0] == 1.0f && alpha[1] == 1.0f)) {
#pragma unroll
      for (int n = 0; n < kOutN8; ++n) {
        o[4 * n] *= alpha[0];
        o[4 * n + 1] *= alpha[0];
        o[4 * n + 2] *= alpha[1];
        o[4 * n + 3] *= alpha[1];
      }
    }
    pack_probabilities();
  }
  cp_async_wait<0>();
  wgmma::fence_shared_for_async();
  __syncthreads();  // V of the last step visible
  wgmma::fence_registers(o);
  wgmma::fence_registers(p);
  wgmma::fence();
  issue_values(steps - 1);
  wgmma::wait<0>();
  wgmma::fence_registers(o);

  // ---- Epilogue: Y = O / l, LSE = m + log(l); rows without a visible key give 0 and -inf.
  const int64_t q_start = q_start_s;  // written before the first barrier
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float sum = quad_sum(l[h]);
    const int64_t r = row_begin + (h == 0 ? row_lo : row_hi);
    if (r >= row_end) continue;
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
    const float inv = sum != 0.0f ? 1.0f / sum : 0.0f;
    const int64_t y_at = y_row(a, cta.batch, ref.head, ref.query, q_start);
#pragma unroll
    for (int n = 0; n < kOutN8; ++n) {
      const int col = n * 8 + quad_col;
      if (col >= a.v_head_dim) break;
      *reinterpret_cast<uint32_t*>(a.y + y_at + col) = Mma<T>::pack(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
    }
    if (a.lse != nullptr && lane % 4 == 0) {
      a.lse[ref.out_row] = sum != 0.0f ? (m[h] * scale_log2 + log2f(sum)) * kLn2 : kNegInf;
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // only sm_90a code has this kernel: a launch of any other build (the plan forbids it) must not
             // pass for a result
#endif
}

template <typename T, int kTile>
void launch_prefill_wgmma_tile(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  allow_smem<prefill_wgmma_kernel<T, kTile>>(plan.smem_bytes);
  prefill_wgmma_kernel<T, kTile><<<unsigned(plan.grid), plan.threads, plan.smem_bytes, stream>>>(args);
}

template <typename T>
void launch_prefill_wgmma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  // What the plan promised (cuda_plan.cc, rule 3): checked again here, since a wrong launch reads garbage.
  const bool plain = !(args.softcap > 0.0f) && args.mask_kind == MaskKind::kNone && args.scale > 0.0f;
  if (!plain || args.prep.active() || args.y_float != nullptr || args.block_table != nullptr ||
      args.work_items != nullptr || args.head_dim > plan.head_dim_tile || args.v_head_dim > plan.head_dim_tile ||
      (plan.head_dim_tile != 64 && plan.head_dim_tile != 128)) {
    fail(kOpName, ": internal error: the wgmma prefill kernel was planned for a problem it does not run "
         "(softcap, mask, query preparation, float32 output, paged or ragged batches, or D > 128)");
  }
  if (plan.head_dim_tile == 64) return launch_prefill_wgmma_tile<T, 64>(args, plan, stream);
  launch_prefill_wgmma_tile<T, 128>(args, plan, stream);
}

}  // namespace onnxattn::sdpa::cuda
