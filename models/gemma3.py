"""Gemma-3-style decoder (text model): local sliding-window layers interleaved with global ones (every
`sliding_window_pattern`-th layer is global), each kind with its own RoPE base (and scaling on the global
layers), QK-norm (optional), head dim independent of hidden / heads, score scale query_pre_attn_scalar^-0.5,
sandwich norms (pre and post attention and MLP) with Gemma's (1 + weight) RMSNorm, GeGLU MLP (tanh GELU),
embeddings scaled by sqrt(hidden), tied output embedding.

Soft-capping: attention logits through the op's `softcap` attribute, final logits in torch
(cap * tanh(logits / cap)). Gemma 2 used 50 / 30; Gemma 3 checkpoints use neither (0 here turns them
off); the tiny default keeps them on so both paths are exercised. Gemma 2 is this model with qk_norm=False
and one RoPE base for both layer kinds; Gemma 1 has neither soft-cap, only global layers and plain pre-norm blocks
(post_norms=False: no norm on the attention and MLP outputs)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import CausalLM, RMSNorm, check_activation, check_heads, init_weights
from onnxattn.models.llama import LAYER_TYPES, SwiGLU
from onnxattn.nn import GroupedQueryAttention, Rope, RopeScaling


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32  # Gemma's head dim is not hidden / heads
    intermediate: int = 128
    sliding_window: int = 8
    sliding_window_pattern: int = 2  # layer i is global iff (i + 1) % pattern == 0 (Gemma 3: 6)
    layer_types: tuple[str, ...] | None = None  # overrides the pattern
    rope_local_theta: float = 10000.0
    rope_global_theta: float = 1_000_000.0
    rope_global_scaling: RopeScaling | None = None  # Gemma 3 4B+: linear, factor 8
    query_pre_attn_scalar: float | None = None  # None: head_dim
    qk_norm: bool = True  # Gemma 2 has none
    attn_logit_softcap: float = 50.0
    final_logit_softcap: float = 30.0
    rms_norm_eps: float = 1e-6
    activation: str = "gelu_tanh"
    post_norms: bool = True  # False: Gemma 1's pre-norm blocks (input_norm, pre_mlp_norm; no post_attn / post_mlp)
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)
        check_activation(self.activation, name)
        if self.sliding_window < 1 or self.sliding_window_pattern < 1:
            raise ValueError(f"{name}: sliding_window and sliding_window_pattern must be >= 1")
        if self.layer_types is not None and (len(self.layer_types) != self.num_layers
                                             or not set(self.layer_types) <= set(LAYER_TYPES)):
            raise ValueError(f"{name}: layer_types must list one of {LAYER_TYPES} per layer ({self.num_layers})")
        if self.attn_logit_softcap < 0 or self.final_logit_softcap < 0:
            raise ValueError(f"{name}: soft-caps must be >= 0 (0 = off)")

    def is_sliding(self, layer: int) -> bool:
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding_attention"
        return (layer + 1) % self.sliding_window_pattern != 0


class Gemma3Block(nn.Module):
    def __init__(self, cfg: Gemma3Config, layer_idx: int):
        super().__init__()
        sliding = cfg.is_sliding(layer_idx)
        rope = Rope(cfg.rope_local_theta) if sliding else Rope(cfg.rope_global_theta, scaling=cfg.rope_global_scaling)
        norm = lambda dim: RMSNorm(dim, cfg.rms_norm_eps, unit_offset=True)  # noqa: E731
        self.post_norms = cfg.post_norms  # registered in this order, which init_weights' draws follow
        self.input_norm = norm(cfg.hidden)
        if cfg.post_norms:
            self.post_attn_norm = norm(cfg.hidden)
        self.pre_mlp_norm = norm(cfg.hidden)
        if cfg.post_norms:
            self.post_mlp_norm = norm(cfg.hidden)
        scalar = cfg.query_pre_attn_scalar or cfg.head_dim
        self.attn = GroupedQueryAttention(
            cfg.hidden, cfg.num_heads, cfg.num_kv_heads, head_dim=cfg.head_dim,
            window=cfg.sliding_window if sliding else 0,
            softcap=cfg.attn_logit_softcap, scale=scalar ** -0.5, rope=rope, qk_norm=cfg.qk_norm,
            qk_norm_eps=cfg.rms_norm_eps, layer_idx=layer_idx)
        self.mlp = SwiGLU(cfg.hidden, cfg.intermediate, False, cfg.activation)

    def forward(self, x, **kv):
        h, present = self.attn(self.input_norm(x), return_present=True, **kv)
        if not self.post_norms:  # Gemma 1
            x = x + h
            return x + self.mlp(self.pre_mlp_norm(x)), present
        x = x + self.post_attn_norm(h)
        return x + self.post_mlp_norm(self.mlp(self.pre_mlp_norm(x))), present


class Gemma3Model(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: Gemma3Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Gemma3Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps, unit_offset=True)

    def embed(self, input_ids, positions):
        weight = self.embed_tokens.weight
        # the scale is rounded to the weights' dtype, as in Gemma (sqrt(3072) is 55.5 in bfloat16)
        return self.embed_tokens(input_ids) * torch.tensor(self.config.hidden ** 0.5, dtype=weight.dtype)

    def head(self, x):
        logits = nn.functional.linear(self.norm(x), self.embed_tokens.weight)  # tied
        cap = self.config.final_logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


@register("gemma3", Gemma3Config)
def build_gemma3(cfg: Gemma3Config) -> Gemma3Model:
    model = init_weights(Gemma3Model(cfg), cfg.seed)
    with torch.no_grad():  # smaller embeddings: scaled by sqrt(hidden) and tied to the output, random ones
        model.embed_tokens.weight.mul_(0.25)  # make each token predict itself (greedy text of one token)
    return model
