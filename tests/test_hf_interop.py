"""Hugging Face transformers models (built from small configs with random weights: nothing downloaded)
exported with onnxattn.export.from_transformers: onnxruntime's logits with our kernels match the
transformers model's for a prefill and three decode steps (fp32, <= 1e-4 relative to the largest
logit: fp32 rounding differs by ~1e-6 between the two, and 100x that still catches any wrong weight,
layout or scale); the exported graph is ours (GroupQueryAttention nodes; the MultiHeadLatentAttention models,
DeepSeek-V2 / V3, MiniCPM3, Sarvam-MLA and LongCat-Flash, are in tests/test_hf_mla.py); Gemma 2's
attention soft-cap and windows are on those nodes, and the cap changes the logits; Phi-3 (fused projections,
partial rotary, LongRoPE switching factor sets per forward, as transformers' forward does, across
original_max_position_embeddings; its generate() re-encodes there instead), the mixtures of experts of Mixtral,
Qwen3-MoE and Qwen2-MoE (sigmoid-gated shared expert), SmolLM3 (NoPE layers), Granite (multipliers),
OLMo 2 (whole-projection QK-norm, post-norm), Starcoder2 (LayerNorm, ungated MLP) and GPT-OSS (attention sinks as
node inputs, biased router and experts with interleaved gate / up and a clamped SwiGLU) map onto our Llama, their
nodes carrying the per-layer RoPE, windows and scale; so do the parallel-residual decoders GPT-NeoX (per-head fused
QKV, partial rotary, both residual modes), GPT-J (one norm per block, interleaved partial RoPE), Phi and Cohere
(bias-free LayerNorm, interleaved RoPE, logit_scale), Phi's qk_layernorm and Cohere's use_qk_norm (a LayerNorm per
head of q / k in standard ops before the node), Cohere 2 (sliding RoPE layers, full NoPE layers); so do OLMo
(LayerNorm without weight or bias, clip_qkv), OLMoE (whole-projection QK-norm, clip_qkv, experts), ERNIE 4.5 and Helium
(interleaved RoPE), Seed-OSS, EXAONE 4 (post-norm, QK-norm, full NoPE layers), GLM / GLM-4 (interleaved partial RoPE,
GLM-4's sandwich norms), Arcee and Nemotron (squared-ReLU MLP; Nemotron's 1 + weight LayerNorm) and StableLM (per-head
QK LayerNorm weights, parallel or sequential blocks), Ministral (sliding / full layers), Ministral 3 (YaRN, q scaled
per position), OLMo 3 (RoPE per layer type), EXAONE 3.5 and InternLM3 (as Llama), GLM-4.5 (sigmoid group-limited
routing with a choice bias and scaling, ungated shared expert) and MiniMax-M2 (whole-projection QK-norm, sigmoid
routing with a choice bias); so does Llama 4's text model (chunked attention on the node, weightless QK-norm on the
RoPE layers, attention temperature on the NoPE layer, experts weighted at their inputs; its greedy generation equals
transformers' generate); Gemma 1 maps onto
our Gemma without post-norms; Granite 3 MoE (multipliers, experts; GraniteMoeShared's shared MLP), ERNIE 4.5
MoE (choice-biased softmax routing, clamped renormalisation), Falcon (multi-query, grouped KV, one or two norms,
sequential blocks) and PhiMoE (SparseMixer routing) map onto our Llama, GPT-BigCode (multi-query) and OPT (offset
positions, pre- or post-norm, projected embeddings) onto our GPT-2; Cohere 2 MoE (dense prefix with force_rope, softmax
or sigmoid routing, shared experts averaged or summed), DBRX (fused Wqkv, clip_qkv, p-norm routing), Hunyuan dense /
MoE (QK-norm after RoPE, in torch before a node without RoPE; NTK-alpha) and AFMoE (gated attention output, sandwich
norms, muP) map onto our Llama too (the encoders are in tests/test_hf_encoders.py; unsupported architectures and
settings, refused by name, in tests/test_hf_refusals.py; the tiny configs, model factories and shared checks in
tests/hf_helpers.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from model_helpers import kernel_ops_ran, one_torch_thread, relative_error, run_steps, session  # noqa: F401
from onnxattn.generate import generate  # noqa: E402
from onnxattn.ops import SPECS  # noqa: E402

transformers = pytest.importorskip("transformers")

from hf_helpers import (BIGCODE, FALCON, GPT_OSS, MHA, NO_TOKENS, OPT, SMALL, T, check_export_matches,  # noqa: E402
                        check_generation_matches, dbrx_config, dots1, exaone_moe, glm4_moe, hf_steps, llama4,
                        minimax_m2, randomize, solar_open)

from onnxattn.export import from_transformers  # noqa: E402
from onnxattn.models.hf import UnsupportedModel  # noqa: E402

CASES = {
    # Llama 3.1-style RoPE scaling
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**SMALL, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**SMALL, sliding_window=6)),  # window < prompt
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**SMALL)),  # Q/K/V biases
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**SMALL, head_dim=32)),  # QK-norm
    # pre-norm blocks (post_attention_layernorm norms the MLP input), all layers global, head_dim 32 != 64 / 4, scaled
    # RoPE, tanh-GELU GeGLU, embeddings times sqrt(hidden), tied output embedding
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**SMALL, **NO_TOKENS, head_dim=32, rope_parameters={
        "rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})),
    "gemma3": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(
        **SMALL, head_dim=32, sliding_window=6, sliding_window_pattern=2, final_logit_softcapping=30.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0})),
    # no QK-norm, one RoPE base; attention soft-cap 5 (scaled scores reach ~6.6 here), scalar 16 != head dim;
    # eager: transformers refuses sdpa for Gemma 2 (sdpa cannot soft-cap)
    "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(
        **SMALL, head_dim=32, sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0, attn_implementation="eager")),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                                   bos_token_id=0, eos_token_id=0)),
    # fused qkv_proj and gate_up_proj; 12 of 16 channels rotated (Phi-4-mini's partial_rotary_factor); a window
    "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**SMALL, **NO_TOKENS, sliding_window=6, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75})),
    # top-2 of 4 experts in every layer, renormalised
    "mixtral": lambda: T.MixtralForCausalLM(T.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2)),
    # QK-norm, top-2 of 4 narrower experts renormalised (norm_topk_prob); decoder_sparse_step 2: layer 0 dense
    "qwen3_moe": lambda: T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(
        **SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True,
        decoder_sparse_step=2)),
    # Q/K/V biases, top-2 of 4 experts not renormalised (Qwen1.5-MoE's default), a sigmoid-gated shared expert;
    # layer 0 dense (mlp_only_layers)
    "qwen2_moe": lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
        **SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, shared_expert_intermediate_size=96,
        norm_topk_prob=False, mlp_only_layers=[0])),
    # NoPE every 2nd layer: layer 1 has no RoPE; its window (sliding layers are the NoPE ones) < prompt
    "smollm3": lambda: T.SmolLM3ForCausalLM(T.SmolLM3Config(
        **SMALL, **NO_TOKENS, no_rope_layer_interval=2, use_sliding_window=True, sliding_window=6)),
    # multipliers far from 1 (as Granite 3's); attention scale 0.05 instead of 1/sqrt(16)
    "granite": lambda: T.GraniteForCausalLM(T.GraniteConfig(
        **SMALL, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.05, logits_scaling=8.0)),
    # RMSNorm over all heads of q_proj / k_proj, post-norm blocks
    "olmo2": lambda: T.Olmo2ForCausalLM(T.Olmo2Config(**SMALL, **NO_TOKENS)),
    # LayerNorm with bias, biased projections, tanh-GELU c_fc / c_proj, window < prompt
    "starcoder2": lambda: T.Starcoder2ForCausalLM(T.Starcoder2Config(**SMALL, **NO_TOKENS, sliding_window=6)),
    # Granite 3 MoE: Granite's multipliers far from 1, q / k / v / o biases, top-2 of 4 experts in every layer (softmax
    # over the top-2 logits: renormalised, unrenormalised misses by ~3e-2); GraniteMoeShared adds an ungated shared
    # SwiGLU with fused gate / up (dropped, the logits miss by ~0.1)
    "granitemoe": lambda: T.GraniteMoeForCausalLM(T.GraniteMoeConfig(
        **SMALL, **NO_TOKENS, num_local_experts=4, num_experts_per_tok=2, embedding_multiplier=12.0,
        residual_multiplier=0.22, attention_multiplier=0.05, logits_scaling=8.0, attention_bias=True)),
    "granitemoeshared": lambda: T.GraniteMoeSharedForCausalLM(T.GraniteMoeSharedConfig(
        **SMALL, **NO_TOKENS, num_local_experts=4, num_experts_per_tok=2, shared_intermediate_size=96,
        embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.05, logits_scaling=8.0)),
    # ERNIE 4.5 MoE: interleaved RoPE, use_bias everywhere (lm_head too), head_dim 32; layer 0 dense, layer 1 top-2 of
    # 4 experts by softmax scores plus the (randomized) choice bias, renormalised by the sum clamped to moe_norm_min
    # 0.8 (above many sums here: unclamped misses by ~0.1), and a biased shared expert
    "ernie4_5_moe": lambda: T.Ernie4_5_MoeForCausalLM(T.Ernie4_5_MoeConfig(
        **SMALL, **NO_TOKENS, head_dim=32, use_bias=True, moe_num_experts=4, moe_k=2, moe_intermediate_size=48,
        moe_num_shared_experts=1, moe_layer_start_index=1, moe_norm_min=0.8)),
    # Falcon 40B / 180B-like (new_decoder_architecture): 2 KV groups of query heads in the fused query_key_value,
    # parallel blocks with two LayerNorms (ln_attn, ln_mlp: one shared misses by ~0.4), biases (bias=True)
    "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(**FALCON, new_decoder_architecture=True, num_kv_heads=2,
                                                         bias=True)),
    # Falcon 7B-like: multi-query (one KV head, rows [q | k | v]), parallel blocks with one LayerNorm
    "falcon_multi_query": lambda: T.FalconForCausalLM(T.FalconConfig(**FALCON)),
    # sequential blocks (parallel_attn=False: parallel misses by ~0.8), MHA rows per head [q_h | k_h | v_h], biases
    "falcon_sequential": lambda: T.FalconForCausalLM(T.FalconConfig(**FALCON, multi_query=False, parallel_attn=False,
                                                                    bias=True)),
    # StarCoder 1 / SantaCoder: multi-query (one KV head: with 4 the logits miss by ~1), learned positions, tanh-GELU
    "gpt_bigcode": lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**BIGCODE)),
    # multi_query=False: MHA, c_attn rows per head [q_h | k_h | v_h]
    "gpt_bigcode_mha": lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(**BIGCODE, multi_query=False)),
    # OPT: positions offset by 2 in the table (offset 0 misses by ~1), pre-norm blocks, biases, ReLU fc1 / fc2
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(**OPT)),
    # OPT-350m-like: post-norm blocks (do_layer_norm_before=False: pre-norm misses by ~1) without a final norm,
    # embeddings of word_embed_proj_dim 32 projected in and out, no biases (enable_bias=False)
    "opt_post_norm": lambda: T.OPTForCausalLM(T.OPTConfig(**OPT | dict(do_layer_norm_before=False,
                                                                       word_embed_proj_dim=32, enable_bias=False))),
    # Phi-3.5-MoE: LayerNorm blocks, attention and lm_head biases, SparseMixer routing of 2 of 4 experts with
    # router_jitter_noise 0.5 (released: 0.01) so that its thresholds admit other experts into a third of the
    # tokens' softmaxes (threshold 0: misses by ~0.5; plain top-2 of a softmax: by ~0.6)
    "phimoe": lambda: T.PhimoeForCausalLM(T.PhimoeConfig(**SMALL, **NO_TOKENS, num_local_experts=4, attention_bias=True,
                                                         lm_head_bias=True, router_jitter_noise=0.5)),
    # what each of these exercises is in its factory's docstring
    "dots1": dots1,
    "solar_open": solar_open,
    "exaone_moe": exaone_moe,
    # OLMo 2's whole-projection QK-norm (per head instead: the logits miss by ~0.9) and post-norm blocks (pre-norm:
    # ~0.9), top-2 of 4 experts in every layer by softmax (norm_topk_prob cannot matter: the post-norm undoes any
    # per-token scale of the MLP output)
    "flex_olmo": lambda: T.FlexOlmoForCausalLM(T.FlexOlmoConfig(**SMALL, **NO_TOKENS, num_experts=4,
                                                                num_experts_per_tok=2)),
    # Apertus: per-head QK-norm (off: the logits miss by ~0.3), Llama 3 RoPE scaling, pre-norm blocks (its own norm
    # names), ungated up_proj / down_proj MLP with xIELU whose learned alpha_p / alpha_n differ per layer (reset to
    # their init: ~0.03; squared ReLU instead: ~0.2)
    "apertus": lambda: T.ApertusForCausalLM(T.ApertusConfig(**SMALL, **NO_TOKENS, max_position_embeddings=64)),
    # VaultGemma: Gemma 2's attention soft-cap 5 (off: ~0.04), final soft-cap 10 (off: ~0.2), query_pre_attn_scalar 16
    # (head_dim instead: ~0.1), layer 0 sliding (window < prompt; off: ~0.3), in pre-norm blocks without Gemma 2's
    # post-norms (with them: ~0.3); eager, as Gemma 2
    "vaultgemma": lambda: T.VaultGemmaForCausalLM(T.VaultGemmaConfig(
        **SMALL, head_dim=32, sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
        final_logit_softcapping=10.0, attn_implementation="eager")),
    # Cohere 2 MoE: Cohere 2's parallel blocks (bias-free LayerNorm, interleaved RoPE, logits x 0.3); layer 0 dense
    # (first_k_dense_replace, 96 wide) and full, with RoPE all the same (force_rope; as NoPE the logits miss by ~0.3),
    # layer 1 sliding (window < prompt; off: ~0.3) with top-2 of 4 experts by a softmax of the top-2 logits and a
    # shared expert averaged with them (summed instead: ~0.3; dropped: ~0.4)
    "cohere2_moe": lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(
        **SMALL, **NO_TOKENS, logit_scale=0.3, sliding_window=6, sliding_window_pattern=2, num_experts=4,
        num_experts_per_tok=2, num_shared_experts=1, prefix_dense_intermediate_size=96, first_k_dense_replace=1)),
    # RMSNorm (rms_norm_eps set), layer 0 sliding (window off: ~0.6), layer 1 full without RoPE (with: ~0.2), experts in
    # both by a sigmoid of the top-2 logits (softmax instead: ~0.4) not renormalised (renormalised: ~0.4), plus 2 shared
    # experts as one, summed (dropped: ~0.9)
    "cohere2_moe_sigmoid": lambda: T.Cohere2MoeForCausalLM(T.Cohere2MoeConfig(
        **SMALL, **NO_TOKENS, logit_scale=0.3, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        num_experts=4, num_experts_per_tok=2, num_shared_experts=2, shared_expert_combination_strategy="sum",
        expert_selection_fn="sigmoid", norm_topk_prob=False, rms_norm_eps=1e-6)),
    "dbrx": lambda: T.DbrxForCausalLM(dbrx_config()),
    # Hunyuan: RoPE, then a per-head RMS QK-norm with weights (both in torch before the node, which has rope=0; normed
    # before RoPE, as the op's QK-norm would, the logits miss by ~0.5; weights of ones: ~0.3), head_dim 16
    "hunyuan_v1_dense": lambda: T.HunYuanDenseV1ForCausalLM(T.HunYuanDenseV1Config(**SMALL, **NO_TOKENS, head_dim=16)),
    # as the dense one (QK-norm before RoPE: ~0.5; weights of ones: ~0.5), with its NTK-alpha RoPE (the base times
    # alpha^(16 / 14); alpha 10 here, 1000 released; base 10k unstretched: ~0.5) and top-2 of 4 experts in every layer
    # by a softmax, renormalised (not: ~0.4), plus an ungated shared MLP (dropped: ~1)
    "hunyuan_v1_moe": lambda: T.HunYuanMoEV1ForCausalLM(T.HunYuanMoEV1Config(
        **(SMALL | dict(intermediate_size=48)), **NO_TOKENS, head_dim=16, num_experts=4, moe_topk=2,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 10.0, "factor": 1.0})),
    # AFMoE: per-head QK-norm before RoPE (the node's), layer 0 sliding with RoPE (window < prompt; off: ~0.9), layer 1
    # full without (with: ~0.4), the attention output times sigmoid(gate_proj(x)) per channel (ungated: ~1), sandwich
    # norms (no output norms: ~0.9), muP: embeddings times sqrt(64) (off: ~1); layer 0 dense (num_dense_layers),
    # layer 1 top-3 of 8 experts by sigmoid scores steered by a random expert_bias (zeroed: ~0.5), renormalised then
    # times route_scale 2.5 (times 1: ~0.2), plus an ungated shared expert (dropped: ~0.5)
    "afmoe": lambda: T.AfmoeForCausalLM(T.AfmoeConfig(
        **SMALL, **NO_TOKENS, head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        num_dense_layers=1, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, num_shared_experts=1,
        route_scale=2.5, mup_enabled=True)),
    # Pythia: parallel blocks with two LayerNorms, query_key_value rows per head [q | k | v], 4 of 16 channels rotated
    "gpt_neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**MHA, rotary_pct=0.25)),
    "gpt_neox_sequential": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**MHA, rotary_pct=0.25,
                                                                        use_parallel_residual=False)),
    # parallel blocks with one LayerNorm, interleaved RoPE on 8 of 16 channels, biased lm_head
    "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(vocab_size=256, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                                   n_inner=128, rotary_dim=8, **NO_TOKENS)),
    # phi-2's partial_rotary_factor 0.4 (6 of 16 channels), GQA, one LayerNorm per block, biased lm_head
    "phi": lambda: T.PhiForCausalLM(T.PhiConfig(**SMALL, **NO_TOKENS, partial_rotary_factor=0.4)),
    # qk_layernorm: one LayerNorm (weight and bias) over each head of q / k, shared by the heads
    "phi_qk_layernorm": lambda: T.PhiForCausalLM(T.PhiConfig(**SMALL, **NO_TOKENS, partial_rotary_factor=0.4,
                                                             qk_layernorm=True)),
    # Command-R: parallel blocks, one bias-free LayerNorm, interleaved RoPE on the whole head, logits x 0.3
    "cohere": lambda: T.CohereForCausalLM(T.CohereConfig(**SMALL, **NO_TOKENS, logit_scale=0.3)),
    # Command R+: use_qk_norm, a mean-centred LayerNorm per head of q / k with a weight per head (GQA: 4 and 2)
    "cohere_qk_norm": lambda: T.CohereForCausalLM(T.CohereConfig(**SMALL, **NO_TOKENS, logit_scale=0.3,
                                                                 use_qk_norm=True)),
    # Command R7B: sliding layers with interleaved RoPE and a window < prompt, full layers without RoPE (layer 1)
    "cohere2": lambda: T.Cohere2ForCausalLM(T.Cohere2Config(**SMALL, **NO_TOKENS, logit_scale=0.3, sliding_window=6,
                                                            sliding_window_pattern=2)),
    "gpt_oss": lambda: T.GptOssForCausalLM(T.GptOssConfig(**GPT_OSS)),
    # LayerNorm without weight or bias; clip_qkv 1 clamps ~30% of q / k / v (unclamped the logits miss by ~1)
    "olmo": lambda: T.OlmoForCausalLM(T.OlmoConfig(**SMALL, **NO_TOKENS, clip_qkv=1.0)),
    # RMSNorm over all heads of q_proj / k_proj in pre-norm blocks, then clip_qkv; top-2 of 4 experts not renormalised
    "olmoe": lambda: T.OlmoeForCausalLM(T.OlmoeConfig(**SMALL, **NO_TOKENS, num_experts=4, num_experts_per_tok=2,
                                                      clip_qkv=1.0)),
    # interleaved RoPE on the whole head, biases on every projection (use_bias), head_dim 32, tied embeddings
    "ernie4_5": lambda: T.Ernie4_5ForCausalLM(T.Ernie4_5Config(**SMALL, **NO_TOKENS, head_dim=32, use_bias=True)),
    # interleaved RoPE; attention_bias on q / k / v only (o_proj never has one)
    "helium": lambda: T.HeliumForCausalLM(T.HeliumConfig(**SMALL, **NO_TOKENS, head_dim=16, attention_bias=True)),
    # q / k / v biases (attention_bias), none on o_proj (attention_out_bias), head_dim 32
    "seed_oss": lambda: T.SeedOssForCausalLM(T.SeedOssConfig(**SMALL, **NO_TOKENS, head_dim=32)),
    # post-norm blocks, per-head RMS QK-norm; layer 0 sliding with RoPE (window < prompt), layer 1 full without RoPE
    "exaone4": lambda: T.Exaone4ForCausalLM(T.Exaone4Config(**SMALL, **NO_TOKENS, sliding_window=6,
                                                            sliding_window_pattern=2)),
    # interleaved RoPE on 8 of 16 channels, q / k / v biases, fused gate_up_proj; GLM-4 adds sandwich norms
    "glm": lambda: T.GlmForCausalLM(T.GlmConfig(**SMALL, **NO_TOKENS, head_dim=16)),
    "glm4": lambda: T.Glm4ForCausalLM(T.Glm4Config(**SMALL, **NO_TOKENS, head_dim=16)),
    # ungated up_proj / down_proj MLP with ReLU squared
    "arcee": lambda: T.ArceeForCausalLM(T.ArceeConfig(**SMALL, **NO_TOKENS)),
    # StableLM 2 12B-like: parallel blocks with one LayerNorm, a bias-free LayerNorm per head of q / k (weights differ
    # per head), q / k / v biases, 4 of 16 channels rotated; 1.6B-like: sequential blocks, no QK-norm
    "stablelm": lambda: T.StableLmForCausalLM(T.StableLmConfig(**SMALL, **NO_TOKENS, use_qkv_bias=True,
                                                               qk_layernorm=True, use_parallel_residual=True)),
    "stablelm_sequential": lambda: T.StableLmForCausalLM(T.StableLmConfig(**SMALL, **NO_TOKENS, use_qkv_bias=True)),
    # LayerNorm1P (scales by 1 + weight), 8 of 16 channels rotated, ungated squared-ReLU MLP
    "nemotron": lambda: T.NemotronForCausalLM(T.NemotronConfig(**SMALL, **NO_TOKENS)),
    # Ministral 8B: layer 0 sliding (window < prompt), layer 1 full (layer_types); no Q/K/V biases (Qwen2's layers)
    "ministral": lambda: T.MinistralForCausalLM(T.MinistralConfig(
        **SMALL, **NO_TOKENS, head_dim=16, sliding_window=6, layer_types=["sliding_attention", "full_attention"])),
    # Ministral 3: YaRN, and q times 1 + 0.5 * log(1 + floor(position / 4)) (llama_4_scaling_beta; the released
    # period, 16384, is shortened to 4 so that positions 4..10 are scaled; unscaled the logits miss by ~0.4)
    "ministral3": lambda: T.Ministral3ForCausalLM(T.Ministral3Config(
        **SMALL, **NO_TOKENS, head_dim=16, max_position_embeddings=64, rope_parameters={
            "rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": 4,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.5})),
    # OLMo 2's whole-projection QK-norm and post-norm blocks; layer 0 sliding (window < prompt) with default RoPE at
    # base 10k, layer 1 full with YaRN at base 500k (rope_parameters per layer type, as Olmo 3's long-context ones)
    "olmo3": lambda: T.Olmo3ForCausalLM(T.Olmo3Config(
        **SMALL, **NO_TOKENS, sliding_window=6, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=32,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0,
                                            "original_max_position_embeddings": 4}})),
    # EXAONE 3.5 (run as Llama by transformers): Llama 3 RoPE scaling, tied embeddings (as its 2.4B)
    "exaone": lambda: T.LlamaForCausalLM(T.ExaoneConfig(
        **SMALL, **NO_TOKENS, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 1000000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 4})),
    # InternLM3 (run as Llama): qkv_bias and bias on (every attention projection, o_proj too, and the MLP), head_dim 32
    "internlm3": lambda: T.LlamaForCausalLM(T.InternLM3Config(**SMALL, **NO_TOKENS, head_dim=32, qkv_bias=True,
                                                              bias=True)),
    # sigmoid routing with a correction bias: what each exercises is in its factory's docstring
    "glm4_moe": glm4_moe,
    "minimax_m2": minimax_m2,
    "llama4_text": llama4,
}
# attributes the GroupQueryAttention nodes must carry, layer by layer
NODE_ATTRS = {"smollm3": dict(rope=[1, 0], window=[0, 6]), "granite": dict(scale=[0.05, 0.05]),
              "starcoder2": dict(window=[6, 6]), "gpt_neox": dict(rotary_dim=[4, 4], rope_interleaved=[0, 0]),
              "gpt_neox_sequential": dict(rotary_dim=[4, 4]), "gptj": dict(rotary_dim=[8, 8], rope_interleaved=[1, 1]),
              "phi": dict(rotary_dim=[6, 6], rope_interleaved=[0, 0]), "phi_qk_layernorm": dict(rotary_dim=[6, 6]),
              "cohere": dict(rope_interleaved=[1, 1]),
              "cohere2": dict(rope=[1, 0], window=[6, 0], rope_interleaved=[1, 0]),
              "cohere2_moe": dict(rope=[1, 1], window=[0, 6], rope_interleaved=[1, 1]),
              "cohere2_moe_sigmoid": dict(rope=[1, 0], window=[6, 0]),
              "hunyuan_v1_dense": dict(rope=[0, 0]), "hunyuan_v1_moe": dict(rope=[0, 0]),
              "afmoe": dict(rope=[1, 0], window=[6, 0]),
              "gpt_oss": dict(window=[6, 0]), "ernie4_5": dict(rope_interleaved=[1, 1], rotary_dim=[0, 0]),
              "helium": dict(rope_interleaved=[1, 1]), "exaone4": dict(rope=[1, 0], window=[6, 0]),
              "glm": dict(rope_interleaved=[1, 1], rotary_dim=[8, 8]),
              "glm4": dict(rope_interleaved=[1, 1], rotary_dim=[8, 8]), "stablelm": dict(rotary_dim=[4, 4]),
              "nemotron": dict(rotary_dim=[8, 8], rope_interleaved=[0, 0]), "ministral": dict(window=[6, 0]),
              "olmo3": dict(window=[6, 0], rope_base=[10000.0, 500000.0]),
              "glm4_moe": dict(rotary_dim=[8, 8], rope_interleaved=[0, 0]), "minimax_m2": dict(rotary_dim=[8, 8]),
              "llama4_text": dict(attention_chunk=[4, 0], rope=[1, 0], rope_interleaved=[1, 0]),
              "granitemoe": dict(scale=[0.05, 0.05]), "ernie4_5_moe": dict(rope_interleaved=[1, 1]),
              "falcon": dict(kv_num_heads=[2, 2]), "falcon_multi_query": dict(kv_num_heads=[1, 1]),
              "falcon_sequential": dict(kv_num_heads=[4, 4]), "gpt_bigcode": dict(kv_num_heads=[1, 1], rope=[0, 0]),
              "opt": dict(rope=[0, 0]), "dots1": dict(window=[0, 6]),
              "exaone_moe": dict(rope=[1, 0], window=[6, 0]),
              "vaultgemma": dict(window=[6, 0], softcap=[5.0, 5.0], scale=[0.25, 0.25])}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    torch.manual_seed(0)
    check_export_matches(randomize(CASES[name]()), tmp_path / f"{name}.onnx", vocab=256,
                         node_attrs=NODE_ATTRS.get(name))


def phi3_longrope():
    """Phi-3 with LongRoPE over a short context: original_max_position_embeddings 8 (a forward whose positions
    reach 8 uses the long factors), max_position_embeddings 32 (attention factor sqrt(1 + ln 4 / ln 8)), 12 of 16
    channels rotated (Phi-4-mini's partial_rotary_factor 0.75). The long factors differ from the short ones most
    on the high frequencies, which turn by whole radians over these few positions."""
    return randomize(T.Phi3ForCausalLM(T.Phi3Config(
        **SMALL, **NO_TOKENS, max_position_embeddings=32, original_max_position_embeddings=8, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5], "long_factor": [2.0, 3.0, 4.0, 6.0, 8.0, 12.0]})))


def test_phi3_longrope_matches_transformers_forward_by_forward(tmp_path):
    """transformers picks LongRoPE's factor set per forward: long when its largest position + 1 exceeds
    original_max_position_embeddings, for all of that forward's tokens; cached keys keep the set they were rotated
    with. The graph does the same (Greater + Where in front of each node's rope_inv_freq), so over a prefill below
    the boundary whose decode steps cross it, and over a prefill already past it, the logits match. Wiring the
    nodes to the short set only (or the long set only) misses by far on the other side."""
    hf = phi3_longrope()
    result = from_transformers(hf, tmp_path / "phi3.onnx", progress=False)
    assert result.report.ok
    proto = onnx.load(result.path)
    producers = {out: n for n in proto.graph.node for out in n.output}
    nodes = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    wheres = [producers[n.input[9]] for n in nodes]  # rope_inv_freq
    assert len(nodes) == 2 and all(w.op_type == "Where" and producers[w.input[0]].op_type == "Greater" for w in wheres)
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    sess = session(result.path)
    for prefill in (6, 10):  # positions 0..5 then 6, 7 short and 8..12 long; positions 0..9 long from the start
        got, want = run_steps(sess, ids.numpy(), prefill), hf_steps(hf, ids, prefill)
        errors = [relative_error(g, w) for g, w in zip(got, want)]
        assert max(errors) <= 1e-4, (prefill, errors)

    want = hf_steps(hf, ids, 6)
    for branch, name in ((2, "short"), (1, "long")):  # Where(condition, long, short)
        for node, where in zip(nodes, wheres):
            node.input[9] = where.input[branch]
        onnx.save(proto, tmp_path / f"{name}.onnx")
        errors = [relative_error(g, w) for g, w in zip(run_steps(session(tmp_path / f"{name}.onnx"), ids.numpy(), 6),
                                                       want)]
        if name == "short":  # right up to position 7 (the prefill and the first two steps), wrong from 8 on
            assert max(errors[:3]) <= 1e-4 and min(errors[3:]) > 1e-2, errors
        else:  # wrong from the prefill on
            assert min(errors) > 1e-2, errors


def test_phi3_longrope_generation_is_forward_by_forward_not_transformers_generate(tmp_path):
    """Our greedy generation (concatenated and shared-buffer caches) equals transformers' model run forward by
    forward with its cache, token for token, across the boundary. It does not equal transformers' generate():
    Phi3ForCausalLM.prepare_inputs_for_generation drops the cache when the sequence first reaches
    original_max_position_embeddings + 1 tokens and re-encodes all of it with the long factors, while a KV cache
    keeps the earlier keys rotated with the short ones. Checked here on transformers' own logits, so this test
    fails (and the docs need updating) if transformers changes that."""
    hf = phi3_longrope()
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    new = 8  # the 4th generated token is predicted from 9 tokens, the first forward past the boundary
    with torch.no_grad():
        out = hf(prompt, use_cache=True)
        cache, steps = out.cache, [out.logits[:, -1]]
        for _ in range(new - 1):
            out = hf(steps[-1].argmax(-1, keepdim=True), use_cache=True, cache=cache)
            cache = out.cache
            steps.append(out.logits[:, -1])
        want = torch.cat([prompt, torch.stack(steps, 1).argmax(-1)], 1).numpy()
        theirs = hf.generate(prompt, max_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        reencoded = hf(theirs.sequences[:, :9]).logits[:, -1]  # the whole sequence in one forward, no cache
    errors = [relative_error(g.numpy(), s.numpy()) for g, s in zip(theirs.logits, steps)]
    assert max(errors[:4]) <= 1e-5 and errors[4] > 1e-2, errors  # equal before the boundary, not at it
    assert relative_error(theirs.logits[4].numpy(), reencoded.numpy()) <= 1e-5
    for cache_mode in ("concat", "shared"):
        result = from_transformers(hf, tmp_path / f"{cache_mode}.onnx", cache=cache_mode, logits="last",
                                   progress=False)
        got = generate(str(result.path), prompt.numpy(), new, providers=["CPUExecutionProvider"], progress=False)
        np.testing.assert_array_equal(got.tokens, want, err_msg=cache_mode)
    assert len(np.unique(want[:, 5:])) >= 4, "the tiny model should not collapse onto one token"


def test_cli_takes_a_checkpoint_directory(tmp_path, capsys):
    """`onnxattn export|generate <dir>` loads a saved transformers checkpoint (local files only, eager attention:
    Gemma 2's soft-cap) and exports it with our ops; generate --compare-torch checks greedy tokens against
    the transformers model's, one cached forward per token."""
    from onnxattn.cli import main

    hf = randomize(CASES["gemma2"]())
    hf.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "g.onnx"
    assert main(["export", str(tmp_path / "ckpt"), "-o", str(out), "--quiet"]) == 0
    assert "exported ckpt (decoder, float32, cache concat)" in capsys.readouterr().out
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    errors = [relative_error(g, w) for g, w in zip(run_steps(session(out), ids.numpy(), 8), hf_steps(hf, ids, 8))]
    assert max(errors) <= 1e-4, errors
    assert main(["generate", str(tmp_path / "ckpt"), "-n", "6", "--batch", "2", "--compare-torch", "--quiet",
                 "--provider", "cpu", "--out", str(tmp_path)]) == 0
    assert "tokens equal to transformers (greedy, KV-cached forward steps): yes" in capsys.readouterr().out
    # the Python API takes the directory too (it called it "str (model_type None) is not supported")
    api = from_transformers(tmp_path / "ckpt", tmp_path / "api.onnx", progress=False)
    assert api.kind == "decoder" and [i.name for i in session(api.path).get_inputs()] == \
        [i.name for i in session(out).get_inputs()]
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "ckpt"), "--set", "hidden=8"]) == 2
    assert "a transformers checkpoint brings its own" in capsys.readouterr().err
    (tmp_path / "t5").mkdir()
    (tmp_path / "t5" / "config.json").write_text('{"model_type": "t5"}')
    assert main(["export", str(tmp_path / "t5")]) == 2
    assert "holds a 't5' model" in capsys.readouterr().err


def test_cli_prompt_text_through_the_checkpoint_tokenizer(tmp_path, capsys):
    """--prompt tokenizes with the checkpoint directory's tokenizer (a word-level one built here: w0 .. w255 are
    ids 0 .. 255) and the continuation is printed as text as well; prompts of unequal length, or without a tokenizer,
    are refused before the model is exported."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from onnxattn.cli import main

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(256)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    checkpoint = tmp_path / "ckpt"
    randomize(CASES["qwen3"]()).save_pretrained(checkpoint)
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0").save_pretrained(checkpoint)
    args = ["generate", str(checkpoint), "-n", "5", "--quiet", "--provider", "cpu", "--out", str(tmp_path)]
    assert main([*args, "--prompt", "w7 w8 w9", "--prompt", "w1 w2 w3", "--compare-torch"]) == 0
    out = capsys.readouterr().out
    assert "prompt 2 x 3, 5 new tokens per row" in out and "tokens equal to transformers" in out and ": yes" in out
    lines = out.splitlines()
    texts = [i for i, line in enumerate(lines) if line.startswith("  text: ")]
    assert len(texts) == 2
    for at in texts:
        ids = [int(t) for t in lines[at - 1].split()]
        assert lines[at] == "  text: " + repr(" ".join(f"w{i}" for i in ids))
    assert main([*args, "--prompt", "w1 w2", "--prompt", "w1"]) == 2
    assert "tokenize to [2, 1] tokens" in capsys.readouterr().err
    assert main(["generate", "llama", "--prompt", "hi", "--quiet"]) == 2
    assert "--prompt needs a tokenizer" in capsys.readouterr().err
    # a checkpoint saved without its tokenizer: transformers builds an empty one from the config, which tokenized
    # every prompt to nothing and printed every continuation as ''; now it counts as none
    bare = tmp_path / "bare"
    randomize(CASES["qwen3"]()).save_pretrained(bare)
    bare_args = ["generate", str(bare), "-n", "2", "--quiet", "--provider", "cpu", "--out", str(tmp_path)]
    assert main([*bare_args, "--prompt", "hello"]) == 2
    assert f"no tokenizer could be loaded from {bare}" in capsys.readouterr().err
    assert not (tmp_path / "bare.onnx").exists()  # refused before the export
    assert main(bare_args) == 0
    assert "text:" not in capsys.readouterr().out


def test_gemma2_keeps_attention_softcap_and_windows(tmp_path):
    """What stock exporters drop: every GroupQueryAttention node carries the soft-cap, sliding layers the
    window; and the cap matters here: with it zeroed in the graph, the logits miss transformers' by far more
    than test_logits_match_transformers' tolerance."""
    hf = randomize(CASES["gemma2"]())
    result = from_transformers(hf, tmp_path / "gemma2.onnx", progress=False)
    proto = onnx.load(result.path)
    nodes = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert [a["softcap"] for a in attrs] == [5.0, 5.0]
    assert [a["window"] for a in attrs] == [6, 0]  # sliding, then global
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    for node in nodes:
        next(a for a in node.attribute if a.name == "softcap").f = 0.0
    onnx.save(proto, tmp_path / "uncapped.onnx")
    got = run_steps(session(tmp_path / "uncapped.onnx"), ids.numpy(), 8)
    assert min(relative_error(g, w) for g, w in zip(got, want)) > 1e-2


@pytest.mark.parametrize("setting, match", [
    (dict(attention_bias=True), "Gemma 2 with attention_bias is not supported"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}), "scaled RoPE .linear."),
    (dict(tie_word_embeddings=False), "output embedding other than the input one"),
    (dict(sliding_window=None), "Gemma2Config does not map onto ours.*sliding_window"),
])
def test_gemma2_unsupported_settings_are_named(setting, match, tmp_path):
    config = T.Gemma2Config(**SMALL | dict(num_hidden_layers=1), head_dim=32, **setting)
    hf = randomize(T.Gemma2ForCausalLM(config))  # untied: lm_head gets its own random weights
    with pytest.raises(UnsupportedModel, match=match):
        from_transformers(hf, tmp_path / "x.onnx")


def test_gpt_oss_sinks_are_node_inputs(tmp_path):
    """GPT-OSS's attention sinks reach each GroupQueryAttention node as its sinks input (the layer's parameter),
    our kernels run them, and onnxruntime without our library (the functions) matches transformers too; with the
    sinks zeroed in the graph, the logits miss by far more than test_logits_match_transformers' tolerance."""
    hf = randomize(CASES["gpt_oss"]())
    result = from_transformers(hf, tmp_path / "gpt_oss.onnx", progress=False)
    proto = onnx.load(result.path)
    nodes = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    sinks = [i.name for i in SPECS["GroupQueryAttention"].inputs].index("sinks")
    assert [n.input[sinks] for n in nodes] == [f"model.layers.{i}.attn.sinks" for i in range(2)]
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    want = hf_steps(hf, ids, 8)
    profiled = session(result.path, profile=True)
    for sess in (profiled, session(result.path, use_library=False)):
        errors = [relative_error(g, w) for g, w in zip(run_steps(sess, ids.numpy(), 8), want)]
        assert max(errors) <= 1e-4, errors
    assert kernel_ops_ran(profiled) == {"GroupQueryAttention"}
    for init in proto.graph.initializer:
        if init.name.endswith("attn.sinks"):
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(4, np.float32), init.name))
    onnx.save(proto, tmp_path / "no_sinks.onnx")
    got = run_steps(session(tmp_path / "no_sinks.onnx"), ids.numpy(), 8)
    assert min(relative_error(g, w) for g, w in zip(got, want)) > 1e-2


def test_llama4_generation_and_chunks(tmp_path):
    """Llama 4's greedy generation over 17 positions (chunks of 4 cut the prompt and the new tokens; the NoPE layer's
    temperature grows with the cache position) equals transformers' generate, with concatenated and shared-buffer
    caches (the temperature's positions then come from past_lengths). The chunk is the node's attention_chunk
    attribute: zeroed there, the logits miss by far more than test_logits_match_transformers' tolerance."""
    hf = randomize(llama4())
    check_generation_matches(hf, tmp_path, vocab=256, caches=("concat", "shared"))

    proto = onnx.load(tmp_path / "concat.onnx")
    node = next(n for n in proto.graph.node if n.op_type == "GroupQueryAttention")  # layer 0: chunked
    chunk = next(a for a in node.attribute if a.name == "attention_chunk")
    assert chunk.i == 4
    chunk.i = 0
    onnx.save(proto, tmp_path / "no_chunk.onnx")
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(1))
    got = run_steps(session(tmp_path / "no_chunk.onnx"), ids.numpy(), 8)
    assert min(relative_error(g, w) for g, w in zip(got, hf_steps(hf, ids, 8))) > 1e-2
