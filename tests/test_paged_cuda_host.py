"""Host-side logic of the CUDA PagedAttention (csrc/paged/cuda_plan.cc) and of the attention core's ragged
plan it uses (csrc/sdpa/cuda_plan.cc, make_ragged_plan): the core's view of the pools (packed rows, slots by
block, the table's capacity as the key bound), the split into a decode launch (sequences of <= 16 new
tokens) and a prefill launch, grids that bound every schedule the device may write (checked against a
Python model of the schedule over many partitions), splits, the scratch layout, kernel choice and forcing,
errors; plus the registration next to the CPU kernel (ONNXATTN_DISABLE_CUDA=1 leaves it out) and the GPU case table on the CPU kernel.
Runs without a GPU through the library's C test entry."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
import paged_cases as pc  # noqa: E402
import paged_cuda_lib as lib  # noqa: E402
import sdpa_cuda_lib  # noqa: E402

FP16, BF16, FP32 = lib.FLOAT16, lib.BFLOAT16, lib.FLOAT32


@pytest.fixture(autouse=True)
def _no_forcing(monkeypatch):
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PATH", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_KERNEL", raising=False)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def align(n: int) -> int:
    return ceil_div(n, 256) * 256


# The GPU shape: Llama-3-8B attention (32 query heads over 8 KV heads, D = 128), 64 sequences of 4k
# keys in blocks of 16.
SERVING = dict(q_heads=32, kv_heads=8, head_dim=128, block_size=16, max_blocks=256, num_blocks=64 * 256 + 1)


def test_the_core_reads_packed_rows_and_the_pools_by_slot():
    s = lib.Spec(tokens=9, batch=3, q_heads=6, kv_heads=2, head_dim=32, v_head_dim=48, num_blocks=11, block_size=4,
                 max_blocks=5)  # fmt: skip
    p = lib.plan(s)
    # query [T, Hq*D] and output [T, Hq*Dv]: (batch, head, seq) strides with the batch unused (rows start at
    # each sequence's first packed row)
    assert p["q_strides"] == (0, 32, 6 * 32) and p["y_strides"] == (0, 48, 6 * 48)
    # pools [num_blocks, block_size, Hkv, .] seen as [slots, Hkv, .]: a slot's heads side by side
    assert p["k_strides"] == (0, 32, 2 * 32) and p["v_strides"] == (0, 48, 2 * 48)
    # keys bounded by a table row's capacity, queries of one sequence by min(T, capacity)
    assert (p["kv_len"], p["block_table_stride"], p["num_blocks"]) == (20, 5, 11)
    assert p["q_len"] == 9
    assert lib.plan(lib.Spec(tokens=50, batch=2, max_blocks=2, block_size=4, num_blocks=4))["q_len"] == 8


def test_serving_decode_shape():
    # B = 64 decodes: one 16-row tile per sequence and KV head (the 4 query heads of a group share its K/V),
    # 512 CTAs fill the H100's 264 slots about twice, so no split; a prefill launch exists (T = 64 could be
    # one 64-token chunk) and is bounded by the sequences that could be that long.
    p = lib.plan(lib.Spec(tokens=64, batch=64, rope=1, **SERVING))
    d, f = p["decode"], p["prefill"]
    assert (d["schedule"], d["kernel"], d["rows_per_cta"]) == ("decode", "mma", 16)
    assert p["decode_work_tiles"] == 64 and d["grid"] == 64 * 8 and d["splits"] == 1, d["reason"]
    assert d["splits"] == sdpa_cuda_lib.choose_splits(512, 4096 // 64, 264, 4, 256)
    assert (f["schedule"], f["kernel"], f["rows_per_cta"]) == ("prefill", "mma", 128)
    assert p["prefill_work_tiles"] == min(ceil_div(64 * 4, 128) + 64 // 17, 64)
    assert p["decode_max_queries"] == 16 and p["schedule_grid"] == 16
    assert p["layout_blocks"] == 16 and p["append_rows"] == 64 * 8 and p["append_blocks"] == 128


@pytest.mark.parametrize("tokens,batch,launches", [(1, 1, {"decode"}), (16, 4, {"decode"}), (16, 1, {"decode"}),
                                                   (17, 1, {"decode", "prefill"}), (600, 40, {"decode", "prefill"}),
                                                   (0, 3, set())])  # fmt: skip
def test_launches_follow_what_the_shape_allows(tokens, batch, launches):
    p = lib.plan(lib.Spec(tokens=tokens, batch=batch, num_blocks=200, max_blocks=64, block_size=16))
    assert {name for name in ("decode", "prefill") if p[name] is not None} == launches
    assert (p["schedule_grid"] > 0) == bool(launches)


def test_queries_are_bounded_by_the_table_capacity():
    # 2 blocks of 4 hold 8 keys: no sequence can have more than 8 new tokens, so T = 30 still fits the
    # decode launch when every sequence's count is <= 16 ... and the prefill launch is left out.
    p = lib.plan(lib.Spec(tokens=30, batch=5, num_blocks=20, max_blocks=2, block_size=4))
    assert p["q_len"] == 8 and p["prefill"] is None and p["decode"] is not None


def schedule_tiles(counts, group, rows_per_cta, dmax):
    """Python model of the device schedule: row tiles per class (decode: 1..dmax queries, prefill: more)."""
    tiles = [0, 0]
    for q in counts:
        if q > 0:
            tiles[0 if q <= dmax else 1] += ceil_div(q * group, rows_per_cta)
    return tiles


def partitions(rng, tokens, batch, cap):
    """Partitions of `tokens` rows into `batch` counts <= cap: adversarial shapes, then random ones."""
    yield from (
        [1] * batch if tokens == batch else None,
        [min(16, cap)] * (tokens // min(16, cap)) + [0] * batch if tokens % min(16, cap) == 0 else None,
        [tokens] + [0] * (batch - 1) if tokens <= cap else None,
        [17] * (tokens // 17) + [tokens % 17] if tokens // 17 + 1 <= batch and cap >= 17 else None,
    )
    for _ in range(200):
        cuts = np.sort(rng.integers(0, tokens + 1, batch - 1))
        counts = np.diff(np.concatenate([[0], cuts, [tokens]]))
        yield list(counts) if counts.max(initial=0) <= cap else None


@pytest.mark.parametrize("tokens,batch,q_heads,kv_heads,head_dim", [
    (64, 64, 32, 8, 128), (300, 20, 8, 2, 64), (96, 6, 16, 1, 64), (40, 40, 4, 4, 256), (257, 9, 12, 2, 12),
    (1000, 3, 8, 8, 128)])  # fmt: skip
@pytest.mark.parametrize("path", ["auto", "decode", "prefill"])
def test_grids_cover_every_schedule_the_device_may_write(tokens, batch, q_heads, kv_heads, head_dim, path):
    capacity = 64 * 16
    s = lib.Spec(tokens=tokens, batch=batch, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim, num_blocks=100,
                 max_blocks=64, block_size=16)  # fmt: skip
    p = lib.plan(s, path=path)
    group, dmax = q_heads // kv_heads, p["decode_max_queries"]
    rows = [p[n]["rows_per_cta"] if p[n] else 1 for n in ("decode", "prefill")]
    bounds = [p["decode_work_tiles"], p["prefill_work_tiles"]]
    rng = np.random.default_rng(tokens * 1000 + batch)
    seen = 0
    for counts in partitions(rng, tokens, batch, min(capacity, tokens)):
        if counts is None or len(counts) > batch:
            continue
        counts = counts + [0] * (batch - len(counts))
        seen += 1
        for cls in (0, 1):
            need = schedule_tiles(counts, group, rows[cls], dmax)[cls]
            assert need <= bounds[cls], (path, cls, counts, need, bounds)
        for cls, name in ((0, "decode"), (1, "prefill")):
            if p[name] is not None:
                assert p[name]["grid"] == bounds[cls] * kv_heads * p[name]["splits"]
    assert seen > 100
    if path == "decode":
        assert p["prefill"] is None and dmax == min(tokens, capacity)
    if path == "prefill":
        assert p["decode"] is None and dmax == 0


def test_few_long_sequences_split_their_keys():
    # 2 sequences of up to 32k keys: 16 CTAs would leave the device idle, so the keys split (planned for the
    # table's capacity; each CTA splits only its own sequence's keys, >= 256 per split, on the device).
    p = lib.plan(lib.Spec(tokens=2, batch=2, q_heads=32, kv_heads=8, head_dim=128, block_size=16, max_blocks=2048,
                          num_blocks=4096))  # fmt: skip
    d = p["decode"]
    assert d["splits"] == sdpa_cuda_lib.choose_splits(2 * 8, 32768 // 64, 264, 4, 256) > 8, d["reason"]
    assert d["min_split_keys"] == 256 and "per-batch lengths" in d["reason"]
    # partial rows follow the row tiles the decode class may hold, not the packed rows of the call
    out_rows = p["decode_work_tiles"] * 8 * 16
    assert d["combine_grid"] == ceil_div(out_rows, 4)
    assert d["scratch_bytes"] == align(d["splits"] * out_rows * 128 * 4) + align(d["splits"] * out_rows * 4)
    assert d["partial_lse_offset"] == align(d["splits"] * out_rows * 128 * 4)


def test_fused_merge_counts_the_row_tiles_the_decode_class_may_hold(monkeypatch):
    # ONNXATTN_SDPA_CUDA_COMBINE=fused (cuda_plan.cc rule 12) on a ragged batch: one counter per (row tile item, KV
    # head), after the partial LSE in the decode launch's scratch, which the ragged layout places as before
    spec = lib.Spec(tokens=2, batch=2, q_heads=32, kv_heads=8, head_dim=128, block_size=16, max_blocks=2048,
                    num_blocks=4096)  # fmt: skip
    kernel = lib.plan(spec)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    fused = lib.plan(spec)
    d, k = fused["decode"], kernel["decode"]
    assert d["split_counters"] == fused["decode_work_tiles"] * 8 == d["grid"] // d["splits"] and d["combine_grid"] == 0
    assert d["split_counters_offset"] == k["scratch_bytes"]
    assert d["scratch_bytes"] == k["scratch_bytes"] + align(4 * d["split_counters"])
    assert d["reason"].endswith(", splits merged by each row tile's last CTA (ONNXATTN_SDPA_CUDA_COMBINE)")


def test_direct_loads_reach_paged_blocks_of_multiples_of_16_on_request(monkeypatch):
    """ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct (opt-in for paged K/V, cuda_plan.cc rule 9): a 16-key step starting on
    a multiple of 16 lies in one block of 16, 32, ... slots, so one lookup a step addresses its rows directly; the
    default (auto) and blocks of other sizes, windows and chunks keep the slot lookup, told why where asked."""
    serving = lib.Spec(tokens=64, batch=64, rope=1, **SERVING)
    auto = lib.plan(serving)["decode"]
    assert "K/V loads" not in auto["reason"], auto["reason"]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "direct")
    direct = lib.plan(serving)["decode"]
    assert direct["reason"] == auto["reason"] + (", direct K/V loads, one block lookup a 16-key step "
                                                 "(ONNXATTN_SDPA_CUDA_DECODE_LOADS)")
    assert {k: v for k, v in direct.items() if k != "reason"} == {k: v for k, v in auto.items() if k != "reason"}
    assert "direct K/V loads" in lib.plan(lib.Spec(**{**serving.__dict__, "block_size": 64}))["decode"]["reason"]
    refused = ", K/V loads by slot lookup (direct paged loads need block_size a multiple of 16 and no window"
    for change in ({"block_size": 8}, {"block_size": 24}, {"window": 512}, {"attention_chunk": 256}):
        reason = lib.plan(lib.Spec(**{**serving.__dict__, **change}))["decode"]["reason"]
        assert refused in reason, (change, reason)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup")
    assert lib.plan(serving)["decode"] == auto


def test_a_window_bounds_the_splits():
    p = lib.plan(lib.Spec(tokens=2, batch=2, q_heads=32, kv_heads=8, head_dim=128, block_size=16, max_blocks=4096,
                          num_blocks=8192, window=512))  # fmt: skip
    assert p["decode"]["splits"] <= ceil_div(512 + 15, 256)


@pytest.mark.parametrize("pool_outputs", [True, False])
def test_scratch_layout(pool_outputs):
    s = lib.Spec(tokens=40, batch=3, q_heads=8, kv_heads=2, head_dim=64, v_head_dim=32, num_blocks=300, block_size=16,
                 max_blocks=100)  # fmt: skip
    p = lib.plan(s, pool_outputs=pool_outputs)
    assert p["layout_offset"] == 0
    offset = align(4 * 3 * 8)  # [4][B] int64: query starts, counts, offsets, key counts
    assert p["core_offset"] == offset
    # the core's own block: item counts, item lists, then the launches' split scratch
    core = 0
    assert p["totals_offset"] == core
    core += align(8)
    assert p["decode_items_offset"] == core
    core += align(8 * p["decode_work_tiles"])
    assert p["prefill_items_offset"] == core
    core += align(8 * p["prefill_work_tiles"])
    assert p["decode_offset"] == core
    core += align(p["decode"]["scratch_bytes"])
    assert p["prefill_offset"] == core
    core += align(p["prefill"]["scratch_bytes"])
    assert p["core_scratch_bytes"] == core
    offset += align(core)
    assert p["pools_in_scratch"] == (not pool_outputs)
    if not pool_outputs:
        assert p["key_pool_offset"] == offset
        offset += align(300 * 16 * 2 * 64 * 2)
        assert p["value_pool_offset"] == offset
        offset += align(300 * 16 * 2 * 32 * 2)
    assert p["scratch_bytes"] == offset


@pytest.mark.parametrize("pool_outputs", [True, False])
def test_sinks_add_the_lse_by_packed_row_last(pool_outputs):
    """Attention sinks: the core's LSE of the ragged batch, [T, Hq] float32, after everything else; the core's
    launches do not change."""
    s = lib.Spec(tokens=40, batch=3, q_heads=8, kv_heads=2, head_dim=64, num_blocks=300, block_size=16, max_blocks=100)
    plain = lib.plan(s, pool_outputs=pool_outputs)
    with_sinks = lib.plan(dataclasses.replace(s, sinks=True), pool_outputs=pool_outputs)
    assert not plain["sinks"] and with_sinks["sinks"]
    assert with_sinks["lse_offset"] == plain["scratch_bytes"]
    assert with_sinks["scratch_bytes"] == plain["scratch_bytes"] + align(40 * 8 * 4)
    assert (with_sinks["decode"], with_sinks["prefill"]) == (plain["decode"], plain["prefill"])


@pytest.mark.parametrize("dtype,head_dim,aligned,kernel,why", [
    (FP16, 128, True, "mma", ""), (BF16, 64, True, "mma", ""), (FP32, 128, True, "simt", "float32"),
    (FP16, 12, True, "simt", "multiple of 8"), (FP16, 128, False, "simt", "16-byte aligned")])  # fmt: skip
def test_kernel_choice(dtype, head_dim, aligned, kernel, why):
    p = lib.plan(lib.Spec(tokens=40, batch=4, head_dim=head_dim, dtype=dtype), aligned=aligned)
    for name in ("decode", "prefill"):
        assert p[name]["kernel"] == kernel and why in p[name]["reason"]


def test_environment_forces_the_core(monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PATH", "prefill")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_KERNEL", "simt")
    p = lib.plan(lib.Spec(tokens=4, batch=4), path="env", kernel="env")
    assert p["decode"] is None and p["prefill"]["kernel"] == "simt" and "forced" in p["prefill"]["reason"]


def test_errors_name_the_op():
    with pytest.raises(lib.PagedCudaError, match=r"^PagedAttention: the CUDA kernels support head sizes up to 256"):
        lib.plan(lib.Spec(q_heads=1, kv_heads=1, head_dim=320))
    with pytest.raises(lib.PagedCudaError, match=r"PagedAttention: rotary_dim must be even"):
        lib.plan(lib.Spec(rope=1, rotary_dim=7))
    with pytest.raises(lib.PagedCudaError, match=r"PagedAttention: unsupported dtype code 7"):
        lib.plan(lib.Spec(dtype=7))
    with pytest.raises(lib.PagedCudaError, match=r"PagedAttention: ONNXATTN_SDPA_CUDA_KERNEL=mma"):
        lib.plan(lib.Spec(dtype=FP32), kernel="mma")


def test_an_empty_table_plans_no_attention():
    p = lib.plan(lib.Spec(tokens=0, batch=2, max_blocks=0))
    assert p["decode"] is None and p["prefill"] is None and p["layout_blocks"] == 1 and p["append_blocks"] == 0


def test_run_entry_reports_a_build_without_cuda():
    if sdpa_cuda_lib.has_cuda():
        pytest.skip("built with CUDA: tests/gpu runs the kernels")
    import ctypes

    err = ctypes.create_string_buffer(256)
    rc = lib.load().OnnxAttnPagedCudaRunForTest(ctypes.byref(lib.Spec().problem()), ctypes.byref(lib.Tensors()), 0,
                                                0, None, 0, None, None, err, len(err))  # fmt: skip
    assert rc == 1 and b"without CUDA" in err.value


# ---- registration: the CUDA kernel (default on, ONNXATTN_DISABLE_CUDA=1 leaves it out) never disturbs CPU sessions
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, onnxruntime as ort
    sys.path[:0] = TESTS
    import paged_cases as pc
    case = pc.CASES_BY_ID["mixed-chunks-decodes"]
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIBRARY)
    so.enable_profiling = True
    so.profile_file_prefix = PROFILE
    sess = ort.InferenceSession(pc.model(case, "float32"), so, providers=["CPUExecutionProvider"])
    out = sess.run(None, pc.feeds(case.id, "float32"))
    pc.check(case, "float32", *out)
    events = json.load(open(sess.end_profiling()))
    print(sorted({e["args"]["provider"] for e in events if e.get("args", {}).get("op_name") == "PagedAttention"}))
    """
)


@pytest.mark.parametrize("flag", [None, "1"])
def test_cpu_session_runs_the_cpu_kernel_with_and_without_the_cuda_opt_out(flag, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {k: v for k, v in os.environ.items() if k != "ONNXATTN_DISABLE_CUDA"}
    if flag is not None:
        env["ONNXATTN_DISABLE_CUDA"] = flag
    tests = [str(Path(__file__).parent), str(Path(__file__).parent / "gpu")]
    script = (f"LIBRARY = {sdpa_cuda_lib.library_path()!r}\nPROFILE = {str(tmp_path / 'p')!r}\nTESTS = {tests!r}\n"
              + SCRIPT)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['CPUExecutionProvider']", done.stdout


# ---- the GPU tests' case table, oracle and tolerance rule, checked on the CPU kernel
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case_id", [c.id for c in pc.CASES])
def test_gpu_case_table_passes_on_the_cpu_kernel(case_id, dtype):
    # tests/gpu/paged_cases.py is what the CUDA kernel is held to on the GPU machine; the CPU kernel (the
    # same contract) must meet it here, so a failure there points at the CUDA kernel, not at the harness.
    ort = pytest.importorskip("onnxruntime")
    case = pc.CASES_BY_ID[case_id]
    options = ort.SessionOptions()
    options.register_custom_ops_library(sdpa_cuda_lib.library_path())
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(pc.model(case, dtype), options, providers=["CPUExecutionProvider"])
    pc.check(case, dtype, *session.run(None, pc.feeds(case.id, dtype)), context=f"CPU kernel {case_id} {dtype}")


# ---- the GPU tests' bad index inputs are bad: the CPU kernel rejects every one of them
@pytest.mark.parametrize("name", list(pc.SEQUENCE_FAULTS) + list(pc.CALL_FAULTS))
def test_every_gpu_fault_is_one_the_cpu_kernel_rejects(name):
    ort = pytest.importorskip("onnxruntime")
    fault = pc.SEQUENCE_FAULTS[name][1] if name in pc.SEQUENCE_FAULTS else pc.CALL_FAULTS[name]
    case = pc.CASES_BY_ID[pc.FAULT_BASE]
    options = ort.SessionOptions()
    options.register_custom_ops_library(sdpa_cuda_lib.library_path())
    session = ort.InferenceSession(pc.model(case, "float16"), options, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match=r"PagedAttention: .*(cu_seqlens_q|seq_lens|block_table)"):
        session.run(None, pc.faulty(fault))


# ---- the kernels divide key indices by the block size with a multiply (sdpa/cuda_tiles.h: BlockDivider)
@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 12, 16, 24, 48, 64, 100, 127, 1000, 4095, 65537, (1 << 30) - 1,
                                        1 << 30])  # fmt: skip
def test_block_division_by_multiplication_is_exact(block_size):
    mul, shift = sdpa_cuda_lib.block_divider(block_size)
    rng = np.random.default_rng(block_size)
    top = (1 << 31) - 1
    multiples = np.arange(0, top // block_size + 1, max(1, top // block_size // 5000)) * block_size
    js = np.concatenate([np.arange(0, 4096), rng.integers(0, top, 20000), multiples - 1, multiples, multiples + 1,
                         np.arange(top - 4096, top + 1)])  # fmt: skip
    js = js[js >= 0].astype(np.uint64)
    js = js[js <= top]
    hi = (js * np.uint64(mul)) >> np.uint64(32)  # __umulhi for 32-bit operands
    got = (hi + js) >> np.uint64(shift)  # the sum stays below 2^32 for j < 2^31
    assert ((hi + js) < (1 << 32)).all()
    np.testing.assert_array_equal(got, js // np.uint64(block_size))


def test_every_gpu_case_plans_on_a_device_with_99_kib_a_block():
    """sm_86 / sm_89 allow 101,376 bytes of shared memory per block: paged decode of head tiles of 128 takes two
    stages a warp (sdpa/cuda_plan.cc rule 11) where it was an error before."""
    sm86 = sdpa_cuda_lib.SM86
    for case in pc.CASES:
        p = lib.plan(pc.spec(case, "float16"), sm86)
        for launch in (p["decode"], p["prefill"]):
            if launch:
                assert launch["smem_bytes"] <= sm86["max_smem_per_block"], (case.id, launch["reason"])
        decode = p["decode"]
        if decode and decode["kernel"] == "mma" and decode["head_dim_tile"] == 128:
            assert decode["stages"] == 2, (case.id, decode["reason"])
