"""Pieces of reference-function bodies shared by the attention ops (standard ONNX ops only).

Every piece works on float32 values inside a FunctionBuilder; the ops cast inputs in and outputs back.
"""

from __future__ import annotations

from onnx import TensorProto

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


def scores(f: FunctionBuilder, q: str, k: str) -> str:
    """scale * q @ k^T, then the softcap; q [B, H, S, D] and k [B, H, T, D] in float32. Uses the node's
    `scale` (0: 1/sqrt(D)) and `softcap` (0: off) attributes."""
    scale_attr = f.attr("scale")
    default_scale = f.op("Reciprocal", f.op("Sqrt", f.op("Cast", f.op("Shape", q, start=3), to=F32)))
    scale = f.op("Where", f.op("Equal", scale_attr, f.const(0.0)), default_scale, scale_attr)
    s = f.op("Mul", f.op("MatMul", q, f.op("Transpose", k, perm=[0, 1, 3, 2])), scale)
    cap = f.attr("softcap")
    cap_on = f.op("Greater", cap, f.const(0.0))
    safe_cap = f.op("Where", cap_on, cap, f.const(1.0))  # a 0 cap divides by 1 in the unused branch
    return f.op("Where", cap_on, f.op("Mul", f.op("Tanh", f.op("Div", s, safe_cap)), safe_cap), s)


def structural_visibility(f: FunctionBuilder, p: str, j: str, *, band: bool) -> str:
    """Boolean visibility of key j to the query at key position p (both int64, broadcastable) under the
    node's `causal` and `window` attributes, and `band` when the op has one."""
    zero = f.const(0, I64)
    visible = f.op("Or", f.op("Equal", f.attr("causal"), zero), f.op("LessOrEqual", j, p))
    window = f.attr("window")
    visible = f.op("And", visible,
                   f.op("Or", f.op("LessOrEqual", window, zero), f.op("Greater", j, f.op("Sub", p, window))))
    if band:
        width = f.attr("band")
        within = f.op("LessOrEqual", f.op("Abs", f.op("Sub", p, j)), width)
        visible = f.op("And", visible, f.op("Or", f.op("LessOrEqual", width, zero), within))
    return visible


def masked_softmax_attention(f: FunctionBuilder, s: str, visible: str, v: str) -> tuple[str, str]:
    """softmax(s where visible, else -inf) @ v with empty rows giving zeros. Returns (output, LSE with a
    trailing unit axis; -inf for empty rows). A key that no row gives weight to contributes nothing, even
    if its V holds NaN or Inf (e.g. an unwritten cache slot hidden by a mask), as in the kernels."""
    s = f.op("Where", visible, s, f.const(float("-inf")))
    axis = f.const([-1], I64)
    row_max = f.op("ReduceMax", s, axis, keepdims=1)
    safe_max = f.op("Where", f.op("IsInf", row_max, detect_positive=0), f.const(0.0), row_max)
    probs = f.op("Exp", f.op("Sub", s, safe_max))
    row_sum = f.op("ReduceSum", probs, axis, keepdims=1)
    weight = f.op("Unsqueeze", f.op("ReduceMax", probs, f.const([-2], I64), keepdims=0), axis)  # [..., T, 1]
    v = f.op("Where", f.op("Greater", weight, f.const(0.0)), v, f.const(0.0))
    out = f.op("Div", f.op("MatMul", probs, v), row_sum)
    out = f.op("Where", f.op("Equal", row_sum, f.const(0.0)), f.const(0.0), out)
    return out, f.op("Add", f.op("Log", row_sum), safe_max)
