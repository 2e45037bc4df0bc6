"""onnxattn::GroupQueryAttention — the fused attention block of decoder LLMs (and encoders): QK-norm,
RoPE, KV cache update and attention in one node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
from onnxattn.ops._spec import (
    FLOAT_TYPES,
    Attr,
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
    finite,
    finite_non_negative,
    non_negative,
    zero_or_one,
)

NAME = "GroupQueryAttention"
I64, F32 = TensorProto.INT64, TensorProto.FLOAT

SUMMARY = (
    "output, present_key?, present_value? = GroupQueryAttention(query [B,S,Hq*D], key [B,S,Hkv*D], "
    "value [B,S,Hkv*Dv], past_key?, past_value?, past_lengths?, position_ids?, q_norm_weight?, "
    "k_norm_weight?, rope_inv_freq?, attention_mask?, sinks?)"
)

DOC = """\
One decoder (or encoder) attention layer after the Q/K/V projections, in this order:

1. split heads: `q [B,Hq,S,D]`, `k [B,Hkv,S,D]`, `v [B,Hkv,S,Dv]` (D = query width / num_heads, so D may
   differ from model width / heads, as in Gemma 3);
2. QK-norm, when the weights are given: `x * rsqrt(mean(x^2 over D) + qk_norm_epsilon) * weight`, per head;
3. RoPE (`rope=1`) at `position_ids` on the first `rotary_dim` channels of q and k;
4. the new k (after RoPE) and v are appended to the KV cache;
5. attention of q over the cache with the rules below (GQA repeat-each, `scale`, `softcap` as in
   `ScaledDotProductAttention`); output `[B,S,Hq*Dv]`.

**KV cache, two modes.**
- *Concatenation* (no `past_lengths`): `present = concat(past, new)` along the sequence,
  `[B,Hkv,P+S,·]`. Query i of every batch sits at key position `P + i`.
- *Shared buffer* (`past_lengths` given): `past_key`/`past_value` are preallocated buffers
  `[B,Hkv,M,·]` holding `past_lengths[b]` valid tokens of sequence b; the new tokens are written at
  positions `past_lengths[b] .. past_lengths[b]+S-1` and `present_key`/`present_value` are the same
  buffers (the library's kernel updates them in place — it declares the aliasing to onnxruntime — and
  reads only the valid prefix, so a decode step costs O(valid length), not O(M)). Query i of batch b
  sits at key position `past_lengths[b] + i`; keys at `>= past_lengths[b] + S` are stale and hidden.
  Without the library, the reference function writes the new tokens with ScatterElements (onnxruntime
  skips its copy when present is bound to the past's buffer) and attends to the buffers' first
  max_b(past_lengths[b] + S) keys only, so its decode step follows the valid lengths too.

**Visibility.** Query at key position p sees key j iff `j <= p` when `causal=1`, `p - window < j` when
`window > 0` (the `window` most recent keys, the current one included — in prefill, chunked prefill and
decode alike), `floor(j / C) == floor(p / C)` when `attention_chunk=C > 0` (Llama 4's chunked attention:
the keys of the query's own chunk of C positions; with `causal=1` those up to p), j is a valid key (see the
modes), and `attention_mask[b, j]` is True when a mask is given (key padding for left- or right-padded
batches; cast a 0/1 integer mask to bool). Causality, windows and chunks use cache positions, so they are
unaffected by position_ids resets (documents packed in one sequence use position_ids for RoPE and, if they
must not see each other, an explicit mask via ScaledDotProductAttention).
A query that sees no key outputs zeros.

**Attention sinks** (`sinks` [Hq], GPT-OSS): one learned logit per query head that joins every row's softmax
denominator and carries no value: `softmax([scores, sink])` over the visible keys plus the sink, the sink's
weight dropped (the row's weights then sum to less than 1). The sink is compared with the scaled (and
soft-capped) scores as they are. A query that sees no key still outputs zeros.

**RoPE.** `inv_freq[i] = rope_base^(-2i/rotary_dim)` for i < rotary_dim/2, or the `rope_inv_freq` input
(how scaled variants are expressed: linear scaling divides inv_freq by the factor; Llama 3 and YaRN
frequency schemes are precomputed the same way, with YaRN's attention factor in
`rope_attention_scaling`, which multiplies cos and sin; LongRoPE's two factor sets arrive through a
`Where` in front of this input that picks one per run from the largest position). Angles `position * inv_freq`.
Half-split layout (rotate_half, GPT-NeoX/Llama) by default, interleaved pairs (GPT-J, DeepSeek) with `rope_interleaved=1`.
`rotary_dim=0` means D. Positions default to the query's key position (`P + i`, or
`past_lengths[b] + i`).

**Precision.** Everything is computed in float32; K and V are stored in the cache in the input type, and
attention reads them back from it.

**Bad input and the CUDA kernel.** Every input, `past_lengths` and `position_ids` included, stays in device
memory on CUDA: the kernels read nothing on the host and their launches do not depend on input values, so a
step runs without host synchronisation and can be captured in a CUDA graph. A `past_lengths[b]` outside
`[0, M - S]` is an error naming it in the CPU kernel. The CUDA kernel cannot raise without synchronising the
host, so it gives that sequence NaN output rows and writes none of its cache slots (the other sequences are
unaffected); validate on the host first where an error is needed.
"""

OVERLOAD_DOC = (
    "Overload names join the node's present optional parts with '+', in this order: "
    "`past` (past_key and past_value), `shared` (past_lengths), `pos` (position_ids), `qnorm`, `knorm`, "
    "`inv_freq`, `mask` (attention_mask), `sinks`, `present` (present_key and present_value outputs). "
    "`shared` requires `past`. The plain form (query, key, value) -> output is the default overload ''."
)

EXAMPLES = (
    """\
Llama-style decode step with a growing cache (concatenation mode), 32 query heads over 8 KV heads:
```python
node = onnx.helper.make_node(
    "GroupQueryAttention",
    ["q", "k", "v", "past_key", "past_value", "", "position_ids"],
    ["out", "present_key", "present_value"], domain="onnxattn",
    num_heads=32, kv_num_heads=8, causal=1, rope=1, rope_base=500000.0)
```""",
    """\
Torch module (Q/K/V/O projections around one GroupQueryAttention node), with an eager KV cache:
```python
from onnxattn.nn import GroupedQueryAttention, KVCache
attn = GroupedQueryAttention(model_dim=512, num_query_heads=8, num_kv_heads=2, window=4096, qk_norm=True)
cache = KVCache()
y = attn(x_prompt, cache=cache)          # prefill
y = attn(x_next_token, cache=cache)      # decode, positions continue from the cache length
```""",
)

PARTS = OptionalParts(
    NAME, ("past", "shared", "pos", "qnorm", "knorm", "inv_freq", "mask", "sinks", "present"),
    {"past": 3, "shared": 5, "pos": 6, "qnorm": 7, "knorm": 8, "inv_freq": 9, "mask": 10, "sinks": 11},
    ("present_key", "present_value"), required_inputs=3)
OVERLOADS = PARTS.overloads()


def _div(a: Dim, b: int) -> Dim:
    return a // b if isinstance(a, int) else None


def _sum(a: Dim, b: Dim) -> Dim:
    return a + b if isinstance(a, int) and isinstance(b, int) else None


def _mul(a: Dim, b: int) -> Dim:
    return a * b if isinstance(a, int) else None


def check_sinks(op: str, sinks: TensorInfo | None, hq: int) -> None:
    """The `sinks` input of the fused decoder ops (GroupQueryAttention, PagedAttention): [num_heads]."""
    if sinks is not None and sinks.rank is not None and (sinks.rank != 1 or dims_differ(sinks.shape[0], hq)):
        raise OpError(f"{op}: input 'sinks' must be [num_heads] = [{hq}] (one logit per query head), got "
                      f"{sinks.shape_str()}")


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    query, key, value, past_key, past_value, past_lengths, position_ids, q_norm, k_norm, inv_freq, mask, sinks = (
        list(inputs) + [None] * 12)[:12]
    hq, hkv = attrs["num_heads"], attrs["kv_num_heads"]
    if hq < 1 or hkv < 1:
        raise OpError(f"{NAME}: attributes 'num_heads' and 'kv_num_heads' are required and must be >= 1, "
                      f"got {hq} and {hkv}")
    if hq % hkv != 0:
        raise OpError(f"{NAME}: num_heads ({hq}) must be a multiple of kv_num_heads ({hkv})")
    for name, info, layout in (("query", query, "[B, S, Hq*D]"), ("key", key, "[B, S, Hkv*D]"),
                               ("value", value, "[B, S, Hkv*Dv]")):
        if info.rank is not None and info.rank != 3:
            raise OpError(f"{NAME}: input '{name}' must have rank 3 {layout}, got shape {info.shape_str()}")
    qs, ks, vs = (x.shape or (None,) * 3 for x in (query, key, value))
    for name, s in (("key", ks), ("value", vs)):
        if dims_differ(s[0], qs[0]) or dims_differ(s[1], qs[1]):
            raise OpError(f"{NAME}: input '{name}' must have the batch and sequence dims of query "
                          f"{query.shape_str()}, got shape {(key if name == 'key' else value).shape_str()}")
    if isinstance(qs[2], int) and qs[2] % hq != 0:
        raise OpError(f"{NAME}: query width {qs[2]} (dim 2) must be num_heads ({hq}) * head size")
    d = _div(qs[2], hq)
    if d == 0:
        raise OpError(f"{NAME}: head size D must be >= 1, got query width {qs[2]}")
    if isinstance(ks[2], int) and d is not None and ks[2] != hkv * d:
        raise OpError(f"{NAME}: input 'key' must have width kv_num_heads * D = {hkv} * {d} = {hkv * d} "
                      f"(D from query), got shape {key.shape_str()}")
    if isinstance(vs[2], int) and vs[2] % hkv != 0:
        raise OpError(f"{NAME}: value width {vs[2]} (dim 2) must be kv_num_heads ({hkv}) * value head size")
    dv = _div(vs[2], hkv)
    batch, seq = qs[0], qs[1]

    if (past_key is None) != (past_value is None):
        raise OpError(f"{NAME}: inputs 'past_key' and 'past_value' must be given together")
    past_len: Dim = 0
    if past_key is not None:
        for name, info, width in (("past_key", past_key, d), ("past_value", past_value, dv)):
            if info.rank is not None and info.rank != 4:
                raise OpError(f"{NAME}: input '{name}' must have rank 4 [B, Hkv, P, .], got {info.shape_str()}")
            s = info.shape or (None,) * 4
            if dims_differ(s[0], batch) or dims_differ(s[1], hkv) or dims_differ(s[3], width):
                raise OpError(f"{NAME}: input '{name}' must be [B, Hkv, P, {width}] = [{batch}, {hkv}, P, {width}], "
                              f"got shape {info.shape_str()}")
        pk, pv = (x.shape or (None,) * 4 for x in (past_key, past_value))
        if dims_differ(pk[2], pv[2]):
            raise OpError(f"{NAME}: past_key and past_value must hold the same number of tokens, got "
                          f"{past_key.shape_str()} and {past_value.shape_str()}")
        past_len = pk[2]
    if past_lengths is not None:
        if past_key is None:
            raise OpError(f"{NAME}: input 'past_lengths' (shared-buffer mode) needs past_key and past_value")
        if past_lengths.rank is not None and (past_lengths.rank != 1 or dims_differ(past_lengths.shape[0], batch)):
            raise OpError(f"{NAME}: input 'past_lengths' must be [B] = [{batch}], got {past_lengths.shape_str()}")
    if position_ids is not None and position_ids.rank is not None:
        ps = position_ids.shape
        if position_ids.rank != 2 or dims_differ(ps[0], batch) or dims_differ(ps[1], seq):
            raise OpError(f"{NAME}: input 'position_ids' must be [B, S] = [{batch}, {seq}], got "
                          f"{position_ids.shape_str()}")
    for name, info in (("q_norm_weight", q_norm), ("k_norm_weight", k_norm)):
        if info is not None and info.rank is not None and (info.rank != 1 or dims_differ(info.shape[0], d)):
            raise OpError(f"{NAME}: input '{name}' must be [D] = [{d}], got {info.shape_str()}")
    rotary = attrs["rotary_dim"] or d
    if attrs["rope"]:
        if isinstance(rotary, int) and rotary % 2 != 0:
            raise OpError(f"{NAME}: rotary_dim must be even, got {rotary}" +
                          (" (rotary_dim=0 means D, which is odd)" if not attrs["rotary_dim"] else ""))
        if isinstance(rotary, int) and isinstance(d, int) and rotary > d:
            raise OpError(f"{NAME}: rotary_dim ({rotary}) must be <= D ({d})")
        if inv_freq is not None and inv_freq.rank is not None and (
            inv_freq.rank != 1 or dims_differ(inv_freq.shape[0], _div(rotary, 2))
        ):
            raise OpError(f"{NAME}: input 'rope_inv_freq' must be [rotary_dim / 2] = [{_div(rotary, 2)}], "
                          f"got {inv_freq.shape_str()}")
    total = (past_key.shape or (None,) * 4)[2] if past_lengths is not None else _sum(past_len, seq)
    if mask is not None and mask.rank is not None:
        if mask.rank != 2 or dims_differ(mask.shape[0], batch) or dims_differ(mask.shape[1], total):
            raise OpError(f"{NAME}: input 'attention_mask' must be [B, total keys] = [{batch}, {total}] "
                          f"(past + new, or the buffer length in shared-buffer mode), got {mask.shape_str()}")
    check_sinks(NAME, sinks, hq)

    elem = query.elem_type
    out = TensorInfo(elem, (batch, seq, _mul(dv, hq) if dv is not None else None))
    present_k = TensorInfo(elem, (batch, hkv, total, d))
    present_v = TensorInfo(elem, (batch, hkv, total, dv))
    return [out, present_k, present_v]


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+")) if overload else set()
    f = FunctionBuilder(SPEC, overload, opset)
    inputs = PARTS.formals(SPEC, features)
    num_heads, kv_heads = f.attr("num_heads"), f.attr("kv_num_heads")

    def split(x, heads):
        return f.op("Transpose", bodies.split_heads(f, f.op("Cast", x, to=F32), heads), perm=[0, 2, 1, 3])

    q, k, v = split("query", num_heads), split("key", kv_heads), split("value", kv_heads)
    if "qnorm" in features:
        q = bodies.rms_norm(f, q, "q_norm_weight")
    if "knorm" in features:
        k = bodies.rms_norm(f, k, "k_norm_weight")

    zero, one = f.const(0, I64), f.const(1, I64)
    seq = f.op("Squeeze", f.op("Shape", "query", start=1, end=2))
    steps = f.op("Unsqueeze", f.op("Range", zero, seq, one), f.const([0], I64))  # [1, S]
    if "shared" in features:
        past_len = f.op("Unsqueeze", f.op("Cast", "past_lengths", to=I64), f.const([1], I64))  # [B, 1]
    elif "past" in features:
        past_len = f.op("Shape", "past_key", start=2, end=3)  # [1]
    else:
        past_len = f.const([0], I64)
    query_pos = f.op("Add", past_len, steps)  # [B or 1, S]: each query's key position

    rotary = bodies.rotary_dim(f, q)
    positions = "position_ids" if "pos" in features else f.op(
        "Expand", query_pos, f.op("Shape", "query", start=0, end=2))
    cos, sin = bodies.rope_tables(f, positions, rotary, "rope_inv_freq" if "inv_freq" in features else None)
    q = bodies.apply_rope(f, q, cos, sin, rotary)
    k = bodies.apply_rope(f, k, cos, sin, rotary)

    # the cache, in the input type; made under the outputs' names when they are wanted (an Identity would copy it)
    out_k, out_v = ("present_key", "present_value") if "present" in features else (None, None)
    new_only = "shared" not in features and "past" not in features  # the new keys are the whole cache
    k_new = f.op("CastLike", k, "key", out=out_k if new_only else None)
    v_new = f.op("CastLike", v, "value", out=out_v if new_only else None)
    if "shared" in features:
        def scatter(buffer, update, out):
            index = f.op("Add", f.op("Unsqueeze", past_len, f.const([1, 3], I64)),
                         f.op("Unsqueeze", steps, f.const([1, 3], I64)))  # [B, 1, S, 1]
            return f.op("ScatterElements", buffer, f.op("Expand", index, f.op("Shape", update)), update, axis=2,
                        out=out)

        present_k, present_v = scatter("past_key", k_new, out_k), scatter("past_value", v_new, out_v)
    elif "past" in features:
        present_k = f.op("Concat", "past_key", k_new, axis=2, out=out_k)
        present_v = f.op("Concat", "past_value", v_new, axis=2, out=out_v)
    else:
        present_k, present_v = k_new, v_new

    # attention over the cache, by chunks of query rows for long prompts (bodies.over_row_chunks)
    keys_k, keys_v, mask = present_k, present_v, "attention_mask"
    keys_visible = None  # [B, 1, 1, T]: the same for every row
    if "shared" in features:
        valid = f.op("Add", past_len, f.op("Unsqueeze", seq, f.const([0], I64)))  # [B, 1]
        # T = the longest sequence's keys, not the buffer's M
        cut = [(present_k, 2), (present_v, 2)] + ([("attention_mask", 1)] if "mask" in features else [])
        keys_k, keys_v, *masks = bodies.valid_prefix(f, valid, cut)
        mask = masks[0] if masks else mask
    total_1 = f.op("Shape", keys_k, start=2, end=3)
    total = f.op("Squeeze", total_1)
    j = f.op("Range", zero, total, one)  # [T]
    p = f.op("Unsqueeze", query_pos, f.const([1, 3], I64))  # [B or 1, 1, S, 1]
    if "shared" in features:
        keys_visible = f.op("Less", j, f.op("Unsqueeze", valid, f.const([2, 3], I64)))
    if "mask" in features:
        key_mask = f.op("Unsqueeze", f.op("Cast", mask, to=TensorProto.BOOL), f.const([1, 2], I64))
        keys_visible = key_mask if keys_visible is None else f.op("And", keys_visible, key_mask)
    k_all, v_all = f.op("Cast", keys_k, to=F32), f.op("Cast", keys_v, to=F32)  # [B, Hkv, T, .]
    sink = bodies.head_sinks(f) if "sinks" in features else None
    score_attrs = bodies.score_attributes(f, q)
    visibility_attrs = bodies.visibility_attributes(f, band=False, chunk=True)

    def attend(g: FunctionBuilder, rows: list[str]) -> list[str]:
        q_rows, p_rows = rows
        visible = bodies.structural_visibility(g, p_rows, j, band=False, chunk=True, attrs=visibility_attrs)
        if keys_visible is not None:
            visible = g.op("And", visible, keys_visible)
        out, _ = bodies.masked_softmax_attention(g, bodies.scores(g, q_rows, k_all, score_attrs), visible, v_all,
                                                 sink=sink)
        return [out]

    out = bodies.over_row_chunks(f, f.op("Shape", "query", start=1, end=2), bodies.row_scores(f, q, total_1),
                                 [(q, 2), (p, 2)], attend,
                                 [bodies.RowOutput(rank=4, axis=2)])[0]
    out = bodies.merge_heads(f, f.op("Transpose", out, perm=[0, 2, 1, 3]))
    f.nodes.append(onnx.helper.make_node("CastLike", [out, "query"], ["output"]))
    outputs = ["output"]
    if "present" in features:
        outputs += ["present_key", "present_value"]
    return f.build(inputs, outputs)


def _positive_heads(v: Any) -> str | None:
    return None if v >= 1 else f"is required and must be >= 1, got {v}"


# The attributes of the fused decoder attention ops (GroupQueryAttention, PagedAttention).
ATTRS = (
    Attr("num_heads", "int", 0, "Query heads Hq (required).", _positive_heads),
    Attr("kv_num_heads", "int", 0, "Key/value heads Hkv (required); num_heads must be a multiple.",
         _positive_heads),
    Attr("causal", "int", 1, "1: query at key position p sees keys j <= p. 0: bidirectional (encoders).",
         zero_or_one),
    Attr("window", "int", 0, "> 0: only the `window` most recent keys (the current one included).",
         non_negative("0 = off")),
    Attr("attention_chunk", "int", 0, "> 0: chunked attention (Llama 4): only the keys of the query's own chunk "
         "of `attention_chunk` positions, floor(j / attention_chunk) == floor(p / attention_chunk).",
         non_negative("0 = off")),
    Attr("softcap", "float", 0.0, "> 0: scores = softcap * tanh(scores / softcap) before masking.",
         finite_non_negative("0 = off")),
    Attr("scale", "float", 0.0, "Score scale; 0 means 1/sqrt(D).", finite("0 = 1/sqrt(D)")),
    Attr("rope", "int", 0, "1: apply rotary position embeddings to q and k.", zero_or_one),
    Attr("rope_base", "float", 10000.0, "RoPE base (theta) when rope_inv_freq is not given.",
         lambda v: None if v > 0 else f"must be > 0, got {v}"),
    Attr("rotary_dim", "int", 0, "Channels rotated (partial RoPE), even; 0 means D.", non_negative("0 = D")),
    Attr("rope_interleaved", "int", 0, "1: rotate interleaved pairs (2c, 2c+1); 0: half-split pairs "
         "(c, c + rotary_dim/2).", zero_or_one),
    Attr("rope_attention_scaling", "float", 1.0, "Multiplies cos and sin (YaRN's attention factor).",
         finite("1 = off")),
    Attr("qk_norm_epsilon", "float", 1e-6, "Epsilon of the QK RMS-norm.", finite_non_negative("variance epsilon")),
)


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("query", "T", "Projected queries [B, S, Hq*D]."),
        Input("key", "T", "Projected keys of the new tokens [B, S, Hkv*D] (before QK-norm and RoPE)."),
        Input("value", "T", "Projected values of the new tokens [B, S, Hkv*Dv]."),
        Input("past_key", "T", "Cache [B, Hkv, P, D] (keys after RoPE), or the preallocated buffer "
              "[B, Hkv, M, D] in shared-buffer mode.", optional=True),
        Input("past_value", "T", "Cache [B, Hkv, P, Dv], or the buffer [B, Hkv, M, Dv].", optional=True),
        Input("past_lengths", "tensor(int64)", "[B]: valid tokens in the buffers per sequence; selects the "
              "shared-buffer mode.", optional=True),
        Input("position_ids", "tensor(int64)", "[B, S] RoPE positions (default: each query's key position).",
              optional=True),
        Input("q_norm_weight", "T", "[D] per-head RMS-norm weight for queries (QK-norm).", optional=True),
        Input("k_norm_weight", "T", "[D] per-head RMS-norm weight for keys (QK-norm).", optional=True),
        Input("rope_inv_freq", "tensor(float)", "[rotary_dim / 2] RoPE inverse frequencies (scaled RoPE); "
              "default rope_base^(-2i/rotary_dim).", optional=True),
        Input("attention_mask", "tensor(bool)", "[B, total keys]: False hides a key (padding).", optional=True),
        Input("sinks", "T", "[Hq] attention-sink logits, one per query head: each joins its head's softmax "
              "denominators without a value (GPT-OSS).", optional=True),
    ),
    outputs=(
        Output("output", "T", "Attention output [B, S, Hq*Dv]."),
        Output("present_key", "T", "[B, Hkv, P+S, D], or the updated buffer [B, Hkv, M, D].", optional=True),
        Output("present_value", "T", "[B, Hkv, P+S, Dv], or the updated buffer [B, Hkv, M, Dv].", optional=True),
    ),
    attrs=ATTRS,
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Activations, caches and norm weights."),),
    infer=infer,
    signature=PARTS.signature,
    build_function=build_function,
    overloads=OVERLOADS,
    overload_doc=OVERLOAD_DOC,
    examples=EXAMPLES,
    shared_buffer="past_key",
)
