"""Bad input to MultiHeadLatentAttention, as a table: each case is checked on every path that can see it
- onnx shape inference with our registered schema (static shapes) and the Python spec (`SPEC.infer_node`),
- our CPU kernel (onnxruntime with the library; inputs of unknown shape, so every shape error is the
  kernel's own, an onnxruntime error naming the op and the input, never a crash),
- the torch functional (ValueError) and, where its API can express the input, the torch module.
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

from helpers import kernel_session
from mla_helpers import MLA, MLA_FIXED_TYPES, MLA_INPUTS, mla_model
from onnxattn.nn import MultiHeadLatentAttention
from onnxattn.nn.functional import multi_head_latent_attention
from onnxattn.ops import OpError, TensorInfo, get_spec

SPEC = get_spec(MLA)
HEADS = dict(num_heads=4)
# a valid call: H = 4, R = 12, Dn = 8, Dr = 6, Dv = 10, B = 1, S = 5
OK = dict(query=(1, 5, 56), latent=(1, 5, 12), k_rope=(1, 5, 6), w_uk=(4, 12, 8), w_uv=(4, 12, 10))
PAST = dict(past_latent=(1, 3, 12), past_k_rope=(1, 3, 6))
NUMPY = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.INT64: np.int64,
         TensorProto.INT32: np.int32}


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    match: str  # regex the message must contain (shape inference, spec, torch; the kernel unless kernel_match)
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(OK))
    attrs: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(HEADS))
    types: dict[str, int] = dataclasses.field(default_factory=dict)
    kernel_match: str | None = None
    kernel: str = "run"  # "session" (attributes), "run" (shapes), "graph" (types), "silent" (limitation)
    torch_skip: str | None = None
    shape_inference: bool = True


def _with(**changes):
    return {**OK, **changes}


CASES = [
    # the cases: latent width, rope dim, head counts
    Bad("r-mismatch-latent-w-uk", r"input 'w_uk' must be \[H, R, Dn\] with R = 12 \(the latent width, latent dim 2\), "
        r"got shape \[4, 16, 8\]", shapes=_with(w_uk=(4, 16, 8))),
    Bad("r-mismatch-latent-w-uv", r"input 'w_uv' must be \[H, R, Dv\] with R = 12 \(the latent width, latent dim 2\), "
        r"got shape \[4, 10, 10\]", shapes=_with(w_uv=(4, 10, 10))),
    Bad("odd-rope-dim", r"the rope head dim Dr \(k_rope dim 2\) must be even and >= 2 \(RoPE rotates pairs\), got 5",
        shapes=_with(query=(1, 5, 52), k_rope=(1, 5, 5))),
    Bad("zero-rope-dim", r"the rope head dim Dr \(k_rope dim 2\) must be even and >= 2", shapes=_with(query=(1, 5, 32),
        k_rope=(1, 5, 0))),
    Bad("w-uk-heads", r"input 'w_uk' must be \[H, R, Dn\] with H = num_heads = 4 heads, got shape \[2, 12, 8\]",
        shapes=_with(w_uk=(2, 12, 8))),
    Bad("w-uv-heads", r"input 'w_uv' must be \[H, R, Dv\] with H = num_heads = 4 heads, got shape \[8, 12, 10\]",
        shapes=_with(w_uv=(8, 12, 10))),
    Bad("query-width", r"query width must be num_heads \* \(Dn \+ Dr\) = 4 \* \(8 \+ 6\) = 56 \(Dn from w_uk, Dr from "
        r"k_rope\), got shape \[1, 5, 50\]", shapes=_with(query=(1, 5, 50))),
    Bad("missing-num-heads", r"attribute 'num_heads' is required and must be >= 1, got 0", attrs={},
        kernel="session", kernel_match=r"'num_heads'.* required and must be >= 1, got 0"),
    # ranks, batch and sequence
    Bad("latent-rank-2", r"input 'latent' must have rank 3 \[B, S, R\], got shape \[5, 12\]", shapes=_with(latent=(5, 12))),
    Bad("latent-batch", r"input 'latent' must have the batch and sequence dims of query \[1, 5, 56\]",
        shapes=_with(latent=(2, 5, 12))),
    Bad("k-rope-seq", r"input 'k_rope' must have the batch and sequence dims of query \[1, 5, 56\]",
        shapes=_with(k_rope=(1, 4, 6))),
    # the caches
    Bad("past-latent-alone", r"inputs 'past_latent' and 'past_k_rope' must be given together",
        shapes=_with(past_latent=(1, 3, 12))),
    Bad("past-length-mismatch", r"past_latent and past_k_rope must hold the same number of tokens, got \[1, 3, 12\] "
        r"and \[1, 4, 6\]", shapes=_with(past_latent=(1, 3, 12), past_k_rope=(1, 4, 6))),
    Bad("past-latent-width", r"input 'past_latent' must be \[B, P, 12\] = \[1, P, 12\], got shape \[1, 3, 16\]",
        shapes=_with(past_latent=(1, 3, 16), past_k_rope=(1, 3, 6))),
    Bad("past-k-rope-width", r"input 'past_k_rope' must be \[B, P, 6\] = \[1, P, 6\], got shape \[1, 3, 8\]",
        shapes=_with(past_latent=(1, 3, 12), past_k_rope=(1, 3, 8))),
    Bad("past-bnsh-heads", r"input 'past_latent' must be \[B, 1, P, 12\] = \[1, 1, P, 12\], got shape \[1, 2, 3, 12\]",
        shapes=_with(past_latent=(1, 2, 3, 12), past_k_rope=(1, 2, 3, 6))),
    Bad("past-ranks-differ", r"inputs 'past_latent' and 'past_k_rope' must both be \[B, P, \.\] or both \[B, 1, P, \.\]",
        shapes=_with(past_latent=(1, 3, 12), past_k_rope=(1, 1, 3, 6))),
    Bad("past-lengths-without-past", r"input 'past_lengths' \(shared-buffer mode\) needs past_latent and past_k_rope",
        shapes=_with(past_lengths=(1,))),
    Bad("past-lengths-wrong-batch", r"input 'past_lengths' must be \[B\] = \[1\], got \[2\]",
        shapes=_with(**PAST, past_lengths=(2,))),
    # positions, RoPE
    Bad("position-ids-wrong-length", r"input 'position_ids' must be \[B, S\] = \[1, 5\], got \[1, 4\]",
        shapes=_with(position_ids=(1, 4))),
    Bad("inv-freq-wrong-length", r"input 'rope_inv_freq' must be \[Dr / 2\] = \[3\], got \[4\]",
        shapes=_with(rope_inv_freq=(4,))),
    # key_indices (DeepSeek sparse attention)
    Bad("key-indices-rank-2", r"input 'key_indices' must be \[B, S, K\] = \[1, 5, K\], got \[1, 5\]",
        shapes=_with(key_indices=(1, 5)), kernel_match=r"input 'key_indices' must have rank 3 \[B, S, K\], got "
        r"shape \[1, 5\]"),
    Bad("key-indices-wrong-seq", r"input 'key_indices' must be \[B, S, K\] = \[1, 5, K\], got \[1, 4, 8\]",
        shapes=_with(key_indices=(1, 4, 8)), kernel_match=r"input 'key_indices' must be \[B, S, K\] = \[1, 5, K\], "
        r"got shape \[1, 4, 8\]"),
    Bad("key-indices-int32", r"input 'key_indices' must be tensor\(int64\), got tensor\(int32\)",
        shapes=_with(key_indices=(1, 5, 2)), types=dict(key_indices=TensorProto.INT32), kernel="graph",
        kernel_match=r"key_indices\) of operator \(MultiHeadLatentAttention\)",
        torch_skip="the torch reference takes any integer indices"),
    # types
    Bad("latent-float16-with-float-query", r"input 'latent' must have the same type as the other 'T' inputs "
        r"\(float\), got float16", types=dict(latent=TensorProto.FLOAT16), kernel="graph", kernel_match=MLA),
    Bad("position-ids-int32", r"input 'position_ids' must be tensor\(int64\), got tensor\(int32\)",
        shapes=_with(position_ids=(1, 5)), types=dict(position_ids=TensorProto.INT32), kernel="graph",
        kernel_match=r"position_ids\) of operator \(MultiHeadLatentAttention\)",
        torch_skip="the torch reference takes any integer positions"),
    # attributes: the kernel reads them when onnxruntime creates it
    Bad("causal-2", r"attribute 'causal' must be 0 or 1, got 2", attrs=dict(HEADS, causal=2), kernel="session",
        torch_skip="causal is a bool argument"),
    Bad("negative-window", r"attribute 'window' must be >= 0 \(0 = off\), got -1", attrs=dict(HEADS, window=-1),
        kernel="session"),
    Bad("negative-softcap", r"attribute 'softcap' must be finite and >= 0 \(0 = off\), got -1",
        attrs=dict(HEADS, softcap=-1.0), kernel="session"),
    Bad("nan-scale", r"attribute 'scale' must be finite", attrs=dict(HEADS, scale=math.nan), kernel="session"),
    Bad("rope-base-zero", r"attribute 'rope_base' must be > 0, got 0", attrs=dict(HEADS, rope_base=0.0),
        kernel="session"),
    Bad("rope-interleaved-2", r"attribute 'rope_interleaved' must be 0 or 1, got 2",
        attrs=dict(HEADS, rope_interleaved=2), kernel="session", torch_skip="rope_interleaved is a bool"),
    Bad("inf-rope-attention-scaling", r"attribute 'rope_attention_scaling' must be finite",
        attrs=dict(HEADS, rope_attention_scaling=math.inf), kernel="session"),
    # GroupQueryAttention's kv_num_heads is no MLA attribute (every head reads the one latent cache). Known
    # limitation, as for every op: shape inference only sees the attributes it asks for and onnxruntime's
    # custom-op API cannot list a node's attributes; onnx.checker and onnxattn validate reject it.
    Bad("kv-num-heads-attribute", r"unknown attribute 'kv_num_heads'", attrs=dict(HEADS, kv_num_heads=1),
        kernel="silent", torch_skip="not a keyword of the functional", shape_inference=False),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES)


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def elem_type(case: Bad, name: str) -> int:
    return case.types.get(name, MLA_FIXED_TYPES.get(name, TensorProto.FLOAT))


def model(case: Bad, *, static: bool) -> onnx.ModelProto:
    present = [n for n in case.shapes if n not in MLA_INPUTS[:5]]
    shapes = {n: (case.shapes.get(n) if static else None) for n in MLA_INPUTS}
    return mla_model(present, shapes=shapes, attrs=case.attrs, elem_types=case.types, attach=False)


def feeds(case: Bad) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in case.shapes.items():
        t = elem_type(case, name)
        if t in (TensorProto.INT64, TensorProto.INT32):
            out[name] = rng.integers(0, 3, shape).astype(NUMPY[t])
        else:
            out[name] = rng.standard_normal(shape).astype(NUMPY[t])
    return out


def assert_names_op(message: str, pattern: str) -> None:
    assert MLA in message, message
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


@pytest.mark.parametrize("case", params(CASES))
def test_onnx_shape_inference(case: Bad):
    m = model(case, static=True)
    if not case.shape_inference:
        onnx.shape_inference.infer_shapes(m, strict_mode=True)  # recorded limitation, see the case
        with pytest.raises(onnx.checker.ValidationError, match="Unrecognized attribute: kv_num_heads"):
            onnx.checker.check_model(m, full_check=True)
        return
    with pytest.raises(onnx.shape_inference.InferenceError) as info:
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_spec_infer_node(case: Bad):
    inputs = [TensorInfo(elem_type(case, n), case.shapes[n]) if n in case.shapes else None for n in MLA_INPUTS]
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


@pytest.mark.parametrize("case", params([c for c in CASES if c.torch_skip is None]))
def test_torch_functional(case: Bad):
    tensors = {}
    for name, value in feeds(case).items():
        t = torch.from_numpy(value)
        tensors[name] = t.to(torch.float16) if elem_type(case, name) == TensorProto.FLOAT16 else t
    attrs = dict(case.attrs)
    attrs.setdefault("num_heads", 0)
    with pytest.raises(ValueError) as info:
        multi_head_latent_attention(**tensors, **attrs)
    assert_names_op(str(info.value), case.match)


# ---------------------------------------------------------------------------------------------------------
# Run-time values: past_lengths must leave room for the new tokens in the buffer

LENGTH_CASES = [("overflow", [3, 6]), ("negative", [-1, 0]), ("exactly-one-past-the-end", [0, 6])]


def length_feeds(lengths):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return dict(query=f(2, 5, 56), latent=f(2, 5, 12), k_rope=f(2, 5, 6), w_uk=f(4, 12, 8), w_uv=f(4, 12, 10),
                past_latent=f(2, 10, 12), past_k_rope=f(2, 10, 6), past_lengths=np.array(lengths, dtype=np.int64))


def _length_message(lengths):
    b = next(i for i, n in enumerate(lengths) if n < 0 or n + 5 > 10)
    return (rf"past_lengths\[{b}\] = {lengths[b]} is out of range: the buffers hold 10 tokens, so with 5 new tokens "
            r"it must be in \[0, 5\]")


@pytest.mark.parametrize("lengths", [pytest.param(c[1], id=c[0]) for c in LENGTH_CASES])
def test_kernel_and_torch_reject_past_lengths_out_of_range(lengths):
    m = mla_model(["past_latent", "past_k_rope", "past_lengths"], shapes={n: None for n in MLA_INPUTS}, attrs=HEADS,
                  with_present=True)
    with pytest.raises(Exception) as info:
        kernel_session(m).run(None, length_feeds(lengths))
    assert_names_op(str(info.value), _length_message(lengths))
    tensors = {n: torch.from_numpy(v) for n, v in length_feeds(lengths).items()}
    with pytest.raises(ValueError) as info:
        multi_head_latent_attention(**tensors, **HEADS)
    assert_names_op(str(info.value), _length_message(lengths))


# ---------------------------------------------------------------------------------------------------------
# Run-time values: key_indices entries must name a cache slot (negative ones are padding)

INDEX_CASES = [("past-the-concatenated-cache", None, 8, "the caches hold 8 tokens"),
               ("past-the-buffer", [2, 3], 10, "the caches hold 10 tokens")]


def index_feeds(lengths, bad):
    """B = 2, S = 5 with key_indices listing the last cache slot (fine) and `bad` at [1, 2, 3]: concatenation mode
    (lengths None: P = 3 past tokens + 5 new ones) or buffers of 10 with past_lengths `lengths`."""
    feeds = length_feeds(lengths or [0, 0])
    if lengths is None:
        feeds.update(past_latent=feeds["past_latent"][:, :3], past_k_rope=feeds["past_k_rope"][:, :3])
        del feeds["past_lengths"]
    indices = np.full((2, 5, 4), -1, dtype=np.int64)
    indices[0, :, 0] = 7 if lengths is None else 9
    indices[1, 2, 3] = bad
    return dict(feeds, key_indices=indices)


@pytest.mark.parametrize("lengths, bad, held", [pytest.param(c[1], c[2], c[3], id=c[0]) for c in INDEX_CASES])
def test_kernel_and_torch_reject_key_indices_out_of_range(lengths, bad, held):
    """An entry past the caches is an error naming the first bad entry; slots of the buffer past a sequence's
    valid length are not (they are hidden keys, as future ones)."""
    feeds = index_feeds(lengths, bad)
    indices = feeds["key_indices"]
    present = [n for n in MLA_INPUTS[5:] if n in feeds]
    m = mla_model(present, shapes={n: None for n in MLA_INPUTS}, attrs=HEADS, with_present=True)
    message = rf"key_indices\[1, 2, 3\] = {bad} is out of range: {held} \(negative entries list no key\)"
    with pytest.raises(Exception) as info:
        kernel_session(m).run(None, feeds)
    assert_names_op(str(info.value), message)
    tensors = {n: torch.from_numpy(v) for n, v in feeds.items()}
    with pytest.raises(ValueError) as info:
        multi_head_latent_attention(**tensors, **HEADS)
    assert_names_op(str(info.value), message)
    indices[1, 2, 3] = bad - 1
    kernel_session(m).run(None, feeds)  # the last slot is fine


# ---------------------------------------------------------------------------------------------------------
# The module: its constructor checks, and what its API can express reaches the op's checks

def _deepseek(**kw):
    return MultiHeadLatentAttention(32, 4, **{**dict(kv_rank=12, nope_head_dim=8, rope_head_dim=6, v_head_dim=10), **kw})


MODULE_CASES = [
    ("odd-rope-head-dim", lambda: _deepseek(rope_head_dim=5), None, r"rope_head_dim must be even and >= 2"),
    ("no-kv-rank", lambda: _deepseek(kv_rank=None), None, r"the deepseek form needs kv_rank >= 1"),
    ("zero-heads", lambda: MultiHeadLatentAttention(32, 0, kv_rank=12, nope_head_dim=8, v_head_dim=10), None,
     r"num_heads must be >= 1"),
    ("unknown-form", lambda: _deepseek(form="v2"), None, r"form must be one of \('deepseek', 'seed'\)"),
    ("seed-without-latent-dim", lambda: MultiHeadLatentAttention(32, 4, form="seed", rope_head_dim=4), None,
     r"the seed form needs latent_dim >= 1"),
    ("seed-rope-wider-than-head", lambda: MultiHeadLatentAttention(32, 4, form="seed", latent_dim=8,
                                                                   rope_head_dim=16), None,
     r"rope_head_dim \(16\) must be <= head_dim \(8\)"),
    ("seed-with-cache", lambda: MultiHeadLatentAttention(32, 4, form="seed", latent_dim=8, rope_head_dim=4),
     dict(past_latent=torch.zeros(1, 3, 8), past_k_rope=torch.zeros(1, 3, 4)), r"form='seed'\) has no cache"),
    ("past-latent-width", _deepseek, dict(past_latent=torch.zeros(1, 3, 16), past_k_rope=torch.zeros(1, 3, 6)),
     r"MultiHeadLatentAttention: input 'past_latent' must be \[B, P, 12\] = \[1, P, 12\]"),
    ("past-lengths-without-past", _deepseek, dict(past_lengths=torch.tensor([0])),
     r"MultiHeadLatentAttention: input 'past_lengths' \(shared-buffer mode\) needs past_latent"),
    ("position-ids-wrong-length", _deepseek, dict(position_ids=torch.zeros(1, 4, dtype=torch.int64)),
     r"MultiHeadLatentAttention: input 'position_ids' must be \[B, S\] = \[1, 5\], got \[1, 4\]"),
]


@pytest.mark.parametrize("build, kwargs, message", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_torch_module(build, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build()(torch.randn(1, 5, 32), **(kwargs or {}))
