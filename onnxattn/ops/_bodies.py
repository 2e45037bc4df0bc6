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


def structural_visibility(f: FunctionBuilder, p: str, j: str, *, band: bool, chunk: bool = False) -> str:
    """Boolean visibility of key j to the query at key position p (both int64, broadcastable) under the
    node's `causal` and `window` attributes, `band` when the op has one, and `attention_chunk` when it has
    that (p, j >= 0 there, so Div's truncation is floor division)."""
    zero = f.const(0, I64)
    visible = f.op("Or", f.op("Equal", f.attr("causal"), zero), f.op("LessOrEqual", j, p))
    window = f.attr("window")
    visible = f.op("And", visible,
                   f.op("Or", f.op("LessOrEqual", window, zero), f.op("Greater", j, f.op("Sub", p, window))))
    if band:
        width = f.attr("band")
        within = f.op("LessOrEqual", f.op("Abs", f.op("Sub", p, j)), width)
        visible = f.op("And", visible, f.op("Or", f.op("LessOrEqual", width, zero), within))
    if chunk:
        size = f.attr("attention_chunk")
        chunk_on = f.op("Greater", size, zero)
        safe_size = f.op("Where", chunk_on, size, f.const(1, I64))  # 0 = off divides by 1 in the unused branch
        same_chunk = f.op("Equal", f.op("Div", j, safe_size), f.op("Div", p, safe_size))
        visible = f.op("And", visible, f.op("Or", f.op("Not", chunk_on), same_chunk))
    return visible


def masked_softmax_attention(f: FunctionBuilder, s: str, visible: str, v: str,
                             sink: str | None = None) -> tuple[str, str]:
    """softmax(s where visible, else -inf) @ v with empty rows giving zeros. Returns (output, LSE with a
    trailing unit axis; -inf for empty rows). A key that no row gives weight to contributes nothing, even
    if its V holds NaN or Inf (e.g. an unwritten cache slot hidden by a mask), as in the kernels.
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
    weight = f.op("Unsqueeze", f.op("ReduceMax", probs, f.const([-2], I64), keepdims=0), axis)  # [..., T, 1]
    v = f.op("Where", f.op("Greater", weight, f.const(0.0)), v, f.const(0.0))
    out = f.op("Div", f.op("MatMul", probs, v), row_sum)
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
        inv_freq = f.op("Exp", f.op("Neg", f.op("Mul", exponents, f.op("Log", f.attr("rope_base")))))
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
