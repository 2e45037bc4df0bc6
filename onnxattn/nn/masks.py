"""Structural attention masks as small composed values (causal, window, band), shared by every module.

Query row i of Sq sits at key position p = i + (Skv - Sq) (bottom-right alignment); see the docs of
onnxattn::ScaledDotProductAttention for the rules.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class AttentionMask:
    causal: bool = False
    window: int = 0  # > 0: the `window` most recent keys, the current one included
    band: int = 0  # > 0: |p - j| <= band

    def __post_init__(self):
        if self.window < 0:
            raise ValueError(f"AttentionMask: window must be >= 0 (0 = off), got {self.window}")
        if self.band < 0:
            raise ValueError(f"AttentionMask: band must be >= 0 (0 = off), got {self.band}")

    def key_range(self, query_row: int, q_len: int, kv_len: int) -> tuple[int, int]:
        """[begin, end) of the keys query row `query_row` may see."""
        p = query_row + kv_len - q_len
        begin, end = 0, kv_len
        if self.causal:
            end = min(end, p + 1)
        if self.window > 0:
            begin = max(begin, p - self.window + 1)
        if self.band > 0:
            begin, end = max(begin, p - self.band), min(end, p + self.band + 1)
        begin = min(max(begin, 0), kv_len)
        return begin, max(begin, min(end, kv_len))

    def materialize(self, q_len: int, kv_len: int, device=None) -> torch.Tensor:
        """Boolean [Sq, Skv], True where the key is visible."""
        p = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        j = torch.arange(kv_len, device=device)[None, :]
        visible = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        if self.causal:
            visible &= j <= p
        if self.window > 0:
            visible &= j > p - self.window
        if self.band > 0:
            visible &= (p - j).abs() <= self.band
        return visible


def build_causal_sliding_window_mask(seq_len: int, window: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Additive mask [1, 1, S, S]: 0 where query i may see key j (j <= i and i - j < window), a large
    negative number elsewhere. `window` <= 0 gives the plain causal mask."""
    visible = AttentionMask(causal=True, window=max(window, 0)).materialize(seq_len, seq_len, device)
    mask = torch.zeros(seq_len, seq_len, dtype=dtype, device=device)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]
