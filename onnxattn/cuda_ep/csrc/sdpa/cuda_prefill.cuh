#pragma once
// Prefill kernel (FlashAttention-2 style) for float16/bfloat16 on tensor cores, included by one .cu per
// dtype. One CTA = one tile of packed rows of one KV head (sdpa/cuda_tiles.h); its 4 warps split the rows,
// each warp owning kBlocks blocks of 16 rows, and walk the keys the tile may see (cuda_ranges.h) in steps
// of 64:
//
//   wait K_t; barrier; async-load V_t          S = Q K_t^T   (ldmatrix Q and K, mma.sync m16n8k16)
//   scale, softcap, user mask, edge mask;      online softmax in registers, rescale O
//   wait V_t; barrier; async-load K_{t+1}      O += P V_t    (P from the S registers, V via ldmatrix.trans)
//
// so V's load overlaps the first product and the next K's load the second. D and Dv are padded to
// kTile columns in shared memory (zero-filled), and the k-steps / output columns past them are skipped.
// Fused ops: the Q tile is prepared in place (QK-norm, RoPE; cuda_query_prep.cuh) before the first step,
// and each batch sees its own query offset and valid keys (SeqView).
//
// kPlain (no softcap, no user mask, scale > 0; the common case) compiles the score stage without their
// per-element code: the loop is issue-bound (an m16n8k16 mma every ~6 issue slots per warp scheduler at
// mma.sync's peak), so every instruction between the mmas counts. Its row maxima stay in raw Q.K units and
// each probability is one FFMA + ex2: exp2(s * scale log2(e) - m * scale log2(e)).
#include <type_traits>

#include "common/errors.h"
#include "sdpa/cuda_query_prep.cuh"

namespace onnxattn::sdpa::cuda {

// kFloatOut: Y in float32 (KernelArgs::y_float), compiled only with kPlain (its one user, NativeSparseAttention's
// window branch, has no softcap or mask): a runtime choice in the epilogue cost the other variants registers.
template <typename T, int kTile, bool kPlain, bool kFloatOut = false>
__global__ void __launch_bounds__(tiles::kThreads) prefill_mma_kernel(const KernelArgs<T> a) {
  constexpr int kBlocks = tiles::prefill_row_blocks(kTile);
  constexpr int kRows = tiles::prefill_rows(kTile);
  constexpr int kKeys = tiles::kPrefillKeys;
  constexpr int kStride = tiles::smem_stride(kTile);
  constexpr int kChunks = kTile / 8;     // 16-byte chunks per padded row
  constexpr int kKeyN8 = kKeys / 8;      // n8 tiles of S per row block
  constexpr int kOutN8 = kTile / 8;      // n8 tiles of O per row block
  constexpr int kThreads = tiles::kThreads;

  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int64_t q_start_s;  // the batch's first packed row (ragged), for the epilogue only
  uint16_t* const q_s = reinterpret_cast<uint16_t*>(smem);
  uint16_t* const k_s = q_s + kRows * kStride;
  uint16_t* const v_s = k_s + kKeys * kStride;
  // Row facts for edge tiles and masks, kept in shared memory so the main loop holds no registers for them.
  int2* const row_keys_s = reinterpret_cast<int2*>(v_s + kKeys * kStride);
  int64_t* const mask_row_s = reinterpret_cast<int64_t*>(row_keys_s + kRows);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int quad_row = lane / 4, quad_col = 2 * (lane % 4);

  // Coordinates; the last row tiles see the most keys under a causal mask, so they start first.
  const CtaWork work = cta_work(a, kRows, /*longest_first=*/true);
  if (work.skip) return;
  const CtaCoords& cta = work.cta;
  const SeqView& seq = work.seq;
  const int64_t row_begin = work.row_begin, row_end = work.row_end;
  const TileKeys keys = tile_keys(seq.structure, row_begin, row_end, a.group, seq.num_keys);

  const int d_chunks = (a.head_dim + 15) / 16 * 2;    // chunks read by the k-steps of S = Q K^T
  const int dv_chunks = (a.v_head_dim + 15) / 16 * 2;  // chunks read by the n-tile pairs of O += P V
  const int d_steps = d_chunks / 2, dv_pairs = dv_chunks / 2;
  // No kv_starts here (make_args refuses them for this kernel): at its 255 registers, the extra term moved
  // values of the main loop to local memory (4 more LDL per step in the sm_90a SASS).
  const T* const k_base = a.k + cta.batch * a.k_stride[0] + cta.kv_head * a.k_stride[1];
  const T* const v_base = a.v + cta.batch * a.v_stride[0] + cta.kv_head * a.v_stride[1];

  // ---- Q tile: rows past the end and columns past D are zero.
  load_query_tile<kRows, kChunks, kThreads>(a, work, d_chunks,
                                            [&](int row, int c) { return smem_u32(q_s + row * kStride + c * 8); });
  cp_async_commit();  // group: Q
  // Rows [j0, j_end) of K or V into `dst`; rows outside and columns past `width` are zero. Each thread
  // keeps one chunk column and strides over rows (`row_stride` elements apart), so addresses advance by
  // constants; paged K/V looks each row's slot up in its block instead (a bad block index reads zeros),
  // one row at a time: the next K tile loads at the kernel's register peak, where unrolled lookups spill.
  auto load_keys = [&](uint16_t* dst, const T* base, int64_t row_stride, int width, int chunks, int j0, int j_end) {
    constexpr int kRowStep = kThreads / kChunks;
    const int c = tid % kChunks;
    if (c >= chunks) return;
    const int row0 = tid / kChunks;
    const bool col_valid = c * 8 < width;
    const T* src = base + int64_t(j0 + row0) * row_stride + c * 8;
    const uint32_t dst_addr = smem_u32(dst + row0 * kStride + c * 8);
    if (a.block_table != nullptr) {
      const int32_t* const table = table_row(a, cta.batch);
#pragma unroll 1
      for (int i = 0; i < kKeys / kRowStep; ++i) {
        const int j = j0 + row0 + i * kRowStep;
        const int64_t slot = col_valid && j < j_end ? key_slot(a, table, j) : -1;
        cp_async_16(dst_addr + i * kRowStep * kStride * 2, slot >= 0 ? base + slot * row_stride + c * 8 : base, slot >= 0);
      }
      return;
    }
    const int64_t step = int64_t(kRowStep) * row_stride;  // a pointer increment per row, no multiply
#pragma unroll
    for (int i = 0; i < kKeys / kRowStep; ++i) {
      const bool valid = col_valid && j0 + row0 + i * kRowStep < j_end;
      cp_async_16(dst_addr + i * kRowStep * kStride * 2, valid ? src : base, valid);
      src += step;
    }
  };

  if (tid == 0) q_start_s = seq.q_start;
  for (int row = tid; row < kRows; row += kThreads) {
    const int64_t r = min(row_begin + row, row_end - 1);
    const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
    const KeyRange keys_of_row = seq.structure.visible_keys(ref.query, seq.num_keys);
    row_keys_s[row] = make_int2(int(keys_of_row.begin), int(keys_of_row.end));
    mask_row_s[row] = mask_row_offset(a, cta.batch, ref);
  }  // read after the main loop's first barrier

  float o[kBlocks][kOutN8][4];
  float m[kBlocks][2], l[kBlocks][2];
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) {
#pragma unroll
    for (int n = 0; n < kOutN8; ++n) o[b][n][0] = o[b][n][1] = o[b][n][2] = o[b][n][3] = 0.0f;
    m[b][0] = m[b][1] = kNegInf;
    l[b][0] = l[b][1] = 0.0f;
  }

  // Key indices fit in 32 bits (the plan refuses Skv >= 2^31); element offsets are 64-bit.
  const int any_begin = int(keys.any.begin), any_end = int(keys.any.end);
  const int all_begin = int(keys.all.begin), all_end = int(keys.all.end);
  const int steps = any_end > any_begin ? (any_end - any_begin + kKeys - 1) / kKeys : 0;
  if (steps > 0) {
    load_keys(k_s, k_base, a.k_stride[2], a.head_dim, d_chunks, any_begin, min(any_begin + kKeys, any_end));
  }
  cp_async_commit();  // group: K_0
  if (a.prep.active()) {  // while K_0 is in flight
    cp_async_wait<1>();
    __syncthreads();
    prepare_query_tile(a, seq, cta.batch, cta.kv_head, row_begin, row_end, reinterpret_cast<T*>(q_s), kStride, kRows,
                       1.0f);
  }  // the main loop's first barrier publishes the prepared tile

  // Per-lane ldmatrix row addresses (bytes in shared memory) of the first fragment of each operand.
  const uint32_t q_frag_addr = smem_u32(q_s + (warp * kBlocks * 16 + lane % 16) * kStride + (lane / 16) * 8);
  const uint32_t k_frag_addr = smem_u32(k_s + (lane % 8 + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8);
  const uint32_t v_frag_addr = smem_u32(v_s + (lane % 8 + ((lane / 8) % 2) * 8) * kStride + (lane / 16) * 8);
  const float scale_log2 = a.scale * kLog2e;  // kPlain: raw scores to log2 units
  const bool has_softcap = a.softcap > 0.0f;
  const SoftCap softcap(a.softcap);
  for (int step = 0; step < steps; ++step) {
    const int j0 = any_begin + step * kKeys;
    const int j_end = min(j0 + kKeys, any_end);
    cp_async_wait<0>();
    __syncthreads();  // K_t visible to all; every warp is done with V_{t-1}
    load_keys(v_s, v_base, a.v_stride[2], a.v_head_dim, dv_chunks, j0, j_end);
    cp_async_commit();

    // ---- S = Q K^T. When D fills the tile (the common case), the k-step count is a constant: without a
    // per-step exit the compiler issues the next step's ldmatrix ahead of this step's mmas.
    float s[kBlocks][kKeyN8][4];
    auto qk_product = [&](auto full_steps) {
      constexpr bool kFull = decltype(full_steps)::value;
#pragma unroll
      for (int b = 0; b < kBlocks; ++b)
#pragma unroll
        for (int n = 0; n < kKeyN8; ++n) s[b][n][0] = s[b][n][1] = s[b][n][2] = s[b][n][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < kTile / 16; ++ks) {
        if (!kFull && ks >= d_steps) break;
        uint32_t qa[kBlocks][4];
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) ldmatrix_x4(qa[b], q_frag_addr + b * 16 * kStride * 2 + ks * 32);
#pragma unroll
        for (int np = 0; np < kKeys / 16; ++np) {
          // Matrices: keys +0..7 cols +0..7 | keys +0..7 cols +8..15 | keys +8..15 cols +0..7 | +8.., +8..
          uint32_t kb[4];
          ldmatrix_x4(kb, k_frag_addr + np * 16 * kStride * 2 + ks * 32);
#pragma unroll
          for (int b = 0; b < kBlocks; ++b) {
            Mma<T>::run(s[b][2 * np], qa[b], kb[0], kb[1]);
            Mma<T>::run(s[b][2 * np + 1], qa[b], kb[2], kb[3]);
          }
        }
      }
    };
    if (d_steps == kTile / 16) {
      qk_product(std::true_type{});
    } else {
      qk_product(std::false_type{});
    }

    // ---- Scores: scale, softcap, user mask; the element test only on tiles not wholly inside `all`.
    const bool edge = j0 < all_begin || j0 + kKeys > all_end;
    const bool has_mask = !kPlain && a.mask_kind != MaskKind::kNone;
    float alpha[kBlocks][2];
    bool unchanged = true;
#pragma unroll
    for (int b = 0; b < kBlocks; ++b) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float x[2 * kKeyN8];
#pragma unroll
        for (int n = 0; n < kKeyN8; ++n) {
          x[2 * n] = kPlain ? s[b][n][2 * h] : s[b][n][2 * h] * a.scale;
          x[2 * n + 1] = kPlain ? s[b][n][2 * h + 1] : s[b][n][2 * h + 1] * a.scale;
        }
        if (!kPlain && has_softcap) {
#pragma unroll
          for (int e = 0; e < 2 * kKeyN8; ++e) x[e] = softcap.apply(x[e]);
        }
        if (edge || has_mask) {
          const int row = (warp * kBlocks + b) * 16 + quad_row + 8 * h;
          const int2 row_keys = row_keys_s[row];
          const int64_t mask_row = has_mask ? mask_row_s[row] : 0;
#pragma unroll
          for (int n = 0; n < kKeyN8; ++n) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int j = j0 + n * 8 + quad_col + e;
              if (edge && (j >= j_end || j < row_keys.x || j >= row_keys.y)) {
                x[2 * n + e] = kNegInf;
              } else if (has_mask) {
                x[2 * n + e] = apply_user_mask(a, mask_row, j, x[2 * n + e]);
              }
            }
          }
        }
        if (!kPlain) {
#pragma unroll
          for (int e = 0; e < 2 * kKeyN8; ++e) x[e] *= kLog2e;
        }
        alpha[b][h] = prefill_softmax_step<kPlain>(x, m[b][h], l[b][h], scale_log2);
        unchanged = unchanged && alpha[b][h] == 1.0f;
#pragma unroll
        for (int n = 0; n < kKeyN8; ++n) {
          s[b][n][2 * h] = x[2 * n];
          s[b][n][2 * h + 1] = x[2 * n + 1];
        }
      }
    }
    // Rescale O only when some row's maximum moved (alpha == 1 exactly otherwise): after the first steps of
    // a long row that is rare, and the 128 multiplies per step are a tenth of the loop's instructions.
    if (!__all_sync(0xffffffffu, unchanged)) {
#pragma unroll
      for (int b = 0; b < kBlocks; ++b)
#pragma unroll
        for (int n = 0; n < kOutN8; ++n) {
          o[b][n][0] *= alpha[b][0];
          o[b][n][1] *= alpha[b][0];
          o[b][n][2] *= alpha[b][1];
          o[b][n][3] *= alpha[b][1];
        }
    }

    // NaN safety: where a mask or an edge may hide keys from every row of the warp, V of keys without
    // weight is zeroed in registers below (see warp_live_keys).
    const bool sanitize = edge || has_mask;
    uint32_t live = ~0u;
    if (sanitize) {
      live = 0;
#pragma unroll
      for (int b = 0; b < kBlocks; ++b)
#pragma unroll
        for (int n = 0; n < kKeyN8; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) live |= s[b][n][i] > 0.0f ? 1u << (2 * n + i % 2) : 0u;
      live = warp_live_keys(live);
    }

    cp_async_wait<0>();
    __syncthreads();  // V_t visible to all; every warp is done with K_t
    if (step + 1 < steps) {
      load_keys(k_s, k_base, a.k_stride[2], a.head_dim, d_chunks, j0 + kKeys, min(j0 + 2 * kKeys, any_end));
    }
    cp_async_commit();

    // ---- O += P V: the S accumulators of n-tiles 2kk, 2kk+1 are exactly the A fragment of k-step kk.
    auto pv_product = [&](auto full_pairs, auto masked_keys) {
      constexpr bool kFull = decltype(full_pairs)::value, kMasked = decltype(masked_keys)::value;
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t keep0 = kMasked ? live_halves(live, 2 * kk) : ~0u;
        const uint32_t keep1 = kMasked ? live_halves(live, 2 * kk + 1) : ~0u;
        uint32_t pa[kBlocks][4];
#pragma unroll
        for (int b = 0; b < kBlocks; ++b) {
          pa[b][0] = Mma<T>::pack(s[b][2 * kk][0], s[b][2 * kk][1]);
          pa[b][1] = Mma<T>::pack(s[b][2 * kk][2], s[b][2 * kk][3]);
          pa[b][2] = Mma<T>::pack(s[b][2 * kk + 1][0], s[b][2 * kk + 1][1]);
          pa[b][3] = Mma<T>::pack(s[b][2 * kk + 1][2], s[b][2 * kk + 1][3]);
        }
#pragma unroll
        for (int np = 0; np < kTile / 16; ++np) {
          if (!kFull && np >= dv_pairs) break;
          // Transposed matrices: keys +0..7 | keys +8..15 of columns +0..7, then the same of columns +8..15.
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_frag_addr + kk * 16 * kStride * 2 + np * 32);
          if (kMasked) {
            vb[0] &= keep0;
            vb[1] &= keep1;
            vb[2] &= keep0;
            vb[3] &= keep1;
          }
#pragma unroll
          for (int b = 0; b < kBlocks; ++b) {
            Mma<T>::run(o[b][2 * np], pa[b], vb[0], vb[1]);
            Mma<T>::run(o[b][2 * np + 1], pa[b], vb[2], vb[3]);
          }
        }
      }
    };
    // Four copies: the edge/mask sanitizing out of the common path, and a constant pair count when Dv fills
    // the tile.
    if (dv_pairs == kTile / 16) {
      if (sanitize) {
        pv_product(std::true_type{}, std::true_type{});
      } else {
        pv_product(std::true_type{}, std::false_type{});
      }
    } else if (sanitize) {
      pv_product(std::false_type{}, std::true_type{});
    } else {
      pv_product(std::false_type{}, std::false_type{});
    }
  }
  cp_async_wait<0>();

  // ---- Epilogue: Y = O / l, LSE = m + log(l); rows without a visible key give 0 and -inf.
  __syncthreads();  // publishes q_start_s even when no key step (and no barrier) ran
  const int64_t q_start = q_start_s;
#pragma unroll
  for (int b = 0; b < kBlocks; ++b) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float sum = quad_sum(l[b][h]);
      const int64_t r = row_begin + (warp * kBlocks + b) * 16 + quad_row + 8 * h;
      if (r >= row_end) continue;
      const RowRef ref = row_ref(a, cta.batch, cta.kv_head, r);
      const float inv = sum != 0.0f ? 1.0f / sum : 0.0f;
      const int64_t y_at = y_row(a, cta.batch, ref.head, ref.query, q_start);
#pragma unroll
      for (int n = 0; n < kOutN8; ++n) {
        const int col = n * 8 + quad_col;
        if (col >= a.v_head_dim) break;
        if constexpr (kFloatOut) {  // Dv is a multiple of 8 here: 8-byte aligned pairs
          *reinterpret_cast<float2*>(a.y_float + y_at + col) = make_float2(o[b][n][2 * h] * inv, o[b][n][2 * h + 1] * inv);
        } else {
          *reinterpret_cast<uint32_t*>(a.y + y_at + col) = Mma<T>::pack(o[b][n][2 * h] * inv, o[b][n][2 * h + 1] * inv);
        }
      }
      if (a.lse != nullptr && lane % 4 == 0) {
        const float m_log2 = kPlain ? m[b][h] * scale_log2 : m[b][h];
        a.lse[lse_row(a, ref, q_start)] = sum != 0.0f ? (m_log2 + log2f(sum)) * kLn2 : kNegInf;
      }
    }
  }
}

template <typename T, int kTile, bool kPlain, bool kFloatOut = false>
void launch_prefill_variant(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  allow_smem<prefill_mma_kernel<T, kTile, kPlain, kFloatOut>>(plan.smem_bytes);
  prefill_mma_kernel<T, kTile, kPlain, kFloatOut><<<unsigned(plan.grid), plan.threads, plan.smem_bytes, stream>>>(args);
}

template <typename T, int kTile>
void launch_prefill_tile(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  const bool plain = !(args.softcap > 0.0f) && args.mask_kind == MaskKind::kNone && args.scale > 0.0f;
  if (args.y_float != nullptr) {
    if (!plain) fail(kOpName, ": the tensor-core prefill kernel writes float32 output without softcap or mask only");
    return launch_prefill_variant<T, kTile, true, true>(args, plan, stream);
  }
  if (plain) return launch_prefill_variant<T, kTile, true>(args, plan, stream);
  launch_prefill_variant<T, kTile, false>(args, plan, stream);
}

template <typename T>
void launch_prefill_mma(const KernelArgs<T>& args, const LaunchPlan& plan, cudaStream_t stream) {
  switch (plan.head_dim_tile) {
    case 64: return launch_prefill_tile<T, 64>(args, plan, stream);
    case 128: return launch_prefill_tile<T, 128>(args, plan, stream);
    default: return launch_prefill_tile<T, 256>(args, plan, stream);
  }
}

}  // namespace onnxattn::sdpa::cuda
