"""Bad input to ScaledDotProductAttention, as a table: each case is checked on every path that can see it
- onnx shape inference with our registered schema (`infer_shapes(strict_mode=True)` on static shapes),
- the Python spec (`SPEC.infer_node`),
- our kernel (onnxruntime with the library; inputs of unknown shape, so every shape error is the kernel's
  own, returned as an onnxruntime error naming the op and the input, never a crash),
- the torch module (ValueError),
and, for attributes, onnxruntime *without* the library (the reference function), whose behaviour is
recorded per case: it cannot validate attributes, so some invalid values run silently (known limitation).
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

from helpers import attach_unchecked, function_session, kernel_session, sdpa_model
from onnxattn.nn import ScaledDotProductAttention
from onnxattn.ops import OpError, TensorInfo, get_spec

SPEC = get_spec("ScaledDotProductAttention")
Q, K, V = (1, 4, 5, 8), (1, 2, 7, 8), (1, 2, 7, 8)  # a valid GQA call: Hq=4 over Hkv=2, Sq=5, Skv=7
NUMPY = {TensorProto.BOOL: np.bool_, TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16,
         TensorProto.INT32: np.int32}


@dataclasses.dataclass(frozen=True)
class Bad:
    id: str
    match: str  # regex the message must contain on the ONNX paths (shape inference, spec, kernel)
    q: tuple[int, ...] = Q
    k: tuple[int, ...] = K
    v: tuple[int, ...] = V
    mask: tuple[int, ...] | None = None
    mask_type: int = TensorProto.BOOL
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    # torch module: (exception, regex), or None where the torch API cannot express the input (reason given)
    torch_error: tuple[type[Exception], str] | None = None
    # where our kernel reports it: "session" (kernel creation reads attributes), "run" (shapes), "silent"
    kernel: str = "run"
    # attribute cases only: onnxruntime without the library, "session" or "silent" (known limitation)
    function: str | None = None
    # False: onnx shape inference does not see this input (known limitation; the checker does, see below)
    shape_inference: bool = True

    @property
    def is_shape_case(self) -> bool:
        return not self.attrs and self.mask_type in (TensorProto.BOOL, TensorProto.FLOAT)


CASES = [
    # ranks
    Bad("q-rank3", r"input 'Q' must have rank 4 \[B, Hq, Sq, D\], got shape \[4, 5, 8\]", q=(4, 5, 8),
        torch_error=(ValueError, r"q must have rank 4")),
    Bad("k-rank5", r"input 'K' must have rank 4 \[B, Hkv, Skv, D\]", k=(1, 1, 2, 7, 8),
        torch_error=(ValueError, r"k must have rank 4")),
    Bad("v-rank2", r"input 'V' must have rank 4 \[B, Hkv, Skv, Dv\]", v=(7, 8),
        torch_error=(ValueError, r"v must have rank 4")),
    # head counts and sizes
    Bad("heads-not-divisible", r"query heads \(4, Q dim 1\) must be a multiple of key/value heads \(3, K dim 1\)",
        k=(1, 3, 7, 8), v=(1, 3, 7, 8), torch_error=(ValueError, r"query heads \(4\) must be a multiple")),
    Bad("zero-kv-heads", r"must have at least one head", k=(1, 0, 7, 8), v=(1, 0, 7, 8),
        torch_error=(ValueError, r"must be a multiple of key/value heads \(0\)")),
    Bad("d-mismatch", r"input 'K' must have head size D = 8 \(from Q\) in dim 3", k=(1, 2, 7, 6),
        torch_error=(ValueError, r"k must have head size D = 8")),
    Bad("v-heads-mismatch", r"input 'V' must be \[B, Hkv, Skv, Dv\] with Hkv = 2 and Skv = 7", v=(1, 1, 7, 8),
        torch_error=(ValueError, r"v must be \[B, Hkv, Skv, Dv\] matching k")),
    Bad("v-length-mismatch", r"input 'V' must be \[B, Hkv, Skv, Dv\] with Hkv = 2 and Skv = 7", v=(1, 2, 6, 8),
        torch_error=(ValueError, r"v must be \[B, Hkv, Skv, Dv\] matching k")),
    Bad("batch-mismatch", r"batch sizes differ: Q \[1, 4, 5, 8\], K \[2, 2, 7, 8\]", k=(2, 2, 7, 8), v=(2, 2, 7, 8),
        torch_error=(ValueError, r"batch sizes differ")),
    # masks
    Bad("mask-not-broadcastable-skv", r"input 'attn_mask' of shape \[5, 6\] does not broadcast to \[B, Hq, Sq, Skv\]",
        mask=(5, 6), torch_error=(ValueError, r"attn_mask of shape \[5, 6\] does not broadcast")),
    Bad("mask-not-broadcastable-batch", r"input 'attn_mask' of shape \[3, 1, 1, 7\] does not broadcast",
        mask=(3, 1, 1, 7), torch_error=(ValueError, r"attn_mask of shape \[3, 1, 1, 7\] does not broadcast")),
    Bad("mask-not-broadcastable-heads", r"input 'attn_mask' of shape \[1, 2, 5, 7\] does not broadcast",
        mask=(1, 2, 5, 7), mask_type=TensorProto.FLOAT,
        torch_error=(ValueError, r"attn_mask of shape \[1, 2, 5, 7\] does not broadcast")),
    Bad("mask-rank5", r"input 'attn_mask' must have rank <= 4", mask=(1, 1, 1, 5, 7),
        torch_error=(ValueError, r"attn_mask of shape \[1, 1, 1, 5, 7\] does not broadcast")),
    Bad("mask-int32", r"input 'attn_mask' must be (one of tensor\(bool\)|bool or float)", mask=(5, 7),
        mask_type=TensorProto.INT32, torch_error=(ValueError, r"attn_mask must be bool or torch.float32")),
    Bad("mask-float16-with-float-q", r"input 'attn_mask' must be bool or float \(the type of Q\), got float16",
        mask=(5, 7), mask_type=TensorProto.FLOAT16, torch_error=(ValueError, r"attn_mask must be bool or torch.float32")),
    # attributes: the kernel reads them when onnxruntime creates it, so it fails at session creation
    Bad("negative-window", r"attribute 'window' must be >= 0 \(0 = off\), got -1", attrs=dict(window=-1),
        torch_error=(ValueError, r"window must be >= 0"), kernel="session",
        function="silent"),  # known limitation: the function treats window <= 0 as off
    Bad("negative-band", r"attribute 'band' must be >= 0 \(0 = off\), got -2", attrs=dict(band=-2),
        torch_error=(ValueError, r"band must be >= 0"), kernel="session",
        function="silent"),  # known limitation: the function treats band <= 0 as off
    Bad("causal-2", r"attribute 'causal' must be 0 or 1, got 2", attrs=dict(causal=2),
        # torch: `causal` is a bool argument, 2 cannot be passed as such (bool(2) is True)
        kernel="session", function="silent"),  # known limitation: the function treats any causal != 0 as on
    Bad("causal-float", r"attribute 'causal' must be an int, got (a )?float", attrs=dict(causal=1.0),
        # torch: a Python argument, not a typed attribute
        kernel="session", function="session"),
    Bad("scale-int", r"attribute 'scale' must be an? float, got (a )?int", attrs=dict(scale=1),
        # torch: an int scale is a valid Python number
        kernel="session", function="session"),
    Bad("nan-scale", r"attribute 'scale' must be finite \(0 = 1/sqrt\(D\)\), got nan", attrs=dict(scale=math.nan),
        torch_error=(ValueError, r"scale must be finite"), kernel="session",
        function="silent"),  # known limitation: the function computes with NaN and outputs NaN
    Bad("negative-softcap", r"attribute 'softcap' must be finite and >= 0 \(0 = off\), got -1", attrs=dict(softcap=-1.0),
        torch_error=(ValueError, r"softcap must be finite and >= 0"), kernel="session",
        function="silent"),  # known limitation: the function treats softcap <= 0 as off
    Bad("unknown-attribute", r"unknown attribute 'foo'", attrs=dict(foo=1),
        torch_error=(TypeError, r"unexpected keyword argument 'foo'"),
        # Known limitations: onnx's inference context only hands our inference function the attributes it
        # asks for by name, so shape inference cannot see it (onnx.checker does, see
        # test_checker_rejects_unknown_attribute); onnxruntime's custom-op API cannot list a node's attributes,
        # so neither the kernel nor the function can reject it.
        kernel="silent", function="silent", shape_inference=False),
]
ATTRIBUTE_CASES = [c for c in CASES if c.attrs]
SHAPE_CASES = [c for c in CASES if c.is_shape_case and "rank" not in c.id]


def params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def model(case: Bad, *, static: bool) -> onnx.ModelProto:
    """The case's node without its function (the schema or the kernel must catch it): static declared
    shapes, or inputs of unknown shape for the kernel."""
    shapes = dict(Q=case.q, K=case.k, V=case.v, attn_mask=case.mask) if static else dict(Q=None, K=None, V=None,
                                                                                          attn_mask=None)
    return sdpa_model(
        attrs=case.attrs, shapes=dict(shapes, Y=None, LSE=None), mask=None if case.mask is None else "bool",
        mask_elem_type=case.mask_type, attach=False,
    )


def feeds(case: Bad) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in zip("QKV", (case.q, case.k, case.v))}
    if case.mask is not None:
        out["attn_mask"] = (rng.random(case.mask) < 0.5).astype(NUMPY[case.mask_type])
    return out


def assert_names_op(message: str, pattern: str) -> None:
    assert "ScaledDotProductAttention" in message, message
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
    inputs = [TensorInfo(TensorProto.FLOAT, case.q), TensorInfo(TensorProto.FLOAT, case.k),
              TensorInfo(TensorProto.FLOAT, case.v)]
    if case.mask is not None:
        inputs.append(TensorInfo(case.mask_type, case.mask))
    attrs = [helper.make_attribute(name, value) for name, value in case.attrs.items()]
    with pytest.raises(OpError) as info:
        SPEC.infer_node(inputs, attrs)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params(CASES))
def test_kernel_reports_an_error_status(case: Bad):
    m = model(case, static=False)
    if case.kernel == "silent":
        kernel_session(m).run(None, feeds(case))  # recorded limitation, see the case
        return
    if case.kernel == "session":
        with pytest.raises(Exception) as info:
            kernel_session(m)
    else:
        session = kernel_session(m)
        with pytest.raises(Exception) as info:
            session.run(None, feeds(case))
    assert type(info.value).__module__.startswith("onnxruntime"), type(info.value)
    assert_names_op(str(info.value), case.match)


@pytest.mark.parametrize("case", params([c for c in CASES if c.torch_error is not None]))
def test_torch_module(case: Bad):
    exception, pattern = case.torch_error
    kwargs = {"causal": False, **case.attrs}
    tensors = [torch.from_numpy(x) for x in feeds(case).values()]
    with pytest.raises(exception, match=pattern):
        module = ScaledDotProductAttention(**kwargs)
        module(*tensors)


@pytest.mark.parametrize("case", params(ATTRIBUTE_CASES))
def test_function_without_library(case: Bad):
    """onnxruntime without our library inlines the reference function: attribute types are caught when it
    builds the session; invalid values are not (recorded per case as known limitations)."""
    m = attach_unchecked(model(case, static=False))
    if case.function == "silent":
        function_session(m).run(None, feeds(case))
        return
    assert case.function == "session"
    with pytest.raises(Exception, match="Constant"):  # the body's Constant(ref_attr_name=...) has the wrong type
        function_session(m)


@pytest.mark.parametrize("case", params(SHAPE_CASES))
def test_symbolic_dims_are_checked_at_run_time(case: Bad):
    """With symbolic dims (known ranks, unknown sizes) shape inference cannot tell and must accept the
    model; the kernel then reports the error when it runs."""
    symbolic = {name: tuple(f"{name}{i}" for i in range(len(shape)))
                for name, shape in (("Q", case.q), ("K", case.k), ("V", case.v), ("attn_mask", case.mask or ()))}
    m = sdpa_model(shapes=dict(symbolic, Y=None, LSE=None), mask=None if case.mask is None else "bool",
                   mask_elem_type=case.mask_type, attrs=case.attrs, attach=False)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    with pytest.raises(Exception) as info:
        kernel_session(m).run(None, feeds(case))
    assert_names_op(str(info.value), case.match)


def test_checker_rejects_unknown_attribute():
    (case,) = [c for c in CASES if c.id == "unknown-attribute"]
    with pytest.raises(onnx.checker.ValidationError, match="Unrecognized attribute: foo"):
        onnx.checker.check_model(sdpa_model(attrs=case.attrs, attach=False), full_check=True)


def test_attach_functions_rejects_bad_nodes():
    """attach_functions validates every node before it picks the function overload."""
    for case in (CASES[0], ATTRIBUTE_CASES[0]):
        with pytest.raises(OpError, match=case.match):
            sdpa_model(attrs=case.attrs, shapes=dict(Q=case.q, K=case.k, V=case.v, Y=None, LSE=None))
