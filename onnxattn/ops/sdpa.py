"""onnxattn::ScaledDotProductAttention — the attention core every other op builds on."""

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
    finite,
    finite_non_negative,
    non_negative,
    zero_or_one,
)

NAME = "ScaledDotProductAttention"

SUMMARY = (
    "Y[, LSE] = ScaledDotProductAttention(Q [B,Hq,Sq,D], K [B,Hkv,Skv,D], V [B,Hkv,Skv,Dv], "
    "attn_mask? [..broadcast to B,Hq,Sq,Skv])"
)

DOC = """\
Softmax attention of each query over the keys, with grouped-query heads, structural masks (causal,
sliding window, band), an optional user mask and optional logit soft-capping:

```
scores[b,h,i,j] = scale * <Q[b,h,i,:], K[b,h // G,j,:]>     G = Hq / Hkv (repeat-each GQA mapping)
scores = softcap * tanh(scores / softcap)                 if softcap > 0 (before any masking)
scores += attn_mask (float)   |  hidden where attn_mask is False (bool)
hidden where the structural rules below say so
Y[b,h,i,:] = softmax_j(scores[b,h,i,:]) @ V[b,h // G,:,:]
LSE[b,h,i] = log(sum_j exp(scores[b,h,i,j]))              natural log, float32
```

**Alignment.** Query row `i` sits at key position `p = i + (Skv - Sq)` (bottom-right alignment, as in
FlashAttention and a decoder with a KV cache). torch's `is_causal` and ONNX `Attention` without a past key
align top-left instead (query i sees keys j <= i); the two agree when Sq == Skv.

**Structural rules** (all that are on must hold; each is an interval of keys, so a row's visible keys
are contiguous):
- `causal=1`: key `j` is visible iff `j <= p`.
- `window=W > 0`: the W most recent keys, the current one included: `p - W < j`. With `causal=1` this is
  the sliding window of Mistral/Gemma (W keys per query). Without `causal` it only bounds the past.
- `band=W > 0`: symmetric band `|p - j| <= W` (the seed's LocalAttention). With `causal=1` it equals
  `window=W+1`.

**Masks.** `attn_mask` is either boolean (True = may attend, as in ONNX Attention) or additive of the
same float type as Q; it broadcasts (numpy rules, rank <= 4) to `[B, Hq, Sq, Skv]`. A key is hidden when
the additive mask is `-inf`; a finite large negative value is a bias like any other.

**Empty rows.** A query row that sees no key (all hidden) outputs zeros and LSE = -inf, never NaN.

**Precision.** float16 and bfloat16 inputs are computed with float32 accumulation; LSE is always float32.

**Equivalent torch** (when no mask or window, Sq == Skv, and no empty rows):
`torch.nn.functional.scaled_dot_product_attention(Q, K, V, is_causal=causal, scale=scale, enable_gqa=True)`.
"""

EXAMPLES = (
    """\
Causal GQA prefill, 8 query heads over 2 KV heads:
```python
node = onnx.helper.make_node("ScaledDotProductAttention", ["Q", "K", "V"], ["Y"],
                             domain="onnxattn", causal=1, window=0, band=0, scale=0.0, softcap=0.0)
```""",
    """\
Torch module, exported with one node per use:
```python
import torch, onnxattn
from onnxattn.nn import ScaledDotProductAttention
attn = ScaledDotProductAttention(causal=True, window=4096)
y = attn(q, k, v)                      # q [B,Hq,S,D], k/v [B,Hkv,S,D]
onnxattn.export(MyModel(), (x,), "model.onnx", dynamic_shapes=...)
```""",
)

# Overload names: "+"-joined features of the node's signature; "" is the plain (Q, K, V) -> Y form.
BOOL_MASK, ADDITIVE_MASK, WITH_LSE = "bool_mask", "additive_mask", "lse"
I64, F32 = TensorProto.INT64, TensorProto.FLOAT
OVERLOADS = ("", BOOL_MASK, ADDITIVE_MASK, WITH_LSE, f"{BOOL_MASK}+{WITH_LSE}", f"{ADDITIVE_MASK}+{WITH_LSE}")


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    q, k, v, mask = inputs
    layouts = {"Q": "[B, Hq, Sq, D]", "K": "[B, Hkv, Skv, D]", "V": "[B, Hkv, Skv, Dv]"}
    for name, info in (("Q", q), ("K", k), ("V", v)):
        if info.rank is not None and info.rank != 4:
            raise OpError(f"{NAME}: input '{name}' must have rank 4 {layouts[name]}, got shape {info.shape_str()}")
    qs = q.shape or (None,) * 4
    ks = k.shape or (None,) * 4
    vs = v.shape or (None,) * 4
    if dims_differ(qs[0], ks[0]) or dims_differ(qs[0], vs[0]):
        raise OpError(f"{NAME}: batch sizes differ: Q {q.shape_str()}, K {k.shape_str()}, V {v.shape_str()}")
    if dims_differ(qs[3], ks[3]):
        raise OpError(f"{NAME}: input 'K' must have head size D = {qs[3]} (from Q) in dim 3, got shape {k.shape_str()}")
    if dims_differ(ks[1], vs[1]) or dims_differ(ks[2], vs[2]):
        raise OpError(
            f"{NAME}: input 'V' must be [B, Hkv, Skv, Dv] with Hkv = {ks[1]} and Skv = {ks[2]} (from K), "
            f"got shape {v.shape_str()}"
        )
    if isinstance(qs[3], int) and qs[3] < 1:
        raise OpError(f"{NAME}: input 'Q' must have head size D >= 1, got shape {q.shape_str()}")
    for name, heads in (("Q", qs[1]), ("K", ks[1])):
        if isinstance(heads, int) and heads < 1:
            raise OpError(f"{NAME}: input '{name}' must have at least one head, got {heads} in dim 1")
    if isinstance(qs[1], int) and isinstance(ks[1], int) and qs[1] % ks[1] != 0:
        raise OpError(
            f"{NAME}: query heads ({qs[1]}, Q dim 1) must be a multiple of key/value heads ({ks[1]}, K dim 1)"
        )
    if mask is not None:
        if mask.elem_type not in (0, TensorProto.BOOL) and q.elem_type and mask.elem_type != q.elem_type:
            raise OpError(
                f"{NAME}: input 'attn_mask' must be bool or {q.type_name()} (the type of Q), got {mask.type_name()}"
            )
        target = (qs[0], qs[1], qs[2], ks[2])
        if mask.rank is not None:
            if mask.rank > 4:
                raise OpError(
                    f"{NAME}: input 'attn_mask' must have rank <= 4 (broadcastable to [B, Hq, Sq, Skv]), "
                    f"got shape {mask.shape_str()}"
                )
            for axis, dim in enumerate(mask.shape):
                want = target[4 - mask.rank + axis]
                if dim != 1 and dims_differ(dim, want):
                    raise OpError(
                        f"{NAME}: input 'attn_mask' of shape {mask.shape_str()} does not broadcast to "
                        f"[B, Hq, Sq, Skv] (dim {axis} is {dim}, expected 1 or {want})"
                    )
    y = TensorInfo(q.elem_type, (qs[0], qs[1], qs[2], vs[3]))
    lse = TensorInfo(TensorProto.FLOAT, (qs[0], qs[1], qs[2]))
    return [y, lse]


def signature(inputs: Sequence[TensorInfo | None], outputs_present: Sequence[bool]) -> str:
    features = []
    mask = inputs[3] if len(inputs) > 3 else None
    if mask is not None:
        if mask.elem_type == 0:
            raise OpError(f"{NAME}: the element type of input 'attn_mask' is unknown (bool or float?)")
        features.append(BOOL_MASK if mask.elem_type == TensorProto.BOOL else ADDITIVE_MASK)
    if len(outputs_present) > 1 and outputs_present[1]:
        features.append(WITH_LSE)
    return "+".join(features)


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+"))
    f = FunctionBuilder(SPEC, overload, opset)
    q = f.op("Cast", "Q", to=F32)
    k, v = f.op("Cast", "K", to=F32), f.op("Cast", "V", to=F32)  # [B, Hkv, ...]: each read once per group
    score_attrs = bodies.score_attributes(f, q)
    visibility_attrs = bodies.visibility_attributes(f, band=True)

    # query row i sits at key position p = i + Skv - Sq
    zero, one = f.const(0, I64), f.const(1, I64)
    sq_1 = f.op("Shape", "Q", start=2, end=3)
    sq = f.op("Squeeze", sq_1)
    skv_1 = f.op("Shape", "K", start=2, end=3)
    skv = f.op("Squeeze", skv_1)
    p = f.op("Unsqueeze", f.op("Add", f.op("Range", zero, sq, one), f.op("Sub", skv, sq)), f.const([1], I64))  # [Sq, 1]
    j = f.op("Unsqueeze", f.op("Range", zero, skv, one), f.const([0], I64))  # [1, Skv]

    inputs = ["Q", "K", "V"]
    rows = [(q, 2), (p, 0)]
    if BOOL_MASK in features or ADDITIVE_MASK in features:
        inputs.append("attn_mask")
        mask = "attn_mask" if BOOL_MASK in features else f.op("Cast", "attn_mask", to=F32)
        rows.append((f.op("Expand", mask, f.const([1, 1, 1, 1], I64)), 2))  # rank 4: rows on axis 2

    def attend(g: FunctionBuilder, row_inputs: list[str]) -> list[str]:
        q_rows, p_rows = row_inputs[:2]
        scores = bodies.scores(g, q_rows, k, score_attrs)
        visible = bodies.structural_visibility(g, p_rows, j, band=True, attrs=visibility_attrs)
        if BOOL_MASK in features:
            visible = g.op("And", visible, row_inputs[2])
        elif ADDITIVE_MASK in features:
            scores = g.op("Add", scores, row_inputs[2])
        return list(bodies.masked_softmax_attention(g, scores, visible, v))

    out, lse = bodies.over_row_chunks(f, sq_1, bodies.row_scores(f, q, skv_1), rows, attend,
                                      [bodies.RowOutput(rank=4, axis=2), bodies.RowOutput(rank=4, axis=2)])
    f.nodes.append(onnx.helper.make_node("CastLike", [out, "Q"], ["Y"]))
    if WITH_LSE not in features:
        return f.build(inputs, ["Y"])
    f.nodes.append(onnx.helper.make_node("Squeeze", [lse, f.const([-1], I64)], ["LSE"]))
    return f.build(inputs, ["Y", "LSE"])


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("Q", "T", "Queries [B, Hq, Sq, D]."),
        Input("K", "T", "Keys [B, Hkv, Skv, D]; Hq must be a multiple of Hkv."),
        Input("V", "T", "Values [B, Hkv, Skv, Dv]."),
        Input("attn_mask", "M", "Boolean (True = may attend) or additive mask of Q's type, broadcastable "
              "to [B, Hq, Sq, Skv].", optional=True),
    ),
    outputs=(
        Output("Y", "T", "Attention output [B, Hq, Sq, Dv]."),
        Output("LSE", "tensor(float)", "Log-sum-exp of each row's final scores [B, Hq, Sq]; -inf for empty "
               "rows. Lets partial attentions be merged.", optional=True),
    ),
    attrs=(
        Attr("causal", "int", 0, "1: key j visible iff j <= i + Skv - Sq (bottom-right aligned).", zero_or_one),
        Attr("window", "int", 0, "> 0: only the `window` most recent keys, the current one included "
             "(i + Skv - Sq - window < j). 0: off.", non_negative("0 = off")),
        Attr("band", "int", 0, "> 0: only keys with |i + Skv - Sq - j| <= band. 0: off.", non_negative("0 = off")),
        Attr("scale", "float", 0.0, "Score scale; 0 means 1/sqrt(D).", finite("0 = 1/sqrt(D)")),
        Attr("softcap", "float", 0.0, "> 0: scores = softcap * tanh(scores / softcap) before masking. 0: off.",
             finite_non_negative("0 = off")),
    ),
    type_constraints=(
        TypeConstraint("T", FLOAT_TYPES, "Q, K, V and Y."),
        TypeConstraint("M", ("tensor(bool)",) + FLOAT_TYPES, "Boolean mask, or additive mask of type T."),
    ),
    infer=infer,
    signature=signature,
    build_function=build_function,
    overloads=OVERLOADS,
    examples=EXAMPLES,
)
