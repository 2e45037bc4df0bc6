"""One-node onnxattn::MultiHeadLatentAttention models, the torch functional on the same feeds, and the
kernel-path switch (ONNXATTN_MLA_PATH) of the CPU kernel."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import ONNX_TYPES
from onnxattn import ops

MLA = "MultiHeadLatentAttention"
MLA_INPUTS = ("query", "latent", "k_rope", "w_uk", "w_uv", "past_latent", "past_k_rope", "past_lengths",
              "position_ids", "rope_inv_freq", "key_indices")
MLA_OUTPUTS = ("output", "present_latent", "present_k_rope")
MLA_T_INPUTS = MLA_INPUTS[:7]
MLA_FIXED_TYPES = {"past_lengths": TensorProto.INT64, "position_ids": TensorProto.INT64,
                   "rope_inv_freq": TensorProto.FLOAT, "key_indices": TensorProto.INT64}
MLA_ATTR_NAMES = ("num_heads", "causal", "window", "softcap", "scale", "rope_base", "rope_interleaved",
                  "rope_attention_scaling")
PATHS = ("absorbed", "expanded")


def _symbolic(name: str, rank: int) -> tuple[str, ...]:
    return tuple(f"{name}_{axis}" for axis in range(rank))


def mla_model(
    inputs: Sequence[str] = (),
    *,
    dtype: str = "float32",
    with_present: bool = False,
    attrs: Mapping[str, Any] | None = None,
    cache_rank: int = 3,
    shapes: Mapping[str, Sequence[int | str] | None] | None = None,
    elem_types: Mapping[str, int] | None = None,
    opset: int = 18,
    attach: bool = True,
) -> onnx.ModelProto:
    """A one-node model output[, present_latent, present_k_rope] = MultiHeadLatentAttention(...).

    `inputs` names the present optional inputs; `cache_rank` 3 ([B, P, .]) or 4 ([B, 1, P, .]) declares the
    pasts and presents; `shapes` overrides declared shapes (None = unknown rank), `elem_types` element
    types (bad-input tests). bfloat16 models take and return float32 and Cast inside."""
    unknown = set(inputs) - set(MLA_INPUTS[5:])
    assert not unknown, f"unknown optional inputs {unknown}"
    ranks = dict(zip(MLA_INPUTS + MLA_OUTPUTS, (3, 3, 3, 3, 3, cache_rank, cache_rank, 1, 2, 1, 3, 3,
                                                cache_rank, cache_rank)))
    declared = {n: _symbolic(n, r) for n, r in ranks.items()}
    declared.update(shapes or {})
    present = [n for n in MLA_INPUTS if n in MLA_INPUTS[:5] or n in inputs]
    types = {n: ONNX_TYPES[dtype] if n in MLA_T_INPUTS else MLA_FIXED_TYPES[n] for n in MLA_INPUTS}
    types.update(elem_types or {})
    value = helper.make_tensor_value_info
    nodes, graph_inputs, op_inputs = [], [], []
    for name in MLA_INPUTS[: MLA_INPUTS.index(present[-1]) + 1]:
        if name not in present:
            op_inputs.append("")
            continue
        if types[name] == TensorProto.BFLOAT16:
            graph_inputs.append(value(name, TensorProto.FLOAT, declared[name]))
            nodes.append(helper.make_node("Cast", [name], [name + "_bf16"], to=TensorProto.BFLOAT16))
            op_inputs.append(name + "_bf16")
        else:
            graph_inputs.append(value(name, types[name], declared[name]))
            op_inputs.append(name)
    outputs = list(MLA_OUTPUTS if with_present else MLA_OUTPUTS[:1])
    bf16 = types["query"] == TensorProto.BFLOAT16
    op_outputs = [n + "_bf16" for n in outputs] if bf16 else outputs
    nodes.append(helper.make_node(MLA, op_inputs, op_outputs, domain=ops.DOMAIN, **dict(attrs or {})))
    if bf16:
        nodes += [helper.make_node("Cast", [n + "_bf16"], [n], to=TensorProto.FLOAT) for n in outputs]
    out_type = TensorProto.FLOAT if bf16 else types["query"]
    graph_outputs = [value(n, out_type, declared[n]) for n in outputs]
    model = helper.make_model(
        helper.make_graph(nodes, "mla", graph_inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=ops.IR_VERSION,
    )
    if attach:
        ops.attach_functions(model)
    return model


def run_mla_torch(feeds: Mapping[str, np.ndarray], *, dtype: str, attrs: Mapping[str, Any]) -> list[np.ndarray]:
    """onnxattn.nn.functional.multi_head_latent_attention on the feeds, in `dtype`; (output, present_latent,
    present_k_rope) as float32 (float16 stays float16)."""
    import torch

    from onnxattn.nn.functional import multi_head_latent_attention

    tdtype = getattr(torch, dtype)
    args = []
    for name in MLA_INPUTS:
        if name not in feeds:
            args.append(None)
            continue
        t = torch.from_numpy(np.ascontiguousarray(feeds[name]))
        args.append(t.to(tdtype) if name in MLA_T_INPUTS else t)
    outputs = multi_head_latent_attention(*args, **dict(attrs))
    return [o.to(torch.float32).numpy() if o.dtype == torch.bfloat16 else o.numpy() for o in outputs]


@contextlib.contextmanager
def mla_path(path: str | None) -> Iterator[None]:
    """Forces the CPU kernel's formulation (ONNXATTN_MLA_PATH, read on every call) for the block."""
    old = os.environ.get("ONNXATTN_MLA_PATH")
    if path is None:
        os.environ.pop("ONNXATTN_MLA_PATH", None)
    else:
        os.environ["ONNXATTN_MLA_PATH"] = path
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ONNXATTN_MLA_PATH", None)
        else:
            os.environ["ONNXATTN_MLA_PATH"] = old
