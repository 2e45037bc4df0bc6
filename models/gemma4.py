"""Gemma-4-style decoder (text model): Gemma 3's sliding / full layers, sandwich norms, GeGLU MLP, scaled and tied
embeddings and final soft-cap (Gemma3Model's embed and head), with what Gemma 4 changes:

- per layer kind its own head dim and KV heads (full layers: `global_head_dim`, `global_num_kv_heads`);
- each kind its own RoPE: "default" (the whole head) or "proportional" (transformers' rope_type for Gemma 4's full
  layers): frequencies base^(-2i / head_dim) for the first partial * head_dim / 2 pairs and 0 for the others, over the
  whole head's half-split pairs (c, c + head_dim / 2); that is not a rotary_dim (which would rotate the first channels
  with frequencies over rotary_dim), so those layers pass the frequencies, zeros included, as the node's
  rope_inv_freq (a zero frequency leaves its pair as it is);
- QK-norm scaling by the weight itself (not 1 + weight, as are all of Gemma 4's norms), a weightless RMS norm of V per
  head before the node, score scale 1;
- `attention_k_eq_v`: on full layers V is K's projection (before K's norm and RoPE);
- KV sharing: the last `num_kv_shared_layers` layers have no K/V of their own: each attends with its own queries
  (QK-norm and RoPE in torch) over the keys and values of the last earlier non-shared layer of its kind, through
  one ScaledDotProductAttention node (causal bottom-right aligned, the window on sliding layers), and has no cache
  (no past / present in the exported graph: the cache slots are those of the other layers);
- per-layer inputs (`per_layer_hidden` > 0): a second token embedding [vocab, layers * per_layer_hidden] plus a
  projection of the embeddings, normed and averaged, feed each layer a gated residual (gate, product, projection,
  norm); each layer's output is multiplied by its `layer_scalar`;
- `double_wide_mlp`: the shared layers' MLPs are twice as wide;
- `num_experts` > 0: transformers' MoE block beside the MLP (Gemma4Experts), its output and the MLP's each normed and
  summed before the post-MLP norm.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import (ACTIVATIONS, CausalLM, RMSNorm, SwiGLU, _exporting, check_activation, check_heads,
                                   init_weights)
from onnxattn.models.gemma3 import Gemma3Model
from onnxattn.models.llama import LAYER_TYPES
from onnxattn.models.moe import MixtureOfExperts
from onnxattn.nn import GroupedQueryAttention, Rope, ScaledDotProductAttention
from onnxattn.nn.reference import apply_rope, default_inv_freq, rms_norm_heads


def proportional_inv_freq(head_dim: int, base: float, partial: float, factor: float = 1.0) -> torch.Tensor:
    """transformers' "proportional" RoPE frequencies [head_dim / 2], computed in its order of operations (so the
    float32 values are its own)."""
    angles = int(partial * head_dim // 2)
    exponents = torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / head_dim
    inv_freq = torch.cat([1.0 / (base ** exponents), torch.zeros(head_dim // 2 - angles)])
    return inv_freq / factor


@dataclasses.dataclass(frozen=True)
class Gemma4Config:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2  # sliding layers
    head_dim: int = 16  # sliding layers
    global_num_kv_heads: int | None = 1  # full layers; None: num_kv_heads
    global_head_dim: int = 32  # full layers
    intermediate: int = 128
    sliding_window: int = 6
    layer_types: tuple[str, ...] | None = None  # None: sliding, full, sliding, ... (the last one full)
    rope_local_theta: float = 10000.0
    rope_global_theta: float = 1_000_000.0
    # (partial_rotary_factor, factor) of a "proportional" RoPE; None: the default RoPE over the whole head
    rope_local_proportional: tuple[float, float] | None = None
    rope_global_proportional: tuple[float, float] | None = (0.25, 1.0)
    attention_k_eq_v: bool = True  # full layers: V is K's projection
    num_kv_shared_layers: int = 0  # the last layers reuse the K/V of earlier ones
    per_layer_hidden: int = 8  # per-layer inputs' width (0: none)
    per_layer_vocab: int = 256
    double_wide_mlp: bool = False  # the shared layers' MLPs twice as wide
    num_experts: int = 0  # > 0: the MoE block beside each MLP
    experts_per_token: int = 2
    expert_intermediate: int = 32
    final_logit_softcap: float = 30.0
    rms_norm_eps: float = 1e-6
    activation: str = "gelu_tanh"
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)
        check_heads(name, self.hidden, self.num_heads, self.global_num_kv_heads or self.num_kv_heads,
                    self.global_head_dim)
        check_activation(self.activation, name)
        if self.sliding_window < 1:
            raise ValueError(f"{name}: sliding_window must be >= 1")
        if self.layer_types is not None and (len(self.layer_types) != self.num_layers
                                             or not set(self.layer_types) <= set(LAYER_TYPES)):
            raise ValueError(f"{name}: layer_types must list one of {LAYER_TYPES} per layer ({self.num_layers})")
        if self.final_logit_softcap < 0 or self.per_layer_hidden < 0:
            raise ValueError(f"{name}: final_logit_softcap and per_layer_hidden must be >= 0 (0 = off)")
        if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"{name}: experts_per_token must be in [1, num_experts]")
        if not 0 <= self.num_kv_shared_layers < self.num_layers:
            raise ValueError(f"{name}: num_kv_shared_layers must be in [0, num_layers)")
        for i in range(self.num_layers):
            self.kv_source(i)  # raises if a shared layer has no earlier layer of its kind

    def layer_type(self, layer: int) -> str:
        if self.layer_types is not None:
            return self.layer_types[layer]
        return "full_attention" if layer % 2 or layer == self.num_layers - 1 else "sliding_attention"

    def is_sliding(self, layer: int) -> bool:
        return self.layer_type(layer) == "sliding_attention"

    def kv_source(self, layer: int) -> int | None:
        """The layer whose K/V a shared layer attends over (transformers' kv_sharing_modes "store"), None for a
        layer with its own."""
        first_shared = self.num_layers - self.num_kv_shared_layers
        if layer < first_shared:
            return None
        kind = self.layer_type(layer)
        sources = [j for j in range(first_shared) if self.layer_type(j) == kind]
        if not sources:
            raise ValueError(f"{type(self).__name__}: shared layer {layer} ({kind}) has no earlier non-shared "
                             f"{kind} layer to take its keys and values from")
        return sources[-1]

    def layer_dims(self, layer: int) -> tuple[int, int]:
        """(KV heads, head dim) of a layer."""
        if self.is_sliding(layer):
            return self.num_kv_heads, self.head_dim
        return self.global_num_kv_heads or self.num_kv_heads, self.global_head_dim

    def rope(self, layer: int) -> tuple[float, tuple[float, float] | None]:
        if self.is_sliding(layer):
            return self.rope_local_theta, self.rope_local_proportional
        return self.rope_global_theta, self.rope_global_proportional


def _inv_freq(cfg: Gemma4Config, layer: int) -> torch.Tensor | None:
    """The layer's proportional frequencies, None for the default RoPE."""
    theta, proportional = cfg.rope(layer)
    return None if proportional is None else proportional_inv_freq(cfg.layer_dims(layer)[1], theta, *proportional)


class Gemma4Attention(GroupedQueryAttention):
    """GroupedQueryAttention with Gemma 4's V: the weightless RMS norm per head before the node, and on full layers
    with attention_k_eq_v K's projection as V (no v_proj)."""

    def __init__(self, cfg: Gemma4Config, layer_idx: int):
        num_kv_heads, head_dim = cfg.layer_dims(layer_idx)
        sliding = cfg.is_sliding(layer_idx)
        super().__init__(cfg.hidden, cfg.num_heads, num_kv_heads, head_dim=head_dim,
                         window=cfg.sliding_window if sliding else 0, scale=1.0, rope=Rope(cfg.rope(layer_idx)[0]),
                         qk_norm=True, qk_norm_eps=cfg.rms_norm_eps, layer_idx=layer_idx)
        self.k_eq_v = cfg.attention_k_eq_v and not sliding
        if self.k_eq_v:
            del self.v_proj
        inv_freq = _inv_freq(cfg, layer_idx)
        if inv_freq is not None:  # proportional RoPE: the frequencies travel as the node's rope_inv_freq
            self.rope_inv_freq = inv_freq

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k = self.q_proj(x), self.k_proj(x)
        v = k if self.k_eq_v else self.v_proj(x)
        v = rms_norm_heads(v.unflatten(-1, (self.num_kv_heads, self.head_dim)), None, self.qk_norm_eps).flatten(-2)
        return q, k, v

    def merge_qkv(self) -> None:
        """Kept separate: V is normed on its own (and may be K's projection)."""

    def inv_freq(self) -> torch.Tensor:
        """The frequencies the node rotates with."""
        return self.rope_inv_freq if self.rope_inv_freq is not None else self.rope.frequencies(self.head_dim)[0]


class Gemma4SharedAttention(nn.Module):
    """A KV-shared layer: its queries (projection, QK-norm, RoPE in torch) over another layer's present keys and
    values [B, Hkv, P + S, D], through one ScaledDotProductAttention node."""

    def __init__(self, cfg: Gemma4Config, layer_idx: int):
        super().__init__()
        self.num_kv_heads, self.head_dim = cfg.layer_dims(layer_idx)
        self.num_query_heads, self.eps, self.layer_idx = cfg.num_heads, cfg.rms_norm_eps, layer_idx
        self.window = cfg.sliding_window if cfg.is_sliding(layer_idx) else 0
        self.q_proj = nn.Linear(cfg.hidden, cfg.num_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * self.head_dim, cfg.hidden, bias=False)
        self.q_norm = nn.Parameter(torch.ones(self.head_dim))
        inv_freq = _inv_freq(cfg, layer_idx)
        if inv_freq is None:
            inv_freq = default_inv_freq(self.head_dim, cfg.rope(layer_idx)[0])
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)  # the name keeps it float32 (cast_model)
        self.sdpa = ScaledDotProductAttention(causal=True, window=self.window, scale=1.0,
                                              num_query_heads=cfg.num_heads, num_kv_heads=self.num_kv_heads)

    def inv_freq(self) -> torch.Tensor:
        return self.rope_inv_freq

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor):
        q = self.q_proj(x).unflatten(-1, (self.num_query_heads, self.head_dim)).transpose(1, 2)  # [B, H, S, D]
        q = apply_rope(rms_norm_heads(q, self.q_norm, self.eps), positions, self.rope_inv_freq)
        # bottom-right causal: the keys are the source layer's present (past + these S tokens)
        out = self.sdpa(q, key, value)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class Gemma4Experts(MixtureOfExperts):
    """transformers' Gemma 4 MoE block: its router (weightless RMS norm, times `scale` and hidden^-0.5, softmax over
    the projection `proj`, top-k renormalised, times the chosen experts' `per_expert_scale`) weighs GeGLU experts run
    on their own normed input (`pre_norm`); the experts as models.moe runs them (gathered per token in decode)."""

    def __init__(self, cfg: Gemma4Config):
        e, h = cfg.num_experts, cfg.hidden
        super().__init__(h, e, cfg.experts_per_token, cfg.expert_intermediate, cfg.activation)
        self.router = None  # Gemma 4 routes through `proj` after its own norm and scale
        self.eps = cfg.rms_norm_eps
        self.proj = nn.Linear(h, e, bias=False)
        self.scale = nn.Parameter(torch.ones(h))
        self.per_expert_scale = nn.Parameter(torch.ones(e))
        self.pre_norm = RMSNorm(h, cfg.rms_norm_eps)  # transformers' pre_feedforward_layernorm_2

    def route(self, tokens: torch.Tensor) -> torch.Tensor:
        h = rms_norm_heads(tokens.float(), None, self.eps).to(tokens.dtype) * self.scale * tokens.shape[-1] ** -0.5
        probs = torch.softmax(self.proj(h).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True) * self.per_expert_scale[chosen].float()
        return torch.zeros_like(probs).scatter(-1, chosen, weights)  # [T, experts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        return self.mix(self.pre_norm(tokens), self.route(tokens)).reshape(x.shape)


class Gemma4Block(nn.Module):
    def __init__(self, cfg: Gemma4Config, layer_idx: int):
        super().__init__()
        self.kv_source = cfg.kv_source(layer_idx)
        norm = lambda dim: RMSNorm(dim, cfg.rms_norm_eps)  # noqa: E731  (Gemma 4 scales by the weight itself)
        self.input_norm, self.post_attn_norm = norm(cfg.hidden), norm(cfg.hidden)
        self.pre_mlp_norm, self.post_mlp_norm = norm(cfg.hidden), norm(cfg.hidden)
        shared = self.kv_source is not None
        self.attn = Gemma4SharedAttention(cfg, layer_idx) if shared else Gemma4Attention(cfg, layer_idx)
        wide = 2 if cfg.double_wide_mlp and shared else 1
        self.mlp = SwiGLU(cfg.hidden, cfg.intermediate * wide, False, cfg.activation)
        if cfg.per_layer_hidden:
            self.act = ACTIVATIONS[cfg.activation]
            self.per_layer_input_gate = nn.Linear(cfg.hidden, cfg.per_layer_hidden, bias=False)
            self.per_layer_projection = nn.Linear(cfg.per_layer_hidden, cfg.hidden, bias=False)
            self.post_per_layer_input_norm = norm(cfg.hidden)
        if cfg.num_experts:
            self.experts = Gemma4Experts(cfg)
            self.post_mlp_norm_1, self.post_mlp_norm_2 = norm(cfg.hidden), norm(cfg.hidden)
        self.layer_scalar = nn.Parameter(torch.ones(1))

    def forward(self, x, per_layer_input=None, shared_kv=None, positions=None, **kv):
        if shared_kv is not None:
            h, present = self.attn(self.input_norm(x), *shared_kv, positions), None
        else:
            h, present = self.attn(self.input_norm(x), return_present=True, **kv)
        x = x + self.post_attn_norm(h)
        h = self.mlp(self.pre_mlp_norm(x))
        if hasattr(self, "experts"):  # routed on the MLP's input before its norm, as transformers
            h = self.post_mlp_norm_1(h) + self.post_mlp_norm_2(self.experts(x))
        x = x + self.post_mlp_norm(h)
        if per_layer_input is not None:
            h = self.per_layer_projection(self.act(self.per_layer_input_gate(x)) * per_layer_input)
            x = x + self.post_per_layer_input_norm(h)
        return x * self.layer_scalar, present


class Gemma4Model(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM; one cache slot per layer that is not KV-shared) -> logits."""

    embed, head = Gemma3Model.embed, Gemma3Model.head  # scaled embeddings; tied output, final soft-cap

    def __init__(self, cfg: Gemma4Config):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Gemma4Block(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        if cfg.per_layer_hidden:
            self.embed_tokens_per_layer = nn.Embedding(cfg.per_layer_vocab, cfg.num_layers * cfg.per_layer_hidden)
            self.per_layer_model_projection = nn.Linear(cfg.hidden, cfg.num_layers * cfg.per_layer_hidden, bias=False)
            self.per_layer_projection_norm = RMSNorm(cfg.per_layer_hidden, cfg.rms_norm_eps)
        if cfg.num_kv_shared_layers:
            # the shared layers attend over whole present sequences (bottom-right causal), not shared buffers
            self.cache_modes = ("concat",)

    def attention_layers(self) -> list[GroupedQueryAttention]:
        """The layers with a KV cache (the shared ones have none)."""
        return [layer.attn for layer in self.layers if layer.kv_source is None]

    def per_layer_inputs(self, input_ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """[B, S, layers, per_layer_hidden]: the per-layer token embedding (scaled by sqrt(width)) and the projected
        embeddings x (scaled by hidden^-0.5, normed), averaged by 2^-0.5 as transformers does."""
        cfg = self.config
        if not cfg.per_layer_hidden:
            return None
        shape = (*input_ids.shape, cfg.num_layers, cfg.per_layer_hidden)
        weight = self.embed_tokens_per_layer.weight
        tokens = self.embed_tokens_per_layer(input_ids) * torch.tensor(cfg.per_layer_hidden ** 0.5, dtype=weight.dtype)
        projected = self.per_layer_projection_norm((self.per_layer_model_projection(x) * cfg.hidden ** -0.5)
                                                   .reshape(shape))
        return (projected + tokens.reshape(shape)) * 2.0 ** -0.5

    def forward(self, input_ids: torch.Tensor, past_key_values=None, past_lengths: torch.Tensor | None = None, *,
                cache=None, logits_to_keep: int = 0):
        """CausalLM's forward, with per-layer inputs, and KV-shared layers reading their source layer's present."""
        name = type(self).__name__
        if cache is not None and past_key_values is not None:
            raise ValueError(f"{name}: pass either cache or past_key_values, not both")
        if past_lengths is not None and (past_key_values is None or "shared" not in self.cache_modes):
            raise ValueError(f"{name}: past_lengths needs past_key_values (the shared buffers), and a model without "
                             f"KV-shared layers")
        slots = len(self.attention_layers())
        if past_key_values is not None and len(past_key_values) != slots:
            raise ValueError(f"{name}: past_key_values has {len(past_key_values)} layers, the model caches {slots}")
        b, s = input_ids.shape
        if past_lengths is not None:
            offsets = past_lengths.to(torch.int64)[:, None]
        elif past_key_values is not None:
            offsets = past_key_values[0][0].shape[2]
        else:
            offsets = cache.length(0) if cache is not None else 0  # layer 0 always has its own cache
        if not _exporting():
            self.check_length((int(offsets.max()) if torch.is_tensor(offsets) else offsets) + s)
        positions = torch.arange(s, device=input_ids.device)[None, :] + offsets
        x = self.embed(input_ids, positions)
        per_layer = self.per_layer_inputs(input_ids, x)
        presents, stored = [], {}
        for i, layer in enumerate(self.layers):
            extra = dict(per_layer_input=per_layer[:, :, i] if per_layer is not None else None)
            if layer.kv_source is not None:
                x, _ = layer(x, shared_kv=stored[layer.kv_source], positions=positions, **extra)
                continue
            if past_key_values is not None:
                past_key, past_value = past_key_values[len(presents)]
                kv = dict(past_key=past_key, past_value=past_value, past_lengths=past_lengths)
            else:
                kv = dict(cache=cache)
            x, stored[i] = layer(x, **kv, **extra)
            presents.append(stored[i])
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.head(x)
        return logits if past_key_values is None else (logits, tuple(presents))


@register("gemma4", Gemma4Config)
def build_gemma4(cfg: Gemma4Config) -> Gemma4Model:
    """Deterministic random weights, as the other registered models'."""
    model = init_weights(Gemma4Model(cfg), cfg.seed)
    with torch.no_grad():  # as Gemma 3's: scaled by sqrt(hidden) and tied to the output
        model.embed_tokens.weight.mul_(0.25)
    return model
