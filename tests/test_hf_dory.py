"""Dory (models.hf.dory: nGPT-style normalized blocks, a recurrent middle section) from tiny configs with random
weights, exported with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the transformers
model's for a prefill and three decode steps (fp32, <= 1e-4 relative, as tests/test_hf_newer.py), with one
GroupQueryAttention node (no RoPE on it: q / k are normed and rotated in torch) per layer run, each recurrent loop's
layers with their own cache; greedy generation from the exported graph equals transformers'. Each Dory feature,
switched off in our model, misses transformers' logits (torch against torch); settings not modelled are named."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DoryForCausalLM"):
    pytest.skip("this transformers has no Dory", allow_module_level=True)

from hf_helpers import (NO_TOKENS, check_export_matches, check_generation_matches, eager_relative_error,  # noqa: E402
                        randomize)

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from onnxattn.models.hf.dory import _dory, l2_norm  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
             head_dim=16, sliding_window=6, n_input_layers=1, n_output_layers=1, **NO_TOKENS)
# its nGPT scales: the stored values times a fixed factor (1 / initializer_range and more), stored near
# initializer_range; randomize's +-0.5 would scale q by ~1e4 and the logits by ~30
SCALED = ("sqk", "s_gate", "lambda_1", "lambda_2", "logit_scale")


def dory(**overrides):
    """A tiny Dory with random weights, its nGPT scales within +-50% of their init."""
    torch.manual_seed(0)
    hf = randomize(T.DoryForCausalLM(T.DoryConfig(**SMALL | overrides)))
    g, r = torch.Generator().manual_seed(5), hf.config.initializer_range
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.rsplit(".", 1)[-1] in SCALED:
                p.copy_(r * (0.5 + torch.rand(p.shape, generator=g)))
    return hf


CASES = {
    # layers 0-2 sliding (window 6 < prompt 8), 3 full; layer 0 the input section, 1-2 recurrent (2 loops), 3 output
    "dory": dict(num_hidden_layers=4),
    # 3 loops over a full and a sliding layer, gelu_tanh, biased projections, its own RoPE bases
    "dory-3-loops": dict(num_hidden_layers=4, n_recurrent_loops=3, hidden_act="gelu_pytorch_tanh",
                         attention_bias=True, mlp_bias=True,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                         rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 5e5},
                                          "sliding_attention": {"rope_type": "default", "rope_theta": 2e4}}),
}
# per node: layers 0, (1, 2) per loop, 3
NODES = {"dory": dict(window=[6, 6, 6, 6, 6, 0], rope=[0] * 6, num_heads=[4] * 6),
         "dory-3-loops": dict(window=[6, 0, 6, 0, 6, 0, 6, 0], rope=[0] * 8)}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    check_export_matches(dory(**CASES[name]), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=NODES[name],
                         layers=len(NODES[name]["window"]))


def test_generation_matches_transformers(tmp_path):
    check_generation_matches(dory(**CASES["dory"]), tmp_path, vocab=VOCAB)


def test_loops_share_weights():
    """The loops' copies of a recurrent layer hold its weights once (the exported graph too)."""
    hf = dory(**CASES["dory-3-loops"])
    ours = _dory(hf)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert ours.layers[1].attn.q_proj is ours.layers[3].attn.q_proj is ours.layers[5].attn.q_proj
    assert [layer.attn.layer_idx for layer in ours.layers] == list(range(8))  # each its own cache


IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))


def _ours_vs_hf(hf, ours) -> float:
    return eager_relative_error(hf, ours, IDS)


def _attns(m):
    return [layer.attn for layer in m.layers]


def _unnormed_output(m):  # o_proj of the gated output without its L2 norm (attn_sub_norm)
    for a in _attns(m):
        a.o_proj.forward = lambda x, o=a.o_proj: nn.Linear.forward(o, x * o.gate)


def _unnormed_mlp(m):  # down_proj of act(gate) * up without its L2 norm (ffn_sub_norm)
    for layer in m.layers:
        mlp = layer.mlp
        mlp.forward = lambda x, mlp=mlp: mlp.down_proj(
            mlp.act(mlp.gate_proj(x) * mlp.suv_gate * mlp.suv_scale) * mlp.up_proj(x) * mlp.suv_up * mlp.suv_scale)


def _one_loop(m):  # the second loop's copies of the recurrent layers dropped
    m.layers = nn.ModuleList([layer for i, layer in enumerate(m.layers) if i not in (3, 4)])


# each feature -> (case, switch-off); the sub-norms before o_proj / down_proj matter only with biases (the next L2
# norm cancels any scale of a bias-free projection's input)
OFF = {
    "query_scale": ("dory", lambda m: [a.sqk.fill_(1 / a.sqk_scale) for a in _attns(m)]),  # (sqk * scale)^2 = 1
    "gate_scale": ("dory", lambda m: [a.s_gate.fill_(1 / a.s_gate_scale) for a in _attns(m)]),  # sigmoid(gate_proj)
    "attn_sub_norm": ("dory-3-loops", _unnormed_output),
    "ffn_sub_norm": ("dory-3-loops", _unnormed_mlp),
    "suv_scales": ("dory", lambda m: [layer.mlp.suv_gate.fill_(1 / layer.mlp.suv_scale) for layer in m.layers]),
    # rate 1: the attention's normed output replaces the state (no interpolation)
    "rates": ("dory", lambda m: [layer.lambda_1.fill_(1 / layer.lambda_scale) for layer in m.layers]),
    "rope": ("dory", lambda m: [a.torch_rope_inv_freq.zero_() for a in _attns(m)]),
    "window": ("dory", lambda m: [setattr(a, "window", 0) for a in _attns(m)]),
    "loop_input": ("dory", lambda m: [setattr(layer, "loop", None) for layer in m.layers]),  # not re-added
    "second_loop": ("dory", _one_loop),
    "logit_scale": ("dory", lambda m: m.logit_scale.fill_(1 / m.config.logit_scale_factor)),
}


@pytest.mark.parametrize("feature", list(OFF))
def test_each_feature_matters(feature):
    """Our model with one feature switched off misses transformers' logits by far more than the 1e-4 tolerance
    (torch against torch: our ops' eager references; with every feature on they agree to ~1e-7)."""
    case, switch_off = OFF[feature]
    hf = dory(**CASES[case])
    ours = _dory(hf)
    assert _ours_vs_hf(hf, ours) < 1e-4
    with torch.no_grad():
        switch_off(ours)
    error = _ours_vs_hf(hf, ours)
    assert error > 1e-3, error


def test_l2_norm_is_transformers():
    x = torch.randn(3, 5, 64)
    theirs = transformers.models.dory.modeling_dory.DoryL2Norm()
    torch.testing.assert_close(l2_norm(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("make, match", [
    (lambda: dory(num_hidden_layers=4, recurrent_kv_cache_mode="last_loop"),
     "Dory with recurrent_kv_cache_mode 'last_loop' is not supported: its earlier recurrent loops attend over the "
     "last loop's cached keys and values without writing their own"),
    (lambda: dory(num_hidden_layers=2), r"Dory without recurrent layers \(n_recurrent_layers 0\) is not supported"),
    (lambda: T.DoryModel(T.DoryConfig(**SMALL, num_hidden_layers=4)), "pass a DoryForCausalLM for dory, got DoryModel"),
], ids=["last-loop-cache", "no-recurrent-layers", "base-model"])
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")
