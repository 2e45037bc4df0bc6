"""onnxattn::LightningIndexer against the numpy oracle (tests/oracle_indexer.py) on every path: the reference
function in onnxruntime without the library and in onnx.reference (inlined), the torch functional
(onnxattn.nn.functional.lightning_indexer), and our CPU kernel under each ISA variant (ONNXATTN_CPU_ISA;
run_kernel proves from onnxruntime's profile that the kernel ran).

The matrix is data: CASES, one row per behaviour. Two kinds of inputs:
- grid values (multiples of 1/4 within +-2, weights too; scale a power of two: the default 1/sqrt(D) for D = 1,
  4, 16, 64, else set): every product and partial sum of a score is a float32 number, so every path computes
  the float64 scores exactly, in any dtype and any summation order. Picks must then EQUAL the oracle's, and the
  many exact ties (relu zeros, duplicated keys, zero queries) test the lower-position rule.
- unit-normal values ("normal"): scores round differently per path, so picks must be a top-k of the float64
  scores within oracle_indexer.score_tolerance (the worst-case float32 error of a score difference: 2 (D + H + 4)
  roundings relative to the row's sum of magnitudes). float16 / bfloat16 inputs are rounded first and the oracle
  sees the rounded values: every path upcasts them exactly and scores in float32, so the same bound holds for
  every dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import ISAS, ONNX_TYPES, cpu_isa, kernel_session, round_to, run_function, run_kernel, run_onnx_reference
from oracle_indexer import assert_topk_within, indexer_oracle
from onnxattn import ops

OP = "LightningIndexer"
INPUTS = ("query", "key", "weights", "past_lengths")
RANKS = dict(query=3, weights=3, past_lengths=1, key_indices=3)
NP_IO = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}  # bf16 travels as float32


def indexer_model(inputs: Sequence[str] = INPUTS[:3], *, dtype: str = "float32", key_rank: int = 4,
                  attrs: Mapping[str, Any] | None = None, shapes: Mapping[str, Sequence | None] | None = None,
                  elem_types: Mapping[str, int] | None = None, attach: bool = True,
                  opset: int = 18) -> onnx.ModelProto:
    """key_indices = LightningIndexer(inputs) (query, key, weights[, past_lengths]). Declared shapes are symbolic
    per (name, axis) unless `shapes` says otherwise (None: unknown rank); `elem_types` overrides an input's type.
    bfloat16 query and key are graph inputs of float32 cast inside. `attrs` is written as given."""
    ranks = dict(RANKS, key=key_rank)
    declared: dict[str, Any] = {n: tuple(f"{n}_{a}" for a in range(r)) for n, r in ranks.items()}
    declared.update(shapes or {})
    types = dict(query=ONNX_TYPES[dtype], key=ONNX_TYPES[dtype], weights=TensorProto.FLOAT,
                 past_lengths=TensorProto.INT64)
    types.update(elem_types or {})
    nodes, graph_inputs, node_inputs = [], [], []
    for name in inputs:
        if types[name] == TensorProto.BFLOAT16:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, declared[name]))
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            node_inputs.append(name + "_bf16")
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, types[name], declared[name]))
            node_inputs.append(name)
    nodes.append(helper.make_node(OP, node_inputs, ["key_indices"], domain=ops.DOMAIN, **dict(attrs or {})))
    output = helper.make_tensor_value_info("key_indices", TensorProto.INT64, declared["key_indices"])
    model = helper.make_model(helper.make_graph(nodes, "indexer", graph_inputs, [output]),
                              opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    if attach:
        ops.attach_functions(model)
    return model


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    batch: int = 1
    q_len: int = 5
    kv_len: int = 9  # T: the keys (the buffer's length in shared mode)
    heads: int = 4
    head_dim: int = 16
    top_k: int = 4
    scale: float = 0.0
    key_rank: int = 4
    past: tuple | None = None  # shared-buffer mode: past_lengths per batch row (hidden slots hold NaN)
    values: str = "grid"  # "grid", "normal" (tolerance check), "dup-keys" (key t = key t % 3), "zero-query",
    # "nan-keys" (NaN in some visible keys: their scores are NaN, never picked)
    weights: str = "grid"  # or "negative"
    dtype: str = "float32"

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(num_heads=self.heads, top_k=self.top_k, scale=float(self.scale))

    @property
    def inputs(self) -> tuple[str, ...]:
        return INPUTS if self.past is not None else INPUTS[:3]


CASES = [
    Case("prefill", q_len=9, kv_len=9),
    Case("chunk-sq-ne-t-b2", batch=2, q_len=5, kv_len=13, top_k=6),
    Case("decode-b3", batch=3, q_len=1, kv_len=37, top_k=8),
    Case("odd-h3-d5", q_len=7, kv_len=23, heads=3, head_dim=5, top_k=5, scale=0.5),
    Case("h1-relu-zero-ties", q_len=6, kv_len=11, heads=1, top_k=3),
    Case("top-k-gt-t", batch=2, q_len=4, kv_len=6, top_k=10),
    Case("top-k-eq-t", q_len=5, kv_len=8, top_k=8),
    Case("top-k-1", batch=2, q_len=5, kv_len=12, top_k=1),
    Case("shared-b3-nan-hidden", batch=3, q_len=3, kv_len=20, past=(0, 7, 17), top_k=5),
    Case("shared-decode-b4", batch=4, q_len=1, kv_len=16, past=(0, 3, 15, 9), top_k=4),
    Case("shared-chunk-b2", batch=2, q_len=9, kv_len=80, past=(30, 71), top_k=16),
    Case("shared-key-rank3", batch=2, q_len=2, kv_len=10, past=(4, 1), key_rank=3, top_k=3),
    Case("key-rank3", batch=2, q_len=5, kv_len=13, key_rank=3, top_k=6),
    Case("scale-2", q_len=6, kv_len=14, scale=2.0, top_k=5),
    Case("ties-duplicated-keys", batch=2, q_len=6, kv_len=15, values="dup-keys", top_k=4),
    Case("ties-zero-query", q_len=4, kv_len=10, values="zero-query", top_k=3),
    Case("negative-weights", batch=2, q_len=5, kv_len=16, heads=2, weights="negative", top_k=2),
    # early rows see fewer keys than top_k once the NaN ones are out: padding follows the finite picks
    Case("nan-visible-keys", batch=2, q_len=6, kv_len=12, values="nan-keys", top_k=5),
    Case("large", batch=2, q_len=40, kv_len=600, heads=8, head_dim=64, top_k=64),
    Case("t-prime-1031", q_len=5, kv_len=1031, heads=2, head_dim=16, top_k=129),
    Case("normal-chunk-b2", batch=2, q_len=7, kv_len=50, values="normal", top_k=9),
    Case("normal-large", q_len=40, kv_len=600, heads=8, head_dim=64, top_k=64, values="normal"),
    Case("normal-shared-d8", batch=2, q_len=3, kv_len=40, past=(10, 30), head_dim=8, values="normal", top_k=8),
    # the CPU kernel's one-query blocks (decode, and any S once H > 128), over several key tiles with a ragged last
    Case("decode-h64-t300-b2", batch=2, q_len=1, kv_len=300, heads=64, head_dim=16, top_k=20),
    Case("shared-decode-h64", batch=2, q_len=1, kv_len=200, heads=64, head_dim=16, past=(150, 7), top_k=9),
    Case("h160-one-query-blocks", q_len=6, kv_len=70, heads=160, head_dim=8, top_k=7),
]
_LOW_PRECISION_OF = ("chunk-sq-ne-t-b2", "decode-b3", "shared-b3-nan-hidden", "nan-visible-keys",
                     "ties-duplicated-keys", "large", "normal-chunk-b2", "normal-shared-d8")
CASES += [dataclasses.replace(c, id=f"{c.id}-{dtype}", dtype=dtype)
          for dtype in ("float16", "bfloat16") for c in CASES if c.id in _LOW_PRECISION_OF]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def grid(rng: np.random.Generator, shape, step: float = 0.25, bound: float = 2.0) -> np.ndarray:
    return np.clip(np.round(rng.standard_normal(shape) / step) * step, -bound, bound).astype(np.float32)


@functools.lru_cache(maxsize=None)
def arrays_of(case_id: str) -> dict[str, np.ndarray]:
    """The case's inputs as float32 (int64 past_lengths), before rounding to the case's dtype."""
    c = CASES_BY_ID[case_id]
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))  # not hash(): salted per process
    b, s, t, h, d = c.batch, c.q_len, c.kv_len, c.heads, c.head_dim
    if c.values == "normal":
        query = rng.standard_normal((b, s, h * d)).astype(np.float32)
        key = rng.standard_normal((b, t, d)).astype(np.float32)
        weights = (rng.standard_normal((b, s, h)) * h**-0.5).astype(np.float32)
    else:
        query, key, weights = grid(rng, (b, s, h * d)), grid(rng, (b, t, d)), grid(rng, (b, s, h))
    if c.values == "dup-keys":
        key = key[:, np.arange(t) % 3]
    if c.values == "zero-query":
        query = np.zeros_like(query)
    if c.values == "nan-keys":
        key[0, [1, 4, 6, 7]] = np.nan
        key[1, [0, 9], 3] = np.nan  # one channel: the whole dot product is NaN
    if c.weights == "negative":
        weights = -np.abs(weights) - 0.25
    out = {"query": query, "key": key, "weights": weights}
    if c.past is not None:
        past = np.asarray(c.past, np.int64)
        assert (past + s <= t).all(), f"{case_id}: past_lengths + S must fit the buffer"
        for row, length in enumerate(past):
            key[row, length + s:] = np.nan  # hidden slots may hold anything
        out["past_lengths"] = past
    if c.key_rank == 4:
        out["key"] = key[:, None]
    return out


@functools.lru_cache(maxsize=None)
def _feeds(case_id: str) -> dict[str, np.ndarray]:
    c = CASES_BY_ID[case_id]
    arrays = arrays_of(case_id)
    return {n: round_to(v, c.dtype) if n in ("query", "key") else v for n, v in arrays.items()}


def feeds_of(case_id: str) -> dict[str, np.ndarray]:
    """The feeds in the graph's input types (fp16 as float16, bf16 as bfloat16-representable float32)."""
    return {n: v.copy() for n, v in _feeds(case_id).items()}


def model_of(case: Case) -> onnx.ModelProto:
    return indexer_model(case.inputs, dtype=case.dtype, key_rank=case.key_rank, attrs=case.attributes)


@functools.lru_cache(maxsize=None)
def expected(case_id: str) -> np.ndarray:
    c = CASES_BY_ID[case_id]
    return indexer_oracle(**feeds_of(case_id), **c.attributes)


def check(case: Case, outputs: list[np.ndarray]) -> None:
    """Exact equality with the oracle on grid inputs, a top-k within tolerance on unit-normal ones."""
    assert len(outputs) == 1, f"{len(outputs)} outputs"
    got = np.asarray(outputs[0])
    if case.values == "normal":
        assert_topk_within(got, **feeds_of(case.id), **case.attributes)
        return
    want = expected(case.id)
    assert got.shape == want.shape, f"key_indices shape {got.shape}, expected {want.shape}"
    assert got.dtype == np.int64, got.dtype
    np.testing.assert_array_equal(got, want)


def run_path(case: Case, path: str, feeds: Mapping[str, np.ndarray] | None = None) -> list[np.ndarray]:
    feeds = feeds_of(case.id) if feeds is None else dict(feeds)
    if path.startswith("kernel-"):
        with cpu_isa(path.removeprefix("kernel-")), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # run_kernel prefills the int64 output with NaN
            return run_kernel(model_of(case), feeds)
    if path == "torch":
        return [run_torch(case, feeds)]
    runner = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference}[path]
    return runner(model_of(case), feeds)


def run_torch(case: Case, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """onnxattn.nn.functional.lightning_indexer (the torch custom op) on the same values, in the case's dtype."""
    import torch

    from onnxattn.nn.functional import lightning_indexer

    tdtype = getattr(torch, case.dtype)
    t = {n: torch.from_numpy(np.asarray(v, np.float32)).to(tdtype) if n in ("query", "key") else torch.from_numpy(v)
         for n, v in feeds.items()}
    with torch.no_grad():
        out = lightning_indexer(t["query"], t["key"], t["weights"], t.get("past_lengths"), **case.attributes)
    return out.numpy()


PATHS = ["function-ort", "function-onnx-reference", "torch"] + [f"kernel-{isa}" for isa in ISAS]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_oracle(case: Case, path: str):
    if path == "function-onnx-reference" and case.dtype == "bfloat16":
        pytest.skip("onnx.reference: its bfloat16 Casts go through ml_dtypes slowly")
    check(case, run_path(case, path))


@pytest.mark.parametrize("rows", [1, 3], ids=["one-row-chunks", "three-row-chunks"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype != "bfloat16"])
def test_the_function_in_row_chunks_matches_the_oracle(case: Case, path: str, rows: int, monkeypatch):
    """The reference function's chunked form (a Loop over query rows, for calls whose [B, S, H, T] scores pass
    ops._bodies.CHUNK_ELEMENTS: long prompts), forced on every case by a budget of `rows` rows: S not a multiple
    of it leaves a short last chunk."""
    from onnxattn.ops import _bodies

    monkeypatch.setattr(_bodies, "CHUNK_ELEMENTS", rows * case.batch * case.heads * case.kv_len)
    model = model_of(case)
    assert any(n.op_type == "If" for fn in model.functions for n in fn.node)
    check(case, run_path(case, path))


def test_grid_cases_have_exact_ties():
    """The tie cases really tie (else they test nothing): some row's k-th and (k+1)-th float64 scores are equal."""
    from oracle_indexer import indexer_scores

    for case_id in ("h1-relu-zero-ties", "ties-duplicated-keys", "ties-zero-query", "negative-weights"):
        c = CASES_BY_ID[case_id]
        scores = indexer_scores(**feeds_of(case_id), **c.attributes)
        ties = 0
        for row in scores.reshape(-1, scores.shape[-1]):
            visible = np.sort(row[np.isfinite(row)])[::-1]
            ties += visible.size > c.top_k and visible[c.top_k - 1] == visible[c.top_k]
        assert ties, f"{case_id}: no exact tie at the k-th score"


# ---- a hand-computed case ----
# query [1, 2, 2*2] (H = 2, D = 2), key [1, 3, 2], weights [1, 2, 2], scale 1:
#   row 0 heads [1, 0], [0, 1]; row 1 heads [1, 1], [-1, 0]; keys k0 [1, 0], k1 [0, 2], k2 [2, 1]
#   row 0 (position 1: sees k0, k1): head 0 dots [1, 0], head 1 dots [0, 2]; weights [1, 0.5]:
#       score [1*1 + 0.5*0, 1*0 + 0.5*2] = [1, 1] (k2 would score 1*2 + 0.5*1 = 2.5 but is in the future)
#   row 1 (position 2: sees all): head 0 dots [1, 2, 3], head 1 dots [-1, 0, -2] -> relu [0, 0, 0]; weights [2, -1]:
#       score [2, 4, 6]
# Shared buffer with past_lengths [0]: row 0 at position 0 sees k0 only, row 1 at position 1 sees k0, k1 ([2, 4]).
HAND = dict(query=np.array([[[1, 0, 0, 1], [1, 1, -1, 0]]], np.float32),
            key=np.array([[[1, 0], [0, 2], [2, 1]]], np.float32),
            weights=np.array([[[1, 0.5], [2, -1]]], np.float32))
HAND_EXPECTED = {  # (top_k, past_lengths) -> key_indices
    (1, None): [[[0], [2]]],  # row 0: a tie at 1, the lower position wins
    (2, None): [[[0, 1], [1, 2]]],  # ascending, not by score
    (3, None): [[[0, 1, -1], [0, 1, 2]]],
    (1, 0): [[[0], [1]]],
    (2, 0): [[[0, -1], [0, 1]]],
}


@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference", "kernel"])
@pytest.mark.parametrize("top_k, past", list(HAND_EXPECTED))
def test_hand_computed(top_k, past, path):
    want = np.array(HAND_EXPECTED[(top_k, past)], np.int64)
    feeds = dict(HAND)
    inputs = INPUTS[:3]
    if past is not None:
        feeds["past_lengths"] = np.array([past], np.int64)
        inputs = INPUTS
    np.testing.assert_array_equal(indexer_oracle(**feeds, num_heads=2, top_k=top_k, scale=1.0), want)
    model = indexer_model(inputs, key_rank=3, attrs=dict(num_heads=2, top_k=top_k, scale=1.0))
    run = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference, "kernel": run_kernel}[path]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = run(model, feeds)[0]
    np.testing.assert_array_equal(got, want)


# ---- causality: what a query may not see cannot change its picks ----

@pytest.mark.parametrize("path", ["function-ort", "torch", "kernel-generic", "kernel-avx2"])
@pytest.mark.parametrize("case_id", ["chunk-sq-ne-t-b2", "prefill", "shared-chunk-b2", "normal-chunk-b2-float16"])
def test_future_keys_do_not_change_picks(case_id, path):
    """Per query row i: the keys after its position set to large values (+-8, signs of the row's first head);
    row i's picks stay the same."""
    c = CASES_BY_ID[case_id]
    base = run_path(c, path)[0]
    feeds = feeds_of(case_id)
    key = feeds["key"].reshape(c.batch, c.kv_len, c.head_dim)
    past = feeds.get("past_lengths")
    for i in range(c.q_len):
        perturbed = key.copy()
        for b in range(c.batch):
            p = (c.kv_len - c.q_len + i) if past is None else int(past[b]) + i
            perturbed[b, p + 1:] = np.asarray(np.sign(feeds["query"][b, i, : c.head_dim]) * 8, perturbed.dtype)
        got = run_path(c, path, dict(feeds, key=perturbed.reshape(feeds["key"].shape)))[0]
        np.testing.assert_array_equal(got[:, i], base[:, i], err_msg=f"row {i}")


# ---- every signature (past_lengths absent or present) covers the overloads ----

def test_signatures_cover_the_overloads():
    def overload(inputs):
        return next(ops.onnxattn_nodes(indexer_model(inputs, attrs=dict(num_heads=2, top_k=3)))).overload
    assert sorted(overload(i) for i in (INPUTS[:3], INPUTS)) == sorted(ops.get_spec(OP).overloads)


@pytest.mark.parametrize("case_id", ["large", "shared-chunk-b2", "t-prime-1031", "normal-large"])
def test_kernel_is_bitwise_deterministic_across_runs_and_threads(case_id):
    c = CASES_BY_ID[case_id]
    model, feeds = model_of(c), feeds_of(case_id)
    results = [kernel_session(model, threads).run(None, feeds)[0] for threads in (1, 1, 2, 4)]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_tolerance_check_rejects_wrong_picks():
    """assert_topk_within, on doctored picks of a unit-normal case: the oracle's own pass; a pick swapped for the
    row's lowest-scoring visible key, a future key, a duplicate, descending order or a -1 too early fail."""
    from oracle_indexer import indexer_scores

    c = CASES_BY_ID["normal-chunk-b2"]
    feeds = feeds_of(c.id)
    want = expected(c.id)
    assert_topk_within(want, **feeds, **c.attributes)
    scores = indexer_scores(**feeds, **c.attributes)
    row = (1, 3)  # position T - S + 3 = 46: 47 visible keys, 9 picked
    worst = int(np.argmin(scores[row][:47]))
    swapped = want.copy()
    swapped[row] = np.sort(np.r_[want[row][1:], worst])
    doctored = {
        "low-scoring": swapped,
        "future": np.where(np.arange(9) == 8, 49, want[row])[None, None],
        "duplicate": np.r_[want[row][:8], want[row][7]][None, None],
        "descending": want[row][::-1][None, None],
        "early-padding": np.r_[want[row][:8], -1][None, None],
    }
    for name, picks in doctored.items():
        if picks.shape != want.shape:
            full = want.copy()
            full[row] = picks[0, 0]
            picks = full
        with pytest.raises(AssertionError):
            assert_topk_within(picks, **feeds, **c.attributes)
            raise RuntimeError(f"{name}: accepted")
