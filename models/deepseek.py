"""DeepSeek-V3-style decoder: multi-head latent attention (MLA), pre-norm RMSNorm blocks, a SwiGLU MLP in the
first `first_dense_layers` layers and DeepSeek-V3's mixture of experts (MoE) in the others. DeepSeek-V2 is the same
model with its own router (router_scoring "softmax", group_score "max", see below).

Each layer caches only the normalised latent c_kv [B, 1, P, R] and the rope keys [B, 1, P, Dr] (the
[B, Hkv=1, P, .] layout of the other decoders' caches, so export_model and generate serve it unchanged:
past_key_values.{i}.key is the latent, .value the rope keys). Optional low-rank query path, YaRN RoPE with
DeepSeek's softmax scale (mscale^2 / sqrt(Dn + Dr)), interleaved rope pairs as the checkpoints store them.

The MoE is DeepSeek-V3's (models.moe with sigmoid scoring): sigmoid router scores, a per-expert bias
(e_score_correction_bias) added for the choice only, group-limited top-k (experts_per_token among the experts
of the groups_per_token best of num_groups groups, a group scored by the sum of its two best experts), the
chosen scores renormalised (norm_topk) and scaled (routed_scaling), plus always-on shared experts. DeepSeek-V2's
router: softmax scores without a bias, groups scored by their best expert (its group_limited_greedy; one group is
its greedy), the chosen scores scaled, not renormalised. Every expert runs on every token (exact and exportable;
see models.moe). Multi-token prediction (MTP) is not modelled. MiniCPM3 is this decoder without experts, with
Granite-like multipliers (embedding_multiplier, residual_multiplier, logits_scaling; all off by default).
LongCat-Flash is it with layers in pairs and experts beside the MLPs (shortcut_moe: a pair is one transformers
layer), a choice-biased softmax router and zero-computation (identity) experts. Mistral 4 is it with V3's group
scoring on softmax scores (no bias) and Ministral 3's per-position query scale (query_scale_beta, ScaledQueryMLA).
A.X-K1 is it with an RMSNorm on each MoE block's output (moe_output_norm).

DeepSeek-V3.2 is V3 with its sparse attention (DSA, index_topk > 0): in each layer a LightningIndexer (onnxattn.nn;
its scores and top-k export as one LightningIndexer node) picks every query's index_topk keys, fed to the layer's
one MultiHeadLatentAttention node as key_indices. The indexer's keys are a third cache tensor per layer (cache_layout
"index_key" [B, 1, P, index_head_dim]; exported as past_key_values.{i}.index_key / present.{i}.index_key, in both
cache modes), so a decode step computes only its new tokens' index keys. GLM-5 is it with the indexer's RoPE on
interleaved pairs and `index_shared_layers` that run no indexer (and cache no index keys) but reuse the previous
layer's picks."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import PlainFrameLM, RMSNorm, check_activation, init_weights
from onnxattn.models.llama import QueryScale, SwiGLU
from onnxattn.models.moe import MixtureOfExperts, check_moe
from onnxattn.nn import LightningIndexer, MultiHeadLatentAttention, Rope, RopeScaling


@dataclasses.dataclass(frozen=True)
class DeepSeekV3Config:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    q_rank: int | None = 48  # None: one query projection (DeepSeek-V2-Lite)
    kv_rank: int = 32  # R
    nope_head_dim: int = 16  # Dn
    rope_head_dim: int = 8  # Dr
    v_head_dim: int = 16  # Dv
    intermediate: int = 128  # the dense MLP's (the first `first_dense_layers` layers)
    # mixture of experts (transformers' DeepseekV3Config names in brackets)
    num_experts: int = 8  # routed experts [n_routed_experts]; 0: every layer has the dense MLP
    experts_per_token: int = 2  # [num_experts_per_tok]
    moe_intermediate: int = 32  # each expert's SwiGLU width [moe_intermediate_size]
    num_shared_experts: int = 1  # one SwiGLU of width moe_intermediate * this, on every token [n_shared_experts]
    first_dense_layers: int = 1  # [first_k_dense_replace]
    num_groups: int = 4  # expert groups [n_group]
    groups_per_token: int = 2  # groups a token's experts come from [topk_group]
    routed_scaling: float = 2.5  # [routed_scaling_factor]
    norm_topk: bool = True  # the chosen experts' weights sum to 1 before the scaling [norm_topk_prob]
    router_scoring: str = "sigmoid"  # "softmax": DeepSeek-V2's router (no choice bias)
    group_score: str = "top2_sum"  # a group's score: its two best experts' sum (V3) or its best ("max": V2)
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # YaRN for DeepSeek-V3 (factor 40, original 4096)
    mscale_all_dim: float = 0.0  # YaRN: softmax scale times (0.1 * mscale_all_dim * ln(factor) + 1)^2
    rope_interleaved: bool = True
    attention_bias: bool = False  # biases on W_DQ, the joint KV down-projection and W_O
    rms_norm_eps: float = 1e-6
    latent_norm_eps: float = 1e-6  # the RMSNorms on the query and KV latents (DeepSeek fixes them at 1e-6)
    activation: str = "silu"
    tie_embeddings: bool = False
    # MiniCPM3 (all off by default): token embeddings times embedding_multiplier [scale_emb], each block's attention
    # and MLP outputs times residual_multiplier before the residual add [scale_depth / sqrt(num_hidden_layers)], the
    # final normed hidden states divided by logits_scaling before lm_head [hidden_size / dim_model_base]
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0
    # LongCat-Flash (all off by default): layers in pairs, each with its dense MLP; the first of a pair also runs the
    # experts on its MLP input and their output joins the second's residual at its end (shortcut_moe; first_dense_layers
    # has no role then). The softmax router's choice adds e_score_correction_bias (router_choice_bias), and
    # identity_experts zero-computation experts (see models.moe) are chosen beside the num_experts MLP experts
    shortcut_moe: bool = False
    router_choice_bias: bool = False
    identity_experts: int = 0
    # Mistral 4 (Ministral 3's / Llama 4's attention temperature): q times 1 + beta * log(1 + floor(position / period))
    # in torch before the node (see ScaledQueryMLA) [rope_parameters' llama_4_scaling_beta,
    # original_max_position_embeddings]; 0: off
    query_scale_beta: float = 0.0
    query_scale_period: int = 1
    # A.X-K1 (off by default): an RMSNorm (rms_norm_eps) on each MoE block's output, routed plus shared experts,
    # before the residual add [its MoE's post_mlp_layernorm]; the dense MLPs have none
    moe_output_norm: bool = False
    # DeepSeek-V3.2's sparse attention (DSA; 0: off): each layer's LightningIndexer (index_n_heads heads of
    # index_head_dim, RoPE on its first rope_head_dim channels) picks index_topk keys per query; needs q_rank
    index_topk: int = 0
    index_n_heads: int = 4
    index_head_dim: int = 16
    index_rope_interleaved: bool = False  # GLM-5's indexer rotates interleaved pairs, DeepSeek-V3.2's half-split
    index_shared_layers: tuple[int, ...] = ()  # GLM-5: layers without an indexer, reusing the previous layer's picks
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_activation(self.activation, name)
        for label in ("num_heads", "kv_rank", "nope_head_dim", "v_head_dim", "hidden", "num_layers"):
            if getattr(self, label) < 1:
                raise ValueError(f"{name}: {label} must be >= 1, got {getattr(self, label)}")
        if self.rope_head_dim < 2 or self.rope_head_dim % 2:
            raise ValueError(f"{name}: rope_head_dim must be even and >= 2, got {self.rope_head_dim}")
        if self.q_rank is not None and self.q_rank < 1:
            raise ValueError(f"{name}: q_rank must be >= 1 or None, got {self.q_rank}")
        if self.num_experts < 0 or self.first_dense_layers < 0 or self.num_shared_experts < 0:
            raise ValueError(f"{name}: num_experts, first_dense_layers and num_shared_experts must be >= 0, got "
                             f"{self.num_experts}, {self.first_dense_layers}, {self.num_shared_experts}")
        for label in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            if not math.isfinite(getattr(self, label)):
                raise ValueError(f"{name}: {label} must be finite, got {getattr(self, label)}")
        if not math.isfinite(self.query_scale_beta) or self.query_scale_period < 1:
            raise ValueError(f"{name}: query_scale_beta must be finite and query_scale_period >= 1, got "
                             f"{self.query_scale_beta} and {self.query_scale_period}")
        if self.logits_scaling == 0:
            raise ValueError(f"{name}: logits_scaling divides the hidden states; it must not be 0")
        if self.shortcut_moe and (not self.num_experts or self.num_layers % 2):
            raise ValueError(f"{name}: shortcut_moe needs num_experts >= 1 and an even num_layers (pairs), got "
                             f"{self.num_experts} and {self.num_layers}")
        if self.num_experts:
            self._check_moe(name)
        if self.index_topk:
            self._check_index(name)
        elif self.index_shared_layers:
            raise ValueError(f"{name}: index_shared_layers needs the indexer (index_topk >= 1)")

    def _check_index(self, name: str) -> None:
        if self.index_topk < 0 or self.index_n_heads < 1 or self.index_head_dim < self.rope_head_dim:
            raise ValueError(f"{name}: the indexer needs index_topk >= 1 (0: off), index_n_heads >= 1 and "
                             f"index_head_dim >= rope_head_dim ({self.rope_head_dim}), got {self.index_topk}, "
                             f"{self.index_n_heads} and {self.index_head_dim}")
        if self.q_rank is None:
            raise ValueError(f"{name}: the indexer reads the query latent; it needs q_rank")
        if self.query_scale_beta or self.shortcut_moe:
            raise ValueError(f"{name}: the indexer (index_topk) does not combine with query_scale_beta or shortcut_moe")
        if self.rope_scaling is not None and self.rope_scaling.kind == "longrope":
            raise ValueError(f"{name}: the indexer does not support LongRoPE")
        shared = set(self.index_shared_layers)
        if not shared <= set(range(1, self.num_layers)):
            raise ValueError(f"{name}: index_shared_layers must be in [1, num_layers) (layer 0 has no previous "
                             f"picks to reuse), got {sorted(shared)}")

    def _check_moe(self, name: str) -> None:
        check_moe(name, num_experts=self.num_experts + self.identity_experts, experts_per_token=self.experts_per_token,
                  intermediate=self.moe_intermediate, scoring=self.router_scoring, num_groups=self.num_groups,
                  groups_per_token=self.groups_per_token, group_score=self.group_score)

    def is_moe(self, layer: int) -> bool:
        """Whether the layer's MLP is the experts (with shortcut_moe every MLP is dense, the experts beside it)."""
        return self.num_experts > 0 and layer >= self.first_dense_layers and not self.shortcut_moe

    @property
    def softmax_scale(self) -> float | None:
        """DeepSeek's score scale: 1/sqrt(Dn + Dr), times mscale^2 with YaRN (None: the op's default)."""
        s = self.rope_scaling
        if s is None or s.kind != "yarn" or not self.mscale_all_dim or s.factor <= 1:
            return None
        mscale = 0.1 * self.mscale_all_dim * math.log(s.factor) + 1.0
        return mscale * mscale / math.sqrt(self.nope_head_dim + self.rope_head_dim)


class DeepSeekMoE(MixtureOfExperts):
    """DeepSeek's routed experts (V3's or V2's router, group limit) plus `shared_experts` (a SwiGLU on every
    token, None when num_shared_experts = 0), then `output_norm` on their sum (A.X-K1's; None unless
    moe_output_norm)."""

    def __init__(self, cfg: DeepSeekV3Config):
        super().__init__(cfg.hidden, cfg.num_experts, cfg.experts_per_token, cfg.moe_intermediate, cfg.activation,
                         scoring=cfg.router_scoring, norm_topk=cfg.norm_topk, routed_scaling=cfg.routed_scaling,
                         num_groups=cfg.num_groups, groups_per_token=cfg.groups_per_token,
                         group_score=cfg.group_score, choice_bias=cfg.router_choice_bias,
                         identity_experts=cfg.identity_experts)
        self.shared_experts = (SwiGLU(cfg.hidden, cfg.moe_intermediate * cfg.num_shared_experts, False, cfg.activation)
                               if cfg.num_shared_experts else None)
        self.output_norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps) if cfg.moe_output_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        out = out if self.shared_experts is None else out + self.shared_experts(x)
        return out if self.output_norm is None else self.output_norm(out)


class ScaledQueryMLA(MultiHeadLatentAttention):
    """MultiHeadLatentAttention with Mistral 4's per-position scale of q (`query_scale`, a QueryScale), applied in torch
    to the projected query before the node: a factor per token commutes with the node's RoPE and multiplies both the
    nope and rope channels, as transformers scales the query after RoPE. The positions are the node's own
    (token_positions: position_ids, else past length + index, per row with shared buffers' past_lengths)."""

    def __init__(self, *args, query_scale: QueryScale, **kwargs):
        super().__init__(*args, **kwargs)
        self.query_scale = query_scale

    def project(self, x):
        q, latent, k_rope = super().project(x)
        return q * self.query_scale(self.token_positions()).unsqueeze(-1).to(q.dtype), latent, k_rope


class IndexedMLA(MultiHeadLatentAttention):
    """DeepSeek-V3.2's attention: MLA whose keys per query the layer's LightningIndexer picks (the node's
    key_indices), or in GLM-5's shared layers (indexer None) the previous layer's picks (forward's `picks`). The
    indexer reads the query latent q_a_norm(q_a_proj(x)) the MLA's query comes from: computed once, reused by
    project (query_latent)."""

    def __init__(self, *args, indexer: LightningIndexer | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.indexer, self._q_resid = indexer, None

    def query_latent(self, x):
        return super().query_latent(x) if self._q_resid is None else self._q_resid

    def forward(self, x, *, cache=None, past_index_key=None, past_lengths=None, picks=None, return_present=False,
                **kwargs):
        """As MultiHeadLatentAttention's, plus the index keys: `past_index_key` [B, 1, P, index_head_dim] (buffers
        with past_lengths), or this layer's ("index_key", layer_idx) slot of `cache`. Returns (output, picks), with
        `return_present` (output, present, picks), the present (latent, rope keys, index keys) where this layer has
        an indexer."""
        index_present = q_resid = None
        if self.indexer is None:
            if picks is None:
                raise ValueError(f"{type(self).__name__}: a layer without an indexer needs the previous layer's picks")
        else:
            if cache is not None:  # a slot of its own, truncated with the latents (KVCache.truncate)
                past_index_key = cache.get(("index_key", self.layer_idx))[0]
            q_resid = self.query_latent(x)
            picks, index_present = self.indexer(x, q_resid, past_keys=past_index_key, past_lengths=past_lengths)
            if cache is not None:
                cache.update(("index_key", self.layer_idx), index_present, index_present)
        self._q_resid = q_resid  # project's query_latent reuses it (None: a layer without an indexer computes it)
        try:
            out = super().forward(x, cache=cache, past_lengths=past_lengths, key_indices=picks,
                                  return_present=return_present, **kwargs)
        finally:
            self._q_resid = None
        if not return_present:
            return out, picks
        return out[0], out[1] if index_present is None else (*out[1], index_present), picks


class DeepSeekBlock(nn.Module):
    def __init__(self, cfg: DeepSeekV3Config, layer_idx: int):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        scaled = dict(query_scale=QueryScale(cfg.query_scale_beta, cfg.query_scale_period)) \
            if cfg.query_scale_beta else {}
        if cfg.index_topk:  # DeepSeek-V3.2's DSA (no query scale: refused by the config)
            indexer = None if layer_idx in cfg.index_shared_layers else LightningIndexer(
                cfg.hidden, cfg.q_rank, cfg.index_n_heads, cfg.index_head_dim, cfg.rope_head_dim, cfg.index_topk,
                rope=Rope(cfg.rope_theta, interleaved=cfg.index_rope_interleaved, scaling=cfg.rope_scaling))
            scaled = dict(indexer=indexer)
        self.indexed = bool(cfg.index_topk)
        # GLM-5: a layer without an indexer gets the previous layer's picks with x (the blocks pass one value)
        self.takes_picks = self.indexed and layer_idx in cfg.index_shared_layers
        self.passes_picks = self.indexed and layer_idx + 1 in cfg.index_shared_layers
        self.attn = (IndexedMLA if self.indexed else ScaledQueryMLA if scaled else MultiHeadLatentAttention)(
            cfg.hidden, cfg.num_heads, kv_rank=cfg.kv_rank, q_rank=cfg.q_rank, nope_head_dim=cfg.nope_head_dim,
            rope_head_dim=cfg.rope_head_dim, v_head_dim=cfg.v_head_dim,
            rope=Rope(cfg.rope_theta, interleaved=cfg.rope_interleaved, scaling=cfg.rope_scaling),
            scale=cfg.softmax_scale, norm_eps=cfg.latent_norm_eps, bias=cfg.attention_bias, layer_idx=layer_idx,
            **scaled)
        if cfg.attention_bias:  # the module's `bias` covers the down-projections; DeepSeek's W_O has one too
            self.attn.o_proj = nn.Linear(cfg.num_heads * cfg.v_head_dim, cfg.hidden, bias=True)
        self.post_attn_norm = RMSNorm(cfg.hidden, cfg.rms_norm_eps)
        self.mlp = DeepSeekMoE(cfg) if cfg.is_moe(layer_idx) else SwiGLU(cfg.hidden, cfg.intermediate, False,
                                                                         cfg.activation)
        self.residual_multiplier, self.hidden = cfg.residual_multiplier, cfg.hidden
        # LongCat-Flash: the first of a pair runs the experts beside its MLP, the second adds their output
        self.shortcut = DeepSeekMoE(cfg) if cfg.shortcut_moe and layer_idx % 2 == 0 else None
        self.adds_shortcut = cfg.shortcut_moe and layer_idx % 2 == 1

    def residual(self, h):
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier

    def forward(self, x, *, cache=None, past_key=None, past_value=None, past_lengths=None, past_index_key=None):
        if self.adds_shortcut:  # the pair's first layer passes [x | the experts' output] (see below)
            x, shortcut = x.split([self.hidden, self.hidden], dim=-1)
        # the decoder base passes the per-layer cache as (key, value): here (latent, rope keys), + the index keys
        picks = None
        if self.takes_picks:
            x, picks = x
        index = dict(past_index_key=past_index_key, picks=picks) if self.indexed else {}
        h, present, *picked = self.attn(self.input_norm(x), cache=cache, past_latent=past_key, past_k_rope=past_value,
                                        past_lengths=past_lengths, return_present=True, **index)
        x = x + self.residual(h)
        normed = self.post_attn_norm(x)
        x = x + self.residual(self.mlp(normed))
        if self.shortcut is not None:  # carried to the next layer with x: the blocks pass one tensor
            return torch.cat([x, self.shortcut(normed)], dim=-1), present
        if self.passes_picks:
            return (x, picked[0]), present
        return (x + shortcut if self.adds_shortcut else x), present


class DeepSeekV3Model(PlainFrameLM):
    """token ids [B, S] (+ latent cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: DeepSeekV3Config):
        super().__init__(cfg, DeepSeekBlock)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids, positions):
        x = self.embed_tokens(input_ids)
        m = self.config.embedding_multiplier
        return x if m == 1.0 else x * m

    def head(self, x):
        x = self.norm(x)
        s = self.config.logits_scaling
        return self.lm_head(x if s == 1.0 else x / s)  # before the head, as MiniCPM3

    def kv_shapes(self) -> list[tuple[int, int, int]]:
        """Per layer (1, R, Dr): the latent cache [B, 1, P, R] and the rope keys [B, 1, P, Dr]."""
        return [(1, layer.attn.kv_rank, layer.attn.rope_head_dim) for layer in self.layers]

    def cache_layout(self) -> list[dict[str, tuple[int, int]]]:
        """The latents as key and value, and with DSA the layer's index keys [B, 1, P, index_head_dim]."""
        layout = super().cache_layout()
        for entry, layer in zip(layout, self.layers):
            indexer = getattr(layer.attn, "indexer", None)
            if indexer is not None:
                entry["index_key"] = (1, indexer.head_dim)
        return layout


@dataclasses.dataclass(frozen=True)
class DeepSeekV32Config(DeepSeekV3Config):
    """DeepSeek-V3.2 (DSA) as DeepSeekV3Config options, tiny: every layer's lightning indexer (one LightningIndexer
    node) picks index_topk keys per query for its MultiHeadLatentAttention (key_indices). DeepSeek-V3.2: 64 index
    heads of 128, index_topk 2048."""

    index_topk: int = 8  # below a short prompt's length, so the picks drop keys


@register("deepseek-v3", DeepSeekV3Config)
def build_deepseek_v3(cfg: DeepSeekV3Config) -> DeepSeekV3Model:
    model = init_weights(DeepSeekV3Model(cfg), cfg.seed)
    # init_weights scales matrices by 1/sqrt(their last dim); W_UK/W_UV [H, R, D] map R -> D, so 1/sqrt(R)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        for layer in model.layers:
            for w in (layer.attn.w_uk, layer.attn.w_uv):
                w.copy_(torch.randn(w.shape, generator=g) / math.sqrt(w.shape[1]))
        # the routers' choice biases (buffers, zero after init_weights): DeepSeek-V3 learns them
        g = torch.Generator().manual_seed(cfg.seed + 2)
        for layer in model.layers:
            moe = layer.shortcut if layer.shortcut is not None else layer.mlp
            if isinstance(moe, DeepSeekMoE) and moe.e_score_correction_bias is not None:
                bias = moe.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return model


register("deepseek-v3.2", DeepSeekV32Config)(build_deepseek_v3)  # the same model; build() matches the exact class
