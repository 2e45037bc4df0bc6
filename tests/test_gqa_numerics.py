"""onnxattn::GroupQueryAttention against the numpy oracle (tests/oracle_gqa.py) on every path: the reference
function in onnxruntime without the library and in onnx.reference (inlined), the torch functional, and our
CPU kernel under each ISA variant (onnxruntime with the library; run_kernel proves from onnxruntime's profile
that the kernel, not the function, ran).

The matrix is data: CASES, one row per behaviour. Each case checks the output and, when requested, the
present_key/present_value caches (K stored after QK-norm and RoPE, in the input type; the past part copied
bit for bit, stale shared-buffer slots left as they were).

Tolerances (unit-normal inputs, outputs of magnitude ~1), following STYLE.md #10:
- float32: every path computes in float32. The bound is 1e-5 absolute + 1e-5 relative (a float32 softmax
  average over <= 100 keys errs ~1e-6) plus 4x the error of the oracle run in plain float32 arithmetic,
  which grows with the RoPE angles (position * inv_freq rounded to float32: ~pos * 2^-24 rad). A wrong
  position, layout, mask or head mapping errs by ~1e-1.
- float16 / bfloat16: the oracle sees the same rounded inputs and rounds the new K/V to the input type as
  the cache does; the paths compute in float32, so their error is the final rounding of the output (half an
  ulp) plus a K/V element that rounds to the neighbouring value. The bound is 2x the error of the same
  computation done entirely in the low-precision type (the oracle with `compute` = that type) plus one ulp
  of the largest output.
- present K/V: the past part is exact; new float32 entries within 1e-5 (+ 4x the float32 baseline), new
  16-bit entries within one ulp of themselves (float32 vs float64 before the rounding may pick neighbours).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import (
    GQA_INPUTS,
    IO_NUMPY,
    ISAS,
    cpu_isa,
    function_session,
    gqa_model,
    kernel_ops_run,
    kernel_session,
    round_to,
    run_function,
    run_gqa_torch,
    run_kernel,
    run_onnx_reference,
    session_options,
)
from oracle_gqa import default_inv_freq, gqa_oracle
from onnxattn import ops
from onnxattn.cuda_ep import make_session
from onnxattn.ops import gqa

FP32_ATOL = 1e-5
FP32_RTOL = 1e-5
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
COMPUTE = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    batch: int = 1
    q_heads: int = 4
    kv_heads: int = 2
    seq: int = 5
    head_dim: int = 16
    v_head_dim: int | None = None
    past: int | None = None  # concatenation mode: past length P (0 = empty past tensors); None: no past
    buffer: int | None = None  # shared-buffer mode: buffer length M (slots past the valid prefix hold NaN)
    past_lengths: tuple[int, ...] | None = None  # shared-buffer mode: valid tokens per sequence
    positions: str | None = None  # None (default), "docs" (resets), "from-mask" (left padding), "shifted"
    doc_starts: tuple[int, ...] = (0, 3)  # "docs": where documents start among the new tokens
    mask: str | None = None  # None, "left-pad", "right-pad", "random"
    pads: tuple[int, ...] = (0, 2, 1)  # padding keys per sequence for the padded masks
    q_norm: bool = False
    k_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    inv_freq: str | None = None  # None (the op's default), "linear4" (default / 4), "custom"
    causal: int = 1
    window: int = 0
    attention_chunk: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    rope: int = 0
    rope_base: float = 10000.0
    rotary_dim: int = 0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    sinks: str | None = None  # None, "random" (logits like the scores'), "large" (the sink takes most weight)
    dtype: str = "float32"
    with_present: bool = True

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(num_heads=self.q_heads, kv_num_heads=self.kv_heads, causal=self.causal, window=self.window,
                    attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=self.rope, rope_base=self.rope_base,
                    rotary_dim=self.rotary_dim, rope_interleaved=self.rope_interleaved,
                    rope_attention_scaling=self.rope_attention_scaling, qk_norm_epsilon=self.qk_norm_epsilon)

    @property
    def dv(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim


R = dict(rope=1)  # RoPE on, default layout
CASES = [
    # cache modes and phases
    Case("prefill"),
    Case("prefill-rope", **R),
    Case("prefill-rope-b2-odd-s9", batch=2, seq=9, **R),
    Case("prefill-empty-past", past=0, **R),
    Case("decode", seq=1, past=9, **R),
    Case("decode-b3-gqa8-2", batch=3, q_heads=8, kv_heads=2, seq=1, past=17, **R),
    Case("chunk-s5-p12", seq=5, past=12, **R),
    Case("chunk-odd-s7-p10-b2", batch=2, seq=7, past=10, **R),
    Case("shared-decode-b3", batch=3, seq=1, buffer=16, past_lengths=(5, 0, 15), **R),
    Case("shared-chunk-b2", batch=2, seq=4, buffer=20, past_lengths=(3, 9), **R),
    Case("shared-prefill-b2", batch=2, seq=6, buffer=8, past_lengths=(0, 0), **R),
    Case("shared-full-buffer", seq=3, buffer=10, past_lengths=(7,), **R),  # fills the buffer exactly
    # windows: the W most recent keys, the current one included
    Case("window-prefill", seq=12, window=4, **R),
    Case("window1-diagonal", seq=6, window=1),
    Case("window-decode", seq=1, past=20, window=6, **R),
    Case("window-chunk", seq=7, past=11, window=5, **R),
    Case("window-shared-b2", batch=2, seq=3, buffer=24, past_lengths=(4, 17), window=6, **R),
    Case("window-wider-than-cache", seq=4, past=3, window=50, **R),
    # bidirectional (encoders), key padding
    Case("bidirectional", seq=8, causal=0),
    Case("bidirectional-bert-right-pad-b3", batch=3, seq=8, causal=0, mask="right-pad"),
    Case("bidirectional-window", seq=9, causal=0, window=3),  # p - W < j only: sees every later key
    Case("left-pad-prefill-b3", batch=3, seq=7, mask="left-pad", positions="from-mask", **R),  # padded rows: 0
    Case("right-pad-prefill-b3", batch=3, seq=7, mask="right-pad", **R),
    Case("left-pad-decode-b3", batch=3, seq=1, past=6, mask="left-pad", positions="from-mask", **R),
    Case("left-pad-chunk-b2", batch=2, seq=3, past=5, mask="left-pad", positions="from-mask", **R),
    Case("mask-random-window", batch=2, seq=9, mask="random", window=4, **R),
    Case("mask-shared-b2", batch=2, seq=2, buffer=12, past_lengths=(6, 2), mask="random", **R),
    # positions
    Case("positions-docs", batch=2, seq=8, positions="docs", doc_starts=(0, 3, 5), **R),
    Case("positions-docs-chunk", seq=6, past=4, positions="docs", **R),
    Case("positions-docs-shared", batch=2, seq=5, buffer=12, past_lengths=(2, 7), positions="docs", **R),
    Case("positions-shifted-decode", batch=2, seq=1, past=7, positions="shifted", **R),
    # RoPE variants
    Case("rope-partial", rotary_dim=8, **R),
    Case("rope-interleaved", past=3, rope_interleaved=1, **R),
    Case("rope-partial-interleaved", past=3, rotary_dim=6, rope_interleaved=1, **R),
    Case("rope-base-500000", past=40, rope_base=500000.0, **R),
    Case("rope-inv-freq-linear", past=30, inv_freq="linear4", **R),
    Case("rope-inv-freq-partial", past=5, rotary_dim=8, inv_freq="custom", **R),
    Case("rope-attention-scaling", past=5, inv_freq="custom", rope_attention_scaling=1.25, **R),
    Case("rope-scaling-without-inv-freq", rope_attention_scaling=0.8, **R),
    Case("rope-d6", head_dim=6, past=2, **R),
    # QK-norm
    Case("qnorm-only", past=4, q_norm=True, **R),
    Case("knorm-only", past=4, k_norm=True, **R),
    Case("qk-norm", past=4, q_norm=True, k_norm=True, **R),
    Case("qk-norm-eps-large", q_norm=True, k_norm=True, qk_norm_epsilon=0.5),
    Case("qk-norm-no-rope-decode", seq=1, past=9, q_norm=True, k_norm=True),
    # heads and sizes
    Case("mqa-hkv1-b2", batch=2, q_heads=4, kv_heads=1, past=3, **R),
    Case("mha-3-heads", q_heads=3, kv_heads=3, past=2, **R),
    Case("gqa-6-over-2", q_heads=6, kv_heads=2, seq=6, past=5, **R),
    Case("dv-ne-d", head_dim=16, v_head_dim=8, past=3, **R),
    Case("d24-dv40", head_dim=24, v_head_dim=40, seq=3, past=2, **R),
    # scores
    Case("scale", scale=0.3, past=2),
    Case("softcap", softcap=2.0, scale=1.0, past=4, **R),
    Case("softcap-window-mask", batch=2, softcap=1.5, scale=1.0, window=3, mask="random", seq=6, **R),
    # without the present outputs
    Case("no-present-decode", seq=1, past=9, with_present=False, **R),
    Case("no-present-shared", batch=2, seq=2, buffer=10, past_lengths=(1, 6), with_present=False, **R),
    # larger shapes: past the kernels' row and key tiles, with odd remainders
    Case("large-prefill-window", q_heads=8, kv_heads=2, seq=130, head_dim=64, window=50, **R),
    Case("large-decode-shared-mqa-b2", batch=2, q_heads=8, kv_heads=1, seq=1, head_dim=128, buffer=400,
         past_lengths=(300, 17), q_norm=True, k_norm=True, **R),
    Case("large-chunk-dv48", q_heads=4, kv_heads=2, seq=33, past=200, head_dim=80, v_head_dim=48, rotary_dim=32,
         mask="random", **R),
    # every optional input at once
    Case("everything-shared", batch=2, q_heads=6, kv_heads=2, seq=3, buffer=14, past_lengths=(5, 9),
         positions="docs", doc_starts=(0, 2), q_norm=True, k_norm=True, inv_freq="custom", rotary_dim=10,
         mask="random", window=7, softcap=3.0, **R),
    Case("everything-concat", batch=2, seq=4, past=6, positions="shifted", q_norm=True, k_norm=True,
         inv_freq="linear4", rope_interleaved=1, mask="left-pad", window=5, scale=0.2, **R),
    # attention sinks (GPT-OSS): a per-head logit in every row's denominator
    Case("sinks-prefill-odd-s9", batch=2, seq=9, sinks="random", **R),
    Case("sinks-decode", seq=1, past=9, sinks="random", **R),
    Case("sinks-shared-decode-b3", batch=3, seq=1, buffer=16, past_lengths=(5, 0, 15), sinks="random", **R),
    Case("sinks-window-chunk", seq=7, past=11, window=5, sinks="random", **R),
    Case("sinks-mqa-hkv1-gqa8", batch=2, q_heads=8, kv_heads=1, seq=2, past=6, sinks="random", **R),
    Case("sinks-empty-rows", batch=2, seq=6, mask="left-pad", pads=(3, 1), sinks="random", **R),  # zero rows stay 0
    Case("sinks-large", seq=4, past=5, sinks="large", **R),
    Case("sinks-softcap-scale", softcap=2.0, scale=1.0, past=4, sinks="random", **R),
    Case("sinks-large-prefill-window", q_heads=8, kv_heads=2, seq=130, head_dim=64, window=50, sinks="random", **R),
    Case("sinks-large-decode-shared", batch=2, q_heads=8, kv_heads=1, seq=1, head_dim=128, buffer=400,
         past_lengths=(300, 17), sinks="random", **R),
    # chunked attention (Llama 4): a query sees only its own chunk of C key positions (up to itself)
    Case("attn-chunk-prefill-odd-s13", seq=13, attention_chunk=4, **R),
    Case("attn-chunk-decode", seq=1, past=20, attention_chunk=8, **R),  # position 20: keys 16..20
    Case("attn-chunk-decode-first-of-chunk", seq=1, past=16, attention_chunk=8, **R),  # sees itself only
    Case("attn-chunk-chunked-prefill", batch=2, seq=7, past=11, attention_chunk=6, **R),  # spans chunk 1 -> 2 -> 3
    Case("attn-chunk-shared-b2", batch=2, seq=3, buffer=24, past_lengths=(4, 17), attention_chunk=5, **R),
    Case("attn-chunk-window", seq=12, past=5, window=3, attention_chunk=5, **R),  # both bounds
    Case("attn-chunk-bidirectional", seq=10, causal=0, attention_chunk=4),  # the whole chunk, later keys too
    Case("attn-chunk-wider-than-cache", seq=4, past=3, attention_chunk=1000, **R),
    Case("attn-chunk-1", seq=6, attention_chunk=1, **R),  # every query sees itself only
    Case("attn-chunk-sinks-mask", batch=2, seq=9, mask="random", attention_chunk=4, sinks="random", **R),
    Case("attn-chunk-large-prefill", q_heads=8, kv_heads=2, seq=130, head_dim=64, attention_chunk=48, **R),
    Case("attn-chunk-large-decode-shared", batch=2, q_heads=8, kv_heads=1, seq=1, head_dim=128, buffer=400,
         past_lengths=(300, 17), attention_chunk=64, **R),
    Case("sinks-dv-ne-d-no-present", head_dim=16, v_head_dim=8, past=3, sinks="random", with_present=False, **R),
]

# Low-precision variants of the cases that exercise distinct conversions (inputs, norm weights, cache
# written in the input type, output rounding).
_LOW_PRECISION_OF = ("prefill-rope-b2-odd-s9", "decode-b3-gqa8-2", "chunk-s5-p12", "shared-chunk-b2", "qk-norm",
                     "window-decode", "left-pad-prefill-b3", "softcap", "everything-shared", "dv-ne-d",
                     "large-decode-shared-mqa-b2", "sinks-prefill-odd-s9", "sinks-shared-decode-b3", "sinks-large",
                     "attn-chunk-chunked-prefill", "attn-chunk-shared-b2")
CASES += [dataclasses.replace(c, id=f"{c.id}-{dtype}", dtype=dtype)
          for dtype in ("float16", "bfloat16") for c in CASES if c.id in _LOW_PRECISION_OF]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def key_mask(rng: np.random.Generator, case: Case, total: int) -> np.ndarray:
    """[B, total keys]: True for real tokens."""
    mask = np.ones((case.batch, total), dtype=bool)
    if case.mask == "random":
        mask = rng.random((case.batch, total)) < 0.75
    elif case.mask == "left-pad":
        for b in range(case.batch):
            mask[b, : case.pads[b % len(case.pads)]] = False
    elif case.mask == "right-pad":
        for b in range(case.batch):
            pad = case.pads[b % len(case.pads)]
            mask[b, total - pad:] = False
    return mask


@functools.lru_cache(maxsize=None)
def feeds_of(case_id: str) -> dict[str, np.ndarray]:
    """Random inputs of the case, named like the op's inputs, rounded to its dtype (see helpers.round_to)."""
    case = CASES_BY_ID[case_id]
    rng = np.random.default_rng(_seed(case_id))
    b, s, d, dv = case.batch, case.seq, case.head_dim, case.dv
    normal = lambda *shape: round_to(rng.standard_normal(shape), case.dtype)  # noqa: E731
    feeds = {"query": normal(b, s, case.q_heads * d), "key": normal(b, s, case.kv_heads * d),
             "value": normal(b, s, case.kv_heads * dv)}
    offsets = np.zeros(b, dtype=np.int64)
    total = s
    if case.past is not None:
        feeds["past_key"] = normal(b, case.kv_heads, case.past, d)
        feeds["past_value"] = normal(b, case.kv_heads, case.past, dv)
        offsets[:] = case.past
        total = case.past + s
    if case.buffer is not None:
        lengths = np.array(case.past_lengths, dtype=np.int64)
        assert lengths.shape == (b,) and np.all(lengths + s <= case.buffer)
        past_key, past_value = normal(b, case.kv_heads, case.buffer, d), normal(b, case.kv_heads, case.buffer, dv)
        for i, n in enumerate(lengths):  # stale slots: must not change anything
            past_key[i, :, n:] = np.nan
            past_value[i, :, n:] = np.nan
        feeds.update(past_key=past_key, past_value=past_value, past_lengths=lengths)
        offsets = lengths
        total = case.buffer
    if case.mask is not None:
        feeds["attention_mask"] = key_mask(rng, case, total)
    if case.positions == "docs":
        positions = offsets[:, None] + np.arange(s)[None, :]
        for start in case.doc_starts:
            positions[:, start:] = np.arange(s - start)
        feeds["position_ids"] = positions
    elif case.positions == "shifted":
        feeds["position_ids"] = offsets[:, None] + np.arange(s)[None, :] + 3 + np.arange(b)[:, None] * 5
    elif case.positions == "from-mask":  # left padding: real tokens count from 0, pads sit at 0
        counts = np.cumsum(feeds["attention_mask"], axis=1) - 1
        feeds["position_ids"] = np.maximum(counts[:, total - s:], 0).astype(np.int64)
    if case.q_norm:
        feeds["q_norm_weight"] = round_to(rng.uniform(0.5, 1.5, d), case.dtype)
    if case.k_norm:
        feeds["k_norm_weight"] = round_to(rng.uniform(0.5, 1.5, d), case.dtype)
    if case.sinks == "random":
        feeds["sinks"] = round_to(rng.uniform(-2.0, 3.0, case.q_heads), case.dtype)
    elif case.sinks == "large":
        feeds["sinks"] = round_to(rng.uniform(8.0, 12.0, case.q_heads), case.dtype)
    rotary = case.rotary_dim or d
    if case.inv_freq == "linear4":
        feeds["rope_inv_freq"] = (default_inv_freq(rotary, case.rope_base) / 4).astype(np.float32)
    elif case.inv_freq == "custom":
        feeds["rope_inv_freq"] = np.sort(rng.uniform(0.001, 1.2, rotary // 2))[::-1].astype(np.float32)
    return feeds


def model_of(case: Case):
    present = [n for n in GQA_INPUTS[3:] if n in feeds_of(case.id)]
    return gqa_model(present, dtype=case.dtype, with_present=case.with_present, attrs=case.attrs)


def oracle(case: Case, compute=np.float64):
    store = None if case.dtype == "float32" else (lambda x: round_to(x, case.dtype).astype(np.float64))
    return gqa_oracle(**feeds_of(case.id), **case.attrs, store=store, compute=compute)


@functools.lru_cache(maxsize=None)
def expected(case_id: str) -> tuple[tuple[np.ndarray, ...], float, float]:
    """(oracle outputs in float64, output tolerance, present tolerance for float32)."""
    case = CASES_BY_ID[case_id]
    ref = oracle(case)
    low = oracle(case, COMPUTE[case.dtype])
    baseline = [float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0)) for x, r in zip(low, ref)]
    y_max = float(np.abs(ref[0]).max(initial=0.0))
    if case.dtype == "float32":
        y_tol = FP32_ATOL + FP32_RTOL * y_max + 4 * baseline[0]
    else:
        y_tol = 2 * baseline[0] + EPS[case.dtype] * max(1.0, y_max)
    present_tol = FP32_ATOL + 4 * max(baseline[1:])
    return ref, y_tol, present_tol


def check(case: Case, outputs: list[np.ndarray], *, present_checked: bool) -> None:
    (y_ref, k_ref, v_ref), y_tol, present_tol = expected(case.id)
    for output in outputs:  # present K/V in the input type (bfloat16 comes back as float32, see helpers)
        assert np.asarray(output).dtype == IO_NUMPY[case.dtype]
    y = np.asarray(outputs[0], dtype=np.float64)
    assert y.shape == y_ref.shape, f"output shape {y.shape}, expected {y_ref.shape}"
    assert not np.isnan(y).any(), "NaN in the output"
    empty = np.all(y_ref == 0.0, axis=-1)  # [B, S]: rows that see no key (random V never sums to 0)
    assert np.all(y[empty] == 0.0), "rows with no visible key must be exactly zero"
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= y_tol, f"max |output - oracle| = {err:.3g} > {y_tol:.3g}"
    if not present_checked:
        return
    assert len(outputs) == 3
    feeds = feeds_of(case.id)
    for name, got, ref in (("present_key", outputs[1], k_ref), ("present_value", outputs[2], v_ref)):
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == ref.shape, f"{name} shape {got.shape}, expected {ref.shape}"
        new = np.zeros(ref.shape, dtype=bool)  # the slots the new tokens go to
        if case.buffer is not None:
            for b, n in enumerate(feeds["past_lengths"]):
                new[b, :, n:n + case.seq] = True
        else:
            new[:, :, ref.shape[2] - case.seq:] = True
        # the past part (and stale slots, NaN included) is copied exactly
        np.testing.assert_array_equal(got[~new], ref[~new], err_msg=f"{name}: past or stale slots changed")
        if case.dtype == "float32":
            np.testing.assert_allclose(got[new], ref[new], atol=present_tol, rtol=FP32_RTOL, err_msg=name)
        else:
            np.testing.assert_allclose(got[new], ref[new], atol=1e-6, rtol=EPS[case.dtype], err_msg=name)


PATHS = ["function-ort", "function-onnx-reference", "torch", "kernel"]
# The main matrix runs the kernel under each CPU ISA variant (the attention core it shares with SDPA).
MATRIX_PATHS = PATHS[:3] + [f"kernel-{isa}" for isa in ISAS]


def run_path(case: Case, path: str) -> list[np.ndarray]:
    feeds = feeds_of(case.id)
    if path == "torch":
        return run_gqa_torch(feeds, dtype=case.dtype, attrs=case.attrs)
    if path.startswith("kernel-"):
        with cpu_isa(path.removeprefix("kernel-")):
            return run_kernel(model_of(case), feeds)
    runner = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference, "kernel": run_kernel}
    return runner[path](model_of(case), feeds)


@pytest.mark.parametrize("path", MATRIX_PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_oracle(case: Case, path: str):
    outputs = run_path(case, path)
    if path != "torch":
        assert len(outputs) == (3 if case.with_present else 1)
    # the torch functional always returns the caches
    check(case, outputs, present_checked=case.with_present or path == "torch")


@pytest.mark.parametrize("rows", [1, 3], ids=["one-row-chunks", "three-row-chunks"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype == "float32"])
def test_the_function_in_row_chunks_matches_oracle(case: Case, path: str, rows: int, monkeypatch):
    """The reference function's chunked form (a Loop over query rows, for calls whose [B, Hq, S, T] scores pass
    ops._bodies.CHUNK_ELEMENTS: long prompts), forced on every float32 case by a budget of `rows` rows."""
    from onnxattn.ops import _bodies

    total = case.buffer if case.buffer is not None else (case.past or 0) + case.seq
    monkeypatch.setattr(_bodies, "CHUNK_ELEMENTS", rows * case.batch * case.q_heads * total)
    assert any(n.op_type == "If" for fn in model_of(case).functions for n in fn.node)
    check(case, run_path(case, path), present_checked=case.with_present)


def test_oracle_self_check():
    """The oracle against a hand-written decode step: one query at position 2 over a 2-token past plus
    itself, RoPE with D = 2 (one pair, inv_freq 1) rotating by the position, one head."""
    q, k, v = np.array([[[1.0, 0.0]]]), np.array([[[0.0, 1.0]]]), np.array([[[2.0, -1.0]]])
    past_k, past_v = np.array([[[[1.0, 0.0], [0.5, 0.5]]]]), np.array([[[[1.0, 1.0], [0.0, 3.0]]]])
    y, present_k, present_v = gqa_oracle(q, k, v, past_k, past_v, num_heads=1, kv_num_heads=1, rope=1)
    theta = 2.0  # position P + 0 = 2, inv_freq = 10000^0 = 1
    c, s = np.cos(theta), np.sin(theta)
    rot = lambda x: np.array([x[0] * c - x[1] * s, x[1] * c + x[0] * s])  # noqa: E731
    q_rot, k_rot = rot(q[0, 0]), rot(k[0, 0])
    np.testing.assert_allclose(present_k[0, 0, 2], k_rot, rtol=1e-12)
    np.testing.assert_array_equal(present_k[0, 0, :2], past_k[0, 0])
    keys = np.stack([past_k[0, 0, 0], past_k[0, 0, 1], k_rot])
    scores = keys @ q_rot / np.sqrt(2.0)
    w = np.exp(scores - scores.max())
    np.testing.assert_allclose(y[0, 0], w @ present_v[0, 0] / w.sum(), rtol=1e-12)


def test_oracle_hides_stale_and_masked_keys():
    """The oracle itself: NaN in stale shared-buffer slots and in masked keys never reaches the output."""
    case = CASES_BY_ID["mask-shared-b2"]
    y, _, _ = oracle(case)
    assert np.isfinite(y).all() and np.isnan(feeds_of(case.id)["past_value"]).any()


# ---------------------------------------------------------------------------------------------------------
# Every signature (present optional inputs and outputs) on every path


def _case_of_overload(overload: str) -> Case:
    features = set(overload.split("+")) if overload else set()
    fields: dict[str, Any] = dict(batch=2, seq=3, head_dim=8, rope=1, with_present="present" in features)
    if "shared" in features:
        fields.update(buffer=9, past_lengths=(2, 5))
    elif "past" in features:
        fields.update(past=4)
    fields.update(positions="shifted" if "pos" in features else None, q_norm="qnorm" in features,
                  k_norm="knorm" in features, inv_freq="custom" if "inv_freq" in features else None,
                  mask="random" if "mask" in features else None, sinks="random" if "sinks" in features else None)
    return Case(f"overload-{overload or 'plain'}", **fields)


OVERLOAD_CASES = {overload: _case_of_overload(overload) for overload in gqa.SPEC.overloads}
CASES_BY_ID.update({c.id: c for c in OVERLOAD_CASES.values()})


OVERLOAD_PARAMS = [pytest.param(o, id=o or "plain") for o in gqa.SPEC.overloads]


@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_is_tagged_and_checked(overload: str):
    """Each of the 384 present/absent combinations of the optional inputs and outputs gets its own
    overload and function, and the model passes the full checker."""
    model = model_of(OVERLOAD_CASES[overload])
    (node,) = ops.onnxattn_nodes(model)
    assert node.overload == overload
    assert [(f.name, f.overload) for f in model.functions] == [(gqa.NAME, overload)]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_matches_oracle(overload: str, path: str):
    case = OVERLOAD_CASES[overload]
    check(case, run_path(case, path), present_checked=case.with_present or path == "torch")


def test_profile_tells_the_function_from_the_kernel():
    """run_kernel's proof: in onnxruntime's profile, a node expanded into its function shows up as the
    function's standard ops, never under its own op type."""
    model = model_of(CASES_BY_ID["decode"])
    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"onnxattn_profile_{os.getpid()}")
    session = make_session(model, providers=["CPUExecutionProvider"], use_library=False, session_options=options)
    session.run(None, feeds_of("decode"))
    ran = kernel_ops_run(session)
    assert gqa.NAME not in ran and {"Exp", "ReduceMax"} <= ran, ran


def test_profile_shows_the_kernel():
    session = kernel_session(model_of(CASES_BY_ID["decode"]), profile=True)
    session.run(None, feeds_of("decode"))
    assert gqa.NAME in kernel_ops_run(session)


# ---------------------------------------------------------------------------------------------------------
# Shared-buffer mode in place, determinism


@pytest.mark.parametrize("path", ["function-ort", "kernel"])
@pytest.mark.parametrize("case_id", ["shared-chunk-b2", "shared-decode-b3", "large-decode-shared-mqa-b2-float16"])
def test_shared_buffer_updated_in_place_through_io_binding(case_id: str, path: str):
    """The way onnxruntime-genai runs the shared-buffer mode: present_key/present_value bound (I/O binding)
    to the very buffers fed as past_key/past_value. The new tokens land at past_lengths[b], everything else
    (valid prefix, stale NaN slots) stays, and the output is the oracle's."""
    case = CASES_BY_ID[case_id]
    feeds = feeds_of(case_id)
    model = model_of(case)
    session = kernel_session(model, profile=True) if path == "kernel" else function_session(model)
    buffers = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name].copy()) for name in ("past_key", "past_value")}
    binding = session.io_binding()
    for name, value in feeds.items():
        if name in buffers:
            binding.bind_ortvalue_input(name, buffers[name])
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output("output")
    binding.bind_ortvalue_output("present_key", buffers["past_key"])
    binding.bind_ortvalue_output("present_value", buffers["past_value"])
    session.run_with_iobinding(binding)
    output = binding.copy_outputs_to_cpu()[0]
    if path == "kernel":
        assert gqa.NAME in kernel_ops_run(session), "the kernel did not run"
    check(case, [output, buffers["past_key"].numpy(), buffers["past_value"].numpy()], present_checked=True)


@pytest.mark.parametrize("case_id", ["large-prefill-window", "large-decode-shared-mqa-b2", "everything-shared"])
def test_kernel_is_bitwise_deterministic_across_runs_and_threads(case_id: str):
    model, feeds = model_of(CASES_BY_ID[case_id]), feeds_of(case_id)
    one, two = kernel_session(model, threads=1, profile=True), kernel_session(model, threads=2)
    reference = one.run(None, feeds)
    assert gqa.NAME in kernel_ops_run(one), "the kernel did not run"
    for outputs in (one.run(None, feeds), two.run(None, feeds), two.run(None, feeds)):
        for x, y in zip(reference, outputs):
            np.testing.assert_array_equal(x, y)
