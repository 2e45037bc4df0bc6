"""The eager math of onnxattn::MultiHeadLatentAttention: the numerical reference of its kernels and
functions, and (through autograd) the backward of the torch custom op. Both formulations are here — the
expanded one (per-head keys and values materialised, the op's definition) and the absorbed one (W_UK folded
into the query, W_UV applied after attention over the shared latent rows) — so tests can show they agree."""

from __future__ import annotations

import math

import torch

from onnxattn.nn.reference import _ONNX_FLOAT_TYPES, apply_rope, compute_dtype, default_inv_freq, sdpa_reference

NAME = "MultiHeadLatentAttention"
_T_INPUTS = (0, 1, 2, 3, 4, 5, 6)  # inputs of the op's type T; the others are checked for shape only


def check_mla_inputs(tensors, attrs) -> None:
    """The op's shape and attribute checks (onnxattn.ops.mla, so torch and ONNX give the same messages):
    ValueError naming the op and the input."""
    from onnx import helper

    from onnxattn.ops import TensorInfo, mla

    infos = [None if t is None else TensorInfo(_ONNX_FLOAT_TYPES.get(t.dtype, 0) if i in _T_INPUTS else 0,
                                               tuple(t.shape)) for i, t in enumerate(tensors)]
    kinds = {a.name: a.kind for a in mla.SPEC.attrs}
    mla.SPEC.infer_node(infos, [helper.make_attribute(name, int(v) if kinds[name] == "int" else float(v))
                                for name, v in attrs.items()])


def check_mla_past_lengths(query: torch.Tensor, past_latent: torch.Tensor | None,
                           past_lengths: torch.Tensor | None) -> None:
    """past_lengths values (the kernel's message); on real tensors only (not while the backward traces)."""
    if past_lengths is not None and past_latent is not None:
        buffer, seq = past_latent.shape[-2], query.shape[1]
        bad = ((past_lengths < 0) | (past_lengths + seq > buffer)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"{NAME}: past_lengths[{b}] = {int(past_lengths[b])} is out of range: the buffers hold "
                             f"{buffer} tokens, so with {seq} new tokens it must be in [0, {buffer - seq}]")


def check_mla_key_indices(query: torch.Tensor, latent: torch.Tensor, past_latent: torch.Tensor | None,
                          past_lengths: torch.Tensor | None, key_indices: torch.Tensor | None) -> None:
    """key_indices values (the kernel's message): each entry a cache slot, or negative; on real tensors only."""
    if key_indices is None or key_indices.numel() == 0:
        return
    total = latent.shape[1] if past_latent is None else past_latent.shape[-2] + (
        0 if past_lengths is not None else latent.shape[1])
    bad = (key_indices >= total).nonzero()
    if bad.numel():
        b, i, e = (int(x) for x in bad[0])
        raise ValueError(f"{NAME}: key_indices[{b}, {i}, {e}] = {int(key_indices[b, i, e])} is out of range: the "
                         f"caches hold {total} tokens (negative entries list no key)")


def listed_keys(key_indices: torch.Tensor, total: int) -> torch.Tensor:
    """[B, 1, S, T] bool: key j is listed in key_indices[b, i] (a set; negative entries list nothing)."""
    slots = torch.where(key_indices < 0, total, key_indices).to(torch.int64)
    marks = torch.zeros(*key_indices.shape[:2], total + 1, dtype=torch.bool, device=key_indices.device)
    return marks.scatter(2, slots, True)[:, None, :, :total]


def mla_reference(
    query: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    past_latent: torch.Tensor | None = None,
    past_k_rope: torch.Tensor | None = None,
    past_lengths: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    rope_inv_freq: torch.Tensor | None = None,
    key_indices: torch.Tensor | None = None,
    *,
    num_heads: int,
    causal: bool = True,
    window: int = 0,
    softcap: float = 0.0,
    scale: float = 0.0,
    rope_base: float = 10000.0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    absorbed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager onnxattn::MultiHeadLatentAttention: (output [B,S,H*Dv], present_latent, present_k_rope), with the
    op's contract (docs/ops.md). `absorbed` computes attention over the shared latent rows instead of the
    expanded per-head keys (same function, other rounding). `key_indices` [B, S, K]: each query sees only the
    keys it lists (DeepSeek sparse attention)."""
    attrs = dict(num_heads=num_heads, causal=causal, window=window, softcap=softcap, scale=scale,
                 rope_base=rope_base, rope_interleaved=rope_interleaved, rope_attention_scaling=rope_attention_scaling)
    check_mla_inputs((query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids,
                      rope_inv_freq, key_indices), attrs)
    b, s, _ = query.shape
    heads, _, nope = w_uk.shape
    rope_dim = k_rope.shape[-1]
    ct = compute_dtype(query.dtype)
    q = query.to(ct).unflatten(-1, (heads, nope + rope_dim)).transpose(1, 2)  # [B, H, S, Dn+Dr]

    steps = torch.arange(s, device=query.device)
    bnsh = past_latent is not None and past_latent.dim() == 4
    flat = (lambda x: x[:, 0] if x is not None and x.dim() == 4 else x)  # noqa: E731  [B, 1, P, .] -> [B, P, .]
    past_latent, past_k_rope = flat(past_latent), flat(past_k_rope)
    if past_lengths is not None:
        past_len = past_lengths.to(torch.int64)[:, None]  # [B, 1]
    else:
        past_len = torch.full((1, 1), past_latent.shape[1] if past_latent is not None else 0, device=query.device)
    query_pos = (past_len + steps).expand(b, s)
    positions = position_ids if position_ids is not None else query_pos
    inv_freq = rope_inv_freq if rope_inv_freq is not None else default_inv_freq(rope_dim, rope_base, query.device)
    rope = dict(interleaved=bool(rope_interleaved), attention_scaling=rope_attention_scaling)
    q = torch.cat((q[..., :nope], apply_rope(q[..., nope:], positions, inv_freq, **rope)), dim=-1)
    k_rope_new = apply_rope(k_rope.to(ct)[:, None], positions, inv_freq, **rope)[:, 0].to(k_rope.dtype)

    if past_lengths is not None:
        index = (past_len + steps)[:, :, None]  # [B, S, 1]
        present_lat = past_latent.scatter(1, index.expand_as(latent), latent)
        present_kr = past_k_rope.scatter(1, index.expand_as(k_rope_new), k_rope_new)
    elif past_latent is not None:
        present_lat, present_kr = torch.cat((past_latent, latent), dim=1), torch.cat((past_k_rope, k_rope_new), dim=1)
    else:
        present_lat, present_kr = latent, k_rope_new

    total = present_lat.shape[1]
    j = torch.arange(total, device=query.device)
    p = query_pos[:, None, :, None]  # [B, 1, S, 1]
    visible = torch.ones(1, 1, 1, total, dtype=torch.bool, device=query.device)
    if causal:
        visible = visible & (j <= p)
    if window > 0:
        visible = visible & (j > p - window)
    if past_lengths is not None:
        visible = visible & (j < (past_len + s)[:, None, :, None])
    if key_indices is not None:
        visible = visible & listed_keys(key_indices, total)
    visible = visible.expand(b, 1, s, total)

    lat, kr = present_lat.to(ct)[:, None], present_kr.to(ct)[:, None]  # [B, 1, T, .]
    scale = scale if scale != 0.0 else 1.0 / math.sqrt(nope + rope_dim)
    if absorbed:
        q_latent = q[..., :nope] @ w_uk.to(ct).transpose(-1, -2)  # [B, H, S, R]
        out, _ = sdpa_reference(torch.cat((q_latent, q[..., nope:]), dim=-1), torch.cat((lat, kr), dim=-1), lat,
                                visible, scale=scale, softcap=softcap)
        out = out @ w_uv.to(ct)  # [B, H, S, Dv]
    else:
        keys = torch.cat((lat @ w_uk.to(ct), kr.expand(b, heads, total, rope_dim)), dim=-1)
        out, _ = sdpa_reference(q, keys, lat @ w_uv.to(ct), visible, scale=scale, softcap=softcap)
    if bnsh:
        present_lat, present_kr = present_lat[:, None], present_kr[:, None]
    return out.transpose(1, 2).flatten(2).to(query.dtype), present_lat, present_kr
