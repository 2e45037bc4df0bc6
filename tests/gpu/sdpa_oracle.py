"""The numerical oracle for the GPU checks of ScaledDotProductAttention, self-contained (torch only) so
the GPU machine needs nothing else: the op's contract computed eagerly in a chosen precision, the test
matrix as data, input generation, and the tolerance rule.

Tolerance (STYLE.md #10, after FlashAttention-3's tests): against a float64 oracle, our error may be at
most 2x the error of the same math done plainly in the input's precision (torch matmul/softmax in
fp16/bf16), plus a floor of about two units in the last place of an O(1) output (fp16 1e-3, bf16 8e-3,
fp32 1e-5). Rows without a visible key must be exactly 0 with LSE = -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

FLOORS = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}
LSE_FLOORS = {torch.float16: 1e-3, torch.bfloat16: 4e-3, torch.float32: 1e-5}


def visible_keys(q_len: int, kv_len: int, causal: bool, window: int, band: int, device) -> torch.Tensor:
    """Bool [Sq, Skv]: the structural rules, bottom-right aligned (row i sits at key i + Skv - Sq)."""
    p = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    j = torch.arange(kv_len, device=device)[None, :]
    ok = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if causal:
        ok &= j <= p
    if window > 0:
        ok &= j > p - window
    if band > 0:
        ok &= (p - j).abs() <= band
    return ok


def attention(q, k, v, mask=None, *, causal=False, window=0, band=0, scale=0.0, softcap=0.0, dtype=torch.float64):
    """(Y in q's dtype... computed in `dtype`, LSE float) per the op's contract."""
    group = q.shape[1] // k.shape[1]
    qc = q.to(dtype)
    kc = k.to(dtype).repeat_interleave(group, dim=1)
    vc = v.to(dtype).repeat_interleave(group, dim=1)
    scale = scale if scale != 0.0 else 1.0 / math.sqrt(q.shape[-1])
    s = (qc @ kc.transpose(-1, -2)) * scale
    if softcap > 0.0:
        s = softcap * torch.tanh(s / softcap)
    ok = visible_keys(q.shape[2], k.shape[2], causal, window, band, q.device)
    if mask is not None:
        if mask.dtype == torch.bool:
            ok = ok & mask
        else:
            s = s + mask.to(dtype)
    s = s.masked_fill(~ok, float("-inf"))
    m = s.amax(dim=-1, keepdim=True) if s.shape[-1] > 0 else torch.full(s.shape[:-1] + (1,), float("-inf"), dtype=dtype, device=s.device)
    m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    l = p.sum(dim=-1, keepdim=True)
    empty = l == 0
    y = torch.where(empty, torch.zeros_like(l), (p @ vc) / torch.where(empty, torch.ones_like(l), l))
    lse = torch.where(empty, torch.full_like(l, float("-inf")), torch.log(torch.where(empty, torch.ones_like(l), l)) + m)
    return y, lse.squeeze(-1)


@dataclass(frozen=True)
class Case:
    name: str
    b: int
    hq: int
    hkv: int
    sq: int
    skv: int
    d: int
    dv: int | None = None
    causal: bool = False
    window: int = 0
    band: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    mask: str | None = None  # "bool" | "additive"
    mask_shape: str = "full"  # full [B,Hq,Sq,Skv] | keys [B,1,1,Skv] | rows [Sq,Skv] | heads [1,Hq,1,Skv]
    empty_rows: bool = False  # a bool mask that hides every key of some rows
    qscale: float = 1.0  # larger logits stress the online softmax
    lse: bool = True
    tags: tuple[str, ...] = field(default=())

    @property
    def v_dim(self) -> int:
        return self.d if self.dv is None else self.dv

    def __str__(self) -> str:
        return self.name


# The test matrix as data: each row says what it covers in its name.
CASES = [
    Case("tiny", 1, 1, 1, 1, 1, 64),
    Case("mha_odd", 2, 4, 4, 37, 37, 64),
    Case("gqa4_causal", 1, 8, 2, 128, 128, 128, causal=True),
    Case("gqa4_causal_sq_lt_skv", 1, 8, 2, 100, 300, 128, causal=True),
    Case("causal_sq_gt_skv_empty_rows", 2, 4, 1, 300, 100, 64, causal=True),
    Case("mqa_long", 1, 8, 1, 200, 1500, 128, causal=True),
    Case("gqa8_b3", 3, 16, 2, 150, 150, 64, causal=True),
    Case("gqa16", 1, 16, 1, 40, 90, 64),
    Case("decode", 1, 4, 4, 1, 1000, 128),
    Case("decode_gqa_odd", 3, 32, 8, 1, 4097, 128),
    Case("decode_sq5", 1, 16, 2, 5, 777, 64, causal=True),
    Case("decode_sq16", 1, 8, 8, 16, 2048, 128, causal=True),
    Case("sq17", 1, 2, 1, 17, 1000, 128, causal=True),
    Case("d32", 2, 4, 2, 70, 70, 32, causal=True),
    Case("d40", 1, 4, 2, 33, 65, 40),
    Case("d80", 1, 4, 2, 100, 100, 80, causal=True),
    Case("d96", 1, 2, 2, 64, 200, 96),
    Case("d160", 1, 2, 1, 50, 120, 160, causal=True),
    Case("d192", 1, 4, 2, 90, 90, 192, causal=True),
    Case("d256", 1, 4, 2, 130, 130, 256, causal=True),
    Case("d256_decode", 2, 8, 2, 1, 600, 256),
    Case("d33_simt_fallback", 1, 2, 1, 20, 50, 33, causal=True),
    Case("dv64_d128", 1, 4, 2, 80, 80, 128, dv=64, causal=True),
    Case("dv128_d192", 1, 4, 1, 60, 140, 192, dv=128, causal=True),
    Case("dv256_d64", 1, 2, 2, 50, 50, 64, dv=256),
    Case("dv16_d32", 1, 2, 1, 30, 45, 32, dv=16),
    Case("window_causal", 1, 4, 2, 500, 500, 64, causal=True, window=64),
    Case("window_no_causal", 1, 4, 4, 50, 400, 64, window=100),
    Case("window_decode", 2, 8, 2, 1, 8192, 128, causal=True, window=1000),
    Case("band", 1, 4, 2, 120, 120, 64, band=10),
    Case("band_causal", 1, 4, 2, 70, 90, 64, causal=True, band=5),
    Case("softcap", 1, 4, 2, 100, 100, 64, causal=True, softcap=30.0),
    Case("softcap_saturated", 1, 2, 1, 64, 64, 128, softcap=5.0, qscale=8.0),
    Case("large_logits", 1, 4, 2, 90, 300, 64, causal=True, qscale=6.0),
    Case("explicit_scale", 1, 4, 2, 50, 70, 64, scale=0.3),
    Case("bool_mask_full", 2, 4, 2, 40, 60, 64, mask="bool"),
    Case("bool_mask_keys_padding", 3, 8, 2, 30, 100, 64, causal=True, mask="bool", mask_shape="keys"),
    Case("bool_mask_empty_rows", 1, 4, 1, 20, 40, 64, mask="bool", empty_rows=True),
    Case("additive_mask_full", 2, 4, 2, 40, 60, 128, mask="additive"),
    Case("additive_mask_rows", 1, 4, 4, 33, 77, 64, mask="additive", mask_shape="rows"),
    Case("additive_mask_heads", 2, 4, 2, 25, 50, 64, mask="additive", mask_shape="heads"),
    Case("mask_decode", 2, 8, 2, 1, 3000, 128, mask="bool", mask_shape="keys"),
    Case("mask_window_softcap", 1, 4, 2, 64, 256, 64, causal=True, window=50, softcap=20.0, mask="additive"),
    Case("no_lse", 1, 4, 2, 60, 60, 64, causal=True, lse=False),
    Case("empty_kv", 2, 4, 2, 3, 0, 64),
]


def mask_dims(case: Case) -> tuple[int, ...]:
    return {
        "full": (case.b, case.hq, case.sq, case.skv),
        "keys": (case.b, 1, 1, case.skv),
        "rows": (case.sq, case.skv),
        "heads": (1, case.hq, 1, case.skv),
    }[case.mask_shape]


def make_inputs(case: Case, dtype: torch.dtype, device="cuda", seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)

    q = (randn(case.b, case.hq, case.sq, case.d) * case.qscale).to(dtype)
    k = randn(case.b, case.hkv, case.skv, case.d).to(dtype)
    v = randn(case.b, case.hkv, case.skv, case.v_dim).to(dtype)
    mask = None
    if case.mask == "bool":
        mask = torch.rand(mask_dims(case), generator=gen, device=device) < 0.8
        if case.empty_rows:
            mask[..., ::3, :] = False
    elif case.mask == "additive":
        mask = randn(*mask_dims(case))
        mask = mask.masked_fill(torch.rand(mask.shape, generator=gen, device=device) < 0.1, float("-inf")).to(dtype)
    return q, k, v, mask


def low_precision(dtype: torch.dtype) -> torch.dtype:
    return dtype  # the plain computation in the inputs' own precision


def check(case: Case, q, k, v, mask, y, lse, *, context: str = "", oracle_dtype=torch.float64) -> None:
    """Asserts the tolerance rule for outputs y (and lse unless None) of `case` on inputs q, k, v, mask.
    `oracle_dtype` float32 halves the oracle's memory for huge 16-bit problems (still far below their error)."""
    kw = dict(causal=case.causal, window=case.window, band=case.band, scale=case.scale, softcap=case.softcap)
    y_ref, lse_ref = attention(q, k, v, mask, dtype=oracle_dtype, **kw)
    y_lp, lse_lp = attention(q, k, v, mask, dtype=low_precision(q.dtype), **kw)
    y_lp = y_lp.to(q.dtype)
    assert y.shape == y_ref.shape, (y.shape, y_ref.shape)
    assert torch.isfinite(y).all(), f"{context}: non-finite output"
    if y.numel() == 0:
        return
    err = (y.double() - y_ref).abs().max().item()
    err_lp = (y_lp.double() - y_ref).abs().nan_to_num(0.0).max().item()
    bound = 2 * err_lp + FLOORS[q.dtype]
    assert err <= bound, f"{context}: max |Y - oracle| = {err:.3g} > {bound:.3g} (plain {q.dtype}: {err_lp:.3g})"
    empty = torch.isinf(lse_ref)
    if empty.any():
        assert (y[empty] == 0).all(), f"{context}: rows without a visible key must be exactly 0"
    if lse is not None:
        assert (torch.isinf(lse) == empty).all() and (lse[empty] < 0).all(), f"{context}: LSE -inf exactly on empty rows"
        if (~empty).any():
            e = (lse.double() - lse_ref)[~empty].abs().max().item()
            e_lp = (lse_lp.double() - lse_ref)[~empty].abs().nan_to_num(0.0).max().item()
            b = 2 * e_lp + LSE_FLOORS[q.dtype]
            assert e <= b, f"{context}: max |LSE - oracle| = {e:.3g} > {b:.3g} (plain {q.dtype}: {e_lp:.3g})"
