"""GPT-2: learned absolute positions (no RoPE), pre-LayerNorm blocks, merged QKV projection and MLP with
biases, tanh GELU, tied output embedding. The position table bounds past + new tokens (`n_positions`).
Options, all off by default: multi-query / grouped KV heads (GPT-BigCode: num_kv_heads), and OPT's position offset
(its table has `position_offset` extra leading rows), post-norm blocks, bias-free projections, a narrower embedding
projected in and out (embed_dim) and no final norm; GPT-Neo's local attention (a causal window on window_layers)
and BioGPT's / XGLM's token embeddings times embedding_multiplier."""

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
    num_kv_heads: int | None = None  # None: num_heads; GPT-BigCode's multi_query: 1
    # OPT
    position_offset: int = 0  # positions look up table row position + offset (the table has offset extra rows)
    post_norm: bool = False  # x = ln_1(x + attn(x)), then ln_2(x + mlp(x)) [do_layer_norm_before=False]
    bias: bool = True  # every projection's and MLP layer's bias [enable_bias]
    embed_dim: int | None = None  # None: hidden; else embeddings of this width, project_in / project_out (no bias)
    final_norm: bool = True  # ln_f before the head
    seed: int = 0
    # GPT-Neo: a causal sliding window of `window` keys (0: off) on window_layers (None: every layer)
    window: int = 0
    window_layers: tuple[int, ...] | None = None
    embedding_multiplier: float = 1.0  # BioGPT, XGLM: token embeddings times this (scale_embedding: sqrt(hidden))

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_kv_heads or self.num_heads, None)
        check_activation(self.activation, name)
        if self.n_positions < 1:
            raise ValueError(f"{name}: n_positions must be >= 1")
        if self.window < 0 or not set(self.window_layers or ()) <= set(range(self.num_layers)):
            raise ValueError(f"{name}: window must be >= 0 and window_layers layer indices in [0, {self.num_layers}), "
                             f"got {self.window} and {self.window_layers}")
        if not math.isfinite(self.embedding_multiplier):
            raise ValueError(f"{name}: embedding_multiplier must be finite, got {self.embedding_multiplier}")
        if self.position_offset < 0 or (self.embed_dim is not None and self.embed_dim < 1):
            raise ValueError(f"{name}: position_offset must be >= 0 and embed_dim >= 1 (or None), got "
                             f"{self.position_offset} and {self.embed_dim}")

    def layer_window(self, layer: int) -> int:
        return self.window if self.window_layers is None or layer in self.window_layers else 0

    def attention_scale(self, layer: int) -> float:
        scale = 1.0 / math.sqrt(self.hidden // self.num_heads) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attn = GroupedQueryAttention(cfg.hidden, cfg.num_heads, cfg.num_kv_heads or cfg.num_heads, bias=cfg.bias,
                                          rope=None, merged_qkv=True, scale=cfg.attention_scale(layer_idx),
                                          window=cfg.layer_window(layer_idx), layer_idx=layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.c_fc = nn.Linear(cfg.hidden, cfg.intermediate or 4 * cfg.hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.intermediate or 4 * cfg.hidden, cfg.hidden, bias=cfg.bias)
        self.act = ACTIVATIONS[cfg.activation]
        self.post_norm = cfg.post_norm

    def forward(self, x, **kv):
        if self.post_norm:  # OPT-350m: each norm after its residual add
            h, present = self.attn(x, return_present=True, **kv)
            x = self.ln_1(x + h)
            return self.ln_2(x + self.c_proj(self.act(self.c_fc(x)))), present
        h, present = self.attn(self.ln_1(x), return_present=True, **kv)
        x = x + h
        return x + self.c_proj(self.act(self.c_fc(self.ln_2(x)))), present


class GPT2Model(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.max_positions = cfg.n_positions
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim or cfg.hidden)
        self.wpe = nn.Embedding(cfg.n_positions + cfg.position_offset, cfg.hidden)
        self.layers = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.num_layers))
        # registered only when asked for: the seeded init of the others stays as it was
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.final_norm else None
        if cfg.embed_dim is not None:
            self.project_in = nn.Linear(cfg.embed_dim, cfg.hidden, bias=False)
            self.project_out = nn.Linear(cfg.hidden, cfg.embed_dim, bias=False)

    def embed(self, input_ids, positions):
        x = self.wte(input_ids)
        if self.config.embedding_multiplier != 1.0:
            x = x * self.config.embedding_multiplier
        if self.config.embed_dim is not None:
            x = self.project_in(x)
        offset = self.config.position_offset
        return x + self.wpe(positions + offset if offset else positions)

    def head(self, x):
        if self.ln_f is not None:
            x = self.ln_f(x)
        if self.config.embed_dim is not None:
            x = self.project_out(x)
        return nn.functional.linear(x, self.wte.weight)  # tied


@register("gpt2", GPT2Config)
def build_gpt2(cfg: GPT2Config) -> GPT2Model:
    return init_weights(GPT2Model(cfg), cfg.seed)
