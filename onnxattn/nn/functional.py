"""Functional forms of the onnxattn mechanisms. Each call is one torch custom op, so it exports to one
onnxattn node; eagerly it runs onnxattn.nn.reference and is differentiable."""

from __future__ import annotations

import torch

from onnxattn.export import _torch_ops  # noqa: F401  (registers torch.ops.onnxattn.*)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    band: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    return_lse: bool = False,
):
    """onnxattn::ScaledDotProductAttention on q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv].

    causal is bottom-right aligned (query i sees keys j <= i + Skv - Sq); window > 0 keeps the `window`
    most recent keys; band > 0 keeps |i + Skv - Sq - j| <= band; attn_mask is bool (True = attend) or
    additive, broadcastable to [B,Hq,Sq,Skv]; scale None means 1/sqrt(D); softcap > 0 caps the scores
    before masking. Rows with no visible key give zeros. Returns Y, or (Y, LSE) with return_lse."""
    args = (q, k, v, attn_mask, bool(causal), int(window), int(band), float(scale or 0.0), float(softcap))
    if return_lse:
        return torch.ops.onnxattn.scaled_dot_product_attention_lse(*args)
    return torch.ops.onnxattn.scaled_dot_product_attention(*args)
