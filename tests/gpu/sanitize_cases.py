"""A few representative kernel launches for compute-sanitizer (memcheck, racecheck), run by
scripts/gpu_check.sh when the GPU tests fail or GPU_CHECK_SANITIZE=1: every kernel family (prefill mma,
decode mma with splits + combine, simt), edge tiles, masks, D padding, Dv != D; then GroupQueryAttention
(new-token kernel, past copies, per-sequence lengths, the fused Q preparation, caches in scratch).
Not a pytest module."""

from __future__ import annotations

import sys

import torch

import sdpa_cuda_lib as lib
from sdpa_oracle import CASES, check, make_inputs

GQA_NAMES = ("shared-decode-b4", "everything-shared", "prefill-b2-s77-d64", "chunk-s5-p700", "d12-simt",
             "no-present-decode", "window-shared-b2")  # fmt: skip
NAMES = ("gqa4_causal_sq_lt_skv", "decode_gqa_odd", "d80", "dv128_d192", "bool_mask_keys_padding",
         "additive_mask_rows", "window_decode", "d33_simt_fallback")  # fmt: skip


def main(argv=None) -> int:
    """Arguments: the families to run, `sdpa` and/or `gqa` (default both)."""
    families = set(argv if argv is not None else sys.argv[1:]) or {"sdpa", "gqa"}
    by_name = {c.name: c for c in CASES}
    failed = 0
    for name in NAMES if "sdpa" in families else ():
        case = by_name[name]
        for dtype in (torch.float16, torch.float32):
            for path in ("prefill", "decode"):
                q, k, v, mask = make_inputs(case, dtype)
                try:
                    y, lse, plan = lib.run(
                        q, k, v, mask, causal=case.causal, window=case.window, band=case.band,
                        softcap=case.softcap, want_lse=case.lse, path=path,
                    )  # fmt: skip
                    torch.cuda.synchronize()
                    check(case, q, k, v, mask, y, lse if case.lse else None, context=plan["reason"])
                    print(f"ok   {name} {dtype} {path}: {plan['reason']}")
                except Exception as e:  # noqa: BLE001 - report every case
                    failed += 1
                    print(f"FAIL {name} {dtype} {path}: {type(e).__name__}: {e}")
    import gqa_cases as gc
    import gqa_torch as gt

    for name in GQA_NAMES if "gqa" in families else ():
        case = gc.CASES_BY_ID[name]
        for dtype in ("float16", "float32"):
            try:
                y, pk, pv, plan, _ = gt.run(case, dtype)
                gc.check(case, dtype, y, pk, pv, context=plan["attention"]["reason"])
                print(f"ok   gqa {name} {dtype}: {plan['attention']['reason']}")
            except Exception as e:  # noqa: BLE001 - report every case
                failed += 1
                print(f"FAIL gqa {name} {dtype}: {type(e).__name__}: {e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
