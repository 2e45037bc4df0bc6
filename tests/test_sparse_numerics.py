"""onnxattn::NativeSparseAttention and onnxattn::SparseRoutedAttention against the numpy oracles
(tests/oracle_sparse.py) on every path: the reference function in onnxruntime without the library and in
onnx.reference (inlined), the torch functional, and our CPU kernel under each ISA variant (run_kernel proves
from onnxruntime's profile that the kernel ran).

The matrix is data: one row per behaviour. Inputs lie on a grid (sparse_helpers.grid), so dot-product
selection scores are exact on every path and the selections (selected_blocks / _tokens / _segments) must
be equal, ties included. Tolerances on Y (outputs of magnitude ~1, STYLE.md #10): float32 1e-5 absolute +
1e-5 relative (float32 softmax averages over < 100 keys err ~1e-6; a wrong block or mask errs ~1e-1);
float16/bfloat16: the oracle sees the same rounded inputs and every path accumulates in float32, so the
error is the final rounding: one ulp of the largest output plus 1e-4.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import zlib
from typing import Any

import numpy as np
import pytest

from helpers import ISAS, cpu_isa, run_function, run_kernel, run_onnx_reference
from oracle_sparse import nsa_oracle, routed_oracle
from sparse_helpers import (  # noqa: F401  (one_torch_thread: an autouse fixture)
    NSA,
    ROUTED,
    feeds_in,
    grid,
    nsa_attrs,
    one_torch_thread,
    one_node_model,
    routed_attrs,
    run_nsa_torch,
    run_routed_torch,
)
from onnxattn import ops

EPS = {"float32": 0.0, "float16": 2.0**-10, "bfloat16": 2.0**-7}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    op: str
    attrs: tuple  # (name, value) pairs over the spec's defaults
    batch: int = 1
    q_heads: int = 4
    kv_heads: int = 2
    q_len: int = 9
    kv_len: int = 9
    head_dim: int = 16
    v_head_dim: int | None = None
    gates: tuple | None = None  # NSA: gate shape (values in (0, 1))
    compressed: bool = False  # NSA: compressed_key/value of Skv // block_size tokens
    positions: str | None = None  # routed: None, "docs" (resets at 0, 5, 11), "batch" ([B, Skv], shifted)
    dtype: str = "float32"

    @property
    def attributes(self) -> dict[str, Any]:
        return (nsa_attrs if self.op == NSA else routed_attrs)(**dict(self.attrs))


def nsa(id, **kw):
    keys = {f.name for f in dataclasses.fields(Case)}
    return Case(id, NSA, tuple((k, v) for k, v in kw.items() if k not in keys), **{k: v for k, v in kw.items() if k in keys})


def routed(id, **kw):
    keys = {f.name for f in dataclasses.fields(Case)}
    return Case(id, ROUTED, tuple((k, v) for k, v in kw.items() if k not in keys),
                **{k: v for k, v in kw.items() if k in keys})


SEED = dict(block_size=4, top_blocks=2, top_tokens=4, window=3)  # non-causal, per head
PAPER = dict(block_size=4, top_blocks=4, window=5, causal=1, shared_selection=1, sink_blocks=1, local_blocks=1)
MOBA = dict(segment_size=4, top_k=3, causal=1, cosine=0, rope=1, rope_before_routing=1)
CASES = [
    # the seed's configuration: non-causal block + fine paths, per-head selection, trailing partial block dropped
    nsa("seed", kv_len=13, q_len=13, gates=(4, 1, 3), **SEED),
    nsa("seed-no-gates-sq-ne-skv", q_len=5, kv_len=18, **SEED),
    nsa("seed-b2-gates-full", batch=2, q_len=6, kv_len=11, gates=(2, 4, 6, 3), **SEED),
    nsa("seed-gates-per-branch", kv_len=10, q_len=10, gates=(3,), **SEED),
    nsa("seed-gates-b1s1", batch=2, kv_len=10, q_len=10, gates=(2, 1, 10, 1), **SEED),
    nsa("seed-mha-d32-dv8", q_heads=3, kv_heads=3, head_dim=32, v_head_dim=8, kv_len=17, q_len=17, **SEED),
    # the paper's decoder: causal, GQA-shared selection from the compression branch, sink + local blocks
    nsa("paper-prefill", q_len=21, kv_len=21, compressed=True, gates=(1, 4, 21, 3), **PAPER),
    nsa("paper-decode", q_len=1, kv_len=37, compressed=True, gates=(1, 4, 1, 3), **PAPER),
    nsa("paper-chunk-b2", batch=2, q_len=6, kv_len=30, compressed=True, gates=(2, 4, 6, 3), **PAPER),
    nsa("paper-mqa-g8", q_heads=8, kv_heads=1, q_len=14, kv_len=14, compressed=True, **PAPER),
    # fewer keys than a block: no compressed token yet (a short prompt; the function failed in onnxruntime, whose
    # ReduceMax/ReduceSum leave an empty axis empty under keepdims=1)
    nsa("paper-shorter-than-a-block", q_len=3, kv_len=3, compressed=True, gates=(1, 4, 3, 3), **PAPER),
    nsa("paper-decode-in-the-first-block", batch=2, q_len=1, kv_len=2, compressed=True, **PAPER),
    nsa("causal-mean-keys", q_len=19, kv_len=19, **PAPER),
    nsa("causal-per-head-fine", q_len=12, kv_len=15, block_size=4, top_blocks=3, top_tokens=5, causal=1),
    # one branch at a time, edge sizes
    nsa("window-only", q_len=8, kv_len=8, top_blocks=0, window=3),
    nsa("fine-only-causal", q_len=7, kv_len=11, top_blocks=0, top_tokens=3, causal=1),
    nsa("compression-only", q_len=16, kv_len=16, top_blocks=0, block_size=4, causal=1, compressed=True),
    nsa("block-size-1", q_len=6, kv_len=6, block_size=1, top_blocks=3, causal=1),
    nsa("all-blocks", q_len=7, kv_len=16, block_size=4, top_blocks=9),
    nsa("shorter-than-a-block", q_len=3, kv_len=3, block_size=4, top_blocks=2, top_tokens=2),
    nsa("large-shared-chunks", q_heads=8, kv_heads=1, q_len=130, kv_len=130, head_dim=16, block_size=8,
        top_blocks=5, window=20, causal=1, shared_selection=1, sink_blocks=1, local_blocks=1),
    nsa("large-per-head-fine", q_heads=4, kv_heads=2, q_len=70, kv_len=90, head_dim=32, block_size=16, top_blocks=3,
        top_tokens=24, window=9),
    # more queries than keys: rows at p < 0 have no block (the function's integer Div truncated p // 2 to 0 for
    # p = -1 and listed block 0 there)
    nsa("causal-more-queries-than-keys", q_len=9, kv_len=5, block_size=2, top_blocks=2, top_tokens=2, window=2,
        causal=1),
    # odd blocks (means over 3 keys), the partial last block forced, sink and local blocks
    nsa("causal-odd-blocks-sink-local", q_len=16, kv_len=23, block_size=3, top_blocks=4, window=2, causal=1,
        sink_blocks=1, local_blocks=1, gates=(1, 4, 16, 3)),
    # block-routed: the seed (non-causal, cosine, RoPE after routing) and MoBA (causal, dot, RoPE before)
    routed("seed", q_len=13, kv_len=13, segment_size=4, top_k=2),
    routed("seed-rope-after-docs", q_len=13, kv_len=13, segment_size=4, top_k=2, rope=1, positions="docs"),
    routed("moba-prefill", q_len=17, kv_len=17, **MOBA),
    routed("moba-decode-b2", batch=2, q_len=1, kv_len=23, positions="batch", **MOBA),
    routed("moba-chunk", q_len=5, kv_len=23, **MOBA),
    routed("moba-docs-interleaved-partial", q_len=16, kv_len=16, positions="docs", rope_interleaved=1, rotary_dim=8,
           rope_attention_scaling=0.9, **MOBA),
    routed("causal-cosine-rope-after-mqa", q_heads=4, kv_heads=1, q_len=14, kv_len=14, segment_size=3, top_k=2,
           causal=1, rope=1),
    routed("top-k-covers-all", q_len=9, kv_len=9, segment_size=4, top_k=5, cosine=0),
    routed("scale-dv8", q_len=10, kv_len=10, v_head_dim=8, segment_size=2, top_k=2, scale=0.3),
    routed("large-moba", q_heads=8, kv_heads=2, q_len=130, kv_len=130, head_dim=32, segment_size=8, top_k=4,
           causal=1, cosine=0, rope=1, rope_before_routing=1),
    # more queries than keys (rope=0): the function failed in onnxruntime (its RoPE query positions, a Slice
    # from Skv - Sq < 0, counted from the end) and listed segment 0 for the row at p = -1 (Div truncates)
    routed("causal-more-queries-than-keys", q_len=9, kv_len=5, segment_size=2, top_k=2, causal=1, cosine=0),
    routed("more-queries-than-keys", q_len=8, kv_len=3, segment_size=2, top_k=1),
]
_LOW_PRECISION_OF = ("seed", "paper-prefill", "paper-decode", "causal-per-head-fine", "moba-prefill", "moba-decode-b2")
CASES += [dataclasses.replace(c, id=f"{c.id}-{dtype}", dtype=dtype)
          for dtype in ("float16", "bfloat16") for c in CASES if c.id in _LOW_PRECISION_OF]
CASES = [dataclasses.replace(c, id=f"{'nsa' if c.op == NSA else 'routed'}-{c.id}") for c in CASES]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


@functools.lru_cache(maxsize=None)
def arrays_of(case_id: str) -> dict[str, np.ndarray]:
    """The case's inputs (grid values, float32; positions int64)."""
    c = CASES_BY_ID[case_id]
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))  # not hash(): salted per process
    dv = c.v_head_dim or c.head_dim
    arrays = {"Q": grid(rng, (c.batch, c.q_heads, c.q_len, c.head_dim)),
              "K": grid(rng, (c.batch, c.kv_heads, c.kv_len, c.head_dim)),
              "V": grid(rng, (c.batch, c.kv_heads, c.kv_len, dv))}
    if c.gates is not None:
        arrays["gates"] = np.round(rng.uniform(0.1, 0.9, c.gates) * 16).astype(np.float32) / 16
    if c.compressed:
        nc = c.kv_len // c.attributes["block_size"]
        arrays["compressed_key"] = grid(rng, (c.batch, c.kv_heads, nc, c.head_dim))
        arrays["compressed_value"] = grid(rng, (c.batch, c.kv_heads, nc, dv))
    if c.positions == "docs":
        starts = [0, 5, 11]
        arrays["position_ids"] = np.array([[j - max(s for s in starts if s <= j) for j in range(c.kv_len)]])
    elif c.positions == "batch":
        arrays["position_ids"] = np.arange(c.kv_len)[None] + np.arange(c.batch)[:, None] * 3
    return arrays


def model_of(case: Case, outputs: tuple[str, ...] | None = None):
    arrays = arrays_of(case.id)
    if outputs is None:
        outputs = ("Y", "selected_blocks", "selected_tokens") if case.op == NSA else ("Y", "selected_segments")
    shapes = {"gates": case.gates} if case.gates is not None else None
    return one_node_model(case.op, list(arrays), list(outputs), dtype=case.dtype, attrs=case.attributes, shapes=shapes)


@functools.lru_cache(maxsize=None)
def expected(case_id: str):
    """Oracle outputs (float64 Y, int64 selections) on the inputs rounded to the case's dtype."""
    c = CASES_BY_ID[case_id]
    feeds = feeds_in(c.dtype, **arrays_of(case_id))
    rounded = {n: np.asarray(v, np.float64) if n != "position_ids" else v for n, v in feeds.items()}
    if c.op == NSA:
        return nsa_oracle(rounded["Q"], rounded["K"], rounded["V"], rounded.get("gates"), rounded.get("compressed_key"),
                          rounded.get("compressed_value"), **c.attributes)
    return routed_oracle(rounded["Q"], rounded["K"], rounded["V"], rounded.get("position_ids"), **c.attributes)


# Scores within this (relative) distance of each other may be a tie in exact arithmetic that float32 and float64
# round apart (exp's probabilities, unit-length centroids, means over 3 keys); the float32 score errors are ~1e-6
# relative, while scores that differ in exact arithmetic differ by far more (grid inputs: dot products on a 1/16
# grid, over at most a few keys' mean).
SCORE_TIE_TOL = 1e-5


def expected_preferring(case_id: str, selections) -> tuple:
    """The oracle's outputs when it takes `selections` (another implementation's, in the outputs' layout)
    wherever they are also a top-k up to SCORE_TIE_TOL (oracle_sparse's `prefer`), its own choice elsewhere."""
    c = CASES_BY_ID[case_id]
    feeds = feeds_in(c.dtype, **arrays_of(case_id))
    rounded = {n: np.asarray(v, np.float64) if n != "position_ids" else v for n, v in feeds.items()}
    prefer = dict(prefer=tuple(np.asarray(s) for s in selections), tie_tol=SCORE_TIE_TOL)
    if c.op == NSA:
        return nsa_oracle(rounded["Q"], rounded["K"], rounded["V"], rounded.get("gates"), rounded.get("compressed_key"),
                          rounded.get("compressed_value"), **c.attributes, **prefer)
    return routed_oracle(rounded["Q"], rounded["K"], rounded["V"], rounded.get("position_ids"), **c.attributes,
                         **prefer)


def run_path(case: Case, path: str) -> list[np.ndarray]:
    feeds = feeds_in(case.dtype, **arrays_of(case.id))
    if path == "torch":
        runner = run_nsa_torch if case.op == NSA else run_routed_torch
        return runner(feeds, case.attributes, case.dtype, outputs=3 if case.op == NSA else 2)
    if path.startswith("kernel-"):
        with cpu_isa(path.removeprefix("kernel-")), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # run_kernel prefills int outputs with NaN
            return run_kernel(model_of(case), feeds)
    runner = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference}[path]
    return runner(model_of(case), feeds)


def check(case: Case, outputs: list[np.ndarray], ref=None) -> None:
    """`outputs` against the oracle's (`ref`, default expected(case.id)): Y within the tolerance rule above,
    the selections equal."""
    ref = expected(case.id) if ref is None else ref
    y, y_ref = np.asarray(outputs[0], np.float64), ref[0]
    assert y.shape == y_ref.shape, f"output shape {y.shape}, expected {y_ref.shape}"
    assert not np.isnan(y).any(), "NaN in the output"
    y_max = float(np.abs(y_ref).max(initial=0.0))
    tol = 1e-5 + 1e-5 * y_max if case.dtype == "float32" else 1e-4 + EPS[case.dtype] * max(1.0, y_max)
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= tol, f"max |Y - oracle| = {err:.3g} > {tol:.3g}"
    names = ("selected_blocks", "selected_tokens") if case.op == NSA else ("selected_segments",)
    for name, got, want in zip(names, outputs[1:], ref[1:]):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


PATHS = ["function-ort", "function-onnx-reference", "torch"] + [f"kernel-{isa}" for isa in ISAS]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_oracle(case: Case, path: str):
    if path == "function-onnx-reference" and case.dtype != "float32":
        pytest.skip("onnx.reference: float32 only (its bfloat16/float16 Casts go through ml_dtypes slowly)")
    check(case, run_path(case, path))


@pytest.mark.parametrize("rows", [1, 3], ids=["one-row-chunks", "three-row-chunks"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype == "float32"])
def test_the_function_in_row_chunks_matches_oracle(case: Case, path: str, rows: int, monkeypatch):
    """The reference functions in their chunked form (a Loop over query rows, for calls whose [B, Hq, Sq, Skv]
    logits pass ops._bodies.CHUNK_ELEMENTS: long contexts), forced by a budget of `rows` rows: selections,
    compression branch, gates and all three outputs per chunk."""
    from onnxattn.ops import _bodies

    monkeypatch.setattr(_bodies, "CHUNK_ELEMENTS", rows * case.batch * case.q_heads * case.kv_len)
    assert any(n.op_type == "If" for fn in model_of(case).functions for n in fn.node)
    check(case, run_path(case, path))


# ---- every signature (present optional inputs and outputs) on the kernel and both function runners ----

NSA_SIGNATURES = [  # (inputs, outputs) per overload
    (inputs, outputs)
    for inputs in (("Q", "K", "V"), ("Q", "K", "V", "gates"), ("Q", "K", "V", "compressed_key", "compressed_value"),
                   ("Q", "K", "V", "gates", "compressed_key", "compressed_value"))
    for outputs in (("Y",), ("Y", "selected_blocks"), ("Y", "selected_blocks", "selected_tokens"))
]
ROUTED_SIGNATURES = [(inputs, outputs) for inputs in (("Q", "K", "V"), ("Q", "K", "V", "position_ids"))
                     for outputs in (("Y",), ("Y", "selected_segments"))]


def test_signatures_cover_the_overloads():
    def overload(op, inputs, outputs):
        return next(ops.onnxattn_nodes(one_node_model(op, inputs, outputs, attrs=nsa_attrs(block_size=4)
                                                      if op == NSA else routed_attrs()))).overload
    assert sorted(overload(NSA, *s) for s in NSA_SIGNATURES) == sorted(ops.get_spec(NSA).overloads)
    assert sorted(overload(ROUTED, *s) for s in ROUTED_SIGNATURES) == sorted(ops.get_spec(ROUTED).overloads)


SIGNATURES = [(NSA, *s) for s in NSA_SIGNATURES] + [(ROUTED, *s) for s in ROUTED_SIGNATURES]


@pytest.mark.parametrize("op, inputs, outputs", [
    pytest.param(*s, id=f"{s[0]}-" + ("+".join(s[1][3:] + s[2][1:]) or "plain")) for s in SIGNATURES])
def test_every_signature_matches_oracle(op, inputs, outputs):
    base_id = ("nsa-paper-chunk-b2" if "compressed_key" in inputs else "nsa-seed-b2-gates-full") if op == NSA \
        else "routed-moba-decode-b2"
    base = CASES_BY_ID[base_id]
    case = dataclasses.replace(base, gates=base.gates if "gates" in inputs else None)
    arrays = {n: a for n, a in arrays_of(base_id).items() if n in inputs}
    a = {n: np.asarray(v, np.float64) if n != "position_ids" else v for n, v in arrays.items()}
    if op == NSA:
        ref = nsa_oracle(a["Q"], a["K"], a["V"], a.get("gates"), a.get("compressed_key"), a.get("compressed_value"),
                         **case.attributes)
    else:
        ref = routed_oracle(a["Q"], a["K"], a["V"], a.get("position_ids"), **case.attributes)
    model = one_node_model(op, inputs, outputs, attrs=case.attributes,
                           shapes={"gates": case.gates} if "gates" in inputs else None)
    feeds = feeds_in("float32", **arrays)
    for run in (run_kernel, run_function, run_onnx_reference):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = run(model, feeds)
        assert len(got) == len(outputs), run.__name__
        np.testing.assert_allclose(got[0], ref[0], atol=1e-5, rtol=1e-5, err_msg=run.__name__)
        for index in range(1, len(outputs)):
            np.testing.assert_array_equal(got[index], ref[index], err_msg=f"{run.__name__}: {outputs[index]}")


@pytest.mark.parametrize("case_id", ["nsa-large-shared-chunks", "routed-large-moba", "nsa-large-per-head-fine"])
def test_kernel_is_bitwise_deterministic_across_runs_and_threads(case_id):
    from helpers import kernel_session

    case = CASES_BY_ID[case_id]
    model, feeds = model_of(case), feeds_in(case.dtype, **arrays_of(case_id))
    results = [kernel_session(model, threads).run(None, feeds) for threads in (1, 1, 2)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
