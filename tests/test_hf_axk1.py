"""A.X-K1 (transformers' AXK1ForCausalLM) exported with onnxattn.export.from_transformers onto models.deepseek:
DeepSeek-V3's MLA and experts plus an RMSNorm on each MoE block's output (post_mlp_layernorm). onnxruntime's logits
with our kernels equal the transformers model's for a prefill and three decode steps (fp32, <= 1e-4 relative, as
tests/test_hf_mla.py), greedy generation equals transformers' generate with shared-buffer caches,
dropping the output norm makes the logits miss, and settings the converter does not model are named."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread, relative_error

transformers = pytest.importorskip("transformers")

from hf_helpers import NO_TOKENS, check_export_matches, check_generation_matches, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models import hf as hf_mapping  # noqa: E402
from onnxattn.models.deepseek import DeepSeekMoE  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
MLA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
           moe_intermediate_size=32, max_position_embeddings=64, **NO_TOKENS)
CASES = {
    # as released: layer 0 dense, layer 1 top-3 of 8 experts from the 2 best of 4 groups by sigmoid scores steered by a
    # random choice bias, renormalised then times 2.5, a shared expert, then the output norm (weights randomized off
    # 1); low-rank queries, interleaved RoPE, YaRN with mscale_all_dim (an attention factor and a softmax scale)
    "released": dict(MLA, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
                     routed_scaling_factor=2.5, mlp_layer_types=["dense", "sparse"],
                     rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32.0,
                                      "beta_slow": 1.0, "original_max_position_embeddings": 16, "mscale": 1.0,
                                      "mscale_all_dim": 0.8}),
    # experts in both layers (normed twice), half-split RoPE, attention biases, one group, not renormalised, two shared
    # experts, tied embeddings
    "all-sparse": dict(MLA, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=2,
                       routed_scaling_factor=1.5, norm_topk_prob=False, mlp_layer_types=["sparse", "sparse"],
                       rope_interleave=False, attention_bias=True, tie_word_embeddings=True),
}


def axk1(name: str = "released", **overrides):
    torch.manual_seed(0)
    hf = randomize(T.AXK1ForCausalLM(T.AXK1Config(**CASES[name] | overrides)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the routers' choice biases are buffers (randomize leaves them zero)
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate"):
                bias = layer.mlp.gate.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


@pytest.mark.parametrize("name", list(CASES))
def test_axk1_matches_transformers(name, tmp_path):
    hf = axk1(name)
    sparse = [kind == "sparse" for kind in hf.config.mlp_layer_types]
    assert [hasattr(layer.mlp, "post_mlp_layernorm") for layer in hf.model.layers] == sparse
    check_export_matches(hf, tmp_path / f"{name}.onnx", vocab=VOCAB, op="MultiHeadLatentAttention")


def test_axk1_generation_matches_transformers(tmp_path):
    check_generation_matches(axk1(), tmp_path, vocab=VOCAB)


@pytest.mark.parametrize("name", list(CASES))
def test_axk1_without_its_moe_output_norm_misses(name):
    """The output norm is what sets A.X-K1 apart from DeepSeek-V3: ours without it misses by far."""
    hf = axk1(name)
    ours = hf_mapping.from_transformers(hf)
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits.numpy()
        assert relative_error(ours(ids).numpy(), want) <= 1e-4
        for layer in ours.layers:
            if isinstance(layer.mlp, DeepSeekMoE):
                assert layer.mlp.output_norm is not None
                layer.mlp.output_norm = None
        assert relative_error(ours(ids).numpy(), want) > 1e-2


@pytest.mark.parametrize("make, match", [
    (lambda: axk1(mlp_layer_types=["sparse", "dense"]),
     r"A.X-K1 with mlp_layer_types \['sparse', 'dense'\] is not supported: only dense layers before all sparse ones"),
    # 3 experts from 1 group of 2
    (lambda: axk1(num_experts_per_tok=3, topk_group=1),
     r"this AXK1Config does not map onto ours: .*experts_per_token must be in \[1, 2\]"),
    (lambda: T.AXK1Model(T.AXK1Config(**CASES["released"])), "pass a AXK1ForCausalLM for axk1, got AXK1Model"),
], ids=["axk1-dense-after-sparse", "axk1-more-chosen-than-groups-hold", "axk1-base-model"])
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")
