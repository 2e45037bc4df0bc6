"""Settings and architectures from_transformers does not model get an UnsupportedModel message naming them: per
family, a tiny transformers model with the setting and the message (the tables below), and the message for an
unknown or not-yet-supported architecture, which lists the supported ones."""

from __future__ import annotations

import math
import types

import pytest
import torch
from hf_helpers import BIGCODE, FALCON, GPT_OSS, MHA, NO_TOKENS, OPT, SMALL, T, dbrx_config, llama4, randomize
from model_helpers import one_torch_thread  # noqa: F401

from onnxattn.export import from_transformers
from onnxattn.models import hf as hf_mapping
from onnxattn.models.hf import UnsupportedModel


ONE_LAYER = SMALL | dict(num_hidden_layers=1)


_PHI3_AND_MOE_REFUSALS = ([
    # Llama's config only warns, and transformers broadcasts one factor over all 8 frequencies (Phi3Config refuses)
    (lambda: T.LlamaForCausalLM(T.LlamaConfig(**ONE_LAYER, max_position_embeddings=128, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0], "long_factor": [2.0],
        "original_max_position_embeddings": 32})),
     r"LlamaConfig does not map onto ours: RopeScaling: longrope needs one factor per frequency "
     r"\(rotary_dim / 2 = 8\)"),
    # 16 * 0.5625 = 9 channels: transformers rotates 10 with frequencies for 9
    (lambda: T.Phi3ForCausalLM(T.Phi3Config(**ONE_LAYER, **NO_TOKENS, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5625})),
     "phi3 with partial_rotary_factor 0.5625 rotates 9 of 16 channels; only an even count"),
    (lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**ONE_LAYER, num_experts=4, num_experts_per_tok=5)),
     r"this Qwen3MoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.MixtralForCausalLM(T.MixtralConfig(**ONE_LAYER, head_dim=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "RoPE type 'dynamic' is not supported"),
    (lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(**ONE_LAYER, num_experts=4, num_experts_per_tok=5)),
     r"this Qwen2MoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.Qwen2MoeModel(T.Qwen2MoeConfig(**ONE_LAYER, num_experts=4)),
     "pass a Qwen2MoeForCausalLM for qwen2_moe, got Qwen2MoeModel"),
], ["llama-longrope-one-factor", "phi3-odd-rotary-dim", "qwen3_moe-more-chosen-than-experts",
        "mixtral-dynamic-rope", "qwen2_moe-more-chosen-than-experts", "qwen2_moe-base-model"])


_LLAMA_VARIANT_REFUSALS = ([
    # transformers' eager / sdpa masks would apply the window, its flash attention would not
    (lambda: T.SmolLM3ForCausalLM(T.SmolLM3Config(**ONE_LAYER, **NO_TOKENS, layer_types=["sliding_attention"],
                                                  sliding_window=6)),
     "SmolLM3 with sliding_attention layers but use_sliding_window=False is not supported"),
    (lambda: T.GraniteForCausalLM(T.GraniteConfig(**ONE_LAYER, attention_multiplier=0.0)),
     "GraniteConfig does not map onto ours: LlamaConfig: attention_scale must be > 0"),
    (lambda: T.GraniteForCausalLM(T.GraniteConfig(**ONE_LAYER, logits_scaling=0.0)),
     "GraniteConfig does not map onto ours: LlamaConfig: logits_scaling divides the logits; it must not be 0"),
    (lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**ONE_LAYER, **NO_TOKENS, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "RoPE type 'dynamic' is not supported"),
    (lambda: T.Starcoder2ForCausalLM(T.Starcoder2Config(**ONE_LAYER, **NO_TOKENS, hidden_act="gelu_fast")),
     "activation 'gelu_fast' has no equivalent here"),
    (lambda: T.Starcoder2Model(T.Starcoder2Config(**ONE_LAYER, **NO_TOKENS)),
     "pass a Starcoder2ForCausalLM for starcoder2, got Starcoder2Model"),
    # transformers would zero (0) or saturate (< 0) every q / k / v
    (lambda: T.OlmoForCausalLM(T.OlmoConfig(**ONE_LAYER, **NO_TOKENS, clip_qkv=0.0)),
     "OlmoConfig does not map onto ours: LlamaConfig: clip_qkv must be > 0 and finite"),
    (lambda: T.OlmoeForCausalLM(T.OlmoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4,
                                                  num_experts_per_tok=2, clip_qkv=-1.0)),
     "OlmoeConfig does not map onto ours: LlamaConfig: clip_qkv must be > 0 and finite"),
    (lambda: T.OlmoeForCausalLM(T.OlmoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4, num_experts_per_tok=5)),
     r"this OlmoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.Ernie4_5ForCausalLM(T.Ernie4_5Config(**ONE_LAYER, **NO_TOKENS, head_dim=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "RoPE type 'dynamic' is not supported"),
    # transformers' sliding mask needs a window
    (lambda: T.Exaone4ForCausalLM(T.Exaone4Config(**ONE_LAYER, **NO_TOKENS, sliding_window=None,
                                                  layer_types=["sliding_attention"])),
     "EXAONE 4 with sliding_window None and sliding_attention layers is not supported"),
    (lambda: T.GlmForCausalLM(T.GlmConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16, partial_rotary_factor=0.3125)),
     "glm with partial_rotary_factor 0.3125 rotates 5 of 16 channels; only an even count"),
    (lambda: T.ArceeForCausalLM(T.ArceeConfig(**ONE_LAYER, **NO_TOKENS, hidden_act="relu6")),
     "activation 'relu6' has no equivalent here"),
    (lambda: T.StableLmModel(T.StableLmConfig(**ONE_LAYER, **NO_TOKENS)),
     "pass a StableLmForCausalLM for stablelm, got StableLmModel"),
    (lambda: T.NemotronForCausalLM(T.NemotronConfig(**ONE_LAYER, **NO_TOKENS, partial_rotary_factor=0.3125)),
     "nemotron with partial_rotary_factor 0.3125 rotates 5 of 16 channels"),
    # its attention scales q by llama_4_scaling_beta and original_max_position_embeddings, which default RoPE lacks
    (lambda: T.Ministral3ForCausalLM(T.Ministral3Config(**ONE_LAYER, **NO_TOKENS, head_dim=16, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0})),
     "Ministral 3 with rope_parameters llama_4_scaling_beta None and original_max_position_embeddings None"),
    # transformers' sliding cache needs a window
    (lambda: T.Olmo3ForCausalLM(T.Olmo3Config(**ONE_LAYER, **NO_TOKENS, sliding_window=None)),
     "OLMo 3 with sliding_window None and sliding_attention layers is not supported"),
    (lambda: T.Olmo3ForCausalLM(T.Olmo3Config(**ONE_LAYER, **NO_TOKENS, max_position_embeddings=64, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                           "long_factor": [2.0] * 8, "original_max_position_embeddings": 16}})),
     "LongRoPE .* is supported for the Llama-like architectures"),
    # 3 experts from 1 group of 2
    (lambda: T.Glm4MoeForCausalLM(T.Glm4MoeConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16, n_routed_experts=8,
                                                  num_experts_per_tok=3, n_group=4, topk_group=1,
                                                  first_k_dense_replace=0)),
     r"this Glm4MoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 2\]"),
], ["smollm3-window-without-use_sliding_window", "granite-attention-multiplier-0", "granite-logits-scaling-0",
        "olmo2-dynamic-rope", "starcoder2-gelu-fast", "starcoder2-base-model", "olmo-clip-0", "olmoe-clip-negative",
        "olmoe-more-chosen-than-experts", "ernie4_5-dynamic-rope", "exaone4-sliding-without-window",
        "glm-odd-rotary-dim", "arcee-relu6", "stablelm-base-model", "nemotron-odd-rotary-dim",
        "ministral3-no-llama4-scaling", "olmo3-sliding-without-window", "olmo3-longrope",
        "glm4_moe-more-chosen-than-groups-hold"])


ONE_MHA = MHA | dict(num_hidden_layers=1)
ONE_GPTJ = dict(vocab_size=256, n_positions=64, n_embd=64, n_layer=1, n_head=4, **NO_TOKENS)


_PARALLEL_RESIDUAL_REFUSALS = ([
    (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**ONE_MHA, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0, "partial_rotary_factor": 0.25})),
     "RoPE type 'dynamic' is not supported"),
    (lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**ONE_MHA, rotary_pct=0.3125)),
     "gpt_neox with partial_rotary_factor 0.3125 rotates 5 of 16 channels; only an even count"),
    (lambda: T.GPTNeoXModel(T.GPTNeoXConfig(**ONE_MHA)), "pass a GPTNeoXForCausalLM for gpt_neox, got GPTNeoXModel"),
    # wider than a head: transformers' forward fails too
    (lambda: T.GPTJForCausalLM(T.GPTJConfig(**ONE_GPTJ, rotary_dim=32)),
     "GPT-J with rotary_dim 32 rotates 32 channels of a 16-wide head"),
    (lambda: T.GPTJForCausalLM(T.GPTJConfig(**ONE_GPTJ, rotary_dim=7)),
     "GPTJConfig does not map onto ours: LlamaConfig: rotary_dim must be even"),
    (lambda: T.PhiForCausalLM(T.PhiConfig(**ONE_LAYER, **NO_TOKENS, partial_rotary_factor=0.3125)),
     "phi with partial_rotary_factor 0.3125 rotates 5 of 16 channels"),
    (lambda: T.PhiForCausalLM(T.PhiConfig(**ONE_LAYER, **NO_TOKENS, max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "short_factor": [1.0] * 4,
        "long_factor": [2.0] * 4, "original_max_position_embeddings": 16})),
     "LongRoPE .* is supported for the Llama-like architectures"),
    (lambda: T.CohereForCausalLM(T.CohereConfig(**ONE_LAYER, **NO_TOKENS, logit_scale=0.0)),
     "Cohere with logit_scale 0.0 is not supported"),
    (lambda: T.CohereForCausalLM(T.CohereConfig(**ONE_LAYER, **NO_TOKENS, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "RoPE type 'dynamic' is not supported"),
    # transformers' sliding mask raises without a window, even when no layer is sliding
    (lambda: T.Cohere2ForCausalLM(T.Cohere2Config(**ONE_LAYER, **NO_TOKENS, sliding_window=None)),
     "Cohere 2 with sliding_window None is not supported"),
    (lambda: T.Cohere2ForCausalLM(T.Cohere2Config(**ONE_LAYER, **NO_TOKENS, logit_scale=0.0)),
     "Cohere 2 with logit_scale 0.0 is not supported"),
    (lambda: T.Cohere2Model(T.Cohere2Config(**ONE_LAYER, **NO_TOKENS)),
     "pass a Cohere2ForCausalLM for cohere2, got Cohere2Model"),
], ["gpt_neox-dynamic-rope", "gpt_neox-odd-rotary-dim", "gpt_neox-base-model", "gptj-rotary-dim-over-head",
        "gptj-odd-rotary-dim", "phi-odd-rotary-dim", "phi-longrope", "cohere-logit-scale-0", "cohere-dynamic-rope",
        "cohere2-no-window", "cohere2-logit-scale-0", "cohere2-base-model"])


ONE_GPT_OSS = GPT_OSS | dict(num_hidden_layers=1)
_GPT_OSS_REFUSALS = ([
    (lambda: T.GptOssForCausalLM(T.GptOssConfig(**ONE_GPT_OSS | dict(swiglu_limit=-1.0))),
     "GptOssConfig does not map onto ours: ClampedSwiGLU: limit must be >= 0, got -1.0"),
    (lambda: T.GptOssForCausalLM(T.GptOssConfig(**ONE_GPT_OSS | dict(num_experts_per_tok=5))),
     r"this GptOssConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.GptOssModel(T.GptOssConfig(**ONE_GPT_OSS)), "pass a GptOssForCausalLM for gpt_oss, got GptOssModel"),
], ["gpt_oss-negative-limit", "gpt_oss-more-chosen-than-experts",
        "gpt_oss-base-model"])


def gemma1(**setting):
    # randomized: an untied lm_head then differs from the embedding
    return randomize(T.GemmaForCausalLM(T.GemmaConfig(**ONE_LAYER, **NO_TOKENS, head_dim=32, **setting)))


_GEMMA_REFUSALS = ([
    (lambda: gemma1(attention_bias=True), "Gemma with attention_bias is not supported"),
    (lambda: gemma1(tie_word_embeddings=False), "Gemma with an output embedding other than the input one"),
    (lambda: gemma1(use_bidirectional_attention=True), "Gemma with use_bidirectional_attention .* is not supported"),
    (lambda: gemma1(hidden_act="relu6"), "activation 'relu6' has no equivalent here"),
    (lambda: gemma1(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}),
     "RoPE type 'dynamic' is not supported"),
    (lambda: T.GemmaModel(T.GemmaConfig(**ONE_LAYER, **NO_TOKENS, head_dim=32)),
     "pass a GemmaForCausalLM for gemma, got GemmaModel"),
], ["gemma-attention-bias", "gemma-untied", "gemma-bidirectional", "gemma-relu6", "gemma-dynamic-rope",
    "gemma-base-model"])


_LLAMA4_REFUSALS = ([
    # multimodal: its language_model is the Llama4ForCausalLM to pass
    (lambda: T.Llama4ForConditionalGeneration(T.Llama4Config(
        text_config=ONE_LAYER | dict(head_dim=16), vision_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vision_output_dim=32,
            projector_input_dim=32, projector_output_dim=32, image_size=28, patch_size=14))),
     "Llama4ForConditionalGeneration is multimodal; pass its text model, its language_model"),
    # transformers divides by floor_scale
    (lambda: llama4(floor_scale=0), "Llama 4 with attn_temperature_tuning, floor_scale 0 and attn_scale 0.5"),
    # transformers has no mask for these
    (lambda: llama4(attention_chunk_size=None, layer_types=["chunked_attention", "full_attention"]),
     "Llama 4 with chunked_attention layers and attention_chunk_size None is not supported"),
    (lambda: llama4(layer_types=["sliding_attention", "full_attention"]),
     r"Llama 4 layer types other than chunked_attention, full_attention are not supported, "
     r"got \['sliding_attention'\]"),
    (lambda: llama4(num_experts_per_tok=5),
     r"this Llama4TextConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.Llama4TextModel(T.Llama4TextConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16)),
     "pass a Llama4ForCausalLM for llama4_text, got Llama4TextModel"),
], ["llama4-multimodal", "llama4-floor-scale-0", "llama4-chunked-without-chunk-size", "llama4-sliding-layers",
    "llama4-more-chosen-than-experts", "llama4-base-model"])


_MORE_DECODER_REFUSALS = ([
    (lambda: T.GraniteMoeForCausalLM(T.GraniteMoeConfig(**ONE_LAYER, **NO_TOKENS, num_local_experts=4,
                                                        num_experts_per_tok=5)),
     r"this GraniteMoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.Ernie4_5_MoeForCausalLM(T.Ernie4_5_MoeConfig(**ONE_LAYER, **NO_TOKENS, moe_num_experts=4, moe_k=2,
                                                            rope_parameters={"rope_type": "dynamic",
                                                                             "rope_theta": 10000.0, "factor": 2.0})),
     "RoPE type 'dynamic' is not supported"),
    (lambda: T.FalconForCausalLM(T.FalconConfig(**FALCON | dict(num_hidden_layers=1), alibi=True)),
     "Falcon with alibi=True is not supported: our attention op has no ALiBi"),
    # transformers' FalconDecoderLayer has no sequential path for the new architecture
    (lambda: T.FalconForCausalLM(T.FalconConfig(**FALCON | dict(num_hidden_layers=1), new_decoder_architecture=True,
                                                parallel_attn=False)),
     "Falcon with new_decoder_architecture=True, parallel_attn=False .* is not supported"),
    (lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**BIGCODE | dict(n_layer=1), tie_word_embeddings=False)),
     r"GPT-BigCode with an output embedding other than the input one \(tie_word_embeddings=False\)"),
    (lambda: T.OPTForCausalLM(T.OPTConfig(**OPT | dict(num_hidden_layers=1), layer_norm_elementwise_affine=False)),
     "OPT with layer_norm_elementwise_affine=False is not supported"),
    (lambda: T.OPTModel(T.OPTConfig(**OPT | dict(num_hidden_layers=1))), "pass a OPTForCausalLM for opt, got OPTModel"),
    # Phi-3.5-MoE's released LongRoPE: cos / sin times short_mscale or long_mscale, per forward
    (lambda: T.PhimoeForCausalLM(T.PhimoeConfig(**ONE_LAYER, **NO_TOKENS, num_local_experts=4,
                                                max_position_embeddings=64, rope_parameters={
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8,
        "short_mscale": 1.0, "long_mscale": 1.2, "original_max_position_embeddings": 16})),
     "PhiMoE with rope_type 'longrope' is not supported: .* short_mscale or long_mscale per forward"),
    (lambda: T.PhimoeForCausalLM(T.PhimoeConfig(**ONE_LAYER, **NO_TOKENS, num_local_experts=4, num_experts_per_tok=3)),
     "PhiMoE with num_experts_per_tok 3 is not supported: transformers' sparsemixer routes every token to 2"),
], ["granitemoe-more-chosen-than-experts", "ernie4_5_moe-dynamic-rope", "falcon-alibi", "falcon-new-sequential",
    "gpt_bigcode-untied", "opt-no-affine-norm", "opt-base-model", "phimoe-longrope", "phimoe-top3"])


_MOE_AND_GEMMA_FAMILY_REFUSALS = ([
    # 3 experts from 1 group of 2
    (lambda: T.Dots1ForCausalLM(T.Dots1Config(**ONE_LAYER, head_dim=16, n_routed_experts=8, num_experts_per_tok=3,
                                              n_group=4, topk_group=1, n_shared_experts=1)),
     r"this Dots1Config does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 2\]"),
    (lambda: T.SolarOpenForCausalLM(T.SolarOpenConfig(
        **{k: v for k, v in ONE_LAYER.items() if k != "intermediate_size"}, **NO_TOKENS, head_dim=16,
        n_routed_experts=4, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})),
     "RoPE type 'dynamic' is not supported"),
    (lambda: T.ExaoneMoeForCausalLM(T.ExaoneMoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4, num_experts_per_tok=5,
                                                      first_k_dense_replace=0)),
     r"this ExaoneMoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.FlexOlmoForCausalLM(T.FlexOlmoConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4, num_experts_per_tok=5)),
     r"this FlexOlmoConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.ApertusForCausalLM(T.ApertusConfig(**ONE_LAYER, **NO_TOKENS, hidden_act="relu6")),
     "activation 'relu6' has no equivalent here"),
    (lambda: T.VaultGemmaForCausalLM(T.VaultGemmaConfig(**ONE_LAYER, head_dim=32, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
     r"VaultGemma with scaled RoPE \(linear\) is not supported"),
    (lambda: T.VaultGemmaForCausalLM(T.VaultGemmaConfig(**ONE_LAYER, head_dim=32, attention_bias=True)),
     "VaultGemma with attention_bias is not supported"),
    # transformers' router and block raise on these at their first forward
    (lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4,
                                                        expert_selection_fn="relu")),
     "Cohere 2 MoE with expert_selection_fn 'relu' is not supported"),
    (lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4, num_shared_experts=1,
                                                        shared_expert_combination_strategy="max")),
     "Cohere 2 MoE with shared_expert_combination_strategy 'max' is not supported"),
    (lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4,
                                                        num_experts_per_tok=5)),
     r"this Cohere2MoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    (lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(**ONE_LAYER, **NO_TOKENS, num_experts=4, sliding_window=None)),
     "Cohere 2 MoE with sliding_window None is not supported"),
    (lambda: T.DbrxForCausalLM(dbrx_config(attn=dict(clip_qkv=None), n_layers=1)),
     "DBRX with attn_config.clip_qkv None is not supported"),
    (lambda: T.DbrxForCausalLM(dbrx_config(ffn=dict(moe_normalize_expert_weights=math.inf), n_layers=1)),
     "this DbrxConfig does not map onto ours: LlamaConfig: router_norm_p must be > 0 and finite, got inf"),
    (lambda: T.DbrxForCausalLM(dbrx_config(ffn=dict(ffn_act_fn={"name": "relu6"}), n_layers=1)),
     "activation 'relu6' has no equivalent here"),
    # top-k per layer: ours has one count for all layers
    (lambda: T.HunYuanMoEV1ForCausalLM(T.HunYuanMoEV1Config(**SMALL, **NO_TOKENS, head_dim=16, num_experts=4,
                                                            moe_topk=[2, 1])),
     r"Hunyuan MoE with num_experts 4 and moe_topk \[2, 1\] is not supported"),
    # transformers' sliding mask needs a window
    (lambda: T.AfmoeForCausalLM(T.AfmoeConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16, sliding_window=None,
                                              layer_types=["sliding_attention"], num_experts=4, num_experts_per_tok=2)),
     "AFMoE with sliding_window None and sliding_attention layers is not supported"),
    (lambda: T.AfmoeForCausalLM(T.AfmoeConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16, num_dense_layers=0,
                                              num_experts=4, num_experts_per_tok=5)),
     r"this AfmoeConfig does not map onto ours: LlamaConfig: experts_per_token must be in \[1, 4\]"),
    # dynamic NTK scaling without alpha rescales by the sequence length, per forward
    (lambda: T.HunYuanDenseV1ForCausalLM(T.HunYuanDenseV1Config(**ONE_LAYER, **NO_TOKENS, head_dim=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})), "RoPE type 'dynamic' is not supported"),
], ["dots1-more-chosen-than-groups-hold", "solar_open-dynamic-rope", "exaone_moe-more-chosen-than-experts",
    "flex_olmo-more-chosen-than-experts", "apertus-relu6", "vaultgemma-scaled-rope", "vaultgemma-attention-bias",
    "cohere2_moe-relu-selection", "cohere2_moe-max-combination", "cohere2_moe-more-chosen-than-experts",
    "cohere2_moe-no-window", "dbrx-no-clip", "dbrx-inf-norm", "dbrx-relu6",
    "hunyuan_v1_moe-top-k-per-layer", "afmoe-sliding-without-window", "afmoe-more-chosen-than-experts",
    "hunyuan_v1_dense-dynamic-rope"])


REFUSALS = [pytest.param(*case, id=name) for cases, names in (
    _PHI3_AND_MOE_REFUSALS, _LLAMA_VARIANT_REFUSALS, _PARALLEL_RESIDUAL_REFUSALS, _GPT_OSS_REFUSALS,
    _GEMMA_REFUSALS, _LLAMA4_REFUSALS, _MORE_DECODER_REFUSALS, _MOE_AND_GEMMA_FAMILY_REFUSALS)
    for case, name in zip(cases, names)]


@pytest.mark.parametrize("make, match", REFUSALS)
def test_unsupported_settings_are_named(make, match, tmp_path):
    """Settings a converter does not model: (transformers model factory, the UnsupportedModel message)."""
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")


def test_unsupported_architectures_list_the_supported_ones(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="t5"))
    with pytest.raises(UnsupportedModel, match="model_type 't5'.*supported: llama .LlamaForCausalLM., mistral.*"
                                               "mixtral .MixtralForCausalLM.*qwen3_moe .Qwen3MoeForCausalLM., "
                                               "qwen2_moe .Qwen2MoeForCausalLM.*"
                                               "phi3 .Phi3ForCausalLM.*smollm3 .SmolLM3ForCausalLM., "
                                               "granite .GraniteForCausalLM., olmo2 .Olmo2ForCausalLM., "
                                               "starcoder2 .Starcoder2ForCausalLM., gpt_oss .GptOssForCausalLM., "
                                               "olmo .OlmoForCausalLM., olmoe .OlmoeForCausalLM.*"
                                               "exaone4 .Exaone4ForCausalLM., glm4 .Glm4ForCausalLM.*"
                                               "stablelm .StableLmForCausalLM., nemotron .NemotronForCausalLM.*"
                                               "gpt_neox .GPTNeoXForCausalLM., gptj .GPTJForCausalLM., "
                                               "phi .PhiForCausalLM., cohere .CohereForCausalLM.*"
                                               "gemma2 .Gemma2ForCausalLM., gemma3_text .Gemma3ForCausalLM.*"
                                               "bert .BertModel., roberta .RobertaModel., "
                                               "xlm-roberta .XLMRobertaModel., modernbert .ModernBertModel.*"
                                               "deepseek_v2 .DeepseekV2ForCausalLM., "
                                               "deepseek_v3 .DeepseekV3ForCausalLM.$"):
        from_transformers(fake, tmp_path / "x.onnx")
    # an architecture listed as not yet supported is named with the reason, after the supported ones
    monkeypatch.setitem(hf_mapping.NOT_YET, "t5", "no encoder-decoder models")
    with pytest.raises(UnsupportedModel, match=r"\(t5\): no encoder-decoder models\. supported: llama .*"
                                               r"deepseek_v3 .DeepseekV3ForCausalLM.\. Not yet: t5: no encoder"):
        from_transformers(fake, tmp_path / "x.onnx")
    base = T.LlamaModel(T.LlamaConfig(**SMALL))
    with pytest.raises(UnsupportedModel, match="pass a LlamaForCausalLM for llama, got LlamaModel"):
        from_transformers(base, tmp_path / "x.onnx")


def inkling_text():
    # a sliding layer and a full one, each with its own head counts
    return T.InklingForCausalLM(T.InklingTextConfig(
        **ONE_LAYER | dict(num_hidden_layers=2), **NO_TOKENS, head_dim=16, swa_num_attention_heads=2,
        swa_num_key_value_heads=1, swa_head_dim=32, sliding_window_size=4, d_rel=4, rel_extent=8,
        local_layer_ids=[0], moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1))


def zaya():
    return T.ZayaForCausalLM(T.ZayaConfig(**ONE_LAYER, **NO_TOKENS, head_dim=16, moe_intermediate_size=32,
                                          num_experts=4, router_hidden_size=16))


# models whose decoding needs state beside the KV cache (REFUSED): the reason is named in the message
STATEFUL_REFUSALS = [
    pytest.param(inkling_text, r"InklingForCausalLM \(inkling_text\): Inkling is not supported: .*short convolutions"
                 r".*conv states beside the KV cache", id="inkling_text-short-convolutions"),
    pytest.param(zaya, r"ZayaForCausalLM \(zaya\): ZAYA is not supported: .*\(CCA\).*causal convolutions.*previous "
                 r"token's projection.*beside the KV cache", id="zaya-cca"),
]


@pytest.mark.parametrize("make, match", STATEFUL_REFUSALS)
def test_conv_state_models_are_refused(make, match, tmp_path):
    hf = make().eval()
    # the reason holds: transformers' own decoding keeps a conv state for layer 0 in its cache
    with torch.no_grad():
        cache = hf(torch.arange(6)[None], use_cache=True).past_key_values
    assert cache.get_conv_state(0, state_idx=0) is not None
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(hf, tmp_path / "x.onnx")


def test_inkling_multimodal_is_refused(tmp_path):
    # the multimodal model's vision tower needs scipy to build: its model_type is what the refusal reads
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type="inkling_mm_model"))
    with pytest.raises(UnsupportedModel, match=r"\(inkling_mm_model\): Inkling is not supported: .*short conv"):
        from_transformers(fake, tmp_path / "x.onnx")


# DeepSeek-V3.2's sparse attention (DSA) with more (deepseek_v32 itself converts: tests/test_hf_deepseek_v32.py): a
# learned indexer keeps each query's top index_topk keys (4 here)
DSA_MLA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
               q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
               moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, index_topk=4, index_head_dim=16,
               index_n_heads=2, **NO_TOKENS)
DSA_REFUSALS = [
    pytest.param(lambda: T.AXK2ForCausalLM(T.AXK2Config(**DSA_MLA)),
                 r"AXK2ForCausalLM \(axk2\): A.X-K2 is not supported: .*sparse attention \(DSA, which we convert.*"
                 r"gated RMSNorms", id="axk2-dsa"),
    pytest.param(lambda: T.HYV4ForCausalLM(T.HYV4Config(**DSA_MLA, hc_mult=2)),
                 r"HYV4ForCausalLM \(hy_v4\): Hy4 \(HY-V4\) is not supported: .*sparse attention \(DSA, which we "
                 r"convert.*hyper-connection streams", id="hy_v4-dsa"),
]


@pytest.mark.parametrize("make, match", DSA_REFUSALS)
def test_indexer_sparse_attention_models_are_refused(make, match, tmp_path):
    hf = randomize(make())
    # the reason holds: past index_topk keys the indexer drops some (dense attention over all 8 differs)
    ids = torch.arange(8)[None]
    with torch.no_grad():
        sparse = hf(ids).logits
        for layer in hf.model.layers:
            layer.self_attn.indexer.index_topk = 8
        assert not torch.allclose(hf(ids).logits, sparse, rtol=1e-3, atol=1e-3)
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(hf, tmp_path / "x.onnx")


def test_gated_deltanet_hybrid_is_refused(tmp_path):
    hf = T.LaraMiniForCausalLM(T.LaraMiniConfig(
        **ONE_LAYER, **NO_TOKENS, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_num_key_heads=2, linear_num_value_heads=4, moe_intermediate_size=32, shared_expert_intermediate_size=32,
        num_experts=4, num_experts_per_tok=2))
    assert hf.config.layer_types == ["linear_attention"]  # its released pattern starts with a Gated DeltaNet layer
    with pytest.raises(UnsupportedModel, match=r"LaraMiniForCausalLM \(lara_mini\): Lara-4-Mini is not supported: "
                                               r"its linear_attention layers are Gated DeltaNet .*conv and recurrent "
                                               r"states beside the KV cache"):
        from_transformers(hf, tmp_path / "x.onnx")


# transformers 5.24 causal LMs refused by model_type (models.hf.sweep2's survey): the message names the feature. Built
# tiny where that is cheap (the reason then checked on the model), else a fake with config.model_type
def _qwen3_5_text():
    hf = T.Qwen3_5ForCausalLM(T.Qwen3_5TextConfig(
        **SMALL, **NO_TOKENS, head_dim=16, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4))
    assert "linear_attention" in hf.config.layer_types  # Gated DeltaNet layers (its default pattern: 3 of 4)
    return hf


def _doge():
    hf = T.DogeForCausalLM(T.DogeConfig(**ONE_LAYER, **NO_TOKENS))
    assert hasattr(hf.model.layers[0].self_attn, "dt_proj")  # the per-key bias computed from the values
    return hf


def _fake(model_type):
    return lambda: types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))


SWEEP2_REFUSALS = [pytest.param(make, match, id=name) for name, make, match in (
    ("doge", _doge, r"\(doge\): Doge is not supported: its dynamic mask attention adds a per-key bias"),
    ("qwen3_5_text", _qwen3_5_text, r"\(qwen3_5_text\): Qwen3.5 is not supported: its linear_attention layers are "
                                    r"Gated DeltaNet"),
    ("qwen3_5_moe_text", _fake("qwen3_5_moe_text"), r"Qwen3.5-MoE is not supported: .*Gated DeltaNet"),
    ("minimax_m3_vl_text", _fake("minimax_m3_vl_text"), r"MiniMax-M3 is not supported: .*lightning indexer"),
    ("blt", _fake("blt"), r"BLT \(Byte Latent Transformer\) is not supported: .*entropy model"),
    ("gemma3n_text", _fake("gemma3n_text"), r"Gemma 3n is not supported: .*AltUp"),
)]


@pytest.mark.parametrize("make, match", SWEEP2_REFUSALS)
def test_sweep2_model_types_are_refused(make, match, tmp_path):
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(make(), tmp_path / "x.onnx")


# models.hf.sweep1's survey: fakes carry the model_type where a tiny model is impractical; the configs show the reason
SWEEP1_REFUSALS = [
    pytest.param("emu3", r"\(emu3\): Emu3ForConditionalGeneration is multimodal .*pass its text model as "
                 r"Emu3ForCausalLM\(config.text_config\)", id="emu3-multimodal"),
    pytest.param("qwen4_exp_text", r"\(qwen4_exp_text\): Qwen4-Exp is not supported: its linear_attention layers are "
                 r"Gated DeltaNet .*QSA indexer.*hyper-connection streams", id="qwen4_exp_text-gated-deltanet"),
    pytest.param("dots3_note_text", r"\(dots3_note_text\): dots3-note is not supported: its indexed_attention layers "
                 r"are DeepSeek-V3.2's sparse attention \(DSA\).*its MLA differs from ours", id="dots3_note_text-dsa"),
]


@pytest.mark.parametrize("model_type, match", SWEEP1_REFUSALS)
def test_sweep1_architectures_are_refused(model_type, match, tmp_path):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(fake, tmp_path / "x.onnx")


def test_sweep1_refusal_reasons_hold():
    # the default layer patterns hold the layers named in the refusals
    if hasattr(T, "Qwen4ExpTextConfig"):
        assert {"linear_attention", "indexed_attention"} <= set(T.Qwen4ExpTextConfig(num_hidden_layers=4).layer_types)
    if hasattr(T, "Dots3NoteTextConfig"):
        assert "indexed_attention" in T.Dots3NoteTextConfig(num_hidden_layers=4).layer_types


def test_modernbert_decoder_is_refused(tmp_path):
    if not hasattr(T, "ModernBertDecoderForCausalLM"):
        pytest.skip("this transformers has no ModernBERT-decoder")
    hf = T.ModernBertDecoderForCausalLM(T.ModernBertDecoderConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, sep_token_id=3, cls_token_id=4))
    # the reason holds: a dense layer, activation and LayerNorm between the final norm and the vocabulary projection
    assert isinstance(hf.lm_head.dense, torch.nn.Linear) and isinstance(hf.lm_head.norm, torch.nn.LayerNorm)
    with pytest.raises(UnsupportedModel, match=r"\(modernbert-decoder\): ModernBERT-decoder is not supported: its head "
                                               r"runs ModernBERT's prediction head"):
        from_transformers(hf, tmp_path / "x.onnx")
