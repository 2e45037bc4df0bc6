"""Shared test helpers: one-node onnxattn::ScaledDotProductAttention models, and the paths that run them
(our CPU kernel in onnxruntime, the reference function in onnxruntime and in onnx.reference, and torch).

bfloat16 cannot be fed to or fetched from onnxruntime's Python API, so bfloat16 models take and return
float32 and Cast inside the graph; callers pass float32 values that are already bfloat16-representable
(see `round_to`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxattn import ops
from onnxattn.cuda_ep import make_session

OP = "ScaledDotProductAttention"
ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
# What the graph's inputs and outputs carry for each compute dtype (bfloat16 travels as float32).
IO_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}
IO_ONNX = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.FLOAT}
# Symbolic names of the op's dims, used for graph inputs and outputs.
TARGET_DIMS = ("B", "Hq", "Sq", "Skv")
ATTR_NAMES = ("causal", "window", "band", "scale", "softcap")
ISAS = ("generic", "avx2", "avx512")


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` rounded to `dtype` and returned in the dtype the graph's inputs carry (see IO_NUMPY)."""
    if dtype == "bfloat16":
        import torch

        return torch.from_numpy(np.asarray(x, dtype=np.float32)).to(torch.bfloat16).to(torch.float32).numpy()
    return np.asarray(x).astype(IO_NUMPY[dtype])


# ---------------------------------------------------------------------------------------------------------
# Models


def _value_info(name: str, elem_type: int, shape: Sequence[Any] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def sdpa_model(
    *,
    dtype: str = "float32",
    mask: str | None = None,
    mask_shape: Sequence[int | str] | None = None,
    with_lse: bool = False,
    attrs: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int | str] | None] | None = None,
    opset: int = 18,
    attach: bool = True,
    mask_elem_type: int | None = None,
) -> onnx.ModelProto:
    """A one-node model Y[, LSE] = ScaledDotProductAttention(Q, K, V[, attn_mask]).

    mask: None, "bool" or "additive" (of the op's dtype); `mask_shape` gives its declared shape (default
    [Sq, Skv]). `shapes` overrides the declared shapes of Q, K, V, attn_mask, Y, LSE (None = unknown rank);
    by default they are symbolic: Q [B,Hq,Sq,D], K [B,Hkv,Skv,D], V [B,Hkv,Skv,Dv]. `attrs` is written as
    given (no defaults filled in); `attach` runs ops.attach_functions, which fills them in, validates the
    node and attaches its reference function. bfloat16 models take and return float32 and Cast inside."""
    io_type, op_type = IO_ONNX[dtype], ONNX_TYPES[dtype]
    declared: dict[str, Sequence[int | str] | None] = {
        "Q": ("B", "Hq", "Sq", "D"),
        "K": ("B", "Hkv", "Skv", "D"),
        "V": ("B", "Hkv", "Skv", "Dv"),
        "attn_mask": tuple(mask_shape) if mask_shape is not None else ("Sq", "Skv"),
        "Y": ("B", "Hq", "Sq", "Dv"),
        "LSE": ("B", "Hq", "Sq"),
    }
    declared.update(shapes or {})

    nodes: list[onnx.NodeProto] = []
    inputs = [_value_info(n, io_type, declared[n]) for n in ("Q", "K", "V")]
    op_inputs = ["Q", "K", "V"]
    if mask is not None:
        if mask_elem_type is None:
            mask_elem_type = TensorProto.BOOL if mask == "bool" else op_type
        mask_io = io_type if mask_elem_type == TensorProto.BFLOAT16 else mask_elem_type
        inputs.append(_value_info("attn_mask", mask_io, declared["attn_mask"]))
        op_inputs.append("attn_mask")
    if dtype == "bfloat16":
        cast_in = []
        for name in op_inputs:
            if name == "attn_mask" and mask_elem_type != TensorProto.BFLOAT16:
                cast_in.append(name)
                continue
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            cast_in.append(name + "_bf16")
        op_inputs = cast_in
    op_outputs = ["Y_bf16" if dtype == "bfloat16" else "Y"] + (["LSE"] if with_lse else [])
    nodes.append(helper.make_node(OP, op_inputs, op_outputs, domain=ops.DOMAIN, **dict(attrs or {})))
    if dtype == "bfloat16":
        nodes.append(helper.make_node("Cast", ["Y_bf16"], ["Y"], to=TensorProto.FLOAT))
    outputs = [_value_info("Y", io_type, declared["Y"])]
    if with_lse:
        outputs.append(_value_info("LSE", TensorProto.FLOAT, declared["LSE"]))
    graph = helper.make_graph(nodes, "sdpa", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=10,  # onnxruntime 1.31 reads IR <= 13; function overloads need >= 10
    )
    if attach:
        ops.attach_functions(model)
    return model


def attach_unchecked(model: onnx.ModelProto, overload: str = "") -> onnx.ModelProto:
    """Attaches the reference function of `overload` without validating the node (attach_functions would
    reject a bad node), so onnxruntime without our library can be shown a bad node."""
    node = next(ops.onnxattn_nodes(model))
    node.overload = overload
    model.functions.append(ops.get_spec(OP).build_function(overload, ops.model_opset(model)))
    return model


# ---------------------------------------------------------------------------------------------------------
# Paths


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread by default: tests run under pytest-xdist on 2 shared cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def kernel_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """onnxruntime with our library: the node runs our CPU kernel."""
    return make_session(model, providers=["CPUExecutionProvider"], session_options=session_options(threads))


def function_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """onnxruntime without our library: the node runs its attached reference function."""
    return make_session(
        model, providers=["CPUExecutionProvider"], use_library=False, session_options=session_options()
    )


def run_prefilled(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray],
                  like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Runs `session` with each output bound to a NaN-filled buffer shaped like `like` (onnxruntime writes a
    graph output straight into its bound buffer), so an element the kernel never writes shows up as NaN
    instead of whatever the allocator's memory held."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    arrays = [np.full(reference.shape, np.nan, dtype=reference.dtype) for reference in like]
    for info, array in zip(session.get_outputs(), arrays):
        binding.bind_ortvalue_output(info.name, ort.OrtValue.ortvalue_from_numpy(array))
    session.run_with_iobinding(binding)
    # The arrays themselves hold the results (OrtValue.numpy() would be a view that dies with the OrtValue).
    return arrays


def run_kernel(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Our kernel's outputs, from a run into NaN-filled output buffers (see run_prefilled); a first plain
    run gives the output shapes."""
    session = kernel_session(model, threads)
    return run_prefilled(session, feeds, session.run(None, dict(feeds)))


def run_function(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return function_session(model).run(None, dict(feeds))


def run_onnx_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """onnx.reference on the inlined model: ReferenceEvaluator ignores FunctionProto.overload (it keys
    local functions by (domain, name) only), so with several overloads it could pick the wrong body."""
    inlined = onnx.inliner.inline_local_functions(model)
    with np.errstate(divide="ignore", invalid="ignore"):  # empty rows divide 0 / 0 before a Where
        return [np.asarray(x) for x in ReferenceEvaluator(inlined).run(None, dict(feeds))]


@contextlib.contextmanager
def cpu_isa(isa: str | None) -> Iterator[None]:
    """Forces the CPU kernel's ISA (ONNXATTN_CPU_ISA, read on every kernel call) for the block."""
    old = os.environ.get("ONNXATTN_CPU_ISA")
    if isa is None:
        os.environ.pop("ONNXATTN_CPU_ISA", None)
    else:
        os.environ["ONNXATTN_CPU_ISA"] = isa
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ONNXATTN_CPU_ISA", None)
        else:
            os.environ["ONNXATTN_CPU_ISA"] = old


def run_torch(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None,
    *,
    dtype: str,
    attrs: Mapping[str, Any],
    with_lse: bool,
) -> list[np.ndarray]:
    """onnxattn.nn.functional.scaled_dot_product_attention on the same values, in `dtype`."""
    import torch

    from onnxattn.nn.functional import scaled_dot_product_attention

    tdtype = getattr(torch, dtype)
    tq, tk, tv = (torch.from_numpy(np.asarray(x, dtype=np.float32)).to(tdtype) for x in (q, k, v))
    tmask = None
    if attn_mask is not None:
        tmask = torch.from_numpy(np.asarray(attn_mask))
        if tmask.dtype != torch.bool:
            tmask = tmask.to(torch.float32).to(tdtype)
    a = {n: attrs.get(n, 0) for n in ATTR_NAMES}
    result = scaled_dot_product_attention(
        tq, tk, tv, tmask, causal=bool(a["causal"]), window=int(a["window"]), band=int(a["band"]),
        scale=float(a["scale"]) or None, softcap=float(a["softcap"]), return_lse=with_lse,
    )
    outs = list(result) if with_lse else [result]
    return [outs[0].to(torch.float32).numpy(), *(o.numpy() for o in outs[1:])]


def feeds_of(q, k, v, attn_mask=None) -> dict[str, np.ndarray]:
    feeds = {"Q": q, "K": k, "V": v}
    if attn_mask is not None:
        feeds["attn_mask"] = attn_mask
    return feeds


@dataclasses.dataclass(frozen=True)
class Problem:
    """Random inputs of one op call, already rounded to `dtype` (carried as IO_NUMPY[dtype])."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    dtype: str

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return feeds_of(self.q, self.k, self.v, self.mask)


def random_problem(
    rng: np.random.Generator,
    *,
    batch: int = 1,
    q_heads: int = 2,
    kv_heads: int = 2,
    q_len: int = 5,
    kv_len: int = 5,
    head_dim: int = 32,
    v_head_dim: int | None = None,
    dtype: str = "float32",
    mask: np.ndarray | None = None,
) -> Problem:
    """Unit-normal Q, K, V of the given sizes rounded to `dtype`; a float mask is rounded too."""
    v_head_dim = head_dim if v_head_dim is None else v_head_dim
    q = round_to(rng.standard_normal((batch, q_heads, q_len, head_dim)), dtype)
    k = round_to(rng.standard_normal((batch, kv_heads, kv_len, head_dim)), dtype)
    v = round_to(rng.standard_normal((batch, kv_heads, kv_len, v_head_dim)), dtype)
    if mask is not None and mask.dtype != np.bool_:
        mask = round_to(mask, dtype)
    return Problem(q, k, v, mask, dtype)
