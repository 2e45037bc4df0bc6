"""BERT encoder: bidirectional attention with a key-padding mask (one GroupQueryAttention node per layer,
causal=0, no RoPE), word + learned position + token type embeddings, post-LayerNorm blocks, exact GELU,
and the [CLS] pooler. The position table bounds the sequence length (`max_positions`).

RoBERTa / XLM-RoBERTa are this model with `position_padding_idx` (their pad token id): positions count the
non-padding tokens from padding_idx + 1 and padding tokens sit at padding_idx (transformers'
create_position_ids_from_input_ids), so the table holds max_positions - padding_idx - 1 tokens."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import ACTIVATIONS, _exporting, check_activation, check_heads, init_weights
from onnxattn.nn import GroupedQueryAttention


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate: int = 128
    max_positions: int = 128
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    pooler: bool = True
    position_padding_idx: int | None = None  # RoBERTa: positions from the input ids (see the module doc)
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_heads, None)
        check_activation(self.activation, name)
        pad = self.position_padding_idx
        if pad is not None and not 0 <= pad < self.max_positions - 1:
            raise ValueError(f"{name}: position_padding_idx must be in [0, max_positions - 1 = "
                             f"{self.max_positions - 1}) (positions start at position_padding_idx + 1), got {pad}")


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig, layer_idx: int):
        super().__init__()
        self.attn = GroupedQueryAttention(cfg.hidden, cfg.num_heads, cfg.num_heads, bias=True, causal=False, rope=None,
                                          layer_idx=layer_idx)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(cfg.hidden, cfg.intermediate)
        self.output = nn.Linear(cfg.intermediate, cfg.hidden)
        self.out_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.activation]

    def forward(self, x, mask):
        x = self.attn_norm(x + self.attn(x, attention_mask=mask))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class BertModel(nn.Module):
    """input_ids [B, S], attention_mask [B, S] (1 = token, 0 = padding; default all ones), token_type_ids
    [B, S] (default zeros) -> (last_hidden_state [B, S, hidden], pooler_output [B, hidden]), or only
    last_hidden_state without the pooler."""

    kind = "encoder"

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.max_positions = cfg.max_positions
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.embed_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg, i) for i in range(cfg.num_layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden) if cfg.pooler else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        b, s = input_ids.shape
        pad = self.config.position_padding_idx
        if not _exporting() and s > self.max_positions - (0 if pad is None else pad + 1):
            start = "" if pad is None else f" from position {pad + 1} (position_padding_idx + 1)"
            raise ValueError(f"BertModel: {s} tokens exceed the position table of {self.max_positions} "
                             f"(max_positions){start}; shorten the input")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if pad is None:
            positions = torch.arange(s, device=input_ids.device)[None, :]
        else:  # from the ids, not attention_mask, as transformers does
            real = (input_ids != pad).to(torch.int64)
            positions = torch.cumsum(real, dim=1) * real + pad
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        x = self.embed_norm(x)
        mask = attention_mask.to(torch.bool) if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, mask)
        if self.pooler is None:
            return x
        return x, torch.tanh(self.pooler(x[:, 0]))

    def example_inputs(self, batch: int = 2, seq: int = 5, seed: int = 1):
        """(input_ids, attention_mask, token_type_ids), the second sequence right-padded."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.config.vocab_size, (batch, seq), generator=g)
        mask = torch.ones(batch, seq, dtype=torch.int64)
        mask[1:, seq - 2:] = 0
        types = torch.randint(0, self.config.type_vocab_size, (batch, seq), generator=g)
        return ids, mask, types


@register("bert", BertConfig)
def build_bert(cfg: BertConfig) -> BertModel:
    return init_weights(BertModel(cfg), cfg.seed)
