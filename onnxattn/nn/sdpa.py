"""The scaled dot-product attention module."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.nn import functional as F
from onnxattn.nn.masks import AttentionMask
from onnxattn.nn.reference import check_scale_and_softcap


class ScaledDotProductAttention(nn.Module):
    """Attention core over pre-projected heads: q [B,Hq,Sq,D], k/v [B,Hkv,Skv,D|Dv] -> [B,Hq,Sq,Dv].

    Causal by default (bottom-right aligned, so it also serves decode with a KV cache); use
    ``ScaledDotProductAttention.bidirectional()`` or ``causal=False`` for encoders. ``window`` keeps the
    `window` most recent keys (causal sliding window); ``band`` keeps |p - j| <= band. When head counts are
    given, inputs are checked against them (GQA: num_query_heads a multiple of num_kv_heads)."""

    def __init__(
        self,
        *,
        causal: bool = True,
        window: int = 0,
        band: int = 0,
        scale: float | None = None,
        softcap: float = 0.0,
        num_query_heads: int | None = None,
        num_kv_heads: int | None = None,
    ):
        super().__init__()
        self.mask = AttentionMask(bool(causal), int(window), int(band))  # validates window/band
        check_scale_and_softcap(0.0 if scale is None else scale, softcap)
        if num_query_heads is not None and num_kv_heads is not None and num_query_heads % num_kv_heads != 0:
            raise ValueError(
                f"ScaledDotProductAttention: num_query_heads ({num_query_heads}) must be a multiple of "
                f"num_kv_heads ({num_kv_heads})"
            )
        self.scale = scale
        self.softcap = float(softcap)
        self.num_query_heads = num_query_heads
        self.num_kv_heads = num_kv_heads

    @classmethod
    def bidirectional(cls, **kwargs) -> ScaledDotProductAttention:
        """Every query sees every key (encoders, e.g. BERT)."""
        return cls(causal=False, **kwargs)

    def extra_repr(self) -> str:
        parts = [f"causal={self.mask.causal}"]
        if self.mask.window:
            parts.append(f"window={self.mask.window}")
        if self.mask.band:
            parts.append(f"band={self.mask.band}")
        if self.softcap:
            parts.append(f"softcap={self.softcap}")
        if self.num_query_heads:
            parts.append(f"heads={self.num_query_heads}/{self.num_kv_heads}")
        return ", ".join(parts)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                *, return_lse: bool = False):
        if self.num_query_heads is not None and q.shape[1] != self.num_query_heads:
            raise ValueError(f"ScaledDotProductAttention: q has {q.shape[1]} heads, expected {self.num_query_heads}")
        if self.num_kv_heads is not None and k.shape[1] != self.num_kv_heads:
            raise ValueError(f"ScaledDotProductAttention: k has {k.shape[1]} heads, expected {self.num_kv_heads}")
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask, causal=self.mask.causal, window=self.mask.window, band=self.mask.band,
            scale=self.scale, softcap=self.softcap, return_lse=return_lse,
        )
