"""Gemma, Gemma 2, Gemma 3 (text) and VaultGemma -> our Gemma 3 model (Gemma: all layers global, no soft-caps, no
QK-norm, pre-norm blocks without Gemma 2's post-norms; VaultGemma: Gemma 2 without its post-norms)."""

from __future__ import annotations

import torch

from onnxattn.models import build
from onnxattn.models._base import copy_linears, set_linear
from onnxattn.models.gemma3 import Gemma3Config, Gemma3Model
from onnxattn.models.hf._common import _activation, _check_rope, _rope_scaling, _unsupported, _window


def _gemma(hf, what: str, **fields) -> Gemma3Model:
    """Our Gemma model with the weights of a Gemma / Gemma 2 / Gemma 3 causal LM; `fields` are the config fields
    that differ between them (windows, RoPE, QK-norm, soft-caps, post-norms)."""
    c, src = hf.config, hf.model
    if getattr(c, "use_bidirectional_attention", False) is True:  # VaultGemma's config holds an AttributeError
        raise _unsupported(f"{what} with use_bidirectional_attention (an encoder variant) is not supported")
    if getattr(c, "attention_bias", False):
        raise _unsupported(f"{what} with attention_bias is not supported (our Gemma has no projection biases)")
    if not torch.equal(hf.lm_head.weight, src.embed_tokens.weight):  # ours always ties them
        raise _unsupported(f"{what} with an output embedding other than the input one is not supported")
    try:
        cfg = Gemma3Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
            intermediate=c.intermediate_size, rms_norm_eps=c.rms_norm_eps, **fields)
    except ValueError as e:  # e.g. no sliding_window
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    ours = build(cfg)
    one = lambda w: 1.0 + w.float()  # noqa: E731  (Gemma's norms scale by 1 + weight; our QK-norm takes the factor)
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        ours.norm.weight.copy_(src.norm.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            copy_linears(a, t)
            if cfg.qk_norm:
                a.q_norm.copy_(one(t.q_norm.weight))
                a.k_norm.copy_(one(t.k_norm.weight))
            for name in ("gate_proj", "up_proj", "down_proj"):
                set_linear(getattr(mine.mlp, name), getattr(theirs.mlp, name).weight)
            # Gemma 1's post_attention_layernorm norms the MLP's input, Gemma 2's the attention's output; VaultGemma
            # keeps only Gemma 2's pre_feedforward_layernorm before the MLP
            pre_mlp = "pre_feedforward_layernorm" if hasattr(theirs, "pre_feedforward_layernorm") else \
                "post_attention_layernorm"
            norms = (("input_norm", "input_layernorm"), ("post_attn_norm", "post_attention_layernorm"),
                     ("pre_mlp_norm", "pre_feedforward_layernorm"), ("post_mlp_norm", "post_feedforward_layernorm")) \
                if cfg.post_norms else (("input_norm", "input_layernorm"), ("pre_mlp_norm", pre_mlp))
            for ours_norm, hf_norm in norms:
                getattr(mine, ours_norm).weight.copy_(getattr(theirs, hf_norm).weight)
    return ours


def _windowed(c) -> dict:
    """Gemma 2 / 3: sliding and global layers, query_pre_attn_scalar, the final soft-cap."""
    return dict(sliding_window=_window(c), layer_types=tuple(c.layer_types),
                query_pre_attn_scalar=c.query_pre_attn_scalar, final_logit_softcap=c.final_logit_softcapping or 0.0,
                activation=_activation(c.hidden_activation))


def _gemma3(hf) -> Gemma3Model:
    c = hf.config
    full, local = c.rope_parameters["full_attention"], c.rope_parameters["sliding_attention"]
    if local.get("rope_type", "default") != "default":
        raise _unsupported("scaled RoPE on Gemma 3's local layers is not supported")
    # transformers' Gemma 3 keeps attn_logit_softcapping in its config but never applies it
    ours = _gemma(hf, "Gemma 3", rope_local_theta=local["rope_theta"], rope_global_theta=full["rope_theta"],
                  rope_global_scaling=_rope_scaling(full), attn_logit_softcap=0.0, **_windowed(c))
    rotary = hf.model.rotary_emb
    for layer, kind in zip(ours.layers, c.layer_types):
        inv_freq, scaling = layer.attn.rope.frequencies(layer.attn.head_dim)
        theirs = getattr(rotary, f"{kind}_inv_freq")
        if not torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5) or \
                abs(scaling - getattr(rotary, f"{kind}_attention_scaling")) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of Gemma 3's {kind} layers differ from the transformers model's")
    return ours


def _gemma2(hf) -> Gemma3Model:
    """Gemma 2, and VaultGemma: Gemma 2's attention (soft-cap, sliding layers) in pre-norm blocks without post-norms."""
    c = hf.config
    what = "VaultGemma" if c.model_type == "vaultgemma" else "Gemma 2"
    params = c.rope_parameters
    if params.get("rope_type", "default") != "default":  # ours would scale the global layers only
        raise _unsupported(f"{what} with scaled RoPE ({params['rope_type']}) is not supported")
    # transformers' eager attention applies the cap (so do flash / flex; it refuses sdpa for Gemma 2)
    ours = _gemma(hf, what, rope_local_theta=params["rope_theta"], rope_global_theta=params["rope_theta"],
                  qk_norm=False, attn_logit_softcap=c.attn_logit_softcapping or 0.0,
                  post_norms=c.model_type != "vaultgemma", **_windowed(c))
    _check_rope(ours, hf.model.rotary_emb.inv_freq, hf.model.rotary_emb.attention_scaling, what)
    return ours


def _gemma1(hf) -> Gemma3Model:
    """Gemma (1): every layer global with the config's RoPE (scaled ones too), score scale head_dim^-0.5, no
    soft-caps, no QK-norm, pre-norm blocks (its post_attention_layernorm is the MLP's input norm)."""
    c = hf.config
    theta = c.rope_parameters["rope_theta"]
    ours = _gemma(hf, "Gemma", layer_types=("full_attention",) * c.num_hidden_layers, rope_local_theta=theta,
                  rope_global_theta=theta, rope_global_scaling=_rope_scaling(c.rope_parameters), qk_norm=False,
                  attn_logit_softcap=0.0, final_logit_softcap=0.0, post_norms=False,
                  activation=_activation(c.hidden_act))
    _check_rope(ours, hf.model.rotary_emb.inv_freq, hf.model.rotary_emb.attention_scaling, "Gemma")
    return ours
