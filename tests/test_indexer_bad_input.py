"""Bad input to LightningIndexer, as a table: each case is checked on every path that can see it
- onnx shape inference with our registered schema (static shapes, strict mode) and the Python spec (`infer_node`),
- `onnxattn validate` (the library call and the CLI's exit code),
- our CPU kernel (onnxruntime with the library; inputs of unknown shape, so every shape error is the kernel's own:
  an onnxruntime error naming the op and the input in quotes, never a crash).
Plus the run-time values only the kernel sees: T < S without past_lengths, past_lengths out of the buffer.

The kernel's messages are matched on the op's name and the quoted input or attribute name only (its wording is
its own); shape inference's on the spec's full wording.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import kernel_session
from onnxattn.cli import main as cli_main
from onnxattn.ops import OpError, TensorInfo, get_spec
from onnxattn.validation import validate
from test_indexer_numerics import INPUTS, OP, indexer_model

SPEC = get_spec(OP)
ATTRS = dict(num_heads=4, top_k=3)
# a valid call: B = 2, S = 5, H = 4, D = 16, T = 9
OK = dict(query=(2, 5, 64), key=(2, 1, 9, 16), weights=(2, 5, 4))
NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
         TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
FIXED = dict(weights=TensorProto.FLOAT, past_lengths=TensorProto.INT64)


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    match: str  # regex shape inference's and the spec's message must contain
    kernel_match: str  # regex the kernel's (onnxruntime's) message must contain, besides the op's name
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(OK))
    attrs: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(ATTRS))
    types: dict[str, int] = dataclasses.field(default_factory=dict)
    kernel: str = "run"  # "session" (attributes: read when the kernel is created), "run" (shapes), "graph" (types)


def _with(**changes):
    return {**OK, **changes}


CASES = [
    # attributes
    Bad("num-heads-0", r"attribute 'num_heads' must be >= 1 \(the indexer's heads\), got 0", r"'num_heads'",
        attrs=dict(ATTRS, num_heads=0), kernel="session"),
    Bad("missing-num-heads", r"attribute 'num_heads' must be >= 1", r"'num_heads'", attrs=dict(top_k=3),
        kernel="session"),
    Bad("top-k-0", r"attribute 'top_k' must be in \[1, 2147483647\] \(keys picked per query\), got 0", r"'top_k'",
        attrs=dict(ATTRS, top_k=0), kernel="session"),
    Bad("top-k-negative", r"attribute 'top_k' must be in \[1, 2147483647\] \(keys picked per query\), got -5",
        r"'top_k'",
        attrs=dict(ATTRS, top_k=-5), kernel="session"),
    Bad("negative-scale", r"attribute 'scale' must be finite and >= 0 \(0 = 1/sqrt\(D\)\), got -1.0", r"'scale'",
        attrs=dict(ATTRS, scale=-1.0), kernel="session"),
    Bad("nan-scale", r"attribute 'scale' must be finite and >= 0", r"'scale'", attrs=dict(ATTRS, scale=float("nan")),
        kernel="session"),
    # ranks
    Bad("query-rank-4", r"input 'query' must have rank 3 \[B, S, H\*D\], got shape \[2, 5, 4, 16\]", r"'query'",
        shapes=_with(query=(2, 5, 4, 16))),
    Bad("key-rank-2", r"input 'key' must be \[B, T, D\] or \[B, 1, T, D\], got shape \[9, 16\]", r"'key'",
        shapes=_with(key=(9, 16))),
    Bad("weights-rank-2", r"input 'weights' must have rank 3 \[B, S, H\]", r"'weights'", shapes=_with(weights=(5, 4))),
    Bad("past-lengths-rank-2", r"input 'past_lengths' must be \[B\] = \[2\], got \[2, 1\]", r"'past_lengths'",
        shapes=_with(past_lengths=(2, 1))),
    # batch, heads, head size, sequence
    Bad("key-heads-2", r"input 'key' must be \[B, T, D\] or \[B, 1, T, D\] with B = 2 \(query dim 0\), got shape "
        r"\[2, 2, 9, 16\]", r"'key'", shapes=_with(key=(2, 2, 9, 16))),
    Bad("key-batch", r"input 'key' must be \[B, T, D\] or \[B, 1, T, D\] with B = 2 \(query dim 0\), got shape "
        r"\[3, 1, 9, 16\]", r"'key'", shapes=_with(key=(3, 1, 9, 16))),
    Bad("width-not-multiple-of-heads", r"query width 63 \(dim 2\) must be a multiple of num_heads \(4\)", r"'query'",
        shapes=_with(query=(2, 5, 63))),
    Bad("width-d-mismatch", r"query width must be num_heads \* D = 4 \* 16 = 64 \(D from key\), got shape \[2, 5, 48\]",
        r"'query'", shapes=_with(query=(2, 5, 48))),
    Bad("head-dim-zero", r"input 'key' must have D >= 1, got shape \[2, 1, 9, 0\]", r"'key'",
        shapes=_with(query=(2, 5, 0), key=(2, 1, 9, 0))),
    Bad("weights-heads", r"input 'weights' must be \[B, S, H\] = \[2, 5, 4\], got shape \[2, 5, 3\]", r"'weights'",
        shapes=_with(weights=(2, 5, 3))),
    Bad("weights-seq", r"input 'weights' must be \[B, S, H\] = \[2, 5, 4\], got shape \[2, 4, 4\]", r"'weights'",
        shapes=_with(weights=(2, 4, 4))),
    Bad("weights-batch", r"input 'weights' must be \[B, S, H\] = \[2, 5, 4\], got shape \[1, 5, 4\]", r"'weights'",
        shapes=_with(weights=(1, 5, 4))),
    Bad("fewer-keys-than-queries", r"input 'key' must hold the S = 5 new tokens' keys after the past ones \(T >= S\), "
        r"got shape \[2, 1, 4, 16\]", r"'key'", shapes=_with(key=(2, 1, 4, 16))),
    Bad("past-lengths-batch", r"input 'past_lengths' must be \[B\] = \[2\], got \[3\]", r"'past_lengths'",
        shapes=_with(past_lengths=(3,))),
    # types
    Bad("query-double", r"input 'query' must be one of tensor\(float\), tensor\(float16\), tensor\(bfloat16\), got "
        r"tensor\(double\)", r"query\) of operator \(LightningIndexer\)",
        types=dict(query=TensorProto.DOUBLE, key=TensorProto.DOUBLE), kernel="graph"),
    Bad("key-float16-with-float-query", r"input 'key' must have the same type as the other 'T' inputs \(float\), got "
        r"float16", OP, types=dict(key=TensorProto.FLOAT16), kernel="graph"),
    Bad("weights-float16", r"input 'weights' must be tensor\(float\), got tensor\(float16\)",
        r"weights\) of operator \(LightningIndexer\)", types=dict(weights=TensorProto.FLOAT16), kernel="graph"),
    Bad("past-lengths-int32", r"input 'past_lengths' must be tensor\(int64\), got tensor\(int32\)",
        r"past_lengths\) of operator \(LightningIndexer\)", shapes=_with(past_lengths=(2,)),
        types=dict(past_lengths=TensorProto.INT32), kernel="graph"),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def elem_type(case: Bad, name: str) -> int:
    return case.types.get(name, FIXED.get(name, TensorProto.FLOAT))


def model(case: Bad, *, static: bool) -> onnx.ModelProto:
    inputs = [n for n in INPUTS if n in case.shapes]
    shapes = {n: (case.shapes[n] if static else None) for n in inputs}
    types = {n: elem_type(case, n) for n in inputs}
    return indexer_model(inputs, attrs=case.attrs, shapes=shapes, elem_types=types, attach=False)


def feeds(case: Bad) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in case.shapes.items():
        t = elem_type(case, name)
        if t in (TensorProto.INT64, TensorProto.INT32):
            out[name] = np.zeros(shape, NUMPY[t])  # past 0: in range for every valid buffer
        else:
            out[name] = rng.standard_normal(shape).astype(NUMPY[t])
    return out


def assert_names_op(message: str, pattern: str) -> None:
    assert OP in message, message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize("case", params(CASES))
def test_onnx_shape_inference(case: Bad):
    with pytest.raises(onnx.shape_inference.InferenceError) as info:
        onnx.shape_inference.infer_shapes(model(case, static=True), strict_mode=True)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_spec_infer_node(case: Bad):
    inputs = [TensorInfo(elem_type(case, n), case.shapes[n]) if n in case.shapes else None for n in INPUTS]
    attrs = [helper.make_attribute(name, value) for name, value in case.attrs.items()]
    with pytest.raises(OpError) as info:
        SPEC.infer_node(inputs, attrs)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_validate_reports_it(case: Bad):
    report = validate(model(case, static=True))
    assert not report.ok
    assert any(re.search(case.match, line) and OP in line for line in report.failures()), report.failures()


@pytest.mark.parametrize("case", params(CASES))
def test_kernel_reports_an_error(case: Bad):
    m = model(case, static=False)
    if case.kernel in ("session", "graph"):
        with pytest.raises(Exception) as info:
            kernel_session(m).run(None, feeds(case))
    else:
        session = kernel_session(m)
        with pytest.raises(Exception) as info:
            session.run(None, feeds(case))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert_names_op(str(info.value), case.kernel_match)


def test_cli_validate_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(indexer_model(attrs=ATTRS, shapes=dict(OK)), good)
    onnx.save(model(CASES_BY_ID["weights-heads"], static=True), bad)
    assert cli_main(["validate", str(good), "--numerics"]) == 0
    assert "result: OK" in capsys.readouterr().out
    assert cli_main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "input 'weights' must be [B, S, H] = [2, 5, 4]" in out


# ---------------------------------------------------------------------------------------------------------
# Run-time values the kernel alone sees (declared shapes unknown; the function cannot raise)

def _value_model(shared: bool) -> onnx.ModelProto:
    inputs = INPUTS if shared else INPUTS[:3]
    return indexer_model(inputs, attrs=ATTRS, shapes={n: None for n in inputs}, attach=False)


def _value_feeds(total: int, past=None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = dict(query=rng.standard_normal((2, 5, 64)).astype(np.float32),
               key=rng.standard_normal((2, 1, total, 16)).astype(np.float32),
               weights=rng.standard_normal((2, 5, 4)).astype(np.float32))
    if past is not None:
        out["past_lengths"] = np.asarray(past, np.int64)
    return out


VALUE_CASES = [  # (id, shared, T, past_lengths, the quoted input the message names)
    ("fewer-keys-than-queries", False, 4, None, "'key'"),
    ("no-keys", False, 0, None, "'key'"),
    ("past-lengths-negative", True, 9, [-1, 0], "'past_lengths'"),
    ("past-lengths-overflow", True, 9, [0, 5], "'past_lengths'"),  # 5 + S = 10 > T = 9
    ("past-lengths-int64-max", True, 9, [2**63 - 1, 0], "'past_lengths'"),  # past + S overflows int64
    ("past-lengths-int64-min", True, 9, [0, -(2**63)], "'past_lengths'"),
]


@pytest.mark.parametrize("shared, total, past, name", [pytest.param(*c[1:], id=c[0]) for c in VALUE_CASES])
def test_kernel_rejects_values(shared, total, past, name):
    session = kernel_session(_value_model(shared))
    with pytest.raises(Exception) as info:
        session.run(None, _value_feeds(total, past))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert_names_op(str(info.value), re.escape(name))


@pytest.mark.parametrize("shared, total, past", [(False, 5, None), (True, 9, [4, 0]), (True, 9, [0, 4])])
def test_kernel_accepts_the_edges(shared, total, past):
    """T = S exactly, and past_lengths[b] + S = T exactly (the buffer full), run."""
    out = kernel_session(_value_model(shared)).run(None, _value_feeds(total, past))[0]
    assert out.shape == (2, 5, 3) and out.dtype == np.int64
