"""Architectures refused for good by model_type (REFUSED in models.hf._common): state-space / recurrent /
linear-attention decoders, DeepSeek-V4's compressed sparse attention, encoder-decoder models, BERT-likes (encoders, and
their causal-LM forms), multimodal wrappers and drafters. Each gets its own reason, checked on a stand-in object
(from_transformers looks at config.model_type before anything else), and on tiny real transformers models for a few."""

from __future__ import annotations

import types

import pytest

from onnxattn.export import from_transformers as export_from_transformers
from onnxattn.models.hf import SUPPORTED, UnsupportedModel, from_transformers
from onnxattn.models.hf._common import REFUSED

T = pytest.importorskip("transformers")

# model_type -> words its reason must name (the feature our ops / exported graphs cannot express)
TABLE = {
    # state-space models
    "mamba": "selective scan", "mamba2": "Mamba-2 (SSD)", "falcon_mamba": "Mamba selective state-space",
    "falcon_h1": "in parallel with its attention", "jamba": "Mamba selective state-space",
    "zamba": "shared attention block", "zamba2": "Mamba-2 state-space", "bamba": "Mamba-2 state-space",
    "granitemoehybrid": "Mamba-2 state-space", "nemotron_h": "Mamba-2 state-space",
    # recurrent and linear-attention layers
    "olmo_hybrid": "Gated DeltaNet", "qwen3_next": "Gated DeltaNet", "kimi_linear": "Kimi Delta Attention",
    "bailing_hybrid": "Kimi Delta Attention", "minimax": "lightning attention", "recurrent_gemma": "RG-LRU",
    "rwkv": "WKV linear attention", "xlstm": "mLSTM", "lfm2": "short convolutions", "lfm2_moe": "short convolutions",
    "lfm3": "short convolutions", "inkling2_text": "short convolutions", "inkling2_loop_text": "Inkling 2 Loop",
    "inkling2": "multimodal", "qwen3_5": "Gated DeltaNet", "qwen3_5_moe": "Gated DeltaNet",
    "qwen4_exp": "QSA indexer",
    # DeepSeek-V4's compressed sparse attention (DeepSeek-V3.2's DSA converts: deepseek_v32, glm_moe_dsa)
    "deepseek_v4": "index_topk",
    # encoder-decoder models
    **{t: "encoder's hidden states" for t in (
        "bart", "bigbird_pegasus", "blenderbot", "blenderbot-small", "marian", "mbart", "mvp", "pegasus", "plbart",
        "prophetnet", "whisper", "trocr", "musicgen", "musicgen_decoder")},
    "musicgen_melody": "num_codebooks", "musicgen_melody_decoder": "num_codebooks",
    # BERT-likes: encoders only, never their causal-LM forms
    **{t: "only as encoders" for t in (
        "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "rembert",
        "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta-xl", "xmod", "xlm")},
    "xlnet": "relative-position", "reformer": "LSH attention", "cpmant": "relative-position bias",
    # multimodal wrappers (the text model to pass where we convert it) and drafters
    "fuyu": "PersimmonForCausalLM", "got_ocr2": "Qwen2ForCausalLM", "moss_transcribe_diarize": "Qwen3ForCausalLM",
    "phi4_multimodal": "Phi3ForCausalLM", "gemma4_unified": "Gemma4UnifiedForCausalLM",
    "gemma3n": "Gemma3nForCausalLM", "dots3_note": "Dots3NoteForCausalLM", "mllama": "cross_attention_layers",
    "mllama_text_model": "cross_attention_layers", "git": "bidirectionally", "gemma4_assistant": "shared KV states",
    "gemma4_unified_assistant": "shared KV states",
    # residual and query scaling our Llama lacks
    "beam": "depth_scaled_residual_add",
}
# model_types of sub-configs (the class from_transformers gets), not in transformers' CONFIG_MAPPING
SUB_CONFIGS = {"musicgen_decoder": "MusicgenDecoderConfig", "musicgen_melody_decoder": "MusicgenMelodyDecoderConfig",
               "mllama_text_model": "MllamaTextConfig"}


def _stand_in(model_type):
    """An object with only a config.model_type: enough, since the refusal comes before any weight is read."""
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))


@pytest.mark.parametrize("model_type", sorted(TABLE))
def test_refused_model_type_names_its_reason(model_type):
    reason = REFUSED[model_type]
    assert TABLE[model_type] in reason and model_type not in SUPPORTED
    with pytest.raises(UnsupportedModel) as e:
        from_transformers(_stand_in(model_type))
    assert f"({model_type}): {reason}" in str(e.value)


def test_refused_model_types_are_transformers_model_types():
    """A typo would refuse nothing: each is a model_type transformers defines."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    for model_type in TABLE:
        if model_type in SUB_CONFIGS:
            assert getattr(T, SUB_CONFIGS[model_type]).model_type == model_type
        else:
            assert model_type in CONFIG_MAPPING_NAMES, model_type


TINY = dict(vocab_size=256, hidden_size=64, num_hidden_layers=1)
ENC_DEC = dict(vocab_size=256, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
               decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)


@pytest.mark.parametrize("make, model_type", [
    (lambda: T.MambaForCausalLM(T.MambaConfig(**TINY, state_size=8)), "mamba"),
    (lambda: T.Qwen3NextForCausalLM(T.Qwen3NextConfig(
        **TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, linear_num_key_heads=2,
        linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
        layer_types=["linear_attention"])), "qwen3_next"),
    (lambda: T.BartForCausalLM(T.BartConfig(**ENC_DEC)), "bart"),
    (lambda: T.BartForConditionalGeneration(T.BartConfig(**ENC_DEC)), "bart"),
    (lambda: T.BertGenerationDecoder(T.BertGenerationConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
        is_decoder=True)), "bert-generation"),
    (lambda: T.BeamForCausalLM(T.BeamConfig(
        **TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, n_group=2, topk_group=1)), "beam"),
], ids=["mamba", "qwen3_next", "bart-causal-lm", "bart-encoder-decoder", "bert-generation-decoder", "beam"])
def test_real_models_are_refused(make, model_type, tmp_path):
    """The mapping and the export entry point both refuse the real model, with its reason."""
    model = make()
    assert model.config.model_type == model_type
    for convert in (from_transformers, lambda m: export_from_transformers(m, tmp_path / "x.onnx")):
        with pytest.raises(UnsupportedModel) as e:
            convert(model)
        assert f"{type(model).__name__} ({model_type}): {REFUSED[model_type]}" in str(e.value)
    assert not (tmp_path / "x.onnx").exists()


def test_every_causal_lm_type_of_transformers_has_an_answer():
    """Every model_type transformers maps to a causal-LM class is supported, refused with its reason, listed as not
    yet, or a multimodal wrapper from_transformers names the text model for: a transformers upgrade that brings a new
    architecture fails here until someone decides which."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from onnxattn.models.hf._common import NOT_YET

    wrappers = {"gemma3", "gemma4", "llama4"}  # refused in from_transformers itself, naming the text model
    known = set(SUPPORTED) | set(REFUSED) | set(NOT_YET) | wrappers
    assert sorted(set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - known) == []
