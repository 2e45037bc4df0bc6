"""Llama-style decoder: GQA + RoPE + RMSNorm + SwiGLU, pre-norm. Options cover its close relatives:
Mistral (sliding window), Qwen2 (Q/K/V biases), Qwen3 (QK-norm, head dim != hidden / heads), Phi-3 (partial
rotary: rotary_dim), scaled RoPE (linear, Llama 3, YaRN, LongRoPE), tied embeddings, per-layer full/sliding attention
(layer_types), and a mixture of experts in place of the MLP (Mixtral, Qwen3-MoE: num_experts > 0, see
models.moe; dense_layers keep the MLP; Qwen2-MoE adds a gated shared expert). Further options, all off by default:
layers without RoPE (SmolLM3's NoPE layers), Granite's multipliers (embeddings, residual branches, attention scale,
logits), OLMo 2's RMSNorm over the whole Q / K projections and its post-norm blocks, GLM-4's sandwich norms (pre-
and post-norms), OLMo's clamp of Q / K / V (clip_qkv) and its LayerNorm without weight or bias, a LayerNorm over
each head of Q / K (Cohere's use_qk_norm, Phi's qk_layernorm, StableLM's), Starcoder2's LayerNorm (Cohere's without
bias) and ungated MLP (Nemotron's squared ReLU), and the parallel blocks of GPT-NeoX / GPT-J / Phi / Cohere / StableLM
(attention and MLP both read the block input; one shared norm or two), interleaved RoPE pairs (GPT-J, Cohere, GLM,
ERNIE 4.5, Helium), a biased output projection, and GPT-OSS's attention
sinks (a learned logit per query head in each softmax's denominator) and experts (router and expert biases, clamped
SwiGLU: models.moe.ClampedSwiGLU), GLM-4.5's routing (DeepSeek-V3's: routed_scaling, num_groups, an ungated shared
expert), Ministral 3's per-position scale of q (query_scale_beta) and OLMo 3's RoPE for the sliding layers
(sliding_rope), and Llama 4's chunked attention (attention_chunk on the "chunked_attention" layers), QK-norm on
some layers only (qk_norm_layers), attention temperature (the query scale at cache positions, offset by one, on
some layers: query_scale_cache_positions, query_scale_offset, query_scale_layers) and experts that weigh their
inputs (expert_input_scaling), ERNIE 4.5 MoE's routing (router_choice_bias, router_norm_min, shared_expert_bias)
and PhiMoE's SparseMixer (router_scoring "sparsemixer", router_jitter_eps), DBRX's p-norm renormalisation
(router_norm_p), Cohere 2 MoE's averaged shared expert (shared_expert_average), Hunyuan's QK-norm after RoPE (both in
torch before a node without RoPE: qk_norm_after_rope) and AFMoE's per-channel sigmoid gate on the attention output
(attention_output_gate), NanoChat's norm of the embeddings and final soft-cap (embedding_norm, final_logit_softcap)
and Apertus 1.5's pruned lm_head (output_vocab_size), MiMo-V2-Flash's value heads narrower than its query / key heads
(v_head_dim), KV heads per layer (layer_kv_heads) and sinks on some layers only (sink_layers), Laguna's query heads
per layer (layer_heads), the sliding layers' own rotary dim (sliding_rotary_dim), its softplus output gate, one per
head (output_gate_softplus, output_gate_per_head) and soft-capped router logits (router_logit_softcap). GptOssConfig
("gpt-oss" in the registry) sets those options for a tiny GPT-OSS."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from onnxattn.models import register
from onnxattn.models._base import (ACTIVATIONS, CausalLM, RMSNorm, SwiGLU, check_activation, check_heads,
                                   init_weights)
from onnxattn.models.moe import ClampedSwiGLU, MixtureOfExperts, check_moe
from onnxattn.nn import GroupedQueryAttention, Rope, RopeScaling
from onnxattn.nn.reference import apply_rope, rms_norm_heads

LAYER_TYPES = ("full_attention", "sliding_attention")
LLAMA_LAYER_TYPES = (*LAYER_TYPES, "chunked_attention")  # Llama 4's chunked layers (ModernBERT's are LAYER_TYPES)
NORMS = ("rms", "layer", "layer_no_bias", "layer_no_affine")
QK_LAYER_NORMS = ("shared", "per_head")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    hidden: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None  # None: hidden / num_heads
    intermediate: int = 128
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rotary_dim: int | None = None  # None: the whole head; Phi-3 / Phi-4-mini rotate the leading channels only
    rms_norm_eps: float = 1e-5  # every norm's epsilon (LayerNorm's too, norm="layer")
    qkv_bias: bool = False  # Qwen2
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3
    sliding_window: int = 0  # Mistral; applies to the layers typed "sliding_attention"
    layer_types: tuple[str, ...] | None = None  # None: all sliding when sliding_window > 0, else all full
    activation: str = "silu"
    tie_embeddings: bool = False
    # mixture of experts (transformers' Mixtral / Qwen3-MoE config names in brackets)
    num_experts: int = 0  # 0: the dense SwiGLU in every layer [num_local_experts / num_experts]
    experts_per_token: int = 2  # [num_experts_per_tok]
    moe_intermediate: int | None = None  # each expert's width; None: intermediate [moe_intermediate_size]
    router_scoring: str = "softmax"  # or "sigmoid" (see models.moe)
    norm_topk: bool = True  # the chosen experts' weights sum to 1 (Mixtral always) [norm_topk_prob]
    dense_layers: tuple[int, ...] = ()  # layers that keep the dense MLP [mlp_only_layers, decoder_sparse_step]
    shared_expert_intermediate: int = 0  # > 0: Qwen2-MoE's gated shared expert [shared_expert_intermediate_size]
    # GLM-4.5 (DeepSeek-V3's routing; see models.moe): weights times routed_scaling, experts from the
    # groups_per_token best of num_groups groups, the shared expert added ungated
    routed_scaling: float = 1.0  # [routed_scaling_factor]
    num_groups: int = 1  # [n_group]
    groups_per_token: int = 1  # [topk_group]
    shared_expert_gated: bool = True
    # ERNIE 4.5 MoE: the choice bias steers softmax routing too (e_score_correction_bias), the chosen weights' sum is
    # clamped to >= router_norm_min (0: an epsilon added instead), the shared expert has biases [moe_norm_min, use_bias]
    router_choice_bias: bool = False
    router_norm_min: float = 0.0
    shared_expert_bias: bool = False
    # PhiMoE (router_scoring "sparsemixer"): its relative threshold [router_jitter_noise]
    router_jitter_eps: float = 0.0
    nope_layers: tuple[int, ...] = ()  # layers without RoPE (SmolLM3's NoPE layers)
    # Granite
    attention_scale: float | None = None  # None: 1/sqrt(head_dim) [attention_multiplier]
    embedding_multiplier: float = 1.0  # token embeddings times this
    residual_multiplier: float = 1.0  # each block's attention and MLP outputs times this, before the residual add
    logits_scaling: float = 1.0  # logits divided by this
    # OLMo 2
    qk_proj_norm: bool = False  # RMSNorm over the whole q_proj / k_proj outputs (all heads at once), before RoPE
    post_norm: bool = False  # norm the attention / MLP outputs inside the residual instead of their inputs
    # GLM-4: pre-norm blocks whose attention / MLP outputs are normed too, inside the residual (attn_out_norm,
    # post_mlp_norm): "sandwich" norms, four per block
    sandwich_norm: bool = False
    # OLMo, OLMoE: q, k and v clamped to [-clip_qkv, clip_qkv] before the node (after qk_proj_norm) [clip_qkv]
    clip_qkv: float | None = None
    # Phi (qk_layernorm), Cohere (use_qk_norm): a LayerNorm over each head of q_proj / k_proj, before RoPE. "shared":
    # one weight and bias [head_dim] for all heads (Phi); "per_head": a weight per head [heads, head_dim], no bias
    qk_layer_norm: str | None = None
    # Starcoder2
    norm: str = "rms"  # or "layer": LayerNorm with bias; "layer_no_bias": without (Cohere); "layer_no_affine":
    # neither weight nor bias (OLMo)
    gated_mlp: bool = True  # False: the dense MLP is c_proj(act(c_fc(x)))
    # GPT-NeoX, GPT-J, Phi
    parallel_residual: bool = False  # x + attn(input_norm(x)) + mlp(post_attn_norm(x)): both branches read x
    shared_block_norm: bool = False  # with parallel_residual: the MLP reads input_norm(x) too (GPT-J, Phi)
    rope_interleaved: bool = False  # RoPE pairs channels (2i, 2i + 1) (GPT-J), not (i, i + rotary_dim / 2)
    lm_head_bias: bool = False
    # GPT-OSS
    attention_sinks: bool = False  # a learned logit per query head joins each softmax's denominator [sinks]
    router_bias: bool = False  # the MoE router adds a bias per expert
    expert_bias: bool = False  # the experts' gate_up_proj and down_proj have biases
    expert_glu: ClampedSwiGLU | None = None  # None: act(gate) * up [swiglu_alpha, swiglu_limit]
    # Ministral 3 (Llama 4's attention temperature): q times 1 + beta * log(1 + floor((position + query_scale_offset)
    # / period)), in torch before the node (a per-position factor commutes with RoPE) [llama_4_scaling_beta,
    # original_max_position_embeddings]; 0: off. See QueryScale
    query_scale_beta: float = 0.0
    query_scale_period: int = 1
    # OLMo 3: the sliding_attention layers' own RoPE (theta, scaling); None: the other layers' (rope_theta, ...)
    sliding_rope: tuple[float, RopeScaling | None] | None = None
    # Llama 4: chunked attention on the layers typed "chunked_attention" (a query sees only the keys of its own chunk
    # of attention_chunk cache positions) [attention_chunk_size]; 0: off
    attention_chunk: int = 0
    qk_norm_layers: tuple[int, ...] | None = None  # with qk_norm, the layers that have it; None: all [use_qk_norm]
    # its attention temperature is the query scale above at the cache position (past length + index, not the
    # position RoPE sees), offset by 1, on query_scale_layers only (None: all) [floor_scale, attn_scale]
    query_scale_offset: int = 0
    query_scale_cache_positions: bool = False
    query_scale_layers: tuple[int, ...] | None = None
    expert_input_scaling: bool = False  # the experts run on x times their routing weight, summed unweighted
    # DBRX: the chosen experts' weights renormalised by their p-norm (with norm_topk) [moe_normalize_expert_weights]
    router_norm_p: float = 1.0
    router_rank_by_logits: bool = False  # Llama 4: sigmoid scoring, experts ranked by the raw logits
    # Cohere 2 MoE: the shared expert's output averaged with the routed experts' [shared_expert_combination_strategy]
    shared_expert_average: bool = False
    # Hunyuan: the per-head QK-norm (qk_norm's weights) after RoPE: both in torch before the node, which gets rope=0
    # and no QK-norm (its cache then holds K rotated and normed, as transformers'). Layers without RoPE keep the op's
    qk_norm_after_rope: bool = False
    # AFMoE: the node's output times sigmoid(gate_proj(x)) per channel (gate_proj: hidden -> heads * head_dim, no
    # bias), before o_proj
    attention_output_gate: bool = False
    # NanoChat: the embeddings normed (a norm of its own, embed_norm) before the first layer; the logits soft-capped,
    # cap * tanh(logits / cap) after logits_scaling (0: off) [final_logit_softcapping]
    embedding_norm: bool = False
    final_logit_softcap: float = 0.0
    # Apertus 1.5: an lm_head pruned to the first output_vocab_size ids (None: vocab_size rows) [output_vocab_size]
    output_vocab_size: int | None = None
    # MiMo-V2-Flash: value heads of their own width (None: head_dim) [v_head_dim]; each layer's KV heads (None:
    # num_kv_heads in every layer; its sliding layers have twice its full layers'); with attention_sinks, the layers
    # that have them (None: all; its sliding layers only)
    v_head_dim: int | None = None
    layer_kv_heads: tuple[int, ...] | None = None
    sink_layers: tuple[int, ...] | None = None
    # Laguna: each layer's query heads (None: num_heads in every layer) [num_attention_heads_per_layer]; the
    # sliding_attention layers' rotary dim (None: rotary_dim) [partial_rotary_factor per layer type]; with
    # attention_output_gate, the gate by softplus instead of sigmoid, and one per head (gate_proj: hidden -> heads,
    # broadcast over the head's channels) instead of one per channel [gating]; the MoE router's logits soft-capped,
    # cap * tanh(logits / cap), before scoring (0: off) [moe_router_logit_softcapping]
    layer_heads: tuple[int, ...] | None = None
    sliding_rotary_dim: int | None = None
    output_gate_softplus: bool = False
    output_gate_per_head: bool = False
    router_logit_softcap: float = 0.0
    seed: int = 0

    def __post_init__(self):
        name = type(self).__name__
        check_heads(name, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)
        if self.activation == "xielu":  # learned per layer: a module in the ungated dense MLP (Apertus) only
            if self.gated_mlp or self.num_experts:
                raise ValueError(f"{name}: activation 'xielu' needs gated_mlp=False and no experts")
        else:
            check_activation(self.activation, name)
        if self.sliding_window < 0:
            raise ValueError(f"{name}: sliding_window must be >= 0 (0 = off), got {self.sliding_window}")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= set(LLAMA_LAYER_TYPES):
                raise ValueError(f"{name}: layer_types must list one of {LLAMA_LAYER_TYPES} per layer "
                                 f"({self.num_layers}), got {self.layer_types}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ValueError(f"{name}: sliding_attention layers need sliding_window > 0")
        elif self.sliding_window and self.attention_chunk:
            raise ValueError(f"{name}: with both sliding_window and attention_chunk, layer_types must say which "
                             f"layers have which")
        if self.attention_chunk < 0:
            raise ValueError(f"{name}: attention_chunk must be >= 0 (0 = off), got {self.attention_chunk}")
        if "chunked_attention" in self.resolved_layer_types and not self.attention_chunk:
            raise ValueError(f"{name}: chunked_attention layers need attention_chunk > 0")
        head_dim = self.resolved_head_dim
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= head_dim and self.rotary_dim % 2 == 0):
            raise ValueError(f"{name}: rotary_dim must be even and in [2, head_dim = {head_dim}], "
                             f"got {self.rotary_dim}")
        if self.num_experts < 0:
            raise ValueError(f"{name}: num_experts must be >= 0 (0 = dense MLP), got {self.num_experts}")
        if self.shared_expert_intermediate < 0:
            raise ValueError(f"{name}: shared_expert_intermediate must be >= 0 (0 = none), "
                             f"got {self.shared_expert_intermediate}")
        if self.num_experts:
            check_moe(name, num_experts=self.num_experts, experts_per_token=self.experts_per_token,
                      intermediate=self.expert_intermediate, scoring=self.router_scoring, num_groups=self.num_groups,
                      groups_per_token=self.groups_per_token, jitter_eps=self.router_jitter_eps)
        if self.layer_kv_heads is not None:
            if len(self.layer_kv_heads) != self.num_layers:
                raise ValueError(f"{name}: layer_kv_heads must list one KV head count per layer ({self.num_layers}), "
                                 f"got {self.layer_kv_heads}")
            for kv_heads in self.layer_kv_heads:
                check_heads(name, self.hidden, self.num_heads, kv_heads, self.head_dim)
        if self.v_head_dim is not None and self.v_head_dim < 1:
            raise ValueError(f"{name}: v_head_dim must be >= 1 (None: head_dim), got {self.v_head_dim}")
        for field in ("dense_layers", "nope_layers", "qk_norm_layers", "query_scale_layers", "sink_layers"):
            if not set(getattr(self, field) or ()) <= set(range(self.num_layers)):
                raise ValueError(f"{name}: {field} must be layer indices in [0, {self.num_layers}), "
                                 f"got {getattr(self, field)}")
        if self.attention_scale is not None and not 0 < self.attention_scale < math.inf:
            raise ValueError(f"{name}: attention_scale must be > 0 and finite (None: 1/sqrt(head_dim)), "
                             f"got {self.attention_scale}")
        for field in ("embedding_multiplier", "residual_multiplier", "logits_scaling", "routed_scaling"):
            if not math.isfinite(getattr(self, field)):
                raise ValueError(f"{name}: {field} must be finite, got {getattr(self, field)}")
        if self.logits_scaling == 0:
            raise ValueError(f"{name}: logits_scaling divides the logits; it must not be 0")
        if self.norm not in NORMS:
            raise ValueError(f"{name}: norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.shared_block_norm and not self.parallel_residual:
            raise ValueError(f"{name}: shared_block_norm needs parallel_residual (a sequential block's MLP reads "
                             f"the attention's output, which needs its own norm)")
        if self.qk_layer_norm is not None and self.qk_layer_norm not in QK_LAYER_NORMS:
            raise ValueError(f"{name}: qk_layer_norm must be None or one of {', '.join(QK_LAYER_NORMS)}, "
                             f"got {self.qk_layer_norm!r}")
        if self.qk_layer_norm and self.qk_proj_norm:
            raise ValueError(f"{name}: qk_layer_norm and qk_proj_norm cannot be combined")
        if self.parallel_residual and self.post_norm:
            raise ValueError(f"{name}: parallel_residual and post_norm cannot be combined")
        if self.sandwich_norm and (self.post_norm or self.parallel_residual):
            raise ValueError(f"{name}: sandwich_norm cannot be combined with post_norm or parallel_residual")
        if self.clip_qkv is not None and not 0 < self.clip_qkv < math.inf:
            raise ValueError(f"{name}: clip_qkv must be > 0 and finite (None: no clamp), got {self.clip_qkv}")
        if not math.isfinite(self.query_scale_beta) or self.query_scale_period < 1 or self.query_scale_offset < 0:
            raise ValueError(f"{name}: query_scale_beta must be finite, query_scale_period >= 1 and "
                             f"query_scale_offset >= 0, got {self.query_scale_beta}, {self.query_scale_period} and "
                             f"{self.query_scale_offset}")
        # the op's QK-norm would undo a scale applied before the node
        if any(self.query_scale(i) and self.has_qk_norm(i) for i in range(self.num_layers)):
            raise ValueError(f"{name}: query_scale_beta cannot be combined with qk_norm on the same layer")
        if not 0 < self.router_norm_p < math.inf:
            raise ValueError(f"{name}: router_norm_p must be > 0 and finite, got {self.router_norm_p}")
        if self.shared_expert_average and not self.shared_expert_intermediate:
            raise ValueError(f"{name}: shared_expert_average needs a shared expert (shared_expert_intermediate > 0)")
        if self.qk_norm_after_rope and not self.qk_norm:
            raise ValueError(f"{name}: qk_norm_after_rope needs qk_norm (its weights)")
        if self.qk_norm_after_rope and self.rope_scaling is not None and self.rope_scaling.kind == "longrope":
            raise ValueError(f"{name}: qk_norm_after_rope cannot be combined with LongRoPE (its factor sets switch "
                             f"per forward in the node)")
        if not 0 <= self.final_logit_softcap < math.inf:
            raise ValueError(f"{name}: final_logit_softcap must be >= 0 and finite (0: off), "
                             f"got {self.final_logit_softcap}")
        if self.output_vocab_size is not None and not 0 < self.output_vocab_size <= self.vocab_size:
            raise ValueError(f"{name}: output_vocab_size must be in [1, vocab_size = {self.vocab_size}] (None: "
                             f"vocab_size), got {self.output_vocab_size}")
        if self.output_vocab_size not in (None, self.vocab_size) and self.tie_embeddings:
            raise ValueError(f"{name}: a pruned lm_head (output_vocab_size) cannot be tied to the embeddings")
        if self.sliding_rope is not None and not 0 < self.sliding_rope[0] < math.inf:
            raise ValueError(f"{name}: sliding_rope's theta must be > 0 and finite, got {self.sliding_rope[0]}")
        if self.layer_heads is not None:
            if len(self.layer_heads) != self.num_layers:
                raise ValueError(f"{name}: layer_heads must list one query head count per layer ({self.num_layers}), "
                                 f"got {self.layer_heads}")
            for layer in range(self.num_layers):
                check_heads(name, self.hidden, self.heads(layer), self.kv_heads(layer), head_dim)
        if self.sliding_rotary_dim is not None and not (0 < self.sliding_rotary_dim <= head_dim and
                                                        self.sliding_rotary_dim % 2 == 0):
            raise ValueError(f"{name}: sliding_rotary_dim must be even and in [2, head_dim = {head_dim}], "
                             f"got {self.sliding_rotary_dim}")
        if (self.output_gate_softplus or self.output_gate_per_head) and not self.attention_output_gate:
            raise ValueError(f"{name}: output_gate_softplus and output_gate_per_head need attention_output_gate")
        if not 0 <= self.router_logit_softcap < math.inf:
            raise ValueError(f"{name}: router_logit_softcap must be >= 0 and finite (0: off), "
                             f"got {self.router_logit_softcap}")

    @property
    def resolved_head_dim(self) -> int:
        return check_heads(type(self).__name__, self.hidden, self.num_heads, self.num_kv_heads, self.head_dim)

    @property
    def expert_intermediate(self) -> int:
        return self.intermediate if self.moe_intermediate is None else self.moe_intermediate

    def is_moe(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        """layer_types, or the default for none: all sliding when sliding_window > 0, else all chunked when
        attention_chunk > 0, else all full."""
        if self.layer_types is not None:
            return self.layer_types
        kind = "sliding_attention" if self.sliding_window else "chunked_attention" if self.attention_chunk else \
            "full_attention"
        return (kind,) * self.num_layers

    def window(self, layer: int) -> int:
        return self.sliding_window if self.resolved_layer_types[layer] == "sliding_attention" else 0

    def chunk(self, layer: int) -> int:
        return self.attention_chunk if self.resolved_layer_types[layer] == "chunked_attention" else 0

    def kv_heads(self, layer: int) -> int:
        return self.num_kv_heads if self.layer_kv_heads is None else self.layer_kv_heads[layer]

    def heads(self, layer: int) -> int:
        return self.num_heads if self.layer_heads is None else self.layer_heads[layer]

    def has_sinks(self, layer: int) -> bool:
        return self.attention_sinks and (self.sink_layers is None or layer in self.sink_layers)

    def has_qk_norm(self, layer: int) -> bool:
        return self.qk_norm and (self.qk_norm_layers is None or layer in self.qk_norm_layers)

    def query_scale(self, layer: int) -> QueryScale | None:
        if not self.query_scale_beta or (self.query_scale_layers is not None and layer not in self.query_scale_layers):
            return None
        return QueryScale(self.query_scale_beta, self.query_scale_period, self.query_scale_offset,
                          self.query_scale_cache_positions)


class XIELU(nn.Module):
    """Apertus' xIELU activation with its learned alpha_p, alpha_n (raw: softplus applies) and fixed beta, eps:
    softplus(alpha_p) x^2 + beta x for x > 0, else (expm1(min(x, eps)) - x) (beta + softplus(alpha_n)) + beta x.
    Defaults as transformers' XIELUActivation initialises them."""

    def __init__(self, alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = 0.5, eps: float = -1e-6):
        super().__init__()
        self.alpha_p = nn.Parameter(torch.log(torch.expm1(torch.tensor([alpha_p]))))
        self.alpha_n = nn.Parameter(torch.log(torch.expm1(torch.tensor([alpha_n - beta]))))
        self.register_buffer("beta", torch.tensor(beta))
        self.register_buffer("eps", torch.tensor(eps))

    def forward(self, x):
        alpha_p = nn.functional.softplus(self.alpha_p)
        alpha_n = self.beta + nn.functional.softplus(self.alpha_n)
        negative = (torch.expm1(torch.minimum(x, self.eps)) - x) * alpha_n + self.beta * x
        return torch.where(x > 0, alpha_p * x * x + self.beta * x, negative)


class PlainMLP(nn.Module):
    """Ungated MLP (Starcoder2; names as GPT-2's); activation "xielu": an XIELU module of its own (Apertus)."""

    def __init__(self, hidden: int, intermediate: int, bias: bool, activation: str):
        super().__init__()
        self.c_fc = nn.Linear(hidden, intermediate, bias=bias)
        self.c_proj = nn.Linear(intermediate, hidden, bias=bias)
        self.act = XIELU() if activation == "xielu" else ACTIVATIONS[activation]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class HeadLayerNorm(nn.Module):
    """LayerNorm (mean-centred) over each head's channels of a projection's output [..., heads * head_dim], in
    float32: `per_head` scales by a weight per head [heads, head_dim] without bias (Cohere's q_norm / k_norm), else
    by one weight and bias [head_dim] shared by the heads (Phi's q_layernorm / k_layernorm, an nn.LayerNorm)."""

    def __init__(self, heads: int, head_dim: int, eps: float, *, per_head: bool):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones((heads, head_dim) if per_head else (head_dim,)))
        self.bias = None if per_head else nn.Parameter(torch.zeros(head_dim))

    def forward(self, x):
        h = x.unflatten(-1, (self.heads, self.head_dim)).to(torch.float32)
        h = nn.functional.layer_norm(h, (self.head_dim,), eps=self.eps) * self.weight.to(torch.float32)
        if self.bias is not None:
            h = h + self.bias.to(torch.float32)
        return h.flatten(-2).to(x.dtype)


@dataclasses.dataclass(frozen=True)
class QueryScale:
    """A per-position scale of q: 1 + beta * log(1 + floor((position + offset) / period)), in float32 (as
    transformers' get_llama_4_attn_scale and Llama4TextAttention's temperature tuning). `cache_positions`: the
    position is the token's slot in the cache, past length + index (Llama 4), not the one the node rotates it by
    (Ministral 3); the two differ with position_ids or packed documents."""

    beta: float
    period: int = 1
    offset: int = 0
    cache_positions: bool = False

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return 1 + self.beta * torch.log(1 + torch.floor((positions.float() + self.offset) / self.period))


class GatedLinear(nn.Linear):
    """An nn.Linear whose input is first multiplied by `gate` (set by its LlamaAttention around each forward; None:
    no gate): AFMoE's o_proj of the node's output times sigmoid(gate_proj(x))."""

    gate: torch.Tensor | None = None

    def forward(self, x):
        return super().forward(x if self.gate is None else x * self.gate)


class LlamaAttention(GroupedQueryAttention):
    """GroupedQueryAttention with what runs in torch between the projections and the node (the op's QK-norm is an
    RMSNorm per head), each optional, in this order: OLMo 2's RMSNorm over q_proj's and k_proj's whole outputs, all
    heads at once (`proj_norm_eps`: q_proj_norm, k_proj_norm); Cohere's / Phi's / StableLM's LayerNorm over each head
    of q and k (`head_norm`: q_head_norm, k_head_norm, see HeadLayerNorm); OLMo's clamp of q, k and v to
    [-clip_qkv, clip_qkv] (after the norms, as OLMoE); Ministral 3's and Llama 4's per-position scale of q
    (`query_scale`: a QueryScale); Hunyuan's RoPE then per-head RMS QK-norm (`rope_then_norm`: the Rope, applied at
    the node's positions, then q_rope_norm / k_rope_norm [head_dim]; give the node rope=None and no QK-norm). The node
    then applies its RoPE, if any. After the node, AFMoE's `output_gate`: its output times sigmoid(gate_proj(x)) per
    channel, before o_proj (a GatedLinear); Laguna's by softplus (`output_gate_softplus`), and with
    `output_gate_per_head` one gate per head (gate_proj: model_dim -> heads), broadcast over the head's channels."""

    def __init__(self, *args, proj_norm_eps: float | None = None, head_norm: str | None = None,
                 head_norm_eps: float = 1e-5, clip_qkv: float | None = None,
                 query_scale: QueryScale | None = None, rope_then_norm: Rope | None = None, output_gate: bool = False,
                 output_gate_softplus: bool = False, output_gate_per_head: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_gate_softplus, self.output_gate_per_head = output_gate_softplus, output_gate_per_head
        if output_gate:  # created only when asked for: the seeded init of the others stays as it was
            gates = self.num_query_heads if output_gate_per_head else self.out_width
            self.gate_proj = nn.Linear(self.model_dim, gates, bias=False)
            o_proj = GatedLinear(self.out_width, self.model_dim, bias=self.o_proj.bias is not None)
            o_proj.load_state_dict(self.o_proj.state_dict())
            self.o_proj = o_proj
        self.rope_then_norm = rope_then_norm
        if rope_then_norm is not None:
            if rope_then_norm.switches:  # LongRoPE picks its set per forward; not modelled here
                raise ValueError("LlamaAttention: rope_then_norm cannot be a switching (LongRoPE) Rope")
            inv_freq, self.torch_rope_scaling = rope_then_norm.frequencies(self.head_dim)
            # the name ends in rope_inv_freq so that models._base.cast_model keeps it float32
            self.register_buffer("torch_rope_inv_freq", inv_freq, persistent=False)
            self.q_rope_norm = nn.Parameter(torch.ones(self.head_dim))
            self.k_rope_norm = nn.Parameter(torch.ones(self.head_dim))
        self.q_proj_norm = self.k_proj_norm = self.q_head_norm = self.k_head_norm = None
        if proj_norm_eps is not None:
            self.q_proj_norm = RMSNorm(self.q_width, proj_norm_eps)
            self.k_proj_norm = RMSNorm(self.kv_width, proj_norm_eps)
        if head_norm is not None:
            per_head = head_norm == "per_head"
            self.q_head_norm = HeadLayerNorm(self.num_query_heads, self.head_dim, head_norm_eps, per_head=per_head)
            self.k_head_norm = HeadLayerNorm(self.num_kv_heads, self.head_dim, head_norm_eps, per_head=per_head)
        self.clip_qkv, self.query_scale = clip_qkv, query_scale

    def forward(self, x, **kwargs):
        if not isinstance(self.o_proj, GatedLinear):
            return super().forward(x, **kwargs)
        g = self.gate_proj(x)
        # Laguna's softplus in float32, as transformers
        g = nn.functional.softplus(g.float()).to(g.dtype) if self.output_gate_softplus else torch.sigmoid(g)
        if self.output_gate_per_head:  # [..., heads] -> [..., heads * Dv]: each head's gate on all its channels
            g = g.unsqueeze(-1).expand(*g.shape, self.v_head_dim).flatten(-2)
        self.o_proj.gate = g  # read by o_proj inside the base forward
        try:
            return super().forward(x, **kwargs)
        finally:
            self.o_proj.gate = None

    def _rotate_and_norm(self, t: torch.Tensor, heads: int, weight: torch.Tensor) -> torch.Tensor:
        """t [..., S, heads * head_dim] (or paged [T, ...]) rotated at the node's positions in float32, then RMS-normed
        per head in float32 and times weight in t's dtype (as transformers' RMSNorm)."""
        h = t.unflatten(-1, (heads, self.head_dim)).transpose(-3, -2).float()  # [B, H, S, D] or paged [H, T, D]
        positions = self.token_positions()
        paged = h.dim() == 3
        if paged:
            h, positions = h[None], positions.reshape(1, -1)
        h = apply_rope(h, positions, self.torch_rope_inv_freq, interleaved=self.rope_then_norm.interleaved,
                       attention_scaling=self.torch_rope_scaling)
        h = (rms_norm_heads(h, None, self.qk_norm_eps).to(t.dtype) * weight.to(t.dtype))
        return (h[0] if paged else h).transpose(-3, -2).flatten(-2)

    def project(self, x):
        q, k, v = super().project(x)
        if self.q_proj_norm is not None:
            q, k = self.q_proj_norm(q), self.k_proj_norm(k)
        if self.q_head_norm is not None:
            q, k = self.q_head_norm(q), self.k_head_norm(k)
        if self.clip_qkv is not None:
            c = self.clip_qkv
            q, k, v = q.clamp(-c, c), k.clamp(-c, c), v.clamp(-c, c)
        if self.query_scale is not None:
            positions = self.token_positions(slots=self.query_scale.cache_positions)
            q = q * self.query_scale(positions).unsqueeze(-1).to(q.dtype)
        if self.rope_then_norm is not None:
            q = self._rotate_and_norm(q, self.num_query_heads, self.q_rope_norm)
            k = self._rotate_and_norm(k, self.num_kv_heads, self.k_rope_norm)
        return q, k, v


def make_norm(cfg: LlamaConfig) -> nn.Module:
    eps = cfg.rms_norm_eps
    if cfg.norm == "rms":
        return RMSNorm(cfg.hidden, eps)
    return nn.LayerNorm(cfg.hidden, eps, elementwise_affine=cfg.norm != "layer_no_affine", bias=cfg.norm == "layer")


class LlamaBlock(nn.Module):
    """Pre-norm: x + attn(input_norm(x)), then + mlp(post_attn_norm(x)). With post_norm (OLMo 2) there is no
    input_norm: x + post_attn_norm(attn(x)), then + post_mlp_norm(mlp(x)) (named as transformers' norms).
    With sandwich_norm (GLM-4): x + attn_out_norm(attn(input_norm(x))), then + post_mlp_norm(mlp(post_attn_norm(x))).
    With parallel_residual: x + attn(input_norm(x)) + mlp(post_attn_norm(x)), or mlp(input_norm(x)) with
    shared_block_norm (no post_attn_norm then)."""

    def __init__(self, cfg: LlamaConfig, layer_idx: int):
        super().__init__()
        self.post_norm, self.residual_multiplier = cfg.post_norm, cfg.residual_multiplier
        self.parallel_residual, self.shared_block_norm = cfg.parallel_residual, cfg.shared_block_norm
        if not cfg.post_norm:
            self.input_norm = make_norm(cfg)
        theta, scaling = cfg.rope_theta, cfg.rope_scaling
        if cfg.sliding_rope is not None and cfg.resolved_layer_types[layer_idx] == "sliding_attention":
            theta, scaling = cfg.sliding_rope
        rotary_dim = cfg.rotary_dim
        if cfg.sliding_rotary_dim is not None and cfg.resolved_layer_types[layer_idx] == "sliding_attention":
            rotary_dim = cfg.sliding_rotary_dim
        rope = None if layer_idx in cfg.nope_layers else Rope(theta, rotary_dim=rotary_dim,
                                                              interleaved=cfg.rope_interleaved, scaling=scaling)
        attention, extra = GroupedQueryAttention, {}
        query_scale = cfg.query_scale(layer_idx)
        qk_norm = cfg.has_qk_norm(layer_idx)
        # Hunyuan: RoPE and QK-norm in torch, none on the node (a layer without RoPE keeps the op's QK-norm)
        rope_then_norm = rope if cfg.qk_norm_after_rope and qk_norm and rope is not None else None
        if rope_then_norm is not None:
            rope = qk_norm = None
        if cfg.qk_proj_norm or cfg.qk_layer_norm or cfg.clip_qkv is not None or query_scale is not None or \
                rope_then_norm is not None or cfg.attention_output_gate:
            attention, extra = LlamaAttention, dict(
                proj_norm_eps=cfg.rms_norm_eps if cfg.qk_proj_norm else None, head_norm=cfg.qk_layer_norm,
                head_norm_eps=cfg.rms_norm_eps, clip_qkv=cfg.clip_qkv, query_scale=query_scale,
                rope_then_norm=rope_then_norm, output_gate=cfg.attention_output_gate,
                output_gate_softplus=cfg.output_gate_softplus, output_gate_per_head=cfg.output_gate_per_head)
        self.attn = attention(
            cfg.hidden, cfg.heads(layer_idx), cfg.kv_heads(layer_idx), head_dim=cfg.resolved_head_dim,
            bias=cfg.qkv_bias, out_bias=cfg.o_bias, window=cfg.window(layer_idx), attention_chunk=cfg.chunk(layer_idx),
            scale=cfg.attention_scale, rope=rope, qk_norm=bool(qk_norm), qk_norm_eps=cfg.rms_norm_eps,
            sinks=cfg.has_sinks(layer_idx), layer_idx=layer_idx, v_head_dim=cfg.v_head_dim, **extra)
        self.sandwich_norm = cfg.sandwich_norm
        if cfg.sandwich_norm:  # registered only when asked for: the seeded init of the others stays as it was
            self.attn_out_norm = make_norm(cfg)
        if not cfg.shared_block_norm:
            self.post_attn_norm = make_norm(cfg)
        if cfg.is_moe(layer_idx):
            self.mlp = MixtureOfExperts(cfg.hidden, cfg.num_experts, cfg.experts_per_token, cfg.expert_intermediate,
                                        cfg.activation, scoring=cfg.router_scoring, norm_topk=cfg.norm_topk,
                                        shared_intermediate=cfg.shared_expert_intermediate,
                                        router_bias=cfg.router_bias, expert_bias=cfg.expert_bias, glu=cfg.expert_glu,
                                        routed_scaling=cfg.routed_scaling, num_groups=cfg.num_groups,
                                        groups_per_token=cfg.groups_per_token, shared_gated=cfg.shared_expert_gated,
                                        choice_bias=cfg.router_choice_bias, norm_min=cfg.router_norm_min,
                                        shared_bias=cfg.shared_expert_bias, jitter_eps=cfg.router_jitter_eps,
                                        scale_inputs=cfg.expert_input_scaling, norm_p=cfg.router_norm_p,
                                        shared_average=cfg.shared_expert_average,
                                        rank_by_logits=cfg.router_rank_by_logits,
                                        logit_softcap=cfg.router_logit_softcap)
        else:
            self.mlp = (SwiGLU if cfg.gated_mlp else PlainMLP)(cfg.hidden, cfg.intermediate, cfg.mlp_bias,
                                                               cfg.activation)
        if cfg.post_norm or cfg.sandwich_norm:
            self.post_mlp_norm = make_norm(cfg)

    def residual(self, h):
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier

    def forward(self, x, **kv):
        if self.post_norm:
            h, present = self.attn(x, return_present=True, **kv)
            x = x + self.residual(self.post_attn_norm(h))
            return x + self.residual(self.post_mlp_norm(self.mlp(x))), present
        normed = self.input_norm(x)
        h, present = self.attn(normed, return_present=True, **kv)
        if self.parallel_residual:
            m = self.mlp(normed if self.shared_block_norm else self.post_attn_norm(x))
            return x + self.residual(h) + self.residual(m), present
        if self.sandwich_norm:
            x = x + self.residual(self.attn_out_norm(h))
            return x + self.residual(self.post_mlp_norm(self.mlp(self.post_attn_norm(x)))), present
        x = x + self.residual(h)
        return x + self.residual(self.mlp(self.post_attn_norm(x))), present


class LlamaModel(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        if cfg.embedding_norm:  # registered only when asked for: the seeded init of the others stays as it was
            self.embed_norm = make_norm(cfg)
        self.layers = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.num_layers))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.hidden, cfg.output_vocab_size or cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:  # the weight only: a biased head keeps its own bias (GPT-J, Phi)
            self.lm_head.weight = self.embed_tokens.weight

    def embed(self, input_ids, positions):
        x = self.embed_tokens(input_ids)
        m = self.config.embedding_multiplier
        x = x if m == 1.0 else x * m
        return self.embed_norm(x) if self.config.embedding_norm else x

    def head(self, x):
        logits = self.lm_head(self.norm(x))
        s, cap = self.config.logits_scaling, self.config.final_logit_softcap
        logits = logits if s == 1.0 else logits / s
        return cap * torch.tanh(logits / cap) if cap else logits


@register("llama", LlamaConfig)
def build_llama(cfg: LlamaConfig) -> LlamaModel:
    return init_weights(LlamaModel(cfg), cfg.seed)


@dataclasses.dataclass(frozen=True)
class GptOssConfig(LlamaConfig):
    """GPT-OSS (gpt-oss-20b / 120b) as LlamaConfig options, tiny: attention sinks in every layer, Q/K/V and output
    biases, head dim != hidden / heads, sliding-window layers alternating with full ones (sliding first, for any
    num_layers; layer_types overrides), YaRN RoPE without truncation, and a mixture of experts in every layer (biased
    router, biased experts, clamped SwiGLU). gpt-oss-20b: vocab 201088, hidden 2880, 24 layers, 64 / 8 heads of 64,
    32 experts top-4 of width 2880, window 128."""

    head_dim: int | None = 32
    intermediate: int = 64  # each expert's width (GPT-OSS: hidden)
    rope_theta: float = 150000.0
    rope_scaling: RopeScaling | None = RopeScaling("yarn", 32.0, original_max_positions=4096, truncate=False)
    qkv_bias: bool = True
    o_bias: bool = True
    sliding_window: int = 8  # on the "sliding_attention" layers (GPT-OSS: 128)
    num_experts: int = 4
    experts_per_token: int = 2
    attention_sinks: bool = True  # init_weights draws them in [-0.5, 0.5): not zero
    router_bias: bool = True
    expert_bias: bool = True
    # GPT-OSS clamps at 7, which the tiny model's gate / up values never reach; at 1 the clamps act
    expert_glu: ClampedSwiGLU | None = ClampedSwiGLU(alpha=1.702, limit=1.0)

    @property
    def resolved_layer_types(self) -> tuple[str, ...]:
        if self.layer_types is not None or not self.sliding_window:
            return super().resolved_layer_types
        return tuple(("sliding_attention", "full_attention")[i % 2] for i in range(self.num_layers))


register("gpt-oss", GptOssConfig)(build_llama)  # the same model; build() matches the config's exact class


@dataclasses.dataclass(frozen=True)
class Llama4Config(LlamaConfig):
    """Llama 4's text decoder (Scout / Maverick) as LlamaConfig options, tiny: chunked-attention RoPE layers with a
    weightless QK-norm and every 4th layer full attention without RoPE, with the attention temperature on its queries
    (NoPE layers; num_layers 4: layer 3); interleaved RoPE with Llama 3 scaling; MoE on every 2nd layer (top-1 of 4
    sigmoid-scored experts ranked by logit, each run on its input times its score, plus an ungated shared expert),
    dense MLPs of their own width elsewhere. Llama-4-Scout: hidden 5120, 48 layers, 40 / 8 heads of 128, chunk 8192,
    16 experts top-1 of width 8192, dense width 16384, floor_scale 8192, attn_scale 0.1."""

    num_layers: int = 4
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = RopeScaling("llama3", 16.0, original_max_positions=8192, low_freq_factor=1.0,
                                                   high_freq_factor=1.0)
    rope_interleaved: bool = True
    attention_chunk: int = 8  # Llama 4: 8192; 8 cuts the tiny model's prompts
    qk_norm: bool = True  # the chunked layers' L2 norm (weights of ones)
    intermediate: int = 96  # the dense MLPs [intermediate_size_mlp]
    num_experts: int = 4
    experts_per_token: int = 1
    moe_intermediate: int | None = 48  # each expert's and the shared expert's width [intermediate_size]
    router_scoring: str = "sigmoid"
    norm_topk: bool = False
    router_rank_by_logits: bool = True
    expert_input_scaling: bool = True
    shared_expert_intermediate: int = 48
    shared_expert_gated: bool = False
    # Llama 4's attention temperature at cache positions on the NoPE layers [floor_scale, attn_scale]
    query_scale_beta: float = 0.1
    query_scale_period: int = 4  # Llama 4: 8192
    query_scale_offset: int = 1
    query_scale_cache_positions: bool = True

    def __post_init__(self):
        n = self.num_layers
        nope = tuple(i for i in range(n) if i % 4 == 3)  # transformers' no_rope_layer_interval 4
        defaults = dict(layer_types=tuple("full_attention" if i in nope else "chunked_attention" for i in range(n)),
                        nope_layers=nope, qk_norm_layers=tuple(i for i in range(n) if i not in nope),
                        query_scale_layers=nope, dense_layers=tuple(i for i in range(n) if i % 2 == 0))
        for field, value in defaults.items():  # the per-layer fields follow num_layers unless given
            if getattr(self, field) in (None, ()):
                object.__setattr__(self, field, value)
        super().__post_init__()


register("llama4", Llama4Config)(build_llama)
