"""onnxattn::MultiHeadLatentAttention against the numpy oracle (tests/oracle_mla.py) on every path: the
reference function in onnxruntime without the library and in onnx.reference (inlined), the torch
functional, and our CPU kernel in both formulations (absorbed and expanded, forced with ONNXATTN_MLA_PATH)
under each ISA variant of the attention core (ONNXATTN_CPU_ISA); run_kernel proves from onnxruntime's
profile that the kernel ran.

The matrix is data: CASES, one row per behaviour. Each case checks the output and the present caches:
the latent is stored as given (bit for bit), the rope keys after RoPE in the input type, the past part
copied exactly, stale shared-buffer slots left as they were, and the shapes hold R and Dr values per token.

The split-K attention core (latent rows plus rope keys shared by all heads) runs in both tile shapes:
narrow tiles (at most 8 rows per KV head with dims a multiple of the SIMD width: `decode-narrow-h8` in the
absorbed form, every expanded decode with such dims) and wide tiles (`decode-wide-h16-b2` and
`decode-wide-h128`: 16 and 128 query heads over the one latent KV head; prefills; odd dims).

Tolerances (unit-normal inputs, weights scaled by 1/sqrt(R), outputs of magnitude ~1), as in
tests/test_gqa_numerics.py (STYLE.md #10):
- float32: 1e-5 absolute + 1e-5 relative plus 4x the error of the oracle run in plain float32 (RoPE
  angles rounded to float32 grow with the position); the absorbed form sums the same products in another
  order (q . W_UK^T . latent instead of q . (latent . W_UK)), a float32 rounding difference of ~1e-6.
- float16 / bfloat16: 2x the error of the same computation done entirely in the low-precision type plus
  one ulp of the largest output (every path computes in float32 from the same rounded inputs; the output
  rounds once).
- present: the latent part is exact; new float32 rope keys within 1e-5 (+ 4x the float32 baseline), new
  16-bit rope keys within one ulp of themselves.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import (
    IO_NUMPY,
    ISAS,
    cpu_isa,
    function_session,
    kernel_ops_run,
    kernel_session,
    round_to,
    run_function,
    run_kernel,
    run_onnx_reference,
)
from mla_helpers import MLA, MLA_INPUTS, PATHS as FORMS, mla_model, mla_path, run_mla_torch
from oracle_mla import default_inv_freq, mla_oracle
from onnxattn import ops
from onnxattn.ops import mla

FP32_ATOL = 1e-5
FP32_RTOL = 1e-5
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
COMPUTE = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    batch: int = 1
    heads: int = 4
    seq: int = 5
    rank: int = 24  # R
    nope: int = 8  # Dn
    rope_dim: int = 8  # Dr
    v_dim: int = 12  # Dv
    past: int | None = None  # concatenation mode: P (0 = empty past tensors); None: no past
    buffer: int | None = None  # shared-buffer mode: buffer length M (stale slots hold NaN)
    past_lengths: tuple[int, ...] | None = None
    cache_rank: int = 3  # 4: caches as [B, 1, P, .]
    positions: str | None = None  # None (default), "shifted"
    inv_freq: str | None = None  # None (the op's default), "yarn" (YaRN-scaled frequencies)
    causal: int = 1
    window: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    rope_base: float = 10000.0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    dtype: str = "float32"
    with_present: bool = True
    index_count: int | None = None  # key_indices [B, S, K] with K entries per query (DeepSeek sparse attention)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(num_heads=self.heads, causal=self.causal, window=self.window, softcap=self.softcap,
                    scale=self.scale, rope_base=self.rope_base, rope_interleaved=self.rope_interleaved,
                    rope_attention_scaling=self.rope_attention_scaling)


I = dict(rope_interleaved=1)  # DeepSeek checkpoints' rope layout
NARROW = dict(rank=64, nope=32, rope_dim=16, v_dim=32)  # dims a multiple of every SIMD width
CASES = [
    # cache modes and phases
    Case("prefill"),
    Case("prefill-b2-odd-s9", batch=2, seq=9, **I),
    Case("prefill-empty-past", past=0),
    Case("decode", seq=1, past=9),
    Case("decode-b3", batch=3, seq=1, past=17, **I),
    Case("chunk-s5-p12", seq=5, past=12),
    Case("chunk-odd-s7-p10-b2", batch=2, seq=7, past=10, **I),
    Case("shared-decode-b3", batch=3, seq=1, buffer=16, past_lengths=(5, 0, 15), **I),
    Case("shared-chunk-b2", batch=2, seq=4, buffer=20, past_lengths=(3, 9)),
    Case("shared-prefill-b2", batch=2, seq=6, buffer=8, past_lengths=(0, 0)),
    Case("shared-full-buffer", seq=3, buffer=10, past_lengths=(7,)),
    Case("bnsh-concat-b2", batch=2, seq=3, past=6, cache_rank=4, **I),
    Case("bnsh-shared-b2", batch=2, seq=2, buffer=12, past_lengths=(2, 7), cache_rank=4),
    # masks
    Case("window-chunk", seq=7, past=11, window=5),
    Case("window-shared-b2", batch=2, seq=3, buffer=24, past_lengths=(4, 17), window=6, **I),
    Case("bidirectional", seq=8, past=3, causal=0),
    # RoPE and scores
    Case("positions-shifted-decode", batch=2, seq=1, past=7, positions="shifted"),
    Case("yarn-inv-freq", seq=3, past=30, inv_freq="yarn", rope_attention_scaling=1.2, scale=0.3, **I),
    Case("rope-base-500000", past=40, rope_base=500000.0),
    Case("softcap", softcap=2.0, scale=1.0, past=4, **I),
    Case("scale", scale=0.3, past=2),
    # dims
    Case("odd-dims", rank=13, nope=5, rope_dim=6, v_dim=7, past=4),
    Case("rope-dim-2", rope_dim=2, past=3),
    Case("one-head", heads=1, past=5),
    Case("dv-ne-dn", nope=16, v_dim=4, seq=2, past=6),
    # without the present outputs
    Case("no-present-decode", seq=1, past=9, with_present=False),
    Case("no-present-shared", batch=2, seq=2, buffer=10, past_lengths=(1, 6), with_present=False),
    # the attention core's tile shapes (see the module doc)
    Case("decode-narrow-h8", heads=8, seq=1, past=150, **NARROW, **I),
    Case("decode-wide-h16-b2", batch=2, heads=16, seq=1, buffer=300, past_lengths=(250, 17), **NARROW),
    Case("decode-wide-h128", heads=128, seq=1, past=70, rank=32, nope=16, rope_dim=16, v_dim=16, **I),
    Case("prefill-large-window", heads=4, seq=70, past=40, rank=48, nope=16, rope_dim=16, v_dim=16, window=50),
    # the CPU matmul's widest tile (6 rows x 64 columns on AVX-512) and its column tail, on the weights' side in
    # both forms (output projection: 7 query rows x Dv; expansion: 12 key rows x Dn and x Dv)
    Case("chunk-wide-weights", heads=2, seq=7, past=5, rank=32, nope=64, rope_dim=16, v_dim=80, **I),
    # key_indices (DeepSeek sparse attention): random lists with repeats, padding (-1), future and hidden keys
    Case("indexed-prefill-b2", batch=2, seq=9, index_count=4, **I),
    Case("indexed-decode", seq=1, past=40, index_count=8, **I),
    Case("indexed-decode-wide-h16-b2", batch=2, heads=16, seq=1, buffer=300, past_lengths=(250, 17),
         index_count=64, **NARROW),
    Case("indexed-chunk-window", seq=6, past=20, window=9, index_count=7),
    Case("indexed-shared-b2", batch=2, seq=3, buffer=16, past_lengths=(4, 11), index_count=6, softcap=2.0),
    Case("indexed-more-than-keys", seq=4, past=2, index_count=20),
    Case("indexed-empty-lists", seq=3, past=5, index_count=0),
    Case("indexed-bidirectional", seq=5, past=3, causal=0, index_count=3),
    # decode with K >= 512: each token's list split into ranges of >= 256 keys, merged by log-sum-exp (a short
    # sequence's lists keep few keys: later ranges empty)
    Case("indexed-split-shared-b2", batch=2, seq=1, buffer=1000, past_lengths=(900, 20), index_count=600, **I),
]

# Low-precision variants of the cases that exercise distinct conversions (inputs, weights, cache written in
# the input type, output rounding) in both tile shapes.
_LOW_PRECISION_OF = ("prefill-b2-odd-s9", "decode-b3", "shared-chunk-b2", "yarn-inv-freq", "softcap",
                     "decode-narrow-h8", "decode-wide-h16-b2", "bnsh-shared-b2", "indexed-decode-wide-h16-b2",
                     "indexed-shared-b2", "chunk-wide-weights")
CASES += [dataclasses.replace(c, id=f"{c.id}-{dtype}", dtype=dtype)
          for dtype in ("float16", "bfloat16") for c in CASES if c.id in _LOW_PRECISION_OF]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


def yarn_inv_freq(dim: int, base: float) -> np.ndarray:
    """YaRN-style frequencies (factor 4): high frequencies kept, low ones divided, a ramp between."""
    freq = default_inv_freq(dim, base)
    ramp = np.clip((np.arange(dim // 2) - 1) / max(dim // 2 - 2, 1), 0, 1)
    return (freq * (1 - ramp) + freq / 4 * ramp).astype(np.float32)


@functools.lru_cache(maxsize=None)
def feeds_of(case_id: str) -> dict[str, np.ndarray]:
    """Random inputs of the case, named like the op's inputs, rounded to its dtype."""
    case = CASES_BY_ID[case_id]
    rng = np.random.default_rng(_seed(case_id))
    b, s, h, r = case.batch, case.seq, case.heads, case.rank
    normal = lambda *shape, scale=1.0: round_to(rng.standard_normal(shape) * scale, case.dtype)  # noqa: E731
    feeds = {"query": normal(b, s, h * (case.nope + case.rope_dim)), "latent": normal(b, s, r),
             "k_rope": normal(b, s, case.rope_dim), "w_uk": normal(h, r, case.nope, scale=r**-0.5),
             "w_uv": normal(h, r, case.v_dim, scale=r**-0.5)}
    offsets = np.zeros(b, dtype=np.int64)
    lead = (lambda x: x[:, None]) if case.cache_rank == 4 else (lambda x: x)
    if case.past is not None:
        feeds["past_latent"] = lead(normal(b, case.past, r))
        feeds["past_k_rope"] = lead(normal(b, case.past, case.rope_dim))
        offsets[:] = case.past
    if case.buffer is not None:
        lengths = np.array(case.past_lengths, dtype=np.int64)
        assert lengths.shape == (b,) and np.all(lengths + s <= case.buffer)
        latent, rope = normal(b, case.buffer, r), normal(b, case.buffer, case.rope_dim)
        for i, n in enumerate(lengths):  # stale slots: must not change anything
            latent[i, n:] = np.nan
            rope[i, n:] = np.nan
        feeds.update(past_latent=lead(latent), past_k_rope=lead(rope), past_lengths=lengths)
        offsets = lengths
    if case.positions == "shifted":
        feeds["position_ids"] = offsets[:, None] + np.arange(s)[None, :] + 3 + np.arange(b)[:, None] * 5
    if case.inv_freq == "yarn":
        feeds["rope_inv_freq"] = yarn_inv_freq(case.rope_dim, case.rope_base)
    if case.index_count is not None:
        # Each query lists K cache slots drawn from all of them (future keys and hidden buffer slots included:
        # ignored), one in four entries -1 (padding), with repeats; row 0 of the first batch lists nothing.
        total = case.buffer if case.buffer is not None else (case.past or 0) + s
        indices = rng.integers(0, total, size=(b, s, case.index_count))
        indices[rng.random(indices.shape) < 0.25] = -1
        if case.index_count > 1:
            indices[..., -1] = indices[..., 0]
        indices[0, 0] = -1
        feeds["key_indices"] = indices.astype(np.int64)
    return feeds


def model_of(case: Case) -> onnx.ModelProto:
    present = [n for n in MLA_INPUTS[5:] if n in feeds_of(case.id)]
    return mla_model(present, dtype=case.dtype, with_present=case.with_present, attrs=case.attrs,
                     cache_rank=case.cache_rank)


def oracle(case: Case, compute=np.float64):
    store = None if case.dtype == "float32" else (lambda x: round_to(x, case.dtype).astype(np.float64))
    return mla_oracle(**feeds_of(case.id), **case.attrs, store=store, compute=compute)


@functools.lru_cache(maxsize=None)
def expected(case_id: str) -> tuple[tuple[np.ndarray, ...], float, float]:
    """(oracle outputs in float64, output tolerance, rope-key tolerance for float32)."""
    case = CASES_BY_ID[case_id]
    ref = oracle(case)
    low = oracle(case, COMPUTE[case.dtype])
    baseline = [float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0)) for x, r in zip(low, ref)]
    y_max = float(np.abs(ref[0]).max(initial=0.0))
    if case.dtype == "float32":
        y_tol = FP32_ATOL + FP32_RTOL * y_max + 4 * baseline[0]
    else:
        y_tol = 2 * baseline[0] + EPS[case.dtype] * max(1.0, y_max)
    return ref, y_tol, FP32_ATOL + 4 * baseline[2]


def check(case: Case, outputs: list[np.ndarray], *, present_checked: bool) -> None:
    (y_ref, latent_ref, rope_ref), y_tol, rope_tol = expected(case.id)
    for output in outputs:  # caches in the input type (bfloat16 comes back as float32, see helpers)
        assert np.asarray(output).dtype == IO_NUMPY[case.dtype]
    y = np.asarray(outputs[0], dtype=np.float64)
    assert y.shape == y_ref.shape == (case.batch, case.seq, case.heads * case.v_dim)
    assert not np.isnan(y).any(), "NaN in the output"
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= y_tol, f"max |output - oracle| = {err:.3g} > {y_tol:.3g}"
    if not present_checked:
        return
    assert len(outputs) == 3
    feeds = feeds_of(case.id)
    tokens = case.buffer if case.buffer is not None else (case.past or 0) + case.seq
    lead = (case.batch, 1) if case.cache_rank == 4 else (case.batch,)
    for name, got, ref, width in (("present_latent", outputs[1], latent_ref, case.rank),
                                  ("present_k_rope", outputs[2], rope_ref, case.rope_dim)):
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == ref.shape == (*lead, tokens, width), f"{name}: R + Dr values per token"
        new = np.zeros(ref.shape, dtype=bool)  # the slots the new tokens go to
        if case.buffer is not None:
            for b, n in enumerate(feeds["past_lengths"]):
                new[b, ..., n:n + case.seq, :] = True
        else:
            new[..., tokens - case.seq:, :] = True
        np.testing.assert_array_equal(got[~new], ref[~new], err_msg=f"{name}: past or stale slots changed")
        if name == "present_latent":
            np.testing.assert_array_equal(got[new], ref[new], err_msg="the latent is stored as given")
        elif case.dtype == "float32":
            np.testing.assert_allclose(got[new], ref[new], atol=rope_tol, rtol=FP32_RTOL, err_msg=name)
        else:
            np.testing.assert_allclose(got[new], ref[new], atol=1e-6, rtol=EPS[case.dtype], err_msg=name)


KERNEL_PATHS = [f"kernel-{form}-{isa}" for form in FORMS for isa in ISAS]
PATHS = ["function-ort", "function-onnx-reference", "torch"] + KERNEL_PATHS


def run_path(case: Case, path: str) -> list[np.ndarray]:
    feeds = feeds_of(case.id)
    if path == "torch":
        return run_mla_torch(feeds, dtype=case.dtype, attrs=case.attrs)
    if path.startswith("kernel-"):
        _, form, isa = path.split("-")
        with mla_path(form), cpu_isa(isa):
            return run_kernel(model_of(case), feeds)
    runner = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference}
    return runner[path](model_of(case), feeds)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_oracle(case: Case, path: str):
    outputs = run_path(case, path)
    if path != "torch":
        assert len(outputs) == (3 if case.with_present else 1)
    check(case, outputs, present_checked=case.with_present or path == "torch")


@pytest.mark.parametrize("rows", [1, 3], ids=["one-row-chunks", "three-row-chunks"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype == "float32"])
def test_the_function_in_row_chunks_matches_oracle(case: Case, path: str, rows: int, monkeypatch):
    """The reference function's chunked form (a Loop over query rows, for calls whose [B, H, S, T] scores pass
    ops._bodies.CHUNK_ELEMENTS: long prompts), forced on every float32 case by a budget of `rows` rows; with
    key_indices each chunk takes its rows of the listed-key mask."""
    from onnxattn.ops import _bodies

    total = case.buffer if case.buffer is not None else (case.past or 0) + case.seq
    monkeypatch.setattr(_bodies, "CHUNK_ELEMENTS", rows * case.batch * case.heads * total)
    assert any(n.op_type == "If" for fn in model_of(case).functions for n in fn.node)
    check(case, run_path(case, path), present_checked=case.with_present)


@pytest.mark.parametrize("form", ["absorbed", "expanded"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype == "float32"])
def test_both_forms_of_the_function_match_oracle(case: Case, path: str, form: str, monkeypatch):
    """The reference function picks the absorbed or the expanded form per call by cost (decode absorbed, a prompt
    expanded, as the CPU kernel); each form, forced, on every float32 case."""
    from onnxattn.ops import mla

    monkeypatch.setattr(mla, "FUNCTION_FORM", form)
    check(case, run_path(case, path), present_checked=case.with_present)


def test_oracle_self_check():
    """The oracle against a hand-written decode step: one head, R = 2, Dn = 1, Dr = 2, Dv = 1, a one-token
    past, the new token at position 1 (inv_freq 1: the rope pair turns by 1 radian)."""
    w_uk, w_uv = np.array([[[1.0], [2.0]]]), np.array([[[0.5], [-1.0]]])
    past_latent, past_rope = np.array([[[1.0, 0.0]]]), np.array([[[0.0, 1.0]]])
    query, latent, k_rope = np.array([[[2.0, 1.0, 0.0]]]), np.array([[[0.0, 1.0]]]), np.array([[[1.0, 0.0]]])
    y, present_latent, present_rope = mla_oracle(query, latent, k_rope, w_uk, w_uv, past_latent, past_rope,
                                                 num_heads=1)
    c, s = np.cos(1.0), np.sin(1.0)
    q = np.array([2.0, c, s])  # q_nope, then (1, 0) turned by 1 radian
    keys = np.array([[1.0, 0.0, 1.0], [2.0, c, s]])  # [latent . w_uk ; rope key], the new key rotated
    values = np.array([0.5, -1.0])
    w = np.exp(keys @ q / np.sqrt(3.0))
    np.testing.assert_allclose(y[0, 0, 0], w @ values / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(present_rope[0, 1], [c, s], rtol=1e-12)
    np.testing.assert_array_equal(present_latent[0], [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.index_count and c.dtype == "float32"])
def test_key_indices_matter(case_id: str):
    """The lists change the output (each indexed case attends to fewer keys than its mask allows), and a query
    whose list holds nothing visible gives zeros."""
    case = CASES_BY_ID[case_id]
    feeds = feeds_of(case_id)
    listed = oracle(case)[0]
    dense = mla_oracle(**{k: v for k, v in feeds.items() if k != "key_indices"}, **case.attrs)[0]
    assert np.abs(listed - dense).max() > 1e-3
    np.testing.assert_array_equal(listed[0, 0], 0.0)  # row 0 of the first batch lists nothing


def test_key_indices_hand_computed():
    """One head, Dn = Dr = 2 and R = 2 with identity up-projections: a decode query listing only key 1 (with
    padding entries and a repeat) outputs that key's value; listing keys 0 and 1 weighs them by the softmax
    of their scores; its own key (2) is left out unless listed."""
    eye = np.eye(2)[None]
    past_latent, past_rope = np.array([[[1.0, 0.0], [0.0, 2.0]]]), np.zeros((1, 2, 2))
    query, latent, k_rope = np.array([[[1.0, 1.0, 0.0, 0.0]]]), np.zeros((1, 1, 2)), np.zeros((1, 1, 2))
    args = (query, latent, k_rope, eye, eye, past_latent, past_rope)
    one = mla_oracle(*args, key_indices=np.array([[[1, -1, 1, -7]]]), num_heads=1)[0]
    np.testing.assert_allclose(one[0, 0], [0.0, 2.0], rtol=1e-12)
    two = mla_oracle(*args, key_indices=np.array([[[0, 1]]]), num_heads=1)[0]
    w = np.exp(np.array([1.0, 2.0]) / 2.0)  # scores q . k / sqrt(Dn + Dr) = 1/2 and 2/2
    np.testing.assert_allclose(two[0, 0], (w[0] * np.array([1.0, 0.0]) + w[1] * np.array([0.0, 2.0])) / w.sum(),
                               rtol=1e-12)
    feeds = dict(zip(MLA_INPUTS, (*(x.astype(np.float32) for x in args), None, None, None,
                                  np.array([[[1, -1, 1, -7]]], dtype=np.int64))))
    feeds = {k: v for k, v in feeds.items() if v is not None}
    model = mla_model(["past_latent", "past_k_rope", "key_indices"], attrs=dict(num_heads=1))
    for run in (run_function, run_kernel):
        np.testing.assert_allclose(run(model, feeds)[0][0, 0], [0.0, 2.0], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Every signature (present optional inputs and outputs) on every path


def _case_of_overload(overload: str) -> Case:
    features = set(overload.split("+")) if overload else set()
    fields: dict[str, Any] = dict(batch=2, seq=3, with_present="present" in features, rope_interleaved=1)
    if "shared" in features:
        fields.update(buffer=9, past_lengths=(2, 5))
    elif "past" in features:
        fields.update(past=4)
    fields.update(positions="shifted" if "pos" in features else None,
                  inv_freq="yarn" if "inv_freq" in features else None,
                  index_count=5 if "index" in features else None)
    return Case(f"overload-{overload or 'plain'}", **fields)


OVERLOAD_CASES = {overload: _case_of_overload(overload) for overload in mla.SPEC.overloads}
CASES_BY_ID.update({c.id: c for c in OVERLOAD_CASES.values()})
OVERLOAD_PARAMS = [pytest.param(o, id=o or "plain") for o in mla.SPEC.overloads]


@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_is_tagged_and_checked(overload: str):
    model = model_of(OVERLOAD_CASES[overload])
    (node,) = ops.onnxattn_nodes(model)
    assert node.overload == overload
    assert [(f.name, f.overload) for f in model.functions] == [(MLA, overload)]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference", "torch", "kernel-absorbed-avx512",
                                  "kernel-expanded-avx512"])
@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_matches_oracle(overload: str, path: str):
    case = OVERLOAD_CASES[overload]
    check(case, run_path(case, path), present_checked=case.with_present or path == "torch")


# ---------------------------------------------------------------------------------------------------------
# Shared-buffer mode in place, determinism


@pytest.mark.parametrize("path", ["function-ort", "kernel"])
@pytest.mark.parametrize("case_id", ["shared-chunk-b2", "bnsh-shared-b2", "decode-wide-h16-b2-float16"])
def test_shared_buffer_updated_in_place_through_io_binding(case_id: str, path: str):
    """present_latent/present_k_rope bound (I/O binding) to the very buffers fed as the pasts: the new tokens
    land at past_lengths[b], everything else (valid prefix, stale NaN slots) stays, the output is the
    oracle's."""
    case = CASES_BY_ID[case_id]
    feeds = feeds_of(case_id)
    model = model_of(case)
    session = kernel_session(model, profile=True) if path == "kernel" else function_session(model)
    buffers = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name].copy()) for name in ("past_latent", "past_k_rope")}
    binding = session.io_binding()
    for name, value in feeds.items():
        if name in buffers:
            binding.bind_ortvalue_input(name, buffers[name])
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output("output")
    binding.bind_ortvalue_output("present_latent", buffers["past_latent"])
    binding.bind_ortvalue_output("present_k_rope", buffers["past_k_rope"])
    session.run_with_iobinding(binding)
    output = binding.copy_outputs_to_cpu()[0]
    if path == "kernel":
        assert MLA in kernel_ops_run(session), "the kernel did not run"
    check(case, [output, buffers["past_latent"].numpy(), buffers["past_k_rope"].numpy()], present_checked=True)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case_id", ["decode-wide-h16-b2", "prefill-large-window"])
def test_kernel_is_bitwise_deterministic_across_runs_and_threads(case_id: str, form: str):
    model, feeds = model_of(CASES_BY_ID[case_id]), feeds_of(case_id)
    with mla_path(form):
        one, two = kernel_session(model, threads=1, profile=True), kernel_session(model, threads=2)
        reference = one.run(None, feeds)
        assert MLA in kernel_ops_run(one), "the kernel did not run"
        for outputs in (one.run(None, feeds), two.run(None, feeds), two.run(None, feeds)):
            for x, y in zip(reference, outputs):
                np.testing.assert_array_equal(x, y)
