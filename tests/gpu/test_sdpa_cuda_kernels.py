"""Kernel-level checks of the CUDA ScaledDotProductAttention through the library's ctypes test entry (no
onnxruntime): the case table of sdpa_oracle.py on every dtype, schedule (auto, prefill, decode) and
kernel (auto = tensor cores where eligible, simt), against a float64 oracle; plus metamorphic checks
(unused cache slots, token-by-token decode, kernels agreeing), a long cache and 64-bit offsets."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import sdpa_cuda_lib as lib  # noqa: E402
from sdpa_oracle import CASES, Case, check, make_inputs  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True, scope="module")
def _setup():
    if not lib.has_cuda():
        pytest.skip("the library was built without CUDA")
    torch.backends.cuda.matmul.allow_tf32 = False  # the oracle's plain fp32 baseline must be real fp32


def run(case: Case, q, k, v, mask, *, path="auto", kernel="auto", out=None, **kw):
    """lib.run on the case's attributes; `kw`: lib.run's other options (e.g. scratch_fill)."""
    return lib.run(
        q, k, v, mask, causal=case.causal, window=case.window, band=case.band, scale=case.scale,
        softcap=case.softcap, want_lse=case.lse, path=path, kernel=kernel, out=out, **kw,
    )  # fmt: skip


def variants():
    for dtype in DTYPES:
        for path in ("auto", "prefill", "decode"):
            for kernel in ("auto", "simt") if dtype != torch.float32 else ("auto",):
                yield pytest.param(dtype, path, kernel, id=f"{str(dtype)[6:]}-{path}-{kernel}")
    # mma.sync's prefill where the Hopper default would take wgmma (ONNXATTN_SDPA_CUDA_PREFILL=mma)
    yield pytest.param(torch.float16, "prefill", "mma.sync", id="float16-prefill-mma.sync")


@pytest.mark.parametrize("dtype,path,kernel", list(variants()))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_case_table(case, dtype, path, kernel, monkeypatch):
    q, k, v, mask = make_inputs(case, dtype)
    out = torch.full((case.b, case.hq, case.sq, case.v_dim), float("nan"), dtype=dtype, device="cuda")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma" if kernel == "mma.sync" else "auto")
    y, lse, plan = run(case, q, k, v, mask, path=path, kernel="auto" if kernel == "mma.sync" else kernel, out=out)
    torch.cuda.synchronize()
    if path != "auto":
        assert plan["schedule"] == path
    if kernel == "simt" or dtype == torch.float32 or case.d % 8 or case.v_dim % 8:
        assert plan["kernel"] == "simt", plan["reason"]
    elif plan["kernel"] == "wgmma":  # the Hopper prefill, where eligible (sdpa/cuda_plan.cc rule 3)
        assert plan["schedule"] == "prefill" and kernel == "auto", plan["reason"]
    else:
        assert plan["kernel"] == "mma", plan["reason"]
    check(case, q, k, v, mask, y, lse if case.lse else None, context=f"{case} {plan['reason']}")


def test_unused_cache_slots_may_hold_nan():
    # Keys no query row can see (before the window of every row, after the last row's position) are never
    # read: NaN there changes nothing. Both schedules, tensor-core and simple kernels.
    case = Case("window", 1, 8, 2, 4, 3000, 128, causal=True, window=700)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v, _ = make_inputs(case, dtype)
        first_visible = case.skv - case.sq - case.window + 1
        k_nan, v_nan = k.clone(), v.clone()
        k_nan[:, :, :first_visible], v_nan[:, :, :first_visible] = float("nan"), float("nan")
        for path in ("prefill", "decode"):
            for kernel in ("auto", "simt"):
                y, lse, _ = run(case, q, k, v, None, path=path, kernel=kernel)
                y_nan, lse_nan = run(case, q, k_nan, v_nan, None, path=path, kernel=kernel)[:2]
                torch.cuda.synchronize()
                assert torch.equal(y, y_nan) and torch.equal(lse, lse_nan), (dtype, path, kernel)


@pytest.mark.parametrize("q_len", [1, 7, 100])
def test_keys_hidden_from_every_row_by_a_bool_mask_may_hold_nan(q_len):
    # An unwritten KV-cache slot hidden by a key-padding mask: NaN in its K and V changes nothing (as in
    # the CPU kernel and the reference function).
    case = Case("padding", 2, 8, 2, q_len, 333, 64, mask="bool", mask_shape="keys")
    for dtype in DTYPES:
        q, k, v, mask = make_inputs(case, dtype)
        k_nan, v_nan = k.clone(), v.clone()
        hidden = ~mask[:, 0, 0, :]  # [B, Skv]
        k_nan[hidden[:, None, :, None].expand_as(k)] = float("nan")
        v_nan[hidden[:, None, :, None].expand_as(v)] = float("nan")
        for path in ("prefill", "decode"):
            for kernel in ("auto", "simt"):
                y, lse, plan = run(case, q, k, v, mask, path=path, kernel=kernel)
                y_nan, lse_nan, _ = run(case, q, k_nan, v_nan, mask, path=path, kernel=kernel)
                torch.cuda.synchronize()
                assert torch.equal(y, y_nan) and torch.equal(lse, lse_nan), plan["reason"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_token_by_token_decode_equals_prefill(dtype):
    case = Case("prefill", 1, 8, 2, 97, 97, 128, causal=True)
    q, k, v, _ = make_inputs(case, dtype)
    y_all = run(case, q, k, v, None, path="prefill")[0]
    rows = []
    for t in range(case.sq):
        step = Case("step", 1, 8, 2, 1, t + 1, 128, causal=True)
        rows.append(run(step, q[:, :, t : t + 1].contiguous(), k[:, :, : t + 1].contiguous(), v[:, :, : t + 1].contiguous(), None, path="decode")[0])
    torch.cuda.synchronize()
    y_steps = torch.cat(rows, dim=2)
    # Both round P and Y to `dtype`, at different points (other tiles, other running maxima): allow a
    # couple of units in the last place of O(1) outputs, relative to larger ones.
    eps = torch.finfo(dtype).eps
    diff = (y_steps.float() - y_all.float()).abs()
    assert (diff <= 4 * eps * (1 + y_all.float().abs())).all(), diff.max().item()
    check(case, q, k, v, None, y_steps, None, context="token by token")


@pytest.mark.parametrize("case", [c for c in CASES if c.d % 8 == 0 and c.v_dim % 8 == 0][:12], ids=str)
def test_tensor_core_kernels_agree_with_the_simple_one(case):
    q, k, v, mask = make_inputs(case, torch.float16)
    y_simt, lse_simt, _ = run(case, q, k, v, mask, kernel="simt")
    for path in ("prefill", "decode"):
        y, lse, plan = run(case, q, k, v, mask, path=path, kernel="mma")
        torch.cuda.synchronize()
        # simt keeps P in float32, mma rounds it to fp16 for the tensor cores: a few fp16 ulps apart.
        assert ((y.float() - y_simt.float()).abs() <= 4e-3 * (1 + y_simt.float().abs())).all(), plan["reason"]
        if case.lse:
            finite = torch.isfinite(lse_simt)
            assert torch.equal(torch.isfinite(lse), finite)
            if finite.any():
                assert (lse[finite] - lse_simt[finite]).abs().max().item() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_long_cache_decode_has_no_length_cap(dtype):
    case = Case("long", 1, 8, 1, 1, 300_000, 128)
    q, k, v, _ = make_inputs(case, dtype)
    y, lse, plan = run(case, q, k, v, None, path="decode")
    torch.cuda.synchronize()
    assert plan["splits"] > 1, plan["reason"]
    check(case, q, k, v, None, y, lse, context=plan["reason"])


def test_offsets_past_two_to_the_31_elements():
    # K and V hold 2 heads x 2^23 + 5 keys x 128 = 2.1e9 elements each: head 1 starts past 2^31.
    skv = (1 << 23) + 5
    need = 2 * 2 * skv * 128 * 2
    free, _ = torch.cuda.mem_get_info()
    if free < need * 4:  # inputs are drawn in float32 first, and the oracle works per head in float32
        pytest.skip(f"needs {need * 4 / 2**30:.0f} GiB free")
    case = Case("big", 1, 2, 2, 1, skv, 128)
    q, k, v, _ = make_inputs(case, torch.float16)
    y, lse, plan = run(case, q, k, v, None)
    torch.cuda.synchronize()
    for head in (0, 1):
        sub = Case("head", 1, 1, 1, 1, skv, 128)
        h = slice(head, head + 1)
        check(sub, q[:, h], k[:, h], v[:, h], None, y[:, h], lse[:, h], context=f"head {head} {plan['reason']}",
              oracle_dtype=torch.float32)


def test_runs_on_the_callers_stream():
    case = Case("stream", 2, 8, 2, 1, 5000, 128)
    q, k, v, _ = make_inputs(case, torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y, lse, plan = run(case, q, k, v, None)
    side.synchronize()
    assert plan["splits"] > 1
    check(case, q, k, v, None, y, lse, context="side stream")


def test_unsupported_head_size_is_a_clear_error():
    q = torch.zeros(1, 1, 4, 320, dtype=torch.float16, device="cuda")
    with pytest.raises(lib.SdpaCudaError, match="head sizes up to 256"):
        lib.run(q, q, q)


# ---- layouts of fused ops (GroupQueryAttention): strided views, per-batch query offsets and lengths
@pytest.mark.parametrize("path", ["prefill", "decode"])
@pytest.mark.parametrize("kernel", ["auto", "simt"])
@pytest.mark.parametrize("kv_layout", ["cache", "bshd"])
@pytest.mark.parametrize("loads", ["lookup", "direct"])
def test_strided_views_give_the_contiguous_result(path, kernel, kv_layout, loads, monkeypatch):
    # Q and Y as [B, S, H*D] activations, K and V as a cache longer than the keys or as [B, S, Hkv, D] activations
    # (rows Hkv * D apart): views with other strides run the same arithmetic, so the results are bit-identical; with
    # the tensor-core decode's K/V copies addressed through the slot lookup or directly
    # (ONNXATTN_SDPA_CUDA_DECODE_LOADS).
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", loads)
    b, hq, hkv, sq, skv, d = 2, 8, 2, 37, 300, 128
    gen = torch.Generator(device="cuda").manual_seed(11)
    q_bshd = torch.randn(b, sq, hq, d, generator=gen, device="cuda").half()
    if kv_layout == "cache":
        cache_k = torch.randn(b, hkv, skv + 50, d, generator=gen, device="cuda").half()
        cache_v = torch.randn(b, hkv, skv + 50, d, generator=gen, device="cuda").half()
        k, v = cache_k[:, :, :skv], cache_v[:, :, :skv]
    else:
        k, v = (torch.randn(b, skv, hkv, d, generator=gen, device="cuda").half().transpose(1, 2) for _ in range(2))
    q = q_bshd.transpose(1, 2)
    y_bshd = torch.full((b, sq, hq, d), float("nan"), dtype=torch.half, device="cuda")
    y_view, _, plan = lib.run(q, k, v, causal=True, path=path, kernel=kernel, out=y_bshd.transpose(1, 2))
    y_ref, _, _ = lib.run(q.contiguous(), k.contiguous(), v.contiguous(), causal=True, path=path, kernel=kernel)
    torch.cuda.synchronize()
    assert torch.equal(y_bshd.transpose(1, 2), y_ref), plan["reason"]


@pytest.mark.parametrize("combine", ["kernel", "fused", "columns"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("path", ["prefill", "decode"])
@pytest.mark.parametrize("sq", [1, 5, 40])
def test_per_batch_lengths_read_only_each_sequences_keys(dtype, path, sq, combine, monkeypatch):
    # A shared KV-cache buffer: sequence b holds kv_lengths[b] valid keys, its query row 0 sits at
    # query_offsets[b]; slots past the valid keys hold NaN and are never read. Each sequence must match
    # the plain problem on its own valid keys; a negative length leaves its rows untouched. combine=fused
    # (cuda_plan.cc rule 12): CTAs left without keys by a short sequence still count themselves in; columns (rule 13):
    # the skipped sequence's rows are not touched by the warps of their columns either.
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", combine)
    hq, hkv, d, buffer = 8, 2, 128, 3000
    lengths = [2500, sq, 700, -1]
    gen = torch.Generator(device="cuda").manual_seed(sq)
    q = torch.randn(len(lengths), hq, sq, d, generator=gen, device="cuda").to(dtype)
    k = torch.randn(len(lengths), hkv, buffer, d, generator=gen, device="cuda").to(dtype)
    v = torch.randn(len(lengths), hkv, buffer, d, generator=gen, device="cuda").to(dtype)
    for i, n in enumerate(lengths):
        k[i, :, max(n, 0):], v[i, :, max(n, 0):] = float("nan"), float("nan")
    kv_lengths = torch.tensor(lengths, dtype=torch.int64, device="cuda")
    offsets = torch.tensor([max(n, 0) - sq for n in lengths], dtype=torch.int64, device="cuda")
    y = torch.full((len(lengths), hq, sq, d), 7.0, dtype=dtype, device="cuda")
    _, lse, plan = lib.run(q, k, v, causal=True, window=1000, want_lse=True, path=path, out=y,
                           query_offsets=offsets, kv_lengths=kv_lengths)  # fmt: skip
    torch.cuda.synchronize()
    if path == "decode":
        assert plan["min_split_keys"] == 256 and "per-batch lengths" in plan["reason"], plan["reason"]
        assert (plan["split_counters"] > 0) == (combine == "fused" and plan["kernel"] == "mma"), plan["reason"]
    for i, n in enumerate(lengths):
        if n < 0:
            assert (y[i] == 7.0).all(), "a skipped sequence's rows must stay untouched"
            continue
        case = Case(f"seq{i}", 1, hq, hkv, sq, n, d, causal=True, window=1000)
        check(case, q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], None, y[i:i + 1], lse[i:i + 1],
              context=f"sequence {i} of {lengths}: {plan['reason']}")


def decode_with_and_without(name: str, monkeypatch, switch: str, value: str) -> list[tuple[dict, dict]]:
    """Case `name` on the decode path without and with environment switch `switch` = `value`, float16 and
    bfloat16: the outputs (and LSE) must be the same bits. Returns the (plan, plan with the switch) pairs."""
    case = next(c for c in CASES if c.name == name)
    plans = []
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v, mask = make_inputs(case, dtype)
        y, lse, plan = run(case, q, k, v, mask, path="decode")
        monkeypatch.setenv(switch, value)
        y2, lse2, plan2 = run(case, q, k, v, mask, path="decode")
        monkeypatch.delenv(switch)
        assert_same_bits(case, (y, lse), (y2, lse2), (name, dtype, plan2["reason"]))
        plans.append((plan, plan2))
    return plans


def assert_same_bits(case, want, got, context):
    """`got` = (y, lse) holds the bits of `want` (the LSE where the case asks for it)."""
    torch.cuda.synchronize()
    assert torch.equal(want[0], got[0]), context
    if case.lse:
        assert torch.equal(want[1], got[1]), context


def run_at_splits(case, q, k, v, mask, monkeypatch, splits: int, path: str):
    """(y, lse, plan) of `case` forced to `splits` splits (ONNXATTN_SDPA_CUDA_SPLITS, unset again afterwards): an
    opt-in decode at the default's split count must give the default's bits."""
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", str(splits))
    try:
        return run(case, q, k, v, mask, path=path)
    finally:
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_SPLITS")


# Decode cases for the switches that must keep the default's bits: every head tile, Dv != D, partial last steps, masks
# and windows, several queries a row tile.
DECODE_SWITCH_CASES = ["decode", "decode_gqa_odd", "decode_sq5", "decode_sq16", "window_decode", "mask_decode",
                       "mqa_long", "d32", "d40", "d256_decode", "dv64_d128", "dv256_d64", "dv16_d32"]


@pytest.mark.parametrize("name", DECODE_SWITCH_CASES)
def test_direct_decode_loads_give_the_same_bits(name, monkeypatch):
    # Direct K/V loads (cuda_plan.cc rule 9; the default since the H200 run at 82087dc): the decode kernel's K/V
    # copies addressed directly (contiguous K/V) instead of through the slot lookup (ONNXATTN_SDPA_CUDA_DECODE_LOADS=
    # lookup): the same copies into the same stages, so the same bits; every head tile, Dv != D, partial last steps,
    # masks and windows.
    for direct, lookup in decode_with_and_without(name, monkeypatch, "ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup"):
        assert ("direct K/V loads" in direct["reason"]) == (direct["kernel"] == "mma"), direct["reason"]
        assert ("by slot lookup" in lookup["reason"]) == (lookup["kernel"] == "mma"), lookup["reason"]


@pytest.mark.parametrize("name", ["decode", "decode_gqa_odd", "decode_sq16", "window_decode", "mask_decode",
                                  "mqa_long", "dv64_d128", "decode_sq5", "d256_decode"])  # fmt: skip
def test_lean_decode_gives_the_same_bits_at_the_same_splits(name, monkeypatch):
    # ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 with direct loads (cuda_plan.cc rule 10; opt-in: no gain on the H200 at
    # 82087dc): head tiles of 128 keep two stages a warp instead of three, so three CTAs fit an SM and the split rule
    # counts three slots an SM. At the same split count every warp takes the same steps in the same order: the same
    # bits. With its own (larger) split count it meets the oracle's tolerance. D = 64 and 256 keep their stages.
    case = next(c for c in CASES if c.name == name)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v, mask = make_inputs(case, dtype)
        y, lse, plan = run(case, q, k, v, mask, path="decode")
        monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")
        y2, lse2, same_splits = run_at_splits(case, q, k, v, mask, monkeypatch, plan["splits"], "decode")
        y3, lse3, lean = run(case, q, k, v, mask, path="decode")
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES")
        assert same_splits["stages"] == (2 if plan["head_dim_tile"] == 128 else plan["stages"]), same_splits["reason"]
        assert_same_bits(case, (y, lse), (y2, lse2), (name, dtype, same_splits["reason"]))
        check(case, q, k, v, mask, y3, lse3 if case.lse else None, context=f"{name} {dtype} {lean['reason']}")


SM86_SMEM = str(lib.SM86["max_smem_per_block"])  # sm_86 / sm_89 devices (A10, L4, RTX 30 and 40)


@pytest.mark.parametrize("loads", ["lookup", "direct"])
@pytest.mark.parametrize("name", ["decode", "decode_gqa_odd", "decode_sq16", "window_decode", "mask_decode",
                                  "dv64_d128", "d80", "d256", "d256_decode", "dv128_d192"])  # fmt: skip
def test_plans_of_a_device_with_99_kib_a_block(name, loads, monkeypatch):
    # cuda_plan.cc rule 11, run here under ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK (the plan's view of the device): a decode
    # of head tiles of 128 takes two stages a warp (either loads); at the default's split count, the default's bits.
    # Launches of D or Dv above 128 fall back to the simt kernel; the oracle checks every one.
    case = next(c for c in CASES if c.name == name)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", loads)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v, mask = make_inputs(case, dtype)
        for path in ("auto", "decode"):
            y, lse, plan = run(case, q, k, v, mask, path=path)
            monkeypatch.setenv("ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK", SM86_SMEM)
            y2, lse2, small = run(case, q, k, v, mask, path=path)
            if small["schedule"] == "decode" and small["kernel"] == "mma":
                y3, lse3, same_splits = run_at_splits(case, q, k, v, mask, monkeypatch, plan["splits"], path)
                assert same_splits["stages"] == 2 and same_splits["head_dim_tile"] == 128, same_splits["reason"]
                assert_same_bits(case, (y, lse), (y3, lse3), (name, dtype, same_splits["reason"]))
            monkeypatch.delenv("ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK")
            torch.cuda.synchronize()
            assert small["smem_bytes"] <= int(SM86_SMEM), small["reason"]
            if max(case.d, case.v_dim) > 128:
                assert small["kernel"] == "simt" and "-> simt (the mma kernel needs" in small["reason"], small["reason"]
            check(case, q, k, v, mask, y2, lse2 if case.lse else None, context=f"{name} {dtype} {small['reason']}")


def test_a_bad_shared_memory_cap_is_an_error(monkeypatch):
    case = next(c for c in CASES if c.name == "decode")
    q, k, v, mask = make_inputs(case, torch.float16)
    monkeypatch.setenv("ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK", "99k")
    expected = r"ONNXATTN_CUDA_MAX_SMEM_PER_BLOCK must be an integer in \[1, 2147483647\], got '99k'"
    with pytest.raises(lib.SdpaCudaError, match=expected):
        run(case, q, k, v, mask)


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() != (9, 0), reason="programmatic dependent launch: sm_90")
@pytest.mark.parametrize("name", ["decode", "decode_gqa_odd", "decode_sq5", "decode_sq16", "window_decode",
                                  "mask_decode", "mqa_long"])  # fmt: skip
def test_programmatic_dependent_launches_give_the_same_bits(name, monkeypatch):
    # ONNXATTN_CUDA_PDL=1: the decode kernel and the split combine start while their predecessors drain and
    # wait in griddepcontrol.wait before reading: the same kernels, so the same bits, with several splits.
    for plan, pdl in decode_with_and_without(name, monkeypatch, "ONNXATTN_CUDA_PDL", "1"):
        assert pdl["pdl"] == 1 and plan["pdl"] == 0, pdl["reason"]


@pytest.mark.parametrize("name", DECODE_SWITCH_CASES + ["large_logits", "softcap_saturated", "bool_mask_empty_rows"])
def test_lazy_rescale_gives_the_same_bits(name, monkeypatch):
    # ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy (cuda_plan.cc rule 14; opt-in): the fused merge's kernels without the
    # merge, whose main loop skips the rescale of O where no row of a warp's half raised its max (alpha exactly 1;
    # x * 1 == x) and whose merge rows are padded: the same bits, also where maxima keep moving (large logits, a
    # saturated softcap) and for rows without keys (alpha NaN or 0 rescales as before).
    for plan, lazy in decode_with_and_without(name, monkeypatch, "ONNXATTN_SDPA_CUDA_DECODE_RESCALE", "lazy"):
        assert ("rescaled only where" in lazy["reason"]) == (lazy["kernel"] == "mma"), lazy["reason"]
        assert lazy["grid"] == plan["grid"] and lazy["splits"] == plan["splits"], lazy["reason"]


@pytest.mark.parametrize("kernel", ["auto", "simt"])
@pytest.mark.parametrize("splits", ["auto", "3", "max"])
@pytest.mark.parametrize("name", DECODE_SWITCH_CASES)
def test_columns_combine_gives_the_row_combines_bits(name, splits, kernel, monkeypatch):
    # ONNXATTN_SDPA_CUDA_COMBINE=columns (cuda_plan.cc rule 13; opt-in): a warp per 32 columns of a row, each lane's
    # partials of up to 32 splits in flight at once; the same weights and sums in the same order as the warp a row,
    # so the same output and LSE bits, over every head size and Dv (lanes past Dv), with the plan's splits, 3 and one
    # split per key tile (max: more than one batch of 32), in scratch filled with NaN (empty splits' partials, never
    # written, must be selected away), on the tensor-core and the SIMT decode (float32 too).
    case = next(c for c in CASES if c.name == name)
    for dtype in (torch.float16, torch.bfloat16) if kernel == "auto" else (torch.float32, torch.float16):
        q, k, v, mask = make_inputs(case, dtype)
        if splits != "auto":  # 256: clamped to one split per key tile
            monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", "256" if splits == "max" else splits)
        y, lse, plan = run(case, q, k, v, mask, path="decode", kernel=kernel, scratch_fill=0xFF)
        monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "columns")
        out = torch.full_like(y, float("nan"))
        y2, lse2, columns = run(case, q, k, v, mask, path="decode", kernel=kernel, out=out, scratch_fill=0xFF)
        assert_same_bits(case, (y, lse), (y2, lse2), (name, dtype, columns["reason"]))
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_COMBINE")
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_SPLITS", raising=False)
        assert ("by columns" in columns["reason"]) == (columns["splits"] > 1), columns["reason"]
        assert columns["splits"] == plan["splits"] and columns["grid"] == plan["grid"], columns["reason"]


@pytest.mark.parametrize("splits", ["auto", "3", "max"])
@pytest.mark.parametrize("name", DECODE_SWITCH_CASES)
def test_fused_merge_gives_the_combine_kernels_bits(name, splits, monkeypatch):
    # ONNXATTN_SDPA_CUDA_COMBINE=fused (cuda_plan.cc rule 12; opt-in): the last CTA of each row tile's splits merges
    # them with the combine kernel's code (sdpa/cuda_combine.cuh), so the output and LSE bits are the combine
    # kernel's; with the plan's splits, 3, and one split per key tile (max), whatever the scratch held before.
    case = next(c for c in CASES if c.name == name)
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v, mask = make_inputs(case, dtype)
        if splits != "auto":  # 256: clamped to one split per key tile
            monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", "256" if splits == "max" else splits)
        y, lse, plan = run(case, q, k, v, mask, path="decode")
        monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
        for fill in (0x00, 0xFF, 0x01):  # counters of 0, 2^32 - 1 and 16843009 before the memset
            out = torch.full_like(y, float("nan"))
            y2, lse2, fused = run(case, q, k, v, mask, path="decode", out=out, scratch_fill=fill)
            assert_same_bits(case, (y, lse), (y2, lse2), (name, dtype, fill, fused["reason"]))
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_COMBINE")
        monkeypatch.delenv("ONNXATTN_SDPA_CUDA_SPLITS", raising=False)
        mma = fused["kernel"] == "mma" and fused["splits"] > 1
        assert (fused["split_counters"] > 0) == mma and (fused["combine_grid"] == 0) == mma, fused["reason"]
