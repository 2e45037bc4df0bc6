"""MiMo-V2-Flash (Xiaomi) -> our Llama: query / key heads wider than the value heads (v_head_dim), the sliding layers
with twice the full layers' KV heads (layer_kv_heads) and attention sinks (sink_layers), RoPE per layer type on the
leading channels of each head, values times attention_value_scale (folded into v_proj), DeepSeek-V3's sigmoid
routing without a shared expert, dense layers per mlp_layer_types. Its multi-token-prediction layers (model.mtp.*,
which transformers drops on load too) take no part in the causal LM's logits."""

from __future__ import annotations

import torch

from onnxattn.models.hf._common import _rope_scaling, _unsupported
from onnxattn.models.hf.llama import _llama
from onnxattn.models.llama import LlamaModel

LAYER_KINDS = ("full_attention", "sliding_attention")


def _rotary_dim(hf, head_dim: int) -> int | None:
    """The channels transformers rotates: its cos / sin tables are 2 * len(inv_freq) wide, per layer type (the
    partial_rotary_factor defaults to 0.334 there, not 1). One count for all layer types (ours is per model)."""
    rotary = hf.model.rotary_emb
    dims = {2 * getattr(rotary, f"{kind}_inv_freq").numel() for kind in rotary.layer_types}
    if len(dims) != 1:
        raise _unsupported(f"MiMo-V2-Flash rotating {sorted(dims)} channels on its different layer types is not "
                           f"supported (one rotary dim for all layers)")
    dim = dims.pop()
    if not 2 <= dim <= head_dim:
        raise _unsupported(f"MiMo-V2-Flash rotating {dim} of {head_dim} channels is not supported")
    return None if dim == head_dim else dim


def _fields(hf) -> dict:
    c = hf.config
    types = tuple(c.layer_types)
    if set(types) - set(LAYER_KINDS):
        raise _unsupported(f"MiMo-V2-Flash with layer_types {list(types)} is not supported (known: {LAYER_KINDS})")
    # transformers keys its rotary embedding by layer type; _llama reads the full layers' parameters
    missing = (set(types) | {"full_attention"}) - set(c.rope_parameters or {})
    if missing:
        raise _unsupported(f"MiMo-V2-Flash without rope_parameters for its {sorted(missing)} layers is not supported")
    sliding = tuple(i for i, kind in enumerate(types) if kind == "sliding_attention")
    if sliding and not c.sliding_window:
        raise _unsupported(f"MiMo-V2-Flash with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers cannot run it either)")
    params = c.rope_parameters.get("sliding_attention") or c.rope_parameters["full_attention"]
    # sliding_rope always set: _llama then checks our frequencies against each layer type's
    fields = dict(sliding_rope=(params["rope_theta"], _rope_scaling(params)), rotary_dim=_rotary_dim(hf, c.head_dim),
                  v_head_dim=c.v_head_dim, o_bias=False,  # attention_bias biases q / k / v only
                  # MiMoV2FlashAttention: the sliding layers have twice the KV heads, and the sinks
                  layer_kv_heads=tuple(c.num_key_value_heads * (2 if i in sliding else 1) for i in range(len(types))),
                  attention_sinks=bool(sliding), sink_layers=sliding or None)
    moe = [hasattr(layer.mlp, "experts") for layer in hf.model.layers]
    if any(moe):  # DeepSeek-V3's router (sigmoid scores, choice bias, groups by top-2 sum), no shared expert
        fields |= dict(num_experts=c.n_routed_experts, experts_per_token=c.num_experts_per_tok,
                       moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid",
                       norm_topk=bool(c.norm_topk_prob), routed_scaling=float(c.routed_scaling_factor),
                       num_groups=c.n_group, groups_per_token=c.topk_group,
                       dense_layers=tuple(i for i, sparse in enumerate(moe) if not sparse))
    return fields


def _mimo_v2_flash(hf) -> LlamaModel:
    c = hf.config
    fields = _fields(hf)
    ours = _llama(hf, variant=lambda _: fields)
    scale = 1.0 if c.attention_value_scale is None else float(c.attention_value_scale)
    if scale != 1.0:  # transformers scales v_proj's output (cached so too): the same as scaling its weight and bias
        with torch.no_grad():
            for layer in ours.layers:
                layer.attn.v_proj.weight.mul_(scale)
                if layer.attn.v_proj.bias is not None:
                    layer.attn.v_proj.bias.mul_(scale)
    return ours
