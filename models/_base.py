"""What the reference models share: norms, activations, deterministic weights, dtype casting, and the
decoder base class whose one forward serves eager generation (a KVCache) and export (past/present
tensors per layer, prefill and decode in one graph)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from onnxattn.nn import GroupedQueryAttention, KVCache


def _exporting() -> bool:
    # value checks need concrete sizes; under torch.export they would become guards on symbolic dims
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


class RMSNorm(nn.Module):
    """Llama's RMSNorm: normalized in float32, scaled by `weight` in the input dtype. `unit_offset` is
    Gemma's variant: normalized and scaled by (1 + weight) in float32, then cast."""

    def __init__(self, dim: int, eps: float = 1e-6, *, unit_offset: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))
        self.eps, self.unit_offset = eps, unit_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            return (h * (1.0 + self.weight.to(torch.float32))).to(x.dtype)
        return self.weight * h.to(x.dtype)


ACTIVATIONS = {
    "silu": nn.functional.silu,
    "gelu": nn.functional.gelu,  # exact (erf), BERT
    "gelu_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),  # GPT-2 "gelu_new", Gemma
    "relu": nn.functional.relu,
    "relu2": lambda x: torch.square(nn.functional.relu(x)),  # squared ReLU (Nemotron, Arcee)
}


def check_activation(name: str, owner: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")


def check_heads(owner: str, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int | None) -> int:
    """Validates head counts; returns the head dim (hidden / heads unless given)."""
    if num_heads < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"{owner}: num_heads ({num_heads}) must be a positive multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if head_dim is None:
        if hidden % num_heads:
            raise ValueError(f"{owner}: hidden ({hidden}) is not divisible by num_heads ({num_heads}); "
                             f"choose divisible sizes or set head_dim")
        return hidden // num_heads
    if head_dim < 1:
        raise ValueError(f"{owner}: head_dim must be >= 1, got {head_dim}")
    return head_dim


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights from `seed`, independent of torch's global RNG: matrices and embeddings
    ~ N(0, 1/fan_in) (activations keep their scale, logits spread out), biases small, norm weights
    away from their neutral value (so a missing norm shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner = name.rsplit(".", 2)[-2] if name.count(".") else ""
            # matrices and embeddings (with tied output embeddings, larger ones lock greedy decoding onto one token)
            if p.dim() >= 2 and "norm" not in owner:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:  # norm weights (per-head ones [heads, head_dim] too); zero-centred ones (Gemma) get small offsets
                neutral = 0.0 if torch.all(p == 0) else 1.0
                p.copy_(neutral + (torch.rand(p.shape, generator=g) - 0.5))
    return model.eval()


class SwiGLU(nn.Module):
    """Gated MLP: down_proj(act(gate_proj(x)) * up_proj(x)), named as transformers' (Llama, the MoE experts)."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, activation: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.up_proj = nn.Linear(hidden, intermediate, bias=bias)
        self.down_proj = nn.Linear(intermediate, hidden, bias=bias)
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Casts parameters to `dtype`; RoPE inverse frequencies stay float32 (the op takes them as float)."""
    keep = {name: b.clone() for name, b in model.named_buffers() if name.endswith("rope_inv_freq")}
    model.to(dtype)
    for name, value in keep.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, value)
    return model


class CausalLM(nn.Module):
    """Decoder-only language model: `embed` -> `layers` (each holding `attn`, a GroupedQueryAttention) ->
    `head`. Subclasses set `config` and define embed / head / the blocks (block(x, **attn_kwargs) returns
    (x, (present_key, present_value))).

    One forward for all cache modes:
    - ``model(ids)``: no cache, logits;
    - ``model(ids, cache=KVCache())``: eager generation, the cache grows in place, logits;
    - ``model(ids, past_key_values)``: per-layer (key, value) [B, Hkv, P, D] (P may be 0), concatenation
      mode; returns (logits, presents). This is the exported signature (a layer's entry holds more tensors
      when cache_layout says so);
    - ``model(ids, past_key_values, past_lengths)``: shared-buffer mode, preallocated [B, Hkv, M, D] buffers
      with past_lengths [B] valid tokens; presents are the updated buffers.
    `logits_to_keep` > 0 keeps only the last positions' logits (generation needs one)."""

    kind = "decoder"
    cache_modes: tuple[str, ...] = ("concat", "shared")  # the exportable KV cache modes (onnxattn.export)
    max_positions: int | None = None  # learned position tables bound the total length

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attention_layers(self) -> list[GroupedQueryAttention]:
        return [layer.attn for layer in self.layers]

    def kv_shapes(self) -> list[tuple[int, int, int]]:
        """(Hkv, D of keys, D of values) per layer: the cache layout [B, Hkv, P, D]."""
        return [(a.num_kv_heads, a.head_dim, getattr(a, "v_head_dim", a.head_dim)) for a in self.attention_layers()]

    def cache_layout(self) -> list[dict[str, tuple[int, int]]]:
        """Per layer, its cache tensors [B, heads, P, width] in order, by name (the exported graph's
        past_key_values.{i}.{name} / present.{i}.{name}): "key" and "value" from kv_shapes, and any a model adds
        (DeepSeek-V3.2's "index_key"), which forward passes to the block as past_{name}."""
        return [{"key": (h, dk), "value": (h, dv)} for h, dk, dv in self.kv_shapes()]

    def empty_past(self, batch: int, length: int = 0, dtype=None, device=None) -> list[tuple[torch.Tensor, ...]]:
        dtype = dtype or next(self.parameters()).dtype
        return [tuple(torch.zeros(batch, h, length, d, dtype=dtype, device=device) for h, d in layer.values())
                for layer in self.cache_layout()]

    def check_length(self, total: int) -> None:
        """Clear error for sequences longer than a learned position table."""
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(f"{type(self).__name__}: {total} tokens (past + new) exceed the position table of "
                             f"{self.max_positions} (max_positions); shorten the prompt or generate fewer tokens")

    def forward(self, input_ids: torch.Tensor, past_key_values=None, past_lengths: torch.Tensor | None = None, *,
                cache: KVCache | None = None, logits_to_keep: int = 0):
        if cache is not None and past_key_values is not None:
            raise ValueError(f"{type(self).__name__}: pass either cache or past_key_values, not both")
        if past_lengths is not None and past_key_values is None:
            raise ValueError(f"{type(self).__name__}: past_lengths needs past_key_values (the shared buffers)")
        layers = list(self.layers)
        if past_key_values is not None and len(past_key_values) != len(layers):
            raise ValueError(f"{type(self).__name__}: past_key_values has {len(past_key_values)} layers, the model "
                             f"has {len(layers)}")
        b, s = input_ids.shape
        if past_lengths is not None:
            offsets = past_lengths.to(torch.int64)[:, None]  # [B, 1]
        elif past_key_values is not None:
            offsets = past_key_values[0][0].shape[2]
        else:
            offsets = cache.length(layers[0].attn.layer_idx) if cache is not None else 0
        if not _exporting():
            self.check_length((int(offsets.max()) if torch.is_tensor(offsets) else offsets) + s)
        positions = torch.arange(s, device=input_ids.device)[None, :] + offsets  # [1 or B, S]
        x = self.embed(input_ids, positions)
        presents = []
        extra = [list(names)[2:] for names in self.cache_layout()] if past_key_values is not None else []
        for i, layer in enumerate(layers):
            if past_key_values is not None:
                kv = dict(past_key=past_key_values[i][0], past_value=past_key_values[i][1], past_lengths=past_lengths)
                kv.update({f"past_{name}": t for name, t in zip(extra[i], past_key_values[i][2:])})
            else:
                kv = dict(cache=cache)
            x, present = layer(x, **kv)
            presents.append(present)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x)
        return logits if past_key_values is None else (logits, tuple(presents))

    def example_inputs(self, batch: int = 2, seq: int = 5, past: int = 3, seed: int = 1):
        """(input_ids, past_key_values) to trace the exported graph with (sizes > 1: torch.export
        specializes dims of size 0 and 1)."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, self.config.vocab_size, (batch, seq), generator=g)
        past_kv = [tuple(torch.randn(t.shape, generator=g).to(t.dtype) for t in layer)
                   for layer in self.empty_past(batch, past)]
        return ids, past_kv


class PlainFrameLM(CausalLM):
    """A CausalLM framed by a token embedding, the blocks, a final RMSNorm and a bias-free lm_head; embed and head
    apply them plainly (subclasses add scales or tie the head). `cfg` has vocab_size, hidden, num_layers and
    rms_norm_eps; `block(cfg, i)` builds layer i."""

    def __init__(self, cfg, block: Callable[[Any, int], nn.Module]):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def embed(self, input_ids, positions):
        return self.embed_tokens(input_ids)

    def head(self, x):
        return self.lm_head(self.norm(x))


def set_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Copies weight [out, in] (and bias) into `linear`, checking shapes (for weight conversion)."""
    if tuple(weight.shape) != tuple(linear.weight.shape):
        raise ValueError(f"weight of shape {list(weight.shape)} does not fit {linear} ({list(linear.weight.shape)})")
    with torch.no_grad():
        linear.weight.copy_(weight)
        if linear.bias is not None:
            linear.bias.copy_(bias if bias is not None else torch.zeros_like(linear.bias))


def copy_linears(dst: nn.Module, src: nn.Module, names=("q_proj", "k_proj", "v_proj", "o_proj")) -> None:
    """set_linear for each named projection of `src` (weight and bias, if any) into the same-named one of `dst`."""
    for name in names:
        theirs = getattr(src, name)
        set_linear(getattr(dst, name), theirs.weight, theirs.bias)
