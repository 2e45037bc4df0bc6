"""Laguna (Poolside) -> our Llama: per-head QK-norm, query heads per layer (layer_heads), RoPE per layer type with a
rotary dim of its own (sliding_rope, sliding_rotary_dim), the attention output times a softplus gate per head or per
channel (attention_output_gate with output_gate_softplus / output_gate_per_head), and its MoE block: sigmoid scores
of optionally soft-capped router logits (router_logit_softcap), the choice steered by e_score_correction_bias,
renormalised, times moe_routed_scaling_factor, plus an ungated shared expert; dense layers per mlp_layer_types."""

from __future__ import annotations

from onnxattn.models.hf._common import _rope_scaling, _unsupported
from onnxattn.models.hf.llama import _llama
from onnxattn.models.llama import LlamaModel

LAYER_KINDS = ("full_attention", "sliding_attention")


def _rotated(hf, kind: str, head_dim: int) -> int:
    """The channels transformers rotates on `kind` layers: its cos / sin tables are 2 * len(inv_freq) wide (an odd
    int(head_dim * partial_rotary_factor) rounds up there, as here)."""
    dim = 2 * getattr(hf.model.rotary_emb, f"{kind}_inv_freq").numel()
    if not 2 <= dim <= head_dim:
        raise _unsupported(f"Laguna rotating {dim} of {head_dim} channels on its {kind} layers is not supported")
    return dim


def _fields(hf) -> dict:
    c = hf.config
    types = tuple(c.layer_types)
    if set(types) - set(LAYER_KINDS):
        raise _unsupported(f"Laguna with layer_types {list(types)} is not supported (known: {LAYER_KINDS})")
    # transformers keys its rotary embedding by layer type; _llama reads the full layers' parameters
    missing = (set(types) | {"full_attention"}) - {k for k, v in (c.rope_parameters or {}).items() if v}
    if missing:
        raise _unsupported(f"Laguna without rope_parameters for its {sorted(missing)} layers is not supported")
    if "sliding_attention" in types and not c.sliding_window:
        raise _unsupported(f"Laguna with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers cannot run it either)")
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    full = _rotated(hf, "full_attention", head_dim)
    sliding = c.rope_parameters["sliding_attention" if "sliding_attention" in types else "full_attention"]
    heads = tuple(c.num_attention_heads_per_layer)
    # LagunaAttention: one gate per head for gating True or "per-head", else (False too) one per channel
    per_head = c.gating is True or c.gating == "per-head"
    fields = dict(qk_norm=True, layer_heads=None if set(heads) == {c.num_attention_heads} else heads,
                  rotary_dim=None if full == head_dim else full,
                  # sliding_rope always set: _llama then checks our frequencies against each layer type's
                  sliding_rope=(sliding["rope_theta"], _rope_scaling(sliding)),
                  sliding_rotary_dim=_rotated(hf, "sliding_attention", head_dim) if "sliding_attention" in types
                  else None,
                  attention_output_gate=True, output_gate_softplus=True, output_gate_per_head=per_head)
    sparse = [kind == "sparse" for kind in c.mlp_layer_types]
    if any(sparse):  # sigmoid scores (of soft-capped logits), a choice bias, renormalised, then scaled; no groups
        fields |= dict(num_experts=c.num_experts, experts_per_token=c.num_experts_per_tok,
                       moe_intermediate=c.moe_intermediate_size, router_scoring="sigmoid", norm_topk=True,
                       routed_scaling=float(c.moe_routed_scaling_factor),
                       router_logit_softcap=float(c.moe_router_logit_softcapping or 0.0),
                       dense_layers=tuple(i for i, s in enumerate(sparse) if not s),
                       shared_expert_intermediate=c.shared_expert_intermediate_size or 0, shared_expert_gated=False)
    return fields


def _laguna(hf) -> LlamaModel:
    fields = _fields(hf)
    return _llama(hf, variant=lambda _: fields)
