"""Llama-like mixtures of experts whose blocks transformers lays out apart from the Llama-likes' (their own router
modules, shared MLPs outside the expert block): Granite 3 MoE (GraniteMoe, GraniteMoeShared), ERNIE 4.5 MoE,
PhiMoE (Phi-3.5-MoE) and DBRX (fused Wqkv, clip_qkv, p-norm renormalised routing) -> our Llama with models.moe
experts."""

from __future__ import annotations

import torch

from onnxattn.models._base import copy_linears, set_linear
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _hf_frequencies, _rope_scaling, _unsupported
from onnxattn.models.hf.llama import _build_llama, _granite
from onnxattn.models.llama import LlamaModel
from onnxattn.models.moe import MixtureOfExperts


def _fields(c, **fields) -> dict:
    """LlamaConfig fields shared by these: GQA, RoPE (never partial here), RMSNorm unless overridden."""
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return dict(vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
                head_dim=head_dim, intermediate=c.intermediate_size, rope_theta=c.rope_parameters["rope_theta"],
                rope_scaling=_rope_scaling(c.rope_parameters), rms_norm_eps=c.rms_norm_eps,
                activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings)) | fields


def _convert(hf, fields: dict, moe_of, copy_mlp, what: str) -> LlamaModel:
    """Builds ours from `fields`, copies embeddings, head, norms and attention, then each layer's MLP with
    copy_mlp(ours, their layer); moe_of(their layer) is the expert block or None (a dense layer)."""
    c = hf.config
    dense = tuple(i for i, layer in enumerate(hf.model.layers) if moe_of(layer) is None)
    ours = _build_llama(c, fields | dict(dense_layers=dense))
    src = hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not ours.config.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        if ours.config.lm_head_bias:
            ours.lm_head.bias.copy_(hf.lm_head.bias)
        ours.norm.load_state_dict(src.norm.state_dict())
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            copy_linears(a, t)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
            copy_mlp(mine.mlp, theirs)
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, what, long)
    return ours


def _copy_routed(m: MixtureOfExperts, router: torch.Tensor, experts) -> None:
    _copy(m.router, router, "the router weight")
    _copy(m.gate_up_proj, experts.gate_up_proj, "the experts' gate_up_proj")  # [E, 2I, H], gate rows first
    _copy(m.down_proj, experts.down_proj, "the experts' down_proj")


def _granitemoe(hf) -> LlamaModel:
    """Granite 3 MoE: Granite's multipliers, top-k experts in every layer (a softmax over the top-k logits, i.e.
    renormalised); GraniteMoeShared adds an ungated shared SwiGLU (shared_mlp, gate / up fused in input_linear)."""
    c = hf.config
    shared = getattr(c, "shared_intermediate_size", 0) or 0
    fields = _fields(c, qkv_bias=bool(c.attention_bias), o_bias=bool(c.attention_bias),
                     num_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
                     router_scoring="softmax", norm_topk=True, shared_expert_intermediate=shared,
                     shared_expert_gated=False) | _granite(c)

    def copy_mlp(m, layer):
        h = layer.block_sparse_moe
        _copy_routed(m, h.router.weight, h.experts)
        if shared:
            gate, up = layer.shared_mlp.input_linear.weight.chunk(2)
            for name, w in (("gate_proj", gate), ("up_proj", up), ("down_proj", layer.shared_mlp.output_linear.weight)):
                set_linear(getattr(m.shared_expert, name), w)

    return _convert(hf, fields, lambda layer: layer.block_sparse_moe, copy_mlp, c.model_type)


def _ernie4_5_moe(hf) -> LlamaModel:
    """ERNIE 4.5 MoE: ERNIE 4.5's interleaved RoPE and use_bias (the lm_head's too); softmax routing whose choice adds
    e_score_correction_bias, renormalised by the sum clamped to moe_norm_min; moe_num_shared_experts SwiGLUs as one
    wider ungated shared expert (biased with use_bias); dense layers outside moe_layer_start / end / interval."""
    c = hf.config
    bias = bool(c.use_bias)
    fields = _fields(c, qkv_bias=bias, o_bias=bias, mlp_bias=bias, lm_head_bias=bias, rope_interleaved=True,
                     num_experts=c.moe_num_experts, experts_per_token=c.moe_k, moe_intermediate=c.moe_intermediate_size,
                     router_scoring="softmax", norm_topk=True, router_choice_bias=True,
                     router_norm_min=float(c.moe_norm_min or 0.0),
                     shared_expert_intermediate=c.moe_intermediate_size * (c.moe_num_shared_experts or 0),
                     shared_expert_gated=False, shared_expert_bias=bias)

    def copy_mlp(m, layer):
        h = layer.mlp
        if not isinstance(m, MixtureOfExperts):
            m.load_state_dict(h.state_dict())  # gate_proj / up_proj / down_proj, biased with use_bias
            return
        _copy_routed(m, h.gate.weight, h.experts)
        _copy(m.e_score_correction_bias, h.gate.moe_statics.e_score_correction_bias.squeeze(0),
              "the e_score_correction_bias")
        if m.shared_expert is not None:
            m.shared_expert.load_state_dict(h.shared_experts.state_dict())

    return _convert(hf, fields, lambda layer: layer.mlp if hasattr(layer.mlp, "experts") else None, copy_mlp,
                    "ERNIE 4.5 MoE")


def _phimoe(hf) -> LlamaModel:
    """PhiMoE (Phi-3.5-MoE): LayerNorm blocks (epsilon rms_norm_eps), attention biases, a biased lm_head, and the
    SparseMixer router as transformers runs it at inference (always two experts)."""
    c = hf.config
    params = c.rope_parameters
    if params.get("rope_type", "default") != "default":
        # any other type makes its rotary embedding scale cos / sin by short_mscale or long_mscale, picked per
        # forward by the sequence length; the node takes the RoPE attention scaling as a constant
        raise _unsupported(f"PhiMoE with rope_type {params.get('rope_type')!r} is not supported: its rotary "
                           f"embedding scales by short_mscale or long_mscale per forward (our op's RoPE scaling is a "
                           f"constant)")
    if c.num_experts_per_tok != 2:
        raise _unsupported(f"PhiMoE with num_experts_per_tok {c.num_experts_per_tok} is not supported: transformers' "
                           f"sparsemixer routes every token to 2 experts whatever it says")
    fields = _fields(c, norm="layer", qkv_bias=bool(c.attention_bias), o_bias=bool(c.attention_bias),
                     lm_head_bias=bool(c.lm_head_bias), num_experts=c.num_local_experts, experts_per_token=2,
                     router_scoring="sparsemixer", router_jitter_eps=float(c.router_jitter_noise))

    def copy_mlp(m, layer):
        h = layer.mlp
        _copy_routed(m, h.router.weight, h.experts)

    return _convert(hf, fields, lambda layer: layer.mlp, copy_mlp, "PhiMoE")



def _dbrx(hf) -> LlamaModel:
    """DBRX: one fused Wqkv (rows [q | k | v]) clamped to +-clip_qkv, bias-free LayerNorms (epsilon 1e-5, nn.LayerNorm's
    default), half-split RoPE, experts in every layer routed by a softmax over all experts, top-k, renormalised by
    the p-norm of the chosen weights (moe_normalize_expert_weights; None: not renormalised); each expert's w1 / v1 /
    w2 rows [E * I, H] are its gate / up / transposed down projections."""
    c = hf.config
    a, f = c.attn_config, c.ffn_config
    if a.clip_qkv is None:  # its attention clamps with min = max = None, which torch.clamp refuses
        raise _unsupported("DBRX with attn_config.clip_qkv None is not supported (transformers cannot run it either)")
    p = f.moe_normalize_expert_weights
    head_dim = c.d_model // c.n_heads
    ours = _build_llama(c, dict(
        vocab_size=c.vocab_size, hidden=c.d_model, num_layers=c.n_layers, num_heads=c.n_heads,
        num_kv_heads=a.kv_n_heads, head_dim=head_dim, intermediate=f.ffn_hidden_size,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters),
        norm="layer_no_bias", rms_norm_eps=1e-5, clip_qkv=float(a.clip_qkv),
        activation=_activation(f.ffn_act_fn.get("name", "silu")), tie_embeddings=False, num_experts=f.moe_num_experts,
        experts_per_token=f.moe_top_k, router_scoring="softmax", norm_topk=p is not None,
        router_norm_p=1.0 if p is None else float(p)))
    src = hf.transformer
    e, i = f.moe_num_experts, f.ffn_hidden_size
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.wte.weight)
        ours.lm_head.weight.copy_(hf.lm_head.weight)
        ours.norm.load_state_dict(src.norm_f.state_dict())
        for mine, theirs in zip(ours.layers, src.blocks):
            block, t = theirs.norm_attn_norm, theirs.norm_attn_norm.attn
            for name, w in zip(("q_proj", "k_proj", "v_proj"),
                               t.Wqkv.weight.split([mine.attn.q_width, mine.attn.kv_width, mine.attn.kv_width])):
                set_linear(getattr(mine.attn, name), w)
            set_linear(mine.attn.o_proj, t.out_proj.weight)
            mine.input_norm.load_state_dict(block.norm_1.state_dict())
            mine.post_attn_norm.load_state_dict(block.norm_2.state_dict())
            m, x = mine.mlp, theirs.ffn.experts.mlp
            _copy(m.router, theirs.ffn.router.layer.weight, "the router weight")
            _copy(m.gate_up_proj, torch.cat((x.w1.view(e, i, -1), x.v1.view(e, i, -1)), 1), "the experts' w1 / v1")
            _copy(m.down_proj, x.w2.view(e, i, -1).transpose(1, 2), "the experts' w2")
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "DBRX", long)
    return ours
