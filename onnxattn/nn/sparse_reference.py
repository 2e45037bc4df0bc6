"""The eager math of the sparse ops (onnxattn::NativeSparseAttention, onnxattn::SparseRoutedAttention): the
numerical reference of the kernels and the forward/backward of the torch modules.

Selection (which blocks, segments or tokens a row attends to) is discrete and computed without gradient,
as the ops define it: keys per candidate (+inf forced, -inf not allowed), a stable descending sort (ties
to the lower index, as ONNX TopK), the first k with a key > -inf. Each branch is then an ordinary masked
softmax attention (sdpa_reference with a boolean mask), so gradients reach Q, K, V, the compressed tokens
and the gates exactly as dense attention restricted to the chosen keys would give them.
"""

from __future__ import annotations

import math

import torch

from onnxattn.nn.reference import _ONNX_FLOAT_TYPES, apply_rope, compute_dtype, default_inv_freq, sdpa_reference

NEG_INF = float("-inf")


def check_against_spec(op_name: str, tensors, attrs) -> None:
    """The op's own shape and attribute checks (onnxattn.ops), so torch and ONNX say the same: ValueError
    naming the op and the input. Tensors of other dtypes (float64 for gradcheck) are checked for shape."""
    from onnx import helper

    from onnxattn.ops import TensorInfo, get_spec

    spec = get_spec(op_name)
    infos = []
    for spec_input, t in zip(spec.inputs, tensors):
        if t is None:
            infos.append(None)
            continue
        elem = _ONNX_FLOAT_TYPES.get(t.dtype, 0) if spec_input.type_str == "T" else 0
        infos.append(TensorInfo(elem, tuple(t.shape)))
    kinds = {a.name: a.kind for a in spec.attrs}
    spec.infer_node(infos, [helper.make_attribute(n, int(v) if kinds[n] == "int" else float(v)) for n, v in attrs.items()])


def select(key: torch.Tensor, top: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `top` entries of `key` [..., N] (ties: lower index). Returns (chosen mask bool [..., N], the
    chosen indices ascending, -1 padded, int64 [..., width])."""
    n = key.shape[-1]
    k = min(top, n)
    key = key.masked_fill(key.isnan(), NEG_INF)  # a NaN score is never chosen (torch.sort puts it first)
    order = torch.sort(key, dim=-1, descending=True, stable=True)
    indices, chosen = order.indices[..., :k], order.values[..., :k] > NEG_INF
    mask = torch.zeros(key.shape, dtype=torch.bool, device=key.device).scatter(-1, indices, chosen)
    listed = torch.where(chosen, indices, torch.full_like(indices, n)).sort(dim=-1).values
    listed = torch.where(listed == n, torch.full_like(listed, -1), listed)
    pad = listed.new_full((*listed.shape[:-1], width - k), -1)
    return mask, torch.cat([listed, pad], dim=-1)


def _scale(q: torch.Tensor, scale: float) -> float:
    return scale if scale != 0.0 else 1.0 / math.sqrt(q.shape[-1])


def _repeat(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def nsa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: torch.Tensor | None = None,
    compressed_key: torch.Tensor | None = None,
    compressed_value: torch.Tensor | None = None,
    *,
    block_size: int = 64,
    top_blocks: int = 16,
    top_tokens: int = 0,
    window: int = 0,
    causal: bool = False,
    shared_selection: bool = False,
    sink_blocks: int = 0,
    local_blocks: int = 0,
    scale: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager onnxattn::NativeSparseAttention: (Y [B,Hq,Sq,Dv] in q's dtype, selected_blocks [B,Hs,Sq,
    top_blocks], selected_tokens [B,Hq,Sq,top_tokens]) int64; see docs/ops.md for the branches."""
    attrs = dict(block_size=block_size, top_blocks=top_blocks, top_tokens=top_tokens, window=window,
                 causal=int(causal), shared_selection=int(shared_selection), sink_blocks=sink_blocks,
                 local_blocks=local_blocks, scale=scale)
    check_against_spec("NativeSparseAttention", (q, k, v, gates, compressed_key, compressed_value), attrs)
    ct = compute_dtype(q.dtype)
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    batch, hq, sq, _ = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    bs, device = block_size, q.device
    s = _scale(q, scale)
    p = torch.arange(sq, device=device)[:, None] + (skv - sq)  # [Sq, 1]
    j = torch.arange(skv, device=device)
    past_only = (j <= p) if causal else torch.ones(sq, skv, dtype=torch.bool, device=device)
    full = skv // bs
    num_blocks = full + (1 if causal and skv % bs else 0)

    second = None
    if compressed_key is not None:  # compression branch; its probabilities score the blocks
        ck, cv = compressed_key.to(ct), compressed_value.to(ct)
        t = torch.arange(ck.shape[2], device=device)
        c_visible = ((t + 1) * bs - 1 <= p) if causal else torch.ones(sq, ck.shape[2], dtype=torch.bool, device=device)
        second, c_lse = sdpa_reference(qc, ck, cv, c_visible, scale=s)
        with torch.no_grad():
            c_logits = (qc @ _repeat(ck, hq).transpose(-1, -2)) * s
            block_scores = torch.where(c_visible, torch.exp(c_logits - c_lse[..., None].to(ct)), 0.0)
    else:
        with torch.no_grad():
            means = kc[:, :, : full * bs].reshape(batch, hkv, full, bs, k.shape[3]).mean(dim=3)
            block_scores = qc @ _repeat(means, hq).transpose(-1, -2)

    with torch.no_grad():  # block selection
        if shared_selection:
            block_scores = block_scores.unflatten(1, (hkv, hq // hkv)).sum(dim=2)
        block_scores = torch.nn.functional.pad(block_scores, (0, num_blocks - full), value=NEG_INF)
        c = torch.arange(num_blocks, device=device)
        own = p // bs
        candidate = (c <= own) if causal else torch.ones(sq, num_blocks, dtype=torch.bool, device=device)
        forced = ((c == own) & bool(causal)) | (c < sink_blocks) | ((c < own) & (c >= own - local_blocks))
        key = torch.where(forced & candidate, math.inf, torch.where(candidate, block_scores, NEG_INF))
        block_mask, selected_blocks = select(key, top_blocks, top_blocks)
        block_mask = torch.nn.functional.pad(block_mask, (0, 1), value=False)  # column for dropped keys
        in_blocks = block_mask[..., torch.clamp(j // bs, max=num_blocks)]
        if shared_selection:
            in_blocks = _repeat(in_blocks, hq)
    y = sdpa_reference(qc, kc, vc, in_blocks & past_only, scale=s)[0]
    g = None if gates is None else gates.to(ct).expand(batch, hq, sq, 3)
    y = y if g is None else g[..., 0:1] * y

    with torch.no_grad():  # fine branch: the top_tokens keys by score
        token_key = torch.where(past_only, qc @ _repeat(kc, hq).transpose(-1, -2), NEG_INF)
        token_mask, selected_tokens = select(token_key, top_tokens, top_tokens)
    if compressed_key is None and top_tokens > 0:
        second = sdpa_reference(qc, kc, vc, token_mask, scale=s)[0]
    if second is not None:
        y = y + (second if g is None else g[..., 1:2] * second)
    if window > 0:
        recent = sdpa_reference(qc, kc, vc, (j <= p) & (j > p - window), scale=s)[0]
        y = y + (recent if g is None else g[..., 2:3] * recent)
    return y.to(q.dtype), selected_blocks, selected_tokens


def routed_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    *,
    segment_size: int = 64,
    top_k: int = 3,
    causal: bool = False,
    cosine: bool = True,
    rope: bool = False,
    rope_before_routing: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    scale: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager onnxattn::SparseRoutedAttention: (Y [B,Hq,Sq,Dv] in q's dtype, selected_segments [B,Hq,Sq,top_k]
    int64); see docs/ops.md."""
    attrs = dict(segment_size=segment_size, top_k=top_k, causal=int(causal), cosine=int(cosine), rope=int(rope),
                 rope_before_routing=int(rope_before_routing), rope_base=rope_base, rotary_dim=rotary_dim,
                 rope_interleaved=int(rope_interleaved), rope_attention_scaling=rope_attention_scaling, scale=scale)
    check_against_spec("SparseRoutedAttention", (q, k, v, position_ids), attrs)
    ct = compute_dtype(q.dtype)
    qc, kc, vc = q.to(ct), k.to(ct), v.to(ct)
    batch, hq, sq, d = q.shape
    hkv, skv, device = k.shape[1], k.shape[2], q.device
    seg = segment_size
    q_rot, k_rot = qc, kc
    if rope:
        positions = torch.arange(skv, device=device)[None] if position_ids is None else position_ids
        positions = positions.expand(batch, skv)
        inv_freq = default_inv_freq(rotary_dim or d, rope_base, device=device)
        kw = dict(interleaved=bool(rope_interleaved), attention_scaling=rope_attention_scaling)
        q_rot = apply_rope(qc, positions[:, skv - sq:], inv_freq, **kw).to(ct)
        k_rot = apply_rope(kc, positions, inv_freq, **kw).to(ct)
    with torch.no_grad():
        q_route, k_route = (q_rot, k_rot) if rope_before_routing else (qc, kc)
        segments = -(-skv // seg)
        padded = torch.nn.functional.pad(k_route, (0, 0, 0, segments * seg - skv))
        c = torch.arange(segments, device=device)
        counts = torch.clamp(skv - c * seg, max=seg).to(ct)
        centroids = padded.reshape(batch, hkv, segments, seg, d).sum(dim=3) / counts[:, None]
        if cosine:
            centroids = centroids / centroids.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        scores = q_route @ _repeat(centroids, hq).transpose(-1, -2)  # [B, Hq, Sq, segments]
        p = torch.arange(sq, device=device)[:, None] + (skv - sq)
        own = p // seg
        candidate = (c < own) if causal else torch.ones(sq, segments, dtype=torch.bool, device=device)
        key = torch.where((c == own) & bool(causal), math.inf, torch.where(candidate, scores, NEG_INF))
        mask, selected = select(key, top_k, top_k)
        visible = mask[..., torch.arange(skv, device=device) // seg]
        if causal:
            visible = visible & (torch.arange(skv, device=device) <= p)
    y = sdpa_reference(q_rot, k_rot, vc, visible, scale=_scale(q, scale))[0]
    return y.to(q.dtype), selected
