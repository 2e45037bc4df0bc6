"""Kernel-level checks of the CUDA GroupQueryAttention through the library's C test entry (no
onnxruntime): the case table of gqa_cases.py (prefill, decode, chunked prefill, shared buffers with
per-sequence lengths and NaN in stale slots, windows, RoPE variants, QK-norm, head ratios down to one KV
head, bidirectional, masks, softcap, caches in scratch) in every dtype, on both schedules of the
attention core and on its simple kernel, against the float64 numpy oracle of the GQA suite; plus the
in-place update, out-of-range lengths, token-by-token decode, a long shared cache with per-sequence
splits, and a decode step captured in a CUDA graph and replayed with new lengths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import gqa_cases as gc  # noqa: E402
import gqa_cuda_lib as lib  # noqa: E402
import gqa_torch as gt  # noqa: E402
from oracle_gqa import gqa_oracle  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _setup():
    if not lib.sdpa.has_cuda():
        pytest.skip("the library was built without CUDA")


# (dtype, path, kernel): every dtype on the automatic plan; float16 also forced onto each schedule of the
# attention core and onto its simple kernel.
# "mma.sync": the prefill on mma.sync where the Hopper default would take wgmma (ONNXATTN_SDPA_CUDA_PREFILL=mma).
VARIANTS = [("float16", "auto", "auto"), ("bfloat16", "auto", "auto"), ("float32", "auto", "auto"),
            ("float16", "prefill", "auto"), ("float16", "decode", "auto"), ("float16", "auto", "simt"),
            ("float16", "prefill", "mma.sync")]  # fmt: skip


@pytest.mark.parametrize("dtype,path,kernel", VARIANTS, ids=["-".join(v) for v in VARIANTS])
@pytest.mark.parametrize("case", gc.CASES, ids=str)
def test_case_table(case, dtype, path, kernel, monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma" if kernel == "mma.sync" else "auto")
    y, pk, pv, plan, _ = gt.run(case, dtype, path=path, kernel="auto" if kernel == "mma.sync" else kernel)
    a = plan["attention"]
    if path != "auto":
        assert a["schedule"] == path
    tensor_cores = dtype != "float32" and kernel != "simt" and case.head_dim % 8 == 0 and case.dv % 8 == 0
    if a["kernel"] == "wgmma":  # the Hopper prefill, where eligible (sdpa/cuda_plan.cc rule 3)
        assert tensor_cores and kernel == "auto" and a["schedule"] == "prefill", a["reason"]
    else:
        assert a["kernel"] == ("mma" if tensor_cores else "simt"), a["reason"]
    assert plan["per_batch"] == (case.mode == "shared")
    gc.check(case, dtype, y, pk, pv, context=f"{case} {dtype} {a['reason']}")


@pytest.mark.parametrize("dtype", gc.DTYPES)
@pytest.mark.parametrize("case_id", ["shared-decode-b4", "shared-chunk-b2", "window-shared-b2", "everything-shared"])
def test_in_place_update_of_the_shared_buffer(case_id, dtype):
    # present IS past: only the new tokens are written; the valid prefix and the stale (NaN) slots stay.
    case = gc.CASES_BY_ID[case_id]
    y, pk, pv, plan, t = gt.run(case, dtype, in_place=True)
    assert t["present_key"].data_ptr() == t["past_key"].data_ptr()
    gc.check(case, dtype, y, pk, pv, context=f"in place {case} {dtype}")


@pytest.mark.parametrize("dtype, rotation", [("float16", "rows"), ("float32", "rows"), ("float16", "chunks"),
                                             ("float16", "joint")])  # fmt: skip
def test_out_of_range_past_lengths_leave_the_cache_and_give_nan_rows(dtype, rotation, monkeypatch):
    # Sequence 1 would write past the buffer, sequence 2 has a negative length: neither touches the cache,
    # their output rows are NaN (the CPU kernel raises instead; here that would need a host sync), and
    # sequence 0 is unaffected. rotation=chunks: the chunked new-token kernel (ONNXATTN_GQA_CUDA_ROTATION) does the
    # same; joint: the kernel that also prepares the queries (they are prepared ahead here) likewise.
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", rotation)
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "fused" if rotation == "rows" else "rotated")
    good = gc.Case("oor-good", batch=1, seq=2, buffer=50, past_lengths=(10,))
    gc.CASES_BY_ID.setdefault(good.id, good)
    t0 = gt.to_device(good, dtype)
    case = gc.Case("oor", batch=3, seq=2, buffer=50, past_lengths=(10, 49, -1))
    t = {n: (torch.cat([x] * 3) if n not in ("past_lengths",) else torch.tensor([10, 49, -1], device="cuda"))
         for n, x in t0.items()}  # fmt: skip
    before_k, before_v = t["past_key"].clone(), t["past_value"].clone()
    out = gt.outputs(case, dtype)
    out["output"].zero_()  # (NaN-filled, the NaN check below could not fail)
    out["present_key"], out["present_value"] = t["past_key"], t["past_value"]
    spec = dataclasses.replace(gc.spec(good, dtype), batch=3)
    plan = lib.run(spec, {gt.FIELD.get(n, n): v for n, v in {**t, **out}.items()})
    torch.cuda.synchronize()
    assert (plan["append_key_chunks"] > 0) == (rotation != "rows"), plan["attention"]["reason"]
    assert plan["joint_new_tokens"] == (rotation == "joint" and plan["rotate_chunks"] > 0), plan["attention"]["reason"]
    y = out["output"].double().cpu().numpy()
    assert np.isnan(y[1:]).all(), "rows of invalid sequences must be NaN"
    for name, before in (("present_key", before_k), ("present_value", before_v)):
        assert torch.equal(torch.nan_to_num(out[name][1:].float(), nan=7.0), torch.nan_to_num(before[1:].float(), nan=7.0)), name
    gc.check(good, dtype, y[:1], out["present_key"][:1].double().cpu().numpy(),
             out["present_value"][:1].double().cpu().numpy(), context="valid sequence beside invalid ones")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_token_by_token_decode_equals_one_prefill(dtype):
    # One prefill of 96 tokens into a shared buffer vs 64 tokens then 32 single-token steps in place.
    rng = np.random.default_rng(3)
    hq, hkv, d, m, n = 8, 2, 128, 160, 96
    dt = gt.TORCH[dtype]
    q = torch.from_numpy(rng.standard_normal((1, n, hq * d))).to(dt).cuda()
    k = torch.from_numpy(rng.standard_normal((1, n, hkv * d))).to(dt).cuda()
    v = torch.from_numpy(rng.standard_normal((1, n, hkv * d))).to(dt).cuda()

    def step(buffer_k, buffer_v, start, count):
        spec = lib.Spec(batch=1, seq=count, q_heads=hq, kv_heads=hkv, head_dim=d, mode="shared", past=m, rope=1,
                        dtype=lib.FLOAT16 if dtype == "float16" else lib.BFLOAT16)  # fmt: skip
        y = torch.empty(1, count, hq * d, dtype=dt, device="cuda")
        lib.run(spec, dict(query=q[:, start:start + count].contiguous(), key=k[:, start:start + count].contiguous(),
                           value=v[:, start:start + count].contiguous(), past_key=buffer_k, past_value=buffer_v,
                           past_lengths=torch.tensor([start], device="cuda"), output=y, present_key=buffer_k,
                           present_value=buffer_v))  # fmt: skip
        return y

    zeros = lambda: torch.zeros(1, hkv, m, d, dtype=dt, device="cuda")  # noqa: E731
    ka, va = zeros(), zeros()
    y_all = step(ka, va, 0, n)
    kb, vb = zeros(), zeros()
    rows = [step(kb, vb, 0, 64)] + [step(kb, vb, i, 1) for i in range(64, n)]
    torch.cuda.synchronize()
    assert torch.equal(ka, kb) and torch.equal(va, vb), "the caches must be bit-identical"
    y_steps = torch.cat(rows, dim=1).float()
    eps = torch.finfo(dt).eps
    diff = (y_steps - y_all.float()).abs()
    assert (diff <= 4 * eps * (1 + y_all.float().abs())).all(), diff.max().item()


def test_long_shared_decode_splits_each_sequence_separately():
    # Two sequences in a 40k buffer, one nearly full and one short: the plan's splits are an upper bound
    # from the buffer; each CTA splits its own sequence's keys (>= 256 per split).
    case = gc.Case("long-shared", batch=2, q_heads=4, kv_heads=1, head_dim=64, buffer=40_000,
                   past_lengths=(39_000, 700))  # fmt: skip
    gc.CASES_BY_ID.setdefault(case.id, case)
    y, pk, pv, plan, _ = gt.run(case, "float16")
    a = plan["attention"]
    assert a["schedule"] == "decode" and a["splits"] > 4 and a["min_split_keys"] == 256, a["reason"]
    gc.check(case, "float16", y, pk, pv, context=a["reason"])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_decode_step_captured_in_a_cuda_graph_replays_with_new_lengths(dtype):
    # No host synchronisation and no launch shape that depends on input values: a captured step stays
    # valid while the lengths (device memory) and the inputs change.
    hq, hkv, d, m, b = 8, 2, 128, 512, 2
    dt = gt.TORCH[dtype]
    rng = np.random.default_rng(5)
    new = lambda *s: torch.from_numpy(rng.standard_normal(s)).to(dt).cuda()  # noqa: E731
    t = dict(query=new(b, 1, hq * d), key=new(b, 1, hkv * d), value=new(b, 1, hkv * d), past_key=new(b, hkv, m, d),
             past_value=new(b, hkv, m, d), past_lengths=torch.tensor([100, 300], device="cuda"),
             output=torch.empty(b, 1, hq * d, dtype=dt, device="cuda"))  # fmt: skip
    t["present_key"], t["present_value"] = t["past_key"], t["past_value"]
    spec = lib.Spec(batch=b, seq=1, q_heads=hq, kv_heads=hkv, head_dim=d, mode="shared", past=m, rope=1,
                    q_norm=False, dtype=lib.FLOAT32 if dtype == "float32" else lib.FLOAT16)  # fmt: skip
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        lib.run(spec, t)  # warm-up: shared-memory attributes, device facts
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        plan = lib.run(spec, t)
    for lengths in ([101, 301], [7, 511], [400, 0]):
        t["past_lengths"].copy_(torch.tensor(lengths))
        for name in ("query", "key", "value"):
            t[name].copy_(new(*t[name].shape))
        before = {n: t[n].double().cpu().numpy() for n in ("query", "key", "value", "past_key", "past_value")}
        graph.replay()
        torch.cuda.synchronize()
        store = lambda x: x.astype(np.float32).astype(np.float64) if dtype == "float32" else (  # noqa: E731
            x.astype(np.float16).astype(np.float64))
        y_ref, k_ref, _ = gqa_oracle(**before, past_lengths=np.array(lengths), num_heads=hq, kv_num_heads=hkv,
                                     rope=1, store=store)  # fmt: skip
        y = t["output"].double().cpu().numpy()
        tol = 4e-3 if dtype == "float16" else 5e-5
        assert np.abs(y - y_ref).max() <= tol, (lengths, np.abs(y - y_ref).max(), plan["attention"]["reason"])
        np.testing.assert_allclose(t["past_key"].double().cpu().numpy(), k_ref, atol=tol, rtol=tol)


def test_unsupported_head_size_is_a_clear_error():
    case = gc.Case("d320", q_heads=1, kv_heads=1, head_dim=320, seq=2)
    gc.CASES_BY_ID.setdefault(case.id, case)
    with pytest.raises(lib.GqaCudaError, match="GroupQueryAttention: the CUDA kernels support head sizes up to 256"):
        gt.run(case, "float16")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["prefill-s96", "shared-decode-b4", "window-chunk", "everything-shared"])
def test_agrees_with_the_torch_reference_on_the_gpu(case_id, dtype):
    # The package's eager reference (onnxattn.nn.reference.gqa_reference: float32 math, caches in the
    # input type) on the same CUDA tensors: a second reference besides the numpy oracle.
    try:
        from onnxattn.nn.reference import gqa_reference
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxattn.nn not importable here: {type(e).__name__}: {e}")
    case = gc.CASES_BY_ID[case_id]
    y, pk, pv, plan, t = gt.run(case, dtype)
    inputs = [t.get(name) for name in gc.INPUTS]
    attrs = {**case.attrs, "causal": bool(case.causal), "rope": bool(case.rope),
             "rope_interleaved": bool(case.rope_interleaved)}  # fmt: skip
    with torch.no_grad():
        y_ref, k_ref, v_ref = gqa_reference(*inputs, **attrs)
    _, y_tol, _ = gc.expected(case.id, dtype)
    err = np.abs(y - y_ref.double().cpu().numpy()).max()
    assert err <= y_tol, f"max |ours - torch reference| = {err:.3g} > {y_tol:.3g} ({plan['attention']['reason']})"
    assert torch.equal(torch.from_numpy(pk).to(k_ref.dtype).isnan(), k_ref.cpu().isnan())


def run_before_and_after(case, dtype, monkeypatch, switch: str, value: str):
    """(y, present_key, present_value, plan) of `case` on the same inputs without, then with, the library switch
    `switch`=`value` (fresh copies each time: in-place cases write their inputs; scratch poisoned each time: the
    second run may get the first one's block back, prepared queries included)."""
    t = gt.to_device(case, dtype)
    before = gt.run(case, dtype, inputs={k: v.clone() for k, v in t.items()}, poison=True)[:4]
    monkeypatch.setenv(switch, value)
    return before, gt.run(case, dtype, inputs={k: v.clone() for k, v in t.items()}, poison=True)[:4]


# (the chunked kernels' conditions: a second, partial group of 4 KV heads, Dv != D, keys without RoPE copied whole,
# a shared buffer with position_ids and no norm, fewer than 4 query heads with an odd count of rotated chunks)
ROTATED_CASES = ["prefill-s96", "chunk-s5-p700", "shared-chunk-b2", "window-shared-b2", "left-pad-prefill-b3",
                 "positions-docs", "positions-large", "rope-partial", "rope-interleaved", "rope-partial-interleaved",
                 "rope-inv-freq-custom-scaling", "d80", "prefill-b2-s77-d64", "heads-6-over-3", "qk-norm",
                 "qnorm-only-decode", "everything-shared", "dv-ne-d", "decode-b2-g4-p1500", "bidirectional",
                 "shared-docs-12-over-6", "heads-3-rope-interleaved-40"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ROTATED_CASES)
def test_rotated_queries_give_the_fused_bits(case_id, dtype, monkeypatch):
    """ONNXATTN_GQA_CUDA_QUERY=rotated (queries prepared into scratch by their own kernel) against the fused Q
    load: the same arithmetic on the same 16-bit rows, so the same output bits."""
    case = gc.CASES_BY_ID[case_id]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")  # the fused load is mma.sync's (wgmma always rotates)
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, "ONNXATTN_GQA_CUDA_QUERY", "rotated")
    prepares = bool(case.rope or case.q_norm)
    assert plan2["rotate_queries"] == (prepares and plan["attention"]["kernel"] == "mma"), plan2["attention"]["reason"]
    np.testing.assert_array_equal(y2, y)
    for a, b in ((pk2, pk), (pv2, pv)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ROTATED_CASES)
def test_chunked_query_kernel_gives_the_row_kernels_bits(case_id, dtype, monkeypatch):
    """The query kernel by token (ONNXATTN_GQA_CUDA_ROTATION=chunks, the default; RoPE without QK-norm: a CTA per
    token, its angles once, a thread per 16-byte chunk) against the per-row kernel (ROTATION=rows): the same
    arithmetic, so the same bits; QK-norm cases take the per-row kernel either way. The same switch moves the new keys
    and values by the new-token kernel by token: the same cache bits."""
    case = gc.CASES_BY_ID[case_id]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
    switch = "ONNXATTN_GQA_CUDA_ROTATION"
    monkeypatch.setenv(switch, "rows")  # the first run's; run_before_and_after sets chunks for the second
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, switch, "chunks")
    # rows split into 16-byte chunks (cuda_plan.cc): the rotated span (pairs (i, i + R/2) across chunks, interleaved
    # pairs inside one) and the channels past rotary_dim in whole chunks
    rotary = (case.rotary_dim or case.head_dim) if case.rope else 0
    span = rotary if case.rope_interleaved else rotary // 2
    chunk_rows = span % 8 == 0 and (case.head_dim - rotary) % 8 == 0
    chunked = plan2["rotate_queries"] and not case.q_norm and chunk_rows
    assert (plan2["rotate_chunks"] > 0) == chunked and plan["rotate_chunks"] == 0, plan2["attention"]["reason"]
    # the new keys likewise by the chunked new-token kernel (without K-norm): the same cache bits, compared below
    appended = not case.k_norm and chunk_rows
    assert (plan2["append_key_chunks"] > 0) == appended and plan["append_key_chunks"] == 0, plan2["attention"]["reason"]
    np.testing.assert_array_equal(y2, y)
    for a, b in ((pk2, pk), (pv2, pv)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ROTATED_CASES)
def test_joint_kernel_gives_the_two_kernels_bits(case_id, dtype, monkeypatch):
    """ONNXATTN_GQA_CUDA_ROTATION=joint (opt-in): where the queries are prepared ahead and both kernels by token run,
    one kernel does both (a CTA per token, its angles once), against the two launches of chunks: the same calls on the
    same angles, so the same output and cache bits; elsewhere the plan keeps the two kernels."""
    case = gc.CASES_BY_ID[case_id]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
    switch = "ONNXATTN_GQA_CUDA_ROTATION"
    monkeypatch.setenv(switch, "chunks")
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, switch, "joint")
    both = plan["rotate_chunks"] > 0 and plan["append_key_chunks"] > 0
    assert plan2["joint_new_tokens"] == both and not plan["joint_new_tokens"], plan2["attention"]["reason"]
    np.testing.assert_array_equal(y2, y)
    for a, b in ((pk2, pk), (pv2, pv)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def unaligned_copy(x: torch.Tensor) -> torch.Tensor:
    """`x`'s values in a view one element past an allocation's start (for 16-bit x: 2 bytes off 16-byte alignment)."""
    view = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:].view(x.shape)
    view.copy_(x)
    return view


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["prefill-s96", "chunk-s5-p700", "decode-b2-g4-p1500", "dv-ne-d"])
def test_unaligned_new_keys_keep_the_per_row_new_token_kernel(case_id, dtype, monkeypatch):
    """The chunked new-token kernel (ONNXATTN_GQA_CUDA_ROTATION=chunks) reads key and value by 16-byte chunks: key
    and value 2 bytes off that alignment make the plan itself keep the per-row kernel (append_key_chunks 0; it
    reported chunks and the run fell back before), with the aligned run's bits."""
    case = gc.CASES_BY_ID[case_id]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "chunks")
    t = gt.to_device(case, dtype)
    y, pk, pv, plan = gt.run(case, dtype, inputs={k: v.clone() for k, v in t.items()}, poison=True)[:4]
    shifted = {k: unaligned_copy(v) if k in ("key", "value") else v.clone() for k, v in t.items()}
    assert shifted["key"].data_ptr() % 16 != 0 and shifted["value"].data_ptr() % 16 != 0
    y2, pk2, pv2, plan2 = gt.run(case, dtype, inputs=shifted, poison=True)[:4]
    assert plan["append_key_chunks"] > 0 and plan2["append_key_chunks"] == 0, (plan, plan2)
    for a, b in ((y2, y), (pk2, pk), (pv2, pv)):
        if b is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() != (9, 0), reason="the wgmma kernel needs an sm_90 GPU")
@pytest.mark.parametrize("rotation", ["rows", "chunks", "joint"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ROTATED_CASES)
def test_wgmma_prefill_with_prepared_queries(case_id, dtype, rotation, monkeypatch):
    """ONNXATTN_SDPA_CUDA_PREFILL=wgmma: the Hopper prefill kernel where the core's plan allows it, with the
    queries prepared ahead (it has no preparation in its Q load) by the per-row or the chunked kernel, or with the new
    keys by the joint kernel (ONNXATTN_GQA_CUDA_ROTATION; chunks: the H200's GQA prefill by default); the cache
    outputs are the same bits, the output within the case's tolerance of the fused mma.sync path (other tiles, the
    same 16-bit rounding)."""
    case = gc.CASES_BY_ID[case_id]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", rotation)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")  # before: the fused mma.sync path
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, "ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")
    attention = plan2["attention"]
    if attention["kernel"] == "wgmma":
        assert plan2["rotate_queries"] == bool(case.rope or case.q_norm), attention["reason"]
    else:
        assert attention["schedule"] == "decode" or "not eligible" in attention["reason"], attention["reason"]
    _, y_tol, _ = gc.expected(case.id, dtype)
    np.testing.assert_allclose(y2.astype(np.float64), y.astype(np.float64), rtol=0, atol=y_tol, equal_nan=True,
                               err_msg=attention["reason"])  # fmt: skip
    for a, b in ((pk2, pk), (pv2, pv)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() != (9, 0), reason="programmatic dependent launch: sm_90")
@pytest.mark.parametrize("case_id", ["shared-decode-b4", "window-shared-b2", "everything-shared", "chunk-s5-p700"])
def test_programmatic_dependent_launches_give_the_same_bits(case_id, monkeypatch):
    """ONNXATTN_CUDA_PDL=1 (decode and combine launched as programmatic dependents after the new-token kernel):
    the same output and cache bits."""
    case = gc.CASES_BY_ID[case_id]
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, "float16", monkeypatch, "ONNXATTN_CUDA_PDL", "1")
    assert plan2["attention"]["pdl"] == 1, plan2["attention"]["reason"]
    np.testing.assert_array_equal(y2, y)
    for a, b in ((pk2, pk), (pv2, pv)):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["shared-decode-b4", "window-shared-b2", "everything-shared", "chunk-s5-p700",
                                     "qnorm-only-decode", "sinks-decode-split"])  # fmt: skip
def test_direct_and_lean_decode_give_the_same_bits(case_id, dtype, monkeypatch):
    """The decode's opt-in paths under GroupQueryAttention (its fused Q preparation, per-sequence lengths in a
    shared buffer, windows, sinks, QK-norm): direct K/V loads (cuda_plan.cc rule 9, the default) against the slot
    lookup (ONNXATTN_SDPA_CUDA_DECODE_LOADS=lookup) and, on direct loads, ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 (rule 10:
    two stages a warp, three CTAs an SM) at the default's split count: the same steps, so the same output and cache
    bits."""
    case = gc.CASES_BY_ID[case_id]
    switch = "ONNXATTN_SDPA_CUDA_DECODE_LOADS"
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, switch, "lookup")
    monkeypatch.delenv(switch)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", str(plan["attention"]["splits"]))
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")
    t = gt.to_device(case, dtype)
    y3, pk3, pv3, plan3 = gt.run(case, dtype, inputs={k: v.clone() for k, v in t.items()}, poison=True)[:4]
    attention, lean = plan["attention"], plan3["attention"]
    assert attention["schedule"] == "decode" and "direct K/V loads" in attention["reason"], attention["reason"]
    assert "by slot lookup" in plan2["attention"]["reason"], plan2["attention"]["reason"]
    assert lean["stages"] == (2 if lean["head_dim_tile"] == 128 else attention["stages"]), lean["reason"]
    for got in ((y2, pk2, pv2), (y3, pk3, pv3)):
        for a, b in zip(got, (y, pk, pv)):
            if b is not None:
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("queries", ["fused", "joint"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["shared-decode-b4", "window-shared-b2", "everything-shared", "chunk-s5-p700",
                                     "qnorm-only-decode", "sinks-decode-split", "decode-b2-g4-p1500"])  # fmt: skip
def test_fused_merge_gives_the_same_bits(case_id, dtype, queries, monkeypatch):
    """ONNXATTN_SDPA_CUDA_COMBINE=fused (cuda_plan.cc rule 12; opt-in): the decode's last CTA of each row tile merges
    the splits with the combine kernel's code, in poisoned scratch (its counters zeroed by the launch): the same
    output and cache bits. queries=joint: the queries rotated ahead by the joint new-token kernel (GQA_CUDA_QUERY=
    rotated, ROTATION=joint), which then zeroes the counters itself (no memset): the same bits again."""
    case = gc.CASES_BY_ID[case_id]
    if queries == "joint":
        monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
        monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "joint")
    switch = "ONNXATTN_SDPA_CUDA_COMBINE"
    (y, pk, pv, plan), (y2, pk2, pv2, plan2) = run_before_and_after(case, dtype, monkeypatch, switch, "fused")
    attention, fused = plan["attention"], plan2["attention"]
    merged = fused["schedule"] == "decode" and fused["kernel"] == "mma" and fused["splits"] > 1
    assert attention["split_counters"] == 0 and (attention["combine_grid"] > 0) == merged, attention["reason"]
    assert (fused["split_counters"] > 0) == merged and fused["combine_grid"] == 0, fused["reason"]
    assert plan2["split_counters_zeroed_ahead"] == (merged and plan2["joint_new_tokens"]), fused["reason"]
    for a, b in zip((y2, pk2, pv2), (y, pk, pv)):
        if b is not None:
            np.testing.assert_array_equal(a, b)

