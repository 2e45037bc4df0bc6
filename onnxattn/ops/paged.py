"""onnxattn::PagedAttention — attention of a ragged batch over a block-paged KV cache (vLLM-style), with
the new tokens' K/V written into their blocks by the same node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
from onnxattn.ops import gqa
from onnxattn.ops._spec import (
    FLOAT_TYPES,
    Dim,
    FunctionBuilder,
    Input,
    OpError,
    OpSpec,
    OptionalParts,
    Output,
    TensorInfo,
    TypeConstraint,
    dims_differ,
)

NAME = "PagedAttention"
I64, F32 = TensorProto.INT64, TensorProto.FLOAT

SUMMARY = (
    "output, key_cache_out?, value_cache_out? = PagedAttention(query [T,Hq*D], key [T,Hkv*D], "
    "value [T,Hkv*Dv], key_cache [N,bs,Hkv,D], value_cache [N,bs,Hkv,Dv], block_table [B,max_blocks], "
    "cu_seqlens_q [B+1], seq_lens [B], position_ids?, q_norm_weight?, k_norm_weight?, rope_inv_freq?, sinks?)"
)

DOC = """\
A serving step over many sequences at once: the new tokens of B sequences are packed into T rows
(sequence b owns rows `cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1`, so prefill chunks and single-token
decodes mix in one call), and every sequence's keys and values live in fixed-size blocks of a shared
pool, `key_cache`/`value_cache` `[num_blocks, block_size, Hkv, D]`, listed in order by its row of
`block_table` (int32; entries past the sequence's last block are never read).

`seq_lens[b]` is sequence b's KV length *including* its new tokens, so its `q_b = cu_seqlens_q[b+1] -
cu_seqlens_q[b]` new tokens sit at key positions `seq_lens[b] - q_b .. seq_lens[b] - 1`. For each new
token, in this order (as in GroupQueryAttention, and with the same attributes):
1. QK-norm (when the weights are given), RoPE at `position_ids` (default: its key position);
2. its key (after RoPE) and value are written to slot `pos % block_size` of block
   `block_table[b, pos / block_size]`;
3. it attends over keys `0 .. seq_lens[b] - 1` of its sequence, read from the blocks, under `causal`
   (keys at positions <= its own), `window` and `attention_chunk` (its own chunk's keys only); GQA
   repeat-each, `scale`, `softcap`, attention `sinks` (one logit per query head in every row's softmax
   denominator, as in GroupQueryAttention); a token that sees no key outputs zeros.

**Writing the cache.** The node writes the new tokens' K/V itself; `key_cache_out`/`value_cache_out`
are the updated pools. The library's kernel declares that they may reuse the input pools' buffers
(onnxruntime's MayInplace) and, with I/O binding of each output to its input's OrtValue, updates the pool
in place: a step costs O(new tokens + keys attended), never a copy of the pool. Without the library, the
reference function writes with ScatterND (a copy of the pool) and gathers each sequence's blocks.
Sharing blocks between sequences (prefix sharing) is the cache manager's business: a block shared by
two sequences must not receive new tokens (copy it on write first).

**Bad input.** The kernel checks, before reading anything: cu_seqlens_q starts at 0, never decreases and
ends at T; `0 <= q_b <= seq_lens[b] <= max_blocks * block_size`; every block index it will read or write
is in `[0, num_blocks)`. The CPU kernel raises an error naming the input. The CUDA kernel cannot raise
without synchronising the host (the index inputs stay on the device), so it makes the same checks on the
device and, instead of an error, gives a failing sequence NaN output rows and writes none of its slots
(every sequence fails when cu_seqlens_q is not a partition of the T rows); it never reads or writes
outside its inputs and outputs. Validate on the host first where an error is needed. The reference
function cannot raise on data; it clamps block indices.
"""

PARTS = OptionalParts(NAME, ("pos", "qnorm", "knorm", "inv_freq", "sinks", "present"),
                      {"pos": 8, "qnorm": 9, "knorm": 10, "inv_freq": 11, "sinks": 12},
                      ("key_cache_out", "value_cache_out"), required_inputs=8)
OVERLOAD_DOC = (
    "Overload names join the node's present optional parts with '+', in this order: `pos` "
    "(position_ids), `qnorm`, `knorm`, `inv_freq`, `sinks`, `present` (the updated cache outputs)."
)
OVERLOADS = PARTS.overloads()

EXAMPLES = (
    """\
A decode step for 3 sequences and a 5-token prefill chunk of a fourth, in one call:
```python
node = onnx.helper.make_node(
    "PagedAttention",
    ["q", "k", "v", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens"],
    ["out", "key_cache", "value_cache"],     # outputs may reuse the pools (bind them with I/O binding)
    domain="onnxattn", num_heads=32, kv_num_heads=8, causal=1, rope=1)
# cu_seqlens_q = [0, 1, 2, 3, 8], seq_lens = [812, 40, 1999, 5]
```""",
)


def _mul(a: Dim, b: Dim) -> Dim:
    return a * b if isinstance(a, int) and isinstance(b, int) else None


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    (query, key, value, key_cache, value_cache, block_table, cu_seqlens, seq_lens, position_ids, q_norm, k_norm,
     inv_freq, sinks) = (list(inputs) + [None] * 13)[:13]
    hq, hkv = attrs["num_heads"], attrs["kv_num_heads"]
    if hq % hkv != 0:
        raise OpError(f"{NAME}: num_heads ({hq}) must be a multiple of kv_num_heads ({hkv})")

    def shape(info: TensorInfo, name: str, rank: int, layout: str) -> tuple[Dim, ...]:
        if info.rank is not None and info.rank != rank:
            raise OpError(f"{NAME}: input '{name}' must have rank {rank} {layout}, got shape {info.shape_str()}")
        return info.shape or (None,) * rank

    qs = shape(query, "query", 2, "[T, Hq*D]")
    ks = shape(key, "key", 2, "[T, Hkv*D]")
    vs = shape(value, "value", 2, "[T, Hkv*Dv]")
    tokens = qs[0]
    if dims_differ(ks[0], tokens) or dims_differ(vs[0], tokens):
        raise OpError(f"{NAME}: inputs 'key' {key.shape_str()} and 'value' {value.shape_str()} must have the "
                      f"token count of query {query.shape_str()}")
    if isinstance(qs[1], int) and (qs[1] % hq or qs[1] == 0):
        raise OpError(f"{NAME}: query width {qs[1]} must be num_heads ({hq}) * head size D >= 1")
    d = qs[1] // hq if isinstance(qs[1], int) else None
    if isinstance(ks[1], int) and d is not None and ks[1] != hkv * d:
        raise OpError(f"{NAME}: input 'key' must have width kv_num_heads * D = {hkv * d}, got {key.shape_str()}")
    if isinstance(vs[1], int) and vs[1] % hkv:
        raise OpError(f"{NAME}: value width {vs[1]} must be kv_num_heads ({hkv}) * value head size")
    dv = vs[1] // hkv if isinstance(vs[1], int) else None
    kc = shape(key_cache, "key_cache", 4, "[num_blocks, block_size, Hkv, D]")
    vc = shape(value_cache, "value_cache", 4, "[num_blocks, block_size, Hkv, Dv]")
    for name, info, s, width in (("key_cache", key_cache, kc, d), ("value_cache", value_cache, vc, dv)):
        if dims_differ(s[2], hkv) or dims_differ(s[3], width):
            raise OpError(f"{NAME}: input '{name}' must be [num_blocks, block_size, Hkv, {width}] with Hkv = {hkv}, "
                          f"got {info.shape_str()}")
    if isinstance(kc[1], int) and kc[1] < 1:
        raise OpError(f"{NAME}: input 'key_cache' must have block_size >= 1, got {key_cache.shape_str()}")
    if dims_differ(kc[0], vc[0]) or dims_differ(kc[1], vc[1]):
        raise OpError(f"{NAME}: key_cache {key_cache.shape_str()} and value_cache {value_cache.shape_str()} must "
                      f"have the same blocks")
    bt = shape(block_table, "block_table", 2, "[B, max_blocks]")
    batch = bt[0]
    cs = shape(cu_seqlens, "cu_seqlens_q", 1, "[B + 1]")
    if isinstance(cs[0], int) and isinstance(batch, int) and cs[0] != batch + 1:
        raise OpError(f"{NAME}: input 'cu_seqlens_q' must be [B + 1] = [{batch + 1}], got {cu_seqlens.shape_str()}")
    ss = shape(seq_lens, "seq_lens", 1, "[B]")
    if dims_differ(ss[0], batch):
        raise OpError(f"{NAME}: input 'seq_lens' must be [B] = [{batch}], got {seq_lens.shape_str()}")
    if position_ids is not None and dims_differ(shape(position_ids, "position_ids", 1, "[T]")[0], tokens):
        raise OpError(f"{NAME}: input 'position_ids' must be [T] = [{tokens}], got {position_ids.shape_str()}")
    for name, info in (("q_norm_weight", q_norm), ("k_norm_weight", k_norm)):
        if info is not None and info.rank is not None and (info.rank != 1 or dims_differ(info.shape[0], d)):
            raise OpError(f"{NAME}: input '{name}' must be [D] = [{d}], got {info.shape_str()}")
    rotary = attrs["rotary_dim"] or d
    if attrs["rope"] and isinstance(rotary, int):
        if rotary % 2:
            raise OpError(f"{NAME}: rotary_dim must be even, got {rotary}")
        if isinstance(d, int) and rotary > d:
            raise OpError(f"{NAME}: rotary_dim ({rotary}) must be <= D ({d})")
        if inv_freq is not None and inv_freq.rank is not None and (
                inv_freq.rank != 1 or dims_differ(inv_freq.shape[0], rotary // 2)):
            raise OpError(f"{NAME}: input 'rope_inv_freq' must be [rotary_dim / 2] = [{rotary // 2}], got "
                          f"{inv_freq.shape_str()}")
    gqa.check_sinks(NAME, sinks, hq)
    elem = query.elem_type
    return [TensorInfo(elem, (tokens, _mul(hq, dv))), TensorInfo(elem, kc), TensorInfo(elem, vc)]


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+")) if overload else set()
    f = FunctionBuilder(SPEC, overload, opset)
    inputs = PARTS.formals(SPEC, features)
    zero, one, axis0, axis_last = f.const(0, I64), f.const(1, I64), f.const([0], I64), f.const([-1], I64)

    # which sequence each packed token belongs to, and its key position
    tokens = f.op("Shape", "query", start=0, end=1)  # [1]
    t = f.op("Range", zero, f.op("Squeeze", tokens), one)  # [T]
    cu = f.op("Cast", "cu_seqlens_q", to=I64)
    ends = f.op("Slice", cu, f.const([1], I64), f.const([2**62], I64))  # [B]
    starts = f.op("Slice", cu, axis0, f.const([-1], I64))  # [B]
    seq_of = bodies.reduce_last(f, "ReduceSum", f.op("Cast", f.op("LessOrEqual", f.op("Unsqueeze", ends, axis0),
                                                                  f.op("Unsqueeze", t, axis_last)), to=I64),
                                0, I64)  # [T]
    seq_lens = f.op("Cast", "seq_lens", to=I64)
    new_tokens = f.op("Sub", ends, starts)
    pos = f.op("Add", f.op("Sub", f.op("Gather", seq_lens, seq_of), f.op("Gather", new_tokens, seq_of)),
               f.op("Sub", t, f.op("Gather", starts, seq_of)))  # [T]

    def heads(x, count):  # [T, H*E] -> float [T, H, 1, E]
        return f.op("Unsqueeze", bodies.split_heads(f, f.op("Cast", x, to=F32), count), f.const([2], I64))

    num_heads, kv_heads = f.attr("num_heads"), f.attr("kv_num_heads")
    q, k, v = heads("query", num_heads), heads("key", kv_heads), heads("value", kv_heads)
    if "qnorm" in features:
        q = bodies.rms_norm(f, q, "q_norm_weight")
    if "knorm" in features:
        k = bodies.rms_norm(f, k, "k_norm_weight")
    rotary = bodies.rotary_dim(f, q)
    positions = f.op("Unsqueeze", "position_ids" if "pos" in features else pos, axis_last)  # [T, 1]
    cos, sin = bodies.rope_tables(f, positions, rotary, "rope_inv_freq" if "inv_freq" in features else None)
    # tables are [T, 1, 1, rotary/2]: they broadcast over the heads of q and k ([T, H, 1, E])
    q, k = bodies.apply_rope(f, q, cos, sin, rotary), bodies.apply_rope(f, k, cos, sin, rotary)

    # write the new tokens into their slots of the flattened pools
    block_size = f.op("Shape", "key_cache", start=1, end=2)  # [1]
    table = f.op("Cast", "block_table", to=I64)
    blocks_at = f.op("GatherND", table, f.op("Concat", f.op("Unsqueeze", seq_of, axis_last),
                                              f.op("Unsqueeze", f.op("Div", pos, block_size), axis_last), axis=1))
    slots = f.op("Unsqueeze", f.op("Add", f.op("Mul", blocks_at, block_size), f.op("Mod", pos, block_size)), axis_last)

    def write(pool, new, name):
        flat_shape = f.op("Concat", f.op("Mul", f.op("Shape", pool, end=1), f.op("Shape", pool, start=1, end=2)),
                          f.op("Shape", pool, start=2), axis=0)  # [N bs, Hkv, E], explicit: N may be 0
        updates = f.op("CastLike", f.op("Squeeze", new, f.const([2], I64)), name)  # [T, Hkv, E]
        return f.op("Reshape", f.op("ScatterND", f.op("Reshape", pool, flat_shape, allowzero=1), slots, updates),
                    f.op("Shape", pool), allowzero=1)

    key_cache, value_cache = write("key_cache", k, "key"), write("value_cache", v, "value")

    # each token's sequence, gathered from the blocks: [T, Hkv, L, E] with L = max_blocks * block_size. Tokens go
    # in chunks (bodies.over_row_chunks): a token's keys, values and scores are L (Hkv (D + Dv) + Hq) floats, so a
    # prompt's all at once would be far more than its cache
    num_blocks = f.op("Shape", "key_cache", start=0, end=1)
    safe_table = f.op("Clip", table, zero, f.op("Squeeze", f.op("Sub", num_blocks, f.const([1], I64))))

    def sequences(pool):  # [B, Hkv, L, E] float, laid out once per sequence (not per token) for the products
        blocks = f.op("Gather", pool, safe_table, axis=0)  # [B, max_blocks, bs, Hkv, E]
        length = f.op("Mul", f.op("Shape", blocks, start=1, end=2), f.op("Shape", blocks, start=2, end=3))
        seqs = f.op("Reshape", blocks, f.op("Concat", f.op("Shape", blocks, end=1), length,
                                            f.op("Shape", blocks, start=3), axis=0), allowzero=1)  # [B, L, Hkv, E]
        return f.op("Cast", f.op("Transpose", seqs, perm=[0, 2, 1, 3]), to=F32)

    key_seqs, value_seqs = sequences(key_cache), sequences(value_cache)
    length_1 = f.op("Shape", key_seqs, start=2, end=3)
    j = f.op("Range", zero, f.op("Squeeze", length_1), one)  # [L]
    p = f.op("Unsqueeze", pos, f.const([1, 2, 3], I64))  # [T, 1, 1, 1]
    valid = f.op("Unsqueeze", f.op("Gather", seq_lens, seq_of), f.const([1, 2, 3], I64))
    sink = bodies.head_sinks(f) if "sinks" in features else None
    score_attrs = bodies.score_attributes(f, q)
    visibility_attrs = bodies.visibility_attributes(f, band=False, chunk=True)

    def attend(g: FunctionBuilder, rows: list[str]) -> list[str]:
        """Attention of some tokens: q [rows, Hq, 1, D], p and valid [rows, 1, 1, 1], seq_of [rows]."""
        q_rows, p_rows, valid_rows, seq_rows = rows

        def of_tokens(seqs):  # [rows, Hkv, L, E]
            return g.op("Gather", seqs, seq_rows, axis=0)

        visible = bodies.structural_visibility(g, p_rows, j, band=False, chunk=True, attrs=visibility_attrs)
        visible = g.op("And", visible, g.op("Less", j, valid_rows))
        scores = bodies.scores(g, q_rows, of_tokens(key_seqs), score_attrs)
        return [bodies.masked_softmax_attention(g, scores, visible, of_tokens(value_seqs), sink=sink)[0]]

    widths = f.op("Add", f.op("Shape", q, start=3), f.op("Shape", "value_cache", start=3))  # D + Dv
    per_position = f.op("Add", f.op("Mul", f.op("Shape", "key_cache", start=2, end=3), widths),
                        f.op("Shape", q, start=1, end=2))  # Hkv (D + Dv) + Hq
    row_elements = f.op("Mul", length_1, per_position)
    out = bodies.over_row_chunks(f, tokens, row_elements, [(q, 0), (p, 0), (valid, 0), (seq_of, 0)], attend,
                                 [bodies.RowOutput(rank=4, axis=0)])[0]  # [T, Hq, 1, Dv]
    out = bodies.merge_heads(f, f.op("Squeeze", out, f.const([2], I64)))  # [T, Hq Dv]
    f.nodes.append(onnx.helper.make_node("CastLike", [out, "query"], ["output"]))
    outputs = ["output"]
    if "present" in features:
        f.nodes.append(onnx.helper.make_node("Identity", [key_cache], ["key_cache_out"]))
        f.nodes.append(onnx.helper.make_node("Identity", [value_cache], ["value_cache_out"]))
        outputs += ["key_cache_out", "value_cache_out"]
    return f.build(inputs, outputs)


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("query", "T", "Projected queries of the new tokens, packed [T, Hq*D]."),
        Input("key", "T", "Projected keys of the new tokens [T, Hkv*D] (before QK-norm and RoPE)."),
        Input("value", "T", "Projected values of the new tokens [T, Hkv*Dv]."),
        Input("key_cache", "T", "Block pool of keys (after RoPE) [num_blocks, block_size, Hkv, D]."),
        Input("value_cache", "T", "Block pool of values [num_blocks, block_size, Hkv, Dv]."),
        Input("block_table", "tensor(int32)", "[B, max_blocks]: each sequence's blocks, in order."),
        Input("cu_seqlens_q", "tensor(int32)", "[B + 1]: sequence b's new tokens are rows cu[b] .. cu[b+1]-1."),
        Input("seq_lens", "tensor(int32)", "[B]: KV length of each sequence, its new tokens included."),
        Input("position_ids", "tensor(int64)", "[T] RoPE positions (default: each token's key position).",
              optional=True),
        Input("q_norm_weight", "T", "[D] per-head RMS-norm weight for queries (QK-norm).", optional=True),
        Input("k_norm_weight", "T", "[D] per-head RMS-norm weight for keys (QK-norm).", optional=True),
        Input("rope_inv_freq", "tensor(float)", "[rotary_dim / 2] RoPE inverse frequencies (scaled RoPE).",
              optional=True),
        Input("sinks", "T", "[Hq] attention-sink logits, one per query head (GPT-OSS), as in GroupQueryAttention.",
              optional=True),
    ),
    outputs=(
        Output("output", "T", "Attention output [T, Hq*Dv]."),
        Output("key_cache_out", "T", "The key pool with the new tokens written (may be the input's buffer).",
               optional=True),
        Output("value_cache_out", "T", "The value pool with the new tokens written.", optional=True),
    ),
    attrs=gqa.ATTRS,
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Activations, caches and norm weights."),),
    infer=infer,
    signature=PARTS.signature,
    build_function=build_function,
    overloads=OVERLOADS,
    overload_doc=OVERLOAD_DOC,
    examples=EXAMPLES,
)
