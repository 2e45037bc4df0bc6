"""A tiny decoder-only transformer whose attention is onnxattn's ScaledDotProductAttention (no KV cache):
the smallest model using that op. Pre-norm blocks with GQA, a sliding-window layer, SwiGLU MLPs."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.nn import ScaledDotProductAttention


@dataclasses.dataclass(frozen=True)
class TinyDecoderConfig:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_query_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mlp_hidden: int = 128
    window: int = 8  # sliding window of the odd layers (0: all layers global)
    seed: int = 0

    def __post_init__(self):
        if self.num_query_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"TinyDecoderConfig: num_query_heads ({self.num_query_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, cfg: TinyDecoderConfig, window: int):
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.hidden)
        self.q = nn.Linear(cfg.hidden, cfg.num_query_heads * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.hidden, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.hidden, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o = nn.Linear(cfg.num_query_heads * cfg.head_dim, cfg.hidden, bias=False)
        self.attn = ScaledDotProductAttention(
            causal=True, window=window, num_query_heads=cfg.num_query_heads, num_kv_heads=cfg.num_kv_heads
        )
        self.mlp_norm = RMSNorm(cfg.hidden)
        self.gate = nn.Linear(cfg.hidden, cfg.mlp_hidden, bias=False)
        self.up = nn.Linear(cfg.hidden, cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.hidden, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, s, -1, self.cfg.head_dim).transpose(1, 2)
        k = self.k(h).view(b, s, -1, self.cfg.head_dim).transpose(1, 2)
        v = self.v(h).view(b, s, -1, self.cfg.head_dim).transpose(1, 2)
        a = self.attn(q, k, v).transpose(1, 2).reshape(b, s, -1)
        x = x + self.o(a)
        h = self.mlp_norm(x)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


class TinyDecoder(nn.Module):
    """token ids [B, S] -> logits [B, S, vocab]."""

    kind = "stateless"  # exported as is: no KV cache inputs

    def __init__(self, cfg: TinyDecoderConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.window if i % 2 == 1 else 0) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def forward(self, input_ids):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def example_inputs(self, batch: int = 2, seq: int = 16) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(self.config.seed + 1)
        return (torch.randint(0, self.config.vocab_size, (batch, seq), generator=g),)

    @staticmethod
    def dynamic_shapes():
        return ({0: "batch", 1: "sequence"},)


@register("tiny-decoder", TinyDecoderConfig)
def build_tiny_decoder(cfg: TinyDecoderConfig) -> TinyDecoder:
    torch.manual_seed(cfg.seed)
    model = TinyDecoder(cfg)
    with torch.no_grad():  # deterministic, non-trivial weights (norm weights away from 1)
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()
