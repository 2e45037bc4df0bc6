"""The GroupQueryAttention GPU test matrix as data, its inputs, the float64 numpy oracle of the GQA test
suite (tests/oracle_gqa.py) and the tolerance rule. Needs numpy (and ml_dtypes for the bfloat16
baseline), not torch or a GPU, so the rule itself is checked on the CPU kernel too
(tests/test_gqa_cuda_host.py runs a few cases through onnxruntime's CPU EP).

Tolerance (STYLE.md #10), as in tests/test_gqa_numerics.py: the oracle computes in float64 on the same
rounded inputs and rounds the new K/V to the cache's type as the op does. Our error may be at most
- float32: 1e-5 + 1e-5 * max|Y| + 4x the error of the oracle run in plain float32 arithmetic (which
  grows with RoPE angles: position * inv_freq is rounded to float32 everywhere);
- float16 / bfloat16: 2x the error of the oracle run entirely in that type, plus one unit in the last
  place of max(1, max|Y|), and never less than the float32 bound (the kernels compute in float32, angles
  included). (The tensor-core kernels round the prepared Q and the probabilities to the type; the plain
  low-precision computation rounds every intermediate, so it bounds them.)
Rows that see no key are exactly 0; NaN in stale or hidden cache slots never reaches the output. The
present caches: the past part and stale slots bit for bit; new entries within 1e-5 + 4x the plain
float32 error, plus one unit in the last place for 16-bit types."""

from __future__ import annotations

import dataclasses
import functools
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared numpy oracle
from oracle_gqa import default_inv_freq, gqa_oracle  # noqa: E402

DTYPES = ("float16", "bfloat16", "float32")
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
INPUTS = ("query", "key", "value", "past_key", "past_value", "past_lengths", "position_ids", "q_norm_weight",
          "k_norm_weight", "rope_inv_freq", "attention_mask", "sinks")  # fmt: skip
T_INPUTS = ("query", "key", "value", "past_key", "past_value", "q_norm_weight", "k_norm_weight", "sinks")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    batch: int = 1
    q_heads: int = 8
    kv_heads: int = 2
    seq: int = 1
    head_dim: int = 128
    v_head_dim: int | None = None
    past: int | None = None  # concatenation: P
    buffer: int | None = None  # shared buffer: M (stale slots hold NaN)
    past_lengths: tuple[int, ...] = ()
    positions: str | None = None  # None | "shifted" | "docs" | "from-mask" | "large"
    q_norm: bool = False
    k_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    inv_freq: str | None = None  # None | "linear4" | "custom"
    mask: str | None = None  # None | "random" | "left-pad" | "right-pad"
    causal: int = 1
    window: int = 0
    attention_chunk: int = 0  # > 0: Llama 4's chunked attention
    softcap: float = 0.0
    scale: float = 0.0
    rope: int = 1
    rope_base: float = 10000.0
    rotary_dim: int = 0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    sinks: bool = False  # attention-sink logits per query head (GPT-OSS)
    with_present: bool = True

    def __str__(self) -> str:
        return self.id

    @property
    def dv(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def mode(self) -> str:
        return "shared" if self.buffer is not None else "concat" if self.past is not None else "none"

    @property
    def total(self) -> int:
        return self.buffer if self.buffer is not None else (self.past or 0) + self.seq

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(num_heads=self.q_heads, kv_num_heads=self.kv_heads, causal=self.causal, window=self.window,
                    attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=self.rope,
                    rope_base=self.rope_base,
                    rotary_dim=self.rotary_dim, rope_interleaved=self.rope_interleaved,
                    rope_attention_scaling=self.rope_attention_scaling, qk_norm_epsilon=self.qk_norm_epsilon)


# Llama-3-8B-like heads (4 query heads per KV head) at smaller counts, D = 128 unless a case says
# otherwise; shapes past the kernels' tiles (128-row prefill tiles, 64/16-key steps, 16-row decode
# tiles) with odd edges, and caches long enough for split-KV decode.
CASES = [
    # phases and cache modes
    Case("prefill-s96", seq=96),
    Case("prefill-b2-s77-d64", batch=2, seq=77, head_dim=64),
    Case("prefill-s200-mqa", seq=200, kv_heads=1, head_dim=64),
    Case("decode-p1000", past=1000),
    Case("decode-b2-g4-p1500", batch=2, q_heads=16, kv_heads=4, past=1500),
    Case("chunk-s40-p300", seq=40, past=300),
    Case("chunk-s5-p700", seq=5, past=700),  # decode schedule, 20 rows: two row tiles
    Case("shared-decode-b4", batch=4, buffer=1200, past_lengths=(5, 0, 700, 1199)),
    Case("shared-chunk-b2", batch=2, seq=40, buffer=600, past_lengths=(100, 333)),
    Case("shared-prefill-b2", batch=2, seq=70, buffer=128, past_lengths=(0, 0)),
    Case("shared-full-buffer", seq=3, buffer=300, past_lengths=(297,)),
    # windows: the W most recent keys, the current one included
    Case("window-prefill", seq=150, window=32),
    Case("window-decode", past=3000, window=700),
    Case("window-chunk", seq=30, past=500, window=64),
    Case("window-shared-b2", batch=2, buffer=3000, past_lengths=(2500, 100), window=600),
    # bidirectional (encoders), masks
    Case("bidirectional", seq=64, causal=0, rope=0),
    Case("bidirectional-right-pad-b3", batch=3, seq=48, causal=0, rope=0, mask="right-pad"),
    Case("bidirectional-window", seq=64, causal=0, window=16),
    Case("bidirectional-shared-b2", batch=2, seq=4, buffer=64, past_lengths=(10, 50), causal=0),
    Case("left-pad-prefill-b3", batch=3, seq=40, mask="left-pad", positions="from-mask"),
    Case("mask-random-decode", batch=2, past=500, mask="random"),
    Case("mask-shared-b2", batch=2, seq=2, buffer=400, past_lengths=(300, 20), mask="random"),
    # positions
    Case("positions-docs", batch=2, seq=48, positions="docs"),
    Case("positions-shifted-decode", batch=2, past=77, positions="shifted"),
    Case("positions-large", seq=2, past=5, positions="large", rope_base=500000.0),  # angles past 1e5 rad
    # RoPE variants
    Case("rope-partial", seq=20, past=30, rotary_dim=64),
    Case("rope-interleaved", seq=20, past=30, rope_interleaved=1),
    Case("rope-partial-interleaved", past=60, rotary_dim=32, rope_interleaved=1),
    Case("rope-inv-freq-linear", past=4000, inv_freq="linear4"),
    Case("rope-inv-freq-custom-scaling", seq=9, past=10, inv_freq="custom", rope_attention_scaling=1.25),
    # QK-norm
    Case("qk-norm", seq=24, past=40, q_norm=True, k_norm=True),
    Case("qnorm-only-decode", past=200, q_norm=True),
    Case("knorm-only", seq=16, past=16, k_norm=True),
    Case("qk-norm-eps-large-no-rope", seq=8, q_norm=True, k_norm=True, qk_norm_epsilon=0.5, rope=0),
    # heads and sizes
    Case("mha", q_heads=4, kv_heads=4, seq=33, past=10),
    Case("gqa-16-over-2", q_heads=16, kv_heads=2, seq=3, past=250),
    Case("mqa-hkv1-b2", batch=2, kv_heads=1, past=300),
    Case("heads-6-over-3", q_heads=6, kv_heads=3, seq=37, past=20),  # query heads in groups of 4 and 2 (chunked RoPE)
    # KV heads in groups of 4 and 2 (the chunked new-token kernel), per-document positions into a shared buffer
    Case("shared-docs-12-over-6", batch=2, q_heads=12, kv_heads=6, seq=9, buffer=200, past_lengths=(30, 120),
         positions="docs"),
    # 3 query heads (one partial group), interleaved RoPE over 40 channels: 5 rotated chunks
    Case("heads-3-rope-interleaved-40", q_heads=3, kv_heads=1, seq=20, past=30, rotary_dim=40, rope_interleaved=1),
    Case("dv-ne-d", v_head_dim=64, seq=20, past=30),
    Case("d64", head_dim=64, seq=40, past=60),
    Case("d256", head_dim=256, q_heads=4, seq=20, past=40),
    Case("d80", head_dim=80, seq=20, past=40),
    Case("d12-simt", head_dim=12, seq=10, past=20),  # rows not 16-byte multiples: the simt kernel
    # scores
    Case("scale", scale=0.05, seq=10, past=10, rope=0),
    Case("softcap", softcap=5.0, scale=0.3, seq=20, past=30),
    # without the present outputs (caches in scratch)
    Case("no-present-decode", past=500, with_present=False),
    Case("no-present-shared", batch=2, seq=2, buffer=100, past_lengths=(10, 60), with_present=False),
    # every optional input at once
    Case("everything-shared", batch=2, q_heads=12, kv_heads=4, seq=3, buffer=160, past_lengths=(50, 100),
         positions="docs", q_norm=True, k_norm=True, inv_freq="custom", rotary_dim=96, mask="random", window=70,
         softcap=3.0),
    Case("everything-concat", batch=2, seq=20, past=60, positions="shifted", q_norm=True, k_norm=True,
         inv_freq="linear4", rope_interleaved=1, mask="left-pad", window=25, scale=0.1),
    # attention sinks (GPT-OSS: head_dim 64, 64q/8kv, window 128 on alternate layers): every schedule and kernel
    Case("sinks-prefill-window", seq=150, q_heads=16, kv_heads=2, head_dim=64, window=128, sinks=True),
    Case("sinks-decode-split", past=3000, head_dim=64, sinks=True),
    Case("sinks-shared-decode-b4", batch=4, buffer=1200, past_lengths=(5, 0, 700, 1199), sinks=True),
    Case("sinks-chunk-mask", batch=2, seq=5, past=300, mask="left-pad", sinks=True),  # with empty rows
    Case("sinks-simt-d12", head_dim=12, seq=10, past=20, sinks=True),
    Case("sinks-no-present-dv-ne-d", v_head_dim=64, seq=20, past=30, with_present=False, sinks=True),
    # chunked attention (Llama 4): chunk starts inside prefill tiles, decode splits over one chunk, shared buffers
    Case("attn-chunk-prefill", seq=200, attention_chunk=48),
    Case("attn-chunk-prefill-d64-gqa8", seq=150, q_heads=16, kv_heads=2, head_dim=64, attention_chunk=64),
    Case("attn-chunk-decode-split", past=3000, attention_chunk=1024),  # position 3000: keys 2048..3000
    Case("attn-chunk-chunked-prefill", seq=40, past=500, attention_chunk=256),  # rows in chunks 1 and 2
    Case("attn-chunk-shared-b3", batch=3, buffer=2000, past_lengths=(5, 1999, 1024), attention_chunk=1024),
    Case("attn-chunk-window-sinks", seq=30, past=700, window=100, attention_chunk=512, sinks=True),
    Case("attn-chunk-simt-d12", head_dim=12, seq=10, past=20, attention_chunk=8),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to dtype, returned as float64 (NaN kept)."""
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32).astype(np.float64)
    if dtype == "float16":
        return np.asarray(x, dtype=np.float16).astype(np.float64)
    import ml_dtypes

    return np.asarray(x, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


@functools.lru_cache(maxsize=None)
def feeds(case_id: str, dtype: str) -> dict[str, np.ndarray]:
    """The case's inputs named like the op's, as float64 values exactly representable in `dtype` (T inputs),
    int64 lengths/positions, float32 inverse frequencies and a bool mask."""
    case = CASES_BY_ID[case_id]
    rng = np.random.default_rng(_seed(case_id))
    b, s, d, dv = case.batch, case.seq, case.head_dim, case.dv
    normal = lambda *shape: round_to(rng.standard_normal(shape), dtype)  # noqa: E731
    out: dict[str, np.ndarray] = {"query": normal(b, s, case.q_heads * d), "key": normal(b, s, case.kv_heads * d),
                                  "value": normal(b, s, case.kv_heads * dv)}  # fmt: skip
    offsets = np.zeros(b, dtype=np.int64)
    if case.past is not None:
        out["past_key"] = normal(b, case.kv_heads, case.past, d)
        out["past_value"] = normal(b, case.kv_heads, case.past, dv)
        offsets[:] = case.past
    if case.buffer is not None:
        lengths = np.array(case.past_lengths, dtype=np.int64)
        assert lengths.shape == (b,) and np.all(lengths + s <= case.buffer), case_id
        past_key, past_value = normal(b, case.kv_heads, case.buffer, d), normal(b, case.kv_heads, case.buffer, dv)
        for i, n in enumerate(lengths):  # stale slots: must change nothing
            past_key[i, :, n:] = np.nan
            past_value[i, :, n:] = np.nan
        out.update(past_key=past_key, past_value=past_value, past_lengths=lengths)
        offsets = lengths
    total = case.total
    if case.mask is not None:
        mask = np.ones((b, total), dtype=bool)
        if case.mask == "random":
            mask = rng.random((b, total)) < 0.75
        for i in range(b):
            pad = (0, 3, 7)[i % 3]
            if case.mask == "left-pad":
                mask[i, :pad] = False
            elif case.mask == "right-pad":
                mask[i, total - pad:] = False
        out["attention_mask"] = mask
    steps = np.arange(s)[None, :]
    if case.positions == "docs":
        positions = offsets[:, None] + steps
        for start in (0, s // 3, s // 2):
            positions[:, start:] = np.arange(s - start)
        out["position_ids"] = positions
    elif case.positions == "shifted":
        out["position_ids"] = offsets[:, None] + steps + 3 + 5 * np.arange(b)[:, None]
    elif case.positions == "large":
        out["position_ids"] = 200_000 + 7919 * np.arange(b)[:, None] + steps
    elif case.positions == "from-mask":  # left padding: real tokens count from 0
        counts = np.cumsum(out["attention_mask"], axis=1) - 1
        out["position_ids"] = np.maximum(counts[:, total - s:], 0).astype(np.int64)
    if case.q_norm:
        out["q_norm_weight"] = round_to(rng.uniform(0.5, 1.5, d), dtype)
    if case.k_norm:
        out["k_norm_weight"] = round_to(rng.uniform(0.5, 1.5, d), dtype)
    rotary = case.rotary_dim or d
    if case.sinks:  # about the size of the largest scores, so that the sink takes a real share
        out["sinks"] = round_to(rng.uniform(-1.0, 4.0, case.q_heads), dtype)
    if case.inv_freq == "linear4":
        out["rope_inv_freq"] = (default_inv_freq(rotary, case.rope_base) / 4).astype(np.float32)
    elif case.inv_freq == "custom":
        out["rope_inv_freq"] = np.sort(rng.uniform(0.001, 1.2, rotary // 2))[::-1].astype(np.float32)
    return out


def _low_precision(dtype: str):
    if dtype == "float32":
        return np.float32
    if dtype == "float16":
        return np.float16
    import ml_dtypes

    return ml_dtypes.bfloat16


@functools.lru_cache(maxsize=None)
def expected(case_id: str, dtype: str) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], float, float]:
    """(oracle output and caches in float64, output tolerance, present tolerance for float32)."""
    case = CASES_BY_ID[case_id]
    inputs = feeds(case_id, dtype)
    store = lambda x: round_to(x, dtype)  # noqa: E731  (the cache holds the input type)
    ref = gqa_oracle(**inputs, **case.attrs, store=store)
    with np.errstate(all="ignore"):  # the 16-bit baseline may overflow (large positions): NaN is skipped
        low = gqa_oracle(**inputs, **case.attrs, store=store, compute=_low_precision(dtype))
    baseline = [float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0)) for x, r in zip(low, ref)]
    low32 = low if dtype == "float32" else gqa_oracle(**inputs, **case.attrs, store=store, compute=np.float32)
    baseline32 = [float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0)) for x, r in zip(low32, ref)]
    y_max = float(np.abs(ref[0]).max(initial=0.0))
    fp32_tol = 1e-5 + 1e-5 * y_max + 4 * baseline32[0]
    if dtype == "float32":
        y_tol = fp32_tol
    else:
        # The kernels compute in float32 (RoPE angles included), so the float32 rule applies as a floor:
        # at large positions the float32 angle error exceeds the 16-bit rounding.
        y_tol = max(2 * baseline[0] + EPS[dtype] * max(1.0, y_max), fp32_tol)
    # New cache entries: RoPE in float32 (angle errors ~ position * 2^-24 rad) before the final rounding.
    return ref, y_tol, 1e-5 + 4 * max(baseline32[1:])


def new_slots(case: Case, shape: tuple[int, ...], past_lengths=None) -> np.ndarray:
    """Bool mask of the cache slots the new tokens go to."""
    new = np.zeros(shape, dtype=bool)
    if case.buffer is not None:
        for b, n in enumerate(case.past_lengths if past_lengths is None else past_lengths):
            new[b, :, n:n + case.seq] = True
    else:
        new[:, :, shape[2] - case.seq:] = True
    return new


def check(case: Case, dtype: str, output, present_key=None, present_value=None, *, context: str = "") -> None:
    """Asserts the tolerance rule on numpy (float) outputs; the caches are checked when given."""
    (y_ref, k_ref, v_ref), y_tol, present_tol = expected(case.id, dtype)
    y = np.asarray(output, dtype=np.float64)
    assert y.shape == y_ref.shape, f"{context}: output shape {y.shape}, expected {y_ref.shape}"
    assert not np.isnan(y).any(), f"{context}: NaN in the output"
    empty = np.all(y_ref == 0.0, axis=-1)  # [B, S]: rows that see no key (random V never sums to 0)
    assert np.all(y[empty] == 0.0), f"{context}: rows with no visible key must be exactly zero"
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= y_tol, f"{context}: max |output - oracle| = {err:.3g} > {y_tol:.3g}"
    for name, got, ref in (("present_key", present_key, k_ref), ("present_value", present_value, v_ref)):
        if got is None:
            continue
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == ref.shape, f"{context}: {name} shape {got.shape}, expected {ref.shape}"
        new = new_slots(case, ref.shape)
        np.testing.assert_array_equal(got[~new], ref[~new], err_msg=f"{context}: {name}: past or stale slots changed")
        if dtype == "float32":
            np.testing.assert_allclose(got[new], ref[new], atol=present_tol, rtol=1e-5, err_msg=f"{context} {name}")
        else:
            np.testing.assert_allclose(got[new], ref[new], atol=present_tol, rtol=EPS[dtype],
                                       err_msg=f"{context} {name}")


ONNX_TYPES = {"float32": 1, "float16": 10, "bfloat16": 16}  # TensorProto element types
INDEX_TYPES = {"past_lengths": 7, "position_ids": 7, "rope_inv_freq": 1, "attention_mask": 9}


def model(case: Case, dtype: str) -> bytes:
    """A one-node onnxattn::GroupQueryAttention model with the case's optional inputs, no function attached
    (a library without the kernel fails loudly instead of running the function). Inputs and outputs
    carry `dtype` directly: bfloat16 needs I/O binding."""
    from onnx import helper

    present = feeds(case.id, dtype)
    last = max(INPUTS.index(n) for n in present)
    t = ONNX_TYPES[dtype]
    graph_inputs, names = [], []
    for name in INPUTS[: last + 1]:
        if name not in present:
            names.append("")
            continue
        names.append(name)
        graph_inputs.append(helper.make_tensor_value_info(name, INDEX_TYPES.get(name, t), list(present[name].shape)))
    outputs = ["output"] + (["present_key", "present_value"] if case.with_present else [])
    shapes = {"output": [case.batch, case.seq, case.q_heads * case.dv],
              "present_key": [case.batch, case.kv_heads, case.total, case.head_dim],
              "present_value": [case.batch, case.kv_heads, case.total, case.dv]}  # fmt: skip
    node = helper.make_node("GroupQueryAttention", names, outputs, domain="onnxattn", **case.attrs)
    graph = helper.make_graph([node], "gqa", graph_inputs,
                              [helper.make_tensor_value_info(n, t, shapes[n]) for n in outputs])  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxattn", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def numpy_feeds(case: Case, dtype: str) -> dict[str, np.ndarray]:
    """feeds() in the types the model declares (float32 or float16; bfloat16 has no numpy type in
    onnxruntime's Python API)."""
    np_type = {"float32": np.float32, "float16": np.float16}[dtype]
    return {n: (x.astype(np_type) if n in T_INPUTS else x) for n, x in feeds(case.id, dtype).items()}


def spec(case: Case, dtype: str):
    """The case as gqa_cuda_lib.Spec (the C test entry's problem)."""
    import gqa_cuda_lib

    present = feeds(case.id, dtype)
    return gqa_cuda_lib.Spec(
        batch=case.batch, seq=case.seq, q_heads=case.q_heads, kv_heads=case.kv_heads, head_dim=case.head_dim,
        v_head_dim=case.dv, mode=case.mode, past=case.buffer if case.buffer is not None else case.past or 0,
        position_ids="position_ids" in present, q_norm=case.q_norm, k_norm=case.k_norm,
        inv_freq="rope_inv_freq" in present, mask="attention_mask" in present, sinks=case.sinks, causal=case.causal,
        window=case.window, attention_chunk=case.attention_chunk, softcap=case.softcap, scale=case.scale,
        rope=case.rope,
        rope_base=case.rope_base,
        rotary_dim=case.rotary_dim, rope_interleaved=case.rope_interleaved,
        rope_attention_scaling=case.rope_attention_scaling, qk_norm_epsilon=case.qk_norm_epsilon,
        dtype=gqa_cuda_lib.sdpa.FLOAT32 if dtype == "float32" else gqa_cuda_lib.FLOAT16 if dtype == "float16"
        else gqa_cuda_lib.BFLOAT16,
    )  # fmt: skip
