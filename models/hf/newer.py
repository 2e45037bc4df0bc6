"""Newer Llama-likes -> our Llama: CWM (Llama with sliding / full layers), Jais 2 (LayerNorm, ungated squared-ReLU
MLP, biases), HyperCLOVAX (Granite's multipliers, logits times logits_scaling, output norms in sandwich blocks),
Granite SWA / Granite MoE SWA (Granite's, plus attention sinks, sliding layers and NoPE layers), Mellum (Qwen3-MoE's
attention and experts, RoPE per layer type, dense layers), Apertus 1.5's text model (Apertus, lm_head pruned to
output_vocab_size) and NanoChat (weightless RMSNorms, the embeddings normed too, RoPE with the rotation's sign
flipped, QK-norm after RoPE, ungated squared-ReLU MLP, final soft-cap)."""

from __future__ import annotations

import torch

from onnxattn.models._base import set_linear
from onnxattn.models.hf._common import (_activation, _check_rope, _copy, _hf_frequencies, _rope_scaling,
                                       _rotary_dim, _unsupported)
from onnxattn.models.hf.llama import _LLAMA_VARIANTS, _build_llama, _experts, _granite, _llama
from onnxattn.models.hf.moe import _convert, _copy_routed, _fields
from onnxattn.models.llama import LlamaModel


def _jais2(hf) -> LlamaModel:
    # nn.LayerNorm with bias everywhere; Nemotron's ungated up_proj / down_proj MLP (biased with mlp_bias)
    return _llama(hf, variant=lambda c: dict(norm="layer", rms_norm_eps=c.layer_norm_eps, gated_mlp=False))


def _hyperclovax_fields(c) -> dict:
    if not c.logits_scaling:  # transformers multiplies the logits by it; ours divides by its inverse
        raise _unsupported(f"HyperCLOVAX with logits_scaling {c.logits_scaling} is not supported")
    # use_post_norm (Peri-LN): the attention / MLP outputs normed inside the residual too, i.e. sandwich norms
    return _granite(c) | dict(logits_scaling=1.0 / c.logits_scaling, sandwich_norm=bool(c.use_post_norm))


def _hyperclovax(hf) -> LlamaModel:
    return _llama(hf, variant=_hyperclovax_fields)


def _granite_swa_fields(c) -> dict:
    """Granite SWA's attention on top of Granite's: sinks in every layer (transformers scales the output by
    sigmoid(lse - sink), a sink logit in the denominator, as GPT-OSS's), sliding layers per layer_types, and
    layer_rope_theta: 0 for a NoPE layer, else one RoPE per distinct base (only the global one is modelled here)."""
    theta, thetas = c.rope_parameters["rope_theta"], list(c.layer_rope_theta)
    if len(thetas) != c.num_hidden_layers or any(t and t != theta for t in thetas):
        raise _unsupported(f"{c.model_type} with layer_rope_theta {thetas} is not supported: each layer's base must "
                           f"be 0 (NoPE) or rope_parameters' rope_theta ({theta})")
    types = tuple(c.layer_types)
    sliding = "sliding_attention" in types
    if sliding and not c.sliding_window:
        raise _unsupported(f"{c.model_type} with sliding_window {c.sliding_window} and sliding_attention layers is "
                           f"not supported (transformers cannot run it either)")
    return dict(attention_sinks=True, sliding_window=c.sliding_window if sliding else 0,
                layer_types=types if sliding else None, nope_layers=tuple(i for i, t in enumerate(thetas) if not t))


def _granite_swa(hf) -> LlamaModel:
    return _llama(hf, variant=lambda c: _granite(c) | _granite_swa_fields(c))


def _granitemoe_swa(hf) -> LlamaModel:
    """Granite MoE SWA: GraniteMoeShared (Granite's multipliers, top-k experts renormalised, an ungated shared MLP)
    with Granite SWA's attention (see _granite_swa_fields)."""
    c = hf.config
    shared = c.shared_intermediate_size or 0
    fields = _fields(c, qkv_bias=bool(c.attention_bias), o_bias=bool(c.attention_bias),
                     num_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
                     router_scoring="softmax", norm_topk=True, shared_expert_intermediate=shared,
                     shared_expert_gated=False) | _granite(c) | _granite_swa_fields(c)

    def copy_mlp(m, layer):
        h = layer.block_sparse_moe
        _copy_routed(m, h.router.weight, h.experts)
        if shared:  # gate / up fused in input_linear
            gate, up = layer.shared_mlp.input_linear.weight.chunk(2)
            for name, w in (("gate_proj", gate), ("up_proj", up), ("down_proj", layer.shared_mlp.output_linear.weight)):
                set_linear(getattr(m.shared_expert, name), w)

    ours = _convert(hf, fields, lambda layer: layer.block_sparse_moe, copy_mlp, c.model_type)
    with torch.no_grad():  # _convert copies the projections, not the sinks
        for mine, theirs in zip(ours.layers, hf.model.layers):
            _copy(mine.attn.sinks, theirs.self_attn.sinks, "the attention sinks")
    return ours


def _mellum(hf) -> LlamaModel:
    """Mellum: Qwen3-MoE's attention (per-head QK-norm before RoPE) with sliding layers per layer_types and
    rope_parameters per layer type (OLMo 3's sliding_rope), softmax top-k experts, dense layers per mlp_layer_types."""
    def fields(c) -> dict:
        params, kinds = c.rope_parameters, set(c.layer_types)
        for kind in kinds:  # its attention rotates the whole head (transformers cannot run a partial factor)
            factor = params[kind].get("partial_rotary_factor", 1.0)
            if factor != 1.0:
                raise _unsupported(f"Mellum with partial_rotary_factor {factor} on its {kind} layers is not supported "
                                   f"(transformers cannot run it either)")
        if "sliding_attention" in kinds and not c.sliding_window:
            raise _unsupported(f"Mellum with sliding_window {c.sliding_window} and sliding_attention layers is not "
                               f"supported (transformers cannot run it either)")
        # always set: _llama then checks the frequencies per layer type, as Mellum's rotary embedding holds them
        sliding = params.get("sliding_attention") or params["full_attention"]
        return dict(qk_norm=True, sliding_rope=(sliding["rope_theta"], _rope_scaling(sliding))) | _experts(hf)

    return _llama(hf, variant=fields)


def _apertus1p5_text(hf) -> LlamaModel:
    # Apertus' blocks; the lm_head may keep only the text ids' rows (output_vocab_size), the embeddings all of them
    return _llama(hf, variant=lambda c: _LLAMA_VARIANTS["apertus"](c) | dict(output_vocab_size=c.output_vocab_size))


def _swap_halves(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rows [first half | second half] of each head -> [second | first] (w: [heads * head_dim, ...] or biases)."""
    return w.unflatten(0, (heads, 2, head_dim // 2)).flip(1).flatten(0, 2)


def _nanochat(hf) -> LlamaModel:
    """NanoChat: RMSNorms without weights (ours: weights of ones), one of them also on the embeddings before the first
    layer; its RoPE turns the other way (rotate_half gives [x2, -x1]): the same as ours on q / k with the two halves
    of each head swapped, which q_proj's and k_proj's rows here are (q . k is unchanged by swapping both); its
    weightless QK-norm after RoPE equals the op's before it (a rotation keeps each head's RMS); an ungated fc1 / fc2
    MLP; logits soft-capped (final_logit_softcapping)."""
    c = hf.config
    heads, kv_heads = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    if _rotary_dim(c, head_dim) is not None:  # its rotate_half splits the whole head
        raise _unsupported("NanoChat with a partial_rotary_factor is not supported (transformers cannot run it "
                           "either)")
    bias = bool(c.attention_bias)  # q / k / v and o alike
    ours = _build_llama(c, dict(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim, intermediate=c.intermediate_size,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters),
        rms_norm_eps=c.rms_norm_eps, qkv_bias=bias, o_bias=bias, qk_norm=True, gated_mlp=False,
        activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings), embedding_norm=True,
        final_logit_softcap=float(c.final_logit_softcapping or 0.0)))
    src = hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not ours.config.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            for name, n in (("q_proj", heads), ("k_proj", kv_heads)):
                p = getattr(t, name)
                set_linear(getattr(a, name), _swap_halves(p.weight, n, head_dim),
                           None if p.bias is None else _swap_halves(p.bias, n, head_dim))
            for name in ("v_proj", "o_proj"):
                set_linear(getattr(a, name), getattr(t, name).weight, getattr(t, name).bias)
            set_linear(mine.mlp.c_fc, theirs.mlp.fc1.weight)
            set_linear(mine.mlp.c_proj, theirs.mlp.fc2.weight)
            for weight in (a.q_norm, a.k_norm, mine.input_norm.weight, mine.post_attn_norm.weight):
                weight.fill_(1.0)
        ours.norm.weight.fill_(1.0)
        ours.embed_norm.weight.fill_(1.0)
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "NanoChat", long)
    return ours
