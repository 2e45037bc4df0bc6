"""Pieces of reference-function bodies shared by the attention ops (standard ONNX ops only).

Every piece works on float32 values inside a FunctionBuilder; the ops cast inputs in and outputs back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import onnx
from onnx import TensorProto, helper

from onnxattn.ops._spec import FunctionBuilder

I64, F32 = TensorProto.INT64, TensorProto.FLOAT


def repeat_kv_heads(f: FunctionBuilder, x: str, q: str) -> str:
    """[B, Hkv, S, E] -> [B, Hq, S, E], each KV head repeated G = Hq / Hkv times (repeat-each)."""
    batch = f.op("Shape", x, start=0, end=1)
    kv_heads = f.op("Shape", x, start=1, end=2)
    q_heads = f.op("Shape", q, start=1, end=2)
    group = f.op("Div", q_heads, kv_heads)
    tail = f.op("Shape", x, start=2)  # [S, E]
    expanded = f.op("Expand", f.op("Unsqueeze", x, f.const([2], I64)),
                    f.op("Concat", batch, kv_heads, group, tail, axis=0))
    # allowzero: a 0 in the target is a real empty dim (e.g. Skv = 0), not "copy the input's dim"
    return f.op("Reshape", expanded, f.op("Concat", batch, q_heads, tail, axis=0), allowzero=1)


def split_heads(f: FunctionBuilder, x: str, heads: str) -> str:
    """[..., H E] -> [..., H, E], H an int64 scalar. The shape is spelled out (E = last dim / H, allowzero) rather
    than left to a -1, which onnxruntime cannot infer from an empty tensor (B, S or T = 0)."""
    heads_1 = f.op("Unsqueeze", heads, f.const([0], I64))
    width = f.op("Div", f.op("Shape", x, start=-1), heads_1)
    return f.op("Reshape", x, f.op("Concat", f.op("Shape", x, end=-1), heads_1, width, axis=0), allowzero=1)


def is_empty(f: FunctionBuilder, x: str) -> str:
    """Whether x has no element (bool scalar): the condition of the guards below."""
    return f.op("Equal", f.op("Size", x), f.const(0, I64))


def reduce_last(f: FunctionBuilder, op: str, x: str, identity: float | int, dtype: int = F32) -> str:
    """`op` (ReduceSum, ReduceMax, ...) over the last axis of x, that axis dropped, also for an empty x: onnxruntime's
    reductions of an empty tensor return it unchanged (1.31), where the spec's result drops the axis and holds the
    identity where the axis itself is empty."""
    return if_else(f, is_empty(f, x), lambda g: [g.op("Expand", g.const(identity, dtype), g.op("Shape", x, end=-1))],
                   lambda g: [g.op(op, x, g.const([-1], I64), keepdims=0)], ranks=(None,), hint="reduced",
                   dtype=dtype)[0]


def weights_matmul(f: FunctionBuilder, x: str, w: str) -> str:
    """x [..., N, K] @ w [H, K, M] (per-head weights broadcast over the leading axes of x), also for an empty x:
    onnxruntime's MatMul (1.31) cannot broadcast an empty batch against the weights, so an empty x takes the
    (empty) result's shape directly."""
    def empty(g: FunctionBuilder) -> list[str]:
        return [g.op("Expand", g.const(0.0), g.op("Concat", g.op("Shape", x, end=-1), g.op("Shape", w, start=-1),
                                                   axis=0))]

    return if_else(f, is_empty(f, x), empty, lambda g: [g.op("MatMul", x, w)], ranks=(None,), hint="product")[0]


def merge_heads(f: FunctionBuilder, x: str) -> str:
    """[..., H, E] -> [..., H E], spelled out as split_heads' shape is."""
    width = f.op("Mul", f.op("Shape", x, start=-2, end=-1), f.op("Shape", x, start=-1))
    return f.op("Reshape", x, f.op("Concat", f.op("Shape", x, end=-2), width, axis=0), allowzero=1)


def if_else(f: FunctionBuilder, cond: str, then_body: Callable[[FunctionBuilder], Sequence[str]],
            else_body: Callable[[FunctionBuilder], Sequence[str]], ranks: Sequence[int | None] = (4,),
            hint: str = "branch", dtype: int = F32) -> list[str]:
    """An If: each body builds its branch's nodes with a subgraph builder (it may read this body's values, not the
    node's attributes) and returns the branch's outputs of element type `dtype`, of `ranks` (None: any rank). Work
    that only one branch needs runs only there; a branch should compute its outputs rather than pass outer values
    through (an Identity copies)."""
    def graph(body, name: str) -> onnx.GraphProto:
        g = f.subgraph()
        return g.graph(name, [], [helper.make_tensor_value_info(x, dtype, None if r is None else [None] * r)
                                  for x, r in zip(body(g), ranks)])

    out = f.op("If", cond, outputs=len(ranks), hint=hint, then_branch=graph(then_body, f"{hint}_then"),
               else_branch=graph(else_body, f"{hint}_else"))
    return [out] if isinstance(out, str) else out


def kv_group_rows(f: FunctionBuilder, x: str, kv: str) -> str:
    """x [B, Hq, S, E] -> [B, Hkv, G S, E] (a view: query head h = kv G + g), Hkv the head axis of `kv`: the G query
    heads that share a key/value head as one matrix, so that a MatMul against [B, Hkv, ., .] serves the whole group
    from one read of its keys or values, never repeated per query head (repeat_kv_heads)."""
    kv_heads = f.op("Shape", kv, start=1, end=2)
    rows = f.op("Mul", f.op("Div", f.op("Shape", x, start=1, end=2), kv_heads), f.op("Shape", x, start=2, end=3))
    # allowzero: an empty dim (e.g. S = 0) stays empty, not "copy the input's dim"
    return f.op("Reshape", x, f.op("Concat", f.op("Shape", x, end=1), kv_heads, rows, f.op("Shape", x, start=3),
                                   axis=0), allowzero=1)


def grouped_matmul(f: FunctionBuilder, x: str, y: str, transpose_y: bool = False) -> str:
    """x [B, Hq, S, E] @ y [B or 1, Hkv, E, N] -> [B, Hq, S, N], query head h against key/value head h // G
    (G = Hq / Hkv, repeat-each) without repeating y: one [G S, E] x [E, N] product per key/value head.
    transpose_y: y is [B or 1, Hkv, N, E], transposed here, beside the MatMul, so that onnxruntime fuses the two
    (no transposed copy; the shape is read from y itself, so nothing else holds on to the transposed value)."""
    y_t = f.op("Transpose", y, perm=[0, 1, 3, 2]) if transpose_y else y
    out = f.op("MatMul", kv_group_rows(f, x, y), y_t)  # batch: x's and y's broadcast
    return f.op("Reshape", out, f.op("Concat", f.op("Shape", out, end=1), f.op("Shape", x, start=1, end=3),
                                     f.op("Shape", out, start=3), axis=0), allowzero=1)


def resolved_scale(f: FunctionBuilder, head_dim: str) -> str:
    """The node's `scale`, or 1/sqrt(D) when it is 0; `head_dim`: D as an int64 [1]. float32 [1]."""
    scale = f.attr("scale")
    default = f.op("Reciprocal", f.op("Sqrt", f.op("Cast", head_dim, to=F32)))
    return f.op("Where", f.op("Equal", scale, f.const(0.0)), default, scale)


def score_attributes(f: FunctionBuilder, q: str) -> dict[str, str]:
    """The node's `scale` (0: 1/sqrt(D), D the last dim of q) and `softcap` (0: off) as values of the body, for
    `scores` (read here, in the function body, so that subgraphs can use them)."""
    cap = f.attr("softcap")
    cap_on = f.op("Greater", cap, f.const(0.0))
    return dict(scale=resolved_scale(f, f.op("Shape", q, start=-1)), cap_on=cap_on, cap=cap)


def scores(f: FunctionBuilder, q: str, k: str, attrs: dict[str, str] | None = None) -> str:
    """scale * q @ k^T, then the softcap; q [B, Hq, S, D] and k [B, Hkv, T, D] in float32 (query head h against
    key head h // G, grouped_matmul). `attrs`: from score_attributes (read from the node when None)."""
    a = attrs or score_attributes(f, q)

    # the scale on q (S D values, not S T), and the softcap's passes over the scores only when it is on: the
    # product in each branch
    def product(g: FunctionBuilder) -> str:
        return grouped_matmul(g, g.op("Mul", q, a["scale"]), k, transpose_y=True)

    def capped(g: FunctionBuilder) -> list[str]:
        return [g.op("Mul", g.op("Tanh", g.op("Div", product(g), a["cap"])), a["cap"])]

    return if_else(f, a["cap_on"], capped, lambda g: [product(g)], hint="scores")[0]


def visibility_attributes(f: FunctionBuilder, *, band: bool, chunk: bool = False) -> dict[str, str]:
    """The node's `causal`, `window`, and `band` / `attention_chunk` where the op has them, for
    structural_visibility."""
    out = dict(causal=f.attr("causal"), window=f.attr("window"))
    if band:
        out["band"] = f.attr("band")
    if chunk:
        out["attention_chunk"] = f.attr("attention_chunk")
    return out


def structural_visibility(f: FunctionBuilder, p: str, j: str, *, band: bool, chunk: bool = False,
                          attrs: dict[str, str] | None = None) -> str:
    """Boolean visibility of key j to the query at key position p (both int64, broadcastable) under the
    node's `causal` and `window` attributes, `band` when the op has one, and `attention_chunk` when it has
    that (p, j >= 0 there, so Div's truncation is floor division). `attrs`: from visibility_attributes (read
    from the node when None)."""
    a = attrs or visibility_attributes(f, band=band, chunk=chunk)
    zero = f.const(0, I64)
    visible = f.op("Or", f.op("Equal", a["causal"], zero), f.op("LessOrEqual", j, p))
    window = a["window"]
    visible = f.op("And", visible,
                   f.op("Or", f.op("LessOrEqual", window, zero), f.op("Greater", j, f.op("Sub", p, window))))
    if band:
        width = a["band"]
        within = f.op("LessOrEqual", f.op("Abs", f.op("Sub", p, j)), width)
        visible = f.op("And", visible, f.op("Or", f.op("LessOrEqual", width, zero), within))
    if chunk:
        size = a["attention_chunk"]
        chunk_on = f.op("Greater", size, zero)
        safe_size = f.op("Where", chunk_on, size, f.const(1, I64))  # 0 = off divides by 1 in the unused branch
        same_chunk = f.op("Equal", f.op("Div", j, safe_size), f.op("Div", p, safe_size))
        visible = f.op("And", visible, f.op("Or", f.op("Not", chunk_on), same_chunk))
    return visible


# ---- Query rows in chunks: bounded memory for long prompts ----

# Score values (float32) a function body holds at once: a call whose scores would pass this scores its query rows
# in chunks, in a Loop, so that a long prompt needs memory for a chunk's scores, not all of them. Module-level so
# that tests can shrink it to exercise the chunked form on small inputs.
CHUNK_ELEMENTS = 1 << 25


@dataclasses.dataclass(frozen=True)
class RowOutput:
    """An output of a row-wise body: its rank, the axis its query rows lie on, its element type and the value that
    pads a short last chunk (cut away afterwards)."""
    rank: int
    axis: int
    dtype: int = F32
    pad: float | int = 0


def valid_prefix(f: FunctionBuilder, valid: str, tensors: Sequence[tuple[str, int]]) -> list[str]:
    """Each (tensor, axis) cut to its first max_b(valid[b]) entries along `axis` (`valid` [B, 1]: each sequence's
    keys in shared-buffer mode). The slots past the longest sequence's keys are hidden from every row, so the
    functions attend to this prefix, not the whole buffer: their work follows the valid lengths, as the kernels'."""
    longest = f.op("Reshape", f.op("ReduceMax", valid, keepdims=0), f.const([1], I64))  # [1]
    zero_1 = f.const([0], I64)
    return [f.op("Slice", x, zero_1, longest, f.const([axis], I64)) for x, axis in tensors]


def row_scores(f: FunctionBuilder, q: str, keys: str) -> str:
    """B H T, an int64 [1]: the score values of one query row of [B, H, S, T] scores, for q [B, H, S, .] and
    `keys` = T as an int64 [1] (over_row_chunks' row_elements)."""
    return f.op("Mul", f.op("Shape", q, end=1), f.op("Mul", f.op("Shape", q, start=1, end=2), keys))


def over_row_chunks(f: FunctionBuilder, seq_1: str, row_elements: str, inputs: Sequence[tuple[str, int]],
                    body: Callable[[FunctionBuilder, list[str]], list[str]],
                    outputs: Sequence[RowOutput]) -> list[str]:
    """Runs `body` (a row-wise computation: each query row's outputs depend on its own input rows only) over the S
    query rows (seq_1: [1]) of `inputs` (value, row axis) at once when S x row_elements ([1]: score values per
    row) fits CHUNK_ELEMENTS, else in chunks of C = max(1, CHUNK_ELEMENTS // row_elements) rows: a Loop slices
    each input's rows (an input whose row axis has size 1 broadcasts: it is passed whole), pads each output's
    last chunk to C rows and stacks them; the rows are then put back in order and cut to S. `body(g, rows)` builds
    its nodes with builder g (a subgraph: it reads the body's values, never the node's attributes) and returns
    its outputs, described by `outputs`. Returns the outputs' values for all S rows."""
    budget = f.const(CHUNK_ELEMENTS, I64)
    zero_1, one_1 = f.const([0], I64), f.const([1], I64)
    fits = f.op("LessOrEqual", f.op("Squeeze", f.op("Mul", row_elements, seq_1)), budget)

    def infos(names, extra_axes: int = 0):
        return [helper.make_tensor_value_info(n, o.dtype, [None] * (o.rank + extra_axes))
                for n, o in zip(names, outputs)]

    whole = f.subgraph()
    whole_outs = [whole.op("Identity", x) for x in body(whole, [x for x, _ in inputs])]

    chunked = f.subgraph()
    chunk = chunked.op("Min", chunked.op("Max", chunked.op("Div", budget, chunked.op("Max", row_elements, one_1)),
                                         one_1), seq_1)  # [1]
    count_1 = chunked.op("Div", chunked.op("Sub", chunked.op("Add", seq_1, chunk), one_1), chunk)  # [1]: ceil(S / C)
    loop = f.subgraph()
    step, cond = loop.fresh("chunk_step"), loop.fresh("chunk_cond")
    begin = loop.op("Mul", loop.op("Unsqueeze", step, zero_1), chunk)  # [1]
    end = loop.op("Add", begin, chunk)

    def rows_of(x: str, axis: int) -> str:
        broadcast = loop.op("Equal", loop.op("Shape", x, start=axis, end=axis + 1), one_1)
        return loop.op("Slice", x, loop.op("Where", broadcast, zero_1, begin), loop.op("Where", broadcast, one_1, end),
                       loop.const([axis], I64))

    stacked = []
    for value, o in zip(body(loop, [rows_of(x, axis) for x, axis in inputs]), outputs):
        missing = loop.op("Sub", chunk, loop.op("Shape", value, start=o.axis, end=o.axis + 1))
        pads = [loop.const([0] * (o.rank + o.axis), I64), missing]
        if o.rank - o.axis - 1:
            pads.append(loop.const([0] * (o.rank - o.axis - 1), I64))
        padded = loop.op("Pad", value, loop.op("Concat", *pads, axis=0), loop.const(o.pad, o.dtype))
        # a leading unit axis, so that stacking (the spec, onnxruntime: [n, 1, ...]) and concatenating (onnx.reference:
        # [n, ...]) the iterations give the same values in the same order
        stacked.append(loop.op("Unsqueeze", padded, zero_1))
    cond_out = loop.op("Identity", cond)
    loop_graph = loop.graph("row_chunk", [helper.make_tensor_value_info(step, I64, []),
                                          helper.make_tensor_value_info(cond, TensorProto.BOOL, [])],
                            [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, [])] + infos(stacked, 1))
    runs = chunked.op("Loop", chunked.op("Squeeze", count_1), chunked.const(True, TensorProto.BOOL), body=loop_graph,
                      outputs=len(outputs))
    runs = [runs] if isinstance(runs, str) else runs
    chunked_outs = []
    for run, o in zip(runs, outputs):
        x = chunked.op("Reshape", run, chunked.op("Concat", count_1, chunked.op("Shape", run, start=-o.rank), axis=0),
                       allowzero=1)  # a 0 is an empty dim (e.g. no selections), not "copy the input's"
        perm = list(range(1, o.axis + 1)) + [0] + list(range(o.axis + 1, o.rank + 1))
        x = chunked.op("Transpose", x, perm=perm)  # [..., n, C, ...]
        dims = [chunked.op("Mul", count_1, chunk)]
        if o.axis:
            dims.insert(0, chunked.op("Shape", x, end=o.axis))
        if o.rank - o.axis - 1:
            dims.append(chunked.op("Shape", x, start=o.axis + 2))
        x = chunked.op("Reshape", x, chunked.op("Concat", *dims, axis=0), allowzero=1)
        chunked_outs.append(chunked.op("Slice", x, zero_1, seq_1, chunked.const([o.axis], I64)))

    names = [f.fresh("rows") for _ in outputs]
    f.nodes.append(helper.make_node("If", [fits], names,
                                    then_branch=whole.graph("all_rows", [], infos(whole_outs)),
                                    else_branch=chunked.graph("row_chunks", [], infos(chunked_outs))))
    return names


def masked_softmax_attention(f: FunctionBuilder, s: str, visible: str, v: str,
                             sink: str | None = None) -> tuple[str, str]:
    """softmax_attention's result, or for empty scores (no key, no row or no batch) the defined one: zero rows (none
    where there are no rows), and an LSE of -inf (the sink's logit with sinks). Apart because onnxruntime's
    reductions of an empty tensor do not keep the spec's shapes (an empty axis stays empty rather than becoming
    0 / -inf of size 1), so the softmax's broadcasts fail there."""
    def defined_empty(g: FunctionBuilder) -> list[str]:
        rows = g.op("Shape", s, end=-1)
        out = g.op("Expand", g.const(0.0), g.op("Concat", rows, g.op("Shape", v, start=-1), axis=0))
        lse_shape = g.op("Concat", rows, g.const([1], I64), axis=0)
        lse = g.op("Expand", sink if sink is not None else g.const(float("-inf")), lse_shape)
        return [out, lse]

    out, lse = if_else(f, is_empty(f, s), defined_empty, lambda g: list(softmax_attention(g, s, visible, v, sink)),
                       ranks=(None, None), hint="keys")
    return out, lse


def softmax_attention(f: FunctionBuilder, s: str, visible: str, v: str,
                      sink: str | None = None) -> tuple[str, str]:
    """softmax(s where visible, else -inf) @ v with empty rows giving zeros; s [B, Hq, S, T], v [B, Hkv, T, Dv]
    (query head h reads value head h // G, grouped_matmul). Returns (output, LSE with a trailing unit axis; -inf
    for empty rows). A key that no row of a key/value head's group gives weight to contributes nothing, even if
    its V holds NaN or Inf (e.g. an unwritten cache slot hidden by a mask), as in the kernels.
    `sink` (float32, broadcastable to the rows [..., 1]): an extra logit in every row's softmax without a
    value (attention sinks), so the weights sum to less than 1 and an empty row stays zero."""
    s = f.op("Where", visible, s, f.const(float("-inf")))
    axis = f.const([-1], I64)
    row_max = f.op("ReduceMax", s, axis, keepdims=1)
    if sink is not None:
        row_max = f.op("Max", row_max, sink)
    safe_max = f.op("Where", f.op("IsInf", row_max, detect_positive=0), f.const(0.0), row_max)
    probs = f.op("Exp", f.op("Sub", s, safe_max))
    row_sum = f.op("ReduceSum", probs, axis, keepdims=1)
    if sink is not None:  # e^(sink - max), 1 where the sink is the max (also +inf: all weight on it, zeros out)
        sink_weight = f.op("Where", f.op("Equal", sink, safe_max), f.const(1.0),
                           f.op("Exp", f.op("Sub", sink, safe_max)))
        row_sum = f.op("Add", row_sum, sink_weight)
    # a key is live when some row of its head gives it weight (NaN is none), then when some head of its group does
    head_live = f.op("Cast", f.op("Greater", f.op("ReduceMax", probs, f.const([-2], I64), keepdims=0), f.const(0.0)),
                     to=F32)  # [B, Hq, T]
    live = f.op("Cast", f.op("ReduceMax", kv_group_rows(f, f.op("Unsqueeze", head_live, f.const([2], I64)), v),
                             f.const([2], I64), keepdims=0), to=TensorProto.BOOL)  # [B, Hkv, T]
    # V is cleaned (a copy) only when some key has no weight at all: not in a plain decode step, where it would
    # double the bytes read
    dead = f.op("ReduceSum", f.op("Cast", f.op("Not", live), to=F32), keepdims=0)
    out = if_else(f, f.op("Greater", dead, f.const(0.0)),
                  lambda g: [grouped_matmul(g, probs, g.op("Where", g.op("Unsqueeze", live, axis), v, g.const(0.0)))],
                  lambda g: [grouped_matmul(g, probs, v)], hint="weighted")[0]
    out = f.op("Div", out, row_sum)
    out = f.op("Where", f.op("Equal", row_sum, f.const(0.0)), f.const(0.0), out)
    return out, f.op("Add", f.op("Log", row_sum), safe_max)


def head_sinks(f: FunctionBuilder) -> str:
    """The node's `sinks` input [Hq] as float32 [1, Hq, 1, 1]: masked_softmax_attention's `sink` for scores
    whose second axis is the query head."""
    return f.op("Reshape", f.op("Cast", "sinks", to=F32), f.const([1, -1, 1, 1], I64))


# ---- RoPE and QK-norm (ops with rope* and qk_norm_epsilon attributes) ----


def rms_norm(f: FunctionBuilder, x: str, weight: str) -> str:
    """x * rsqrt(mean(x^2 over the last dim) + qk_norm_epsilon) * weight (QK-norm)."""
    mean_sq = f.op("ReduceMean", f.op("Mul", x, x), f.const([-1], I64), keepdims=1)
    inv = f.op("Reciprocal", f.op("Sqrt", f.op("Add", mean_sq, f.attr("qk_norm_epsilon"))))
    return f.op("Mul", f.op("Mul", x, inv), f.op("Cast", weight, to=F32))


def rotary_dim(f: FunctionBuilder, x: str) -> str:
    """The rotated channel count (int64 scalar): rotary_dim, D (the last dim of x) when it is 0, and 0
    when rope is off — so one body serves rope on and off (the rotated part is then empty)."""
    zero, one = f.const(0, I64), f.const(1, I64)
    attr = f.attr("rotary_dim")
    head_dim = f.op("Squeeze", f.op("Shape", x, start=-1))
    rotary = f.op("Where", f.op("Equal", attr, zero), head_dim, attr)
    return f.op("Where", f.op("Equal", f.attr("rope"), one), rotary, zero)


def rope_tables(f: FunctionBuilder, positions: str, rotary: str, inv_freq: str | None) -> tuple[str, str]:
    """cos, sin [B, 1, S, rotary/2] at int64 positions [B, S]."""
    if inv_freq is None:
        exponents = f.op("Div", f.op("Cast", f.op("Range", f.const(0, I64), rotary, f.const(2, I64)), to=F32),
                         f.op("Cast", rotary, to=F32))
        # As the kernels: float32 log(base) and products, each exp correctly rounded to float32. Log and Exp go through
        # float64 because onnxruntime's float32 Exp can be an ulp off (exp(-2.3025851) gave 0.1, not 0.099999994), and
        # an ulp of a frequency is 5e-4 rad at position 65536 (PagedAttention's function was 1e-3 off there).
        log_base = f.op("Cast", f.op("Log", f.op("Cast", f.attr("rope_base"), to=TensorProto.DOUBLE)), to=F32)
        products = f.op("Cast", f.op("Neg", f.op("Mul", exponents, log_base)), to=TensorProto.DOUBLE)
        inv_freq = f.op("Cast", f.op("Exp", products), to=F32)
    else:  # sliced, so that rope=0 (rotary 0) needs no frequencies
        half = f.op("Unsqueeze", f.op("Div", rotary, f.const(2, I64)), f.const([0], I64))
        inv_freq = f.op("Slice", f.op("Cast", inv_freq, to=F32), f.const([0], I64), half)
    angles = f.op("Mul", f.op("Unsqueeze", f.op("Cast", positions, to=F32), f.const([-1], I64)), inv_freq)
    angles = f.op("Unsqueeze", angles, f.const([1], I64))
    scaling = f.attr("rope_attention_scaling")
    return f.op("Mul", f.op("Cos", angles), scaling), f.op("Mul", f.op("Sin", angles), scaling)


def apply_rope(f: FunctionBuilder, x: str, cos: str, sin: str, rotary: str) -> str:
    """Rotates the first `rotary` channels of x [B, H, S, D]; half-split or interleaved by attribute."""
    zero, last = f.const([0], I64), f.const([-1], I64)
    rot_end = f.op("Unsqueeze", rotary, zero)
    half_end = f.op("Div", rot_end, f.const([2], I64))
    x_rot = f.op("Slice", x, zero, rot_end, last)
    x_pass = f.op("Slice", x, rot_end, f.const([2**62], I64), last)

    def rotate(x1, x2):
        return (f.op("Sub", f.op("Mul", x1, cos), f.op("Mul", x2, sin)),
                f.op("Add", f.op("Mul", x2, cos), f.op("Mul", x1, sin)))

    # half-split: pairs (c, c + rotary/2)
    h1, h2 = rotate(f.op("Slice", x_rot, zero, half_end, last), f.op("Slice", x_rot, half_end, rot_end, last))
    half_split = f.op("Concat", h1, h2, axis=-1)
    # interleaved: pairs (2c, 2c + 1)
    pairs_shape = f.op("Concat", f.op("Shape", x_rot, end=3), half_end, f.const([2], I64), axis=0)
    pairs = f.op("Reshape", x_rot, pairs_shape)
    e1 = f.op("Squeeze", f.op("Slice", pairs, zero, f.const([1], I64), last), last)
    e2 = f.op("Squeeze", f.op("Slice", pairs, f.const([1], I64), f.const([2], I64), last), last)
    i1, i2 = rotate(e1, e2)
    interleaved = f.op("Reshape", f.op("Concat", f.op("Unsqueeze", i1, last), f.op("Unsqueeze", i2, last), axis=-1),
                       f.op("Shape", x_rot))
    use_interleaved = f.op("Equal", f.attr("rope_interleaved"), f.const(1, I64))
    return f.op("Concat", f.op("Where", use_interleaved, interleaved, half_split), x_pass, axis=-1)
