"""torch helpers of the GroupQueryAttention GPU checks: a case's inputs as CUDA tensors, output and cache
buffers (NaN-filled, so a slot the kernel forgets to write shows), and a run through the library's C
test entry (gqa_cuda_lib) that returns numpy results for gqa_cases.check."""

from __future__ import annotations

import numpy as np
import torch

import gqa_cases as gc
import gqa_cuda_lib as lib

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# gqa_cuda_lib.Tensors field of each input
FIELD = {"rope_inv_freq": "inv_freq"}


def to_device(case: gc.Case, dtype: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, x in gc.feeds(case.id, dtype).items():
        t = torch.from_numpy(np.ascontiguousarray(x))
        out[name] = (t.to(TORCH[dtype]) if name in gc.T_INPUTS else t).cuda()
    return out


def outputs(case: gc.Case, dtype: str) -> dict[str, torch.Tensor]:
    nan = lambda *shape: torch.full(shape, float("nan"), dtype=TORCH[dtype], device="cuda")  # noqa: E731
    out = {"output": nan(case.batch, case.seq, case.q_heads * case.dv)}
    if case.with_present:
        out["present_key"] = nan(case.batch, case.kv_heads, case.total, case.head_dim)
        out["present_value"] = nan(case.batch, case.kv_heads, case.total, case.dv)
    return out


def run(case: gc.Case, dtype: str, *, path="auto", kernel="auto", in_place=False, inputs=None, poison=False):
    """Runs the op; returns (output, present_key, present_value as numpy float64 or None, plan, tensors).
    in_place: the present caches are the past tensors themselves (shared-buffer mode); poison: as
    gqa_cuda_lib.run's."""
    t = inputs if inputs is not None else to_device(case, dtype)
    out = outputs(case, dtype)
    if in_place:
        assert case.mode == "shared" and case.with_present
        out["present_key"], out["present_value"] = t["past_key"], t["past_value"]
    args = {FIELD.get(n, n): v for n, v in {**t, **out}.items()}
    plan = lib.run(gc.spec(case, dtype), args, path=path, kernel=kernel, poison=poison)
    torch.cuda.synchronize()
    numpy = lambda x: None if x is None else x.double().cpu().numpy()  # noqa: E731
    return numpy(out["output"]), numpy(out.get("present_key")), numpy(out.get("present_value")), plan, {**t, **out}
