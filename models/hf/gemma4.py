"""Gemma 4 (text: Gemma4ForCausalLM, model_type gemma4_text) -> our Gemma 4 model (models.gemma4), its MoE block
(enable_moe_block) included. Refused: bidirectional attention, attention biases, an untied output embedding,
RoPE types other than default and proportional, per-layer head dims / KV heads that differ within a layer kind."""

from __future__ import annotations

import torch

from onnxattn.models._base import set_linear
from onnxattn.models.gemma4 import Gemma4Config, Gemma4Model, build_gemma4
from onnxattn.models.hf._common import _activation, _copy, _unsupported, _window


_NORMS = (("input_norm", "input_layernorm"), ("post_attn_norm", "post_attention_layernorm"),
          ("pre_mlp_norm", "pre_feedforward_layernorm"), ("post_mlp_norm", "post_feedforward_layernorm"))


def _rope(params: dict | None, kind: str) -> tuple[float, tuple[float, float] | None]:
    """(theta, None) for the default RoPE, (theta, (partial_rotary_factor, factor)) for proportional."""
    if params is None:
        raise _unsupported(f"Gemma 4 without RoPE on its {kind} layers is not supported")
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":  # Gemma 4's default RoPE rotates the whole head (no partial_rotary_factor)
        return params["rope_theta"], None
    if rope_type == "proportional":
        return params["rope_theta"], (params.get("partial_rotary_factor", 1.0), params.get("factor", 1.0))
    raise _unsupported(f"Gemma 4 with RoPE type {rope_type!r} on its {kind} layers is not supported (default and "
                       f"proportional are)")


def _dims(c, kind: str) -> tuple[int, int]:
    """(KV heads, head dim) of the layers of one kind; all of them must agree (transformers' rotary embedding
    requires it too, so this only guards the mapping)."""
    dims = {(c.per_layer_config[i].num_key_value_heads, c.per_layer_config[i].head_dim)
            for i, t in enumerate(c.layer_types) if t == kind}
    if len(dims) > 1:
        raise _unsupported(f"Gemma 4 with {kind} layers of different head dims or KV heads ({sorted(dims)}) is not "
                           f"supported (ours has one per layer kind)")
    return dims.pop() if dims else (c.num_key_value_heads, c.head_dim)


def _moe(c) -> dict:
    if not getattr(c, "enable_moe_block", False):
        return {}
    return dict(num_experts=c.num_experts, experts_per_token=c.top_k_experts,
                expert_intermediate=c.moe_intermediate_size)


def _gemma4(hf) -> Gemma4Model:
    c, src = hf.config, hf.model
    if getattr(c, "use_bidirectional_attention", None) is not None:
        raise _unsupported(f"Gemma 4 with use_bidirectional_attention={c.use_bidirectional_attention!r} is not "
                           f"supported (causal attention only)")
    if getattr(c, "attention_bias", False):
        raise _unsupported("Gemma 4 with attention_bias is not supported (our Gemma 4 has no projection biases)")
    if not torch.equal(hf.lm_head.weight, src.embed_tokens.weight):  # ours always ties them
        raise _unsupported("Gemma 4 with an output embedding other than the input one is not supported")
    kinds = set(c.layer_types)
    if not kinds <= {"sliding_attention", "full_attention"}:
        raise _unsupported(f"Gemma 4 with layer types {sorted(kinds)} is not supported")
    (local_kv, local_dim), (global_kv, global_dim) = _dims(c, "sliding_attention"), _dims(c, "full_attention")
    (local_theta, local_prop), (global_theta, global_prop) = (
        _rope(c.rope_parameters.get(k), k) if k in kinds else (10000.0, None)
        for k in ("sliding_attention", "full_attention"))
    per_layer = c.hidden_size_per_layer_input or 0
    try:
        cfg = Gemma4Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads, num_kv_heads=local_kv, head_dim=local_dim,
            global_num_kv_heads=global_kv, global_head_dim=global_dim, intermediate=c.intermediate_size,
            sliding_window=_window(c) or 1, layer_types=tuple(c.layer_types), rope_local_theta=local_theta,
            rope_global_theta=global_theta, rope_local_proportional=local_prop, rope_global_proportional=global_prop,
            attention_k_eq_v=bool(c.attention_k_eq_v), num_kv_shared_layers=c.num_kv_shared_layers,
            per_layer_hidden=per_layer, per_layer_vocab=c.vocab_size_per_layer_input if per_layer else 0,
            double_wide_mlp=bool(c.use_double_wide_mlp), final_logit_softcap=c.final_logit_softcapping or 0.0,
            rms_norm_eps=c.rms_norm_eps, activation=_activation(c.hidden_activation), **_moe(c))
    except ValueError as e:  # e.g. every layer KV-shared
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    if [cfg.kv_source(i) is not None for i in range(cfg.num_layers)] != [m == "reuse" for m in c.kv_sharing_modes]:
        raise _unsupported("Gemma 4's KV-shared layers differ from ours")  # guards against a change of the rule
    ours = build_gemma4(cfg)
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        ours.norm.weight.copy_(src.norm.weight)
        if per_layer:
            ours.embed_tokens_per_layer.weight.copy_(src.embed_tokens_per_layer.weight)
            set_linear(ours.per_layer_model_projection, src.per_layer_model_projection.weight)
            ours.per_layer_projection_norm.weight.copy_(src.per_layer_projection_norm.weight)
        for i, (mine, theirs) in enumerate(zip(ours.layers, src.layers)):
            a, t = mine.attn, theirs.self_attn
            if a.head_dim != t.head_dim or cfg.layer_dims(i)[0] != c.per_layer_config[i].num_key_value_heads:
                raise _unsupported(f"Gemma 4's layer {i} has other head dims or KV heads than ours")
            names = ("q_proj", "o_proj") if t.is_kv_shared_layer else \
                ("q_proj", "k_proj", "o_proj") + (() if t.v_proj is None else ("v_proj",))
            for name in names:
                set_linear(getattr(a, name), getattr(t, name).weight)
            _copy(a.q_norm, t.q_norm.weight, "q_norm")
            if not t.is_kv_shared_layer:
                _copy(a.k_norm, t.k_norm.weight, "k_norm")
            for name in ("gate_proj", "up_proj", "down_proj"):
                set_linear(getattr(mine.mlp, name), getattr(theirs.mlp, name).weight)
            for ours_norm, hf_norm in _NORMS:
                getattr(mine, ours_norm).weight.copy_(getattr(theirs, hf_norm).weight)
            if per_layer:
                set_linear(mine.per_layer_input_gate, theirs.per_layer_input_gate.weight)
                set_linear(mine.per_layer_projection, theirs.per_layer_projection.weight)
                mine.post_per_layer_input_norm.weight.copy_(theirs.post_per_layer_input_norm.weight)
            _copy(mine.layer_scalar, theirs.layer_scalar.float(), "layer_scalar")
            if cfg.num_experts:
                e, r = mine.experts, theirs.router
                set_linear(e.proj, r.proj.weight)
                for name in ("scale", "per_expert_scale"):
                    _copy(getattr(e, name), getattr(r, name), name)
                for name in ("gate_up_proj", "down_proj"):
                    _copy(getattr(e, name), getattr(theirs.experts, name), name)
                e.pre_norm.weight.copy_(theirs.pre_feedforward_layernorm_2.weight)
                mine.post_mlp_norm_1.weight.copy_(theirs.post_feedforward_layernorm_1.weight)
                mine.post_mlp_norm_2.weight.copy_(theirs.post_feedforward_layernorm_2.weight)
    rotary = src.rotary_emb
    for i, layer in enumerate(ours.layers):
        kind = c.layer_types[i]
        theirs = getattr(rotary, f"{kind}_inv_freq")
        inv_freq = layer.attn.inv_freq()
        if inv_freq.shape != theirs.shape or not torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5) or \
                abs(getattr(rotary, f"{kind}_attention_scaling") - 1.0) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of Gemma 4's {kind} layers differ from the transformers model's")
    return ours
