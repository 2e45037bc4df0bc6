"""A compressed KV cache for generation (the seed's CompressedKVCache): old tokens are mean-pooled in chunks
of `chunk_size` into one key and one value each; the `recent` newest tokens (and the not yet complete
chunk) stay raw. Attention then reads ceil-ish(S / chunk_size) + recent rows instead of S.

``compress_kv`` is the same thing as a function of the whole sequence (exportable: standard ops only);
``CompressedKVCache`` builds it incrementally, token by token or chunk by chunk, with the same result.
"""

from __future__ import annotations

import torch


def _check(chunk_size: int, recent: int) -> None:
    if chunk_size < 1 or recent < 0:
        raise ValueError(f"CompressedKVCache: chunk_size must be >= 1 and recent >= 0, got {chunk_size} and {recent}")


def pooled_length(length, chunk_size: int, recent: int):
    """Tokens of a sequence of `length` that are pooled: whole chunks, leaving at least `recent` (and fewer
    than recent + chunk_size) raw tokens."""
    return torch.sym_max(length - recent, 0) // chunk_size * chunk_size


def compress_kv(key: torch.Tensor, value: torch.Tensor, chunk_size: int, recent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """key [B,H,S,D], value [B,H,S,Dv] -> the cache's view [B,H,C + R,.]: C chunk means, then R raw tokens."""
    _check(chunk_size, recent)
    b, h, s, d = key.shape
    pooled = pooled_length(s, chunk_size, recent)
    chunks = pooled // chunk_size

    def squeeze(x):
        head = x[:, :, :pooled].reshape(b, h, chunks, chunk_size, x.shape[3]).mean(dim=3)
        return torch.cat([head, x[:, :, pooled:]], dim=2)

    return squeeze(key), squeeze(value)


class CompressedKVCache:
    """Per-layer compressed keys/values for eager generation. ``update(layer, k, v)`` appends the new tokens
    [B,H,S_new,D] and returns the view to attend over (chunk means, then raw tokens), equal to
    ``compress_kv`` of the whole sequence so far. Positions (RoPE) must be applied before caching."""

    def __init__(self, chunk_size: int, recent: int = 0):
        _check(chunk_size, recent)
        self.chunk_size, self.recent = chunk_size, recent
        self._pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._raw: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._length: dict[int, int] = {}

    def length(self, layer_idx: int) -> int:
        """Tokens seen by the layer (pooled or raw)."""
        return self._length.get(layer_idx, 0)

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._length[layer_idx] = self.length(layer_idx) + key.shape[2]
        if layer_idx in self._raw:
            raw_k, raw_v = self._raw[layer_idx]
            key, value = torch.cat([raw_k, key], dim=2), torch.cat([raw_v, value], dim=2)
            pooled_k, pooled_v = self._pooled[layer_idx]
        else:
            pooled_k, pooled_v = key[:, :, :0], value[:, :, :0]
        # pool the oldest whole chunks while more than `recent` raw tokens would remain
        move = max(key.shape[2] - self.recent, 0) // self.chunk_size * self.chunk_size
        if move:
            new_k, new_v = compress_kv(key[:, :, :move], value[:, :, :move], self.chunk_size, 0)
            pooled_k, pooled_v = torch.cat([pooled_k, new_k], 2), torch.cat([pooled_v, new_v], 2)
        self._pooled[layer_idx] = (pooled_k, pooled_v)
        self._raw[layer_idx] = (key[:, :, move:], value[:, :, move:])
        return torch.cat([pooled_k, key[:, :, move:]], 2), torch.cat([pooled_v, value[:, :, move:]], 2)
