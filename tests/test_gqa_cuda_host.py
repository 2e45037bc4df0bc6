"""Host-side logic of the CUDA GroupQueryAttention (csrc/gqa/cuda_plan.cc): the attention core's view of
the cache (strides, key count, query offset, mask), the per-sequence layout of the shared-buffer mode,
the core's launch through the shared dispatch, the new-token kernel's grid and the scratch layout; plus
the registration next to the CPU kernel (ONNXATTN_DISABLE_CUDA=1 leaves it out). Runs without a GPU through the library's C test entry."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
import gqa_cases as gc  # noqa: E402
import gqa_cuda_lib as lib  # noqa: E402
import sdpa_cuda_lib  # noqa: E402

FP16, BF16, FP32 = lib.FLOAT16, lib.BFLOAT16, lib.FLOAT32


@pytest.fixture(autouse=True)
def _no_forcing(monkeypatch):
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PATH", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_KERNEL", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PREFILL", raising=False)
    monkeypatch.delenv("ONNXATTN_GQA_CUDA_QUERY", raising=False)
    monkeypatch.delenv("ONNXATTN_GQA_CUDA_ROTATION", raising=False)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def align(n: int) -> int:
    return ceil_div(n, 256) * 256


# Llama-3-8B attention: 32 query heads over 8 KV heads, D = 128
LLAMA = dict(q_heads=32, kv_heads=8, head_dim=128)


@pytest.mark.parametrize("mode,past,total", [("none", 0, 7), ("concat", 5, 12), ("shared", 40, 40)])
def test_the_core_reads_raw_queries_and_writes_the_output_layout(mode, past, total):
    s = lib.Spec(batch=3, seq=7, q_heads=6, kv_heads=2, head_dim=32, v_head_dim=48, mode=mode, past=past, rope=1)
    p = lib.plan(s)
    # query [B, S, Hq*D] and output [B, S, Hq*Dv] seen as [B, H, S, .]: strides (batch, head, seq)
    assert p["q_strides"] == (7 * 6 * 32, 32, 6 * 32)
    assert p["y_strides"] == (7 * 6 * 48, 48, 6 * 48)
    # the present caches [B, Hkv, total, .], contiguous
    assert p["kv_len"] == total
    assert p["k_strides"] == (2 * total * 32, total * 32, 32)
    assert p["v_strides"] == (2 * total * 48, total * 48, 48)
    # concatenation: every query i at P + i; shared: per sequence, from the device
    assert p["query_offset"] == (past if mode == "concat" else 0)
    assert p["per_batch"] == (mode == "shared")
    assert p["mask_strides"] == (0, 0, 0, 0)


def test_key_padding_mask_is_one_row_per_batch():
    p = lib.plan(lib.Spec(batch=2, seq=3, mode="shared", past=50, mask=True))
    assert p["mask_strides"] == (50, 0, 0, 1)


@pytest.mark.parametrize("dtype,kernel", [(FP16, "mma"), (BF16, "mma"), (FP32, "simt")])
@pytest.mark.parametrize("seq,schedule", [(1, "decode"), (16, "decode"), (17, "prefill"), (2048, "prefill")])
def test_schedule_and_kernel_come_from_the_shared_dispatch(dtype, kernel, seq, schedule):
    p = lib.plan(lib.Spec(seq=seq, mode="concat", past=100, dtype=dtype, rope=1, **LLAMA))
    a = p["attention"]
    if schedule == "prefill" and kernel == "mma":
        kernel = "wgmma"  # the Hopper prefill kernel on the H100 the plan is made for, queries rotated ahead
        assert p["rotate_queries"]
    assert (a["schedule"], a["kernel"]) == (schedule, kernel), a["reason"]
    assert a["rows_per_head"] == seq * 4  # the 4 query heads of each KV head's group share its K/V tiles


@pytest.mark.parametrize("head_dim,dtype", [(12, FP16), (20, BF16)])
def test_head_sizes_off_16_byte_rows_and_unaligned_pointers_fall_back_to_simt(head_dim, dtype):
    # D * 2 bytes not a multiple of 16: rows of the [B, S, Hq*D] query start off 16-byte boundaries.
    p = lib.plan(lib.Spec(seq=4, head_dim=head_dim, dtype=dtype))
    assert p["attention"]["kernel"] == "simt" and "multiple of 8" in p["attention"]["reason"]
    assert lib.plan(lib.Spec(seq=4, head_dim=16, dtype=dtype))["attention"]["kernel"] == "mma"
    unaligned = lib.plan(lib.Spec(seq=4, head_dim=16, dtype=dtype), aligned=False)["attention"]
    assert unaligned["kernel"] == "simt" and "16-byte aligned" in unaligned["reason"]


@pytest.mark.parametrize("buffer", [4096, 16384, 32768, 65536])
@pytest.mark.parametrize("batch", [1, 4])
def test_shared_buffer_decode_splits_for_the_buffer_and_floors_each_split(buffer, batch):
    # The valid lengths are on the device: the split count is planned for the whole buffer (an upper
    # bound, the same as the core's own plan for that layout) and each sequence splits only its keys.
    p = lib.plan(lib.Spec(batch=batch, seq=1, mode="shared", past=buffer, rope=1, **LLAMA))
    a = p["attention"]
    core = sdpa_cuda_lib.plan(
        sdpa_cuda_lib.Spec(batch=batch, q_heads=32, kv_heads=8, q_len=1, kv_len=buffer, head_dim=128, causal=True),
        layout=sdpa_cuda_lib.Layout.of(per_batch_lengths=True),
    )  # fmt: skip
    assert (a["schedule"], a["kernel"], a["splits"], a["min_split_keys"]) == (
        "decode", "mma", core["splits"], 256)  # fmt: skip
    assert a["splits"] == sdpa_cuda_lib.choose_splits(batch * 8, ceil_div(buffer, 64), 264, 4, 256)
    assert "per-batch lengths" in a["reason"]


def test_concatenation_decode_splits_the_known_keys():
    p = lib.plan(lib.Spec(seq=1, mode="concat", past=32767, rope=1, **LLAMA))["attention"]
    assert p["min_split_keys"] == 0 and p["splits"] == sdpa_cuda_lib.choose_splits(8, 512, 264, 4, 256)


def test_a_causal_window_bounds_the_splits_of_a_shared_buffer():
    p = lib.plan(lib.Spec(seq=1, mode="shared", past=1 << 20, window=512, rope=1, **LLAMA))["attention"]
    assert p["splits"] <= 512 // 256


def test_an_attention_chunk_bounds_the_splits_like_a_window():
    # chunked attention (Llama 4): a decode step reads at most its chunk, whatever the buffer holds
    chunked = lib.plan(lib.Spec(seq=1, mode="shared", past=1 << 20, attention_chunk=512, rope=1, **LLAMA))
    whole = lib.plan(lib.Spec(seq=1, mode="shared", past=1 << 20, rope=1, **LLAMA))
    assert chunked["attention"]["splits"] <= 512 // 256 < whole["attention"]["splits"]
    concat = lib.plan(lib.Spec(seq=1, mode="concat", past=(1 << 16) + 5, attention_chunk=4096, rope=1, **LLAMA))
    # the known query position 65541 sits 5 keys into its chunk: 6 visible keys, one split
    assert concat["attention"]["splits"] == 1


@pytest.mark.parametrize("batch,seq,kv_heads", [(1, 1, 8), (2, 2048, 8), (3, 5, 1), (0, 4, 2)])
def test_new_token_kernel_has_one_warp_per_token_and_kv_head(batch, seq, kv_heads):
    p = lib.plan(lib.Spec(batch=batch, seq=seq, q_heads=8, kv_heads=kv_heads, mode="concat", past=3))
    assert p["append_rows"] == batch * seq * kv_heads
    assert p["append_blocks"] == ceil_div(batch * seq * kv_heads, 4)


@pytest.mark.parametrize("present_outputs", [True, False])
@pytest.mark.parametrize("mode,past", [("none", 0), ("concat", 9), ("shared", 64)])
def test_scratch_layout(mode, past, present_outputs):
    # Forced decode with a long enough cache so the core has split scratch too.
    s = lib.Spec(batch=2, seq=3, q_heads=8, kv_heads=2, head_dim=64, v_head_dim=32, mode=mode, past=past)
    p = lib.plan(s, path="decode", present_outputs=present_outputs)
    offset = 0
    if mode == "shared":
        assert p["lengths_offset"] == 0
        offset = align(2 * 2 * 8)  # [2][B] int64: query offsets, valid lengths
    assert p["attention_offset"] == offset
    offset += align(p["attention"]["scratch_bytes"])
    assert p["present_in_scratch"] == (not present_outputs)
    if not present_outputs:
        total = {"none": 3, "concat": 12, "shared": 64}[mode]
        assert p["present_key_offset"] == offset
        offset += align(2 * 2 * total * 64 * 2)
        assert p["present_value_offset"] == offset
        offset += align(2 * 2 * total * 32 * 2)
    assert p["scratch_bytes"] == offset
    for name in ("lengths_offset", "attention_offset", "present_key_offset", "present_value_offset"):
        assert p[name] % 256 == 0


@pytest.mark.parametrize("path", ["decode", "prefill"])
@pytest.mark.parametrize("mode,past", [("none", 0), ("concat", 9), ("shared", 64)])
def test_sinks_add_the_lse_after_everything_else(mode, path, past):
    """Attention sinks: the core writes its LSE ([B, Hq, S] float32, last in the scratch) and the sink kernel
    reads it; without sinks, no LSE and the same layout otherwise."""
    s = lib.Spec(batch=2, seq=3, q_heads=8, kv_heads=2, head_dim=64, mode=mode, past=past, rope=1)
    plain = lib.plan(s, path=path)
    with_sinks = lib.plan(dataclasses.replace(s, sinks=True), path=path)
    assert not plain["sinks"] and plain["lse_offset"] == 0
    assert with_sinks["sinks"]
    assert with_sinks["lse_offset"] == plain["scratch_bytes"] and with_sinks["lse_offset"] % 256 == 0
    assert with_sinks["scratch_bytes"] == plain["scratch_bytes"] + align(2 * 8 * 3 * 4)
    for field in ("schedule", "kernel", "splits", "grid"):  # the core's launch does not change
        assert with_sinks["attention"][field] == plain["attention"][field]


def test_long_decode_has_split_scratch_after_the_lengths():
    p = lib.plan(lib.Spec(batch=2, seq=1, mode="shared", past=65536, **LLAMA))
    a = p["attention"]
    assert a["splits"] > 1 and a["scratch_bytes"] > 0
    assert p["attention_offset"] == 256 and p["scratch_bytes"] == 256 + align(a["scratch_bytes"])


def test_errors_name_the_op():
    with pytest.raises(lib.GqaCudaError, match=r"^GroupQueryAttention: the CUDA kernels support head sizes up to 256"):
        lib.plan(lib.Spec(q_heads=1, kv_heads=1, head_dim=320))
    # shapes and attributes go through the op's shared validation (gqa::make_params)
    with pytest.raises(lib.GqaCudaError, match=r"GroupQueryAttention: rotary_dim must be even"):
        lib.plan(lib.Spec(rope=1, rotary_dim=7))
    with pytest.raises(lib.GqaCudaError, match=r"GroupQueryAttention: num_heads \(6\) must be a multiple"):
        lib.plan(lib.Spec(q_heads=6, kv_heads=4))
    with pytest.raises(lib.GqaCudaError, match=r"GroupQueryAttention: unsupported dtype code 7"):
        lib.plan(lib.Spec(dtype=7))


def test_environment_forces_the_core(monkeypatch):
    s = lib.Spec(seq=300, mode="concat", past=10, **LLAMA)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PATH", "decode")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_KERNEL", "simt")
    a = lib.plan(s, path="env", kernel="env")["attention"]
    assert (a["schedule"], a["kernel"]) == ("decode", "simt")


def test_run_entry_reports_a_build_without_cuda():
    if sdpa_cuda_lib.has_cuda():
        pytest.skip("built with CUDA: tests/gpu runs the kernels")
    import ctypes

    err = ctypes.create_string_buffer(256)
    rc = lib.load().OnnxAttnGqaCudaRunForTest(ctypes.byref(lib.Spec().problem()), ctypes.byref(lib.Tensors()), 0, 0,
                                              None, 0, None, None, err, len(err))  # fmt: skip
    assert rc == 1 and b"without CUDA" in err.value


# ---- registration: the CUDA kernel (default on, ONNXATTN_DISABLE_CUDA=1 leaves it out) never disturbs CPU sessions
GQA_SCRIPT = textwrap.dedent(
    """
    import numpy as np, onnxruntime as ort
    from onnx import TensorProto, helper
    names = ["query", "key", "value", "past_key", "past_value", "past_lengths"]
    node = helper.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"],
                            domain="onnxattn", num_heads=4, kv_num_heads=2, rope=1)
    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    inputs = [f("query", [1, 2, 32]), f("key", [1, 2, 16]), f("value", [1, 2, 16]), f("past_key", [1, 2, 6, 8]),
              f("past_value", [1, 2, 6, 8]), helper.make_tensor_value_info("past_lengths", TensorProto.INT64, [1])]
    outputs = [f("output", [1, 2, 32]), f("present_key", [1, 2, 6, 8]), f("present_value", [1, 2, 6, 8])]
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxattn", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIBRARY)
    so.enable_profiling = True
    so.profile_file_prefix = PROFILE
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(i.type.tensor_type.shape.dim and [d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
             for n, i in zip(names[:5], inputs[:5])}
    feeds["past_lengths"] = np.array([3], dtype=np.int64)
    out, pk, pv = sess.run(None, feeds)
    assert np.isfinite(out).all() and np.array_equal(pk[:, :, :3], feeds["past_key"][:, :, :3])
    assert np.array_equal(pv[:, :, 3:5], feeds["value"].reshape(1, 2, 2, 8).transpose(0, 2, 1, 3))
    import json
    events = json.load(open(sess.end_profiling()))
    print(sorted({e["args"]["provider"] for e in events if e.get("args", {}).get("op_name") == "GroupQueryAttention"}))
    """
)


@pytest.mark.parametrize("flag", [None, "1"])
def test_cpu_session_runs_the_cpu_kernel_with_and_without_the_cuda_opt_out(flag, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {k: v for k, v in os.environ.items() if k != "ONNXATTN_DISABLE_CUDA"}
    if flag is not None:
        env["ONNXATTN_DISABLE_CUDA"] = flag
    script = f"LIBRARY = {sdpa_cuda_lib.library_path()!r}\nPROFILE = {str(tmp_path / 'p')!r}\n" + GQA_SCRIPT
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['CPUExecutionProvider']", done.stdout


# ---- the GPU tests' case table, oracle and tolerance rule, checked on the CPU kernel
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("case_id", [c.id for c in gc.CASES])
def test_gpu_case_table_passes_on_the_cpu_kernel(case_id, dtype):
    # tests/gpu/gqa_cases.py is what the CUDA kernel is held to on the GPU machine; the CPU kernel (the
    # same contract) must meet it here, so a failure there points at the CUDA kernel, not at the harness.
    ort = pytest.importorskip("onnxruntime")
    case = gc.CASES_BY_ID[case_id]
    options = ort.SessionOptions()
    options.register_custom_ops_library(sdpa_cuda_lib.library_path())
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(gc.model(case, dtype), options, providers=["CPUExecutionProvider"])
    gc.check(case, dtype, *session.run(None, gc.numpy_feeds(case, dtype)), context=f"CPU kernel {case_id} {dtype}")


def test_rotated_queries_are_asked_for_by_the_environment(monkeypatch):
    """ONNXATTN_GQA_CUDA_QUERY=rotated: the queries prepared into scratch first, only for tensor-core plans
    that have a preparation to do; an unknown value is an error naming the variable. (On mma.sync: the
    wgmma kernel, the H100's default, always takes its queries prepared ahead.)"""
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")
    s = lib.Spec(seq=64, mode="concat", past=100, rope=1, **LLAMA)
    fused = lib.plan(s)
    assert not fused["rotate_queries"]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
    rotated = lib.plan(s)
    assert rotated["rotate_queries"] and rotated["attention"]["kernel"] == "mma"
    q_bytes = s.batch * s.seq * s.q_heads * s.head_dim * 2
    assert rotated["rotated_q_offset"] == fused["scratch_bytes"]
    assert rotated["scratch_bytes"] == fused["scratch_bytes"] + -(-q_bytes // 256) * 256
    assert not lib.plan(lib.Spec(seq=64, mode="concat", past=100, rope=0, **LLAMA))["rotate_queries"]  # nothing to do
    assert not lib.plan(s, kernel="simt")["rotate_queries"]  # SIMT prepares in float32
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "early")
    with pytest.raises(lib.GqaCudaError, match="ONNXATTN_GQA_CUDA_QUERY must be fused or rotated, got 'early'"):
        lib.plan(s)


def test_queries_without_qk_norm_can_be_turned_by_16_byte_chunks(monkeypatch):
    """ONNXATTN_GQA_CUDA_ROTATION=chunks (the default): RoPE without QK-norm on the query kernel by token (a CTA per
    token: its angles once, then a thread per 16-byte chunk of its rows); QK-norm, rows that do not split into 16-byte
    chunks and unaligned pointers keep the per-row kernel (rotate_chunks 0), as does ROTATION=rows."""
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")  # wgmma always prepares its queries ahead
    prefill = dict(seq=2048, mode="concat", past=0, rope=1, **LLAMA)
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "rows")
    rows = lib.plan(lib.Spec(**prefill))
    assert rows["rotate_queries"] and rows["attention"]["kernel"] == "wgmma" and rows["rotate_chunks"] == 0
    monkeypatch.delenv("ONNXATTN_GQA_CUDA_ROTATION")
    p = lib.plan(lib.Spec(**prefill))
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "chunks")
    assert lib.plan(lib.Spec(**prefill)) == p
    assert p["rotate_queries"] and p["scratch_bytes"] == rows["scratch_bytes"]
    # D = 128, pairs (i, i + 64): 8 chunks of 8 pairs per row; a CTA per token
    assert (p["rotate_chunks"], p["rotary_chunks"]) == (8, 8)
    assert p["rotate_blocks"] == 2048
    partial = lib.plan(lib.Spec(**{**prefill, "rotary_dim": 64}))  # 4 chunks turned, 8 copied
    assert (partial["rotate_chunks"], partial["rotary_chunks"]) == (12, 4)
    interleaved = lib.plan(lib.Spec(**{**prefill, "rotary_dim": 72, "rope_interleaved": 1}))
    assert (interleaved["rotate_chunks"], interleaved["rotary_chunks"]) == (16, 9)  # 9 chunks of 4 pairs, 7 copied
    odd_heads = lib.plan(lib.Spec(**{**prefill, "q_heads": 6, "kv_heads": 2, "batch": 3}))
    assert odd_heads["rotate_blocks"] == 3 * 2048
    assert lib.plan(lib.Spec(**{**prefill, "rotary_dim": 72}))["rotate_chunks"] == 0  # R/2 = 36: not whole chunks
    assert lib.plan(lib.Spec(**{**prefill, "q_norm": True}))["rotate_chunks"] == 0  # the norm: a row-wide sum
    assert lib.plan(lib.Spec(**prefill), aligned=False)["rotate_queries"] is False  # mma.sync's fused load then
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "warps")
    with pytest.raises(lib.GqaCudaError, match="ROTATION must be chunks, rows or joint, got 'warps'"):
        lib.plan(lib.Spec(**prefill))


def test_new_keys_can_be_turned_by_16_byte_chunks(monkeypatch):
    """ONNXATTN_GQA_CUDA_ROTATION=chunks (the default) also moves the new keys and values by the new-token kernel by token (a CTA per
    token, a thread per 16-byte chunk: the key's chunks, turned as the queries', then the value's), in prefill and
    decode, with or without queries prepared ahead; K-norm, rows that do not split into chunks, float32 and unaligned
    pointers keep the per-row kernel (append_key_chunks 0), as does ROTATION=rows."""
    prefill = dict(seq=2048, mode="concat", past=0, rope=1, **LLAMA)
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "rows")
    rows = lib.plan(lib.Spec(**prefill))
    assert rows["append_key_chunks"] == rows["append_chunk_blocks"] == 0
    monkeypatch.delenv("ONNXATTN_GQA_CUDA_ROTATION")
    p = lib.plan(lib.Spec(**prefill))
    assert p["attention"] == rows["attention"] and p["scratch_bytes"] == rows["scratch_bytes"]
    # D = Dv = 128 in chunks of 8: a key thread turns chunk c with chunk c + 8 (pairs (i, i + 64)), so 8 of them a
    # row, all turned; 16 value chunks; a CTA per token
    assert (p["append_key_chunks"], p["append_rotary_chunks"], p["append_value_chunks"]) == (8, 8, 16)
    assert p["append_chunk_blocks"] == 2048 and p["append_blocks"] == rows["append_blocks"]
    decode = lib.plan(lib.Spec(**{**prefill, "seq": 1, "mode": "shared", "past": 4000}))
    assert decode["append_key_chunks"] == 8 and decode["append_chunk_blocks"] == 1
    partial = lib.plan(lib.Spec(**{**prefill, "rotary_dim": 64}))  # 4 chunks turned, 8 copied
    assert (partial["append_key_chunks"], partial["append_rotary_chunks"]) == (12, 4)
    assert lib.plan(lib.Spec(**{**prefill, "rope": 0}))["append_key_chunks"] == 16  # all 16 copied
    assert lib.plan(lib.Spec(**{**prefill, "head_dim": 256}))["append_rotary_chunks"] == 16  # 128 pairs: the most
    assert lib.plan(lib.Spec(**{**prefill, "rotary_dim": 72}))["append_key_chunks"] == 0  # R/2 = 36
    assert lib.plan(lib.Spec(**{**prefill, "k_norm": True}))["append_key_chunks"] == 0  # the norm: a row-wide sum
    assert lib.plan(lib.Spec(**{**prefill, "q_norm": True}))["append_key_chunks"] == 8  # the queries' norm: not K's
    assert lib.plan(lib.Spec(**prefill), aligned=False)["append_key_chunks"] == 0
    assert lib.plan(lib.Spec(**{**prefill, "dtype": lib.FLOAT32}))["append_key_chunks"] == 0


def test_joint_kernel_takes_both_kernels_by_token_where_both_run(monkeypatch):
    """ONNXATTN_GQA_CUDA_ROTATION=joint (opt-in): where the queries are prepared ahead by the kernel by token and the
    new keys are written by the kernel by token (the prefill's wgmma core, or mma.sync with GQA_CUDA_QUERY=rotated),
    one kernel over the same tokens does both, with the same scratch; anywhere else each runs as under chunks."""
    prefill = dict(seq=2048, mode="concat", past=0, rope=1, **LLAMA)
    chunks = lib.plan(lib.Spec(**prefill))
    assert chunks["attention"]["kernel"] == "wgmma" and not chunks["joint_new_tokens"]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "joint")
    joint = lib.plan(lib.Spec(**prefill))
    assert joint["joint_new_tokens"] and joint["rotate_blocks"] == joint["append_chunk_blocks"] == 2048
    assert {k: v for k, v in joint.items() if k != "joint_new_tokens"} == {
        k: v for k, v in chunks.items() if k != "joint_new_tokens"}  # the same kernels' work and scratch
    shared = lib.plan(lib.Spec(**{**prefill, "batch": 3, "seq": 100, "mode": "shared", "past": 4000}))
    assert shared["joint_new_tokens"] and shared["append_chunk_blocks"] == 300 and shared["per_batch"]
    partial = lib.plan(lib.Spec(**{**prefill, "rotary_dim": 64}))
    assert partial["joint_new_tokens"] and (partial["rotary_chunks"], partial["append_rotary_chunks"]) == (4, 4)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")
    assert not lib.plan(lib.Spec(**prefill))["joint_new_tokens"]  # mma.sync prepares the queries in its Q load
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
    assert lib.plan(lib.Spec(**prefill))["joint_new_tokens"]  # ... unless asked to prepare them ahead
    monkeypatch.delenv("ONNXATTN_GQA_CUDA_QUERY")
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PREFILL")
    for name, spec in {"q_norm (queries per row)": {"q_norm": True}, "k_norm (keys per row)": {"k_norm": True},
                       "float32": {"dtype": lib.FLOAT32}, "R/2 = 36 (not whole chunks)": {"rotary_dim": 72},
                       "no RoPE (nothing to prepare)": {"rope": 0},
                       "decode (mma.sync's Q load)": {"seq": 1, "mode": "shared", "past": 4000}}.items():  # fmt: skip
        assert not lib.plan(lib.Spec(**{**prefill, **spec}))["joint_new_tokens"], name
    assert not lib.plan(lib.Spec(**prefill), aligned=False)["joint_new_tokens"]


def test_joint_kernel_zeroes_the_fused_merges_counters(monkeypatch):
    """A decode with the fused split merge (ONNXATTN_SDPA_CUDA_COMBINE=fused) and its queries rotated ahead by the
    joint kernel (GQA_CUDA_QUERY=rotated, ROTATION=joint): the joint kernel zeroes the merge's counters, so the core
    launches no memset (split_counters_zeroed_ahead); with the two kernels, or the combine kernel, nothing changes."""
    decode = lib.Spec(seq=1, mode="shared", past=32768, rope=1, **LLAMA)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_QUERY", "rotated")
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "joint")
    joint = lib.plan(decode)
    assert joint["joint_new_tokens"] and joint["attention"]["split_counters"] == 8, joint["attention"]["reason"]
    assert joint["split_counters_zeroed_ahead"]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "chunks")
    two = lib.plan(decode)
    assert not two["split_counters_zeroed_ahead"] and two["attention"] == joint["attention"]
    monkeypatch.setenv("ONNXATTN_GQA_CUDA_ROTATION", "joint")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "kernel")
    combine = lib.plan(decode)
    assert combine["joint_new_tokens"] and combine["attention"]["split_counters"] == 0
    assert not combine["split_counters_zeroed_ahead"]


def test_wgmma_prefill_prepares_the_queries_ahead(monkeypatch):
    """ONNXATTN_SDPA_CUDA_PREFILL=wgmma: the Hopper kernel has no preparation in its Q load, so a prefill that
    rotates or normalises queries takes them prepared into scratch; one without either reads them plainly;
    a mask (padding) or a decode keeps the mma.sync kernels and the fused load."""
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")
    rope = lib.plan(lib.Spec(seq=64, mode="concat", past=100, rope=1, **LLAMA))
    assert rope["attention"]["kernel"] == "wgmma" and rope["rotate_queries"], rope["attention"]["reason"]
    plain = lib.plan(lib.Spec(seq=64, mode="shared", past=300, rope=0, **LLAMA))
    assert plain["attention"]["kernel"] == "wgmma" and not plain["rotate_queries"]
    masked = lib.plan(lib.Spec(seq=64, mode="concat", past=100, rope=1, mask=True, **LLAMA))
    assert masked["attention"]["kernel"] == "mma" and not masked["rotate_queries"]
    assert "not eligible: softcap, mask" in masked["attention"]["reason"]
    decode = lib.plan(lib.Spec(seq=1, mode="shared", past=4096, rope=1, **LLAMA))
    assert decode["attention"]["kernel"] == "mma" and not decode["rotate_queries"]
    small = lib.plan(lib.Spec(seq=64, mode="concat", past=100, rope=1, q_heads=8, kv_heads=2, head_dim=64))
    assert small["attention"]["kernel"] == "wgmma" and small["attention"]["head_dim_tile"] == 64 and small["rotate_queries"]
    wide = lib.plan(lib.Spec(seq=64, mode="concat", past=100, rope=1, q_heads=8, kv_heads=2, head_dim=192))
    assert wide["attention"]["kernel"] == "mma" and not wide["rotate_queries"]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_every_gpu_case_plans_on_a_device_with_99_kib_a_block(dtype):
    """sm_86 / sm_89 (A10, L4, RTX 30 and 40) allow 101,376 bytes of shared memory per block: a decode of head
    tiles of 128 takes two stages a warp, D = 256 the simt kernel (sdpa/cuda_plan.cc rule 11), where both were
    errors before."""
    sm86 = sdpa_cuda_lib.SM86
    for case in gc.CASES:
        attention = lib.plan(gc.spec(case, dtype), sm86)["attention"]
        assert attention["smem_bytes"] <= sm86["max_smem_per_block"], (case.id, attention["reason"])
        tile = max(case.head_dim, case.dv)
        if attention["kernel"] == "mma" and attention["schedule"] == "decode" and 64 < tile <= 128:
            assert attention["stages"] == 2 and "two stages a warp (three need 108800" in attention["reason"], case.id
        if tile > 128 and dtype == "float16":
            assert attention["kernel"] == "simt" and "-> simt (the mma kernel needs" in attention["reason"], case.id
