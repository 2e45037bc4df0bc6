"""Pieces of the sparse ops' reference functions (NativeSparseAttention, SparseRoutedAttention): block
selection with TopK and the masks it implies, in standard ONNX ops only.

Selection everywhere is the same recipe, so that every path (function, kernels, torch, oracle) can agree
exactly: each candidate gets a key (its score; +inf when the block is forced; -inf when it may not be
chosen, and when its score is NaN, e.g. a NaN or infinite key in the block), TopK takes the k largest keys —
ties go to the lower index, as TopK's spec says — and a chosen entry counts only when its key is > -inf.
"""

from __future__ import annotations

from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
from onnxattn.ops._spec import FunctionBuilder

I64, F32 = TensorProto.INT64, TensorProto.FLOAT


def scalar_dim(f: FunctionBuilder, x: str, axis: int) -> str:
    """Dimension `axis` of x as an int64 scalar."""
    return f.op("Squeeze", f.op("Shape", x, start=axis, end=axis + 1))


def query_positions(f: FunctionBuilder, q: str, k: str) -> str:
    """p = i + Skv - Sq of each query row, int64 [Sq, 1] (bottom-right alignment)."""
    zero, one = f.const(0, I64), f.const(1, I64)
    sq, skv = scalar_dim(f, q, 2), scalar_dim(f, k, 2)
    p = f.op("Add", f.op("Range", zero, sq, one), f.op("Sub", skv, sq))
    return f.op("Unsqueeze", p, f.const([1], I64))


def own_index(f: FunctionBuilder, p: str, size: str) -> str:
    """The block (segment) of `size` keys that holds each query's position: p // size, and -1 for a row before
    the first key (Sq > Skv puts rows at p < 0, where ONNX's integer Div would truncate toward 0 and make
    block 0 theirs); same shape as p."""
    return f.op("Where", f.op("Less", p, f.const(0, I64)), f.const(-1, I64), f.op("Div", p, size))


def resolved_scale(f: FunctionBuilder, q: str) -> str:
    """The node's `scale`, or 1/sqrt(D) when it is 0 (float32 scalar; D: q's dim 3)."""
    return f.op("Squeeze", bodies.resolved_scale(f, f.op("Shape", q, start=3)))


def select_top(f: FunctionBuilder, key: str, top: str) -> tuple[str, str]:
    """TopK over the last axis of `key` with k = min(top, width). Returns (indices int64 [.., k], chosen
    bool [.., k]: the key was > -inf)."""
    width = f.op("Shape", key, start=-1)
    k = f.op("Min", f.op("Reshape", top, f.const([1], I64)), width)
    # a NaN score is never chosen, as in the kernels (TopK would rank it first and the list would lose a slot)
    key = f.op("Where", f.op("IsNaN", key), f.const(float("-inf")), key)
    values, indices = f.op("TopK", key, k, outputs=2, axis=-1, largest=1, sorted=1)
    return indices, f.op("Greater", values, f.const(float("-inf")))


def chosen_mask(f: FunctionBuilder, key: str, indices: str, chosen: str, extra: int = 0) -> str:
    """float32 0/1 mask shaped like `key` (plus `extra` trailing zero columns) with 1 at the chosen
    indices. TopK's indices are distinct, so a plain scatter is exact."""
    shape = f.op("Shape", key)
    if extra:
        shape = f.op("Add", shape, f.op("Concat", f.op("Mul", f.op("Shape", key, end=-1), f.const([0], I64)),
                                      f.const([extra], I64), axis=0))
    zeros = f.op("ConstantOfShape", shape, value=_float_tensor(0.0))
    return f.op("ScatterElements", zeros, indices, f.op("Cast", chosen, to=F32), axis=-1)


def ascending_list(f: FunctionBuilder, indices: str, chosen: str, width: str) -> str:
    """The chosen indices in ascending order, then -1 up to `width` entries (an int64 scalar value, the node's
    top_* attribute) (int64 [.., width]): the selected_* outputs."""
    neg = f.op("Where", chosen, f.op("Neg", f.op("Cast", indices, to=F32)), f.const(float("-inf")))
    k = f.op("Shape", neg, start=-1)
    values, _ = f.op("TopK", neg, k, outputs=2, axis=-1, largest=1, sorted=1)
    listed = f.op("Where", f.op("Greater", values, f.const(float("-inf"))),
                  f.op("Cast", f.op("Neg", values), to=I64), f.const(-1, I64))
    missing = f.op("Sub", f.op("Reshape", width, f.const([1], I64)), k)
    lead = f.op("Mul", f.op("Shape", listed, end=-1), f.const([0], I64))  # a 0 per leading axis
    pads = f.op("Concat", lead, f.const([0], I64), lead, missing, axis=0)
    return f.op("Pad", listed, pads, f.const(-1, I64))


def _float_tensor(value: float):
    from onnx import helper

    return helper.make_tensor("value", F32, [1], [value])


def _int_tensor(value: int):
    from onnx import helper

    return helper.make_tensor("value", I64, [1], [value])
