"""Kernel-level checks of the CUDA PagedAttention through the library's C test entry (no onnxruntime): the
case table of paged_cases.py (decode batches, prefill chunks mixed with decodes, block sizes 1/16/64,
shuffled blocks with partially filled last blocks, NaN in every unowned slot and garbage past each table
row, windows, RoPE variants, QK-norm, head ratios, Dv != D, D = 256 and 12, prefix-shared blocks, pools in
scratch) in every dtype, on both launches of the attention core and on its simple kernel, against the
contiguous float64 oracle; plus paged == GroupQueryAttention's CUDA kernel on a contiguous cache, block
placement changes nothing (bit for bit), the in-place update, bad index inputs (NaN rows, nothing written
for the failing sequences, every other sequence exact), chunked == token-by-token, and a decode step
captured in a CUDA graph and replayed with new lengths and tables."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import paged_cases as pc  # noqa: E402
import paged_cuda_lib as lib  # noqa: E402
import paged_torch as pt  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _setup():
    if not lib.sdpa.has_cuda():
        pytest.skip("the library was built without CUDA")


# (dtype, path, kernel): every dtype on the automatic plan; float16 also with every sequence forced onto
# each launch of the attention core, and onto its simple kernel.
VARIANTS = [("float16", "auto", "auto"), ("bfloat16", "auto", "auto"), ("float32", "auto", "auto"),
            ("float16", "prefill", "auto"), ("float16", "decode", "auto"), ("float16", "auto", "simt")]  # fmt: skip


@pytest.mark.parametrize("dtype,path,kernel", VARIANTS, ids=["-".join(v) for v in VARIANTS])
@pytest.mark.parametrize("case", pc.CASES, ids=str)
def test_case_table(case, dtype, path, kernel):
    y, kp, vp, plan, _ = pt.run(case, dtype, path=path, kernel=kernel)
    launches = {n for n in ("decode", "prefill") if plan[n] is not None}
    if path != "auto":
        assert launches == {path}, plan["reason"]
    tensor_cores = dtype != "float32" and kernel == "auto" and case.head_dim % 8 == 0 and case.dv % 8 == 0
    for name in launches:
        assert plan[name]["kernel"] == ("mma" if tensor_cores else "simt"), plan["reason"]
    assert plan["pools_in_scratch"] == (not case.with_present)
    pc.check(case, dtype, y, kp, vp, context=f"{case} {dtype} {plan['reason']}")


def decode_plan_with_the_same_bits(case, dtype, monkeypatch, switch: str, value: str):
    """`case` without, then with, the library switch `switch`=`value`: the same output and pool bits (NaN where the
    first gives NaN). Returns the second run's decode plan (None: no decode launch)."""
    y, kp, vp, _, _ = pt.run(case, dtype)
    monkeypatch.setenv(switch, value)
    y2, kp2, vp2, plan2, _ = pt.run(case, dtype)
    decode = plan2["decode"]
    for got, want in ((y2, y), (kp2, kp), (vp2, vp)):
        np.testing.assert_array_equal(got, want, err_msg=f"{case} {dtype} {decode and decode['reason']}")
    return decode


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", pc.CASES, ids=str)
def test_direct_paged_loads_give_the_lookup_bits(case, dtype, monkeypatch):
    """ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct (opt-in for paged K/V, cuda_plan.cc rule 9): where a 16-key step lies
    in one block (block_size a multiple of 16, no window or chunk), one lookup a step and direct addressing: the same
    copies as the slot lookup, so the same output and pool bits (NaN where the lookup gives NaN)."""
    decode = decode_plan_with_the_same_bits(case, dtype, monkeypatch, "ONNXATTN_SDPA_CUDA_DECODE_LOADS", "direct")
    if decode is not None and decode["kernel"] == "mma":
        eligible = case.block_size % 16 == 0 and not case.window and not case.attention_chunk
        assert ("direct K/V loads" in decode["reason"]) == eligible, decode["reason"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", pc.CASES, ids=str)
def test_fused_merge_gives_the_combine_kernels_bits(case, dtype, monkeypatch):
    """ONNXATTN_SDPA_CUDA_COMBINE=fused (opt-in, cuda_plan.cc rule 12) on ragged batches: the decode launch's last CTA
    of each (row tile item, KV head) merges its splits, the same output and pool bits as the combine kernel's."""
    decode = decode_plan_with_the_same_bits(case, dtype, monkeypatch, "ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    if decode is not None:
        fused = decode["kernel"] == "mma" and decode["splits"] > 1
        assert (decode["split_counters"] > 0) == fused and (decode["combine_grid"] == 0) == fused, decode["reason"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", pc.CASES, ids=str)
def test_lazy_rescale_gives_the_same_bits(case, dtype, monkeypatch):
    """ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy (opt-in, cuda_plan.cc rule 14) on ragged batches: the lean-step decode
    kernels without the fused merge, the same output and pool bits."""
    decode = decode_plan_with_the_same_bits(case, dtype, monkeypatch, "ONNXATTN_SDPA_CUDA_DECODE_RESCALE", "lazy")
    if decode is not None:  # the plan says which: lean steps, or why not (SIMT, two stages)
        assert ("rescaled only where" in decode["reason"]) != ("rescaled every step" in decode["reason"]), decode


@pytest.mark.parametrize("dtype", pc.DTYPES)
@pytest.mark.parametrize("case", pc.CASES, ids=str)
def test_columns_combine_gives_the_row_combines_bits(case, dtype, monkeypatch):
    """ONNXATTN_SDPA_CUDA_COMBINE=columns (opt-in, cuda_plan.cc rule 13) on ragged batches: a warp per 32 columns of
    each (row tile item, KV head, tile row) partial row, rows of items the schedule left empty never read; the same
    output and pool bits as the warp a row."""
    decode = decode_plan_with_the_same_bits(case, dtype, monkeypatch, "ONNXATTN_SDPA_CUDA_COMBINE", "columns")
    if decode is not None:
        assert ("by columns" in decode["reason"]) == (decode["splits"] > 1), decode["reason"]


@pytest.mark.parametrize("dtype", pc.DTYPES)
@pytest.mark.parametrize("case_id", ["decode-b4-bs16", "mixed-chunks-decodes", "decode-bs1", "everything"])
def test_in_place_update_of_the_pools(case_id, dtype):
    # The output pools ARE the input pools: only the new tokens' slots are written, everything else (past
    # keys, NaN in unowned slots, other sequences' blocks) stays bit for bit.
    case = pc.CASES_BY_ID[case_id]
    y, kp, vp, plan, t = pt.run(case, dtype, in_place=True)
    assert t["key_cache_out"].data_ptr() == t["key_cache"].data_ptr()
    pc.check(case, dtype, y, kp, vp, context=f"in place {case} {dtype}")


def permuted(feeds: dict, seed: int) -> dict:
    """The same problem with its blocks moved to other places of the pool (garbage table entries kept)."""
    f = dict(feeds)
    n = f["key_cache"].shape[0]
    perm = np.random.default_rng(seed).permutation(n)  # block i moves to perm[i]
    for name in ("key_cache", "value_cache"):
        moved = np.empty_like(f[name])
        moved[perm] = f[name]
        f[name] = moved
    table = f["block_table"].copy()
    valid = (table >= 0) & (table < n)
    table[valid] = perm[table[valid]]
    f["block_table"] = table
    return f, perm


@pytest.mark.parametrize("case_id", ["decode-b4-bs16", "mixed-chunks-decodes", "chunk-bs1", "decode-long-splits"])
def test_block_placement_changes_nothing_bit_for_bit(case_id):
    case = pc.CASES_BY_ID[case_id]
    y, kp, _, plan, _ = pt.run(case, "float16")
    f, perm = permuted(pc.feeds(case.id, "float16"), seed=11)
    y2, kp2, _, _, _ = pt.run(case, "float16", feeds=f)
    np.testing.assert_array_equal(y2, y, err_msg=plan["reason"])
    np.testing.assert_array_equal(kp2[perm], kp)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["decode-b4-bs16", "decode-bs64", "rope-qk-norm-positions"])
def test_equals_group_query_attention_on_a_contiguous_cache(case_id, dtype):
    # The same sequences in a GroupQueryAttention shared buffer [B, Hkv, M, D] (the contiguous layout) run by
    # its CUDA kernel, one step of S new tokens per sequence: paged and contiguous agree within the rule.
    import gqa_cuda_lib

    case = pc.CASES_BY_ID[case_id]
    if len(set(case.new)) != 1:
        case = dataclasses.replace(case, id=f"{case.id}-uniform", new=(1,) * len(case.new))
        pc.CASES_BY_ID.setdefault(case.id, case)
    p = pc.problem(case.id, dtype)
    s, b, m = case.new[0], len(case.new), max(case.past) + case.new[0] + 5
    f = p.feeds
    past_k = np.full((b, case.kv_heads, m, case.head_dim), np.nan)
    past_v = np.full((b, case.kv_heads, m, case.dv), np.nan)
    for i, (pk, pv) in enumerate(p.pasts):
        past_k[i, :, : pk.shape[2]], past_v[i, :, : pv.shape[2]] = pk[0], pv[0]
    dt = pt.TORCH[dtype]
    cuda = lambda x, t=dt: torch.from_numpy(np.ascontiguousarray(x)).to(t).cuda()  # noqa: E731
    t = dict(query=cuda(f["query"].reshape(b, s, -1)), key=cuda(f["key"].reshape(b, s, -1)),
             value=cuda(f["value"].reshape(b, s, -1)), past_key=cuda(past_k), past_value=cuda(past_v),
             past_lengths=cuda(np.array(case.past), torch.int64))  # fmt: skip
    for name, field in (("position_ids", "position_ids"), ("q_norm_weight", "q_norm_weight"),
                        ("k_norm_weight", "k_norm_weight"), ("rope_inv_freq", "inv_freq")):  # fmt: skip
        if name in f:
            t[field] = cuda(f[name].reshape(b, s), torch.int64) if name == "position_ids" else (
                cuda(f[name], torch.float32) if name == "rope_inv_freq" else cuda(f[name]))
    t["output"] = torch.empty(b, s, case.q_heads * case.dv, dtype=dt, device="cuda")
    t["present_key"], t["present_value"] = t["past_key"], t["past_value"]
    spec = gqa_cuda_lib.Spec(batch=b, seq=s, q_heads=case.q_heads, kv_heads=case.kv_heads, head_dim=case.head_dim,
                             mode="shared", past=m, position_ids="position_ids" in f, q_norm=case.q_norm,
                             k_norm=case.k_norm, inv_freq="rope_inv_freq" in f, causal=case.causal,
                             window=case.window, attention_chunk=case.attention_chunk, rope=case.rope,
                             rotary_dim=case.rotary_dim,
                             rope_interleaved=case.rope_interleaved, dtype=pc.spec(case, dtype).dtype)  # fmt: skip
    gqa_cuda_lib.run(spec, t)
    y, _, _, plan, _ = pt.run(case, dtype)
    y_gqa = t["output"].double().cpu().numpy().reshape(y.shape)
    _, y_tol, _ = pc.expected(case.id, dtype)
    err = np.abs(y - y_gqa).max()
    assert err <= y_tol, f"max |paged - GroupQueryAttention| = {err:.3g} > {y_tol:.3g} ({plan['reason']})"


# ---- bad index inputs: the CUDA kernel cannot raise without a host synchronisation (paged/cuda_plan.h)
BASE, SEQUENCE_FAULTS, CALL_FAULTS, faulty = pc.FAULT_BASE, pc.SEQUENCE_FAULTS, pc.CALL_FAULTS, pc.faulty


@pytest.mark.parametrize("loads", ["auto", "direct"])
@pytest.mark.parametrize("name", list(SEQUENCE_FAULTS))
@pytest.mark.parametrize("path", ["auto", "prefill", "decode"])
def test_a_bad_sequence_gets_nan_rows_and_writes_nothing(name, path, loads, monkeypatch):
    # loads=direct: the decode's one block lookup a step (ONNXATTN_SDPA_CUDA_DECODE_LOADS) meets the same faults
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", loads)
    bad, fault = SEQUENCE_FAULTS[name]
    case = pc.CASES_BY_ID[BASE]
    y, kp, vp, plan, _ = pt.run(case, "float16", feeds=faulty(fault), path=path)
    cu = pc.feeds(BASE, "float16")["cu_seqlens_q"]
    rows = np.zeros(case.tokens, dtype=bool)
    rows[cu[bad]: cu[bad + 1]] = True
    assert np.isnan(y[rows]).all(), f"{name}: the failing sequence's rows must be NaN"
    (y_ref, k_ref, v_ref), y_tol, pool_tol = pc.expected(BASE, "float16")
    err = np.abs(y[~rows] - y_ref[~rows]).max()
    assert err <= y_tol, f"{name}: the other sequences: {err:.3g} > {y_tol:.3g} ({plan['reason']})"
    # its new slots keep the input pools' values; every other slot as for a good call
    skipped = pc.new_slot_mask(BASE, "float16") & ~pc.new_slot_mask(BASE, "float16", skip={bad})
    f = pc.feeds(BASE, "float16")
    for got, ref, inputs in ((kp, k_ref, f["key_cache"]), (vp, v_ref, f["value_cache"])):
        want = ref.copy()
        want[skipped] = np.asarray(inputs, np.float64)[skipped]
        new = pc.new_slot_mask(BASE, "float16", skip={bad})
        np.testing.assert_array_equal(got[~new], want[~new], err_msg=name)
        np.testing.assert_allclose(got[new], want[new], atol=pool_tol, rtol=pc.EPS["float16"], err_msg=name)


@pytest.mark.parametrize("name", list(CALL_FAULTS))
def test_cu_seqlens_that_do_not_partition_the_rows_fail_every_sequence(name):
    case = pc.CASES_BY_ID[BASE]
    y, kp, vp, _, _ = pt.run(case, "float16", feeds=faulty(CALL_FAULTS[name]), in_place=True)
    assert np.isnan(y).all(), f"{name}: every row must be NaN"
    f = pc.feeds(BASE, "float16")
    np.testing.assert_array_equal(kp, np.asarray(f["key_cache"], np.float64), err_msg=f"{name}: key pool changed")
    np.testing.assert_array_equal(vp, np.asarray(f["value_cache"], np.float64), err_msg=f"{name}: value pool changed")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_token_by_token_decode_equals_one_chunk(dtype):
    # One 48-token chunk after a 20-token past vs a 32-token chunk then 16 single-token steps, in place:
    # the pools bit for bit, the outputs within a few ulps (different split of the same keys).
    case = dataclasses.replace(pc.CASES_BY_ID["prefill-long-chunk"], id="tbt", past=(20,), new=(48,))
    pc.CASES_BY_ID.setdefault(case.id, case)
    f = pc.feeds(case.id, dtype)
    y_all, k_all, v_all, _, _ = pt.run(case, dtype, in_place=True)
    t = pt.to_device(f, dtype)
    rows = []
    for start, count in [(0, 32)] + [(i, 1) for i in range(32, 48)]:
        step = dataclasses.replace(case, id=f"tbt-{start}", new=(count,))
        sub = dict(t)
        for name in ("query", "key", "value"):
            sub[name] = t[name][start: start + count].contiguous()
        sub["cu_seqlens_q"] = torch.tensor([0, count], dtype=torch.int32, device="cuda")
        sub["seq_lens"] = torch.tensor([20 + start + count], dtype=torch.int32, device="cuda")
        out = pt.outputs(sub, step, dtype, in_place=True)
        pt.run_tensors(step, dtype, sub, out, spec=dataclasses.replace(pc.spec(case, dtype), tokens=count))
        rows.append(out["output"])
    torch.cuda.synchronize()
    np.testing.assert_array_equal(pt.numpy(t["key_cache"]), k_all)
    np.testing.assert_array_equal(pt.numpy(t["value_cache"]), v_all)
    y_steps = torch.cat(rows).double().cpu().numpy()
    eps = pc.EPS[dtype]
    assert (np.abs(y_steps - y_all) <= 4 * eps * (1 + np.abs(y_all))).all(), np.abs(y_steps - y_all).max()


@pytest.mark.parametrize("combine", ["kernel", "fused", "columns"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_decode_step_captured_in_a_cuda_graph_replays_with_new_lengths_and_tables(dtype, combine, monkeypatch):
    # No host synchronisation and no launch shape that depends on index values: a captured step stays valid
    # while seq_lens, cu_seqlens_q, the block table (device memory) and the inputs change. Each replay must
    # equal a direct run on a copy of the same state, bit for bit. combine=fused: the counters' memset is part
    # of the graph, so each replay merges from zero.
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", combine)
    case = pc.CASES_BY_ID["decode-b4-bs16"]
    t = pt.to_device(pc.feeds(case.id, dtype), dtype)
    out = pt.outputs(t, case, dtype, in_place=True)
    spec = pc.spec(case, dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        pt.run_tensors(case, dtype, t, out, spec=spec)  # warm-up: shared-memory attributes, device facts
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pt.run_tensors(case, dtype, t, out, spec=spec)
    rng = np.random.default_rng(9)
    n = t["key_cache"].shape[0]
    table = t["block_table"]
    free = sorted(set(range(n)) - set(table[(table >= 0) & (table < n)].tolist()))
    assert len(free) >= 2
    for step in range(3):
        t["seq_lens"] += 1  # each sequence gains a token (every one stays inside its blocks)
        # sequence 3's only block moves to a free one (copy on write, as a cache manager does)
        old, moved = int(table[3, 0]), free[step % 2]
        for pool in ("key_cache", "value_cache"):
            t[pool][moved] = t[pool][old]
            t[pool][old] = float("nan")
        table[3, 0] = moved
        free[step % 2] = old
        for name in ("query", "key", "value"):
            t[name].copy_(torch.from_numpy(rng.standard_normal(tuple(t[name].shape))).to(t[name].dtype))
        copy = {n: x.clone() for n, x in t.items()}
        ref = pt.outputs(copy, case, dtype, in_place=True)
        pt.run_tensors(case, dtype, copy, ref, spec=spec)
        graph.replay()
        torch.cuda.synchronize()
        for name in ("output", "key_cache_out", "value_cache_out"):
            assert torch.equal(torch.nan_to_num(out[name], nan=7.0), torch.nan_to_num(ref[name], nan=7.0)), (step, name)
        assert not torch.isnan(out["output"]).any()


def test_unsupported_head_size_is_a_clear_error():
    with pytest.raises(lib.PagedCudaError, match="PagedAttention: the CUDA kernels support head sizes up to 256"):
        lib.plan(lib.Spec(q_heads=1, kv_heads=1, head_dim=320))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", ["mixed-chunks-decodes", "everything"])
def test_agrees_with_the_torch_reference_on_the_gpu(case_id, dtype):
    # The package's torch functional (onnxattn.nn.functional.paged_attention) on the same CUDA tensors: a
    # second reference besides the numpy oracle.
    try:
        from onnxattn.nn.functional import paged_attention
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"onnxattn.nn not importable here: {type(e).__name__}: {e}")
    case = pc.CASES_BY_ID[case_id]
    y, kp, _, plan, t = pt.run(case, dtype)
    args = [t.get(name) for name in pc.INPUTS]
    attrs = {**case.attrs, "causal": bool(case.causal), "rope": bool(case.rope),
             "rope_interleaved": bool(case.rope_interleaved), "scale": case.scale or None}  # fmt: skip
    with torch.no_grad():
        y_ref, k_ref, _ = paged_attention(*args, **attrs)
    _, y_tol, _ = pc.expected(case.id, dtype)
    err = np.abs(y - y_ref.double().cpu().numpy()).max()
    assert err <= y_tol, f"max |ours - torch reference| = {err:.3g} > {y_tol:.3g} ({plan['reason']})"
