"""Shared test helpers: one-node onnxattn::ScaledDotProductAttention models, and the paths that run them
(our CPU kernel in onnxruntime, the reference function in onnxruntime and in onnx.reference, and torch).

bfloat16 cannot be fed to or fetched from onnxruntime's Python API, so bfloat16 models take and return
float32 and Cast inside the graph; callers pass float32 values that are already bfloat16-representable
(see `round_to`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxattn import ops
from onnxattn.cuda_ep import library_path, make_session

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
    model.functions.append(ops.get_spec(node.op_type).build_function(overload, ops.model_opset(model)))
    return model


# ---------------------------------------------------------------------------------------------------------
# Paths


def session_options(threads: int = 1) -> ort.SessionOptions:
    """One intra-op thread by default: tests run under pytest-xdist on 2 shared cores."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def kernel_session(model: onnx.ModelProto, threads: int = 1, profile: bool = False) -> ort.InferenceSession:
    """onnxruntime with our library: the node runs our CPU kernel (if the library has one for it; see
    run_kernel). `profile` turns on onnxruntime's profiling, read back by kernel_ops_run."""
    options = session_options(threads)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"onnxattn_profile_{os.getpid()}")
    return make_session(model, providers=["CPUExecutionProvider"], session_options=options)


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


class KernelDidNotRun(AssertionError):
    """onnxruntime with our library ran an onnxattn node as its reference function, not as our kernel."""


def kernel_ops_run(session: ort.InferenceSession) -> set[str]:
    """Ends `session`'s profiling (see kernel_session(profile=True)) and returns the op types of the nodes
    it ran. A node our library has a kernel for appears under its own op type; a node onnxruntime expanded
    into its function appears as the function's standard ops instead."""
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}


def run_kernel(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Our kernel's outputs, from a run into NaN-filled output buffers (see run_prefilled); a first plain
    run gives the output shapes. Proves the kernel ran: onnxruntime's profile must show every onnxattn op
    of the model under its own name (a library without a kernel for an op silently runs its function)."""
    session = kernel_session(model, threads, profile=True)
    try:
        outputs = run_prefilled(session, feeds, session.run(None, dict(feeds)))
    finally:
        ran = kernel_ops_run(session)  # also removes the profile file
    expected = {node.op_type for node in ops.onnxattn_nodes(model)}
    missing = expected - ran
    if missing:
        raise KernelDidNotRun(f"onnxruntime ran {', '.join(sorted(missing))} as the reference function, not as "
                              f"our kernel: the library registers no kernel for it ({library_path()}; built "
                              "before the kernel was added? an editable install copies the library there: "
                              "rebuild with pip install --no-build-isolation -e .)")
    return outputs


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


# ---------------------------------------------------------------------------------------------------------
# GroupQueryAttention: one-node models and the torch functional

GQA = "GroupQueryAttention"
GQA_INPUTS = ("query", "key", "value", "past_key", "past_value", "past_lengths", "position_ids", "q_norm_weight",
              "k_norm_weight", "rope_inv_freq", "attention_mask", "sinks")
GQA_OUTPUTS = ("output", "present_key", "present_value")
GQA_RANKS = dict(zip(GQA_INPUTS + GQA_OUTPUTS, (3, 3, 3, 4, 4, 1, 2, 1, 1, 1, 2, 1, 3, 4, 4)))
# Inputs of the op's type T (cast to bfloat16 inside bfloat16 models); the others have fixed types.
GQA_T_INPUTS = ("query", "key", "value", "past_key", "past_value", "q_norm_weight", "k_norm_weight", "sinks")
GQA_FIXED_TYPES = {"past_lengths": TensorProto.INT64, "position_ids": TensorProto.INT64,
                   "rope_inv_freq": TensorProto.FLOAT, "attention_mask": TensorProto.BOOL}
# Declared shapes: symbolic, one name per (input, axis) so that no two dims are claimed equal.
GQA_DECLARED = {name: tuple(f"{name}_{axis}" for axis in range(GQA_RANKS[name])) for name in GQA_INPUTS}


def gqa_model(
    inputs: Sequence[str] = (),
    *,
    dtype: str = "float32",
    with_present: bool = False,
    attrs: Mapping[str, Any] | None = None,
    shapes: Mapping[str, Sequence[int | str] | None] | None = None,
    elem_types: Mapping[str, int] | None = None,
    opset: int = 18,
    attach: bool = True,
) -> onnx.ModelProto:
    """A one-node model output[, present_key, present_value] = GroupQueryAttention(query, key, value, ...).

    `inputs` names the optional inputs that are present (graph inputs of the same names; absent ones are ''
    in the node). `shapes` overrides declared shapes (None = unknown rank; default symbolic); `elem_types`
    overrides an input's element type (for bad-input tests). `attrs` is written
    as given; `attach` runs ops.attach_functions. bfloat16 models take and return float32 and Cast inside."""
    unknown = set(inputs) - set(GQA_INPUTS[3:])
    assert not unknown, f"unknown optional inputs {unknown}"
    present = [n for n in GQA_INPUTS if n in ("query", "key", "value") or n in inputs]
    declared = dict(GQA_DECLARED)
    declared.update(shapes or {})
    types = {n: ONNX_TYPES[dtype] if n in GQA_T_INPUTS else GQA_FIXED_TYPES[n] for n in GQA_INPUTS}
    types.update(elem_types or {})

    nodes: list[onnx.NodeProto] = []
    graph_inputs, op_inputs = [], []
    for name in GQA_INPUTS[: GQA_INPUTS.index(present[-1]) + 1]:
        if name not in present:
            op_inputs.append("")
            continue
        elem = types[name]
        if elem == TensorProto.BFLOAT16:
            graph_inputs.append(_value_info(name, TensorProto.FLOAT, declared[name]))
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            op_inputs.append(name + "_bf16")
        else:
            graph_inputs.append(_value_info(name, elem, declared[name]))
            op_inputs.append(name)
    outputs = list(GQA_OUTPUTS if with_present else GQA_OUTPUTS[:1])
    bf16 = types["query"] == TensorProto.BFLOAT16
    op_outputs = [n + "_bf16" for n in outputs] if bf16 else outputs
    nodes.append(helper.make_node(GQA, op_inputs, op_outputs, domain=ops.DOMAIN, **dict(attrs or {})))
    if bf16:
        nodes += [helper.make_node("Cast", [n + "_bf16"], [n], to=TensorProto.FLOAT) for n in outputs]
    out_type = TensorProto.FLOAT if bf16 else types["query"]
    graph_outputs = [_value_info(n, out_type, declared.get(n, tuple(f"{n}_{axis}" for axis in range(GQA_RANKS[n]))))
                     for n in outputs]
    model = helper.make_model(
        helper.make_graph(nodes, "gqa", graph_inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=ops.IR_VERSION,
    )
    if attach:
        ops.attach_functions(model)
    return model


def run_gqa_torch(feeds: Mapping[str, np.ndarray], *, dtype: str, attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """onnxattn.nn.functional.group_query_attention on the same values (feeds named like the op's inputs),
    in `dtype`; returns (output, present_key, present_value) as float32 (float16 stays float16)."""
    import torch

    from onnxattn.nn.functional import group_query_attention

    tdtype = getattr(torch, dtype)
    args = []
    for name in GQA_INPUTS:
        if name not in feeds:
            args.append(None)
            continue
        t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        args.append(t.to(tdtype) if name in GQA_T_INPUTS else t)
    outputs = group_query_attention(*args, **dict(attrs))
    return [o.to(torch.float32).numpy() if o.dtype == torch.bfloat16 else o.numpy() for o in outputs]
