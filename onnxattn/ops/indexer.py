"""onnxattn::LightningIndexer — DeepSeek-V3.2's sparse-attention (DSA) key selection in one node: the lightning
indexer's scores and their top-k, without the [B, S, H, T] score tensor an unfused graph materialises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
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
)

NAME = "LightningIndexer"
I64, F32 = TensorProto.INT64, TensorProto.FLOAT
INT64_MAX = 2**63 - 1
MAX_TOP_K = 2**31 - 1  # the kernels count picks in 32 bits

SUMMARY = "key_indices = LightningIndexer(query [B,S,H*D], key [B,(1,)T,D], weights [B,S,H], past_lengths?)"

DOC = """\
The key selection of DeepSeek sparse attention (DSA: DeepSeek-V3.2, GLM-5) after the indexer's projections and
RoPE: for each query, the `top_k` visible cache positions with the highest index score

    score[b, i, t] = sum_h weights[b, i, h] * relu(scale * query[b, i, h] . key[b, t])

(computed in float32; `scale` 0 means 1/sqrt(D)), as `key_indices [B, S, top_k]` for
`MultiHeadLatentAttention`'s input of that name. The indexer has H heads of width D for the queries and one key
per token shared by every head; `weights` are its per-token head weights (DeepSeek-V3.2: `weights_proj(x) *
H^-0.5`). An unfused graph computes the [B, S, H, T] scores in float32 (4 GiB for a 4k-token prompt with 64 heads)
before its TopK; the kernels keep one [S, T] row block of summed scores at most, the CPU one a row per thread, and
the reference function scores its query rows in chunks (a Loop) once [B, S, H, T] passes 2^25 values (128 MiB), so
it too runs long prompts in bounded memory.
Scores are float32 sums of float32 products in every kernel: the CUDA one multiplies float16 / bfloat16 inputs on
tensor cores (exact products, float32 accumulation; `ONNXATTN_INDEXER_CUDA=simt` asks for its CUDA-core kernel),
float32 inputs on CUDA cores (no TF32).

**Keys and positions.** `key` holds every key the queries may pick, the new tokens' included (the indexer's key
cache after this step's keys were written: `[B, T, D]`, or `[B, 1, T, D]` as the decoder export caches it).
Without `past_lengths` the queries are the last S tokens: query i sits at position `T - S + i`. With
`past_lengths [B]` (shared-buffer mode) `key` is a preallocated buffer whose row b holds `past_lengths[b] + S`
valid keys: query i sits at `past_lengths[b] + i` and later slots are hidden (they may hold anything).

**Selection.** A query at position p sees keys t <= p (causal; DSA's indexer is causal). The result lists the
`top_k` visible keys with the highest scores, ties broken toward the lower position, **in ascending position
order**; when fewer than `top_k` keys are visible, the list is every visible key followed by -1 (padding, which
`MultiHeadLatentAttention` ignores). A key whose score is NaN or -inf is never picked. Ascending order makes the
list a canonical set (the attention reads it as one) that every provider returns identically, and it is the order
the attention kernels walk. The selection is discrete: nothing is differentiable here.

torch equivalent:
```python
q = query.unflatten(-1, (H, D)).float()                                   # [B, S, H, D]
k = key.reshape(B, -1, D).float()                                         # [B, T, D]
score = (weights.float()[..., None] * torch.relu(scale * q @ k[:, None].transpose(-1, -2))).sum(2)  # [B, S, T]
pos = (T - S if past_lengths is None else past_lengths[:, None]) + torch.arange(S)   # [B or 1, S]
score = score.masked_fill(torch.arange(T) > pos[..., None], -inf)
picks = <the top_k largest, lower position first on ties, -inf ones as -1>, then sorted ascending with -1 last
```

**Errors.** `T < S` without `past_lengths`, or `past_lengths[b] < 0` or `past_lengths[b] + S > T` with it, is
an error in the kernels (the CUDA one, which cannot raise, clamps).
"""

EXAMPLES = (
    """\
DeepSeek-V3.2 indexer (64 heads of 128, top 2048) of a decode step over a 32k concatenated cache:
```python
node = onnx.helper.make_node("LightningIndexer", ["q_index", "index_keys", "head_weights"], ["key_indices"],
                             domain="onnxattn", num_heads=64, top_k=2048)
# q_index [B, 1, 8192] (after RoPE), index_keys [B, 1, 32768, 128] (present), head_weights [B, 1, 64] float
```""",
)


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    query, key, weights, past_lengths = inputs[:4]
    heads, top_k = attrs["num_heads"], attrs["top_k"]
    if heads < 1:
        raise OpError(f"{NAME}: attribute 'num_heads' is required and must be >= 1, got {heads}")
    if top_k < 1:
        raise OpError(f"{NAME}: attribute 'top_k' is required and must be >= 1, got {top_k}")
    if query.rank is not None and query.rank != 3:
        raise OpError(f"{NAME}: input 'query' must have rank 3 [B, S, H*D], got shape {query.shape_str()}")
    if key.rank is not None and key.rank not in (3, 4):
        raise OpError(f"{NAME}: input 'key' must be [B, T, D] or [B, 1, T, D], got shape {key.shape_str()}")
    if weights.rank is not None and weights.rank != 3:
        raise OpError(f"{NAME}: input 'weights' must have rank 3 [B, S, H], got shape {weights.shape_str()}")
    qs = query.shape or (None,) * 3
    ks = key.shape if key.shape is None or key.rank == 4 else (key.shape[0], 1, *key.shape[1:])
    ks = ks or (None,) * 4
    ws = weights.shape or (None,) * 3
    batch, seq, width = qs
    if dims_differ(ks[0], batch) or dims_differ(ks[1], 1):
        raise OpError(f"{NAME}: input 'key' must be [B, T, D] or [B, 1, T, D] with B = {batch} (query dim 0), got "
                      f"shape {key.shape_str()}")
    head_dim, total = ks[3], ks[2]
    if isinstance(head_dim, int) and head_dim < 1:
        raise OpError(f"{NAME}: input 'key' must have D >= 1, got shape {key.shape_str()}")
    if isinstance(width, int) and width % heads:
        raise OpError(f"{NAME}: query width {width} (dim 2) must be a multiple of num_heads ({heads})")
    if isinstance(width, int) and isinstance(head_dim, int) and width != heads * head_dim:
        raise OpError(f"{NAME}: query width must be num_heads * D = {heads} * {head_dim} = {heads * head_dim} "
                      f"(D from key), got shape {query.shape_str()}")
    if dims_differ(ws[0], batch) or dims_differ(ws[1], seq) or dims_differ(ws[2], heads):
        raise OpError(f"{NAME}: input 'weights' must be [B, S, H] = [{batch}, {seq}, {heads}], got shape "
                      f"{weights.shape_str()}")
    if past_lengths is not None:
        if past_lengths.rank is not None and (past_lengths.rank != 1 or dims_differ(past_lengths.shape[0], batch)):
            raise OpError(f"{NAME}: input 'past_lengths' must be [B] = [{batch}], got {past_lengths.shape_str()}")
    elif isinstance(total, int) and isinstance(seq, int) and total < seq:
        raise OpError(f"{NAME}: input 'key' must hold the S = {seq} new tokens' keys after the past ones "
                      f"(T >= S), got shape {key.shape_str()}")
    return [TensorInfo(I64, (batch, seq, top_k))]


def signature(inputs: Sequence[TensorInfo | None], outputs_present: Sequence[bool]) -> str:
    return "shared" if len(inputs) > 3 and inputs[3] is not None else ""


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    f = FunctionBuilder(SPEC, overload, opset)
    zero, one = f.const(0, I64), f.const(1, I64)
    axis0, axis1, axis2, last = (f.const([a], I64) for a in (0, 1, 2, -1))
    head_dim = f.op("Shape", "key", start=-1)  # [1]
    # q [B, S, H, D], k [B, T, D] (either key rank); no -1 in the shapes, so that empty inputs reshape too
    heads = f.op("Unsqueeze", f.attr("num_heads"), axis0)
    q_shape = f.op("Concat", f.op("Shape", "query", end=2), heads, head_dim, axis=0)
    q = f.op("Cast", f.op("Reshape", "query", q_shape, allowzero=1), to=F32)
    k_shape = f.op("Concat", f.op("Shape", "key", end=1), f.op("Shape", "key", start=-2), axis=0)
    k = f.op("Reshape", f.op("Cast", "key", to=F32), k_shape, allowzero=1)
    scale = bodies.resolved_scale(f, head_dim)
    weights = f.op("Cast", "weights", to=F32)  # [B, S, H]

    batch = f.op("Shape", "query", end=1)  # [1]
    seq_1 = f.op("Shape", "query", start=1, end=2)  # [1]
    seq = f.op("Squeeze", seq_1)
    total_1 = f.op("Shape", k, start=1, end=2)  # [1]
    total = f.op("Squeeze", total_1)
    steps = f.op("Unsqueeze", f.op("Range", zero, seq, one), axis0)  # [1, S]
    if overload == "shared":
        first = f.op("Unsqueeze", "past_lengths", axis1)  # [B, 1]
    else:
        first = f.op("Unsqueeze", f.op("Sub", total, seq), axis0)  # [1]
    positions = f.op("Unsqueeze", f.op("Add", first, steps), last)  # [B or 1, S, 1]
    key_positions = f.op("Range", zero, total, one)  # [T]
    neg_inf = f.const(float("-inf"))
    top_k = f.op("Unsqueeze", f.attr("top_k"), axis0)  # [1]
    none = f.const(INT64_MAX, I64)
    minus_one = f.const(-1, I64)

    def select(g: FunctionBuilder, rows: list[str]) -> list[str]:
        """key_indices [B, rows, K] of some query rows: q [B, rows, H, D], w [B, rows, H], positions [B|1, rows, 1]."""
        q_rows, w_rows, row_positions = rows
        # [B, rows H, D] x [B, D, T]: batch dims equal, no broadcasting (onnxruntime's MatMul refuses to broadcast
        # a size-1 dim against a size-0 one, e.g. [B, 0, H, D] x [B, 1, D, T] for an empty sequence); K^T in the
        # subgraph beside its MatMul, so that onnxruntime fuses the two (no transposed copy of the keys)
        rows_heads = g.op("Mul", g.op("Shape", q_rows, start=1, end=2), heads)
        flat = g.op("Reshape", q_rows, g.op("Concat", batch, rows_heads, head_dim, axis=0), allowzero=1)
        products = g.op("Reshape", g.op("MatMul", flat, g.op("Transpose", k, perm=[0, 2, 1])),
                        g.op("Concat", g.op("Shape", q_rows, end=3), total_1, axis=0), allowzero=1)
        per_head = g.op("Relu", g.op("Mul", products, scale))  # [B, rows, H, T]
        score = g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", w_rows, axis2), per_head), axis2)  # [B, rows, T]
        visible = g.op("LessOrEqual", key_positions, row_positions)  # [B or 1, rows, T]
        score = g.op("Where", g.op("And", visible, g.op("Not", g.op("IsNaN", score))), score, neg_inf)
        # padded by top_k hidden columns, so TopK's k never exceeds the row whatever T is
        pad = g.op("Expand", neg_inf, g.op("Concat", g.op("Shape", score, end=2), top_k, axis=0))
        values, picks = g.op("TopK", g.op("Concat", score, pad, axis=-1), top_k, axis=-1, largest=1, sorted=1,
                             outputs=2)
        # hidden picks (score -inf) sort last as INT64_MAX, then become -1
        picks = g.op("Where", g.op("Greater", values, neg_inf), picks, none)
        ascending = g.op("TopK", picks, top_k, axis=-1, largest=0, sorted=1, outputs=2)[0]
        return [g.op("Where", g.op("Equal", ascending, none), minus_one, ascending)]

    # per-head scores [B, rows, H, T]: B H T values a query row
    row_elements = f.op("Mul", f.op("Mul", batch, heads), total_1)
    picks = bodies.over_row_chunks(f, seq_1, row_elements, [(q, 1), (weights, 1), (positions, 1)], select,
                                   [bodies.RowOutput(rank=3, axis=1, dtype=I64, pad=-1)])[0]
    f.nodes.append(onnx.helper.make_node("Identity", [picks], ["key_indices"]))
    inputs = ["query", "key", "weights"] + (["past_lengths"] if overload == "shared" else [])
    return f.build(inputs, ["key_indices"])


OVERLOADS = ("", "shared")

ATTRS = (
    Attr("num_heads", "int", 0, "H, the indexer's query heads (required).",
         lambda v: None if v >= 1 else f"must be >= 1 (the indexer's heads), got {v}"),
    Attr("top_k", "int", 0, "K, the keys picked per query (required; DeepSeek-V3.2: 2048).",
         lambda v: None if 1 <= v <= MAX_TOP_K else f"must be in [1, {MAX_TOP_K}] (keys picked per query), got {v}"),
    Attr("scale", "float", 0.0, "Scale of the per-head dot products inside the ReLU; 0 means 1/sqrt(D).",
         finite_non_negative("0 = 1/sqrt(D)")),
)

SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("query", "T", "The indexer's queries [B, S, H*D] (after RoPE)."),
        Input("key", "T", "The indexer's keys [B, T, D] or [B, 1, T, D], the new tokens' included (after "
              "LayerNorm and RoPE), or the buffer in shared-buffer mode."),
        Input("weights", "tensor(float)", "Per-token head weights [B, S, H]."),
        Input("past_lengths", "tensor(int64)", "[B]: keys before this step's in each buffer row; selects the "
              "shared-buffer mode.", optional=True),
    ),
    outputs=(Output("key_indices", "tensor(int64)", "[B, S, top_k]: picked positions, ascending, -1 padding."),),
    attrs=ATTRS,
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Index queries and keys."),),
    infer=infer,
    signature=signature,
    build_function=build_function,
    overloads=OVERLOADS,
    examples=EXAMPLES,
    shared_buffer="key",
)
