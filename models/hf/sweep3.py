"""Moshi's text decoder (moshi: MoshiForCausalLM) and Cohere Compass's text model (cohere_compass_text:
CohereCompassForCausalLM) onto our Llama.

MoshiForCausalLM is Llama's pre-norm blocks (RMSNorm, GQA, half-split RoPE, no biases) with three differences in
layout: each projection is a MoshiLinear holding its nn.Linear as .linear; the gated MLP is one fused fc1 whose rows
are [gate | up] (transformers views its output as (2, ffn_dim / 2) and applies the activation to the first half) and
fc2 as down_proj; the embedding table has vocab_size + 1 rows (the extra one is the "initial" token id vocab_size)
while lm_head has vocab_size (our output_vocab_size). Its mask is full-causal but DynamicCache(config) keeps only
sliding_window - 1 past tokens per layer (sliding_window defaults to 3000 = max_position_embeddings), so every
cached step sees the last sliding_window tokens: ours is that window on every layer, which equals transformers'
cached prefill and decoding whenever the prefill is no longer than the window (a single forward over more tokens
attends to all of them in transformers, which its own decoding does not).

Cohere Compass's text model is Cohere 2's parallel blocks (one bias-free LayerNorm, logits times logit_scale, tied
embeddings) with half-split RoPE (not Cohere's interleaved), its rope_parameters per layer type (None: that type
without RoPE) and the sliding_attention layers windowed. Its rotary embedding is M-RoPE, but the text model expands
position_ids that are None or [batch, seq] to the same row on every axis, where each channel's frequency times that
one position is plain RoPE; only [3 or 4, batch, seq] position_ids (the vision-language model's) tell them apart."""

from __future__ import annotations

import types

import torch

from onnxattn.models._base import set_linear
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _hf_frequencies, _rope_scaling, _unsupported
from onnxattn.models.hf.llama import _build_llama, _copy_cohere_weights
from onnxattn.models.llama import LlamaModel


def _moshi(hf) -> LlamaModel:
    c = hf.config
    if c.ffn_dim % 2:
        raise _unsupported(f"moshi with an odd ffn_dim {c.ffn_dim} does not split into gate and up halves")
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    ours = _build_llama(c, dict(
        vocab_size=c.vocab_size + 1, output_vocab_size=c.vocab_size, hidden=c.hidden_size,
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads, head_dim=head_dim, intermediate=c.ffn_dim // 2,
        rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters, c.max_position_embeddings), rms_norm_eps=c.rms_norm_eps,
        sliding_window=int(c.sliding_window or 0), activation=_activation(c.hidden_act), tie_embeddings=False))
    src = hf.model
    with torch.no_grad():
        _copy(ours.embed_tokens.weight, src.embed_tokens.weight, "the embed_tokens weight")
        _copy(ours.lm_head.weight, hf.lm_head.weight, "the lm_head weight")
        ours.norm.weight.copy_(src.norm.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                linear = getattr(t, name)
                set_linear(getattr(a, name), getattr(linear, "linear", linear).weight)
            gate, up = theirs.mlp.fc1.weight.chunk(2)
            set_linear(mine.mlp.gate_proj, gate)
            set_linear(mine.mlp.up_proj, up)
            set_linear(mine.mlp.down_proj, theirs.mlp.fc2.weight)
            mine.input_norm.weight.copy_(theirs.input_layernorm.weight)
            mine.post_attn_norm.weight.copy_(theirs.post_attention_layernorm.weight)
    short, long = _hf_frequencies(src.layers[0].self_attn.rotary_emb)
    _check_rope(ours, short, src.layers[0].self_attn.rotary_emb.attention_scaling, c.model_type, long)
    return ours


def _cohere_compass_text(hf) -> LlamaModel:
    c = hf.config
    if not hf.logit_scale:  # transformers multiplies by it (1.0 when None); ours divides by its inverse
        raise _unsupported(f"Cohere Compass with logit_scale {hf.logit_scale} is not supported")
    kinds = tuple(c.layer_types)
    sliding = "sliding_attention" in kinds
    if sliding and not c.sliding_window:
        raise _unsupported(f"Cohere Compass with sliding_window {c.sliding_window} and sliding_attention layers is "
                           f"not supported (transformers cannot run it either)")
    ropes = {kind: c.rope_parameters.get(kind) for kind in set(kinds)}
    full, slide = ropes.get("full_attention"), ropes.get("sliding_attention")
    base = full or slide or {"rope_theta": 10000.0}  # no RoPE anywhere: every layer in nope_layers
    head_dim = c.hidden_size // c.num_attention_heads
    bias = bool(c.attention_bias)
    ours = _build_llama(c, dict(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        head_dim=head_dim, intermediate=c.intermediate_size, rope_theta=base["rope_theta"],
        rope_scaling=_rope_scaling(base, c.max_position_embeddings),
        sliding_rope=(slide["rope_theta"], _rope_scaling(slide, c.max_position_embeddings)) if full and slide else None,
        nope_layers=tuple(i for i, kind in enumerate(kinds) if ropes[kind] is None),
        sliding_window=c.sliding_window if sliding else 0, layer_types=kinds if sliding else None,
        rms_norm_eps=c.layer_norm_eps, norm="layer_no_bias", parallel_residual=True, shared_block_norm=True,
        qkv_bias=bias, o_bias=bias, activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings),
        logits_scaling=1.0 / hf.logit_scale))  # x / (1 / s) is within 2 ulp of x * s
    _copy_cohere_weights(ours, hf)  # Cohere 2's blocks: no QK LayerNorm, a dense MLP
    src = hf.model
    for kind, rope in ropes.items():  # each kind's frequencies against transformers' own
        if rope is not None:
            layers = [mine.attn for mine, k in zip(ours.layers, kinds) if k == kind]
            group = types.SimpleNamespace(attention_layers=lambda layers=layers: layers)  # what _check_rope reads
            _check_rope(group, getattr(src.rotary_emb, f"{kind}_inv_freq"),
                        getattr(src.rotary_emb, f"{kind}_attention_scaling"), f"cohere_compass_text's {kind} layers")
    return ours
