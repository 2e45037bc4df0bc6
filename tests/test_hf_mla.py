"""Hugging Face models with multi-head latent attention (DeepSeek-V2 / V3, MiniCPM3, Sarvam-MLA, LongCat-Flash),
exported with onnxattn.export.from_transformers onto models.deepseek: one MultiHeadLatentAttention node per layer
(no GroupQueryAttention), onnxruntime's logits with our kernels equal the transformers model's for a prefill and
three decode steps with the latent cache (fp32, <= 1e-4 relative, as tests/test_hf_interop.py), greedy generation
equals transformers' generate token for token, and unsupported settings are named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread, relative_error, run_steps, session  # noqa: F401  (autouse fixture)

from onnxattn.generate import generate

transformers = pytest.importorskip("transformers")

from hf_helpers import hf_steps, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models import hf as hf_mapping  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from onnxattn.nn import LatentCache  # noqa: E402

T = transformers


# DeepSeek-V3: MLA + MoE. "v3": low-rank queries, YaRN with mscale != mscale_all_dim (an attention factor
# and a softmax scale), interleaved RoPE, dense then MoE layers with group-limited routing. "lite": one query
# projection (as DeepSeek-V2-Lite), half-split RoPE, attention biases, ungrouped unnormalised routing, two shared
# experts, tied embeddings.
DEEPSEEK = {
    "v3": dict(hidden_size=256, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=3, q_lora_rank=96,
               kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
               num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1, first_k_dense_replace=1,
               routed_scaling_factor=2.5, max_position_embeddings=128,
               rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32,
                                "beta_slow": 1, "original_max_position_embeddings": 32, "mscale": 1.0,
                                "mscale_all_dim": 0.8}),
    "lite": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=2,
                 q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
                 n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, n_shared_experts=2,
                 first_k_dense_replace=1, routed_scaling_factor=1.5, norm_topk_prob=False, rope_interleave=False,
                 attention_bias=True, tie_word_embeddings=True),
}


def deepseek_v3(name: str):
    config = T.DeepseekV3Config(vocab_size=256, num_attention_heads=4, bos_token_id=None, eos_token_id=None,
                                **DEEPSEEK[name])
    hf = randomize(T.DeepseekV3ForCausalLM(config))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the routers' choice biases are buffers (randomize leaves them zero)
        for layer in hf.model.layers[config.first_k_dense_replace:]:
            bias = layer.mlp.gate.e_score_correction_bias
            bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


def check_deepseek(hf, path, moe_layers: int | None = None) -> None:
    """Logits (prefill, then decode steps with the latent cache) and greedy generation of one export;
    `moe_layers` expert layers (None: all but the first, so both MLP kinds occur)."""
    result = from_transformers(hf, path, progress=False)
    assert result.report.ok
    layers = hf.config.num_hidden_layers
    moe_layers = layers - 1 if moe_layers is None else moe_layers
    assert sum(hasattr(layer.mlp, "experts") for layer in hf.model.layers) == moe_layers
    ops = [n.op_type for n in onnx.load(result.path).graph.node]
    assert ops.count("MultiHeadLatentAttention") == layers and "GroupQueryAttention" not in ops
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    got = run_steps(session(result.path), ids.numpy(), 8)  # prefill of 8, then 3 decode steps
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert max(errors) <= 1e-4, errors

    prompt = np.array([[17, 200, 3, 45, 99], [1, 2, 3, 4, 5]], dtype=np.int64)
    with torch.no_grad():
        tokens = hf.generate(torch.from_numpy(prompt), max_new_tokens=12, do_sample=False).numpy()
    got = generate(str(result.path), prompt, 12, providers=["CPUExecutionProvider"], progress=False)
    np.testing.assert_array_equal(got.tokens, tokens)
    assert len(np.unique(tokens[:, 5:])) >= 4, "the tiny model should not collapse onto one token"


@pytest.mark.parametrize("name", list(DEEPSEEK))
def test_deepseek_v3_matches_transformers(name, tmp_path):
    torch.manual_seed(0)
    check_deepseek(deepseek_v3(name), tmp_path / f"{name}.onnx")


def test_deepseek_v3_unsupported_settings_are_named(tmp_path):
    small = dict(DEEPSEEK["lite"], vocab_size=256, num_attention_heads=4, num_hidden_layers=1)
    linear = T.DeepseekV3ForCausalLM(T.DeepseekV3Config(**small, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0, "mscale_all_dim": 1.0}))
    with pytest.raises(UnsupportedModel, match="softmax scale .* is only reproduced for YaRN"):
        from_transformers(linear, tmp_path / "x.onnx")
    longrope = T.DeepseekV3ForCausalLM(T.DeepseekV3Config(**small, max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
        "original_max_position_embeddings": 16}))
    with pytest.raises(UnsupportedModel, match="LongRoPE .* is supported for the Llama-like architectures"):
        from_transformers(longrope, tmp_path / "x.onnx")
    groups = T.DeepseekV3ForCausalLM(T.DeepseekV3Config(**small | dict(n_group=4, topk_group=2,
                                                                       first_k_dense_replace=0)))
    with pytest.raises(UnsupportedModel, match="does not map onto ours.*each group needs >= 2 experts"):
        from_transformers(groups, tmp_path / "x.onnx")


# DeepSeek-V2: V3's MLA with a softmax router and interleaved RoPE. "v2": low-rank queries, YaRN with mscale !=
# mscale_all_dim, group_limited_greedy over 4 groups of 4 experts (a group scored by its best expert: V3's top-2
# sum or no group limit move the logits by ~0.4), routed_scaling_factor 3 unnormalised. "lite": DeepSeek-V2-Lite's
# shape (one query projection, greedy top-k, default RoPE, scaling 1), attention biases.
DEEPSEEK_V2 = {
    "v2": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=3, q_lora_rank=64,
               kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=16,
               num_experts_per_tok=4, topk_method="group_limited_greedy", n_group=4, topk_group=2,
               n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=3.0, max_position_embeddings=128,
               rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32,
                                "beta_slow": 1, "original_max_position_embeddings": 32, "mscale": 0.9,
                                "mscale_all_dim": 0.707}),
    "lite": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=2,
                 q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
                 n_routed_experts=8, num_experts_per_tok=3, topk_method="greedy", n_shared_experts=2,
                 first_k_dense_replace=1, attention_bias=True),
}


def deepseek_v2(name: str = "lite", **overrides):
    config = T.DeepseekV2Config(vocab_size=256, num_attention_heads=4, bos_token_id=None, eos_token_id=None,
                                **DEEPSEEK_V2[name] | overrides)
    return randomize(T.DeepseekV2ForCausalLM(config))


@pytest.mark.parametrize("name", list(DEEPSEEK_V2))
def test_deepseek_v2_matches_transformers(name, tmp_path):
    torch.manual_seed(0)
    hf = deepseek_v2(name)
    assert not any(name.endswith("e_score_correction_bias") for name, _ in hf.named_buffers())
    check_deepseek(hf, tmp_path / f"{name}.onnx")


def test_deepseek_v2_top1_ignores_norm_topk_prob():
    """With one expert per token DeepSeek's code and transformers agree: the score times the scaling, not 1."""
    hf = deepseek_v2(num_hidden_layers=2, num_experts_per_tok=1, norm_topk_prob=True, routed_scaling_factor=2.0)
    ours = hf_mapping.from_transformers(hf)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert relative_error(ours(ids).numpy(), hf(ids).logits.numpy()) <= 1e-4


@pytest.mark.parametrize("overrides, match", [
    (dict(norm_topk_prob=True), "DeepSeek-V2 with norm_topk_prob=True is not supported: transformers ignores it"),
    (dict(moe_layer_freq=2), "DeepSeek-V2 with moe_layer_freq = 2 is not supported"),
    (dict(mlp_bias=True), "DeepSeek-V2 with mlp_bias=True is not supported"),
    (dict(topk_method="noaux_tc"), "DeepSeek-V2 with topk_method 'noaux_tc' .* is not supported: greedy, or"),
    (dict(topk_method="group_limited_greedy"), r"topk_method 'group_limited_greedy' \(n_group None"),
    (dict(topk_method="group_limited_greedy", n_group=4, topk_group=1),
     r"DeepseekV2Config does not map onto ours: DeepSeekV3Config: experts_per_token must be in \[1, 2\]"),
    (dict(num_experts_per_tok=None), "needs n_routed_experts and num_experts_per_tok >= 1, got 8 and None"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0, "mscale_all_dim": 1.0}),
     "DeepSeek-V2's softmax scale .* is only reproduced for YaRN"),
], ids=["norm_topk_prob", "moe_layer_freq", "mlp_bias", "noaux_tc", "groups-unset", "more-chosen-than-allowed",
        "no-top-k", "linear-rope-mscale"])
def test_deepseek_v2_unsupported_settings_are_named(overrides, match, tmp_path):
    hf = T.DeepseekV2ForCausalLM(T.DeepseekV2Config(**DEEPSEEK_V2["lite"] | dict(
        vocab_size=256, num_attention_heads=4, num_hidden_layers=1, first_k_dense_replace=0) | overrides))
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(hf, tmp_path / "x.onnx")


# MiniCPM3: MLA (low-rank queries, v_head_dim 24 != qk_nope_head_dim 16) with half-split RoPE, YaRN with mscale !=
# mscale_all_dim (an attention factor and a softmax scale), a dense MLP in every layer, tied embeddings, and MiniCPM's
# multipliers far from 1: embeddings x 4 (scale_emb; off: the logits miss by ~0.3; 12, MiniCPM3-4B's, makes the
# tied tiny model's greedy tokens collapse), residual branches x 4 / sqrt(2) (scale_depth; off: ~0.6), final hidden
# states / (128 / 32) (dim_model_base; off: ~3); interleaved RoPE misses by ~0.6, the softmax scale without
# mscale_all_dim by ~0.2
MINICPM3 = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24, scale_emb=4,
                scale_depth=4.0, dim_model_base=32, max_position_embeddings=128, bos_token_id=None, eos_token_id=None,
                rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32,
                                 "beta_slow": 1, "original_max_position_embeddings": 32, "mscale": 1.0,
                                 "mscale_all_dim": 0.8})


def test_minicpm3_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = randomize(T.MiniCPM3ForCausalLM(T.MiniCPM3Config(**MINICPM3)))
    assert hf.lm_head.weight is hf.model.embed_tokens.weight
    check_deepseek(hf, tmp_path / "minicpm3.onnx", moe_layers=0)


def test_minicpm3_longrope_matches_transformers(tmp_path):
    """MiniCPM3-4B's own RoPE, LongRoPE, over a short context: the prefill of 8 (positions 0..7) uses the short
    factors, each decode step (positions 8..10 > original_max_position_embeddings 8) the long ones, as
    transformers' rotary embedding picks them per forward; greedy generation crosses the boundary too."""
    torch.manual_seed(0)
    hf = randomize(T.MiniCPM3ForCausalLM(T.MiniCPM3Config(**MINICPM3 | dict(
        max_position_embeddings=32, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.1, 1.3, 1.6],
            "long_factor": [2.0, 3.0, 5.0, 8.0], "original_max_position_embeddings": 8}))))
    check_deepseek(hf, tmp_path / "minicpm3_longrope.onnx", moe_layers=0)
    result = from_transformers(hf, tmp_path / "minicpm3_short_only.onnx", progress=False)
    for layer in result.model.layers:  # the short set in every forward: the decode steps miss
        layer.attn.long_rope_inv_freq.copy_(layer.attn.rope_inv_freq)
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    cache = LatentCache()
    with torch.no_grad():
        got = [result.model(ids[:, :8], cache=cache).numpy()] + [
            result.model(ids[:, t:t + 1], cache=cache).numpy() for t in range(8, 11)]
    errors = [relative_error(g, w) for g, w in zip(got, want)]
    assert errors[0] <= 1e-4 < min(errors[1:]), errors


@pytest.mark.parametrize("overrides, match", [
    (dict(mlp_bias=True), "MiniCPM3 with mlp_bias=True is not supported"),
    (dict(dim_model_base=0), "MiniCPM3 with dim_model_base 0 is not supported"),
], ids=["mlp_bias", "dim_model_base-0"])
def test_minicpm3_unsupported_settings_are_named(overrides, match, tmp_path):
    hf = T.MiniCPM3ForCausalLM(T.MiniCPM3Config(**MINICPM3 | dict(num_hidden_layers=1) | overrides))
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(hf, tmp_path / "x.onnx")


def sarvam_mla():
    """Sarvam-MLA (sarvam-105b's shape; transformers runs its SarvamMLAConfig as DeepSeek-V3): one query projection,
    interleaved RoPE (half-split misses by ~0.8) with the legacy rope_scaling type 'deepseek_yarn' (read as YaRN,
    mscale != mscale_all_dim), layer 0 dense, layer 1 top-3 of 8 experts by sigmoid scores steered by a random choice
    bias over one group, renormalised (off: ~0.4) and times 2.5 (times 1: ~0.4), one shared expert."""
    config = T.SarvamMLAConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1, routed_scaling_factor=2.5,
        max_position_embeddings=128, bos_token_id=None, eos_token_id=None,
        rope_scaling={"type": "deepseek_yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32, "beta_slow": 1,
                      "original_max_position_embeddings": 32, "mscale": 1.0, "mscale_all_dim": 0.8})
    hf = randomize(T.DeepseekV3ForCausalLM(config))
    bias = hf.model.layers[1].mlp.gate.e_score_correction_bias  # a buffer: randomize leaves it zero
    with torch.no_grad():
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(3)) * 0.1)
    return hf


def test_sarvam_mla_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = sarvam_mla()
    assert hf.config.model_type == "sarvam_mla" and hf.config.rope_parameters["rope_type"] == "yarn"
    assert hf.config.q_lora_rank is None and hf.config.rope_interleave
    check_deepseek(hf, tmp_path / "sarvam_mla.onnx")


LONGCAT = dict(vocab_size=256, hidden_size=128, num_layers=2, num_attention_heads=4, ffn_hidden_size=256,
               q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, head_dim=8, v_head_dim=16,
               moe_topk=3, n_routed_experts=4, zero_expert_num=2, expert_ffn_hidden_size=32,
               routed_scaling_factor=6.0, bos_token_id=None, eos_token_id=None)


def longcat_flash(**overrides):
    """LongCat-Flash: 2 layers of two MLA sublayers each (4 MLA nodes; q and the latent scaled by sqrt(hidden / rank):
    unscaled the logits miss by ~0.6 and ~0.9), each sublayer with its dense MLP, and per layer the shortcut MoE on
    the first MLP's input, added at the layer's end (dropped: ~0.8): top-3 of 4 MLP experts and 2 zero-computation
    (identity) experts (their share dropped: ~1) by softmax scores whose choice adds a random correction bias (zeroed:
    ~0.4), not renormalised (renormalised: ~0.2), times 6 (times 1: ~0.7); interleaved RoPE."""
    hf = randomize(T.LongcatFlashForCausalLM(T.LongcatFlashConfig(**LONGCAT | overrides)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # buffers: randomize leaves them zero
        for layer in hf.model.layers:
            bias = layer.mlp.router.e_score_correction_bias
            bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


def test_longcat_flash_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = longcat_flash()
    assert hf.config.num_hidden_layers == 4 and hf.model.layers[0].mlp.router.n_routed_experts == 6
    check_deepseek(hf, tmp_path / "longcat_flash.onnx", moe_layers=2)


@pytest.mark.parametrize("overrides, match", [
    (dict(n_routed_experts=0), "LongCat-Flash needs n_routed_experts and moe_topk >= 1, got 0 and 3"),
    (dict(moe_topk=7), r"LongcatFlashConfig does not map onto ours: DeepSeekV3Config: experts_per_token must be in "
                       r"\[1, 6\]"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0, "mscale_all_dim": 1.0}),
     "LongCat-Flash's softmax scale .* is only reproduced for YaRN"),
], ids=["no-mlp-experts", "more-chosen-than-experts", "linear-rope-mscale"])
def test_longcat_flash_unsupported_settings_are_named(overrides, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(longcat_flash(num_layers=1, **overrides), tmp_path / "x.onnx")
