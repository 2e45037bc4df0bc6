"""An independent float64 numpy oracle of onnxattn::ScaledDotProductAttention.

Written from the op's contract (DESIGN.md §3 and the op docs), not from the package's code: it does not
import onnxattn, and it computes one plain dense softmax per row instead of any tiled or online scheme.

Contract:
- Q [B,Hq,Sq,D], K [B,Hkv,Skv,D], V [B,Hkv,Skv,Dv]; GQA is repeat-each: query head h uses KV head
  h // (Hq // Hkv).
- query row i sits at key position p = i + (Skv - Sq) (bottom-right alignment);
  causal: j <= p; window W > 0: p - W < j; band W > 0: |p - j| <= W; all rules that are on must hold.
- scale 0 means 1/sqrt(D); softcap c > 0 means c * tanh(s / c), applied before any masking.
- a bool mask (True = may attend) hides keys; a float mask is added to the scores (-inf hides); both
  broadcast numpy-style to [B,Hq,Sq,Skv].
- a row with no visible key gives zeros and LSE = -inf.
"""

from __future__ import annotations

import numpy as np


def structural_visibility(q_len: int, kv_len: int, *, causal: int = 0, window: int = 0, band: int = 0) -> np.ndarray:
    """Boolean [Sq, Skv]: True where the structural rules let query row i see key j."""
    p = np.arange(q_len)[:, None] + (kv_len - q_len)
    j = np.arange(kv_len)[None, :]
    visible = np.ones((q_len, kv_len), dtype=bool)
    if causal:
        visible &= j <= p
    if window > 0:
        visible &= p - window < j
    if band > 0:
        visible &= np.abs(p - j) <= band
    return visible


def sdpa_oracle(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    *,
    causal: int = 0,
    window: int = 0,
    band: int = 0,
    scale: float = 0.0,
    softcap: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (Y [B,Hq,Sq,Dv], LSE [B,Hq,Sq]) in float64."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    batch, q_heads, q_len, head_dim = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    assert q_heads % kv_heads == 0, "oracle: Hq must be a multiple of Hkv"
    group = q_heads // kv_heads
    kv_head_of = np.arange(q_heads) // group  # repeat-each
    k_full, v_full = k[:, kv_head_of], v[:, kv_head_of]

    scale = scale if scale != 0.0 else 1.0 / np.sqrt(head_dim)
    scores = np.einsum("bhid,bhjd->bhij", q, k_full) * scale
    if softcap > 0.0:
        scores = softcap * np.tanh(scores / softcap)

    visible = np.broadcast_to(
        structural_visibility(q_len, kv_len, causal=causal, window=window, band=band),
        (batch, q_heads, q_len, kv_len),
    ).copy()
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        if attn_mask.dtype == np.bool_:
            visible &= np.broadcast_to(attn_mask, visible.shape)
        else:
            scores = scores + np.broadcast_to(attn_mask.astype(np.float64), scores.shape)
    scores = np.where(visible, scores, -np.inf)

    y = np.zeros((batch, q_heads, q_len, v.shape[3]))
    lse = np.full((batch, q_heads, q_len), -np.inf)
    for b in range(batch):
        for h in range(q_heads):
            for i in range(q_len):
                row = scores[b, h, i]
                seen = row > -np.inf
                if not seen.any():
                    continue  # empty row: zeros, LSE = -inf
                m = row[seen].max()
                w = np.exp(row[seen] - m)
                total = w.sum()
                y[b, h, i] = (w / total) @ v_full[b, h][seen]
                lse[b, h, i] = m + np.log(total)
    return y, lse
