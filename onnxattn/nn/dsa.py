"""DeepSeek-V3.2's sparse attention (DSA): the lightning indexer that picks, for each query, the `topk` cache
positions its MLA attends to (onnxattn::MultiHeadLatentAttention's `key_indices` input).

The indexer is plain torch, so it exports as standard ONNX ops (MatMul, Relu, Where, TopK; Concat or
ScatterElements for its cache):

    q = wq_b(q_resid) per index head [B, S, H, D], k = LayerNorm(wk(x)) [B, S, D] (one key per token, shared by
    the heads), RoPE on the first `rope_head_dim` channels of both (half-split by default as DeepSeek-V3.2's,
    interleaved pairs for GLM-5), then
    score[b, s, t] = sum_h relu(q[b, s, h] . k[b, t] * D^-0.5) * weights_proj(x)[b, s, h] * H^-0.5,
    -inf where t is not visible (t > the query's position), and the indices of the `topk` largest.

The indexer keeps its own key cache (the keys after norm and RoPE, [B, 1, P, D], the latent caches' layout): a
decode step computes only its new tokens' keys. Like MLA's it comes as concatenated pasts (present = past + new) or
as preallocated buffers with past_lengths [B] (present: the buffer with the new keys scattered in at
past_lengths[b] + i).

Ties: ONNX TopK returns equal scores in ascending index order; torch.topk does not promise an order. Picks agree
with transformers' wherever the k-th and (k+1)-th largest visible scores differ. When fewer than `topk` keys are
visible every visible key is picked and the rest of the list points at hidden keys or is -1 (padding), which the
MLA node ignores, so those ties never matter. Scores are computed in float32 over all past and new keys per query
([B, S, H, T] floats in the prefill: the indexer is the dense part of DSA)."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.nn.reference import apply_rope
from onnxattn.nn.rope import Rope


class LightningIndexer(nn.Module):
    """DeepSeek-V3.2's DSA indexer (transformers' DeepseekV32Indexer, weight names as its: wq_b, wk, k_norm,
    weights_proj). `q_dim`: the width of the query latent it reads (q_rank, the MLA's normalised q_a_proj output);
    `num_heads` H, `head_dim` D, `rope_head_dim` channels rotated (the model's qk_rope_head_dim), `topk`, `rope`
    (base, scaling, interleaved; the model's frequencies and attention factor), `norm_eps` of k_norm (a LayerNorm
    with bias)."""

    def __init__(self, model_dim: int, q_dim: int, num_heads: int, head_dim: int, rope_head_dim: int, topk: int, *,
                 rope: Rope | None = None, norm_eps: float = 1e-6):
        super().__init__()
        name = type(self).__name__
        for label, value in (("num_heads", num_heads), ("head_dim", head_dim), ("topk", topk)):
            if value < 1:
                raise ValueError(f"{name}: {label} must be >= 1, got {value}")
        if rope_head_dim < 2 or rope_head_dim % 2 or rope_head_dim > head_dim:
            raise ValueError(f"{name}: rope_head_dim must be even, >= 2 and <= head_dim ({head_dim}), got "
                             f"{rope_head_dim}")
        self.rope = rope if rope is not None else Rope()
        if self.rope.switches:  # its frequency set is chosen per forward; not wired here
            raise ValueError(f"{name}: LongRoPE scaling is not supported")
        self.num_heads, self.head_dim, self.rope_head_dim, self.topk = num_heads, head_dim, rope_head_dim, topk
        self.wq_b = nn.Linear(q_dim, num_heads * head_dim, bias=False)
        self.wk = nn.Linear(model_dim, head_dim, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=norm_eps)
        self.weights_proj = nn.Linear(model_dim, num_heads, bias=False)
        inv_freq, self.rope_attention_scaling = Rope(self.rope.base, None, self.rope.interleaved,
                                                     self.rope.scaling).frequencies(rope_head_dim)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE of x [B, H, S, D]'s first rope_head_dim channels at positions [B or 1, S]."""
        positions = positions.expand(x.shape[0], x.shape[2])
        return apply_rope(x.float(), positions, self.rope_inv_freq, interleaved=self.rope.interleaved,
                          attention_scaling=self.rope_attention_scaling).to(x.dtype)

    def keys(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The new tokens' index keys [B, 1, S, D] (normed, rotated: what the cache holds)."""
        return self._rotate(self.k_norm(self.wk(x)).unsqueeze(1), positions)

    def forward(self, x: torch.Tensor, q_resid: torch.Tensor, *, past_keys: torch.Tensor | None = None,
                past_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S, model_dim] (the attention's input), q_resid [B, S, q_dim]; past_keys [B, 1, P, D] (None: no
        past), buffers [B, 1, M, D] with `past_lengths` [B]. Returns (key_indices [B, S, topk] int64: cache
        positions, -1 where fewer than topk keys exist; present keys [B, 1, T, D])."""
        b, s, _ = x.shape
        if past_lengths is not None:
            if past_keys is None:
                raise ValueError(f"{type(self).__name__}: past_lengths needs past_keys (the buffers)")
            positions = past_lengths.to(torch.int64)[:, None] + torch.arange(s, device=x.device)  # [B, S]
        else:
            past = 0 if past_keys is None else past_keys.shape[2]
            positions = torch.arange(s, device=x.device)[None, :] + past  # [1, S]
        new = self.keys(x, positions)
        if past_keys is None:
            keys = new
        elif past_lengths is None:
            keys = torch.cat([past_keys, new.to(past_keys.dtype)], dim=2)
        else:  # into the buffer at each row's slots past_lengths[b] + i
            slots = positions[:, None, :, None].expand(b, 1, s, self.head_dim)
            keys = past_keys.scatter(2, slots, new.to(past_keys.dtype))
        q = self.wq_b(q_resid).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, S, D]
        q = self._rotate(q, positions)
        # [B, H, S, T]: one key per token, shared by the heads (float32, as transformers scores)
        scores = torch.relu(q.float() @ keys.float().transpose(-1, -2) * self.head_dim ** -0.5)
        weights = self.weights_proj(x).float() * self.num_heads ** -0.5  # [B, S, H]
        return self._pick(self._score(scores, weights), positions, keys.shape[2]), keys

    @staticmethod
    def _score(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[B, H, S, T] relu scores, [B, S, H] head weights -> [B, S, T]: the weighted sum over heads."""
        return (weights.unsqueeze(-2) @ scores.transpose(1, 2)).squeeze(-2)

    def _pick(self, index: torch.Tensor, positions: torch.Tensor, total: int) -> torch.Tensor:
        """The topk visible keys per query; invisible ones score -inf (picked only when fewer are visible, and
        then ignored by the node). Padded by topk -inf columns so the list is topk long whatever the cache length
        (the graph's K stays static); picks of padding columns become -1."""
        visible = torch.arange(total, device=index.device) <= positions[..., None]  # [B or 1, S, T]
        index = torch.where(visible, index, float("-inf"))
        pad = index.new_full((*index.shape[:2], self.topk), float("-inf"))
        picks = torch.topk(torch.cat([index, pad], dim=-1), self.topk, dim=-1).indices
        return torch.where(picks < total, picks, -1)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, rope_head_dim={self.rope_head_dim}, "
                f"topk={self.topk}, interleaved={self.rope.interleaved}")


__all__ = ["LightningIndexer"]
