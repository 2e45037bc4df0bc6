"""ModernBERT encoder: pre-norm blocks (LayerNorm without bias by default, none before the first layer's
attention), one fused Wqkv projection, RoPE with its own base per layer kind, global layers (every
`global_attn_every_n_layers`-th, starting with the first) alternating with local ones over the symmetric
band |i - j| <= local_attention // 2, a GeGLU MLP (one fused Wi), normalized embeddings without positions or
token types, and a final norm. Keys are hidden by a padding mask as in BERT.

Global layers are one GroupQueryAttention node (causal=0, RoPE fused); local layers are one
ScaledDotProductAttention node with `band` (the GroupQueryAttention window is one-sided), RoPE in torch
around it. Inputs: input_ids and attention_mask; output: last_hidden_state."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import ACTIVATIONS, check_activation, check_heads, init_weights
from onnxattn.models.llama import LAYER_TYPES
from onnxattn.nn import GroupedQueryAttention, LocalAttention, Rope


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate: int = 96
    local_attention: int = 8  # the total local window: local layers see |i - j| <= local_attention // 2
    global_attn_every_n_layers: int = 3  # layer i is global iff i % n == 0
    layer_types: tuple[str, ...] | None = None  # overrides the pattern
    rope_global_theta: float = 160_000.0
    rope_local_theta: float = 10_000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    activation: str = "gelu"
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_heads, None)
        check_activation(self.activation, name)
        if self.local_attention < 2:  # a band of 0 would mean "no band" to the op, not "only itself"
            raise ValueError(f"{name}: local_attention must be >= 2, got {self.local_attention}")
        if self.global_attn_every_n_layers < 1:
            raise ValueError(f"{name}: global_attn_every_n_layers must be >= 1, got "
                             f"{self.global_attn_every_n_layers}")
        if self.layer_types is not None and (len(self.layer_types) != self.num_layers
                                             or not set(self.layer_types) <= set(LAYER_TYPES)):
            raise ValueError(f"{name}: layer_types must list one of {LAYER_TYPES} per layer ({self.num_layers})")

    def is_local(self, layer: int) -> bool:
        if self.layer_types is not None:
            return self.layer_types[layer] == "sliding_attention"
        return layer % self.global_attn_every_n_layers != 0

    @property
    def band(self) -> int:
        return self.local_attention // 2


class GeGLU(nn.Module):
    """Wi -> [input | gate] -> act(input) * gate -> Wo."""

    def __init__(self, cfg: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden, 2 * cfg.intermediate, bias=cfg.mlp_bias)
        self.Wo = nn.Linear(cfg.intermediate, cfg.hidden, bias=cfg.mlp_bias)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x):
        h, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.act(h) * gate)


class ModernBertLayer(nn.Module):
    def __init__(self, cfg: ModernBertConfig, layer_idx: int):
        super().__init__()
        norm = lambda: nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, bias=cfg.norm_bias)  # noqa: E731
        self.attn_norm = norm() if layer_idx else nn.Identity()  # the embeddings are normalized already
        common = dict(bias=cfg.attention_bias, merged_qkv=True, layer_idx=layer_idx)
        if cfg.is_local(layer_idx):
            self.attn = LocalAttention(cfg.hidden, cfg.num_heads, window=cfg.band, kind="band", causal=False,
                                       rope=Rope(cfg.rope_local_theta), **common)
        else:
            self.attn = GroupedQueryAttention(cfg.hidden, cfg.num_heads, causal=False,
                                              rope=Rope(cfg.rope_global_theta), **common)
        self.mlp_norm = norm()
        self.mlp = GeGLU(cfg)

    def forward(self, x, mask):
        x = x + self.attn(self.attn_norm(x), attention_mask=mask)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertModel(nn.Module):
    """input_ids [B, S], attention_mask [B, S] (1 = token, 0 = padding; default all ones) ->
    last_hidden_state [B, S, hidden]. RoPE positions are 0 .. S-1 whatever the padding (as transformers')."""

    kind = "encoder"
    max_positions = None  # RoPE: no position table

    def __init__(self, cfg: ModernBertConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.layers = nn.ModuleList(ModernBertLayer(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def attention_layers(self) -> list[nn.Module]:
        return [layer.attn for layer in self.layers]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embed_norm(self.tok_embeddings(input_ids))
        mask = attention_mask.to(torch.bool) if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)

    def example_inputs(self, batch: int = 2, seq: int = 5, seed: int = 1):
        """(input_ids, attention_mask), the second sequence right-padded."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.config.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[1:, seq - 2:] = 0
        return ids, mask


@register("modernbert", ModernBertConfig)
def build_modernbert(cfg: ModernBertConfig) -> ModernBertModel:
    return init_weights(ModernBertModel(cfg), cfg.seed)
