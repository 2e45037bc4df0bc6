"""More decoders through onnxattn.export.from_transformers (models.hf.gpt_family), as tests/test_hf_interop.py:
tiny random-weight transformers models (nothing downloaded) exported with our ops, onnxruntime's logits compared
with transformers' for a prefill and three decode steps (fp32, <= 1e-4 relative to the largest logit). GPT-Neo
(local layers' window on the node, unscaled scores), BioGPT and XGLM (offset positions, scaled embeddings) map onto
our GPT-2; CodeGen (mp_num-sharded fused qkv, interleaved partial RoPE), Persimmon (per-head LayerNorm of q / k,
partial RoPE), Flint (QK-norm, sinks, RoPE on sliding layers only, sigmoid experts), HY-V3 (QK-norm, choice-biased
scaled sigmoid routing) and Kolibri-1 (sandwich norms, experts ranked by logits + bias) onto our Llama; the ALiBi
models (MPT, BLOOM) and settings these converters do not model are refused with a message."""

from __future__ import annotations

import pytest
import torch
from model_helpers import one_torch_thread

transformers = pytest.importorskip("transformers")

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402
from hf_helpers import check_export_matches, randomize  # noqa: E402

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)  # the module-scoped fixture: one torch thread

T = transformers
VOCAB = 128
NO_TOKENS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             **NO_TOKENS)
MOE = SMALL | dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)


def _choice_biases(hf, name: str = "e_score_correction_bias"):
    """Random choice biases (buffers: randomize leaves them zero), on the MoE block or its gate."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in hf.model.layers:
            for owner in (layer.mlp, getattr(layer.mlp, "gate", None)):
                bias = getattr(owner, name, None)
                if isinstance(bias, torch.Tensor):
                    bias.copy_(torch.randn(bias.shape, generator=g) * 0.5)
    return hf


CASES = {
    # layer 0 global, layer 1 local with window 4 < the 8-token prefill, scores not scaled by 1/sqrt(d)
    "gpt_neo": lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
        window_size=4, max_position_embeddings=32, **NO_TOKENS)),
    # learned positions offset by 2, embeddings times sqrt(64)
    "biogpt": lambda: T.BioGptForCausalLM(T.BioGptConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, **NO_TOKENS)),
    # sinusoidal positions offset by 2, embeddings times sqrt(64)
    "xglm": lambda: T.XGLMForCausalLM(T.XGLMConfig(
        vocab_size=VOCAB, d_model=64, num_layers=2, attention_heads=4, ffn_dim=128, max_position_embeddings=32,
        **NO_TOKENS)),
    # qkv rows in 4 shards of [q | v | k], interleaved RoPE on 8 of 16 channels, biased lm_head
    "codegen": lambda: T.CodeGenForCausalLM(T.CodeGenConfig(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, **NO_TOKENS)),
    # per-head fused query_key_value, a LayerNorm shared by the heads of q / k, RoPE on 8 of 16 channels
    "persimmon": lambda: T.PersimmonForCausalLM(T.PersimmonConfig(
        **{k: v for k, v in SMALL.items() if k != "num_key_value_heads"}, intermediate_size=128,
        max_position_embeddings=32)),
    # layer 0 dense, full and NoPE; layer 1 sliding (window 6 < prompt) with RoPE and top-2 of 4 sigmoid experts,
    # renormalised, plus an ungated shared expert; sinks and QK-norm in both
    "flint": lambda: T.FlintForCausalLM(T.FlintConfig(
        **MOE, intermediate_size=96, shared_expert_intermediate_size=32, sliding_window=6,
        layer_types=["full_attention", "sliding_attention"], mlp_only_layers=[0])),
    # layer 0 dense, layer 1 top-2 of 4 sigmoid experts steered by a random choice bias, renormalised, times 2.5,
    # plus an ungated shared expert; per-head QK-norm
    "hy_v3": lambda: _choice_biases(T.HYV3ForCausalLM(T.HYV3Config(
        **MOE, intermediate_size=96, router_scaling_factor=2.5))),
    # sandwich norms, QK-norm, layer 0 sliding with RoPE (window 6), layer 1 full without; experts in both ranked by
    # logits + a random bias, weighted by their sigmoids (renormalised), plus an ungated shared expert
    "kolibri1": lambda: _choice_biases(T.Kolibri1ForCausalLM(T.Kolibri1Config(
        **MOE, shared_expert_intermediate_size=32, sliding_window=6, norm_topk_prob=True,
        layer_types=["sliding_attention", "full_attention"]))),
}
# attributes the GroupQueryAttention nodes must carry, layer by layer
NODE_ATTRS = {"gpt_neo": dict(window=[0, 4], scale=[1.0, 1.0], rope=[0, 0]), "biogpt": dict(rope=[0, 0]),
              "codegen": dict(rotary_dim=[8, 8], rope_interleaved=[1, 1]), "persimmon": dict(rotary_dim=[8, 8]),
              "flint": dict(rope=[0, 1], window=[0, 6]), "kolibri1": dict(rope=[1, 0], window=[6, 0])}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    check_export_matches(randomize(CASES[name]()), tmp_path / f"{name}.onnx", vocab=VOCAB,
                         node_attrs=NODE_ATTRS.get(name))


ONE = dict(vocab_size=VOCAB, hidden_size=64, num_attention_heads=4, **NO_TOKENS)
REFUSALS = [
    pytest.param(lambda: T.MptForCausalLM(T.MptConfig(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=1)),
                 r"MptForCausalLM \(mpt\): MPT is not supported: .*ALiBi", id="mpt-alibi"),
    pytest.param(lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=VOCAB, hidden_size=64, n_head=4, n_layer=1)),
                 r"BloomForCausalLM \(bloom\): BLOOM is not supported: .*ALiBi", id="bloom-alibi"),
    pytest.param(lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(
        vocab_size=VOCAB, hidden_size=64, num_layers=1, num_heads=4, attention_types=[[["global"], 1]],
        tie_word_embeddings=False, **NO_TOKENS)),
        r"GPT-Neo with an output embedding other than the input one", id="gpt_neo-untied"),
    pytest.param(lambda: T.CodeGenForCausalLM(T.CodeGenConfig(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=1, n_head=4, rotary_dim=32, **NO_TOKENS)),
        r"CodeGen with rotary_dim 32 rotates 32 channels of a 16-wide head", id="codegen-rotary-over-head"),
    pytest.param(lambda: T.XGLMForCausalLM(T.XGLMConfig(
        vocab_size=VOCAB, d_model=64, num_layers=1, attention_heads=4, ffn_dim=128, add_cross_attention=True,
        **NO_TOKENS)), "XGLM with add_cross_attention is not supported", id="xglm-cross-attention"),
    pytest.param(lambda: T.PersimmonForCausalLM(T.PersimmonConfig(
        **ONE, num_hidden_layers=1, intermediate_size=128, hidden_act="relu6")),
        "activation 'relu6' has no equivalent here", id="persimmon-relu6"),
    pytest.param(lambda: T.PersimmonModel(T.PersimmonConfig(**ONE, num_hidden_layers=1, intermediate_size=128)),
                 "pass a PersimmonForCausalLM for persimmon, got PersimmonModel", id="persimmon-base-model"),
]


@pytest.mark.parametrize("make, match", REFUSALS)
def test_unsupported_settings_are_named(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")


def test_supported_list_names_the_new_types():
    from onnxattn.models.hf import supported_message

    message = supported_message()
    for entry in ("gpt_neo (GPTNeoForCausalLM)", "biogpt (BioGptForCausalLM)", "xglm (XGLMForCausalLM)",
                  "codegen (CodeGenForCausalLM)", "persimmon (PersimmonForCausalLM)", "flint (FlintForCausalLM)",
                  "hy_v3 (HYV3ForCausalLM)", "kolibri1 (Kolibri1ForCausalLM)"):
        assert entry in message
    assert "mpt" not in message.split("supported: ")[1]  # refused, not listed as supported
