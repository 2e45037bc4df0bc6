"""Laguna (models.hf.laguna) from tiny configs with random weights, exported with onnxattn.export.from_transformers:
onnxruntime's logits with our kernels match the transformers model's for a prefill and three decode steps (fp32,
<= 1e-4 relative, as tests/test_hf_newer.py); the nodes carry each layer's query heads, window and RoPE (base and
rotated channels per layer type); greedy generation from the exported graph equals transformers'. Each Laguna feature,
switched off in our model, misses transformers' logits (torch against torch); settings the converter does not model
are named, and LlamaConfig checks the new options' values."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "LagunaForCausalLM"):
    pytest.skip("this transformers has no Laguna", allow_module_level=True)

from hf_helpers import (NO_TOKENS, check_export_matches, check_generation_matches, eager_relative_error,  # noqa: E402
                        randomize)

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from onnxattn.models.hf.laguna import _laguna  # noqa: E402
from onnxattn.nn import GroupedQueryAttention  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
# heads of 16 channels; LagunaConfig's default RoPE: the full layers rotate 8 (partial_rotary_factor 0.5) at base 5e5,
# the sliding ones all 16 at base 1e4; top-2 of 8 experts, x 2.5, plus a shared expert
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             head_dim=16, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
             shared_expert_intermediate_size=48, moe_routed_scaling_factor=2.5, **NO_TOKENS)


def laguna(**overrides):
    """A tiny Laguna with random weights (its router's e_score_correction_bias is a parameter: randomized too)."""
    torch.manual_seed(0)
    return randomize(T.LagunaForCausalLM(T.LagunaConfig(**SMALL | overrides)))


CASES = {
    # layer 0 full and dense, layers 1-2 sliding (window 6 < prompt 8) with experts; 4, 8 and 2 query heads; one
    # softplus gate per head; router logits soft-capped at 1.5
    "laguna": dict(num_hidden_layers=3, num_attention_heads_per_layer=[4, 8, 2], sliding_window=6,
                   layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                   moe_router_logit_softcapping=1.5),
    # full layers only, a softplus gate per channel, biased projections, no soft-cap, other RoPE bases
    "laguna-per-element": dict(num_hidden_layers=2, gating="per-element", attention_bias=True, rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.75},
        "sliding_attention": {"rope_type": "default", "rope_theta": 5e4, "partial_rotary_factor": 1.0}}),
}
NODES = {"laguna": dict(num_heads=[4, 8, 2], kv_num_heads=[2, 2, 2], window=[0, 6, 6], rotary_dim=[8, 16, 16],
                        rope_base=[5e5, 1e4, 1e4]),
         "laguna-per-element": dict(num_heads=[4, 4], window=[0, 0], rotary_dim=[12, 12], rope_base=[1e6, 1e6])}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    check_export_matches(laguna(**CASES[name]), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=NODES[name],
                         layers=len(NODES[name]["window"]))


def test_generation_matches_transformers(tmp_path):
    check_generation_matches(laguna(**CASES["laguna"]), tmp_path, vocab=VOCAB)


IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))


def _ours_vs_hf(hf, ours) -> float:
    return eager_relative_error(hf, ours, IDS)


def _ungated(m):
    for layer in m.layers:  # the base forward leaves o_proj's gate unset: the output goes in as it is
        layer.attn.forward = lambda x, attn=layer.attn, **kv: GroupedQueryAttention.forward(attn, x, **kv)


def _each_attn(m, field, value):
    for layer in m.layers:
        setattr(layer.attn, field, value)


def _each_moe(m, change):
    for layer in m.layers:
        if hasattr(layer.mlp, "router"):
            change(layer.mlp)


OFF = {
    "gate": ("laguna", _ungated),
    "gate_softplus": ("laguna", lambda m: _each_attn(m, "output_gate_softplus", False)),  # sigmoid instead
    "gate_per_element": ("laguna-per-element", _ungated),
    "qk_norm": ("laguna", lambda m: [_each_attn(m, f, None) for f in ("q_norm", "k_norm")]),
    "window": ("laguna", lambda m: _each_attn(m, "window", 0)),
    "router_softcap": ("laguna", lambda m: _each_moe(m, lambda moe: setattr(moe, "logit_softcap", 0.0))),
    "choice_bias": ("laguna", lambda m: _each_moe(m, lambda moe: moe.e_score_correction_bias.zero_())),
    "routed_scaling": ("laguna", lambda m: _each_moe(m, lambda moe: setattr(moe, "routed_scaling", 1.0))),
    "shared_expert": ("laguna", lambda m: _each_moe(m, lambda moe: setattr(moe, "shared_expert", None))),
}


@pytest.mark.parametrize("feature", list(OFF))
def test_each_feature_matters(feature):
    """Our model with one feature switched off misses transformers' logits by far more than the 1e-4 tolerance
    (torch against torch: our ops' eager references; with every feature on they agree to ~1e-6)."""
    case, switch_off = OFF[feature]
    hf = laguna(**CASES[case])
    ours = _laguna(hf).eval()
    assert _ours_vs_hf(hf, ours) < 1e-4
    with torch.no_grad():
        switch_off(ours)
    error = _ours_vs_hf(hf, ours)
    assert error > 1e-3, error


def test_unsupported_settings_are_named(tmp_path):
    hf = laguna(num_hidden_layers=2, rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    with pytest.raises(UnsupportedModel, match="Laguna rotating 0 of 16 channels on its full_attention layers is not "
                                               "supported"):
        from_transformers(hf, tmp_path / "x.onnx")


@pytest.mark.parametrize("fields, message", [
    (dict(layer_heads=(4,)), r"layer_heads must list one query head count per layer \(2\), got \(4,\)"),
    (dict(layer_heads=(4, 3)), r"num_heads \(3\) must be a positive multiple of num_kv_heads \(2\)"),
    (dict(sliding_rotary_dim=3), r"sliding_rotary_dim must be even and in \[2, head_dim = 16\], got 3"),
    (dict(output_gate_softplus=True), "output_gate_softplus and output_gate_per_head need attention_output_gate"),
    (dict(router_logit_softcap=-1.0), r"router_logit_softcap must be >= 0 and finite \(0: off\), got -1.0"),
], ids=["heads-count", "heads-divisor", "sliding-rotary-dim", "gate-options-without-gate", "negative-softcap"])
def test_llama_config_rejects_bad_laguna_options(fields, message):
    from onnxattn.models.llama import LlamaConfig

    with pytest.raises(ValueError, match=message):
        LlamaConfig(**fields)
