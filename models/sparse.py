"""Decoders with sparse attention layers (issue 7): Llama-style blocks (RMSNorm, SwiGLU, RoPE) whose attention
is Native Sparse Attention (``nsa``: the paper's decoder form — compression branch driving GQA-shared block
selection with a sink and a local block, sliding window, per-token gates from the hidden states) or
block-routed attention (``moba``: MoBA — causal routing by dot product with RoPE before routing, the own
segment always attended).

Both cache raw keys and values per layer as [B, Hkv, P, D] (the layout export_model and generate serve):
NSA caches keys after RoPE and recompresses the cached keys each step (its compressed tokens are a function
of the full-resolution cache); the routed layer caches keys before RoPE, since its op rotates every key at
its position. Concatenation caches only (no shared buffers).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import PlainFrameLM, RMSNorm, check_heads, init_weights
from onnxattn.models.llama import SwiGLU
from onnxattn.nn import NativeSparseAttention, Rope, SparseRoutedAttention
from onnxattn.nn.reference import apply_rope


@dataclasses.dataclass(frozen=True)
class SparseDecoderConfig:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    intermediate: int = 128
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    block_size: int = 4  # NSA blocks / routed segments: tiny, so that short prompts already select
    top_blocks: int = 3  # NSA: blocks per query (own + sink + local + 1 by score); routed: top_k segments
    window: int = 6  # NSA's sliding window
    compression: str = "linear"  # NSA's compressor: "linear" (learned) or "mean"
    activation: str = "silu"
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)
        if self.block_size < 1 or self.top_blocks < 1 or self.window < 0:
            raise ValueError(f"{name}: need block_size >= 1, top_blocks >= 1 and window >= 0, got {self.block_size}, "
                             f"{self.top_blocks}, {self.window}")

    @property
    def resolved_head_dim(self) -> int:
        return check_heads(type(self).__name__, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)


@dataclasses.dataclass(frozen=True)
class NSAConfig(SparseDecoderConfig):
    pass


@dataclasses.dataclass(frozen=True)
class MoBAConfig(SparseDecoderConfig):
    top_blocks: int = 2


class SparseAttentionLayer(nn.Module):
    """Projections, the cache, and one sparse attention node. `kind`: "nsa" or "moba"."""

    def __init__(self, cfg: SparseDecoderConfig, layer_idx: int, kind: str):
        super().__init__()
        self.kind, self.layer_idx = kind, layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        d = self.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, cfg.hidden, bias=False)
        rope = Rope(cfg.rope_theta)
        if kind == "nsa":
            self.register_buffer("rope_inv_freq", rope.frequencies(d)[0], persistent=False)
            self.attn = NativeSparseAttention.paper(cfg.num_heads, cfg.num_kv_heads, d, cfg.hidden,
                                                    block_size=cfg.block_size, top_blocks=cfg.top_blocks,
                                                    window=cfg.window, compression=cfg.compression)
        else:
            self.attn = SparseRoutedAttention(cfg.block_size, cfg.top_blocks, causal=True, routing="dot", rope=rope,
                                              rope_before_routing=True)

    def forward(self, x, *, cache=None, past_key=None, past_value=None, past_lengths=None):
        if past_lengths is not None:
            raise ValueError(f"{type(self).__name__}: sparse decoders keep a concatenation cache (no past_lengths)")
        b, s, _ = x.shape
        split = lambda t, h: t.reshape(b, s, h, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x), self.num_heads), split(self.k_proj(x), self.num_kv_heads), \
            split(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            past_key, past_value = cache.get(self.layer_idx)
        offset = past_key.shape[2] if past_key is not None else 0
        if self.kind == "nsa":  # RoPE before caching; the op sees rotated keys
            positions = (torch.arange(s, device=x.device) + offset)[None].expand(b, s)
            q = apply_rope(q, positions, self.rope_inv_freq).to(x.dtype)
            k = apply_rope(k, positions, self.rope_inv_freq).to(x.dtype)
        if past_key is not None:
            k, v = torch.cat([past_key, k], dim=2), torch.cat([past_value, v], dim=2)
        if cache is not None:
            cache.update(self.layer_idx, k, v)
        if self.kind == "nsa":
            y = self.attn(q, k, v, x)
        else:  # the op rotates queries and keys at the keys' positions
            y = self.attn(q, k, v, torch.arange(k.shape[2], device=x.device)[None])
        return self.o_proj(y.transpose(1, 2).reshape(b, s, -1)), (k, v)


class SparseBlock(nn.Module):
    def __init__(self, cfg: SparseDecoderConfig, layer_idx: int, kind: str):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.attn = SparseAttentionLayer(cfg, layer_idx, kind)
        self.post_attn_norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden, cfg.intermediate, False, cfg.activation)

    def forward(self, x, **kv):
        h, present = self.attn(self.input_norm(x), **kv)
        x = x + h
        return x + self.mlp(self.post_attn_norm(x)), present


class SparseDecoder(PlainFrameLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    cache_modes = ("concat",)  # the sparse ops take whole K/V sequences: no past_lengths into a shared buffer

    def __init__(self, cfg: SparseDecoderConfig, kind: str):
        super().__init__(cfg, lambda c, i: SparseBlock(c, i, kind))


@register("nsa", NSAConfig)
def build_nsa(cfg: NSAConfig) -> SparseDecoder:
    return init_weights(SparseDecoder(cfg, "nsa"), cfg.seed)


@register("moba", MoBAConfig)
def build_moba(cfg: MoBAConfig) -> SparseDecoder:
    return init_weights(SparseDecoder(cfg, "moba"), cfg.seed)
