"""More decoders onto our GPT-2 and Llama, no new ops: GPT-Neo (global / local layers, unscaled scores), BioGPT and
XGLM (offset learned or sinusoidal positions, scaled embeddings) -> our GPT-2; CodeGen (GPT-J with an mp_num-shard
fused qkv), Persimmon (partial rotary, a LayerNorm per head of q / k), Flint (QK-norm, sinks, RoPE on the sliding
layers only, sigmoid experts plus a shared one), HY-V3 (QK-norm, DeepSeek-V3-like sigmoid routing with a choice bias
and scaling) and Kolibri-1 (EXAONE 4's attention in GLM-4's sandwich blocks, experts ranked by logits + a choice
bias) -> our Llama. ALiBi models (MPT, BLOOM) are refused in models.hf (REFUSED in _common)."""

from __future__ import annotations

import torch

from onnxattn.models._base import set_linear
from onnxattn.models.gpt2 import GPT2Model
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _rope_scaling, _rotary_dim, _unsupported
from onnxattn.models.hf.gpt2 import _build_gpt2, _copy_fairseq_layers
from onnxattn.models.hf.llama import (_build_llama, _copy_head, _gptj_family, _hf_frequencies, _llama, _parallel_fields,
                                      _rope_on_sliding_only)
from onnxattn.models.llama import LlamaModel
from onnxattn.models.moe import MixtureOfExperts


def _require_tied(c, what: str) -> None:
    if not c.tie_word_embeddings:  # our GPT-2's head is the input embedding
        raise _unsupported(f"{what} with an output embedding other than the input one (tie_word_embeddings=False) "
                           f"is not supported")


def _gpt_neo(hf) -> GPT2Model:
    """GPT-Neo: GPT-2's blocks with separate bias-free q / k / v (out_proj biased), no 1/sqrt(d) scaling, and layers
    typed "local": a causal window of window_size keys (transformers' mask keeps i - window_size < j <= i)."""
    c = hf.config
    _require_tied(c, "GPT-Neo")
    local = tuple(i for i, kind in enumerate(c.attention_layers) if kind == "local")
    if local and c.window_size < 1:
        raise _unsupported(f"GPT-Neo with window_size {c.window_size} and local layers is not supported")
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, hidden=c.hidden_size, num_layers=c.num_layers,
        num_heads=c.num_heads, intermediate=c.intermediate_size or 4 * c.hidden_size,
        layer_norm_eps=c.layer_norm_epsilon, activation=_activation(c.activation_function), scale_attn_weights=False,
        window=c.window_size if local else 0, window_layers=local))
    src = hf.transformer
    with torch.no_grad():
        ours.wte.weight.copy_(src.wte.weight)
        _copy(ours.wpe.weight, src.wpe.weight, "the position table")
        ours.ln_f.load_state_dict(src.ln_f.state_dict())
        for mine, theirs in zip(ours.layers, src.h):
            t = theirs.attn.attention
            # q / k / v have no bias: ours (one bias for the merged projection) gets zeros
            set_linear(mine.attn.qkv_proj, torch.cat([t.q_proj.weight, t.k_proj.weight, t.v_proj.weight]))
            set_linear(mine.attn.o_proj, t.out_proj.weight, t.out_proj.bias)
            set_linear(mine.c_fc, theirs.mlp.c_fc.weight, theirs.mlp.c_fc.bias)
            set_linear(mine.c_proj, theirs.mlp.c_proj.weight, theirs.mlp.c_proj.bias)
            mine.ln_1.load_state_dict(theirs.ln_1.state_dict())
            mine.ln_2.load_state_dict(theirs.ln_2.state_dict())
    return ours


def _copy_fairseq_decoder(ours: GPT2Model, src, positions: torch.Tensor) -> GPT2Model:
    """BioGPT / XGLM (fairseq's decoder layout): embed_tokens, a position table (`positions`, offset rows included),
    per layer self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1 / fc2, final_layer_norm; the final layer_norm."""
    with torch.no_grad():
        ours.wte.weight.copy_(src.embed_tokens.weight)
        _copy(ours.wpe.weight, positions[:ours.wpe.weight.shape[0]], "the position table")
        ours.ln_f.load_state_dict(src.layer_norm.state_dict())
        _copy_fairseq_layers(ours, src.layers)
    return ours


def _biogpt(hf) -> GPT2Model:
    """BioGPT: learned positions offset by 2 (OPT's), token embeddings times sqrt(hidden) with scale_embedding,
    pre-LayerNorm blocks (nn.LayerNorm's epsilon), biased projections, tied output_projection."""
    c = hf.config
    _require_tied(c, "BioGPT")
    src = hf.biogpt
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, hidden=c.hidden_size,
        num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads, intermediate=c.intermediate_size,
        layer_norm_eps=1e-5, activation=_activation(c.hidden_act), position_offset=src.embed_positions.offset,
        embedding_multiplier=src.embed_tokens.embed_scale))
    return _copy_fairseq_decoder(ours, src, src.embed_positions.weight)


def _xglm(hf) -> GPT2Model:
    """XGLM: fixed sinusoidal positions offset by 2 (their table copied into ours), token embeddings times
    sqrt(d_model) with scale_embedding, pre-LayerNorm blocks, biased projections, tied lm_head."""
    c = hf.config
    _require_tied(c, "XGLM")
    if c.add_cross_attention:
        raise _unsupported("XGLM with add_cross_attention is not supported (decoder-only here)")
    src = hf.model
    table = src.embed_positions.weights  # [max_position_embeddings + 2 (or more: it grows), d_model]
    ours = _build_gpt2(c, dict(
        vocab_size=c.vocab_size, n_positions=c.max_position_embeddings, hidden=c.d_model, num_layers=c.num_layers,
        num_heads=c.attention_heads, intermediate=c.ffn_dim, layer_norm_eps=1e-5,
        activation=_activation(c.activation_function), position_offset=src.embed_positions.offset,
        embedding_multiplier=src.embed_tokens.embed_scale))
    return _copy_fairseq_decoder(ours, src, table)


def _codegen(hf) -> LlamaModel:
    """CodeGen: GPT-J's blocks (models.hf.llama._gptj_family) with a fused qkv_proj whose rows come in mp_num = 4
    shards, each [q | v | k] of hidden / 4 rows."""
    hidden = hf.config.n_embd
    mp_num = hf.transformer.h[0].attn.mp_num

    def qkv_weights(attn):
        shards = attn.qkv_proj.weight.unflatten(0, (mp_num, 3, hidden // mp_num))
        return shards[:, 0].flatten(0, 1), shards[:, 2].flatten(0, 1), shards[:, 1].flatten(0, 1)  # q, k, v

    return _gptj_family(hf, "CodeGen", qkv_weights)


def _persimmon(hf) -> LlamaModel:
    """Persimmon / Fuyu's decoder: sequential LayerNorm blocks, a fused query_key_value with rows per head
    [q_h | k_h | v_h] (GPT-NeoX's), qk_layernorm as one LayerNorm (weight and bias) shared by the heads of q / k,
    half-split RoPE on partial_rotary_factor of each head, biased ungated squared-ReLU MLP."""
    c = hf.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=heads, layers=c.num_hidden_layers, intermediate=c.intermediate_size,
        eps=c.layer_norm_eps, activation=c.hidden_act, rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters), rotary_dim=_rotary_dim(c, head_dim), qkv_bias=True, o_bias=True,
        parallel_residual=False, qk_layer_norm="shared" if c.qk_layernorm else None))
    src = hf.model
    with torch.no_grad():
        _copy_head(ours, src.embed_tokens, hf.lm_head, src.final_layernorm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            w = t.query_key_value.weight.unflatten(0, (heads, 3, head_dim))
            b = t.query_key_value.bias.unflatten(0, (heads, 3, head_dim))
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                set_linear(getattr(a, name), w[:, i].flatten(0, 1), b[:, i].flatten())
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            if ours.config.qk_layer_norm:
                a.q_head_norm.load_state_dict(t.q_layernorm.state_dict())
                a.k_head_norm.load_state_dict(t.k_layernorm.state_dict())
            set_linear(mine.mlp.c_fc, theirs.mlp.dense_h_to_4h.weight, theirs.mlp.dense_h_to_4h.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.dense_4h_to_h.weight, theirs.mlp.dense_4h_to_h.bias)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "Persimmon", long)
    return ours


def _moe_layers(hf, mlp: str = "mlp") -> tuple[tuple[int, ...], int]:
    """(the dense layers, the shared expert's width: 0 for none) read from the modules."""
    blocks = [getattr(layer, mlp) for layer in hf.model.layers]
    dense = tuple(i for i, b in enumerate(blocks) if not hasattr(b, "experts"))
    shared = next((getattr(b, n) for b in blocks if hasattr(b, "experts")
                   for n in ("shared_expert", "shared_experts") if hasattr(b, n)), None)
    return dense, 0 if shared is None else shared.down_proj.in_features


def _flint(hf) -> LlamaModel:
    """Flint: Qwen3's attention (per-head QK-norm) with a learned sink per head, RoPE on the sliding layers only (the
    full ones have no positions), experts by sigmoid scores (no choice bias) renormalised with norm_topk_prob, plus
    an ungated shared expert; mlp_only_layers dense."""
    c = hf.config
    types = tuple(c.layer_types)
    if "sliding_attention" in types and not c.sliding_window:
        raise _unsupported(f"Flint with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers' sliding layers would then not rotate either)")
    dense, shared = _moe_layers(hf)

    def fields(c) -> dict:
        return dict(qk_norm=True, attention_sinks=True,
                    nope_layers=tuple(i for i, kind in enumerate(types) if kind != "sliding_attention"),
                    num_experts=c.num_experts, experts_per_token=c.num_experts_per_tok,
                    moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid",
                    norm_topk=bool(c.norm_topk_prob), dense_layers=dense, shared_expert_intermediate=shared,
                    shared_expert_gated=False)

    def copy_experts(m: MixtureOfExperts, h) -> None:  # its bias stays zero: no choice bias
        _copy(m.router, h.gate.weight, "the router weight")
        _copy(m.gate_up_proj, h.experts.gate_up_proj, "the experts' gate_up_proj")
        _copy(m.down_proj, h.experts.down_proj, "the experts' down_proj")
        if m.shared_expert is not None:
            m.shared_expert.load_state_dict(h.shared_expert.state_dict())

    return _llama(hf, variant=fields, copy_experts=copy_experts)


def _hy_v3(hf) -> LlamaModel:
    """HY-V3 (Hunyuan 3): Apertus' attention (per-head QK-norm before RoPE) in pre-norm blocks; dense layers per
    mlp_layer_types, the others sigmoid-scored experts chosen with a choice bias, renormalised then times
    router_scaling_factor, plus an ungated shared expert (num_shared_experts of moe_intermediate_size)."""
    dense, shared = _moe_layers(hf)

    def fields(c) -> dict:
        return dict(qk_norm=True, num_experts=c.num_experts, experts_per_token=c.num_experts_per_tok,
                    moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid", norm_topk=True,
                    routed_scaling=float(c.router_scaling_factor), dense_layers=dense,
                    shared_expert_intermediate=shared, shared_expert_gated=False)

    return _llama(hf, variant=fields)


def _kolibri1(hf) -> LlamaModel:
    """Kolibri-1: EXAONE 4's attention (per-head QK-norm; with a window, RoPE on the sliding layers only) in GLM-4's
    sandwich blocks; experts in every layer, chosen by top-k of the logits plus a choice bias, weighted by the
    sigmoid of their logits (renormalised with norm_topk_prob), plus an ungated shared expert."""
    dense, shared = _moe_layers(hf)

    def fields(c) -> dict:
        return dict(qk_norm=True, sandwich_norm=True, num_experts=c.num_experts,
                    experts_per_token=c.num_experts_per_tok, moe_intermediate=c.moe_intermediate_size,
                    router_scoring="sigmoid", router_rank_by_logits=True, norm_topk=bool(c.norm_topk_prob),
                    dense_layers=dense, shared_expert_intermediate=shared, shared_expert_gated=False) | \
            _rope_on_sliding_only(c, "Kolibri-1", window_required=False)

    return _llama(hf, variant=fields)
