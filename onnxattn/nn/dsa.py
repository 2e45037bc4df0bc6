"""DeepSeek-V3.2's sparse attention (DSA): the lightning indexer that picks, for each query, the `topk` cache
positions its MLA attends to (onnxattn::MultiHeadLatentAttention's `key_indices` input), and the eager reference
of onnxattn::LightningIndexer (the indexer's scores and top-k fused: onnxattn.ops.indexer is the contract).

The module's projections, LayerNorm and RoPE are plain torch (standard ONNX ops; Concat or ScatterElements for its
cache); its scores and top-k are one onnxattn::LightningIndexer node (onnxattn.nn.functional.lightning_indexer):

    q = wq_b(q_resid) per index head [B, S, H, D], k = LayerNorm(wk(x)) [B, S, D] (one key per token, shared by
    the heads), RoPE on the first `rope_head_dim` channels of both (half-split by default as DeepSeek-V3.2's,
    interleaved pairs for GLM-5), then
    score[b, s, t] = sum_h relu(q[b, s, h] . k[b, t] * D^-0.5) * weights_proj(x)[b, s, h] * H^-0.5,
    -inf where t is not visible (t > the query's position), and the positions of the `topk` largest.

The indexer keeps its own key cache (the keys after norm and RoPE, [B, 1, P, D], the latent caches' layout): a
decode step computes only its new tokens' keys. Like MLA's it comes as concatenated pasts (present = past + new) or
as preallocated buffers with past_lengths [B] (present: the buffer with the new keys scattered in at
past_lengths[b] + i).

Picks: ties go to the lower position and every list is in ascending position order (the op's contract, the same in
torch, the function and the kernels); transformers' order differs (torch.topk's, by score), so compare picks as
sets. They agree with transformers' wherever the k-th and (k+1)-th largest visible scores differ. When fewer than
`topk` keys are visible the list is every visible key followed by -1 (padding, which the MLA node ignores).
Scores are float32 over all past and new keys per query. Exported, the node's function body (what onnxruntime
runs without our library) holds the [B, rows, H, T] per-head scores of a chunk of query rows (at most 128 MiB of
them, or one row); our kernels keep at most one [S, T] block of summed scores."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.nn import functional as F  # a module object: the functional resolves at call time (import cycle)
from onnxattn.nn.reference import _ONNX_FLOAT_TYPES, apply_rope
from onnxattn.nn.rope import Rope

NAME = "LightningIndexer"


def check_indexer_inputs(query: torch.Tensor, key: torch.Tensor, weights: torch.Tensor,
                         past_lengths: torch.Tensor | None, *, num_heads: int, top_k: int, scale: float) -> None:
    """The op's shape, dtype and attribute checks (onnxattn.ops.indexer's, so torch and ONNX give the same
    messages), then past_lengths' values (the kernels' check): ValueError naming the op and the input."""
    from onnx import helper

    from onnxattn.ops import TensorInfo, indexer

    for label, t, want in (("weights", weights, (torch.float32,)),
                           ("past_lengths", past_lengths, (torch.int64,))):
        if t is not None and t.dtype not in want:
            raise ValueError(f"{NAME}: input '{label}' must be {str(want[0]).removeprefix('torch.')}, got {t.dtype}")
    # float64 query/key (tests) are checked for shape only, as the other ops' torch checks do
    infos = [None if t is None else TensorInfo(_ONNX_FLOAT_TYPES.get(t.dtype, 0) if i < 2 else 0, tuple(t.shape))
             for i, t in enumerate((query, key, weights, past_lengths))]
    attrs = [helper.make_attribute("num_heads", int(num_heads)), helper.make_attribute("top_k", int(top_k)),
             helper.make_attribute("scale", float(scale))]
    indexer.SPEC.infer_node(infos, attrs)
    if past_lengths is not None:
        buffer, seq = key.shape[-2], query.shape[1]
        bad = ((past_lengths < 0) | (past_lengths + seq > buffer)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"{NAME}: past_lengths[{b}] = {int(past_lengths[b])} is out of range: input 'key' holds "
                             f"{buffer} keys, so with {seq} new tokens it must be in [0, {buffer - seq}]")


def query_positions(query: torch.Tensor, total: int, past_lengths: torch.Tensor | None) -> torch.Tensor:
    """[B or 1, S] int64: each query's cache position (the last S of T, or past_lengths[b] + i)."""
    steps = torch.arange(query.shape[1], device=query.device)[None, :]
    if past_lengths is None:
        return steps + (total - query.shape[1])  # plain arithmetic: traces with a symbolic T
    return past_lengths.to(torch.int64)[:, None] + steps


def lightning_indexer_scores(query: torch.Tensor, key: torch.Tensor, weights: torch.Tensor,
                             past_lengths: torch.Tensor | None = None, *, num_heads: int,
                             scale: float = 0.0) -> torch.Tensor:
    """[B, S, T] float32 index scores sum_h weights[b, i, h] * relu(scale * q[b, i, h] . k[b, t]), -inf where key t
    is hidden from query i (unchecked inputs: see lightning_indexer_reference)."""
    b, s, width = query.shape
    d = key.shape[-1]
    k = key.reshape(b, -1, d).float()  # [B, T, D] from either key rank
    q = query.float().unflatten(-1, (num_heads, width // num_heads))  # [B, S, H, D]
    scale = scale if scale != 0.0 else d ** -0.5
    per_head = torch.relu((q @ k[:, None].transpose(-1, -2)) * scale)  # [B, S, H, T]
    score = (weights.float().unsqueeze(-2) @ per_head).squeeze(-2)  # [B, S, T]
    total = k.shape[1]
    visible = torch.arange(total, device=query.device) <= query_positions(query, total, past_lengths)[..., None]
    return score.masked_fill(~visible | score.isnan(), float("-inf"))  # a NaN score is never picked


def select_top_k(score: torch.Tensor, top_k: int) -> torch.Tensor:
    """[..., T] scores (-inf: hidden) -> [..., top_k] int64: the top_k largest finite ones' positions, ties to the
    lower position (a stable sort: torch.topk promises no tie order), ascending, -1 padding at the end."""
    total = score.shape[-1]
    order = torch.sort(score, dim=-1, descending=True, stable=True)
    k = min(top_k, total)
    picks = torch.where(order.values[..., :k] > float("-inf"), order.indices[..., :k], total)
    picks = picks.sort(dim=-1).values  # hidden ones (total) last
    picks = torch.where(picks == total, -1, picks)
    return torch.cat([picks, picks.new_full((*picks.shape[:-1], top_k - k), -1)], dim=-1)


def lightning_indexer_reference(query: torch.Tensor, key: torch.Tensor, weights: torch.Tensor,
                                past_lengths: torch.Tensor | None = None, *, num_heads: int, top_k: int,
                                scale: float = 0.0) -> torch.Tensor:
    """Eager onnxattn::LightningIndexer: query [B, S, H*D] (after RoPE), key [B, T, D] or [B, 1, T, D] (the new
    tokens' keys included; a buffer with `past_lengths` [B] int64), weights [B, S, H] float32 -> key_indices
    [B, S, top_k] int64: the top_k visible keys by index score (query i at position T - S + i or past_lengths[b]
    + i sees keys t <= it), ties to the lower position, ascending, -1 padding. scale 0 means 1/sqrt(D)."""
    check_indexer_inputs(query, key, weights, past_lengths, num_heads=num_heads, top_k=top_k, scale=scale)
    score = lightning_indexer_scores(query, key, weights, past_lengths, num_heads=num_heads, scale=scale)
    return select_top_k(score, top_k)


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
        positions in ascending order, -1 padding where fewer than topk keys are visible; present keys [B, 1, T, D])."""
        b, s, _ = x.shape
        if past_lengths is not None and past_keys is None:
            raise ValueError(f"{type(self).__name__}: past_lengths needs past_keys (the buffers)")
        past = 0 if past_keys is None else past_keys.shape[2]  # concatenation mode's P (buffers: past_lengths)
        positions = query_positions(x, past + s, past_lengths)  # [B or 1, S]
        new = self.keys(x, positions)
        if past_keys is None:
            keys = new
        elif past_lengths is None:
            keys = torch.cat([past_keys, new.to(past_keys.dtype)], dim=2)
        else:  # into the buffer at each row's slots past_lengths[b] + i
            slots = positions[:, None, :, None].expand(b, 1, s, self.head_dim)
            keys = past_keys.scatter(2, slots, new.to(past_keys.dtype))
        q = self.wq_b(q_resid).unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, S, D]
        q = self._rotate(q, positions).transpose(1, 2).flatten(2)  # [B, S, H*D], the op's layout
        weights = self.weights_proj(x).float() * self.num_heads ** -0.5  # [B, S, H]
        # scores and top-k: one LightningIndexer node (scale 0: the op's 1/sqrt(D), this module's D^-0.5)
        lengths = None if past_lengths is None else past_lengths.to(torch.int64)  # the op's type
        picks = F.lightning_indexer(q.to(keys.dtype), keys, weights, lengths, num_heads=self.num_heads,
                                    top_k=self.topk)
        return picks, keys

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, rope_head_dim={self.rope_head_dim}, "
                f"topk={self.topk}, interleaved={self.rope.interleaved}")


__all__ = ["LightningIndexer", "lightning_indexer_reference", "lightning_indexer_scores"]
