"""Bad input to NativeSparseAttention and SparseRoutedAttention, as a table: each case is checked on every
path that can see it — onnx shape inference with our registered schema (static shapes), our CPU kernel
(inputs of unknown shape, so the error is the kernel's own: an onnxruntime error naming the op, never a
crash), and the torch functional (ValueError); plus the torch modules' constructor checks."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from helpers import kernel_session
from sparse_helpers import NSA, ROUTED, nsa_attrs, one_node_model, one_torch_thread, routed_attrs  # noqa: F401
from onnxattn.nn import (
    NativeSparseAttention,
    NSACoarseCompression,
    NSAFineSelection,
    NSAWindowAttention,
    SparseRoutedAttention,
    native_sparse_attention,
    sparse_routed_attention,
)

QKV = dict(Q=(1, 4, 8, 8), K=(1, 2, 8, 8), V=(1, 2, 8, 8))


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    op: str
    match: str  # regex the message must contain on every path
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(QKV))
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    kernel: str = "run"  # "session": rejected when onnxruntime creates the kernel (attributes)


def nsa(id, match, shapes=None, kernel="run", **attrs):
    return Bad(id, NSA, match, {**QKV, **(shapes or {})}, nsa_attrs(**{"block_size": 4, "top_blocks": 1, **attrs}),
               kernel)


def routed(id, match, shapes=None, kernel="session", **attrs):
    return Bad(id, ROUTED, match, {**QKV, **(shapes or {})}, routed_attrs(**{"segment_size": 4, "top_k": 1, **attrs}),
               kernel)


CASES = [
    # the cases
    nsa("nsa-block-size-0", r"attribute 'block_size' must be >= 1, got 0", block_size=0),
    nsa("nsa-block-size-negative", r"attribute 'block_size' must be >= 1, got -4", block_size=-4),
    nsa("nsa-top-blocks-negative", r"attribute 'top_blocks' must be >= 0 \(0 = off\), got -1", top_blocks=-1),
    routed("routed-segment-size-0", r"attribute 'segment_size' must be >= 1, got 0", segment_size=0),
    routed("routed-top-k-0", r"attribute 'top_k' must be >= 1, got 0", top_k=0),
    routed("routed-top-k-negative", r"attribute 'top_k' must be >= 1, got -3", top_k=-3),
    nsa("nsa-heads-not-multiple", r"query heads \(3, Q dim 1\) must be a multiple of key/value heads \(2, K dim 1\)",
        shapes=dict(Q=(1, 3, 8, 8))),
    routed("routed-heads-not-multiple", r"query heads \(5, Q dim 1\) must be a multiple of key/value heads \(2, K dim 1\)",
           shapes=dict(Q=(1, 5, 8, 8)), kernel="run"),
    nsa("nsa-gates-heads", r"input 'gates' of shape \[3, 1, 3\] does not broadcast to \[B, Hq, Sq, 3\]",
        shapes=dict(gates=(3, 1, 3))),
    nsa("nsa-gates-branches", r"input 'gates' of shape \[4, 8, 2\] does not broadcast to \[B, Hq, Sq, 3\]",
        shapes=dict(gates=(4, 8, 2))),
    nsa("nsa-gates-rank-5", r"input 'gates' must have rank <= 4", shapes=dict(gates=(1, 1, 4, 8, 3))),
    # the other rules
    nsa("nsa-all-branches-off", r"every branch is off", top_blocks=0),
    nsa("nsa-forced-exceed-top", r"the forced blocks \(own block 1 \+ sink_blocks 1 \+ local_blocks 1\) exceed "
        r"top_blocks = 2", top_blocks=2, causal=1, sink_blocks=1, local_blocks=1),
    nsa("nsa-sink-without-blocks", r"sink_blocks and local_blocks need the block branch", top_blocks=0, window=2,
        sink_blocks=1),
    nsa("nsa-fine-and-compression", r"the fine branch \(top_tokens > 0\) and the compression branch",
        shapes=dict(compressed_key=(1, 2, 2, 8), compressed_value=(1, 2, 2, 8)), top_tokens=2),
    nsa("nsa-compressed-count", r"input 'compressed_key' must be \[B, Hkv, Nc, \.\] = \[1, 2, 2, 8\] \(Nc = Skv // "
        r"block_size\), got shape \[1, 2, 3, 8\]", shapes=dict(compressed_key=(1, 2, 3, 8), compressed_value=(1, 2, 3, 8))),
    nsa("nsa-compressed-value-width", r"input 'compressed_value' must be \[B, Hkv, Nc, \.\] = \[1, 2, 2, 8\]",
        shapes=dict(compressed_key=(1, 2, 2, 8), compressed_value=(1, 2, 2, 4))),
    nsa("nsa-negative-scale", r"attribute 'scale' must be finite and >= 0", scale=-1.0),
    nsa("nsa-v-length", r"input 'V' must be \[B, Hkv, Skv, Dv\] with Hkv = 2 and Skv = 8 \(from K\)",
        shapes=dict(V=(1, 2, 7, 8))),
    nsa("nsa-q-rank", r"input 'Q' must have rank 4", shapes=dict(Q=(4, 8, 8))),
    routed("routed-positions-shape", r"input 'position_ids' must be \[B or 1, Skv\]", shapes=dict(position_ids=(1, 7)),
           kernel="run"),
    routed("routed-rotary-odd", r"attribute 'rotary_dim' must be even and <= D = 8, got 5", rope=1, rotary_dim=5,
           kernel="run"),
    routed("routed-rope-sq-gt-skv", r"so Sq \(8\) must be <= Skv \(6\)", shapes=dict(K=(1, 2, 6, 8), V=(1, 2, 6, 8)),
           rope=1, kernel="run"),
    routed("routed-cosine-2", r"attribute 'cosine' must be 0 or 1, got 2", cosine=2),
]


def _model(case: Bad, static: bool) -> onnx.ModelProto:
    shapes = {n: (s if static else None) for n, s in case.shapes.items()}
    outputs = ["Y"]
    return one_node_model(case.op, list(case.shapes), outputs, attrs=case.attrs, shapes=shapes, attach=False)


def _feeds(case: Bad) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.integers(0, 4, s).astype(np.int64) if n == "position_ids" else
            rng.standard_normal(s).astype(np.float32) for n, s in case.shapes.items()}


def _assert_message(message: str, case: Bad) -> None:
    assert case.op in message, message
    assert re.search(case.match, message), f"{case.match!r} not in {message!r}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_onnx_shape_inference(case: Bad):
    with pytest.raises(onnx.shape_inference.InferenceError) as info:
        onnx.shape_inference.infer_shapes(_model(case, static=True), strict_mode=True)
    _assert_message(str(info.value), case)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_kernel_reports_an_error(case: Bad):
    model = _model(case, static=False)
    if case.kernel == "session":
        with pytest.raises(Exception) as info:
            kernel_session(model)
    else:
        session = kernel_session(model)
        with pytest.raises(Exception) as info:
            session.run(None, _feeds(case))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    _assert_message(str(info.value), case)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.id != "routed-cosine-2"])
def test_torch_functional(case: Bad):  # (the functional's cosine is a bool: 2 cannot be said)
    t = {n: torch.from_numpy(v) for n, v in _feeds(case).items()}
    with pytest.raises(ValueError) as info:
        if case.op == NSA:
            native_sparse_attention(t["Q"], t["K"], t["V"], t.get("gates"), t.get("compressed_key"),
                                    t.get("compressed_value"), **case.attrs)
        else:
            sparse_routed_attention(t["Q"], t["K"], t["V"], t.get("position_ids"), **case.attrs)
    _assert_message(str(info.value), case)


MODULE_CASES = [
    ("coarse-block-size-0", lambda: NSACoarseCompression(0, 4), r"block_size must be >= 1, got 0"),
    ("coarse-top-blocks-0", lambda: NSACoarseCompression(4, 0), r"top_blocks must be >= 1, got 0"),
    ("fine-top-tokens-0", lambda: NSAFineSelection(0), r"top_tokens must be >= 1, got 0"),
    ("window-0", lambda: NSAWindowAttention(0), r"window must be >= 1, got 0"),
    ("nsa-heads", lambda: NativeSparseAttention(6, 4, 8), r"num_heads \(6\) must be a multiple of num_kv_heads \(4\)"),
    ("nsa-mlp-gate-needs-hidden", lambda: NativeSparseAttention(4, 2, 8, gate="mlp"), r"gate must be 'param' or 'mlp'"),
    ("nsa-compressor-kind", lambda: NativeSparseAttention(4, 2, 8, compression="max"), r"kind must be 'mean' or 'linear'"),
    ("routed-top-k-0", lambda: SparseRoutedAttention(8, 0), r"top_k must be >= 1, got 0"),
    ("routed-routing", lambda: SparseRoutedAttention(8, 2, routing="l2"), r"routing must be 'cosine' or 'dot'"),
]


@pytest.mark.parametrize("build, message", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
def test_torch_module_constructors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_module_gate_shape_reaches_the_op_check():
    nsa = NativeSparseAttention(4, 2, 8, block_size=4, top_blocks=1)
    q, k = torch.randn(1, 4, 8, 8), torch.randn(1, 2, 8, 8)
    nsa.gate_logits = torch.nn.Parameter(torch.zeros(3, 3))  # wrong head count
    with pytest.raises(ValueError, match=r"NativeSparseAttention: input 'gates' of shape \[3, 1, 3\] does not broadcast"):
        nsa(q, k, k)
