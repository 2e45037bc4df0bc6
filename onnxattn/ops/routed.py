"""onnxattn::SparseRoutedAttention — block-routed attention (the seed's SparseRoutedAttention; MoBA, Lu et
al. 2025): each query attends to the key segments whose centroids it matches best."""

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
    finite,
    finite_non_negative,
    non_negative,
    zero_or_one,
)
from onnxattn.ops.nsa import check_qkv

NAME = "SparseRoutedAttention"

SUMMARY = (
    "Y[, selected_segments] = SparseRoutedAttention(Q [B,Hq,Sq,D], K [B,Hkv,Skv,D], V [B,Hkv,Skv,Dv], "
    "position_ids? [B or 1, Skv])"
)

DOC = """\
Keys are cut into segments of `segment_size` (`c = j // segment_size`, `ceil(Skv / segment_size)`
segments; the last may be partial). Each query row routes to `top_k` segments and attends, at full
resolution, to their keys:

```
centroid[c] = mean of K over the segment's keys         (a partial last segment averages its own keys)
score[i, c] = <Q[i], centroid[c] / max(|centroid[c]|, 1e-12)>   cosine=1 (the seed; cosine similarity
                                                                times |Q[i]|, which ranks alike)
score[i, c] = <Q[i], centroid[c]>                                cosine=0 (MoBA)
Y[i] = softmax_j(scale * <Q[i], K[j]>) @ V   over the keys j of the chosen segments (and j <= p if causal)
```

Each query head routes for itself (GQA: head h reads KV head `h // (Hq / Hkv)`). Query row `i` sits at
key position `p = i + Skv - Sq`; its own segment is `p // segment_size`.
- `causal=0` (the seed): every segment is a candidate; the `top_k` best are chosen.
- `causal=1` (MoBA, decoders): only segments before the own one are candidates, the own segment is always
  chosen (counted in `top_k`) and masked causally (`j <= p`); no future segment is ever chosen.

Ties go to the lower segment (as ONNX TopK). A segment whose score is NaN or -inf (a non-finite key in it) is
never chosen; the next best fill the list. Routing is discrete: no gradient flows through it.

**Positions.** With `rope=1`, Q and K are rotated (RoPE, half-split or interleaved, partial with
`rotary_dim`) at `position_ids` — one position per key, `[B or 1, Skv]`; query row i takes the position of
key `Skv - Sq + i`. Positions that restart at 0 at document starts reset RoPE per document (packed
sequences). Absent: `0 .. Skv - 1`. `rope_before_routing=1` (MoBA) routes with the rotated Q and K;
`0` (the seed's documented order) routes with the raw ones and rotates only for the attention. A decoder
with a KV cache caches K before RoPE (the op rotates every key).

`selected_segments` `[B, Hq, Sq, top_k]` lists each row's segments in ascending order, -1 for unused slots.
"""

EXAMPLES = (
    """\
MoBA for a decoder (segments of 512, top 3 incl. the own one, RoPE before routing):
```python
node = onnx.helper.make_node(
    "SparseRoutedAttention", ["Q", "K", "V", "position_ids"], ["Y"], domain="onnxattn",
    segment_size=512, top_k=3, causal=1, cosine=0, rope=1, rope_before_routing=1, rope_base=10000.0,
    rotary_dim=0, rope_interleaved=0, rope_attention_scaling=1.0, scale=0.0)
```""",
)

POSITIONS, SEGMENTS = "pos", "segments"
OVERLOADS = ("", POSITIONS, SEGMENTS, f"{POSITIONS}+{SEGMENTS}")
I64, F32 = TensorProto.INT64, TensorProto.FLOAT


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    q, k, v, positions = inputs
    qs, ks, vs = check_qkv(NAME, q, k, v)
    if positions is not None and positions.rank is not None:
        shape = positions.shape
        if positions.rank != 2 or (shape[0] != 1 and dims_differ(shape[0], qs[0])) or dims_differ(shape[1], ks[2]):
            raise OpError(f"{NAME}: input 'position_ids' must be [B or 1, Skv] = [{qs[0]} or 1, {ks[2]}], got shape "
                          f"{positions.shape_str()}")
    if attrs["rope"] and isinstance(qs[3], int):
        rotary = attrs["rotary_dim"] or qs[3]
        if rotary % 2 or rotary > qs[3]:
            raise OpError(f"{NAME}: attribute 'rotary_dim' must be even and <= D = {qs[3]}, got {rotary}")
    if attrs["rope"] and isinstance(qs[2], int) and isinstance(ks[2], int) and qs[2] > ks[2]:
        raise OpError(f"{NAME}: with rope=1 queries take the positions of the last Sq keys, so Sq ({qs[2]}) must be "
                      f"<= Skv ({ks[2]})")
    return [TensorInfo(q.elem_type, (qs[0], qs[1], qs[2], vs[3])),
            TensorInfo(TensorProto.INT64, (qs[0], qs[1], qs[2], attrs["top_k"]))]


def signature(inputs: Sequence[TensorInfo | None], outputs_present: Sequence[bool]) -> str:
    features = []
    if len(inputs) > 3 and inputs[3] is not None:
        features.append(POSITIONS)
    if len(outputs_present) > 1 and outputs_present[1]:
        features.append(SEGMENTS)
    return "+".join(features)


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+")) if overload else set()
    f = FunctionBuilder(SPEC, overload, opset)
    zero, one = f.const(0, I64), f.const(1, I64)
    q, k = f.op("Cast", "Q", to=F32), f.op("Cast", "K", to=F32)
    v = f.op("Cast", "V", to=F32)  # [B, Hkv, ...] as the keys: each group's query heads read them once
    sq, skv = sparse.scalar_dim(f, "Q", 2), sparse.scalar_dim(f, "K", 2)
    p = sparse.query_positions(f, "Q", "K")  # [Sq, 1]
    j = f.op("Range", zero, skv, one)

    # RoPE at the keys' positions; queries take the last Sq of them. Sq > Skv (rope=0 only: shape inference and
    # the kernels refuse it with rope=1) pads the positions on the left so that the slice still has Sq rows
    # (a negative start would count from the end)
    if POSITIONS in features:
        key_pos = f.op("Cast", "position_ids", to=I64)
    else:
        key_pos = f.op("Unsqueeze", j, f.const([0], I64))
    extra = f.op("Reshape", f.op("Max", f.op("Sub", sq, skv), zero), f.const([1], I64))
    padded_pos = f.op("Pad", key_pos, f.op("Concat", f.const([0], I64), extra, f.const([0, 0], I64), axis=0))
    end = f.op("Add", f.op("Reshape", skv, f.const([1], I64)), extra)
    query_pos = f.op("Slice", padded_pos, f.op("Sub", end, f.op("Reshape", sq, f.const([1], I64))), end,
                     f.const([1], I64))
    rotary = bodies.rotary_dim(f, q)
    cos_k, sin_k = bodies.rope_tables(f, key_pos, rotary, None)
    cos_q, sin_q = bodies.rope_tables(f, query_pos, rotary, None)
    q_rot, k_rot = bodies.apply_rope(f, q, cos_q, sin_q, rotary), bodies.apply_rope(f, k, cos_k, sin_k, rotary)
    before = f.op("Equal", f.attr("rope_before_routing"), one)
    q_route, k_route = f.op("Where", before, q_rot, q), f.op("Where", before, k_rot, k)

    # centroids: segment sums over a zero-padded K, divided by each segment's own length
    # a segment longer than the keys is one segment of all of them: the same segments, centroids and routing, and
    # no int64 overflow in ceil(Skv / segment_size) or its padding for a segment_size near 2^63
    seg = f.op("Min", f.attr("segment_size"), f.op("Max", skv, one))
    segments = f.op("Div", f.op("Add", skv, f.op("Sub", seg, one)), seg)
    pads = f.op("Concat", f.const([0, 0, 0, 0, 0, 0], I64),
                f.op("Reshape", f.op("Sub", f.op("Mul", segments, seg), skv), f.const([1], I64)), f.const([0], I64),
                axis=0)
    padded = f.op("Pad", k_route, pads, f.const(0.0))
    shape = f.op("Concat", f.op("Shape", k, end=2), f.op("Reshape", segments, f.const([1], I64)),
                 f.op("Reshape", seg, f.const([1], I64)), f.op("Shape", k, start=3), axis=0)
    sums = f.op("ReduceSum", f.op("Reshape", padded, shape, allowzero=1), f.const([3], I64), keepdims=0)
    c = f.op("Range", zero, segments, one)
    counts = f.op("Cast", f.op("Min", f.op("Sub", skv, f.op("Mul", c, seg)), seg), to=F32)
    centroids = f.op("Div", sums, f.op("Unsqueeze", counts, f.const([1], I64)))
    norms = f.op("Sqrt", f.op("ReduceSum", f.op("Mul", centroids, centroids), f.const([-1], I64), keepdims=1))
    unit = f.op("Div", centroids, f.op("Max", norms, f.const(1e-12)))
    centroids = f.op("Where", f.op("Equal", f.attr("cosine"), one), unit, centroids)
    causal = f.op("Equal", f.attr("causal"), one)
    top_k = f.attr("top_k")
    scale = sparse.resolved_scale(f, "Q")

    def attend(g: FunctionBuilder, rows: list[str]) -> list[str]:
        """Routing and attention of some query rows: q_route, q_rot [B, Hq, rows, D], p [rows, 1]."""
        q_route_rows, q_rot_rows, p_rows = rows
        scores = bodies.grouped_matmul(g, q_route_rows, centroids, transpose_y=True)
        # routing: the own segment forced, earlier ones by score (causal); all by score otherwise
        own = sparse.own_index(g, p_rows, seg)
        candidate = g.op("Or", g.op("Not", causal), g.op("Less", c, own))
        key = g.op("Where", g.op("And", causal, g.op("Equal", c, own)), g.const(float("inf")),
                   g.op("Where", candidate, scores, g.const(float("-inf"))))
        indices, chosen = sparse.select_top(g, key, top_k)
        mask = sparse.chosen_mask(g, key, indices, chosen)
        routed = g.op("Cast", g.op("Gather", mask, g.op("Div", j, seg), axis=3), to=TensorProto.BOOL)
        visible = g.op("And", routed, g.op("Or", g.op("Not", causal), g.op("LessOrEqual", j, p_rows)))
        logits = g.op("Mul", bodies.grouped_matmul(g, q_rot_rows, k_rot, transpose_y=True), scale)
        out = [bodies.masked_softmax_attention(g, logits, visible, v)[0]]
        return out + ([sparse.ascending_list(g, indices, chosen, top_k)] if SEGMENTS in features else [])

    row_elements = bodies.row_scores(f, "Q", f.op("Shape", "K", start=2, end=3))
    row_outputs = [bodies.RowOutput(rank=4, axis=2)]
    if SEGMENTS in features:
        row_outputs.append(bodies.RowOutput(rank=4, axis=2, dtype=I64, pad=-1))
    results = bodies.over_row_chunks(f, f.op("Shape", "Q", start=2, end=3), row_elements,
                                     [(q_route, 2), (q_rot, 2), (p, 0)], attend, row_outputs)
    f.nodes.append(onnx.helper.make_node("CastLike", [results[0], "Q"], ["Y"]))
    outputs = ["Y"]
    if SEGMENTS in features:
        f.nodes.append(onnx.helper.make_node("Identity", [results[1]], ["selected_segments"]))
        outputs.append("selected_segments")
    inputs = ["Q", "K", "V"] + (["position_ids"] if POSITIONS in features else [])
    return f.build(inputs, outputs)


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("Q", "T", "Queries [B, Hq, Sq, D] (before RoPE)."),
        Input("K", "T", "Keys [B, Hkv, Skv, D] (before RoPE); Hq must be a multiple of Hkv."),
        Input("V", "T", "Values [B, Hkv, Skv, Dv]."),
        Input("position_ids", "tensor(int64)", "RoPE position of every key [B or 1, Skv] (queries take the last "
              "Sq); restarts at 0 per document. Absent: 0 .. Skv - 1.", optional=True),
    ),
    outputs=(
        Output("Y", "T", "Attention output [B, Hq, Sq, Dv]."),
        Output("selected_segments", "tensor(int64)", "Chosen segments per row [B, Hq, Sq, top_k], ascending, -1 "
               "unused.", optional=True),
    ),
    attrs=(
        Attr("segment_size", "int", 64, "Keys per segment (>= 1).", lambda v: None if v >= 1 else f"must be >= 1, got {v}"),
        Attr("top_k", "int", 3, "Segments per query row (>= 1), the own one included when causal.",
             lambda v: None if v >= 1 else f"must be >= 1, got {v}"),
        Attr("causal", "int", 0, "1: causal routing and attention (decoders); 0: the seed's non-causal routing.",
             zero_or_one),
        Attr("cosine", "int", 1, "1: route by cosine similarity (the seed); 0: by dot product (MoBA).", zero_or_one),
        Attr("rope", "int", 0, "1: rotate Q and K (RoPE) at position_ids.", zero_or_one),
        Attr("rope_before_routing", "int", 0, "1: route with the rotated Q, K (MoBA); 0: with the raw ones (the seed).",
             zero_or_one),
        Attr("rope_base", "float", 10000.0, "RoPE base (theta).", lambda v: None if v > 0 else f"must be > 0, got {v}"),
        Attr("rotary_dim", "int", 0, "Channels rotated (even, <= D); 0: all of D.", non_negative("0 = D")),
        Attr("rope_interleaved", "int", 0, "1: rotate pairs (2c, 2c+1) (GPT-J); 0: half-split (GPT-NeoX, Llama).",
             zero_or_one),
        Attr("rope_attention_scaling", "float", 1.0, "Factor on cos and sin (YaRN's attention factor).",
             finite("1 = off")),
        Attr("scale", "float", 0.0, "Score scale; 0 means 1/sqrt(D). Must be >= 0.",
             finite_non_negative("0 = 1/sqrt(D)")),
    ),
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Q, K, V and Y."),),
    infer=infer,
    signature=signature,
    build_function=build_function,
    overloads=OVERLOADS,
    examples=EXAMPLES,
)
