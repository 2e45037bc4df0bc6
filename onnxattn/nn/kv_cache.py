"""A contiguous KV cache for eager generation, shared by all layers of a model."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values [B, Hkv, P, D] (keys after RoPE). Each layer's past length is its own,
    so layers may be filled independently (e.g. a layer that is skipped for some steps)."""

    def __init__(self):
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, layer_idx: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self._layers.get(layer_idx, (None, None))

    def update(self, layer_idx: int, present_key: torch.Tensor, present_value: torch.Tensor) -> None:
        self._layers[layer_idx] = (present_key, present_value)

    def length(self, layer_idx: int) -> int:
        key, _ = self.get(layer_idx)
        return 0 if key is None else key.shape[2]

    def truncate(self, length: int) -> None:
        """Keeps the first `length` tokens of every layer (e.g. to roll back rejected draft tokens)."""
        self._layers = {i: (k[:, :, :length], v[:, :, :length]) for i, (k, v) in self._layers.items()}

    def __len__(self) -> int:
        return len(self._layers)
