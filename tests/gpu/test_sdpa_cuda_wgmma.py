"""The Hopper prefill kernel (sm_90a warpgroup MMA, ONNXATTN_SDPA_CUDA_PREFILL=wgmma; see
onnxattn/cuda_ep/csrc/sdpa/cuda_prefill_wgmma.cuh) on an sm_90 GPU: the plan picks it for every eligible
problem and falls back to the mma.sync kernel, saying why, for the others; its outputs meet the float64
oracle's tolerance and agree with the mma.sync kernel's over a table of shapes (Sq != Skv both ways, odd
lengths, B > 1, Hkv = 1, GQA, windows, bands, D and Dv padded to 128, many key steps); two diagnostic tests
isolate the two products' shared-memory layouts (scores with V = identity; values with uniform scores), so
a layout error says which operand it is in; head tiles of 128 and 64 columns; results are deterministic; and it runs through onnxruntime's
CUDA execution provider and under GroupQueryAttention (queries prepared ahead)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
HOPPER = CUDA and torch.cuda.get_device_capability() == (9, 0)
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)"),
    pytest.mark.skipif(CUDA and not HOPPER, reason="the wgmma kernel needs an sm_90 GPU (H100, H200)"),
]

import sdpa_cuda_lib as lib  # noqa: E402
from sdpa_oracle import CASES, Case, check, make_inputs  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16]
PREFILL_FLAG = "ONNXATTN_SDPA_CUDA_PREFILL"

# Eligible problems: max(D, Dv) <= 128 (head tiles of 64 and 128), no softcap, no mask.
WGMMA_CASES = [
    Case("one_row", 1, 1, 1, 1, 1, 128),
    Case("gqa4_causal", 1, 8, 2, 128, 128, 128, causal=True),
    Case("gqa4_causal_sq_lt_skv", 1, 8, 2, 100, 300, 128, causal=True),
    Case("causal_sq_gt_skv_empty_rows", 2, 4, 1, 300, 100, 128, causal=True),
    Case("mqa_long", 1, 8, 1, 200, 1500, 128, causal=True),
    Case("mha_odd_bidirectional", 2, 4, 4, 37, 301, 128),
    Case("gqa8_b3", 3, 16, 2, 150, 150, 128, causal=True),
    Case("gqa16_bidirectional", 1, 16, 1, 40, 90, 128),
    Case("sq17", 1, 2, 1, 17, 1000, 128, causal=True),
    Case("d96", 1, 2, 2, 64, 200, 96),
    Case("d80_causal", 1, 4, 2, 100, 100, 80, causal=True),
    Case("d72_dv128", 1, 4, 2, 77, 190, 72, dv=128, causal=True),
    Case("dv64_d128", 1, 4, 2, 80, 80, 128, dv=64, causal=True),
    Case("dv80_d128", 2, 4, 4, 129, 257, 128, dv=80),
    Case("window_causal", 1, 4, 2, 500, 500, 128, causal=True, window=64),
    Case("window_no_causal", 1, 4, 4, 50, 400, 128, window=100),
    Case("window_wide", 1, 8, 2, 700, 900, 128, causal=True, window=300),
    Case("band", 1, 4, 2, 120, 120, 128, band=10),
    Case("band_causal", 1, 4, 2, 70, 90, 128, causal=True, band=5),
    Case("large_logits", 1, 4, 2, 90, 300, 128, causal=True, qscale=6.0),
    Case("explicit_scale", 1, 4, 2, 50, 70, 128, scale=0.3),
    Case("no_lse", 1, 4, 2, 60, 60, 128, causal=True, lse=False),
    Case("empty_kv", 2, 4, 2, 3, 0, 128),
    Case("long_causal", 1, 16, 4, 2048, 2048, 128, causal=True),
    Case("long_bidirectional_b2", 2, 8, 8, 1024, 1500, 128),
    # the 64-column head tile (m64n64k16 for P V)
    Case("d64_causal_gqa", 2, 8, 2, 300, 300, 64, causal=True),
    Case("d64_sq_lt_skv", 1, 4, 1, 77, 500, 64, causal=True),
    Case("d48_dv32_bidirectional", 1, 4, 4, 130, 129, 48, dv=32),
    Case("d32_window", 1, 8, 2, 400, 400, 32, causal=True, window=100),
    Case("d64_long", 1, 16, 4, 2048, 2048, 64, causal=True),
]


@pytest.fixture(autouse=True, scope="module")
def _setup():
    if not lib.has_cuda():
        pytest.skip("the library was built without CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def wgmma(monkeypatch):
    monkeypatch.setenv(PREFILL_FLAG, "wgmma")  # the library reads it on every call


def run(case: Case, q, k, v, mask=None, *, kernel="auto"):
    return lib.run(
        q, k, v, mask, causal=case.causal, window=case.window, band=case.band, scale=case.scale,
        softcap=case.softcap, want_lse=case.lse, path="prefill", kernel=kernel,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", WGMMA_CASES, ids=str)
def test_wgmma_meets_the_oracle_and_agrees_with_mma(case, dtype, monkeypatch):
    q, k, v, _ = make_inputs(case, dtype)
    monkeypatch.setenv(PREFILL_FLAG, "mma")
    y_mma, lse_mma, plan_mma = run(case, q, k, v)
    monkeypatch.setenv(PREFILL_FLAG, "wgmma")
    y, lse, plan = run(case, q, k, v)
    torch.cuda.synchronize()
    assert plan["kernel"] == "wgmma" and plan["threads"] == 256, plan["reason"]
    assert plan_mma["kernel"] == "mma", plan_mma["reason"]
    check(case, q, k, v, None, y, lse if case.lse else None, context=f"wgmma {case} {plan['reason']}")
    # Same inputs rounded the same way (P to 16 bits, fp32 accumulation), other tile shapes: a few ulps.
    eps = torch.finfo(dtype).eps
    diff = (y.float() - y_mma.float()).abs()
    assert (diff <= 4 * eps * (1 + y_mma.float().abs())).all(), f"wgmma vs mma: max {diff.max().item():.3g}"
    if case.lse:
        assert torch.equal(torch.isinf(lse), torch.isinf(lse_mma))


@pytest.mark.parametrize("case", [c for c in CASES if c.mask or c.softcap > 0 or max(c.d, c.v_dim) > 128][:10], ids=str)
def test_ineligible_problems_fall_back_to_mma_and_say_why(case, wgmma):
    q, k, v, mask = make_inputs(case, torch.float16)
    y, lse, plan = run(case, q, k, v, mask)
    torch.cuda.synchronize()
    if case.d % 8 == 0 and case.v_dim % 8 == 0:
        assert plan["kernel"] == "mma" and "wgmma requested, not eligible" in plan["reason"], plan["reason"]
    check(case, q, k, v, mask, y, lse if case.lse else None, context=plan["reason"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_diagnostic_scores_with_identity_values(dtype, wgmma):
    # V = identity (key j has value e_j) makes Y = P itself, so a wrong Q/K layout (S = Q K^T) shows as
    # probabilities that differ from softmax(Q K^T); a wrong V layout as the right probabilities in permuted
    # columns (reported below).
    n = 128
    case = Case("identity", 1, 1, 1, n, n, 128, causal=True)
    q, k, _, _ = make_inputs(case, dtype)
    v = torch.eye(n, dtype=dtype, device="cuda")[None, None]
    y, _, plan = run(case, q, k, v)
    torch.cuda.synchronize()
    assert plan["kernel"] == "wgmma", plan["reason"]
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(case.d)
    s = s.masked_fill(torch.ones(n, n, dtype=torch.bool, device="cuda").triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1)[0, 0]
    got = y[0, 0].double()
    err = (got - p).abs().max().item()
    if err > 2e-2:
        # Which key column of the expected P each output column matches best: the permutation a V-layout
        # error leaves (identity when the scores themselves are wrong).
        best = torch.cdist(got.T.float(), p.T.float()).argmin(dim=1)
        pytest.fail(f"Y != softmax(Q K^T) with V = I: max error {err:.3g}; output column c matches P column "
                    f"{best[:32].tolist()} (c = 0..31)")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_diagnostic_values_with_uniform_scores(dtype, wgmma):
    # Q = 0 makes every visible key weigh the same: causal row i is the mean of V[0..i], whatever S's layout,
    # so this checks O += P V (the V descriptor and the P fragments) alone.
    case = Case("uniform", 1, 2, 1, 300, 300, 128, causal=True)
    _, k, v, _ = make_inputs(case, dtype)
    q = torch.zeros(1, 2, case.sq, case.d, dtype=dtype, device="cuda")
    y, _, plan = run(case, q, k, v)
    torch.cuda.synchronize()
    assert plan["kernel"] == "wgmma", plan["reason"]
    want = v.double().cumsum(dim=2) / torch.arange(1, case.sq + 1, device="cuda", dtype=torch.float64)[:, None]
    err = (y.double() - want).abs().max().item()
    assert err <= 2e-2, f"Y != prefix means of V with uniform scores: max error {err:.3g}"


def test_deterministic(wgmma):
    case = Case("determinism", 2, 8, 2, 777, 1200, 128, causal=True)
    q, k, v, _ = make_inputs(case, torch.bfloat16)
    first = run(case, q, k, v)
    second = run(case, q, k, v)
    torch.cuda.synchronize()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_unused_cache_slots_may_hold_nan(wgmma):
    # Keys no row of a tile can see are never loaded: NaN there changes nothing.
    case = Case("window", 1, 8, 2, 300, 3000, 128, causal=True, window=700)
    q, k, v, _ = make_inputs(case, torch.float16)
    first_visible = case.skv - case.sq - case.window + 1
    k_nan, v_nan = k.clone(), v.clone()
    k_nan[:, :, :first_visible], v_nan[:, :, :first_visible] = float("nan"), float("nan")
    y, lse, plan = run(case, q, k, v)
    y_nan, lse_nan, _ = run(case, q, k_nan, v_nan)
    torch.cuda.synchronize()
    assert plan["kernel"] == "wgmma", plan["reason"]
    assert torch.equal(y, y_nan) and torch.equal(lse, lse_nan)


def test_through_onnxruntime_cuda_ep(wgmma, tmp_path):
    import ort_cuda
    from test_sdpa_cuda_ort import ORT, ORT_MISSING, OP, run_case

    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)
    for case in (WGMMA_CASES[2], WGMMA_CASES[5], WGMMA_CASES[12]):
        (tmp_path / case.name).mkdir()  # onnxruntime's profile goes there
        (q, k, v, mask), y, lse, providers = run_case(case, torch.bfloat16, tmp_path / case.name)
        assert providers == {ort_cuda.CUDA_EP}, f"{OP} ran on {providers}"
        check(case, q, k, v, mask, y, lse, context=f"ORT CUDA EP, wgmma, {case}")
