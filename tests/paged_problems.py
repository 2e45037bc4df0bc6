"""PagedAttention problems as numpy data (no onnxruntime, no torch): random paged problems built from
contiguous per-sequence caches, so the expected result is the contiguous one (the numpy GroupQueryAttention
oracle per sequence), the optional inputs, and that oracle. Shared by the CPU tests (through
tests/paged_helpers.py) and the GPU checks (tests/gpu/paged_cases.py), which need only numpy and ml_dtypes.

A problem lays its sequences' blocks out in a pool as the case says (in order, shuffled, ...); every slot no
sequence owns is NaN, and table entries past a sequence's last block hold garbage (out of range), which the
op must never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from oracle_gqa import default_inv_freq, gqa_oracle

IO_NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """`x` rounded to `dtype` and returned in the dtype the graph's inputs carry (bfloat16 as float32; the
    same values as tests/helpers.round_to, without torch)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(x, dtype=np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    return np.asarray(x).astype(IO_NUMPY[dtype])


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
                        dtype: str, sinks: int = 0) -> None:
    """sinks: the query head count, for attention-sink logits (0: none)."""
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
    if sinks:
        feeds["sinks"] = round_to(rng.uniform(-2.0, 3.0, sinks), dtype)


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
        names = ("q_norm_weight", "k_norm_weight", "rope_inv_freq", "sinks")
        optional = {name: f[name] for name in names if name in f}
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
