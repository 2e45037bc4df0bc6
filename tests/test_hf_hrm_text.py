"""HRM-Text (models.hf.hrm_text: two weight-shared stacks run recurrently, every pass unrolled) from tiny configs with
random weights, exported with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the
transformers model's for a prefill and three decode steps (fp32, <= 1e-4 relative), with one GroupQueryAttention
node per layer and pass, each pass's with a cache of its own; greedy generation from the exported graph equals
transformers'. Each HRM-Text feature, switched off in our model, misses transformers' logits (torch against torch);
prefix_lm, its default, converts as transformers runs without token_type_ids (causally)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "HrmTextForCausalLM"):
    pytest.skip("this transformers has no HRM-Text", allow_module_level=True)

from hf_helpers import (NO_TOKENS, check_export_matches, check_generation_matches, eager_relative_error,  # noqa: E402
                        randomize)

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from onnxattn.models.hf.hrm_text import _hrm_text, rms_norm  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
# num_hidden_layers is the depth of each stack
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, head_dim=16, intermediate_size=96, **NO_TOKENS)


def hrm_text(**overrides):
    """A tiny HRM-Text with random weights; z_L_init (zero at init) on the scale of the embeddings times
    embedding_scale (~6 here), beside which randomize's +-0.5 would hardly count."""
    torch.manual_seed(0)
    hf = randomize(T.HrmTextForCausalLM(T.HrmTextConfig(**SMALL | overrides)))
    with torch.no_grad():
        hf.model.z_L_init.copy_(5 * torch.randn(hf.config.hidden_size, generator=torch.Generator().manual_seed(5)))
    return hf


CASES = {
    # one layer per stack, 2 H cycles of 2 L passes and an H pass: 6 nodes; prefix_lm (the default) acts only on
    # token_type_ids, which neither side gets: causal
    "hrm": dict(num_hidden_layers=1, H_cycles=2, L_cycles=2, prefix_lm=True),
    # two layers per stack, one H cycle of 3 L passes: 8 nodes; biases everywhere (the gate's too), gelu_tanh,
    # its own RoPE base
    "hrm-deep": dict(num_hidden_layers=2, H_cycles=1, L_cycles=3, attention_bias=True, mlp_bias=True, prefix_lm=False,
                     hidden_act="gelu_pytorch_tanh", rope_parameters={"rope_type": "default", "rope_theta": 5e5}),
}
NODES = {"hrm": dict(num_heads=[4] * 6, kv_num_heads=[4] * 6, rope=[1] * 6),
         "hrm-deep": dict(num_heads=[4] * 8, kv_num_heads=[4] * 8, rope=[1] * 8)}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    check_export_matches(hrm_text(**CASES[name]), tmp_path / f"{name}.onnx", vocab=VOCAB, node_attrs=NODES[name],
                         layers=len(NODES[name]["rope"]))


def test_generation_matches_transformers(tmp_path):
    check_generation_matches(hrm_text(**CASES["hrm"]), tmp_path, vocab=VOCAB)


def test_passes_share_weights():
    """Each stack's passes hold its weights once, the two stacks apart; every pass has its own cache slot, in
    transformers' order (pass * num_layers_per_stack + layer)."""
    hf = hrm_text(**CASES["hrm-deep"])
    ours = _hrm_text(hf)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    layers = ours.layers  # L passes at 0-1, 2-3, 4-5; the H pass at 6-7
    assert layers[0].attn.q_proj is layers[2].attn.q_proj is layers[4].attn.q_proj
    assert layers[1].mlp is layers[3].mlp is layers[5].mlp
    assert layers[6].attn.q_proj is not layers[0].attn.q_proj
    assert [layer.attn.layer_idx for layer in layers] == list(range(8))
    assert hf.config.num_hidden_layers == 8  # transformers' cache slots


IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))


def _keep(m, drop):  # the passes' layers at `drop` removed
    m.layers = nn.ModuleList([layer for i, layer in enumerate(m.layers) if i not in drop])


def _one_weight_set(m):  # the H passes run the L stack's weights
    for layer in m.layers:
        if layer.stack == "high":
            layer.share(m.layers[0])


# each feature -> (case, switch-off); in "hrm" the layers are L, L, H, L, L, H
OFF = {
    "second_h_cycle": ("hrm", lambda m: _keep(m, {3, 4, 5})),
    "second_l_cycle": ("hrm", lambda m: _keep(m, {1})),
    "separate_stacks": ("hrm", _one_weight_set),
    "z_L_init": ("hrm", lambda m: m.z_L_init.zero_()),
    "embedding_scale": ("hrm", lambda m: setattr(m, "config", dataclasses.replace(m.config, embedding_scale=1.0))),
    "state_sum": ("hrm", lambda m: [setattr(layer, "first", False) for layer in m.layers[1:]]),  # the last output
    "output_gate": ("hrm-deep", lambda m: [layer.attn.gate_proj.weight.zero_() for layer in m.layers]),
    "rope": ("hrm", lambda m: [setattr(layer.attn, "rope", None) for layer in m.layers]),
}


@pytest.mark.parametrize("feature", list(OFF))
def test_each_feature_matters(feature):
    """Our model with one feature switched off misses transformers' logits by far more than the 1e-4 tolerance
    (torch against torch: our ops' eager references; with every feature on they agree to ~1e-7)."""
    case, switch_off = OFF[feature]
    hf = hrm_text(**CASES[case])
    ours = _hrm_text(hf)
    assert eager_relative_error(hf, ours, IDS) < 1e-4
    with torch.no_grad():
        switch_off(ours)
    error = eager_relative_error(hf, ours, IDS)
    assert error > 1e-3, error


def test_rms_norm_is_transformers():
    x = torch.randn(3, 5, 64)
    theirs = transformers.models.hrm_text.modeling_hrm_text.HrmTextRMSNorm(eps=1e-5)
    torch.testing.assert_close(rms_norm(x, 1e-5), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("make, match", [
    (lambda: T.HrmTextModel(T.HrmTextConfig(**SMALL, num_hidden_layers=1)),
     "pass a HrmTextForCausalLM for hrm_text, got HrmTextModel"),
], ids=["base-model"])
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")
