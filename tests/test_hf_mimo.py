"""MiMo-V2-Flash (models.hf.mimo) from tiny configs with random weights, exported with
onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the transformers model's for a prefill
and three decode steps (fp32, <= 1e-4 relative, as tests/test_hf_newer.py); the nodes and cache inputs carry each
layer's KV heads, value width, window, sinks and RoPE; greedy generation from the exported graph (shared KV buffers)
equals eager torch's; settings the converter does not model are named, and LlamaConfig's per-layer options
check their values."""

from __future__ import annotations

import onnx
import pytest
import torch
from model_helpers import one_torch_thread, relative_error, run_steps, session

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "MiMoV2FlashForCausalLM"):
    pytest.skip("this transformers has no MiMo-V2-Flash", allow_module_level=True)

from hf_helpers import NO_TOKENS, hf_steps, randomize  # noqa: E402
from test_hf_newer import _choice_biases  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.generate import generate, generate_torch  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
# query / key heads of 24 channels (8 rotated: partial_rotary_factor 0.334), value heads of 16; 1 KV head on the
# full layers, 2 on the sliding ones (window 6 < prompt 8)
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=128,
             head_dim=24, v_head_dim=16, sliding_window=6, **NO_TOKENS)
# top-2 of 8 experts from the best of 2 groups, sigmoid scores steered by a random choice bias, renormalised, x 2.5
EXPERTS = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1,
               routed_scaling_factor=2.5)
CASES = {
    # its pattern in small: layer 0 full and dense, then sliding layers with experts; values times 0.707
    "mimo_v2_flash": lambda: _choice_biases(T.MiMoV2FlashForCausalLM(T.MiMoV2FlashConfig(
        **SMALL, **EXPERTS, num_hidden_layers=3,
        layer_types=["full_attention", "sliding_attention", "sliding_attention"]))),
    # sliding first, q / k / v biases (o_proj has none), no value scale, both layers dense, its RoPE on 12 channels
    "mimo_v2_flash-bias-dense": lambda: T.MiMoV2FlashForCausalLM(T.MiMoV2FlashConfig(
        **SMALL, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        mlp_layer_types=["dense", "dense"], attention_bias=True, attention_value_scale=None, rope_parameters={
            kind: {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5}
            for kind, theta in (("full_attention", 1e6), ("sliding_attention", 5e4))})),
}
# per layer: the node attributes and whether its sinks input is given
NODES = {"mimo_v2_flash": dict(kv_num_heads=[1, 2, 2], window=[0, 6, 6], rotary_dim=[8, 8, 8],
                               rope_base=[5e6, 1e4, 1e4], sinks=[False, True, True]),
         "mimo_v2_flash-bias-dense": dict(kv_num_heads=[2, 1], window=[6, 0], rotary_dim=[12, 12],
                                          rope_base=[5e4, 1e6], sinks=[True, False])}


def _nodes(path) -> list[dict]:
    nodes = [n for n in onnx.load(path).graph.node if n.op_type == "GroupQueryAttention"]
    # input 11 is sinks (onnxattn.ops.gqa): given when present and not ""
    return [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} |
            dict(sinks=len(n.input) > 11 and n.input[11] != "") for n in nodes]


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    hf = randomize(CASES[name]())  # the sinks and norm weights moved off their init too
    result = from_transformers(hf, tmp_path / f"{name}.onnx", progress=False)
    assert result.report.ok
    attrs = _nodes(result.path)
    for attr, values in NODES[name].items():
        assert [a[attr] for a in attrs] == pytest.approx(values), attr
    sess = session(result.path)
    shapes = {i.name: i.shape[1:] for i in sess.get_inputs() if i.name.startswith("past_key_values.")}
    for layer, heads in enumerate(NODES[name]["kv_num_heads"]):  # each layer's own cache: [B, Hkv, P, D or Dv]
        assert shapes[f"past_key_values.{layer}.key"][::2] == [heads, 24]
        assert shapes[f"past_key_values.{layer}.value"][::2] == [heads, 16]
    ids = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    got = run_steps(sess, ids.numpy(), 8)  # prefill of 8, then 3 decode steps
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors


def test_generation_matches_torch(tmp_path):
    """Greedy tokens from the shared-buffer graph (each layer's buffer allocated from its own input shape) equal eager
    torch's with a KVCache; 6 + 6 tokens cross the window of 6."""
    torch.manual_seed(0)
    result = from_transformers(randomize(CASES["mimo_v2_flash"]()), tmp_path / "mimo.onnx", cache="shared",
                               logits="last", progress=False)
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2)).numpy()
    got = generate(session(result.path), ids, 6, progress=False)
    want = generate_torch(result.model, ids, 6)
    assert (got.tokens == want.tokens).all(), (got.tokens, want.tokens)


def test_unsupported_settings_are_named(tmp_path):
    hf = T.MiMoV2FlashForCausalLM(T.MiMoV2FlashConfig(
        **SMALL, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        mlp_layer_types=["dense", "dense"], rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}}))
    with pytest.raises(UnsupportedModel, match=r"MiMo-V2-Flash rotating \[6, 12\] channels on its different layer "
                                               r"types is not supported"):
        from_transformers(hf, tmp_path / "x.onnx")


@pytest.mark.parametrize("fields, message", [
    (dict(layer_kv_heads=(2,)), r"layer_kv_heads must list one KV head count per layer \(2\), got \(2,\)"),
    (dict(layer_kv_heads=(2, 3)), r"num_heads \(4\) must be a positive multiple of num_kv_heads \(3\)"),
    (dict(attention_sinks=True, sink_layers=(2,)), r"sink_layers must be layer indices in \[0, 2\), got \(2,\)"),
    (dict(v_head_dim=0), r"v_head_dim must be >= 1 \(None: head_dim\), got 0"),
], ids=["kv-heads-count", "kv-heads-divisor", "sink-layer-range", "v-head-dim"])
def test_llama_config_rejects_bad_per_layer_options(fields, message):
    from onnxattn.models.llama import LlamaConfig

    with pytest.raises(ValueError, match=message):
        LlamaConfig(**fields)
