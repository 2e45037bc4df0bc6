"""An independent numpy oracle of onnxattn::MultiHeadLatentAttention (float64 by default).

Written from the op's contract (the op's DOC), not from the package's code: it does not import onnxattn,
expands every head's keys and values explicitly, loops over query rows with one dense softmax each, and
leaves hidden keys out of the sum instead of weighting them by zero.

Contract, in order:
1. heads: query [B,S,H*(Dn+Dr)] -> q [B,H,S,Dn+Dr] = [q_nope (Dn) ; q_rope (Dr)] per head.
2. RoPE of q_rope and of the new k_rope [B,S,Dr] at position_ids (default: each query's key position):
   pairs (c, c + Dr/2) (half-split) or (2c, 2c + 1) (interleaved) turn by position * inv_freq[c],
   inv_freq[c] = base^(-2c/Dr) unless given; cos and sin times rope_attention_scaling.
3. caches (in the input type: `store` rounds the new rope keys to it; the latent is stored as given):
   concatenation: present = concat(past, new) on the sequence axis, query i at key position P + i;
   shared buffer: the new tokens written at past_lengths[b] + i, query i at past_lengths[b] + i, keys at
   >= past_lengths[b] + S hidden. Caches may be [B, P, .] or [B, 1, P, .] (same values).
4. per head h: k[j] = [latent[j] @ w_uk[h] ; k_rope[j]], v[j] = latent[j] @ w_uv[h].
5. query at key position p sees key j iff j <= p (causal), p - W < j (window W > 0) and j is valid;
   with key_indices [B, S, K] also iff j is one of key_indices[b, i] (a set; negative entries list nothing);
   scores = scale * q.k (scale 0: 1/sqrt(Dn+Dr)), softcap c > 0: c tanh(s / c); a row that sees nothing
   gives zeros. Output [B,S,H*Dv].

`compute` is the arithmetic type of every intermediate (float64 for the oracle; a low-precision type gives
the plain low-precision baseline that STYLE.md #10 bounds errors by).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _caster(compute) -> Callable[[np.ndarray], np.ndarray]:
    if np.dtype(compute) == np.float64:
        return lambda x: np.asarray(x, dtype=np.float64)
    return lambda x: np.asarray(x).astype(compute)


def default_inv_freq(dim: int, base: float) -> np.ndarray:
    return np.power(float(base), -np.arange(0, dim, 2, dtype=np.float64) / dim)


def rotate(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, interleaved: bool, scaling: float,
           c) -> np.ndarray:
    """x [B, H, S, Dr] rotated at positions [B, S] (every channel is in a pair)."""
    x = c(x)
    dim = x.shape[-1]
    angles = c(c(np.asarray(positions, dtype=np.float64))[:, None, :, None] * c(inv_freq))
    cos, sin = c(c(np.cos(angles)) * scaling), c(c(np.sin(angles)) * scaling)
    first = np.arange(0, dim, 2) if interleaved else np.arange(dim // 2)
    second = first + 1 if interleaved else first + dim // 2
    out = x.copy()
    out[..., first] = c(c(x[..., first] * cos) - c(x[..., second] * sin))
    out[..., second] = c(c(x[..., second] * cos) + c(x[..., first] * sin))
    return out


def mla_oracle(
    query: np.ndarray,
    latent: np.ndarray,
    k_rope: np.ndarray,
    w_uk: np.ndarray,
    w_uv: np.ndarray,
    past_latent: np.ndarray | None = None,
    past_k_rope: np.ndarray | None = None,
    past_lengths: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    rope_inv_freq: np.ndarray | None = None,
    key_indices: np.ndarray | None = None,
    *,
    num_heads: int,
    causal: int = 1,
    window: int = 0,
    softcap: float = 0.0,
    scale: float = 0.0,
    rope_base: float = 10000.0,
    rope_interleaved: int = 0,
    rope_attention_scaling: float = 1.0,
    store: Callable[[np.ndarray], np.ndarray] | None = None,
    compute=np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output [B,S,H*Dv], present_latent, present_k_rope) in `compute`; presents in the past's rank."""
    c = _caster(compute)
    store = store or (lambda x: x)
    batch, seq, _ = query.shape
    heads, rank, nope = w_uk.shape
    dr = k_rope.shape[-1]
    dv = w_uv.shape[-1]
    assert query.shape[-1] == heads * (nope + dr) and heads == num_heads
    q = c(query).reshape(batch, seq, heads, nope + dr).transpose(0, 2, 1, 3)

    bnsh = past_latent is not None and past_latent.ndim == 4
    flat = (lambda x: None if x is None else (x[:, 0] if x.ndim == 4 else x))
    past_latent, past_k_rope = flat(past_latent), flat(past_k_rope)
    if past_lengths is not None:
        offsets = np.asarray(past_lengths, dtype=np.int64)
    else:
        offsets = np.full(batch, 0 if past_latent is None else past_latent.shape[1], dtype=np.int64)
    query_pos = offsets[:, None] + np.arange(seq)[None, :]
    positions = query_pos if position_ids is None else np.asarray(position_ids)
    inv_freq = default_inv_freq(dr, rope_base) if rope_inv_freq is None else np.asarray(rope_inv_freq, np.float64)
    assert len(inv_freq) == dr // 2
    rope = lambda x: rotate(x, positions, inv_freq, bool(rope_interleaved), rope_attention_scaling, c)  # noqa: E731
    q = np.concatenate([q[..., :nope], rope(q[..., nope:])], axis=-1)
    kr_new = c(store(rope(c(k_rope)[:, None])[:, 0]))  # [B, S, Dr]
    lat_new = c(latent)

    if past_lengths is not None:
        present_lat, present_kr = c(past_latent).copy(), c(past_k_rope).copy()
        for b in range(batch):
            start = int(offsets[b])
            assert 0 <= start and start + seq <= present_lat.shape[1], "oracle: the new tokens must fit"
            present_lat[b, start:start + seq] = lat_new[b]
            present_kr[b, start:start + seq] = kr_new[b]
        valid_end = offsets + seq
    elif past_latent is not None:
        present_lat = np.concatenate([c(past_latent), lat_new], axis=1)
        present_kr = np.concatenate([c(past_k_rope), kr_new], axis=1)
        valid_end = np.full(batch, present_lat.shape[1])
    else:
        present_lat, present_kr = lat_new, kr_new
        valid_end = np.full(batch, seq)
    total = present_lat.shape[1]

    scale = scale if scale != 0.0 else 1.0 / np.sqrt(nope + dr)
    out = np.zeros((batch, heads, seq, dv), dtype=compute)
    for b in range(batch):
        valid = np.arange(total) < valid_end[b]
        # NaN in stale (never visible) buffer slots must not reach the expansion either: expand valid keys only
        lat = np.where(valid[:, None], present_lat[b], 0.0)
        for h in range(heads):
            keys = np.concatenate([c(lat @ c(w_uk[h])), present_kr[b]], axis=-1)  # [T, Dn+Dr]
            values = c(lat @ c(w_uv[h]))  # [T, Dv]
            for i in range(seq):
                p = query_pos[b, i]
                j = np.arange(total)
                seen = valid & ((j <= p) if causal else True) & ((p - window < j) if window > 0 else True)
                if key_indices is not None:
                    seen = seen & np.isin(j, key_indices[b, i])
                idx = np.flatnonzero(seen)
                if idx.size == 0:
                    continue
                s = c(c(keys[idx] @ q[b, h, i]) * scale)
                if softcap > 0.0:
                    s = c(c(np.tanh(c(s / softcap))) * softcap)
                w = c(np.exp(c(s - s.max())))
                out[b, h, i] = c(c(w @ values[idx]) / c(w.sum()))
    output = out.transpose(0, 2, 1, 3).reshape(batch, seq, heads * dv)
    if bnsh:
        present_lat, present_kr = present_lat[:, None], present_kr[:, None]
    return output, present_lat, present_kr
