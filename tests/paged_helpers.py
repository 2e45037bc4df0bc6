"""PagedAttention test helpers: one-node models, random paged problems built from contiguous per-sequence
caches (tests/paged_problems.py, re-exported here: the expected result is the contiguous one, the numpy
GroupQueryAttention oracle per sequence), and the torch functional on the same feeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import ONNX_TYPES, _value_info
from onnxattn import ops
from paged_problems import Problem, add_optional_inputs, contiguous_oracle, make_problem  # noqa: F401

PAGED = "PagedAttention"
INPUTS = ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens",
          "position_ids", "q_norm_weight", "k_norm_weight", "rope_inv_freq", "sinks")
OUTPUTS = ("output", "key_cache_out", "value_cache_out")
REQUIRED = INPUTS[:8]
RANKS = dict(zip(INPUTS + OUTPUTS, (2, 2, 2, 4, 4, 2, 1, 1, 1, 1, 1, 1, 1, 2, 4, 4)))
T_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "q_norm_weight", "k_norm_weight", "sinks")
FIXED_TYPES = {"block_table": TensorProto.INT32, "cu_seqlens_q": TensorProto.INT32, "seq_lens": TensorProto.INT32,
               "position_ids": TensorProto.INT64, "rope_inv_freq": TensorProto.FLOAT}
# Declared shapes: symbolic, one name per (input, axis), so no two dims are claimed equal.
DECLARED = {name: tuple(f"{name}_{axis}" for axis in range(RANKS[name])) for name in INPUTS + OUTPUTS}


def paged_model(inputs: Sequence[str] = (), *, dtype: str = "float32", with_present: bool = False,
                attrs: Mapping[str, Any] | None = None, shapes: Mapping[str, Sequence[int | str] | None] | None = None,
                elem_types: Mapping[str, int] | None = None, opset: int = 18, attach: bool = True) -> onnx.ModelProto:
    """A one-node model output[, key_cache_out, value_cache_out] = PagedAttention(...); `inputs` names the
    present optional inputs. Conventions as helpers.gqa_model (bfloat16 models take and return float32)."""
    unknown = set(inputs) - set(INPUTS[8:])
    assert not unknown, f"unknown optional inputs {unknown}"
    present = [n for n in INPUTS if n in REQUIRED or n in inputs]
    declared = dict(DECLARED)
    declared.update(shapes or {})
    types = {n: ONNX_TYPES[dtype] if n in T_INPUTS else FIXED_TYPES[n] for n in INPUTS}
    types.update(elem_types or {})
    nodes, graph_inputs, op_inputs = [], [], []
    for name in INPUTS[: INPUTS.index(present[-1]) + 1]:
        if name not in present:
            op_inputs.append("")
            continue
        if types[name] == TensorProto.BFLOAT16:
            graph_inputs.append(_value_info(name, TensorProto.FLOAT, declared[name]))
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            op_inputs.append(name + "_bf16")
        else:
            graph_inputs.append(_value_info(name, types[name], declared[name]))
            op_inputs.append(name)
    outputs = list(OUTPUTS if with_present else OUTPUTS[:1])
    bf16 = types["query"] == TensorProto.BFLOAT16
    op_outputs = [n + "_bf16" for n in outputs] if bf16 else outputs
    nodes.append(helper.make_node(PAGED, op_inputs, op_outputs, domain=ops.DOMAIN, **dict(attrs or {})))
    if bf16:
        nodes += [helper.make_node("Cast", [n + "_bf16"], [n], to=TensorProto.FLOAT) for n in outputs]
    out_type = TensorProto.FLOAT if bf16 else types["query"]
    graph_outputs = [_value_info(n, out_type, declared[n]) for n in outputs]
    model = helper.make_model(
        helper.make_graph(nodes, "paged", graph_inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=ops.IR_VERSION,
    )
    if attach:
        ops.attach_functions(model)
    return model


def run_paged_torch(feeds: Mapping[str, np.ndarray], *, dtype: str, attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """onnxattn.nn.functional.paged_attention on the feeds, in `dtype`; outputs as float32 (float16 stays)."""
    import torch

    from onnxattn.nn.functional import paged_attention

    tdtype = getattr(torch, dtype)
    args = []
    for name in INPUTS:
        if name not in feeds:
            args.append(None)
            continue
        t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        args.append(t.to(tdtype) if name in T_INPUTS else t)
    outputs = paged_attention(*args, **dict(attrs))
    return [o.to(torch.float32).numpy() if o.dtype == torch.bfloat16 else o.numpy() for o in outputs]
