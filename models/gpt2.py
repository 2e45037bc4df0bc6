"""GPT-2: learned absolute positions (no RoPE), pre-LayerNorm blocks, merged QKV projection and MLP with
biases, tanh GELU, tied output embedding. The position table bounds past + new tokens (`n_positions`)."""

from __future__ import annotations

import dataclasses
import math

from torch import nn

from onnxattn.models import register
from onnxattn.models._base import ACTIVATIONS, CausalLM, check_activation, check_heads, init_weights
from onnxattn.nn import GroupedQueryAttention


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 256
    n_positions: int = 128
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate: int | None = None  # None: 4 * hidden
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_tanh"  # GPT-2's "gelu_new"
    scale_attn_weights: bool = True  # False: no 1/sqrt(D)
    scale_attn_by_inverse_layer_idx: bool = False  # also divide layer i's scores by i + 1
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_heads, None)
        check_activation(self.activation, name)
        if self.n_positions < 1:
            raise ValueError(f"{name}: n_positions must be >= 1")

    def attention_scale(self, layer: int) -> float:
        scale = 1.0 / math.sqrt(self.hidden // self.num_heads) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attn = GroupedQueryAttention(cfg.hidden, cfg.num_heads, cfg.num_heads, bias=True, rope=None,
                                          merged_qkv=True, scale=cfg.attention_scale(layer_idx), layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.c_fc = nn.Linear(cfg.hidden, cfg.intermediate or 4 * cfg.hidden)
        self.c_proj = nn.Linear(cfg.intermediate or 4 * cfg.hidden, cfg.hidden)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x, **kv):
        h, present = self.attn(self.ln_1(x), return_present=True, **kv)
        x = x + h
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x)))), present


class GPT2Model(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.max_positions = cfg.n_positions
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.hidden)
        self.layers = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)

    def embed(self, input_ids, positions):
        return self.wte(input_ids) + self.wpe(positions)

    def head(self, x):
        return nn.functional.linear(self.ln_f(x), self.wte.weight)  # tied


@register("gpt2", GPT2Config)
def build_gpt2(cfg: GPT2Config) -> GPT2Model:
    return init_weights(GPT2Model(cfg), cfg.seed)
