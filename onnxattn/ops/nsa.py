"""onnxattn::NativeSparseAttention — block selection, fine token selection, compression and a sliding
window, gated per head and token (the seed's NativeSparseAttention and the NSA paper, Yuan et al. 2025)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
from onnxattn.ops import _sparse as sparse
from onnxattn.ops._spec import (
    FLOAT_TYPES,
    Attr,
    FunctionBuilder,
    Input,
    OpError,
    OpSpec,
    Output,
    TensorInfo,
    TypeConstraint,
    dims_differ,
    finite_non_negative,
    non_negative,
    zero_or_one,
)

NAME = "NativeSparseAttention"

SUMMARY = (
    "Y[, selected_blocks, selected_tokens] = NativeSparseAttention(Q [B,Hq,Sq,D], K [B,Hkv,Skv,D], "
    "V [B,Hkv,Skv,Dv], gates? [..broadcast to B,Hq,Sq,3], compressed_key? [B,Hkv,Nc,D], "
    "compressed_value? [B,Hkv,Nc,Dv])"
)

DOC = """\
Three attention branches over the same keys, each a softmax attention of its own, mixed by gates:

```
Y = g0 * O_blocks + g1 * (O_fine or O_compressed) + g2 * O_window      g = gates broadcast to [B,Hq,Sq,3]
```

Query row `i` sits at key position `p = i + Skv - Sq` (bottom-right aligned); blocks are `c = j // block_size`;
the query's own block is `p // block_size`. Scores are `scale * <Q, K>`; GQA maps query head h to KV
head `h // (Hq / Hkv)`. A branch that is off, or a row that sees no key in it, contributes zeros.

**Block branch** (`top_blocks > 0`; the seed's coarse path, the paper's selection branch). Each
candidate block gets a score, and the row attends at full resolution to every key of its `top_blocks`
best blocks:
- score without `compressed_key`: `<Q[i], mean of the block's keys>` (the seed);
- score with `compressed_key` / `compressed_value` (the paper): the probability the compression branch
  gives the block's compressed token (see below);
- `shared_selection=1`: the scores of the G query heads of a KV head are summed and the group shares
  one selection (the paper); 0: every query head selects for itself (the seed).
- `causal=0` (the seed): candidates are the complete blocks `c < Skv // block_size`; a trailing partial
  block is never attended. `causal=1`: candidates are the blocks `c <= p // block_size`; the query's own
  block (partial or not) is always selected, and keys `j > p` are hidden.
- forced blocks, always selected and counted in `top_blocks`: the own block (causal), the first
  `sink_blocks` blocks (attention sink), the `local_blocks` blocks before the own block. Their number
  must not exceed `top_blocks`. The other slots go to the best-scoring candidates.

**Fine branch** (`top_tokens > 0`; the seed's fine path): each row attends to its `top_tokens` keys of
largest `<Q[i], K[j]>` among all keys (`causal=0`) or keys `j <= p` (`causal=1`). Exact, so it costs
a dense score pass.

**Compression branch** (`compressed_key` and `compressed_value` given; the paper's compression
branch): attention over `Nc = Skv // block_size` compressed tokens, token t summarizing keys
`[t * block_size, (t + 1) * block_size)` (a learned compressor in torch makes them). With `causal=1`,
token t is visible iff its whole block is: `(t + 1) * block_size - 1 <= p`. Its attention
probabilities are the block scores above. Fine and compression branches share gate 1 and exclude each
other.

**Window branch** (`window = W > 0`): causal sliding window of W keys, the current one included:
`p - W < j <= p` (also when `causal=0`).

**Selection** ranks by unscaled dot products (or, with compression, by probabilities), so `scale` must be
>= 0. Ties go to the lower index (as ONNX TopK). A block whose score is NaN or -inf (a non-finite key in it) is
never chosen; the next best fill the list. Selection is discrete: no gradient flows through it;
gradients flow through each branch's attention to Q, K, V, the compressed tokens and the gates.

`selected_blocks` `[B, Hs, Sq, top_blocks]` (`Hs` = Hkv with `shared_selection`, else Hq) and
`selected_tokens` `[B, Hq, Sq, top_tokens]` list each row's choices in ascending order, -1 for unused slots.

**Configurations.** The seed: `causal=0, shared_selection=0`, no compressed inputs, gates
`sigmoid(logits[Hq, 1, 3])`. The paper: `causal=1, shared_selection=1, sink_blocks=1, local_blocks=1`,
compressed inputs, `top_tokens=0`, gates from a per-token MLP (`[B, Hq, Sq, 3]`, in the order
(selection, compression, window)).
"""

EXAMPLES = (
    """\
The NSA paper's decoder configuration (16 blocks of 64 incl. a sink and a local block, window 512):
```python
node = onnx.helper.make_node(
    "NativeSparseAttention", ["Q", "K", "V", "gates", "compressed_key", "compressed_value"], ["Y"],
    domain="onnxattn", block_size=64, top_blocks=16, top_tokens=0, window=512, causal=1,
    shared_selection=1, sink_blocks=1, local_blocks=1, scale=0.0)
```""",
    """\
Torch modules (export to one node each):
```python
from onnxattn.nn import NativeSparseAttention
nsa = NativeSparseAttention.paper(num_heads=16, num_kv_heads=2, head_dim=128, hidden=2048)
y = nsa(q, k, v, x)         # x [B, S, hidden] feeds the gate MLP
```""",
)

GATES, COMPRESSED, BLOCKS, TOKENS = "gates", "compressed", "blocks", "tokens"
FEATURES = (GATES, COMPRESSED, BLOCKS, TOKENS)
OVERLOADS = tuple(
    "+".join(f for f, on in zip(FEATURES, (g, c, b, t)) if on)
    for g in (0, 1) for c in (0, 1) for b in (0, 1) for t in (0, 1) if not (b and t)
)
I64, F32 = TensorProto.INT64, TensorProto.FLOAT


def check_attributes(attrs: Mapping[str, Any], has_compressed: bool) -> None:
    """The cross-attribute rules (single attributes are checked by their Attr)."""
    top_blocks, forced = attrs["top_blocks"], attrs["sink_blocks"] + attrs["local_blocks"]
    if top_blocks > 0 and forced + attrs["causal"] > top_blocks:
        raise OpError(f"{NAME}: the forced blocks (own block {attrs['causal']} + sink_blocks "
                      f"{attrs['sink_blocks']} + local_blocks {attrs['local_blocks']}) exceed top_blocks = {top_blocks}")
    if top_blocks == 0 and forced:
        raise OpError(f"{NAME}: sink_blocks and local_blocks need the block branch (top_blocks > 0)")
    if attrs["top_tokens"] > 0 and has_compressed:
        raise OpError(f"{NAME}: the fine branch (top_tokens > 0) and the compression branch (compressed_key) "
                      "share gate 1; use one of them")
    if top_blocks == 0 and attrs["top_tokens"] == 0 and attrs["window"] == 0 and not has_compressed:
        raise OpError(f"{NAME}: every branch is off; set top_blocks, top_tokens or window > 0, or give "
                      "compressed_key/compressed_value")


def check_gates_shape(op: str, gates: TensorInfo, target: tuple) -> None:
    if gates.rank is None:
        return
    if gates.rank > 4:
        raise OpError(f"{op}: input 'gates' must have rank <= 4 (broadcastable to [B, Hq, Sq, 3]), got shape "
                      f"{gates.shape_str()}")
    for axis, dim in enumerate(gates.shape):
        want = target[4 - gates.rank + axis]
        if dim != 1 and dims_differ(dim, want):
            raise OpError(f"{op}: input 'gates' of shape {gates.shape_str()} does not broadcast to [B, Hq, Sq, 3] "
                          f"(dim {axis} is {dim}, expected 1 or {want})")


def check_qkv(op: str, q: TensorInfo, k: TensorInfo, v: TensorInfo) -> tuple[tuple, tuple, tuple]:
    layouts = {"Q": "[B, Hq, Sq, D]", "K": "[B, Hkv, Skv, D]", "V": "[B, Hkv, Skv, Dv]"}
    for name, info in (("Q", q), ("K", k), ("V", v)):
        if info.rank is not None and info.rank != 4:
            raise OpError(f"{op}: input '{name}' must have rank 4 {layouts[name]}, got shape {info.shape_str()}")
    qs, ks, vs = (x.shape or (None,) * 4 for x in (q, k, v))
    if dims_differ(qs[0], ks[0]) or dims_differ(qs[0], vs[0]):
        raise OpError(f"{op}: batch sizes differ: Q {q.shape_str()}, K {k.shape_str()}, V {v.shape_str()}")
    if dims_differ(qs[3], ks[3]):
        raise OpError(f"{op}: input 'K' must have head size D = {qs[3]} (from Q) in dim 3, got shape {k.shape_str()}")
    if dims_differ(ks[1], vs[1]) or dims_differ(ks[2], vs[2]):
        raise OpError(f"{op}: input 'V' must be [B, Hkv, Skv, Dv] with Hkv = {ks[1]} and Skv = {ks[2]} (from K), "
                      f"got shape {v.shape_str()}")
    for name, heads in (("Q", qs[1]), ("K", ks[1])):
        if isinstance(heads, int) and heads < 1:
            raise OpError(f"{op}: input '{name}' must have at least one head, got {heads} in dim 1")
    if isinstance(qs[3], int) and qs[3] < 1:
        raise OpError(f"{op}: input 'Q' must have head size D >= 1, got shape {q.shape_str()}")
    if isinstance(qs[1], int) and isinstance(ks[1], int) and qs[1] % ks[1] != 0:
        raise OpError(f"{op}: query heads ({qs[1]}, Q dim 1) must be a multiple of key/value heads ({ks[1]}, K dim 1)")
    return qs, ks, vs


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    q, k, v, gates, ckey, cvalue = inputs
    qs, ks, vs = check_qkv(NAME, q, k, v)
    if (ckey is None) != (cvalue is None):
        raise OpError(f"{NAME}: inputs 'compressed_key' and 'compressed_value' must be given together")
    check_attributes(attrs, ckey is not None)
    if gates is not None:
        check_gates_shape(NAME, gates, (qs[0], qs[1], qs[2], 3))
    if ckey is not None:
        for name, info, width in (("compressed_key", ckey, qs[3]), ("compressed_value", cvalue, vs[3])):
            if info.rank is not None and info.rank != 4:
                raise OpError(f"{NAME}: input '{name}' must have rank 4 [B, Hkv, Nc, {'D' if width is qs[3] else 'Dv'}], "
                              f"got shape {info.shape_str()}")
            shape = info.shape or (None,) * 4
            nc = ks[2] // attrs["block_size"] if isinstance(ks[2], int) else None
            for axis, want in ((0, qs[0]), (1, ks[1]), (2, nc), (3, width)):
                if dims_differ(shape[axis], want):
                    raise OpError(f"{NAME}: input '{name}' must be [B, Hkv, Nc, .] = [{qs[0]}, {ks[1]}, {nc}, {width}] "
                                  f"(Nc = Skv // block_size), got shape {info.shape_str()}")
    sel_heads = ks[1] if attrs["shared_selection"] else qs[1]
    return [
        TensorInfo(q.elem_type, (qs[0], qs[1], qs[2], vs[3])),
        TensorInfo(TensorProto.INT64, (qs[0], sel_heads, qs[2], attrs["top_blocks"])),
        TensorInfo(TensorProto.INT64, (qs[0], qs[1], qs[2], attrs["top_tokens"])),
    ]


def signature(inputs: Sequence[TensorInfo | None], outputs_present: Sequence[bool]) -> str:
    present = lambda i: i < len(inputs) and inputs[i] is not None  # noqa: E731
    if present(4) != present(5):
        raise OpError(f"{NAME}: inputs 'compressed_key' and 'compressed_value' must be given together")
    tokens = len(outputs_present) > 2 and outputs_present[2]
    blocks = len(outputs_present) > 1 and outputs_present[1]
    on = {GATES: present(3), COMPRESSED: present(4), BLOCKS: blocks and not tokens, TOKENS: tokens}
    return "+".join(f for f in FEATURES if on[f])


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+")) if overload else set()
    f = FunctionBuilder(SPEC, overload, opset)
    zero, one = f.const(0, I64), f.const(1, I64)
    # keys and values stay [B, Hkv, ...]: each group's query heads read them once (bodies.grouped_matmul)
    v = f.op("Cast", "V", to=F32)
    scale = sparse.resolved_scale(f, "Q")
    p = sparse.query_positions(f, "Q", "K")  # [Sq, 1]
    skv = sparse.scalar_dim(f, "K", 2)
    j = f.op("Range", zero, skv, one)  # [Skv]
    causal = f.op("Equal", f.attr("causal"), one)
    bs = f.attr("block_size")
    full = f.op("Div", skv, bs)  # complete blocks
    # the node's attributes, read here: the row-wise part below may run in a Loop's body (bodies.over_row_chunks)
    top_blocks, top_tokens, window = f.attr("top_blocks"), f.attr("top_tokens"), f.attr("window")
    sink_blocks, local_blocks = f.attr("sink_blocks"), f.attr("local_blocks")
    shared = f.op("Equal", f.attr("shared_selection"), one)
    group = f.op("Div", f.op("Shape", "Q", start=1, end=2), f.op("Shape", "K", start=1, end=2))
    blocks = f.op("Add", full, f.op("Mul", f.op("Cast", causal, to=I64),
                                    f.op("Cast", f.op("Greater", f.op("Mod", skv, bs), zero), to=I64)))
    block_pads = f.op("Concat", f.const([0, 0, 0, 0, 0, 0, 0], I64),
                      f.op("Reshape", f.op("Sub", blocks, full), f.const([1], I64)), axis=0)
    c = f.op("Range", zero, blocks, one)  # [Nb]
    key_block = f.op("Min", f.op("Div", j, bs), blocks)
    if COMPRESSED in features:
        # one more compressed token, of zeros and never visible: before the first whole block there is none, and
        # onnxruntime's (1.31) ReduceMax/ReduceSum under keepdims=1 leave an empty axis empty, which the softmax's
        # Div cannot broadcast
        extra_token = f.const([0, 0, 0, 0, 0, 0, 1, 0], I64)
        ck = f.op("Pad", f.op("Cast", "compressed_key", to=F32), extra_token)
        cv = f.op("Pad", f.op("Cast", "compressed_value", to=F32), extra_token)
        n_compressed = sparse.scalar_dim(f, "compressed_key", 2)
        t = f.op("Range", zero, f.op("Add", n_compressed, one), one)  # [Nc + 1]
        real_token = f.op("Less", t, n_compressed)
    else:
        keys = f.op("Slice", f.op("Cast", "K", to=F32), f.const([0], I64),
                    f.op("Reshape", f.op("Mul", full, bs), f.const([1], I64)), f.const([2], I64))
        # without a whole block (full = 0) any block length shapes the empty keys: at most Skv, so that a block_size
        # near 2^63 does not overflow the Reshape's element count
        block_len = f.op("Min", bs, f.op("Max", skv, one))
        shape = f.op("Concat", f.op("Shape", "K", end=2), f.op("Reshape", full, f.const([1], I64)),
                     f.op("Reshape", block_len, f.const([1], I64)), f.op("Shape", "K", start=3), axis=0)
        means = f.op("ReduceMean", f.op("Reshape", keys, shape, allowzero=1), f.const([3], I64), keepdims=0)
    # the queries and keys cast per chunk: a function-scope Cast read only by the subgraphs is one onnxruntime tries
    # to drop for float32 inputs, and warns that it cannot (their implicit inputs keep its name)
    rows = [("Q", 2), (p, 0)]
    if GATES in features:  # [B, Hq, Sq, 3]
        rows.append((f.op("Expand", f.op("Cast", "gates", to=F32),
                          f.op("Concat", f.op("Shape", "Q", end=3), f.const([3], I64), axis=0)), 2))

    def attend(g: FunctionBuilder, row_inputs: list[str]) -> list[str]:
        """The three branches and their selections for some query rows: q [B, Hq, rows, D], p [rows, 1]."""
        q_rows, p_rows = g.op("Cast", row_inputs[0], to=F32), row_inputs[1]
        k = g.op("Cast", "K", to=F32)
        dots = bodies.grouped_matmul(g, q_rows, k, transpose_y=True)  # [B, Hq, rows, Skv], unscaled
        logits = g.op("Mul", dots, scale)
        past_only = g.op("Or", g.op("Not", causal), g.op("LessOrEqual", j, p_rows))  # [rows, Skv]
        results = []

        # ---- compression branch: attention over the compressed tokens; its probabilities score the blocks
        if COMPRESSED in features:
            c_logits = g.op("Mul", bodies.grouped_matmul(g, q_rows, ck, transpose_y=True), scale)
            whole = g.op("LessOrEqual", g.op("Sub", g.op("Mul", g.op("Add", t, one), bs), one), p_rows)
            c_visible = g.op("And", g.op("Or", g.op("Not", causal), whole), real_token)  # [rows, Nc + 1]
            o_second, c_lse = bodies.masked_softmax_attention(g, c_logits, c_visible, cv)
            block_scores = g.op("Where", c_visible, g.op("Exp", g.op("Sub", c_logits, c_lse)), g.const(0.0))
            block_scores = g.op("Slice", block_scores, g.const([0], I64), g.op("Reshape", n_compressed,
                                                                               g.const([1], I64)), g.const([-1], I64))
        else:
            block_scores = bodies.grouped_matmul(g, q_rows, means, transpose_y=True)

        # ---- block branch: selection keys, TopK, keys of the chosen blocks
        grouped_shape = g.op("Concat", g.op("Shape", "K", end=2), group, g.op("Shape", block_scores, start=2), axis=0)
        summed = g.op("ReduceSum", g.op("Reshape", block_scores, grouped_shape, allowzero=1), g.const([2], I64),
                      keepdims=0)
        # one body for both settings: per head, or the group's sum repeated to every head of the group
        block_scores = g.op("Where", shared, bodies.repeat_kv_heads(g, summed, "Q"), block_scores)
        block_scores = g.op("Pad", block_scores, block_pads, g.const(float("-inf")))  # the own partial block: forced
        own = sparse.own_index(g, p_rows, bs)  # [rows, 1]
        candidate = g.op("Or", g.op("Not", causal), g.op("LessOrEqual", c, own))
        local = g.op("And", g.op("Less", c, own), g.op("GreaterOrEqual", c, g.op("Sub", own, local_blocks)))
        forced = g.op("Or", g.op("Or", g.op("And", causal, g.op("Equal", c, own)), g.op("Less", c, sink_blocks)),
                      local)
        forced = g.op("And", forced, candidate)
        key = g.op("Where", forced, g.const(float("inf")),
                   g.op("Where", candidate, block_scores, g.const(float("-inf"))))
        indices, chosen = sparse.select_top(g, key, top_blocks)
        block_mask = sparse.chosen_mask(g, key, indices, chosen, extra=1)  # + a zero column for dropped keys
        in_blocks = g.op("Cast", g.op("Gather", block_mask, key_block, axis=3), to=TensorProto.BOOL)
        o_blocks, _ = bodies.masked_softmax_attention(g, logits, g.op("And", in_blocks, past_only), v)
        if BLOCKS in features or TOKENS in features:
            # the rows of a group are equal under shared selection: report the group's (every G-th head)
            step = g.op("Squeeze", g.op("Where", shared, group, one))
            heads = g.op("Range", zero, sparse.scalar_dim(g, "Q", 1), step)
            listed = sparse.ascending_list(g, indices, chosen, top_blocks)
            results.append(g.op("Gather", listed, heads, axis=1))

        # ---- fine branch (top_tokens keys by score) or the compression branch's output
        if COMPRESSED not in features or TOKENS in features:
            token_key = g.op("Where", past_only, dots, g.const(float("-inf")))
            t_indices, t_chosen = sparse.select_top(g, token_key, top_tokens)
            if COMPRESSED not in features:
                token_mask = sparse.chosen_mask(g, token_key, t_indices, t_chosen)
                o_second, _ = bodies.masked_softmax_attention(g, logits, g.op("Cast", token_mask, to=TensorProto.BOOL),
                                                              v)
            if TOKENS in features:
                results.append(sparse.ascending_list(g, t_indices, t_chosen, top_tokens))

        # ---- window branch: the W most recent keys, the current one included
        in_window = g.op("And", g.op("LessOrEqual", j, p_rows), g.op("Greater", j, g.op("Sub", p_rows, window)))
        in_window = g.op("And", in_window, g.op("Greater", window, zero))
        o_window, _ = bodies.masked_softmax_attention(g, logits, in_window, v)

        # ---- gates
        if GATES in features:
            gate = [g.op("Slice", row_inputs[2], g.const([x], I64), g.const([x + 1], I64), g.const([3], I64))
                    for x in range(3)]
            y = g.op("Add", g.op("Add", g.op("Mul", gate[0], o_blocks), g.op("Mul", gate[1], o_second)),
                     g.op("Mul", gate[2], o_window))
        else:
            y = g.op("Add", g.op("Add", o_blocks, o_second), o_window)
        return [y] + results

    row_elements = bodies.row_scores(f, "Q", f.op("Shape", "K", start=2, end=3))
    row_outputs = [bodies.RowOutput(rank=4, axis=2)]
    if BLOCKS in features or TOKENS in features:
        row_outputs.append(bodies.RowOutput(rank=4, axis=2, dtype=I64, pad=-1))
    if TOKENS in features:
        row_outputs.append(bodies.RowOutput(rank=4, axis=2, dtype=I64, pad=-1))
    results = bodies.over_row_chunks(f, f.op("Shape", "Q", start=2, end=3), row_elements, rows, attend, row_outputs)
    f.nodes.append(onnx.helper.make_node("CastLike", [results[0], "Q"], ["Y"]))
    outputs = ["Y"]
    for name, value in zip(("selected_blocks", "selected_tokens"), results[1:]):
        f.nodes.append(onnx.helper.make_node("Identity", [value], [name]))
        outputs.append(name)
    last = 5 if COMPRESSED in features else 3 if GATES in features else 2
    inputs = [i.name for i in SPEC.inputs[: last + 1]]
    return f.build(inputs, outputs)


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("Q", "T", "Queries [B, Hq, Sq, D]."),
        Input("K", "T", "Keys [B, Hkv, Skv, D]; Hq must be a multiple of Hkv."),
        Input("V", "T", "Values [B, Hkv, Skv, Dv]."),
        Input("gates", "T", "Branch weights (after the sigmoid), broadcastable to [B, Hq, Sq, 3]: (block, fine "
              "or compression, window). Absent: 1 for every branch.", optional=True),
        Input("compressed_key", "T", "Compressed tokens' keys [B, Hkv, Skv // block_size, D] (the paper's "
              "compression branch; with compressed_value).", optional=True),
        Input("compressed_value", "T", "Compressed tokens' values [B, Hkv, Skv // block_size, Dv].", optional=True),
    ),
    outputs=(
        Output("Y", "T", "Attention output [B, Hq, Sq, Dv]."),
        Output("selected_blocks", "tensor(int64)", "Chosen blocks per row [B, Hs, Sq, top_blocks], ascending, -1 "
               "unused (Hs = Hkv with shared_selection, else Hq).", optional=True),
        Output("selected_tokens", "tensor(int64)", "Chosen keys of the fine branch [B, Hq, Sq, top_tokens], "
               "ascending, -1 unused.", optional=True),
    ),
    attrs=(
        Attr("block_size", "int", 64, "Keys per block (>= 1).",
             lambda v: None if v >= 1 else f"must be >= 1, got {v}"),
        Attr("top_blocks", "int", 16, "Blocks each row (or group) attends to; 0: block branch off.",
             non_negative("0 = off")),
        Attr("top_tokens", "int", 0, "Keys of the fine branch per row; 0: off.", non_negative("0 = off")),
        Attr("window", "int", 0, "Keys of the causal sliding-window branch; 0: off.", non_negative("0 = off")),
        Attr("causal", "int", 0, "1: causal selection and attention (decoders); 0: the seed's non-causal paths.",
             zero_or_one),
        Attr("shared_selection", "int", 0, "1: one block selection per GQA group, by scores summed over its heads.",
             zero_or_one),
        Attr("sink_blocks", "int", 0, "The first blocks, always selected (attention sink).", non_negative("count")),
        Attr("local_blocks", "int", 0, "Blocks right before the own block, always selected.", non_negative("count")),
        Attr("scale", "float", 0.0, "Score scale; 0 means 1/sqrt(D). Must be >= 0.",
             finite_non_negative("0 = 1/sqrt(D)")),
    ),
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Q, K, V, gates, compressed tokens and Y."),),
    infer=infer,
    signature=signature,
    build_function=build_function,
    overloads=OVERLOADS,
    overload_doc="Overload names join the present features with '+': `gates`, `compressed` (the compressed "
                 "inputs), `blocks` (output selected_blocks) or `tokens` (outputs selected_blocks and "
                 "selected_tokens); the empty name is (Q, K, V) -> Y",
    examples=EXAMPLES,
)
