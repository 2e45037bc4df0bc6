"""Bad input to GroupQueryAttention, as a table: each case is checked on every path that can see it
- onnx shape inference with our registered schema (`infer_shapes(strict_mode=True)` on static shapes),
- the Python spec (`SPEC.infer_node`),
- our CPU kernel (onnxruntime with the library; inputs of unknown shape, so every shape error is the
  kernel's own, returned as an onnxruntime error naming the op and the input, never a crash),
- the torch functional and, where the module API can express the input, the torch modules (ValueError),
and, for attributes and run-time values, onnxruntime *without* the library (the reference function), whose
behaviour is recorded per case (it cannot validate attribute values; known limitations).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from helpers import (
    GQA,
    GQA_FIXED_TYPES,
    GQA_INPUTS,
    attach_unchecked,
    function_session,
    gqa_model,
    kernel_session,
)
from onnxattn.nn import GlobalAttention, GroupedQueryAttention, LocalAttention, Rope
from onnxattn.nn.functional import group_query_attention
from onnxattn.ops import OpError, TensorInfo, get_spec

SPEC = get_spec(GQA)
HEADS = dict(num_heads=4, kv_num_heads=2)
QKV = dict(query=(1, 5, 32), key=(1, 5, 16), value=(1, 5, 16))  # a valid call: Hq=4 over Hkv=2, D=8, S=5
PAST = dict(past_key=(1, 2, 3, 8), past_value=(1, 2, 3, 8))
NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.INT64: np.int64,
         TensorProto.INT32: np.int32, TensorProto.BOOL: np.bool_, TensorProto.DOUBLE: np.float64}
TORCH_DTYPES = {TensorProto.FLOAT16: torch.float16, TensorProto.FLOAT: torch.float32}


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    match: str  # regex the message must contain on the ONNX paths (shape inference, spec) and in torch
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(QKV))
    attrs: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(HEADS))
    types: dict[str, int] = dataclasses.field(default_factory=dict)  # element types other than the defaults
    # the kernel's message where it words the problem differently (None: `match`)
    kernel_match: str | None = None
    # where the kernel reports it: "session" (attributes, read when the kernel is created), "run" (shapes),
    # "graph" (types: onnxruntime itself rejects the node against the registered kernel's types)
    kernel: str = "run"
    # torch functional: None = same ValueError as `match`; or a reason why torch cannot express the input
    torch_skip: str | None = None
    # attribute cases only: onnxruntime without the library, "session" (rejected when the session is built),
    # "run" (an error from some op of the body, not naming ours) or "silent" (known limitations)
    function: str | None = None
    shape_inference: bool = True  # False: onnx's inference context cannot see it (recorded limitation)


CASES = [
    # heads and widths
    Bad("heads-not-a-multiple", r"num_heads \(4\) must be a multiple of kv_num_heads \(3\)",
        attrs=dict(num_heads=4, kv_num_heads=3), kernel="session"),
    Bad("missing-num-heads", r"'num_heads'.* required and must be >= 1, got 0", attrs=dict(kv_num_heads=2),
        kernel="session"),
    Bad("missing-kv-num-heads", r"'kv_num_heads'.* required and must be >= 1", attrs=dict(num_heads=4),
        kernel="session"),
    Bad("query-width-not-divisible", r"query width 30 \(dim 2\) must be num_heads \(4\) \* head size",
        shapes=dict(QKV, query=(1, 5, 30))),
    Bad("key-width-mismatch", r"input 'key' must have width kv_num_heads \* D = 2 \* 8 = 16 \(D from query\), got "
        r"shape \[1, 5, 24\]", shapes=dict(QKV, key=(1, 5, 24))),
    Bad("value-width-not-divisible", r"value width 15 \(dim 2\) must be kv_num_heads \(2\) \* value head size",
        shapes=dict(QKV, value=(1, 5, 15))),
    Bad("value-rank-4", r"input 'value' must have rank 3 \[B, S, Hkv\*Dv\], got shape \[1, 5, 2, 8\]",
        shapes=dict(QKV, value=(1, 5, 2, 8))),
    Bad("key-batch-mismatch", r"'key'.* must have the batch and sequence dims of query \[1, 5, 32\]",
        shapes=dict(QKV, key=(2, 5, 16), value=(2, 5, 16))),
    Bad("value-seq-mismatch", r"'value'.* must have the batch and sequence dims of query \[1, 5, 32\]",
        shapes=dict(QKV, value=(1, 4, 16))),
    # the cache
    Bad("past-key-without-past-value", r"inputs 'past_key' and 'past_value' must be given together",
        shapes=dict(QKV, past_key=(1, 2, 3, 8))),
    Bad("past-value-without-past-key", r"inputs 'past_key' and 'past_value' must be given together",
        shapes=dict(QKV, past_value=(1, 2, 3, 8))),
    Bad("past-length-mismatch", r"past_key and past_value must hold the same number of tokens, got \[1, 2, 3, 8\] "
        r"and \[1, 2, 4, 8\]", shapes=dict(QKV, past_key=(1, 2, 3, 8), past_value=(1, 2, 4, 8))),
    Bad("past-key-head-size",
        r"input 'past_key' must be \[B, Hkv, P, (8|D)\] = \[1, 2, P, 8\], got (shape )?\[1, 2, 3, 6\]",
        shapes=dict(QKV, past_key=(1, 2, 3, 6), past_value=(1, 2, 3, 8))),
    Bad("past-value-heads",
        r"input 'past_value' must be \[B, Hkv, P, (8|Dv)\] = \[1, 2, P, 8\], got (shape )?\[1, 1, 3, 8\]",
        shapes=dict(QKV, past_key=(1, 2, 3, 8), past_value=(1, 1, 3, 8))),
    Bad("past-batch", r"input 'past_key' must be \[B, Hkv, P, (8|D)\] = \[1, 2, P, 8\], got (shape )?\[2, 2, 3, 8\]",
        shapes=dict(QKV, past_key=(2, 2, 3, 8), past_value=(2, 2, 3, 8))),
    Bad("past-lengths-without-past", r"input 'past_lengths' \(shared-buffer mode\) needs past_key and past_value",
        shapes=dict(QKV, past_lengths=(1,))),
    Bad("past-lengths-wrong-batch", r"input 'past_lengths' must be \[B\] = \[1\], got \[2\]",
        shapes=dict(QKV, **PAST, past_lengths=(2,))),
    # positions, RoPE
    Bad("position-ids-wrong-length", r"input 'position_ids' must be \[B, S\] = \[1, 5\], got \[1, 4\]",
        shapes=dict(QKV, position_ids=(1, 4)), attrs=dict(HEADS, rope=1)),
    Bad("position-ids-rank-1", r"input 'position_ids' must be \[B, S\] = \[1, 5\], got \[5\]",
        shapes=dict(QKV, position_ids=(5,)), attrs=dict(HEADS, rope=1),
        kernel_match=r"input 'position_ids' must (be|have rank 2) \[B, S\].*got (shape )?\[5\]"),
    Bad("odd-rotary-dim", r"rotary_dim must be even, got 5", attrs=dict(HEADS, rope=1, rotary_dim=5)),
    Bad("odd-head-dim-full-rotary", r"rotary_dim must be even, got 5 \(rotary_dim=0 means D, which is odd\)",
        shapes=dict(query=(1, 5, 20), key=(1, 5, 10), value=(1, 5, 10)), attrs=dict(HEADS, rope=1),
        kernel_match=r"rotary_dim must be even, got 5"),
    Bad("rotary-dim-above-head-dim", r"rotary_dim \(16\) must be <= D \(8\)", attrs=dict(HEADS, rope=1, rotary_dim=16)),
    Bad("inv-freq-wrong-length", r"input 'rope_inv_freq' must be \[rotary_dim / 2\] = \[4\], got \[3\]",
        shapes=dict(QKV, rope_inv_freq=(3,)), attrs=dict(HEADS, rope=1)),
    Bad("inv-freq-partial-wrong-length", r"input 'rope_inv_freq' must be \[rotary_dim / 2\] = \[2\], got \[4\]",
        shapes=dict(QKV, rope_inv_freq=(4,)), attrs=dict(HEADS, rope=1, rotary_dim=4)),
    # QK-norm, mask
    Bad("q-norm-weight-length", r"input 'q_norm_weight' must be \[D\] = \[8\], got \[7\]",
        shapes=dict(QKV, q_norm_weight=(7,))),
    Bad("k-norm-weight-rank", r"input 'k_norm_weight' must be \[D\] = \[8\], got \[1, 8\]",
        shapes=dict(QKV, k_norm_weight=(1, 8)),
        kernel_match=r"input 'k_norm_weight' must (be|have rank 1) \[D\].*got (shape )?\[1, 8\]"),
    Bad("mask-wrong-length", r"input 'attention_mask' must be \[B, total keys\] = \[1, 5\]",
        shapes=dict(QKV, attention_mask=(1, 6))),
    Bad("mask-misses-the-past", r"input 'attention_mask' must be \[B, total keys\] = \[1, 8\]",
        shapes=dict(QKV, **PAST, attention_mask=(1, 5))),
    Bad("mask-shared-not-buffer-length", r"input 'attention_mask' must be \[B, total keys\] = \[1, 3\]",
        shapes=dict(QKV, **PAST, past_lengths=(1,), attention_mask=(1, 8))),
    # attention sinks
    Bad("sinks-wrong-length", r"input 'sinks' must be \[num_heads\] = \[4\] \(one logit per query head\), got \[2\]",
        shapes=dict(QKV, sinks=(2,)), kernel_match=r"input 'sinks' must be \[num_heads\] = \[4\], got \[2\]"),
    Bad("sinks-rank-2", r"input 'sinks' must be \[num_heads\] = \[4\] \(one logit per query head\), got \[1, 4\]",
        shapes=dict(QKV, sinks=(1, 4)),
        kernel_match=r"input 'sinks' must (be|have rank 1) \[num_heads\].*got (shape )?\[1, 4\]"),
    Bad("sinks-float16-with-float", r"input 'sinks' must have the same type as the other 'T' inputs",
        shapes=dict(QKV, sinks=(4,)), types=dict(sinks=TensorProto.FLOAT16), kernel="graph",
        kernel_match=r"GroupQueryAttention"),
    # types
    Bad("key-float16-with-float-query", r"input 'key' must have the same type as the other 'T' inputs \(float\), "
        r"got float16", types=dict(key=TensorProto.FLOAT16), kernel="graph", kernel_match=r"GroupQueryAttention"),
    Bad("norm-weight-float16-with-float", r"input 'q_norm_weight' must have the same type as the other 'T' inputs",
        shapes=dict(QKV, q_norm_weight=(8,)), types=dict(q_norm_weight=TensorProto.FLOAT16), kernel="graph",
        kernel_match=r"GroupQueryAttention"),
    Bad("query-double", r"input 'query' must be one of tensor\(float\), tensor\(float16\), tensor\(bfloat16\), got "
        r"tensor\(double\)", types=dict(query=TensorProto.DOUBLE, key=TensorProto.DOUBLE, value=TensorProto.DOUBLE),
        kernel="graph", kernel_match=r"GroupQueryAttention",
        torch_skip="float64 is the torch reference's gradcheck precision"),
    Bad("position-ids-int32", r"input 'position_ids' must be tensor\(int64\), got tensor\(int32\)",
        shapes=dict(QKV, position_ids=(1, 5)), types=dict(position_ids=TensorProto.INT32), attrs=dict(HEADS, rope=1),
        kernel="graph",
        kernel_match=r"Type 'tensor\(int32\)' of input parameter \(position_ids\) of operator \(GroupQueryAttention\)",
        torch_skip="the torch reference takes any integer positions"),
    Bad("mask-float", r"input 'attention_mask' must be tensor\(bool\), got tensor\(float\)",
        shapes=dict(QKV, attention_mask=(1, 5)), types=dict(attention_mask=TensorProto.FLOAT), kernel="graph",
        kernel_match=r"Type 'tensor\(float\)' of input parameter \(attention_mask\) of operator "
                     r"\(GroupQueryAttention\)",
        torch_skip="the torch reference casts a 0/1 mask to bool"),
    Bad("inv-freq-float16", r"input 'rope_inv_freq' must be tensor\(float\), got tensor\(float16\)",
        shapes=dict(QKV, rope_inv_freq=(4,)), types=dict(rope_inv_freq=TensorProto.FLOAT16), attrs=dict(HEADS, rope=1),
        kernel="graph", kernel_match=r"rope_inv_freq\) of operator \(GroupQueryAttention\)",
        torch_skip="the torch reference casts the frequencies to float32"),
    # attributes: the kernel reads them when onnxruntime creates it
    Bad("causal-2", r"attribute 'causal' must be 0 or 1, got 2", attrs=dict(HEADS, causal=2), kernel="session",
        torch_skip="causal is a bool argument", function="silent"),  # the function treats any causal != 0 as on
    Bad("negative-window", r"attribute 'window' must be >= 0 \(0 = off\), got -1", attrs=dict(HEADS, window=-1),
        kernel="session", function="silent"),  # the function treats window <= 0 as off
    Bad("negative-attention-chunk", r"attribute 'attention_chunk' must be >= 0 \(0 = off\), got -1",
        attrs=dict(HEADS, attention_chunk=-1), kernel="session", function="silent"),  # <= 0 is off there
    Bad("negative-softcap", r"attribute 'softcap' must be finite and >= 0 \(0 = off\), got -1",
        attrs=dict(HEADS, softcap=-1.0), kernel="session", function="silent"),
    Bad("nan-scale", r"attribute 'scale' must be finite \(0 = 1/sqrt\(D\)\), got nan",
        attrs=dict(HEADS, scale=math.nan),
        kernel="session", function="silent"),  # the function outputs NaN
    Bad("rope-2", r"attribute 'rope' must be 0 or 1, got 2", attrs=dict(HEADS, rope=2), kernel="session",
        torch_skip="rope is a bool argument", function="silent"),  # the function treats rope != 1 as off
    Bad("rope-base-zero", r"attribute 'rope_base' must be > 0, got 0", attrs=dict(HEADS, rope=1, rope_base=0.0),
        kernel="session", function="silent"),  # the function computes log(0) and outputs NaN
    Bad("negative-rotary-dim", r"attribute 'rotary_dim' must be >= 0 \(0 = D\), got -2",
        attrs=dict(HEADS, rope=1, rotary_dim=-2), kernel="session", function="run"),  # a Mul fails to broadcast
    Bad("rope-interleaved-2", r"attribute 'rope_interleaved' must be 0 or 1, got 2",
        attrs=dict(HEADS, rope=1, rope_interleaved=2), kernel="session", torch_skip="rope_interleaved is a bool",
        function="silent"),  # the function treats rope_interleaved != 1 as half-split
    Bad("inf-rope-attention-scaling", r"attribute 'rope_attention_scaling' must be finite",
        attrs=dict(HEADS, rope=1, rope_attention_scaling=math.inf), kernel="session", function="silent"),
    Bad("negative-qk-norm-epsilon", r"attribute 'qk_norm_epsilon' must be finite and >= 0",
        attrs=dict(HEADS, qk_norm_epsilon=-1.0), kernel="session", function="silent"),
    Bad("causal-float", r"attribute 'causal' must be an int, got (a )?float", attrs=dict(HEADS, causal=1.0),
        kernel="session", torch_skip="a Python argument, not a typed attribute", function="session"),
    Bad("rope-base-int", r"attribute 'rope_base' must be an? float, got (a )?int", attrs=dict(HEADS, rope_base=10000),
        kernel="session", torch_skip="an int base is a valid Python number", function="session"),
    Bad("unknown-attribute", r"unknown attribute 'foo'", attrs=dict(HEADS, foo=1),
        # Known limitations (as for ScaledDotProductAttention): onnx's inference context hands our inference
        # function only the attributes it asks for, so shape inference cannot see it (onnx.checker does);
        # onnxruntime's custom-op API cannot list a node's attributes, so neither kernel nor function rejects it.
        kernel="silent", torch_skip="not a keyword of the functional", function="silent", shape_inference=False),
]
ATTRIBUTE_CASES = [c for c in CASES if c.function is not None]
# Cases whose error lies in dim sizes only (ranks, present inputs, attributes and types are fine)
SIZE_CASES = [c for c in CASES if c.id in (
    "query-width-not-divisible", "key-width-mismatch", "value-width-not-divisible", "key-batch-mismatch",
    "value-seq-mismatch", "past-length-mismatch", "past-key-head-size", "past-value-heads", "past-batch",
    "past-lengths-wrong-batch", "position-ids-wrong-length", "odd-head-dim-full-rotary", "rotary-dim-above-head-dim",
    "inv-freq-wrong-length", "inv-freq-partial-wrong-length", "q-norm-weight-length", "mask-wrong-length",
    "mask-misses-the-past", "mask-shared-not-buffer-length")]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def elem_type(case: Bad, name: str) -> int:
    return case.types.get(name, GQA_FIXED_TYPES.get(name, TensorProto.FLOAT))


def model(case: Bad, *, static: bool) -> onnx.ModelProto:
    """The case's node without its function (the schema or the kernel must catch it): static declared
    shapes, or inputs of unknown shape for the kernel."""
    present = [n for n in case.shapes if n not in ("query", "key", "value")]
    shapes = {n: (case.shapes.get(n) if static else None) for n in GQA_INPUTS}
    return gqa_model(present, shapes=shapes, attrs=case.attrs, elem_types=case.types, attach=False)


def feeds(case: Bad) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in case.shapes.items():
        t = elem_type(case, name)
        if t == TensorProto.BOOL:
            out[name] = rng.random(shape) < 0.7
        elif t in (TensorProto.INT64, TensorProto.INT32):
            out[name] = rng.integers(0, 3, shape).astype(NUMPY[t])
        else:
            out[name] = rng.standard_normal(shape).astype(NUMPY[t])
    return out


def assert_names_op(message: str, pattern: str) -> None:
    assert GQA in message, message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize("case", params(CASES))
def test_onnx_shape_inference(case: Bad):
    m = model(case, static=True)
    if not case.shape_inference:
        onnx.shape_inference.infer_shapes(m, strict_mode=True)  # recorded limitation, see the case
        return
    with pytest.raises(onnx.shape_inference.InferenceError) as info:
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_spec_infer_node(case: Bad):
    inputs = [TensorInfo(elem_type(case, n), case.shapes[n]) if n in case.shapes else None for n in GQA_INPUTS]
    attrs = [helper.make_attribute(name, value) for name, value in case.attrs.items()]
    with pytest.raises(OpError) as info:
        SPEC.infer_node(inputs, attrs)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_kernel_reports_an_error(case: Bad):
    m = model(case, static=False)
    pattern = case.kernel_match or case.match
    if case.kernel == "silent":
        kernel_session(m).run(None, feeds(case))  # recorded limitation, see the case
        return
    if case.kernel in ("session", "graph"):
        with pytest.raises(Exception) as info:
            kernel_session(m)
    else:
        session = kernel_session(m)
        with pytest.raises(Exception) as info:
            session.run(None, feeds(case))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert_names_op(str(info.value), pattern)


def torch_call(case: Bad):
    tensors = {}
    for name, value in feeds(case).items():
        t = torch.from_numpy(value)
        floating = t.is_floating_point() and elem_type(case, name) in TORCH_DTYPES
        tensors[name] = t.to(TORCH_DTYPES[elem_type(case, name)]) if floating else t
    attrs = dict(case.attrs)
    attrs.setdefault("num_heads", 0)
    attrs.setdefault("kv_num_heads", 0)
    return lambda: group_query_attention(**tensors, **attrs)


@pytest.mark.parametrize("case", params([c for c in CASES if c.torch_skip is None]))
def test_torch_functional(case: Bad):
    with pytest.raises(ValueError) as info:
        torch_call(case)()
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(ATTRIBUTE_CASES))
def test_function_without_library(case: Bad):
    """onnxruntime without our library inlines the reference function: attribute types are caught when it
    builds the session; invalid values are not (recorded per case as known limitations)."""
    m = attach_unchecked(model(case, static=False))
    if case.function == "silent":
        function_session(m).run(None, feeds(case))
        return
    if case.function == "run":
        session = function_session(m)
        with pytest.raises(Exception) as info:
            session.run(None, feeds(case))
        assert GQA not in str(info.value)  # an error of the body's ops: the reason for the kernel's checks
        return
    assert case.function == "session"
    with pytest.raises(Exception, match="Constant"):  # the body's Constant(ref_attr_name=...) has the wrong type
        function_session(m)


@pytest.mark.parametrize("case", params(SIZE_CASES))
def test_symbolic_dims_are_checked_at_run_time(case: Bad):
    """With symbolic dims (known ranks, unknown sizes) shape inference cannot tell and must accept the
    model; the kernel then reports the error when it runs."""
    symbolic = {n: tuple(f"{n}{i}" for i in range(len(s))) for n, s in case.shapes.items()}
    present = [n for n in case.shapes if n not in ("query", "key", "value")]
    m = gqa_model(present, shapes=symbolic, attrs=case.attrs, attach=False)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    with pytest.raises(Exception) as info:
        kernel_session(m).run(None, feeds(case))
    assert_names_op(str(info.value), case.kernel_match or case.match)


def test_checker_rejects_unknown_attribute():
    with pytest.raises(onnx.checker.ValidationError, match="Unrecognized attribute: foo"):
        onnx.checker.check_model(model(CASES_BY_ID["unknown-attribute"], static=True), full_check=True)


@pytest.mark.parametrize("case_id", ["key-width-mismatch", "odd-rotary-dim", "negative-window"])
def test_attach_functions_rejects_bad_nodes(case_id):
    case = CASES_BY_ID[case_id]
    with pytest.raises(OpError, match=case.match):
        present = [n for n in case.shapes if n not in ("query", "key", "value")]
        gqa_model(present, shapes=dict(case.shapes), attrs=case.attrs)


# ---------------------------------------------------------------------------------------------------------
# Run-time values: past_lengths must leave room for the new tokens in the buffer

LENGTH_CASES = [("overflow", [3, 6]), ("negative", [-1, 0]), ("exactly-one-past-the-end", [0, 6])]
_LENGTH_MESSAGE = r"past_lengths\[{b}\] = {n} is out of range: the buffers hold 10 tokens, so with 5 new tokens it " \
                  r"must be in \[0, 5\]"


def length_feeds(lengths):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(query=f(2, 5, 32), key=f(2, 5, 16), value=f(2, 5, 16), past_key=f(2, 2, 10, 8),
                past_value=f(2, 2, 10, 8), past_lengths=np.array(lengths, dtype=np.int64))


def _length_message(lengths):
    b = next(i for i, n in enumerate(lengths) if n < 0 or n + 5 > 10)
    return _LENGTH_MESSAGE.format(b=b, n=lengths[b])


@pytest.mark.parametrize("lengths", [pytest.param(c[1], id=c[0]) for c in LENGTH_CASES])
def test_kernel_rejects_past_lengths_out_of_range(lengths):
    m = gqa_model(["past_key", "past_value", "past_lengths"], shapes={n: None for n in GQA_INPUTS}, attrs=HEADS,
                  with_present=True)
    session = kernel_session(m)
    with pytest.raises(Exception) as info:
        session.run(None, length_feeds(lengths))
    assert_names_op(str(info.value), _length_message(lengths))


@pytest.mark.parametrize("lengths", [pytest.param(c[1], id=c[0]) for c in LENGTH_CASES])
def test_torch_rejects_past_lengths_out_of_range(lengths):
    tensors = {n: torch.from_numpy(v) for n, v in length_feeds(lengths).items()}
    with pytest.raises(ValueError) as info:
        group_query_attention(**tensors, **HEADS)
    assert_names_op(str(info.value), _length_message(lengths))
    module = GroupedQueryAttention(32, 4, 2)
    with pytest.raises(ValueError, match=r"past_lengths\[\d\] = -?\d+ is out of range"):
        module(torch.randn(2, 5, 32), past_key=tensors["past_key"], past_value=tensors["past_value"],
               past_lengths=tensors["past_lengths"])


@pytest.mark.parametrize("lengths, outcome", [
    ([3, 6], "error"),  # ScatterElements: index out of range
    ([-1, 0], "silent"),  # known limitation: ScatterElements counts -1 from the end of the buffer
])
def test_function_with_past_lengths_out_of_range(lengths, outcome):
    """Recorded behaviour of the reference function, which cannot validate values: an onnxruntime error
    that names ScatterElements, not the op, or (for a negative length) a silent result."""
    m = gqa_model(["past_key", "past_value", "past_lengths"], shapes={n: None for n in GQA_INPUTS}, attrs=HEADS,
                  with_present=True)
    session = function_session(m)
    if outcome == "silent":
        session.run(None, length_feeds(lengths))
        return
    with pytest.raises(Exception, match="ScatterElements"):
        session.run(None, length_feeds(lengths))


# ---------------------------------------------------------------------------------------------------------
# The module: what its API can express reaches the op's checks (or its own constructor checks)

MODULE_CASES = [
    ("heads-not-a-multiple", lambda: GroupedQueryAttention(32, 4, 3), None,
     r"num_query_heads \(4\) must be a positive multiple of num_kv_heads \(3\)"),
    ("odd-rotary-dim", lambda: GroupedQueryAttention(32, 4, 2, rope=Rope(rotary_dim=5)), None,
     r"rotary_dim must be even and <= head_dim \(8\), got 5"),
    ("rotary-dim-above-head-dim", lambda: GroupedQueryAttention(32, 4, 2, rope=Rope(rotary_dim=16)), None,
     r"rotary_dim must be even and <= head_dim \(8\), got 16"),
    ("past-length-mismatch", lambda: GroupedQueryAttention(32, 4, 2),
     dict(past_key=torch.zeros(1, 2, 3, 8), past_value=torch.zeros(1, 2, 4, 8)),
     r"GroupQueryAttention: past_key and past_value must hold the same number of tokens"),
    ("past-key-without-past-value", lambda: GroupedQueryAttention(32, 4, 2), dict(past_key=torch.zeros(1, 2, 3, 8)),
     r"GroupQueryAttention: inputs 'past_key' and 'past_value' must be given together"),
    ("past-lengths-without-past", lambda: GroupedQueryAttention(32, 4, 2, rope=None),
     dict(past_lengths=torch.tensor([0])),
     r"GroupQueryAttention: input 'past_lengths' \(shared-buffer mode\) needs past_key and past_value"),
    ("mask-wrong-length", lambda: GroupedQueryAttention(32, 4, 2),
     dict(attention_mask=torch.ones(1, 6, dtype=torch.bool)),
     r"GroupQueryAttention: input 'attention_mask' must be \[B, total keys\] = \[1, 5\]"),
    ("position-ids-wrong-length", lambda: GroupedQueryAttention(32, 4, 2),
     dict(position_ids=torch.zeros(1, 4, dtype=torch.int64)),
     r"GroupQueryAttention: input 'position_ids' must be \[B, S\] = \[1, 5\], got \[1, 4\]"),
    ("past-wrong-heads", lambda: GroupedQueryAttention(32, 4, 2),
     dict(past_key=torch.zeros(1, 4, 3, 8), past_value=torch.zeros(1, 4, 3, 8)),
     r"GroupQueryAttention: input 'past_key' must be \[B, Hkv, P, 8\] = \[1, 2, P, 8\]"),
    ("sinks-on-a-band", lambda: LocalAttention(32, 4, 2, window=2, kind="band", sinks=True), None,
     r"LocalAttention\(kind='band'\) has no sinks"),
    ("chunk-on-a-band", lambda: LocalAttention(32, 4, 2, window=2, kind="band", attention_chunk=4), None,
     r"LocalAttention\(kind='band'\) has no attention_chunk"),
    ("chunk-on-global", lambda: GlobalAttention(32, 4, 2, attention_chunk=4), None,
     r"GlobalAttention: has no window or attention_chunk"),
    ("negative-chunk", lambda: GroupedQueryAttention(32, 4, 2, attention_chunk=-1), None,
     r"GroupedQueryAttention: attention_chunk must be >= 0"),
]


@pytest.mark.parametrize("build, kwargs, message", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_torch_module(build, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build()(torch.randn(1, 5, 32), **(kwargs or {}))
