"""onnxattn::MultiHeadLatentAttention — DeepSeek-V2/V3 multi-head latent attention (MLA): RoPE of the
decoupled rope part, the latent KV cache update and attention of every head over the shared latent cache,
in one node."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx
from onnx import TensorProto

from onnxattn.ops import _bodies as bodies
from onnxattn.ops import gqa
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
)

NAME = "MultiHeadLatentAttention"
I64, F32 = TensorProto.INT64, TensorProto.FLOAT

SUMMARY = (
    "output, present_latent?, present_k_rope? = MultiHeadLatentAttention(query [B,S,H*(Dn+Dr)], latent [B,S,R], "
    "k_rope [B,S,Dr], w_uk [H,R,Dn], w_uv [H,R,Dv], past_latent?, past_k_rope?, past_lengths?, position_ids?, "
    "rope_inv_freq?, key_indices?)"
)

DOC = """\
The attention of a DeepSeek-V2/V3 layer after its down-projections. Per token the cache holds only the
normalised latent `c_kv` (R values) and one rope key (Dr values) shared by every head — R + Dr values per
token instead of H * (Dn + Dr + Dv). Per head h:

1. split heads: `query [B,S,H*(Dn+Dr)]` -> `q [B,H,S,Dn+Dr]`, each head `[q_nope (Dn) ; q_rope (Dr)]`;
2. RoPE at `position_ids` of `q_rope` and of the new `k_rope` (all Dr channels; half-split, or interleaved
   pairs with `rope_interleaved=1` as DeepSeek checkpoints store them);
3. the new `latent` and rope keys (after RoPE) are appended to the caches;
4. keys `k_h[j] = [latent[j] @ w_uk[h] ; k_rope[j]]` (Dn + Dr), values `v_h[j] = latent[j] @ w_uv[h]` (Dv);
5. attention of q over them (scale default `1/sqrt(Dn+Dr)`, softcap, causal and window as in
   `GroupQueryAttention`); output `[B,S,H*Dv]`.

torch equivalent (expanded form, concatenation mode):
```python
q = query.unflatten(-1, (H, Dn + Dr)).transpose(1, 2)
q_nope, q_rope = q.split([Dn, Dr], -1)
lat = torch.cat([past_latent, latent], 1)                          # present_latent [B, P+S, R]
kr = torch.cat([past_k_rope, rope(k_rope, pos)], 1)                # present_k_rope [B, P+S, Dr]
k = torch.cat([lat[:, None] @ w_uk, kr[:, None].expand(-1, H, -1, -1)], -1)   # [B, H, P+S, Dn+Dr]
v = lat[:, None] @ w_uv                                            # [B, H, P+S, Dv]
y = sdpa(torch.cat([q_nope, rope(q_rope, pos)], -1), k, v, causal=True)        # bottom-right aligned
output = y.transpose(1, 2).flatten(2)
```
Kernels may instead use the *absorbed* form, which never materialises per-head keys: `q_lat = q_nope @
w_uk[h]^T` (R), attention of `[q_lat ; q_rope]` over the R + Dr wide rows `[latent ; k_rope]` shared by all
heads (one KV head), then `@ w_uv[h]`. It is the same function up to rounding. The library's CPU kernel picks
the form per call by counting multiply-adds (decode and short chunks over a long past: absorbed; prompts
without a past and long chunks: expanded; `ONNXATTN_MLA_PATH=absorbed|expanded` forces one); its CUDA
kernel runs the absorbed form, its attention step on tensor cores for 16-bit (the heads of a token as the rows
of one MQA group, FlashMLA's shape) or on CUDA cores (float32; `ONNXATTN_MLA_CUDA_KERNEL=simt`). The
reference function picks its form by the same count (with every key scored, as it does), so that without
the library a decode step reads the latent cache once instead of expanding it for every head.

**Weights.** `w_uk [H, R, Dn]` and `w_uv [H, R, Dv]` map the latent to each head's key and value: `k_nope =
latent @ w_uk[h]`. From DeepSeek's `kv_b_proj.weight` ([H*(Dn+Dv), R]): `w = weight.view(H, Dn + Dv, R)`,
`w_uk = w[:, :Dn].transpose(1, 2)`, `w_uv = w[:, Dn:].transpose(1, 2)`.

**Cache layout.** `past_latent [B, P, R]` and `past_k_rope [B, P, Dr]`, or the same memory as
`[B, 1, P, R]` / `[B, 1, P, Dr]` (BNSH with the one shared KV head: the layout of the decoder export and
generation tooling). The present caches have the rank of the past ones (rank 3 without a past).

**KV cache, two modes** (as in `GroupQueryAttention`).
- *Concatenation* (no `past_lengths`): `present = concat(past, new)` along the sequence. Query i of every
  batch sits at key position `P + i`.
- *Shared buffer* (`past_lengths [B]` given): the pasts are preallocated buffers with `past_lengths[b]`
  valid tokens; the new tokens are written at `past_lengths[b] .. past_lengths[b]+S-1` and the presents are
  the same buffers (the library's kernel updates them in place and declares the aliasing to onnxruntime,
  reading only the valid prefix; the reference function attends to the first max_b(past_lengths[b] + S)
  slots). Query i of batch b sits at `past_lengths[b] + i`; later slots are hidden.

**Visibility.** Query at key position p sees key j iff `j <= p` (`causal=1`), `p - window < j`
(`window > 0`), and j is a valid key. A query that sees no key outputs zeros.

**Key indices (DeepSeek sparse attention, DSA).** With `key_indices [B, S, K]` (int64) query (b, i) also needs
j to be listed in `key_indices[b, i]`: the keys a DeepSeek-V3.2 lightning indexer picked for it (its top-k,
e.g. `TopK` of the index scores). The list is a set: order and repeats do not matter, negative entries list
nothing (padding), entries that are not visible under the rules above (a future key, a hidden buffer slot)
are ignored, and an entry past the caches (>= P + S, or >= M in shared-buffer mode) is an error (the CUDA
kernel, which cannot raise, ignores it). The kernels attend to each token's listed keys only, so their work
grows with K rather than with the cache (the CPU kernel's `indexed` path; the CUDA kernel sorts each token's
list once and walks it, which takes K <= 8192 and caches of at most 2^31 - 1 tokens). Selection is discrete: no gradient
flows into the indices.

**RoPE.** `inv_freq[i] = rope_base^(-2i/Dr)`, or the `rope_inv_freq` input (scaled RoPE such as the YaRN
frequencies of DeepSeek-V3, with its attention factor in `rope_attention_scaling`, which multiplies cos
and sin). Positions default to each query's key position.

**Precision.** Computed in float32; the caches hold the input type and attention reads them back.

**Bad input and the CUDA kernel.** As `GroupQueryAttention`: every input stays in device memory on CUDA, nothing
is read on the host, and a step can be captured in a CUDA graph. A `past_lengths[b]` outside `[0, M - S]` is an
error naming it in the CPU kernel; the CUDA kernel, which cannot raise without synchronising the host, leaves
that sequence's caches untouched and gives its output rows NaN.
"""

OVERLOAD_DOC = (
    "Overload names join the node's present optional parts with '+', in this order: `past` (past_latent and "
    "past_k_rope), `shared` (past_lengths), `pos` (position_ids), `inv_freq`, `index` (key_indices), `present` "
    "(present_latent and "
    "present_k_rope outputs). `shared` requires `past`. The plain form is the default overload ''. One body "
    "serves both cache ranks."
)

EXAMPLES = (
    """\
DeepSeek-V3-style decode step (128 heads, latent 512, rope keys 64, YaRN frequencies given):
```python
node = onnx.helper.make_node(
    "MultiHeadLatentAttention",
    ["q", "c_kv", "k_pe", "w_uk", "w_uv", "past_latent", "past_k_rope", "", "position_ids", "inv_freq"],
    ["out", "present_latent", "present_k_rope"], domain="onnxattn",
    num_heads=128, rope_interleaved=1, scale=0.1352)
```""",
    """\
Torch module (DeepSeek form: low-rank query, RMSNorm on the latents, W_O) with an eager latent cache:
```python
from onnxattn.nn import LatentCache, MultiHeadLatentAttention
attn = MultiHeadLatentAttention(model_dim=512, num_heads=8, kv_rank=128, q_rank=192, nope_head_dim=32,
                                rope_head_dim=16, v_head_dim=32)
cache = LatentCache()
y = attn(x_prompt, cache=cache)        # prefill
y = attn(x_next_token, cache=cache)    # decode: attention over the R + Dr wide latent rows
```""",
)

PARTS = OptionalParts(NAME, ("past", "shared", "pos", "inv_freq", "index", "present"),
                      {"past": 5, "shared": 7, "pos": 8, "inv_freq": 9, "index": 10},
                      ("present_latent", "present_k_rope"), required_inputs=5)
OVERLOADS = PARTS.overloads()

# The reference function's attention form: None picks it per call by cost (_absorbed_is_cheaper); "absorbed" or
# "expanded" fixes it in the functions built while it is set, so that tests can check both forms on any case.
FUNCTION_FORM: str | None = None


def _known(*dims: Dim) -> bool:
    return all(isinstance(d, int) for d in dims)


def infer(inputs: Sequence[TensorInfo | None], attrs: Mapping[str, Any]) -> list[TensorInfo]:
    query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids, inv_freq = inputs[:10]
    key_indices = inputs[10] if len(inputs) > 10 else None
    heads = attrs["num_heads"]
    if heads < 1:
        raise OpError(f"{NAME}: attribute 'num_heads' is required and must be >= 1, got {heads}")
    for name, info, layout in (("query", query, "[B, S, H*(Dn+Dr)]"), ("latent", latent, "[B, S, R]"),
                               ("k_rope", k_rope, "[B, S, Dr]"), ("w_uk", w_uk, "[H, R, Dn]"),
                               ("w_uv", w_uv, "[H, R, Dv]")):
        if info.rank is not None and info.rank != 3:
            raise OpError(f"{NAME}: input '{name}' must have rank 3 {layout}, got shape {info.shape_str()}")
    qs, ls, ks, uk, uv = (x.shape or (None,) * 3 for x in (query, latent, k_rope, w_uk, w_uv))
    batch, seq = qs[0], qs[1]
    for name, info, s in (("latent", latent, ls), ("k_rope", k_rope, ks)):
        if dims_differ(s[0], batch) or dims_differ(s[1], seq):
            raise OpError(f"{NAME}: input '{name}' must have the batch and sequence dims of query "
                          f"{query.shape_str()}, got shape {info.shape_str()}")
    rank, rope_dim = ls[2], ks[2]
    if _known(rope_dim) and (rope_dim < 2 or rope_dim % 2):
        raise OpError(f"{NAME}: the rope head dim Dr (k_rope dim 2) must be even and >= 2 (RoPE rotates pairs), "
                      f"got {rope_dim}")
    for name, info, s, width in (("w_uk", w_uk, uk, "Dn"), ("w_uv", w_uv, uv, "Dv")):
        if dims_differ(s[0], heads):
            raise OpError(f"{NAME}: input '{name}' must be [H, R, {width}] with H = num_heads = {heads} heads, "
                          f"got shape {info.shape_str()}")
        if dims_differ(s[1], rank):
            raise OpError(f"{NAME}: input '{name}' must be [H, R, {width}] with R = {rank} (the latent width, "
                          f"latent dim 2), got shape {info.shape_str()}")
        if _known(s[2]) and s[2] < 1:
            raise OpError(f"{NAME}: input '{name}' must have {width} >= 1, got shape {info.shape_str()}")
    nope_dim, v_dim = uk[2], uv[2]
    if _known(qs[2], nope_dim, rope_dim) and qs[2] != heads * (nope_dim + rope_dim):
        raise OpError(f"{NAME}: query width must be num_heads * (Dn + Dr) = {heads} * ({nope_dim} + {rope_dim}) = "
                      f"{heads * (nope_dim + rope_dim)} (Dn from w_uk, Dr from k_rope), got shape {query.shape_str()}")
    if _known(qs[2]) and qs[2] % heads:
        raise OpError(f"{NAME}: query width {qs[2]} (dim 2) must be a multiple of num_heads ({heads})")

    if (past_latent is None) != (past_k_rope is None):
        raise OpError(f"{NAME}: inputs 'past_latent' and 'past_k_rope' must be given together")
    cache_rank, past_len = 3, 0
    if past_latent is not None:
        ranks = {x.rank for x in (past_latent, past_k_rope)} - {None}
        if not ranks <= {3, 4} or len(ranks) > 1:
            raise OpError(f"{NAME}: inputs 'past_latent' and 'past_k_rope' must both be [B, P, .] or both "
                          f"[B, 1, P, .], got {past_latent.shape_str()} and {past_k_rope.shape_str()}")
        cache_rank = ranks.pop() if ranks else None
        shapes = []
        for name, info, width in (("past_latent", past_latent, rank), ("past_k_rope", past_k_rope, rope_dim)):
            if info.shape is None:
                shapes.append(None)
                continue
            s = info.shape if info.rank == 4 else (info.shape[0], 1, *info.shape[1:])
            if dims_differ(s[0], batch) or dims_differ(s[1], 1) or dims_differ(s[3], width):
                layout = "[B, 1, P, {0}] = [{1}, 1, P, {0}]" if info.rank == 4 else "[B, P, {0}] = [{1}, P, {0}]"
                raise OpError(f"{NAME}: input '{name}' must be {layout.format(width, batch)}, got shape "
                              f"{info.shape_str()}")
            shapes.append(s)
        if shapes[0] is not None and shapes[1] is not None and dims_differ(shapes[0][2], shapes[1][2]):
            raise OpError(f"{NAME}: past_latent and past_k_rope must hold the same number of tokens, got "
                          f"{past_latent.shape_str()} and {past_k_rope.shape_str()}")
        past_len = next((s[2] for s in shapes if s is not None), None)
    if past_lengths is not None:
        if past_latent is None:
            raise OpError(f"{NAME}: input 'past_lengths' (shared-buffer mode) needs past_latent and past_k_rope")
        if past_lengths.rank is not None and (past_lengths.rank != 1 or dims_differ(past_lengths.shape[0], batch)):
            raise OpError(f"{NAME}: input 'past_lengths' must be [B] = [{batch}], got {past_lengths.shape_str()}")
    if position_ids is not None and position_ids.rank is not None:
        ps = position_ids.shape
        if position_ids.rank != 2 or dims_differ(ps[0], batch) or dims_differ(ps[1], seq):
            raise OpError(f"{NAME}: input 'position_ids' must be [B, S] = [{batch}, {seq}], got "
                          f"{position_ids.shape_str()}")
    half = rope_dim // 2 if _known(rope_dim) else None
    if inv_freq is not None and inv_freq.rank is not None and (inv_freq.rank != 1 or dims_differ(inv_freq.shape[0], half)):
        raise OpError(f"{NAME}: input 'rope_inv_freq' must be [Dr / 2] = [{half}], got {inv_freq.shape_str()}")
    if key_indices is not None and key_indices.rank is not None:
        ki = key_indices.shape
        if key_indices.rank != 3 or dims_differ(ki[0], batch) or dims_differ(ki[1], seq):
            raise OpError(f"{NAME}: input 'key_indices' must be [B, S, K] = [{batch}, {seq}, K], got "
                          f"{key_indices.shape_str()}")

    if past_lengths is not None:
        total = past_len
    elif _known(past_len, seq):
        total = past_len + seq
    else:
        total = None
    elem = query.elem_type
    out_width = heads * v_dim if _known(v_dim) else None

    def cache(width: Dim) -> TensorInfo:
        if cache_rank is None:
            return TensorInfo(elem, None)
        return TensorInfo(elem, (batch, 1, total, width) if cache_rank == 4 else (batch, total, width))

    return [TensorInfo(elem, (batch, seq, out_width)), cache(rank), cache(rope_dim)]


def build_function(overload: str, opset: int) -> onnx.FunctionProto:
    if overload not in OVERLOADS:
        raise ValueError(f"{NAME}: unknown overload {overload!r}")
    features = set(overload.split("+")) if overload else set()
    f = FunctionBuilder(SPEC, overload, opset)
    inputs = PARTS.formals(SPEC, features)
    zero, one = f.const(0, I64), f.const(1, I64)
    axis0, axis1 = f.const([0], I64), f.const([1], I64)

    # heads: q [B, H, S, Dn+Dr] split into the nope and rope parts
    q = f.op("Transpose", bodies.split_heads(f, f.op("Cast", "query", to=F32), f.attr("num_heads")), perm=[0, 2, 1, 3])
    rope_dim = f.op("Shape", "k_rope", start=2, end=3)  # [1]
    nope_dim = f.op("Shape", "w_uk", start=2, end=3)
    last_axis = f.const([-1], I64)
    q_nope = f.op("Slice", q, f.const([0], I64), nope_dim, last_axis)
    q_rope = f.op("Slice", q, nope_dim, f.const([2**62], I64), last_axis)

    # key positions of the queries and RoPE
    seq = f.op("Squeeze", f.op("Shape", "query", start=1, end=2))
    steps = f.op("Unsqueeze", f.op("Range", zero, seq, one), axis0)  # [1, S]
    if "shared" in features:
        past_len = f.op("Unsqueeze", f.op("Cast", "past_lengths", to=I64), axis1)  # [B, 1]
    elif "past" in features:
        past_len = f.op("Shape", "past_latent", start=-2, end=-1)  # [1]
    else:
        past_len = f.const([0], I64)
    query_pos = f.op("Add", past_len, steps)  # [B or 1, S]
    positions = "position_ids" if "pos" in features else f.op(
        "Expand", query_pos, f.op("Shape", "query", start=0, end=2))
    rotary = f.op("Squeeze", rope_dim)
    cos, sin = bodies.rope_tables(f, positions, rotary, "rope_inv_freq" if "inv_freq" in features else None)
    q_rope_rotated = bodies.apply_rope(f, q_rope, cos, sin, rotary)
    q = f.op("Concat", q_nope, q_rope_rotated, axis=-1)
    k_rope_new = bodies.apply_rope(f, f.op("Unsqueeze", f.op("Cast", "k_rope", to=F32), axis1), cos, sin, rotary)
    k_rope_new = f.op("CastLike", k_rope_new, "k_rope")  # [B, 1, S, Dr]

    # the caches, in the input type and the past's rank (shapes taken from the tensors: one body for both ranks),
    # made under the outputs' names when they are wanted (an Identity would copy them)
    out_latent, out_rope = ("present_latent", "present_k_rope") if "present" in features else (None, None)
    if "past" in features:
        def like_past(x):  # [B, S, .] -> [B, S, .] or [B, 1, S, .]
            return f.op("Reshape", x, f.op("Concat", f.op("Shape", "past_latent", end=-2), f.op("Shape", x, start=1),
                                           axis=0), allowzero=1)  # S = 0 is an empty dim, not "copy the input's"

        new_latent, new_rope = like_past("latent"), like_past(f.op("Squeeze", k_rope_new, axis1))
        if "shared" in features:
            def scatter(buffer, update, out):
                index = like_past(f.op("Unsqueeze", f.op("Add", past_len, steps), last_axis))  # [B, (1,) S, 1]
                return f.op("ScatterElements", buffer, f.op("Expand", index, f.op("Shape", update)), update, axis=-2,
                            out=out)

            present_latent = scatter("past_latent", new_latent, out_latent)
            present_rope = scatter("past_k_rope", new_rope, out_rope)
        else:
            present_latent = f.op("Concat", "past_latent", new_latent, axis=-2, out=out_latent)
            present_rope = f.op("Concat", "past_k_rope", new_rope, axis=-2, out=out_rope)
    else:
        present_latent = f.op("Identity", "latent", out=out_latent)
        present_rope = f.op("Squeeze", k_rope_new, axis1, out=out_rope)

    def as_bnsh(x):  # [B, (1,) T, .] -> [B, 1, T, .] float
        dims = f.op("Concat", f.op("Shape", x, end=1), f.const([1], I64), f.op("Shape", x, start=-2), axis=0)
        return f.op("Reshape", f.op("Cast", x, to=F32), dims, allowzero=1)

    keys_latent, keys_rope = present_latent, present_rope
    if "shared" in features:
        valid = f.op("Add", past_len, f.op("Unsqueeze", seq, axis0))  # [B, 1]
        # T = the longest sequence's keys, not the buffers' M
        keys_latent, keys_rope = bodies.valid_prefix(f, valid, [(present_latent, -2), (present_rope, -2)])
    latent_all, rope_all = as_bnsh(keys_latent), as_bnsh(keys_rope)
    def per_head(w):  # [H, R, .] float; a Reshape to num_heads heads, so that a weight of other heads fails here
        dims = f.op("Concat", f.op("Unsqueeze", f.attr("num_heads"), axis0), f.op("Shape", w, start=1), axis=0)
        return f.op("Reshape", f.op("Cast", w, to=F32), dims)

    w_uk, w_uv = per_head("w_uk"), per_head("w_uv")
    absorbed = _absorbed_is_cheaper(f, latent_all, rope_dim)

    # the two forms of the same attention (as the CPU kernel), by cost. Absorbed: queries q_nope W_uk^T [B, H, S, R]
    # with their RoPE part against the latent cache and its RoPE keys [B, 1, T, R + Dr] (one key head for all),
    # values the latent cache, W_UV applied to the output. Expanded: every head's keys latent W_UK with the RoPE
    # keys, values latent W_UV, [B, H, T, .]
    def absorbed_form(g: FunctionBuilder) -> list[str]:
        q_latent = bodies.weights_matmul(g, q_nope, g.op("Transpose", w_uk, perm=[0, 2, 1]))
        return [g.op("Concat", q_latent, q_rope_rotated, axis=-1), g.op("Concat", latent_all, rope_all, axis=-1),
                g.op("Identity", latent_all)]

    def expanded_form(g: FunctionBuilder) -> list[str]:
        k_nope = bodies.weights_matmul(g, latent_all, w_uk)
        k_rope_heads = g.op("Expand", rope_all, g.op("Concat", g.op("Shape", k_nope, end=3), rope_dim, axis=0))
        return [g.op("Identity", q), g.op("Concat", k_nope, k_rope_heads, axis=-1),
                bodies.weights_matmul(g, latent_all, w_uv)]

    q_used, k, v = bodies.if_else(f, absorbed, absorbed_form, expanded_form, ranks=(4, 4, 4), hint="attention_form")

    # attention over the caches, by chunks of query rows for long prompts (bodies.over_row_chunks)
    total_1 = f.op("Shape", latent_all, start=2, end=3)
    total = f.op("Squeeze", total_1)
    j = f.op("Range", zero, total, one)  # [T]
    p = f.op("Unsqueeze", query_pos, f.const([1, 3], I64))  # [B or 1, 1, S, 1]
    rows = [(q_used, 2), (p, 2)]
    if "index" in features:  # [B, 1, S, T]; in shared mode the slots in [T, M) are hidden ones, ignored
        buffer = f.op("Squeeze", f.op("Shape", "past_latent", start=-2, end=-1)) if "shared" in features else None
        rows.append((_listed_keys(f, total, buffer), 2))
    valid_keys = None
    if "shared" in features:
        valid_keys = f.op("Less", j, f.op("Unsqueeze", valid, f.const([2, 3], I64)))  # [B, 1, 1, T]
    score_attrs = bodies.score_attributes(f, q)  # 1/sqrt(Dn + Dr) by default, in both forms
    visibility_attrs = bodies.visibility_attributes(f, band=False)

    def attend(g: FunctionBuilder, row_inputs: list[str]) -> list[str]:
        visible = bodies.structural_visibility(g, row_inputs[1], j, band=False, attrs=visibility_attrs)
        if valid_keys is not None:
            visible = g.op("And", visible, valid_keys)
        if "index" in features:
            visible = g.op("And", visible, row_inputs[2])
        return [bodies.masked_softmax_attention(g, bodies.scores(g, row_inputs[0], k, score_attrs), visible, v)[0]]

    out = bodies.over_row_chunks(f, f.op("Shape", "query", start=1, end=2), bodies.row_scores(f, q, total_1), rows,
                                 attend,
                                 [bodies.RowOutput(rank=4, axis=2)])[0]
    out = bodies.if_else(f, absorbed, lambda g: [bodies.weights_matmul(g, out, w_uv)],
                         lambda g: [g.op("Identity", out)], hint="values")[0]  # [B, H, S, Dv]
    out = bodies.merge_heads(f, f.op("Transpose", out, perm=[0, 2, 1, 3]))
    f.nodes.append(onnx.helper.make_node("CastLike", [out, "query"], ["output"]))
    outputs = ["output"]
    if "present" in features:
        outputs += ["present_latent", "present_k_rope"]
    return f.build(inputs, outputs)


def _absorbed_is_cheaper(f: FunctionBuilder, latent_all: str, rope_dim: str) -> str:
    """A bool scalar: the absorbed form takes fewer multiply-adds than the expanded one for this call (the function
    scores every key, so per head: absorbed S R (Dn + Dv) + S T (2R + Dr), expanded T R (Dn + Dv) + S T (Dn + Dr +
    Dv); the CPU kernel's rule, mla/params.h, with every pair counted). Decode is absorbed, a prompt expanded."""
    if FUNCTION_FORM is not None:
        if FUNCTION_FORM not in ("absorbed", "expanded"):
            raise ValueError(f"{NAME}: FUNCTION_FORM must be None, 'absorbed' or 'expanded', got {FUNCTION_FORM!r}")
        return f.const(FUNCTION_FORM == "absorbed", TensorProto.BOOL)
    rank = f.op("Shape", "w_uk", start=1, end=2)
    widths = f.op("Add", f.op("Shape", "w_uk", start=2, end=3), f.op("Shape", "w_uv", start=2, end=3))  # Dn + Dv
    projection = f.op("Mul", rank, widths)
    seq, total = f.op("Shape", "query", start=1, end=2), f.op("Shape", latent_all, start=2, end=3)
    pairs = f.op("Mul", seq, total)
    absorbed = f.op("Add", f.op("Mul", seq, projection), f.op("Mul", pairs, f.op("Add", f.op("Add", rank, rank),
                                                                                  rope_dim)))
    expanded = f.op("Add", f.op("Mul", total, projection), f.op("Mul", pairs, f.op("Add", widths, rope_dim)))
    return f.op("Squeeze", f.op("LessOrEqual", absorbed, expanded))


def _listed_keys(f: FunctionBuilder, total: str, buffer: str | None = None) -> str:
    """[B, 1, S, T] bool: key j is listed in key_indices[b, i]. Negative entries, and with `buffer` (M, a scalar:
    the shared buffers' length, T their longest valid prefix) entries in [T, M), slots no row sees, are scattered
    into an extra column T that is dropped (ScatterElements would wrap a negative index); an entry past the caches
    fails there."""
    zero, one = f.const(0, I64), f.const(1, I64)
    indices = f.op("Cast", "key_indices", to=I64)
    width = f.op("Unsqueeze", f.op("Add", total, one), f.const([0], I64))  # [1]: T + 1
    ignored = f.op("Less", indices, zero)
    if buffer is not None:
        hidden_slot = f.op("And", f.op("GreaterOrEqual", indices, total), f.op("Less", indices, buffer))
        ignored = f.op("Or", ignored, hidden_slot)
    indices = f.op("Where", ignored, total, indices)
    slots = f.op("ConstantOfShape", f.op("Concat", f.op("Shape", "key_indices", end=2), width, axis=0),
                 value=onnx.helper.make_tensor("zero", F32, [1], [0.0]))
    marks = f.op("ScatterElements", slots, indices, f.op("Expand", f.const(1.0, F32), f.op("Shape", indices)),
                 axis=2)
    listed = f.op("Slice", marks, f.const([0], I64), f.op("Unsqueeze", total, f.const([0], I64)), f.const([2], I64))
    return f.op("Unsqueeze", f.op("Greater", listed, f.const(0.0, F32)), f.const([1], I64))


_GQA_ATTRS = {a.name: a for a in gqa.ATTRS}
ATTRS = (
    _GQA_ATTRS["num_heads"],
    _GQA_ATTRS["causal"],
    _GQA_ATTRS["window"],
    _GQA_ATTRS["softcap"],
    Attr("scale", "float", 0.0, "Score scale; 0 means 1/sqrt(Dn + Dr) (DeepSeek-V3 with YaRN multiplies it by "
         "mscale^2).", finite("0 = 1/sqrt(Dn + Dr)")),
    _GQA_ATTRS["rope_base"],
    Attr("rope_interleaved", "int", 0, "1: rotate interleaved pairs (2c, 2c+1) of the rope part (DeepSeek "
         "checkpoints); 0: half-split pairs (c, c + Dr/2).", _GQA_ATTRS["rope_interleaved"].check),
    _GQA_ATTRS["rope_attention_scaling"],
)


SPEC = OpSpec(
    name=NAME,
    summary=SUMMARY,
    doc=DOC,
    inputs=(
        Input("query", "T", "Projected queries [B, S, H*(Dn+Dr)], each head [q_nope ; q_rope] (before RoPE)."),
        Input("latent", "T", "Normalised latent c_kv of the new tokens [B, S, R]."),
        Input("k_rope", "T", "Rope keys of the new tokens [B, S, Dr] (before RoPE), shared by every head."),
        Input("w_uk", "T", "Latent-to-key up-projection [H, R, Dn]: k_nope = latent @ w_uk[h]."),
        Input("w_uv", "T", "Latent-to-value up-projection [H, R, Dv]: v = latent @ w_uv[h]."),
        Input("past_latent", "T", "Latent cache [B, P, R] (or [B, 1, P, R]), or the preallocated buffer "
              "[B, M, R] in shared-buffer mode.", optional=True),
        Input("past_k_rope", "T", "Rope-key cache [B, P, Dr] (after RoPE; or [B, 1, P, Dr]), or the buffer "
              "[B, M, Dr].", optional=True),
        Input("past_lengths", "tensor(int64)", "[B]: valid tokens in the buffers per sequence; selects the "
              "shared-buffer mode.", optional=True),
        Input("position_ids", "tensor(int64)", "[B, S] RoPE positions (default: each query's key position).",
              optional=True),
        Input("rope_inv_freq", "tensor(float)", "[Dr / 2] RoPE inverse frequencies (scaled RoPE such as YaRN); "
              "default rope_base^(-2i/Dr).", optional=True),
        Input("key_indices", "tensor(int64)", "[B, S, K]: the keys (cache positions) each query may attend to "
              "(DeepSeek sparse attention's top-k; negative = none); default: every visible key.", optional=True),
    ),
    outputs=(
        Output("output", "T", "Attention output [B, S, H*Dv]."),
        Output("present_latent", "T", "[B, P+S, R] (rank of the past), or the updated buffer.", optional=True),
        Output("present_k_rope", "T", "[B, P+S, Dr] (rank of the past), or the updated buffer.", optional=True),
    ),
    attrs=ATTRS,
    type_constraints=(TypeConstraint("T", FLOAT_TYPES, "Activations, caches and weights."),),
    infer=infer,
    signature=PARTS.signature,
    build_function=build_function,
    overloads=OVERLOADS,
    overload_doc=OVERLOAD_DOC,
    examples=EXAMPLES,
    shared_buffer="past_latent",
)
