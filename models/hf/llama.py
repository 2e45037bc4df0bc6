"""Llama-likes (Mistral, Qwen, Phi-3, SmolLM3, Granite, OLMo / OLMo 2 / OLMoE, Starcoder2, GPT-OSS, ERNIE 4.5,
Helium, Seed-OSS, EXAONE 3.5 / 4, GLM / GLM-4 / GLM-4.5, Arcee, StableLM, Nemotron, Ministral / Ministral 3,
OLMo 3, InternLM3, MiniMax-M2, dots.llm1, Solar Open, K-EXAONE, FlexOlmo, Apertus, ...), GPT-NeoX, Falcon, GPT-J, Phi,
Cohere, Cohere 2, Cohere 2 MoE, Hunyuan (dense and MoE: RoPE then QK-norm in torch, qk_norm_after_rope), AFMoE (gated
attention output, sandwich norms, muP) -> our Llama. _llama also serves converters of their own (models.hf.llama4)."""

from __future__ import annotations

import types

import torch
from torch import nn

from onnxattn.models import build
from onnxattn.models._base import copy_linears, set_linear
from onnxattn.models.hf._common import (_activation, _check_rope, _copy, _hf_frequencies, _rope_scaling,
                                       _rotary_dim, _unsupported, _window)
from onnxattn.models.llama import LlamaConfig, LlamaModel
from onnxattn.models.moe import ClampedSwiGLU, MixtureOfExperts


# model types with DeepSeek-V3's MoE block -> their config's names for (routed experts, shared experts)
_V3_ROUTERS = {"glm4_moe": ("n_routed_experts", "n_shared_experts"), "dots1": ("n_routed_experts", "n_shared_experts"),
               "solar_open": ("n_routed_experts", "n_shared_experts"),
               "exaone_moe": ("num_experts", "num_shared_experts"),
               "sarvam_moe": ("n_routed_experts", "n_shared_experts")}  # transformers runs it as GLM-4.5


def _experts(hf) -> dict:
    """LlamaConfig's MoE fields for Mixtral / Qwen2-MoE / Qwen3-MoE; the modules say which layers have experts
    (the Qwen MoEs' mlp_only_layers and decoder_sparse_step leave the others a dense MLP)."""
    c = hf.config
    moe = [hasattr(layer.mlp, "experts") for layer in hf.model.layers]
    if not any(moe):
        return {}
    dense = tuple(i for i, sparse in enumerate(moe) if not sparse)
    if c.model_type in _V3_ROUTERS:  # DeepSeek-V3's router: sigmoid scores, a choice bias, groups by top-2 sum
        experts, shared = _V3_ROUTERS[c.model_type]
        return dict(num_experts=getattr(c, experts), experts_per_token=c.num_experts_per_tok,
                    moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid",
                    norm_topk=bool(c.norm_topk_prob), routed_scaling=float(c.routed_scaling_factor),
                    num_groups=c.n_group, groups_per_token=c.topk_group, dense_layers=dense,
                    # n_shared_experts SwiGLUs as one wider one, added ungated (0: zero-width, adds nothing)
                    shared_expert_intermediate=c.moe_intermediate_size * (getattr(c, shared) or 0),
                    shared_expert_gated=False)
    if c.model_type == "afmoe":  # sigmoid scores, a choice bias, always renormalised then times route_scale
        return dict(num_experts=c.num_experts, experts_per_token=c.num_experts_per_tok,
                    moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid", norm_topk=True,
                    routed_scaling=float(c.route_scale), dense_layers=dense,
                    shared_expert_intermediate=c.moe_intermediate_size * (c.num_shared_experts or 0),
                    shared_expert_gated=False)
    if c.model_type == "hunyuan_v1_moe":  # softmax, top-k renormalised, plus an ungated shared MLP in every layer
        per_layer = [c.moe_topk] if isinstance(c.moe_topk, int) else list(c.moe_topk)
        if not isinstance(c.num_experts, int) or len(set(per_layer)) != 1:
            raise _unsupported(f"Hunyuan MoE with num_experts {c.num_experts} and moe_topk {c.moe_topk} is not "
                               f"supported: experts and top-k per layer need one count for all layers (transformers' "
                               f"experts take num_experts as one count too)")
        return dict(num_experts=c.num_experts, experts_per_token=per_layer[0], router_scoring="softmax",
                    norm_topk=True, dense_layers=dense, shared_expert_intermediate=c.intermediate_size,
                    shared_expert_gated=False)
    if c.model_type == "minimax_m2":  # sigmoid scores, a choice bias, always renormalised; no groups or scaling
        return dict(num_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
                    router_scoring="sigmoid", norm_topk=True, dense_layers=dense)
    # all route by a softmax over all experts, then top-k; Mixtral always renormalises the chosen weights (GPT-OSS's
    # softmax over the top-k logits is that too: it has no norm_topk_prob, so True).
    # Qwen2-MoE's shared expert is sigmoid-gated; a zero-width one (size 0) adds nothing, as none here
    return dict(num_experts=c.num_local_experts if c.model_type == "mixtral" else c.num_experts,
                experts_per_token=c.num_experts_per_tok, moe_intermediate=getattr(c, "moe_intermediate_size", None),
                router_scoring="softmax", norm_topk=bool(getattr(c, "norm_topk_prob", True)),
                dense_layers=dense,
                shared_expert_intermediate=getattr(c, "shared_expert_intermediate_size", 0) or 0)


def _smollm3(c) -> dict:
    types = tuple(c.layer_types)
    if "sliding_attention" in types and not c.use_sliding_window:
        raise _unsupported("SmolLM3 with sliding_attention layers but use_sliding_window=False is not supported: "
                           "transformers' eager and sdpa masks apply the window there, its flash attention does not")
    return dict(nope_layers=tuple(i for i, rope in enumerate(c.no_rope_layers[:c.num_hidden_layers]) if not rope))


def _granite(c) -> dict:
    return dict(attention_scale=float(c.attention_multiplier), embedding_multiplier=float(c.embedding_multiplier),
                residual_multiplier=float(c.residual_multiplier), logits_scaling=float(c.logits_scaling))


def _starcoder2(c) -> dict:
    bias = bool(c.use_bias)  # every projection, both MLP layers
    return dict(norm="layer", gated_mlp=False, rms_norm_eps=c.norm_epsilon, qkv_bias=bias, o_bias=bias,
                mlp_bias=bias)


def _olmo(c) -> dict:
    # OLMo 1: LayerNorm without weight or bias, its epsilon fixed at 1e-5 (OlmoLayerNorm)
    return dict(norm="layer_no_affine", rms_norm_eps=1e-5, clip_qkv=c.clip_qkv)


def _afmoe(c) -> dict:
    """AFMoE: per-head QK-norm, RoPE on the sliding layers only (the full ones never rotate), the attention output
    gated per channel, sandwich norms, embeddings times sqrt(hidden) with mup_enabled; its experts: _experts."""
    types = tuple(c.layer_types)
    sliding = "sliding_attention" in types
    if sliding and not c.sliding_window:
        raise _unsupported(f"AFMoE with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers cannot run it either)")
    return dict(qk_norm=True, attention_output_gate=True, sandwich_norm=True,
                sliding_window=c.sliding_window if sliding else 0, layer_types=types if sliding else None,
                nope_layers=tuple(i for i, kind in enumerate(types) if kind != "sliding_attention"),
                embedding_multiplier=c.hidden_size ** 0.5 if c.mup_enabled else 1.0)


def _ernie4_5(c) -> dict:
    bias = bool(c.use_bias)  # every projection, the MLP's too
    return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bias, rope_interleaved=True)


def _exaone4(c) -> dict:
    # post-norm blocks (OLMo 2's) with a per-head RMS QK-norm; with a window, RoPE on the sliding layers only
    return dict(qk_norm=True, post_norm=True) | _rope_on_sliding_only(c, "EXAONE 4", window_required=False)


def _ministral3(c) -> dict:
    params = c.rope_parameters
    beta, period = params.get("llama_4_scaling_beta"), params.get("original_max_position_embeddings")
    if beta is None or not period:  # its attention scales q by both
        raise _unsupported(f"Ministral 3 with rope_parameters llama_4_scaling_beta {beta} and "
                           f"original_max_position_embeddings {period} is not supported (transformers cannot run it "
                           f"either)")
    return dict(query_scale_beta=float(beta), query_scale_period=period)


def _olmo3(c) -> dict:
    # OLMo 2's blocks; sliding and full layers each with their own rope_parameters (YaRN on the full ones)
    if "sliding_attention" in c.layer_types and not c.sliding_window:
        raise _unsupported(f"OLMo 3 with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers cannot run it either)")
    full, sliding = c.rope_parameters["full_attention"], c.rope_parameters["sliding_attention"]
    return dict(qk_proj_norm=True, post_norm=True, rope_scaling=_rope_scaling(full),
                sliding_rope=(sliding["rope_theta"], _rope_scaling(sliding)))


def _glm(c) -> dict:
    # interleaved pairs on the leading partial_rotary_factor channels; attention_bias is q / k / v's only
    return dict(rope_interleaved=True, o_bias=False)


def _stablelm(c) -> dict:
    parallel = bool(c.use_parallel_residual)  # then one LayerNorm per block, read by the attention and the MLP
    # qk_layernorm: an nn.LayerNorm without bias per head of q / k, stacked into our weight per head
    return dict(norm="layer", rms_norm_eps=c.layer_norm_eps, qkv_bias=bool(c.use_qkv_bias), o_bias=False,
                parallel_residual=parallel, shared_block_norm=parallel,
                qk_layer_norm="per_head" if c.qk_layernorm else None)


def _gpt_oss(c) -> dict:
    try:
        glu = ClampedSwiGLU(c.swiglu_alpha, c.swiglu_limit)
    except ValueError as e:  # e.g. a negative limit
        raise _unsupported(f"this GptOssConfig does not map onto ours: {e}") from e
    return dict(attention_sinks=True, router_bias=True, expert_bias=True, expert_glu=glu)


# LlamaConfig fields that differ from the Llama mapping, per model_type
_LLAMA_VARIANTS = {
    "smollm3": _smollm3, "granite": _granite, "starcoder2": _starcoder2, "gpt_oss": _gpt_oss,
    "olmo": _olmo, "olmo2": lambda c: dict(qk_proj_norm=True, post_norm=True), "olmo3": _olmo3,
    "ministral3": _ministral3,
    # GLM-4.5 / 4.6: attention_bias on q / k / v only, use_qk_norm per head before RoPE (half-split partial RoPE)
    "glm4_moe": lambda c: dict(o_bias=False, qk_norm=bool(c.use_qk_norm)),
    "sarvam_moe": lambda c: dict(o_bias=False, qk_norm=bool(c.use_qk_norm)),  # GLM-4.5's (Glm4MoeForCausalLM)
    "minimax_m2": lambda c: dict(qk_proj_norm=True),  # over all heads, in pre-norm blocks (as OLMoE)
    "dots1": lambda c: dict(qk_norm=True),  # Qwen3's attention (per-head QK-norm); DeepSeek-V3's MoE (_experts)
    # GLM-4.5's MoE in every layer; Llama's attention with attention_bias on q / k / v only
    "solar_open": lambda c: dict(o_bias=False),
    # EXAONE 4's attention (per-head QK-norm, RoPE on the sliding layers only) in pre-norm blocks (OLMoE's)
    "exaone_moe": lambda c: dict(qk_norm=True) | _rope_on_sliding_only(c, "EXAONE MoE", window_required=False),
    "flex_olmo": lambda c: dict(qk_proj_norm=True, post_norm=True),  # OLMo 2's blocks, OLMoE's experts
    # per-head QK-norm, ungated up_proj / down_proj MLP (xIELU with learned parameters per layer)
    "apertus": lambda c: dict(qk_norm=True, gated_mlp=False),
    "olmoe": lambda c: dict(qk_proj_norm=True, clip_qkv=c.clip_qkv),  # pre-norm blocks; clamped after the norms
    "ernie4_5": _ernie4_5, "helium": lambda c: dict(rope_interleaved=True, o_bias=False),
    "seed_oss": lambda c: dict(o_bias=bool(c.attention_out_bias)), "exaone4": _exaone4,
    "glm": _glm, "glm4": lambda c: _glm(c) | dict(sandwich_norm=True),
    "arcee": lambda c: dict(gated_mlp=False),  # up_proj / down_proj, ReLU squared by default
    "stablelm": _stablelm,
    # LayerNorm1P scales by 1 + weight (ours holds that sum), squared-ReLU up_proj / down_proj
    "nemotron": lambda c: dict(norm="layer", rms_norm_eps=c.norm_eps, gated_mlp=False),
    # per-head RMS QK-norm after RoPE: both in torch before the node (qk_norm_after_rope); the MoE's experts: _experts
    "afmoe": _afmoe,
    "hunyuan_v1_dense": lambda c: dict(qk_norm=True, qk_norm_after_rope=True),
    "hunyuan_v1_moe": lambda c: dict(qk_norm=True, qk_norm_after_rope=True),
}
_UNIT_OFFSET_NORMS = {"nemotron"}  # model types whose norms scale by 1 + weight


def _load_norm(ours: nn.Module, theirs: nn.Module, unit_offset: bool) -> None:
    """Strict (LayerNorm biases too; none for OLMo's); with unit_offset ours holds 1 + their weight."""
    state = theirs.state_dict()
    if unit_offset:
        state["weight"] = state["weight"] + 1.0
    ours.load_state_dict(state)


def _block_norms(cfg: LlamaConfig, model_type: str = "") -> dict[str, str]:
    """Our block's norms -> transformers' (OLMo 2: post_attention_layernorm norms the attention output; GLM-4:
    post_attention_layernorm norms the MLP input, post_self_attn_layernorm the attention output; Apertus and Apertus
    1.5 name their pre-norms apart, HyperCLOVAX its output norms)."""
    if model_type in ("apertus", "apertus1p5_text"):
        return {"input_norm": "attention_layernorm", "post_attn_norm": "feedforward_layernorm"}
    if model_type == "hyperclovax" and cfg.sandwich_norm:  # its output norms (use_post_norm) under its own names
        return {"input_norm": "input_layernorm", "attn_out_norm": "post_norm1",
                "post_attn_norm": "post_attention_layernorm", "post_mlp_norm": "post_norm2"}
    if model_type == "afmoe":  # sandwich norms under its own names
        return {"input_norm": "input_layernorm", "attn_out_norm": "post_attention_layernorm",
                "post_attn_norm": "pre_mlp_layernorm", "post_mlp_norm": "post_mlp_layernorm"}
    if cfg.post_norm:
        return {"post_attn_norm": "post_attention_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
    norms = {"input_norm": "input_layernorm"}
    if not cfg.shared_block_norm:
        norms["post_attn_norm"] = "post_attention_layernorm"
    if cfg.sandwich_norm:
        norms |= {"attn_out_norm": "post_self_attn_layernorm", "post_mlp_norm": "post_mlp_layernorm"}
    return norms


def _copy_experts(m: MixtureOfExperts, h) -> None:
    """Router and experts of a transformers MoE block `h` into ours."""
    # GPT-OSS: a biased router; experts [E, in, out] (x @ W), gate / up interleaved (AFMoE's router has a gate)
    if hasattr(h, "router") and not hasattr(h.router, "gate"):
        _copy(m.router, h.router.weight, "the router weight")
        _copy(m.router_bias, h.router.bias, "the router bias")
        e = h.experts
        w, b = e.gate_up_proj.transpose(1, 2), e.gate_up_proj_bias  # [E, 2I, H] rows gate0, up0, gate1, ...
        _copy(m.gate_up_proj, torch.cat((w[:, 0::2], w[:, 1::2]), 1), "the experts' gate_up_proj")
        _copy(m.gate_up_proj_bias, torch.cat((b[:, 0::2], b[:, 1::2]), 1), "the experts' gate_up_proj_bias")
        _copy(m.down_proj, e.down_proj.transpose(1, 2), "the experts' down_proj")
        _copy(m.down_proj_bias, e.down_proj_bias, "the experts' down_proj_bias")
        return
    # AFMoE's router is router.gate, Hunyuan's gate.wg
    gate = h.router.gate if hasattr(h, "router") else h.gate.wg if hasattr(h.gate, "wg") else h.gate
    _copy(m.router, gate.weight, "the router weight")
    if m.e_score_correction_bias is not None:  # steers the choice: GLM-4.5's router holds it, MiniMax-M2's block
        theirs = getattr(h, "e_score_correction_bias", getattr(h, "expert_bias", None))  # AFMoE: expert_bias
        _copy(m.e_score_correction_bias, h.gate.e_score_correction_bias if theirs is None else theirs,
              "the e_score_correction_bias")
    _copy(m.gate_up_proj, h.experts.gate_up_proj, "the experts' gate_up_proj")
    _copy(m.down_proj, h.experts.down_proj, "the experts' down_proj")
    if m.shared_expert is not None and m.shared_expert_gate is None:  # GLM-4.5's shared_experts, Hunyuan's shared_mlp
        m.shared_expert.load_state_dict((h.shared_mlp if hasattr(h, "shared_mlp") else h.shared_experts).state_dict())
    elif m.shared_expert is not None:
        m.shared_expert.load_state_dict(h.shared_expert.state_dict())
        m.shared_expert_gate.load_state_dict(h.shared_expert_gate.state_dict())


def _build_llama(c, fields: dict) -> LlamaModel:
    try:
        return build(LlamaConfig(**fields))
    except ValueError as e:  # e.g. more experts per token than experts, or LongRoPE factors for another rotary dim
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e


def _llama(hf, variant=None, mlp: str = "mlp", copy_experts=None) -> LlamaModel:
    """The Llama-likes. A converter of its own (models.hf.llama4) passes `variant` (config -> the LlamaConfig fields
    that differ, its experts' included: in place of _LLAMA_VARIANTS' and _experts'), `mlp` (the name of its layers'
    MLP / expert block) and `copy_experts(ours, theirs)` for its expert blocks."""
    c = hf.config
    layer_types = getattr(c, "layer_types", None)
    window = _window(c)
    if layer_types is not None:
        layer_types = tuple(layer_types)
        if "sliding_attention" not in layer_types:
            window = 0
    qkv_bias = bool(c.qkv_bias) if c.model_type == "qwen2_moe" else c.model_type == "qwen2"
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)  # OLMo 3's per layer type (its variant)
    theta = rope["rope_theta"]
    if c.model_type in ("hunyuan_v1_dense", "hunyuan_v1_moe") and rope.get("rope_type") == "dynamic" and \
            rope.get("alpha"):  # Hunyuan's NTK-alpha: a fixed stretch of the base (not dynamic scaling)
        theta, rope = theta * rope["alpha"] ** (head_dim / (head_dim - 2)), {"rope_type": "default"}
    fields = dict(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        # SolarOpen has no dense width (experts in every layer): its expert width stands in, unused
        head_dim=head_dim, intermediate=getattr(c, "intermediate_size", None) or c.moe_intermediate_size,
        rope_theta=theta, rope_scaling=_rope_scaling(rope, c.max_position_embeddings),
        rotary_dim=_rotary_dim(c, head_dim),
        rms_norm_eps=getattr(c, "rms_norm_eps", None), qkv_bias=qkv_bias or bool(getattr(c, "attention_bias", False)),
        o_bias=bool(getattr(c, "attention_bias", False)), mlp_bias=bool(getattr(c, "mlp_bias", False)),
        qk_norm=c.model_type in ("qwen3", "qwen3_moe"), sliding_window=window,
        layer_types=layer_types if window else None, activation=_activation(c.hidden_act),
        tie_embeddings=bool(c.tie_word_embeddings), **(_experts(hf) if variant is None else {}))
    variant = variant or _LLAMA_VARIANTS.get(c.model_type)
    if variant is not None:
        fields |= variant(c)
    ours = _build_llama(c, fields)
    cfg, src = ours.config, hf.model
    unit_offset = c.model_type in _UNIT_OFFSET_NORMS
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not cfg.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        _load_norm(ours.norm, src.norm, unit_offset)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            if hasattr(t, "qkv_proj"):  # Phi-3: one projection, rows [q | k | v], no biases
                for name, w in zip(("q_proj", "k_proj", "v_proj"),
                                   t.qkv_proj.weight.split([a.q_width, a.kv_width, a.kv_width])):
                    set_linear(getattr(a, name), w)
                set_linear(a.o_proj, t.o_proj.weight)
            else:
                copy_linears(a, t)
            if a.q_norm is not None:  # Llama 4's has no weight (an L2 norm): ours scale by ones
                for ours_norm, hf_norm in ((a.q_norm, "q_norm"), (a.k_norm, "k_norm")):
                    ours_norm.copy_(getattr(t, hf_norm).weight if hasattr(t, hf_norm) else torch.ones_like(ours_norm))
            if hasattr(a, "gate_proj"):  # AFMoE's output gate (Laguna's g_proj)
                set_linear(a.gate_proj, (t.gate_proj if hasattr(t, "gate_proj") else t.g_proj).weight)
            if getattr(a, "rope_then_norm", None) is not None:  # Hunyuan: its QK-norm after RoPE, in torch
                _copy(a.q_rope_norm, t.query_layernorm.weight, "the query_layernorm weight")
                _copy(a.k_rope_norm, t.key_layernorm.weight, "the key_layernorm weight")
            if a.sinks is not None:  # GPT-OSS; MiMo-V2-Flash's sliding layers only (sink_layers)
                _copy(a.sinks, t.sinks, "the attention sinks")
            if cfg.qk_proj_norm:  # OLMo 2, OLMoE: over all heads
                a.q_proj_norm.load_state_dict(t.q_norm.state_dict())
                a.k_proj_norm.load_state_dict(t.k_norm.state_dict())
            if cfg.qk_layer_norm:  # StableLM: one bias-free nn.LayerNorm per head
                for ours_norm, hf_norm in (("q_head_norm", "q_layernorm"), ("k_head_norm", "k_layernorm")):
                    _copy(getattr(a, ours_norm).weight, torch.stack([n.weight for n in getattr(t, hf_norm).norms]),
                          f"the {hf_norm} weights")
            m, h = mine.mlp, getattr(theirs, mlp)
            if isinstance(m, MixtureOfExperts):
                (copy_experts or _copy_experts)(m, h)
            elif hasattr(h, "gate_up_proj"):  # Phi-3: rows [gate | up], no biases
                gate, up = h.gate_up_proj.weight.chunk(2)
                set_linear(m.gate_proj, gate)
                set_linear(m.up_proj, up)
                set_linear(m.down_proj, h.down_proj.weight)
            else:
                names = ("gate_proj", "up_proj", "down_proj") if cfg.gated_mlp else ("c_fc", "c_proj")
                # ungated: Starcoder2's c_fc / c_proj, or Nemotron's / Arcee's up_proj / down_proj
                hf_names = ("up_proj", "down_proj") if not cfg.gated_mlp and hasattr(h, "up_proj") else names
                for name, hf_name in zip(names, hf_names):
                    set_linear(getattr(m, name), getattr(h, hf_name).weight, getattr(h, hf_name).bias)
                if cfg.activation == "xielu":  # Apertus: its learned parameters, beta and eps
                    for name in ("alpha_p", "alpha_n", "beta", "eps"):
                        _copy(getattr(m.act, name), getattr(h.act_fn, name).float(), f"xIELU's {name}")
            for ours_norm, hf_norm in _block_norms(cfg, c.model_type).items():
                _load_norm(getattr(mine, ours_norm), getattr(theirs, hf_norm), unit_offset)
    if cfg.sliding_rope is not None:  # OLMo 3: frequencies per layer type
        for kind in set(c.layer_types):
            layers = [mine.attn for mine, t in zip(ours.layers, c.layer_types) if t == kind]
            group = types.SimpleNamespace(attention_layers=lambda layers=layers: layers)  # what _check_rope reads
            _check_rope(group, getattr(src.rotary_emb, f"{kind}_inv_freq"),
                        getattr(src.rotary_emb, f"{kind}_attention_scaling"), f"{c.model_type}'s {kind} layers")
        return ours
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, c.model_type, long)
    return ours


def _parallel_fields(c, *, hidden: int, heads: int, layers: int, intermediate: int, eps: float, activation: str,
                     **fields) -> dict:
    """LlamaConfig fields shared by GPT-NeoX, GPT-J and Phi: LayerNorm, biased ungated MLP, parallel blocks."""
    return dict(vocab_size=c.vocab_size, hidden=hidden, num_layers=layers, num_heads=heads,
                num_kv_heads=heads, intermediate=intermediate, rms_norm_eps=eps,
                norm="layer", gated_mlp=False, mlp_bias=True, parallel_residual=True,
                activation=_activation(activation), tie_embeddings=bool(c.tie_word_embeddings)) | fields


def _copy_head(ours: LlamaModel, embed: nn.Embedding, head: nn.Linear, final_norm: nn.LayerNorm) -> None:
    cfg = ours.config
    ours.embed_tokens.weight.copy_(embed.weight)
    if not cfg.tie_embeddings:
        ours.lm_head.weight.copy_(head.weight)
    if cfg.lm_head_bias:
        ours.lm_head.bias.copy_(head.bias)
    ours.norm.load_state_dict(final_norm.state_dict())


def _gpt_neox(hf) -> LlamaModel:
    c = hf.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads  # transformers' head_size (no head_dim option)
    bias = bool(c.attention_bias)  # query_key_value and dense; the MLP always has biases
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=heads, layers=c.num_hidden_layers, intermediate=c.intermediate_size,
        eps=c.layer_norm_eps, activation=c.hidden_act, rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters), rotary_dim=_rotary_dim(c, head_dim), qkv_bias=bias,
        o_bias=bias, parallel_residual=bool(c.use_parallel_residual)))
    src = hf.gpt_neox
    with torch.no_grad():
        _copy_head(ours, src.embed_in, hf.lm_head, src.final_layer_norm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.attention
            # transformers views the output as [..., heads, 3 * head_dim]: rows per head [q_h | k_h | v_h]
            w = t.query_key_value.weight.unflatten(0, (heads, 3, head_dim))
            b = t.query_key_value.bias.unflatten(0, (heads, 3, head_dim)) if bias else None
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                set_linear(getattr(a, name), w[:, i].flatten(0, 1), None if b is None else b[:, i].flatten())
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            set_linear(mine.mlp.c_fc, theirs.mlp.dense_h_to_4h.weight, theirs.mlp.dense_h_to_4h.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.dense_4h_to_h.weight, theirs.mlp.dense_4h_to_h.bias)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "GPT-NeoX", long)
    return ours


def _falcon(hf) -> LlamaModel:
    """Falcon: parallel blocks (one LayerNorm, or ln_attn / ln_mlp with new_decoder_architecture) or sequential ones
    (parallel_attn=False), a fused query_key_value: multi-query [q | k | v], grouped KV (new_decoder_architecture:
    per KV group [q_g0 .. q_g(r-1) | k_g | v_g]) or per head [q_h | k_h | v_h]; an ungated MLP, biases with bias."""
    c = hf.config
    if c.alibi:
        raise _unsupported("Falcon with alibi=True is not supported: our attention op has no ALiBi bias (Falcon "
                           "with RoPE, alibi=False, is)")
    new, heads = bool(c.new_decoder_architecture), c.num_attention_heads
    # transformers sets num_ln_in_parallel_attn to 2 for new_decoder_architecture when unset
    two_norms = new and (c.num_ln_in_parallel_attn or 2) == 2
    if (new and not c.parallel_attn) or (not new and c.parallel_attn and c.num_ln_in_parallel_attn == 2):
        raise _unsupported(f"Falcon with new_decoder_architecture={new}, parallel_attn={c.parallel_attn} and "
                           f"num_ln_in_parallel_attn {c.num_ln_in_parallel_attn} is not supported (transformers' "
                           f"FalconDecoderLayer cannot run it either)")
    kv_heads = c.num_kv_heads if new else 1 if c.multi_query else heads
    head_dim = c.hidden_size // heads
    bias = bool(c.bias)  # query_key_value, dense and the MLP alike
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=heads, layers=c.num_hidden_layers, intermediate=c.ffn_hidden_size,
        eps=c.layer_norm_epsilon, activation=c.activation, num_kv_heads=kv_heads,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters), qkv_bias=bias,
        o_bias=bias, mlp_bias=bias, parallel_residual=bool(c.parallel_attn or new),
        shared_block_norm=bool(c.parallel_attn or new) and not two_norms))
    src = hf.transformer
    with torch.no_grad():
        _copy_head(ours, src.word_embeddings, hf.lm_head, src.ln_f)
        for mine, theirs in zip(ours.layers, src.h):
            a, t = mine.attn, theirs.self_attention
            fused = [t.query_key_value.weight] + ([t.query_key_value.bias] if bias else [])
            if new:  # rows per KV group: its query heads, then its key, then its value
                parts = [w.unflatten(0, (kv_heads, heads // kv_heads + 2, head_dim)) for w in fused]
                parts = [(w[:, :-2].flatten(0, 2), w[:, -2].flatten(0, 1), w[:, -1].flatten(0, 1)) for w in parts]
            elif c.multi_query:  # rows [all query heads | k | v]
                parts = [w.split([heads * head_dim, head_dim, head_dim]) for w in fused]
            else:  # rows per head [q_h | k_h | v_h]
                parts = [w.unflatten(0, (heads, 3, head_dim)) for w in fused]
                parts = [tuple(w[:, i].flatten(0, 1) for i in range(3)) for w in parts]
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                set_linear(getattr(a, name), parts[0][i], parts[1][i] if bias else None)
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            set_linear(mine.mlp.c_fc, theirs.mlp.dense_h_to_4h.weight, theirs.mlp.dense_h_to_4h.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.dense_4h_to_h.weight, theirs.mlp.dense_4h_to_h.bias)
            if two_norms:
                norms = {"input_norm": "ln_attn", "post_attn_norm": "ln_mlp"}
            else:  # sequential blocks norm the MLP input apart
                norms = {"input_norm": "input_layernorm"} | \
                    ({} if c.parallel_attn else {"post_attn_norm": "post_attention_layernorm"})
            for ours_norm, hf_norm in norms.items():
                getattr(mine, ours_norm).load_state_dict(getattr(theirs, hf_norm).state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "Falcon", long)
    return ours


def _gptj(hf) -> LlamaModel:
    return _gptj_family(hf, "GPT-J", lambda attn: (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))


def _gptj_family(hf, name: str, qkv_weights) -> LlamaModel:
    """GPT-J and its kind (CodeGen): parallel blocks with one LayerNorm, interleaved RoPE on rotary_dim channels,
    biased lm_head; qkv_weights(attention) gives the q, k and v projection weights of a layer."""
    c = hf.config
    head_dim = c.n_embd // c.n_head
    # transformers' sin / cos table is rotary_dim wide, or n_embd wide without one: that fits a head only with one
    rotary = c.rotary_dim or c.n_embd
    if rotary > head_dim:
        raise _unsupported(f"{name} with rotary_dim {c.rotary_dim} rotates {rotary} channels of a {head_dim}-wide "
                           f"head (transformers cannot run it either)")
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.n_embd, heads=c.n_head, layers=c.n_layer, intermediate=c.n_inner or 4 * c.n_embd,
        eps=c.layer_norm_epsilon, activation=c.activation_function, rope_theta=10000.0,  # fixed in transformers
        rotary_dim=None if rotary == head_dim else rotary, rope_interleaved=True, shared_block_norm=True,
        lm_head_bias=True))
    src = hf.transformer
    with torch.no_grad():
        _copy_head(ours, src.wte, hf.lm_head, src.ln_f)
        for mine, theirs in zip(ours.layers, src.h):
            a, t = mine.attn, theirs.attn
            for proj, weight in zip((a.q_proj, a.k_proj, a.v_proj), qkv_weights(t)):
                set_linear(proj, weight)
            set_linear(a.o_proj, t.out_proj.weight)
            set_linear(mine.mlp.c_fc, theirs.mlp.fc_in.weight, theirs.mlp.fc_in.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.fc_out.weight, theirs.mlp.fc_out.bias)
            mine.input_norm.load_state_dict(theirs.ln_1.state_dict())
    # its table's row for position 1 holds [sin(inv_freq) | cos(inv_freq)]; every angle there is <= 1 rad
    sin, cos = src.rotary_emb.embed_positions[1].chunk(2)
    _check_rope(ours, torch.atan2(sin, cos), 1.0, name)
    return ours


def _phi(hf) -> LlamaModel:
    c = hf.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=c.num_attention_heads, layers=c.num_hidden_layers,
        intermediate=c.intermediate_size, eps=c.layer_norm_eps, activation=c.hidden_act,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads, head_dim=head_dim,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters),
        rotary_dim=_rotary_dim(c, head_dim), qkv_bias=True, o_bias=True, shared_block_norm=True, lm_head_bias=True,
        # an nn.LayerNorm(head_dim) with bias, shared by the heads: in torch before the node (its QK-norm is RMS)
        qk_layer_norm="shared" if c.qk_layernorm else None))
    src = hf.model
    with torch.no_grad():
        _copy_head(ours, src.embed_tokens, hf.lm_head, src.final_layernorm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                set_linear(getattr(a, name), getattr(t, name).weight, getattr(t, name).bias)
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            if ours.config.qk_layer_norm:
                a.q_head_norm.load_state_dict(t.q_layernorm.state_dict())
                a.k_head_norm.load_state_dict(t.k_layernorm.state_dict())
            set_linear(mine.mlp.c_fc, theirs.mlp.fc1.weight, theirs.mlp.fc1.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.fc2.weight, theirs.mlp.fc2.bias)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "Phi", long)
    return ours


def _rope_on_sliding_only(c, what: str, *, window_required: bool) -> dict:
    """Cohere 2 (Command R7B / Command A), EXAONE 4: sliding-window layers with RoPE, the others full and without
    RoPE (their attention rotates q / k only where it has a window; EXAONE 4's everywhere when the config has no
    sliding_window)."""
    types = tuple(c.layer_types)
    sliding = "sliding_attention" in types
    if not c.sliding_window:
        if window_required or sliding:  # transformers' sliding mask needs one (Cohere 2's whatever layer_types say)
            raise _unsupported(f"{what} with sliding_window {c.sliding_window}"
                               f"{'' if window_required else ' and sliding_attention layers'} is not supported "
                               f"(transformers cannot run it either)")
        return {}
    return dict(sliding_window=c.sliding_window if sliding else 0, layer_types=types if sliding else None,
                nope_layers=tuple(i for i, kind in enumerate(types) if kind != "sliding_attention"))


def _cohere2_moe(c) -> dict:
    """Cohere 2 MoE's fields apart from Cohere 2's: RMSNorm when rms_norm_eps is set, dense layers per mlp_layer_types
    (prefix_dense_intermediate_size wide, with RoPE on full layers too when prefix_dense_sliding_window_pattern is
    1: its force_rope), experts routed by a softmax or a sigmoid of the top-k logits (the softmax always renormalised),
    num_shared_experts SwiGLUs as one wider shared expert, summed with the routed ones or averaged."""
    if c.expert_selection_fn not in ("softmax", "sigmoid"):
        raise _unsupported(f"Cohere 2 MoE with expert_selection_fn {c.expert_selection_fn!r} is not supported "
                           f"(transformers cannot run it either)")
    shared = c.num_shared_experts or 0
    if shared and c.shared_expert_combination_strategy not in ("sum", "average"):
        raise _unsupported(f"Cohere 2 MoE with shared_expert_combination_strategy "
                           f"{c.shared_expert_combination_strategy!r} is not supported (transformers cannot run it "
                           f"either)")
    dense = tuple(i for i, kind in enumerate(c.mlp_layer_types) if kind == "dense")
    fields = dict(intermediate=c.prefix_dense_intermediate_size or c.intermediate_size, num_experts=c.num_experts,
                  experts_per_token=c.num_experts_per_tok, moe_intermediate=c.intermediate_size, dense_layers=dense,
                  router_scoring=c.expert_selection_fn,
                  norm_topk=c.expert_selection_fn == "softmax" or bool(c.norm_topk_prob),
                  shared_expert_intermediate=c.intermediate_size * shared, shared_expert_gated=False,
                  shared_expert_average=bool(shared) and c.shared_expert_combination_strategy == "average")
    if c.rms_norm_eps is not None:  # else Cohere's bias-free LayerNorm
        fields |= dict(norm="rms", rms_norm_eps=c.rms_norm_eps)
    return fields


def _cohere(hf) -> LlamaModel:
    """Command-R (Cohere) and Command R7B / Command A (Cohere 2): parallel blocks with one bias-free, mean-centred
    LayerNorm, interleaved RoPE, logits times logit_scale, tied embeddings; Cohere's use_qk_norm (Command R+) a
    LayerNorm per head of q / k; Cohere 2 adds sliding-window layers with RoPE interleaved with full NoPE layers;
    Cohere 2 MoE adds experts (_cohere2_moe)."""
    c = hf.config
    cohere2, moe = c.model_type in ("cohere2", "cohere2_moe"), c.model_type == "cohere2_moe"
    what = "Cohere 2 MoE" if moe else "Cohere 2" if cohere2 else "Cohere"
    if not c.logit_scale:  # transformers multiplies by it; ours divides by its inverse
        raise _unsupported(f"{what} with logit_scale {c.logit_scale} is not supported")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    bias = bool(c.attention_bias)  # q / k / v and o alike
    rope_fields = _rope_on_sliding_only(c, what, window_required=True) if cohere2 else {}
    if moe and c.prefix_dense_sliding_window_pattern == 1 and "nope_layers" in rope_fields:
        # force_rope: full dense layers rotate q / k too
        rope_fields["nope_layers"] = tuple(i for i in rope_fields["nope_layers"] if c.mlp_layer_types[i] != "dense")
    ours = _build_llama(c, dict(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        head_dim=head_dim, intermediate=c.intermediate_size, rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters), rope_interleaved=True,  # the whole head: as transformers
        rms_norm_eps=c.layer_norm_eps, norm="layer_no_bias", parallel_residual=True, shared_block_norm=True,
        qkv_bias=bias, o_bias=bias, activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings),
        # x / (1 / s) is within 2 ulp of x * s
        logits_scaling=1.0 / c.logit_scale, **rope_fields,
        # use_qk_norm: mean-centred with a weight per head, in torch before the node (its QK-norm is RMS, shared)
        qk_layer_norm="per_head" if getattr(c, "use_qk_norm", False) else None) | (_cohere2_moe(c) if moe else {}))
    _copy_cohere_weights(ours, hf)
    src = hf.model
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, what, long)
    return ours


def _copy_cohere_weights(ours: LlamaModel, hf) -> None:
    """The weights of a Cohere-family model (Cohere, Cohere 2 and its MoE, Cohere Compass) into `ours`: the tied head,
    q / k / v / o, the per-head QK LayerNorms when ours has them, the dense MLP or the experts, the one block norm."""
    src = hf.model
    with torch.no_grad():
        _copy_head(ours, src.embed_tokens, hf.lm_head, src.norm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            copy_linears(a, t)
            if ours.config.qk_layer_norm:  # weights [heads, head_dim], no bias
                a.q_head_norm.load_state_dict(t.q_norm.state_dict())
                a.k_head_norm.load_state_dict(t.k_norm.state_dict())
            m, h = mine.mlp, theirs.mlp
            if isinstance(m, MixtureOfExperts):  # Cohere 2 MoE
                _copy(m.router, h.gate.weight, "the router weight")
                _copy(m.gate_up_proj, h.experts.gate_up_proj, "the experts' gate_up_proj")
                _copy(m.down_proj, h.experts.down_proj, "the experts' down_proj")
                if m.shared_expert is not None:
                    m.shared_expert.load_state_dict(h.shared_experts.state_dict())
            else:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    set_linear(getattr(m, name), getattr(h, name).weight)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
