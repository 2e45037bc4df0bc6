"""Shared helpers of the sparse-attention tests: one-node NativeSparseAttention / SparseRoutedAttention
models, inputs on a coarse grid (so every path computes the selection scores exactly and ties are real
ties), and the torch functional forms on the same values.

bfloat16 models take and return float32 and Cast inside (onnxruntime's Python API has no bfloat16).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import IO_NUMPY, ONNX_TYPES, round_to
from model_helpers import one_torch_thread  # noqa: F401  (re-exported: the sparse suites' autouse fixture)
from onnxattn import ops

NSA, ROUTED = "NativeSparseAttention", "SparseRoutedAttention"
NSA_INPUTS = ("Q", "K", "V", "gates", "compressed_key", "compressed_value")
NSA_OUTPUTS = ("Y", "selected_blocks", "selected_tokens")
ROUTED_INPUTS = ("Q", "K", "V", "position_ids")
ROUTED_OUTPUTS = ("Y", "selected_segments")
FIXED_TYPES = {"position_ids": TensorProto.INT64, "selected_blocks": TensorProto.INT64,
               "selected_tokens": TensorProto.INT64, "selected_segments": TensorProto.INT64}
RANKS = {"Q": 4, "K": 4, "V": 4, "gates": 4, "compressed_key": 4, "compressed_value": 4, "position_ids": 2,
         "Y": 4, "selected_blocks": 4, "selected_tokens": 4, "selected_segments": 4}


def grid(rng: np.random.Generator, shape, step: float = 0.25, bound: float = 2.0) -> np.ndarray:
    """Normal-ish values on a grid of `step` within +-bound: products and sums of a few of them are exact
    in float32 (and bfloat16/float16 hold them), so dot-product selections agree bit for bit."""
    return np.clip(np.round(rng.standard_normal(shape) / step) * step, -bound, bound).astype(np.float32)


def one_node_model(op: str, inputs: Sequence[str], outputs: Sequence[str], *, dtype: str = "float32",
                   attrs: Mapping[str, Any] | None = None, shapes: Mapping[str, Sequence | None] | None = None,
                   elem_types: Mapping[str, int] | None = None, attach: bool = True, opset: int = 18) -> onnx.ModelProto:
    """op(inputs) -> outputs (names from the op's formal lists; absent optional ones as '' in the node).
    Declared shapes are symbolic per (name, axis) unless `shapes` says otherwise."""
    formal_in = NSA_INPUTS if op == NSA else ROUTED_INPUTS
    formal_out = NSA_OUTPUTS if op == NSA else ROUTED_OUTPUTS
    present = set(inputs)
    last_in = max(formal_in.index(n) for n in present)
    last_out = max(formal_out.index(n) for n in outputs)
    declared = {n: tuple(f"{n}_{a}" for a in range(RANKS[n])) for n in formal_in + formal_out}
    declared.update(shapes or {})
    types = {n: FIXED_TYPES.get(n, ONNX_TYPES[dtype]) for n in formal_in + formal_out}
    types.update(elem_types or {})
    nodes, graph_inputs, node_inputs = [], [], []
    for name in formal_in[: last_in + 1]:
        if name not in present:
            node_inputs.append("")
            continue
        if types[name] == TensorProto.BFLOAT16:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, declared[name]))
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            node_inputs.append(name + "_bf16")
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, types[name], declared[name]))
            node_inputs.append(name)
    node_outputs, graph_outputs = [], []
    for name in formal_out[: last_out + 1]:
        if name not in outputs:
            node_outputs.append("")
            continue
        bf16 = types[name] == TensorProto.BFLOAT16
        node_outputs.append(name + "_bf16" if bf16 else name)
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT if bf16 else types[name],
                                                           declared[name]))
    casts = [helper.make_node("Cast", [n + "_bf16"], [n], to=TensorProto.FLOAT) for n in outputs
             if types[n] == TensorProto.BFLOAT16]
    nodes.append(helper.make_node(op, node_inputs, node_outputs, domain=ops.DOMAIN, **dict(attrs or {})))
    nodes += casts
    model = helper.make_model(helper.make_graph(nodes, op, graph_inputs, graph_outputs),
                              opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    if attach:
        ops.attach_functions(model)
    return model


def nsa_attrs(**overrides) -> dict[str, Any]:
    """Every NativeSparseAttention attribute (the spec's defaults, then overrides)."""
    values = {a.name: a.default for a in ops.get_spec(NSA).attrs}
    values.update(overrides)
    return values


def routed_attrs(**overrides) -> dict[str, Any]:
    values = {a.name: a.default for a in ops.get_spec(ROUTED).attrs}
    values.update(overrides)
    return values


def feeds_in(dtype: str, **arrays) -> dict[str, np.ndarray]:
    """Graph feeds: float inputs in the dtype the graph carries (bfloat16 as float32), ints as int64."""
    out = {}
    for name, value in arrays.items():
        if value is None:
            continue
        out[name] = value.astype(np.int64) if name == "position_ids" else round_to(value, dtype).astype(IO_NUMPY[dtype])
    return out


def run_nsa_torch(feeds: Mapping[str, np.ndarray], attrs: Mapping[str, Any], dtype: str = "float32",
                  outputs: int = 1) -> list[np.ndarray]:
    """onnxattn.nn.native_sparse_attention on the same values; returns float32 (or int64) arrays."""
    import torch

    from onnxattn.nn.sparse import native_sparse_attention

    t = {n: torch.from_numpy(np.asarray(feeds[n], np.float32)).to(getattr(torch, dtype)) if n in feeds else None
         for n in NSA_INPUTS}
    result = native_sparse_attention(t["Q"], t["K"], t["V"], t["gates"], t["compressed_key"], t["compressed_value"],
                                     return_selection=outputs > 1, **dict(attrs))
    result = result if isinstance(result, tuple) else (result,)
    return [r.to(torch.float32).numpy() if r.is_floating_point() else r.numpy() for r in result[:outputs]]


def run_routed_torch(feeds: Mapping[str, np.ndarray], attrs: Mapping[str, Any], dtype: str = "float32",
                     outputs: int = 1) -> list[np.ndarray]:
    import torch

    from onnxattn.nn.sparse import sparse_routed_attention

    t = {n: torch.from_numpy(np.asarray(feeds[n], np.float32)).to(getattr(torch, dtype)) for n in ("Q", "K", "V")}
    pos = torch.from_numpy(feeds["position_ids"]) if "position_ids" in feeds else None
    result = sparse_routed_attention(t["Q"], t["K"], t["V"], pos, return_selection=outputs > 1, **dict(attrs))
    result = result if isinstance(result, tuple) else (result,)
    return [r.to(torch.float32).numpy() if r.is_floating_point() else r.numpy() for r in result[:outputs]]
