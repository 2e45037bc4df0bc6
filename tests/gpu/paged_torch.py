"""torch helpers of the PagedAttention GPU checks: a case's inputs as CUDA tensors, output and pool buffers
(filled with NaN, so a row or a slot the kernel forgets to write shows), and a run through the library's C
test entry (paged_cuda_lib) that returns numpy results for paged_cases.check."""

from __future__ import annotations

import numpy as np
import torch

import paged_cases as pc
import paged_cuda_lib as lib

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
FIELD = {"rope_inv_freq": "inv_freq"}  # paged_cuda_lib.Tensors field of each input


def to_device(feeds: dict[str, np.ndarray], dtype: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, x in feeds.items():
        t = torch.from_numpy(np.ascontiguousarray(x))
        out[name] = (t.to(TORCH[dtype]) if name in pc.T_INPUTS else t).cuda()
    return out


def outputs(t: dict[str, torch.Tensor], case: pc.Case, dtype: str, *, in_place: bool = False) -> dict[str, torch.Tensor]:
    out = {"output": torch.full((case.tokens, case.q_heads * case.dv), float("nan"), dtype=TORCH[dtype], device="cuda")}
    if case.with_present:
        if in_place:
            out["key_cache_out"], out["value_cache_out"] = t["key_cache"], t["value_cache"]
        else:
            out["key_cache_out"] = torch.full_like(t["key_cache"], float("nan"))
            out["value_cache_out"] = torch.full_like(t["value_cache"], float("nan"))
    return out


def numpy(x):
    return None if x is None else x.double().cpu().numpy()


def run_tensors(case: pc.Case, dtype: str, t: dict, out: dict, *, path="auto", kernel="auto", spec=None) -> dict:
    args = {FIELD.get(n, n): v for n, v in {**t, **out}.items()}
    return lib.run(spec or pc.spec(case, dtype), args, path=path, kernel=kernel)


def run(case: pc.Case, dtype: str, *, path="auto", kernel="auto", in_place=False, feeds=None):
    """Runs the op; returns (output, key pool, value pool as numpy float64 or None, plan, tensors)."""
    t = to_device(feeds if feeds is not None else pc.feeds(case.id, dtype), dtype)
    out = outputs(t, case, dtype, in_place=in_place)
    plan = run_tensors(case, dtype, t, out, path=path, kernel=kernel)
    torch.cuda.synchronize()
    return (numpy(out["output"]), numpy(out.get("key_cache_out")), numpy(out.get("value_cache_out")), plan,
            {**t, **out})  # fmt: skip
