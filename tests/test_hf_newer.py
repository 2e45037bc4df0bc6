"""Newer Hugging Face decoders (models.hf.newer, and the MLA ones through models.hf.deepseek), built from tiny configs
with random weights and exported with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match
the transformers model's for a prefill and three decode steps (fp32, <= 1e-4 relative, as tests/test_hf_interop.py),
the nodes carry the per-layer windows and RoPE, and settings the converters do not model are named."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")

from hf_helpers import NO_TOKENS, check_export_matches, randomize  # noqa: E402

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

T = transformers
_AUTOUSE = (one_torch_thread,)  # imported for its autouse fixture (one torch thread while these run)
VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, **NO_TOKENS)
SLIDING_FULL = dict(sliding_window=6, layer_types=["sliding_attention", "full_attention"])  # window < prompt (8)
# MLA shapes (models.deepseek): low-rank queries, a 32-wide latent, 16 + 8 query / key channels, 16 value channels
MLA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, **NO_TOKENS)
GRANITE = dict(embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.05, logits_scaling=2.0)


def _choice_biases(hf):
    """Random choice biases for the sigmoid routers (buffers: randomize leaves them zero)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in hf.model.layers:
            if hasattr(layer.mlp, "gate") and hasattr(layer.mlp.gate, "e_score_correction_bias"):
                bias = layer.mlp.gate.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape, generator=g) * 0.1)
    return hf


CASES = {
    # CWM: Llama with Llama 3 RoPE scaling, layer 0 full and layer 1 sliding (its default pattern), head_dim 16 (its
    # bos_token_id must be an int)
    "cwm": lambda: T.CwmForCausalLM(T.CwmConfig(**SMALL | dict(bos_token_id=0), head_dim=16, sliding_window=6)),
    # Jais 2: LayerNorm with bias, biases on every projection, ungated up_proj / down_proj MLP with squared ReLU
    "jais2": lambda: T.Jais2ForCausalLM(T.Jais2Config(**SMALL)),
    # HyperCLOVAX: Granite's multipliers (attention scale, embeddings, residual branches), the logits *times*
    # logits_scaling, attention biases, and the attention / MLP outputs normed too (use_post_norm)
    "hyperclovax": lambda: T.HyperCLOVAXForCausalLM(T.HyperCLOVAXConfig(**SMALL, **GRANITE, attention_bias=True)),
    # Granite SWA: Granite's multipliers, attention sinks (random), layer 0 sliding with RoPE, layer 1 full without
    # (layer_rope_theta 0)
    "granite_swa": lambda: T.GraniteSWAForCausalLM(T.GraniteSWAConfig(
        **SMALL, **GRANITE, **SLIDING_FULL, layer_rope_theta=[10000.0, 0.0])),
    # Granite MoE SWA: as Granite SWA (RoPE on both layers here), top-2 of 4 experts and an ungated shared MLP
    "granitemoe_swa": lambda: T.GraniteMoeSWAForCausalLM(T.GraniteMoeSWAConfig(
        **SMALL, **GRANITE, **SLIDING_FULL, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=32)),
    # Mellum: per-head QK-norm, layer 0 sliding at RoPE base 10k and layer 1 full at 500k (rope_parameters per layer
    # type), layer 0 dense and layer 1 top-2 of 4 experts renormalised (mlp_layer_types)
    "mellum": lambda: T.MellumForCausalLM(T.MellumConfig(
        **SMALL, **SLIDING_FULL, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        mlp_layer_types=["dense", "sparse"])),
    # Apertus 1.5's text model: Apertus (QK-norm, xIELU MLP, its own norm names), the lm_head pruned to 100 ids
    "apertus1p5_text": lambda: T.Apertus1p5TextForCausalLM(T.Apertus1p5TextConfig(
        **SMALL, max_position_embeddings=64, output_vocab_size=100, tie_word_embeddings=False)),
    # NanoChat: weightless RMSNorms (on the embeddings too), RoPE turning the other way, QK-norm after RoPE, ungated
    # fc1 / fc2 squared-ReLU MLP, logits soft-capped at 2 (the tiny model's logits reach ~4)
    "nanochat": lambda: T.NanoChatForCausalLM(T.NanoChatConfig(**SMALL, final_logit_softcapping=2.0)),
    # Youtu-LLM: DeepSeek-V3's MLA (interleaved RoPE) with a dense MLP in every layer, tied embeddings
    "youtu": lambda: T.YoutuForCausalLM(T.YoutuConfig(**MLA)),
    # GLM-4 MoE Lite: MLA; layer 0 dense, layer 1 top-3 of 8 experts from the 2 best of 4 groups by sigmoid scores
    # steered by a random choice bias, renormalised then times 2.5, plus a shared expert
    "glm4_moe_lite": lambda: _choice_biases(T.Glm4MoeLiteForCausalLM(T.Glm4MoeLiteConfig(
        **MLA, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, moe_intermediate_size=32,
        n_shared_experts=1, routed_scaling_factor=2.5, mlp_layer_types=["dense", "sparse"]))),
}
MLA_CASES = {"youtu", "glm4_moe_lite"}
# attributes the GroupQueryAttention nodes must carry, layer by layer
NODE_ATTRS = {"cwm": dict(window=[0, 6]), "granite_swa": dict(window=[6, 0], rope=[1, 0], scale=[0.05, 0.05]),
              "granitemoe_swa": dict(window=[6, 0], rope=[1, 1]), "hyperclovax": dict(scale=[0.05, 0.05]),
              "mellum": dict(window=[6, 0], rope_base=[10000.0, 500000.0])}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    # randomize moves every 1-D parameter off its init: the sinks, xIELU's parameters and the norm weights too
    # (Apertus 1.5's pruned head: 100 logits per token, checked by the shapes)
    op = "MultiHeadLatentAttention" if name in MLA_CASES else "GroupQueryAttention"
    check_export_matches(randomize(CASES[name]()), tmp_path / f"{name}.onnx", vocab=VOCAB,
                         node_attrs=NODE_ATTRS.get(name), op=op)


ONE = dict(SMALL, num_hidden_layers=1)


@pytest.mark.parametrize("make, match", [
    (lambda: T.GraniteSWAForCausalLM(T.GraniteSWAConfig(**ONE, layer_rope_theta=[5000.0])),
     r"layer_rope_theta \[5000.0\] is not supported: each layer's base must be 0 \(NoPE\) or"),
    (lambda: T.HyperCLOVAXForCausalLM(T.HyperCLOVAXConfig(**ONE, logits_scaling=0.0)),
     "HyperCLOVAX with logits_scaling 0.0 is not supported"),
    (lambda: T.MellumForCausalLM(T.MellumConfig(**ONE, head_dim=16, num_experts=4, rope_parameters={
        "full_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
     "Mellum with partial_rotary_factor 0.5 on its full_attention layers is not supported"),
    (lambda: T.Glm4MoeLiteForCausalLM(T.Glm4MoeLiteConfig(**dict(MLA, num_hidden_layers=3), n_routed_experts=4,
                                                          num_experts_per_tok=2,
                                                          mlp_layer_types=["sparse", "dense", "sparse"])),
     r"GLM-4 MoE Lite with mlp_layer_types \['sparse', 'dense', 'sparse'\] is not supported"),
], ids=["granite_swa-other-theta", "hyperclovax-zero-logits-scaling", "mellum-partial-rotary",
        "glm4_moe_lite-dense-after-sparse"])
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")
