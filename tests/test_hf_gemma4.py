"""Gemma 4's text model (Gemma4ForCausalLM, built from tiny configs with random weights: nothing downloaded) exported
with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match transformers' for a prefill of 8
(longer than the window of 6) and three decode steps, within 1e-4 relative to the largest logit (as
test_hf_interop.test_logits_match_transformers). Both layer kinds with their own head dims, KV heads and RoPE
(default on sliding layers, proportional on full ones: its frequencies, zeros included, as the node's rope_inv_freq),
QK-norm, V's weightless norm, score scale 1, per-layer inputs, layer scalars, the final soft-cap; a second case with
attention_k_eq_v, KV-shared layers (a ScaledDotProductAttention node over the source layer's present, no cache of
their own) and double-wide MLPs; a third with the MoE block. Each feature, switched off in our model, breaks the
match (torch against torch, or the graph's window attribute); settings we do not model are refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
import model_helpers
from model_helpers import relative_error, run_steps, session

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "Gemma4ForCausalLM"):
    pytest.skip("this transformers has no Gemma 4", allow_module_level=True)

from hf_helpers import NO_TOKENS, SMALL, eager_relative_error, hf_steps, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.gemma4 import Gemma4Attention  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from onnxattn.models.hf.gemma4 import _gemma4  # noqa: E402
from onnxattn.nn.reference import default_inv_freq, rms_norm_heads  # noqa: E402

T = transformers
one_torch_thread = model_helpers.one_torch_thread  # the autouse fixture: one torch thread in this module
S, F = "sliding_attention", "full_attention"
# sliding layers: head dim 16, 2 KV heads, default RoPE (theta 10^4); full layers: head dim 32, proportional RoPE
# (theta 10^6, a quarter of the pairs rotated: 4 of 16 frequencies non-zero); 8-wide per-layer inputs; window 6 < 8
BASE = SMALL | NO_TOKENS | dict(
    head_dim=16, global_head_dim=32, sliding_window=6, final_logit_softcapping=30.0, vocab_size_per_layer_input=256,
    hidden_size_per_layer_input=8, attn_implementation="eager")
CASES = {
    # V projected on its own (num_global_key_value_heads then does not apply: 2 KV heads on every layer)
    "gemma4": dict(num_hidden_layers=4, layer_types=[S, F, S, F]),
    # full layers: V = K's projection, 1 KV head; layers 3 (sliding) and 4 (full) attend over the K/V of layers 2
    # and 1 with MLPs twice as wide; proportional RoPE with half the pairs and a factor
    "gemma4_shared": dict(num_hidden_layers=5, layer_types=[S, F, S, S, F], attention_k_eq_v=True,
                          num_global_key_value_heads=1, num_kv_shared_layers=2, use_double_wide_mlp=True,
                          rope_parameters={S: {"rope_type": "default", "rope_theta": 10000.0},
                                           F: {"rope_type": "proportional", "rope_theta": 1e6,
                                               "partial_rotary_factor": 0.5, "factor": 2.0}}),
    # the MoE block beside each MLP: top-2 of 8 experts, all 8 run in the prompt (16 tokens), gathered per token in
    # the decode steps (2 tokens x 2 < 8)
    "gemma4_moe": dict(num_hidden_layers=2, layer_types=[S, F], enable_moe_block=True, num_experts=8, top_k_experts=2,
                       moe_intermediate_size=32),
}
# per GroupQueryAttention node (the layers with a cache), per ScaledDotProductAttention node (the shared ones)
GQA_ATTRS = {"gemma4": dict(window=[6, 0, 6, 0], kv_num_heads=[2, 2, 2, 2], rotary_dim=[0, 0, 0, 0],
                            scale=[1.0] * 4),
             "gemma4_shared": dict(window=[6, 0, 6], kv_num_heads=[2, 1, 2], rotary_dim=[0, 0, 0], scale=[1.0] * 3),
             "gemma4_moe": dict(window=[6, 0], rotary_dim=[0, 0])}
SDPA_ATTRS = {"gemma4": dict(window=[]), "gemma4_moe": dict(window=[]),
              "gemma4_shared": dict(window=[6, 0], causal=[1, 1], scale=[1.0, 1.0])}
IDS = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))


def gemma4(**overrides):
    hf = randomize(T.Gemma4ForCausalLM(T.Gemma4TextConfig(**BASE | overrides)))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # layer_scalar is a buffer, which randomize leaves at 1
        for layer in hf.model.layers:
            layer.layer_scalar.copy_(torch.rand(1, generator=g) + 0.5)
    return hf


def attrs(proto, op_type: str) -> list[dict]:
    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            for n in proto.graph.node if n.op_type == op_type]


_EXPORTED: dict = {}


def exported(name: str, tmp_path_factory):
    """(transformers model, from_transformers result) of CASES[name], exported once per worker process: the window
    test edits a copy of the logits test's graph (an export of gemma4_shared takes ~13 s on 2 cores)."""
    if name not in _EXPORTED:
        hf = gemma4(**CASES[name])
        _EXPORTED[name] = hf, from_transformers(hf, tmp_path_factory.mktemp(name) / f"{name}.onnx", progress=False)
    return _EXPORTED[name]


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path_factory):
    hf, result = exported(name, tmp_path_factory)
    assert result.report.ok
    proto = onnx.load(result.path)
    for op_type, expected in (("GroupQueryAttention", GQA_ATTRS[name]),
                              ("ScaledDotProductAttention", SDPA_ATTRS[name])):
        got = attrs(proto, op_type)
        for attr, values in expected.items():
            assert [a[attr] for a in got] == pytest.approx(values), (op_type, attr)
    # proportional RoPE: the full layers' nodes take their frequencies (with the unrotated pairs' zeros) as an input
    nodes = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    kinds = [k for k, m in zip(hf.config.layer_types, hf.config.kv_sharing_modes) if m != "reuse"]
    for node, kind in zip(nodes, kinds):
        inv_freq = node.input[9] if len(node.input) > 9 else ""
        if kind == S:
            assert not inv_freq
        else:
            theirs = getattr(hf.model.rotary_emb, f"{F}_inv_freq").numpy()
            np.testing.assert_allclose(inits[inv_freq], theirs, rtol=1e-6)
            assert (theirs == 0).sum() > 0
    past = [i.name for i in proto.graph.input if i.name.startswith("past_key_values.")]
    assert len(past) == 2 * len(nodes)  # no cache for the shared layers
    want = hf_steps(hf, IDS, 8)
    got = run_steps(session(result.path), IDS.numpy(), 8)  # prefill of 8, then 3 decode steps
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors


def test_window_on_the_nodes_matters(tmp_path, tmp_path_factory):
    """The sliding layers' window, zeroed in the graph, misses transformers' logits."""
    hf, result = exported("gemma4_shared", tmp_path_factory)
    proto = onnx.load(result.path)
    for node in proto.graph.node:
        if node.op_type in ("GroupQueryAttention", "ScaledDotProductAttention"):
            next(a for a in node.attribute if a.name == "window").i = 0
    onnx.save(proto, tmp_path / "unwindowed.onnx")
    want = hf_steps(hf, IDS, 8)
    got = run_steps(session(tmp_path / "unwindowed.onnx"), IDS.numpy(), 8)
    assert min(relative_error(g, w) for g, w in zip(got, want)) > 1e-3


def _no_v_norm(self, x):
    q, k = self.q_proj(x), self.k_proj(x)
    return q, k, k if self.k_eq_v else self.v_proj(x)


def _separate_v(model):
    for layer in model.layers:
        if getattr(layer.attn, "k_eq_v", False):
            layer.attn.k_eq_v = False
            layer.attn.v_proj = torch.nn.Linear(model.config.hidden, layer.attn.kv_width, bias=False)
            with torch.no_grad():  # a V of its own (seeded: the reported error is reproducible)
                layer.attn.v_proj.weight.copy_(torch.randn(layer.attn.v_proj.weight.shape,
                                                           generator=torch.Generator().manual_seed(3)) / 8)


def _default_rope(model):
    for layer in model.layers:
        if not model.config.is_sliding(layer.attn.layer_idx):  # the whole head at the op's default frequencies
            layer.attn.rope_inv_freq = default_inv_freq(layer.attn.head_dim, model.config.rope_global_theta) \
                if hasattr(layer.attn, "sdpa") else None


def _other_source(model):
    # layer 3 (sliding, shared) attends over layer 0's K/V instead of layer 2's (same shapes)
    model.layers[3].kv_source = 0


def _set(attr, value, which=lambda layer: True):
    def switch(model):
        for layer in filter(which, model.layers):
            a = layer.attn
            if attr == "layer_scalar":
                layer.layer_scalar.data.fill_(value)
            elif attr == "window" and hasattr(a, "sdpa"):  # a shared layer's window is its SDPA's
                a.sdpa.mask = dataclasses.replace(a.sdpa.mask, window=value)
            elif attr == "scale" and hasattr(a, "sdpa"):
                a.sdpa.scale = value
            elif torch.is_tensor(getattr(a, attr)):
                getattr(a, attr).data.fill_(value)
            else:
                setattr(a, attr, value)
    return switch


OFF = {  # feature -> (case, switch it off in our converted model)
    "v_norm": ("gemma4", lambda m, mp: mp.setattr(Gemma4Attention, "project", _no_v_norm)),
    "attention_k_eq_v": ("gemma4_shared", lambda m, mp: _separate_v(m)),
    "per_layer_inputs": ("gemma4", lambda m, mp: mp.setattr(m, "per_layer_inputs", lambda ids, x: None)),
    "layer_scalar": ("gemma4", lambda m, mp: _set("layer_scalar", 1.0)(m)),
    "proportional_rope": ("gemma4", lambda m, mp: _default_rope(m)),
    "proportional_rope_shared": ("gemma4_shared", lambda m, mp: _default_rope(m)),
    "qk_norm": ("gemma4", lambda m, mp: _set("q_norm", 1.0)(m)),
    "window": ("gemma4", lambda m, mp: _set("window", 0)(m)),
    "shared_window": ("gemma4_shared", lambda m, mp: _set("window", 0, lambda la: la.kv_source is not None)(m)),
    "kv_source": ("gemma4_shared", lambda m, mp: _other_source(m)),
    "scale_1": ("gemma4", lambda m, mp: _set("scale", None)(m)),
    "moe": ("gemma4_moe", lambda m, mp: [delattr(layer, "experts") for layer in m.layers]),
    "final_softcap": ("gemma4", lambda m, mp: setattr(m, "config", dataclasses.replace(m.config,
                                                                                      final_logit_softcap=0.0))),
}


def _ours_vs_hf(hf, ours) -> float:
    return eager_relative_error(hf, ours, IDS)


@pytest.mark.parametrize("feature", list(OFF))
def test_each_feature_matters(feature, monkeypatch):
    """Our model with one feature switched off misses transformers' logits by far more than the 1e-4 tolerance
    (torch against torch: our ops' eager references; with every feature on they agree to ~1e-5)."""
    case, switch_off = OFF[feature]
    hf = gemma4(**CASES[case])
    ours = _gemma4(hf).eval()
    assert _ours_vs_hf(hf, ours) < 1e-4
    switch_off(ours, monkeypatch)
    error = _ours_vs_hf(hf, ours)
    print(f"{feature}: {error:.3g}")
    assert error > 1e-3, error


def test_shared_model_exports_only_concatenated_caches(tmp_path):
    hf = gemma4(**CASES["gemma4_shared"])
    with pytest.raises(ValueError, match="cannot export cache='shared'; it supports 'concat'"):
        from_transformers(hf, tmp_path / "x.onnx", cache="shared", progress=False)


def test_unshared_model_exports_shared_buffers(tmp_path):
    """Without KV-shared layers the shared-buffer mode works as for the other decoders."""
    ours = _gemma4(gemma4(**CASES["gemma4"]))
    with torch.no_grad():
        full = ours(IDS)
        buffers, lengths = ours.empty_past(2, 16), torch.zeros(2, dtype=torch.int64)
        a, buffers = ours(IDS[:, :8], buffers, lengths)
        b, _ = ours(IDS[:, 8:], buffers, lengths + 8)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=2e-5, rtol=1e-5)
    result = from_transformers(gemma4(**CASES["gemma4"]), tmp_path / "s.onnx", cache="shared", progress=False)
    assert result.report.ok


def _multimodal():
    return T.Gemma4ForConditionalGeneration(T.Gemma4Config(
        text_config=BASE | CASES["gemma4"], vision_config=None, audio_config=None))


@pytest.mark.parametrize("make, match", [
    (lambda: gemma4(**CASES["gemma4"], use_bidirectional_attention="all"),
     "Gemma 4 with use_bidirectional_attention='all' is not supported"),
    (lambda: gemma4(**CASES["gemma4"], use_bidirectional_attention="vision"),
     "Gemma 4 with use_bidirectional_attention='vision' is not supported"),
    (lambda: gemma4(**CASES["gemma4"], attention_bias=True), "Gemma 4 with attention_bias is not supported"),
    (lambda: gemma4(**CASES["gemma4"], tie_word_embeddings=False),
     "Gemma 4 with an output embedding other than the input one"),
    (lambda: gemma4(**CASES["gemma4"], rope_parameters={
        S: {"rope_type": "default", "rope_theta": 10000.0},
        F: {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}}),
     "Gemma 4 with RoPE type 'linear' on its full_attention layers is not supported"),
    (lambda: gemma4(**CASES["gemma4"], hidden_activation="relu6"), "activation 'relu6' has no equivalent here"),
    (_multimodal, r"Gemma4ForConditionalGeneration is multimodal; pass its text model as "
                  r"Gemma4ForCausalLM\(config.text_config\)"),
    (lambda: T.Gemma4TextModel(T.Gemma4TextConfig(**BASE | CASES["gemma4"])),
     "pass a Gemma4ForCausalLM for gemma4_text, got Gemma4TextModel"),
], ids=["gemma4-bidirectional", "gemma4-bidirectional-vision", "gemma4-attention-bias",
        "gemma4-untied", "gemma4-linear-rope", "gemma4-relu6", "gemma4-multimodal",
        "gemma4-base-model"])
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")


def test_every_layer_shared_is_refused(tmp_path):
    """transformers' kv_sharing_modes makes every layer a reader when all are shared (nothing stores K/V)."""
    hf = gemma4(**CASES["gemma4"], num_kv_shared_layers=4)
    with pytest.raises(UnsupportedModel, match="Gemma4TextConfig does not map onto ours: .*num_kv_shared_layers must "
                                               r"be in \[0, num_layers\)"):
        from_transformers(hf, tmp_path / "x.onnx")


def test_v_norm_is_weightless_per_head():
    """V's norm is the per-head RMS without weight (transformers' v_norm has with_scale=False)."""
    ours = _gemma4(gemma4(**CASES["gemma4"]))
    attn = ours.layers[0].attn
    x = torch.randn(1, 3, 64)
    _, _, v = attn.project(x)
    want = rms_norm_heads(attn.v_proj(x).unflatten(-1, (2, 16)), None, 1e-6).flatten(-2)
    torch.testing.assert_close(v, want)
