"""PagedAttention test helpers: one-node models, random paged problems built from contiguous per-sequence
caches (so the expected result is the contiguous one: the numpy GroupQueryAttention oracle per sequence),
and the torch functional on the same feeds.

A problem lays its sequences' blocks out in a pool as the case says (in order, shuffled, ...); every slot no
sequence owns is NaN, and table entries past a sequence's last block hold garbage (out of range), which the
op must never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from helpers import ONNX_TYPES, _value_info, round_to
from oracle_gqa import default_inv_freq, gqa_oracle
from onnxattn import ops

PAGED = "PagedAttention"
INPUTS = ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens",
          "position_ids", "q_norm_weight", "k_norm_weight", "rope_inv_freq")
OUTPUTS = ("output", "key_cache_out", "value_cache_out")
REQUIRED = INPUTS[:8]
RANKS = dict(zip(INPUTS + OUTPUTS, (2, 2, 2, 4, 4, 2, 1, 1, 1, 1, 1, 1, 2, 4, 4)))
T_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "q_norm_weight", "k_norm_weight")
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


@dataclasses.dataclass(frozen=True)
class Problem:
    """A paged problem and its contiguous view: `feeds` (named like the op's inputs) and, per sequence,
    its past K/V [1, Hkv, P, .] and new rows; `slots[b]` lists the pool slots of its keys 0 .. len - 1."""

    feeds: dict[str, np.ndarray]
    pasts: list[tuple[np.ndarray, np.ndarray]]
    slots: list[np.ndarray]


def make_problem(rng: np.random.Generator, *, past: Sequence[int], new: Sequence[int], block_size: int,
                 q_heads: int, kv_heads: int, head_dim: int, v_head_dim: int, dtype: str, layout: str = "shuffled",
                 spare_blocks: int = 2, table_extra: int = 1, fill: float = np.nan) -> Problem:
    """Random inputs (unit normal, rounded to `dtype`) for sequences with `past` cached keys and `new` new
    tokens. layout: "in-order" (sequence after sequence), "shuffled" (a random permutation of the pool),
    "shared-prefix" (every sequence's first blocks are sequence 0's: callers give them equal pasts)."""
    normal = lambda *shape: round_to(rng.standard_normal(shape), dtype)  # noqa: E731
    lengths = [p + n for p, n in zip(past, new)]
    need = [-(-n // block_size) for n in lengths]
    num_blocks = sum(need) + spare_blocks
    order = rng.permutation(num_blocks) if layout != "in-order" else np.arange(num_blocks)
    tables, used = [], 0
    for b, count in enumerate(need):
        if layout == "shared-prefix" and b > 0:
            common = min(past[0], past[b]) // block_size  # whole blocks of the common prompt
            own = order[used: used + count - common]
            tables.append(np.concatenate([tables[0][:common], own]))
            used += count - common
        else:
            tables.append(order[used: used + count])
            used += count
    width = max(need, default=0) + table_extra
    table = rng.integers(num_blocks + 5, num_blocks + 1000, (len(past), width)).astype(np.int32)  # garbage
    table[:, ::2] *= -1
    for b, blocks in enumerate(tables):
        table[b, : len(blocks)] = blocks
    d, dv = head_dim, v_head_dim
    key_cache = np.full((num_blocks, block_size, kv_heads, d), fill, dtype=np.float32)
    value_cache = np.full((num_blocks, block_size, kv_heads, dv), fill, dtype=np.float32)
    pasts, slots = [], []
    for b, (p, total) in enumerate(zip(past, lengths)):
        positions = np.arange(total)
        slot = table[b, positions // block_size].astype(np.int64) * block_size + positions % block_size
        pk, pv = normal(1, kv_heads, p, d), normal(1, kv_heads, p, dv)
        if layout == "shared-prefix" and b > 0:  # the shared blocks hold sequence 0's keys
            common = min(past[0], p) // block_size * block_size
            pk[:, :, :common], pv[:, :, :common] = pasts[0][0][:, :, :common], pasts[0][1][:, :, :common]
        flat_k, flat_v = key_cache.reshape(-1, kv_heads, d), value_cache.reshape(-1, kv_heads, dv)
        flat_k[slot[:p]] = pk[0].transpose(1, 0, 2)
        flat_v[slot[:p]] = pv[0].transpose(1, 0, 2)
        pasts.append((pk, pv))
        slots.append(slot)
    tokens = sum(new)
    feeds = dict(query=normal(tokens, q_heads * d), key=normal(tokens, kv_heads * d),
                 value=normal(tokens, kv_heads * dv), key_cache=round_to(key_cache, dtype),
                 value_cache=round_to(value_cache, dtype), block_table=table,
                 cu_seqlens_q=np.concatenate([[0], np.cumsum(new)]).astype(np.int32),
                 seq_lens=np.array(lengths, dtype=np.int32))
    return Problem(feeds, pasts, slots)


def add_optional_inputs(rng: np.random.Generator, problem: Problem, *, positions: str | None, q_norm: bool,
                        k_norm: bool, inv_freq: str | None, head_dim: int, rotary_dim: int, rope_base: float,
                        dtype: str) -> None:
    feeds = problem.feeds
    if positions == "shifted":  # each token's key position plus an offset per sequence
        cu, lengths = feeds["cu_seqlens_q"], feeds["seq_lens"]
        pos = [lengths[b] - (cu[b + 1] - cu[b]) + np.arange(cu[b + 1] - cu[b]) + 3 + 5 * b for b in range(len(lengths))]
        feeds["position_ids"] = np.concatenate([np.zeros(0, np.int64), *pos]).astype(np.int64)
    if q_norm:
        feeds["q_norm_weight"] = round_to(rng.uniform(0.5, 1.5, head_dim), dtype)
    if k_norm:
        feeds["k_norm_weight"] = round_to(rng.uniform(0.5, 1.5, head_dim), dtype)
    rotary = rotary_dim or head_dim
    if inv_freq == "linear4":
        feeds["rope_inv_freq"] = (default_inv_freq(rotary, rope_base) / 4).astype(np.float32)
    elif inv_freq == "custom":
        feeds["rope_inv_freq"] = np.sort(rng.uniform(0.001, 1.2, rotary // 2))[::-1].astype(np.float32)


def contiguous_oracle(problem: Problem, attrs: Mapping[str, Any], *, store=None, compute=np.float64):
    """The expected outputs: each sequence as one contiguous GroupQueryAttention step (the numpy oracle)
    over its past, and the pools with the new tokens' K/V written at their slots (the rest as given)."""
    f = problem.feeds
    cu = f["cu_seqlens_q"]
    outputs = []
    key_cache, value_cache = np.array(f["key_cache"], np.float64), np.array(f["value_cache"], np.float64)
    hkv = key_cache.shape[2]
    for b, (pk, pv) in enumerate(problem.pasts):
        rows = slice(int(cu[b]), int(cu[b + 1]))
        optional = {name: f[name] for name in ("q_norm_weight", "k_norm_weight", "rope_inv_freq") if name in f}
        if "position_ids" in f:
            optional["position_ids"] = f["position_ids"][rows][None]
        y, present_k, present_v = gqa_oracle(f["query"][rows][None], f["key"][rows][None], f["value"][rows][None],
                                             pk, pv, **optional, **attrs, store=store, compute=compute)
        outputs.append(np.asarray(y[0], np.float64))
        p, total = pk.shape[2], int(f["seq_lens"][b])
        new_slots = problem.slots[b][p:total]
        for pool, present in ((key_cache, present_k), (value_cache, present_v)):
            new_entries = np.asarray(present[0, :, p:], np.float64).transpose(1, 0, 2)  # [n, Hkv, .]
            pool.reshape(-1, hkv, pool.shape[3])[new_slots] = new_entries
    width = attrs["num_heads"] * value_cache.shape[3]
    y = np.concatenate(outputs, axis=0) if outputs else np.zeros((0, width))
    return y, key_cache, value_cache


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
