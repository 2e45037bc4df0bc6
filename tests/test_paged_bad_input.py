"""Bad input to PagedAttention, as tables.

Shapes, types and attributes (SHAPE_CASES): onnx shape inference with our schema (static shapes), the Python
spec, our CPU kernel (inputs of unknown shape, so the error is the kernel's own), and the torch functional.

Index values (VALUE_CASES), which only the kernel and the torch reference can see: out-of-range block
indices, lengths the table cannot hold, negative lengths, cu_seqlens_q not starting at 0 / decreasing / not
ending at T, fewer keys than new tokens. The kernel checks them before reading or writing anything: its
pools are NaN-poisoned (a read would show) and, with the cache outputs bound to the input pools, must come
back untouched; the message names the op and the input.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from helpers import function_session, kernel_session
from paged_helpers import FIXED_TYPES, INPUTS, PAGED, paged_model
from onnxattn.nn.functional import paged_attention
from onnxattn.ops import OpError, TensorInfo, get_spec

SPEC = get_spec(PAGED)
HEADS = dict(num_heads=4, kv_num_heads=2)
# a valid call: T = 5 tokens of B = 2 sequences, Hq = 4 over Hkv = 2, D = 8, 6 blocks of 4 slots
VALID = dict(query=(5, 32), key=(5, 16), value=(5, 16), key_cache=(6, 4, 2, 8), value_cache=(6, 4, 2, 8),
             block_table=(2, 3), cu_seqlens_q=(3,), seq_lens=(2,))
NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    match: str  # regex the message must contain (shape inference, spec, torch)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(VALID))
    attrs: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(HEADS))
    types: dict[str, int] = dataclasses.field(default_factory=dict)
    kernel_match: str | None = None  # the kernel's wording where it differs
    kernel: str = "run"  # "run" (shapes), "session" (attributes), "graph" (types, rejected by onnxruntime)
    torch_skip: str | None = None


def _with(**changes):
    return dict(VALID, **changes)


SHAPE_CASES = [
    Bad("heads-not-a-multiple", r"num_heads \(4\) must be a multiple of kv_num_heads \(3\)",
        attrs=dict(num_heads=4, kv_num_heads=3), kernel="session"),
    Bad("query-rank-3", r"input 'query' must have rank 2 \[T, Hq\*D\], got shape \[1, 5, 32\]",
        shapes=_with(query=(1, 5, 32))),
    Bad("query-width-not-divisible", r"query width 30 must be num_heads \(4\) \* head size D >= 1",
        shapes=_with(query=(5, 30))),
    Bad("key-token-count", r"inputs 'key' \[4, 16\] and 'value' \[5, 16\] must have the token count of query",
        shapes=_with(key=(4, 16))),
    Bad("key-width", r"input 'key' must have width kv_num_heads \* D = 16, got \[5, 24\]", shapes=_with(key=(5, 24))),
    Bad("value-width", r"value width 15 must be kv_num_heads \(2\) \* (value head size|Dv)",
        shapes=_with(value=(5, 15))),
    Bad("key-cache-rank-3", r"input 'key_cache' must have rank 4 \[num_blocks, block_size, Hkv, D\], got shape "
        r"\[6, 4, 16\]", shapes=_with(key_cache=(6, 4, 16))),
    Bad("key-cache-heads", r"input 'key_cache' must be \[num_blocks, block_size, Hkv, 8\] with Hkv = 2, got "
        r"\[6, 4, 4, 8\]", shapes=_with(key_cache=(6, 4, 4, 8)),
        kernel_match=r"input 'key_cache' must be \[num_blocks, block_size, Hkv, D\] = \[6, 4, 2, 8\], got "
                     r"\[6, 4, 4, 8\]"),
    Bad("value-cache-head-size", r"input 'value_cache' must be \[num_blocks, block_size, Hkv, 8\]",
        shapes=_with(value_cache=(6, 4, 2, 6)),
        kernel_match=r"input 'value_cache' must be \[num_blocks, block_size, Hkv, Dv\] = \[6, 4, 2, 8\]"),
    Bad("value-cache-other-blocks", r"key_cache \[6, 4, 2, 8\] and value_cache \[5, 4, 2, 8\] must have the same "
        r"blocks", shapes=_with(value_cache=(5, 4, 2, 8)),
        kernel_match=r"input 'value_cache' must be \[num_blocks, block_size, Hkv, Dv\] = \[6, 4, 2, 8\], got "
                     r"\[5, 4, 2, 8\]"),
    Bad("block-size-0", r"input 'key_cache' must have block_size >= 1, got \[6, 0, 2, 8\]",
        shapes=_with(key_cache=(6, 0, 2, 8), value_cache=(6, 0, 2, 8))),
    Bad("block-table-rank-1", r"input 'block_table' must have rank 2 \[B, max_blocks\], got shape \[6\]",
        shapes=_with(block_table=(6,))),
    Bad("cu-seqlens-length", r"input 'cu_seqlens_q' must be \[B \+ 1\] = \[3\], got \[2\]",
        shapes=_with(cu_seqlens_q=(2,))),
    Bad("seq-lens-length", r"input 'seq_lens' must be \[B\] = \[2\], got \[3\]", shapes=_with(seq_lens=(3,))),
    Bad("position-ids-length", r"input 'position_ids' must be \[T\] = \[5\], got \[4\]",
        shapes=_with(position_ids=(4,)), attrs=dict(HEADS, rope=1)),
    Bad("q-norm-weight-length", r"input 'q_norm_weight' must be \[D\] = \[8\], got \[7\]",
        shapes=_with(q_norm_weight=(7,))),
    Bad("inv-freq-length", r"input 'rope_inv_freq' must be \[rotary_dim / 2\] = \[4\], got \[3\]",
        shapes=_with(rope_inv_freq=(3,)), attrs=dict(HEADS, rope=1)),
    Bad("sinks-length", r"input 'sinks' must be \[num_heads\] = \[4\] \(one logit per query head\), got \[2\]",
        shapes=_with(sinks=(2,)), kernel_match=r"input 'sinks' must be \[num_heads\] = \[4\], got \[2\]"),
    Bad("rotary-dim-above-head-dim", r"rotary_dim \(16\) must be <= D \(8\)", attrs=dict(HEADS, rope=1, rotary_dim=16)),
    Bad("block-table-int64", r"input 'block_table' must be tensor\(int32\), got tensor\(int64\)",
        types=dict(block_table=TensorProto.INT64), kernel="graph",
        kernel_match=r"Type 'tensor\(int64\)' of input parameter \(block_table\) of operator \(PagedAttention\)",
        torch_skip="the torch reference takes any integer index tensors"),
    Bad("negative-window", r"attribute 'window' must be >= 0 \(0 = off\), got -1", attrs=dict(HEADS, window=-1),
        kernel="session"),
    Bad("negative-attention-chunk", r"attribute 'attention_chunk' must be >= 0 \(0 = off\), got -1",
        attrs=dict(HEADS, attention_chunk=-1), kernel="session"),
]


def elem_type(case: Bad, name: str) -> int:
    return case.types.get(name, FIXED_TYPES.get(name, TensorProto.FLOAT))


def shape_model(case: Bad, *, static: bool) -> onnx.ModelProto:
    present = [n for n in case.shapes if n in INPUTS[8:]]
    shapes = {n: (case.shapes.get(n) if static else None) for n in INPUTS}
    return paged_model(present, shapes=shapes, attrs=case.attrs, elem_types=case.types, attach=False)


def shape_feeds(case: Bad) -> dict[str, np.ndarray]:
    """Values that are valid wherever the shapes allow (lengths within the table, blocks in range)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in case.shapes.items():
        t = elem_type(case, name)
        if t in (TensorProto.INT32, TensorProto.INT64):
            out[name] = np.zeros(shape, dtype=NUMPY[t])
        else:
            out[name] = rng.standard_normal(shape).astype(NUMPY[t])
    if out["cu_seqlens_q"].shape == (3,):
        out["cu_seqlens_q"][:] = (0, 2, out["query"].shape[0])
    if out["seq_lens"].shape == (2,):
        out["seq_lens"][:] = (2, 3)
    return out


def assert_names_op(message: str, pattern: str) -> None:
    assert PAGED in message, message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


@pytest.mark.parametrize("case", params(SHAPE_CASES))
def test_onnx_shape_inference(case: Bad):
    with pytest.raises(onnx.shape_inference.InferenceError) as info:
        onnx.shape_inference.infer_shapes(shape_model(case, static=True), strict_mode=True)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(SHAPE_CASES))
def test_spec_infer_node(case: Bad):
    inputs = [TensorInfo(elem_type(case, n), case.shapes[n]) if n in case.shapes else None for n in INPUTS]
    with pytest.raises(OpError) as info:
        SPEC.infer_node(inputs, [helper.make_attribute(k, v) for k, v in case.attrs.items()])
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(SHAPE_CASES))
def test_kernel_reports_a_shape_error(case: Bad):
    m = shape_model(case, static=False)
    if case.kernel in ("session", "graph"):
        with pytest.raises(Exception) as info:
            kernel_session(m)
    else:
        session = kernel_session(m)
        with pytest.raises(Exception) as info:
            session.run(None, shape_feeds(case))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert_names_op(str(info.value), case.kernel_match or case.match)


@pytest.mark.parametrize("case", params([c for c in SHAPE_CASES if c.torch_skip is None]))
def test_torch_functional_shape_error(case: Bad):
    tensors = {n: torch.from_numpy(v) for n, v in shape_feeds(case).items()}
    with pytest.raises(ValueError) as info:
        paged_attention(**tensors, **case.attrs)
    assert_names_op(str(info.value), case.match)


# ---------------------------------------------------------------------------------------------------------
# Index values: checked by the kernel before any access


@dataclasses.dataclass(frozen=True)
class BadValues:
    id: str
    match: str
    block_table: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5))
    cu_seqlens_q: tuple[int, ...] = (0, 2, 5)
    seq_lens: tuple[int, ...] = (6, 3)


VALUE_CASES = [
    BadValues("block-index-too-large", r"block_table\[1, 0\] = 6 is out of range \[0, 6\)", block_table=((0, 1, 2),
                                                                                                      (6, 4, 5))),
    BadValues("block-index-far-out", r"block_table\[0, 1\] = 1000000 is out of range \[0, 6\)",
              block_table=((0, 1000000, 2), (3, 4, 5))),
    BadValues("block-index-negative", r"block_table\[0, 0\] = -1 is out of range \[0, 6\)",
              block_table=((-1, 1, 2), (3, 4, 5))),
    BadValues("length-beyond-table", r"seq_lens\[0\] = 13 is larger than its block table can hold \(3 blocks of 4 = "
              r"12\)", seq_lens=(13, 3)),
    BadValues("length-negative", r"input 'seq_lens' must be >= 0, got seq_lens\[1\] = -3", seq_lens=(6, -3)),
    BadValues("fewer-keys-than-new-tokens", r"seq_lens\[1\] = 2 is smaller than the sequence's 3 new tokens",
              seq_lens=(6, 2)),
    BadValues("cu-not-starting-at-0", r"input 'cu_seqlens_q' must start at 0, got 1", cu_seqlens_q=(1, 2, 5)),
    BadValues("cu-not-ending-at-t", r"input 'cu_seqlens_q' must end at the token count T = 5, got 4",
              cu_seqlens_q=(0, 2, 4)),
    # decreasing (with B = 2 and the right end, the value before the decrease lies past T: the rows of sequence 0
    # would run past the packed tokens, so the whole of cu_seqlens_q is checked before any row is used)
    BadValues("cu-decreasing-past-t", r"input 'cu_seqlens_q' must not decrease, got 9 then 5 at 1",
              cu_seqlens_q=(0, 9, 5), seq_lens=(12, 3)),
]


def value_feeds(case: BadValues) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    normal = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(query=normal(5, 32), key=normal(5, 16), value=normal(5, 16),
                key_cache=np.full((6, 4, 2, 8), np.nan, np.float32),
                value_cache=np.full((6, 4, 2, 8), np.nan, np.float32),
                block_table=np.array(case.block_table, np.int32), cu_seqlens_q=np.array(case.cu_seqlens_q, np.int32),
                seq_lens=np.array(case.seq_lens, np.int32))


def test_value_feeds_are_valid_without_the_faults():
    """The base call of VALUE_CASES runs (so each case's error is its own fault)."""
    session = kernel_session(paged_model(shapes={n: None for n in INPUTS}, attrs=HEADS))
    feeds = value_feeds(BadValues("valid", ""))
    feeds["key_cache"][:] = feeds["value_cache"][:] = 0.0
    (out,) = session.run(None, feeds)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in VALUE_CASES])
def test_kernel_checks_index_values_before_any_access(case: BadValues):
    """NaN-poisoned pools bound in place: the kernel fails with the op's and the input's names, and
    neither pool changed (the check comes before the new tokens are written)."""
    session = kernel_session(paged_model(shapes={n: None for n in INPUTS}, attrs=HEADS, with_present=True))
    feeds = value_feeds(case)
    pools = {n: ort.OrtValue.ortvalue_from_numpy(feeds[n]) for n in ("key_cache", "value_cache")}
    binding = session.io_binding()
    for name, value in feeds.items():
        if name in pools:
            binding.bind_ortvalue_input(name, pools[name])
        else:
            binding.bind_cpu_input(name, value)
    binding.bind_output("output")
    binding.bind_ortvalue_output("key_cache_out", pools["key_cache"])
    binding.bind_ortvalue_output("value_cache_out", pools["value_cache"])
    with pytest.raises(RuntimeError, match="running PagedAttention node") as info:  # run_with_iobinding's type
        session.run_with_iobinding(binding)
    assert_names_op(str(info.value), case.match)
    for value in pools.values():
        assert np.isnan(value.numpy()).all(), "the kernel wrote into a pool before rejecting the input"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in VALUE_CASES])
def test_kernel_checks_index_values_without_cache_outputs(case: BadValues):
    session = kernel_session(paged_model(shapes={n: None for n in INPUTS}, attrs=HEADS))
    with pytest.raises(Exception) as info:
        session.run(None, value_feeds(case))
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in VALUE_CASES])
def test_torch_checks_index_values(case: BadValues):
    tensors = {n: torch.from_numpy(v) for n, v in value_feeds(case).items()}
    with pytest.raises(ValueError) as info:
        paged_attention(**tensors, **HEADS)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("blocks, outcome", [
    pytest.param(((7, 1, 2), (3, 4, 5)), "silent", id="past-block"),  # clamped to the last block
    pytest.param(((0, 7, 2), (3, 4, 5)), "ScatterND", id="written-block"),  # the write's index is out of range
])
def test_function_with_block_index_out_of_range(blocks, outcome):
    """Recorded limitations (the op's doc): the reference function cannot check data. It clamps the block
    indices it reads, so an out-of-range block of the past runs silently; a new token's block fails in
    ScatterND, with onnxruntime's message, not the op's. The kernel and torch reject both (above)."""
    feeds = value_feeds(BadValues("function", "", block_table=blocks))
    feeds["key_cache"][:] = feeds["value_cache"][:] = 0.0
    session = function_session(paged_model(shapes={n: None for n in INPUTS}, attrs=HEADS))
    if outcome == "silent":
        (out,) = session.run(None, feeds)
        assert out.shape == (5, 32)
        return
    with pytest.raises(Exception, match=outcome):
        session.run(None, feeds)
