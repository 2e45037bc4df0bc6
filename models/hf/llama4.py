"""Llama 4's text decoder (Llama4ForCausalLM, model_type llama4_text) -> our Llama, through models.hf.llama's _llama.

RoPE layers (no_rope_layers 1) rotate interleaved pairs over the whole head and, typed "chunked_attention", attend
within chunks of attention_chunk_size cache positions (the node's attention_chunk); their use_qk_norm is an RMS norm
without weight after RoPE, which commutes with the rotation (norm-preserving, whole head), so it is the node's
QK-norm with weights of ones. NoPE layers attend causally over everything, with attn_temperature_tuning q times
1 + attn_scale * log(1 + floor((cache position + 1) / floor_scale)) in torch before the node (LlamaConfig's query
scale). MoE layers (moe_layers, from interleave_moe_layer_step) score the top-k router logits by sigmoid and weigh
the chosen experts' inputs by them (expert_input_scaling), plus an ungated shared expert; dense layers' MLPs are
intermediate_size_mlp wide, the experts and the shared expert intermediate_size."""

from __future__ import annotations

import math

from onnxattn.models.hf._common import _copy, _unsupported
from onnxattn.models.hf.llama import _llama
from onnxattn.models.llama import LlamaModel
from onnxattn.models.moe import MixtureOfExperts

_LAYER_TYPES = ("chunked_attention", "full_attention")  # the masks Llama4TextModel builds


def _fields(c) -> dict:
    n = c.num_hidden_layers
    types = tuple(c.layer_types[:n])
    if not set(types) <= set(_LAYER_TYPES):  # transformers has no mask for the others
        raise _unsupported(f"Llama 4 layer types other than {', '.join(_LAYER_TYPES)} are not supported, got "
                           f"{sorted(set(types) - set(_LAYER_TYPES))}")
    if "chunked_attention" in types and not c.attention_chunk_size:
        raise _unsupported(f"Llama 4 with chunked_attention layers and attention_chunk_size "
                           f"{c.attention_chunk_size} is not supported (transformers cannot run it either)")
    rope = [bool(r) for r in c.no_rope_layers[:n]]
    nope = tuple(i for i, r in enumerate(rope) if not r)
    fields = dict(
        rope_interleaved=True, rotary_dim=None,  # its default RoPE ignores partial_rotary_factor (_check_rope checks)
        layer_types=types, attention_chunk=c.attention_chunk_size or 0, nope_layers=nope,
        qk_norm=bool(c.use_qk_norm), qk_norm_layers=tuple(i for i, r in enumerate(rope) if r),
        intermediate=c.intermediate_size_mlp)
    if c.attn_temperature_tuning and nope:
        if c.floor_scale < 1 or not math.isfinite(c.attn_scale):  # transformers divides by floor_scale
            raise _unsupported(f"Llama 4 with attn_temperature_tuning, floor_scale {c.floor_scale} and attn_scale "
                               f"{c.attn_scale} is not supported (floor_scale must be >= 1, attn_scale finite)")
        fields |= dict(query_scale_beta=float(c.attn_scale), query_scale_period=c.floor_scale, query_scale_offset=1,
                       query_scale_cache_positions=True, query_scale_layers=nope)
    moe = set(c.moe_layers) & set(range(n))  # as Llama4TextDecoderLayer decides
    if moe:  # top-k by logit, as transformers ranks them (not by sigmoid score); the scores are not renormalised
        fields |= dict(num_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
                       moe_intermediate=c.intermediate_size, router_scoring="sigmoid", norm_topk=False,
                       router_rank_by_logits=True, expert_input_scaling=True,
                       shared_expert_intermediate=c.intermediate_size, shared_expert_gated=False, dense_layers=tuple(i for i in range(n) if i not in moe))
    return fields


def _copy_experts(m: MixtureOfExperts, h) -> None:
    """A Llama4TextMoe: experts stored for x @ W (gate_up_proj [E, H, 2I], gate columns first; down_proj [E, I, H]),
    ours as transformers' other MoEs ([E, 2I, H], [E, H, I])."""
    _copy(m.router, h.router.weight, "the router weight")
    _copy(m.gate_up_proj, h.experts.gate_up_proj.transpose(1, 2), "the experts' gate_up_proj")
    _copy(m.down_proj, h.experts.down_proj.transpose(1, 2), "the experts' down_proj")
    m.shared_expert.load_state_dict(h.shared_expert.state_dict())


def _llama4(hf) -> LlamaModel:
    return _llama(hf, variant=_fields, mlp="feed_forward", copy_experts=_copy_experts)
