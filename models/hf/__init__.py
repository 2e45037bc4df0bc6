"""Hugging Face transformers models -> the reference models here, with the same weights: the config is
mapped onto ours, each weight copied to its place, and RoPE frequencies checked against the HF model's
own. Export then goes through our modules (onnxattn.export.from_transformers), so the graph uses our ops.
Llama-likes (Mistral, Mixtral, Qwen2/3, Qwen2/3-MoE, Phi-3, SmolLM3, Granite, OLMo 2, Starcoder2, GPT-OSS, ...) map onto
our Llama: Phi-3's fused projections are split, the mixtures of experts become models.moe with softmax routing
(Qwen2-MoE with its sigmoid-gated shared expert; GPT-OSS with router and expert biases, its interleaved gate / up
columns split into our gate and up rows, and its clamped SwiGLU), and the others set LlamaConfig options (NoPE layers,
Granite's multipliers, OLMo 2's whole-projection QK-norm and post-norm blocks, Starcoder2's LayerNorm and ungated MLP,
GPT-OSS's attention sinks and alternating sliding / full layers). Further Llama-likes set LlamaConfig options too:
OLMo (LayerNorm without weight or bias, q / k / v clamped by clip_qkv), OLMoE (OLMo 2's whole-projection QK-norm in
pre-norm blocks, clip_qkv, softmax top-k experts), ERNIE 4.5 (interleaved RoPE, use_bias everywhere), Helium
(interleaved RoPE, Q/K/V biases only), Seed-OSS (Q/K/V and output biases set apart), EXAONE 4 (post-norm blocks with a
per-head RMS QK-norm, sliding layers with RoPE and full layers without), GLM (interleaved partial RoPE, fused gate / up)
and GLM-4 (with sandwich norms), Arcee (ungated squared-ReLU MLP), StableLM (LayerNorm, partial RoPE, a LayerNorm per
head of q / k with its own weight, parallel or sequential blocks) and Nemotron (LayerNorm scaling by 1 + weight,
partial RoPE, ungated squared-ReLU MLP), Ministral (per-layer sliding / full), Ministral 3 (q scaled per position
by llama_4_scaling_beta), OLMo 3 (OLMo 2's blocks, RoPE per layer type), EXAONE 3.5 and InternLM3 (run as Llama by
transformers), GLM-4.5 (GQA, QK-norm, half-split partial RoPE, DeepSeek-V3's sigmoid routing with a choice bias,
groups and scaling, an ungated shared expert) and MiniMax-M2 (whole-projection QK-norm, partial RoPE, sigmoid
routing with a choice bias). DeepSeek-V3's MoE block on Llama-like attention: dots.llm1 (Qwen3's attention, sliding
layers), Solar Open (Q/K/V biases, experts in every layer), K-EXAONE (exaone_moe: EXAONE 4's attention in pre-norm
blocks); FlexOlmo (OLMo 2's blocks, OLMoE's experts) and Apertus (QK-norm, ungated xIELU MLP with learned parameters)
set LlamaConfig options too. Llama 4's text model (models.hf.llama4, through the Llama converter) maps onto our
Llama too: chunked-attention RoPE layers with a weightless QK-norm, NoPE layers with its attention temperature,
experts weighted at their inputs; the multimodal Llama4ForConditionalGeneration is refused. The parallel-residual
decoders map onto our Llama too, with LayerNorm, ungated MLPs and parallel blocks: GPT-NeoX / Pythia (two norms per
block, or sequential blocks with use_parallel_residual=False; its fused query_key_value split per head, partial
rotary), GPT-J (one norm per block, interleaved RoPE on rotary_dim channels, biased lm_head), Phi (phi-1 / 1.5 / 2:
one norm per block, partial rotary, biased projections and lm_head; qk_layernorm as a LayerNorm per head of q / k,
shared by the heads, in torch before the node), Cohere / Command-R (one bias-free LayerNorm per block, gated MLP,
interleaved RoPE, logits times logit_scale as a division by its inverse; use_qk_norm as a LayerNorm per head of
q / k with a weight per head) and Cohere 2 / Command R7B (as Cohere, sliding-window layers with RoPE, full layers
without), and Falcon (its fused query_key_value split as multi-query, grouped KV with new_decoder_architecture
or per head; parallel blocks with one LayerNorm or two, or sequential ones; ALiBi refused). Granite 3 MoE (Granite's
multipliers, softmax top-k experts; GraniteMoeShared's ungated shared MLP), ERNIE 4.5 MoE (softmax routing steered by
a choice bias, the renormalising sum clamped to moe_norm_min, a biased shared expert) and PhiMoE (LayerNorm, the
SparseMixer router as transformers runs it at inference) map onto our Llama with models.moe experts (module moe), as
does DBRX (its fused Wqkv split, clamped by clip_qkv; bias-free LayerNorm; softmax routing renormalised by the p-norm
of moe_normalize_expert_weights). Cohere 2 MoE (Cohere 2's blocks, dense prefix layers with force_rope, softmax or
sigmoid routing of the top-k logits, shared experts summed or averaged), Hunyuan dense / MoE (its per-head QK-norm
after RoPE: both in torch before a node without RoPE, qk_norm_after_rope; NTK-alpha RoPE as a stretched base; softmax
top-k experts plus an ungated shared MLP) and AFMoE (per-head QK-norm, RoPE on the sliding layers only, the attention
output gated per channel by sigmoid(gate_proj(x)), sandwich norms, muP embedding scale, sigmoid routing with a choice
bias and route_scale plus a shared expert) map onto our Llama through LlamaConfig options (module llama).
Module newer: CWM is Llama with sliding / full layers. Jais 2 has LayerNorm, biases and an ungated squared-ReLU MLP.
HyperCLOVAX is Granite with its logits times logits_scaling and output norms (sandwich norms). Granite SWA and Granite
MoE SWA add attention sinks, sliding layers and NoPE layers (layer_rope_theta 0). Mellum is Qwen3-MoE's attention and
experts with RoPE per layer type. Apertus 1.5's text model is Apertus with a pruned lm_head. NanoChat has weightless
norms (one on the embeddings), RoPE turning the other way (each head's q / k halves swapped) and a final soft-cap.
GPT-BigCode (multi-query) and OPT (positions offset by 2, pre- or post-norm, project_in / project_out) map onto our
GPT-2. GPT-Neo maps onto it too (unscaled scores, its local layers as windowed nodes; module gpt_family), and so do
BioGPT (OPT's offset learned positions, embeddings times sqrt(hidden)) and XGLM (as BioGPT, sinusoidal positions copied
into the table). CodeGen is GPT-J with its fused qkv split from 4 shards of [q | v | k] rows. Persimmon is GPT-NeoX's
fused per-head qkv in sequential LayerNorm blocks with Phi's shared per-head QK LayerNorm and squared ReLU. Flint is
Qwen3's attention with sinks, RoPE on sliding layers only, sigmoid experts and an ungated shared expert. HY-V3 is
per-head QK-norm with sigmoid routing steered by a choice bias, renormalised and scaled, plus a shared expert.
Kolibri-1 is EXAONE 4's attention in GLM-4's sandwich blocks, experts ranked by logits plus a choice bias. MPT and
BLOOM (ALiBi) are refused (REFUSED), as are Inkling and ZAYA (conv states a decode step needs beside the KV cache).
Gemma maps onto models.gemma3 without post-norms, soft-caps, QK-norm or sliding layers; VaultGemma is Gemma 2
without its post-norms. Gemma 4's text model
(gemma4_text, module gemma4) maps onto models.gemma4: head dims and KV heads per layer kind, proportional RoPE as
node frequencies, V normed (or K's projection) before the node, KV-shared layers as ScaledDotProductAttention over
their source layer's present, per-layer inputs, its MoE block as an exact mixture; bidirectional attention and the
multimodal Gemma4ForConditionalGeneration are refused. RoBERTa /
XLM-RoBERTa map onto our BERT (positions from the pad token id); ModernBERT
onto models.modernbert. DeepSeek-V3 and DeepSeek-V2 / V2-Lite map onto models.deepseek (MLA with its latent cache,
YaRN with mscale); V2's router scores by softmax, picks greedily
or group-limited (a group scored by its best expert) and scales without renormalising. Sarvam-MLA is run as DeepSeek-V3
by transformers; MiniCPM3 is MLA with dense MLPs and MiniCPM's embedding / residual / logits multipliers (its LongRoPE
switches factor sets per forward in the MLA layer, as in transformers); LongCat-Flash maps its two-sublayer layers
onto pairs of ours with the shortcut MoE beside them (choice-biased softmax router, zero-computation identity experts).
Youtu-LLM is MLA with dense MLPs; GLM-4 MoE Lite is DeepSeek-V3's layers, dense where mlp_layer_types says. Mistral 4
is DeepSeek-V3's layers with a softmax group-limited router (no choice bias) and Ministral 3's per-position query scale
(llama_4_scaling_beta), applied in torch before the MLA node. A.X-K1 (module axk1) is DeepSeek-V3's layers with an
RMSNorm on each MoE block's output; A.X-K2 and Hy4 (DeepSeek-V3.2's indexer-selected sparse attention) and
Lara-4-Mini (Gated DeltaNet layers) are refused (REFUSED).
MiMo-V2-Flash (module mimo) maps onto our Llama: value heads narrower than its query / key heads (v_head_dim), twice
the KV heads and attention sinks on its sliding layers (layer_kv_heads, sink_layers), RoPE per layer type on the
leading channels, values times attention_value_scale (in v_proj's weight), DeepSeek-V3's sigmoid routing without a
shared expert; its multi-token-prediction layers are not converted (causal LM logits only).
Laguna (module laguna) maps onto our Llama: query heads per layer, RoPE base and rotary dim per layer type, the
attention output times a softplus gate per head or per channel, sigmoid routing of soft-capped logits with a choice
bias plus a shared expert. Dory (module dory) maps onto models.hf.dory's DoryModel: nGPT blocks (L2 norms, learned
interpolation rates), q / k normed and rotated in torch before the node, its recurrent loops unrolled with shared
weights and a cache per loop (recurrent_kv_cache_mode "last_loop" is refused). JetMoE (module jetmoe) maps onto
models.hf.jetmoe's JetMoeModel: its mixture of attention (per-token routed query / output projections around shared
key / value heads, the query heads reordered to our grouping) in torch around the node, top-k experts plus a bias.
HRM-Text (module hrm_text) maps onto models.hf.hrm_text's HrmTextModel: its two weight-shared stacks run recurrently,
every pass unrolled with a cache of its own and its stack's weights, the attention output gated per channel
(prefix_lm=True, a bidirectional prefix, is refused).

LongRoPE (rope_type "longrope": Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) maps onto RopeScaling("longrope") for
the Llama-likes, both factor sets checked against transformers'. As transformers' rotary embedding
(modeling_rope_utils.dynamic_rope_update), each forward uses the long factors when its largest position + 1
exceeds original_max_position_embeddings (Phi3Config's own field wins over rope_parameters'), else the short
ones; our layers pick the set with a torch.where that exports as Greater + Where. Phi-3's generate() differs:
its prepare_inputs_for_generation drops the cache when the sequence first reaches original_max_position_embeddings
+ 1 tokens and re-encodes it all with the long factors, which a KV-cached graph does not do, so our generation
equals transformers' forward-by-forward decoding, not its generate(), across that boundary. Refused: LongRoPE on
Gemma 1/2/3 and DeepSeek-V2/V3, and factor lists that are not one per rotated frequency (transformers broadcasts a
single factor).

Nothing is downloaded: pass a model you built (e.g. ``LlamaForCausalLM(LlamaConfig(...))``) or loaded.

Layout: _common (SUPPORTED, refusals, activation and RoPE helpers) and one converter module per family group
(llama, llama4, moe, newer, mimo, laguna, dory, jetmoe, hrm_text, gemma, gemma4, gpt2, gpt_family, encoders, deepseek,
axk1); this module holds the model_type -> converter table."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.models.hf._common import NOT_YET, SUPPORTED, UnsupportedModel, _unsupported, supported_message
from onnxattn.models.hf._common import REFUSED
from onnxattn.models.hf.axk1 import _axk1
from onnxattn.models.hf.deepseek import _deepseek, _longcat_flash
from onnxattn.models.hf.dory import _dory
from onnxattn.models.hf.encoders import _bert, _modernbert
from onnxattn.models.hf.gemma import _gemma1, _gemma2, _gemma3
from onnxattn.models.hf.gemma4 import _gemma4
from onnxattn.models.hf.gpt2 import _gpt2, _gpt_bigcode, _opt
from onnxattn.models.hf.gpt_family import _biogpt, _codegen, _flint, _gpt_neo, _hy_v3, _kolibri1, _persimmon, _xglm
from onnxattn.models.hf.hrm_text import _hrm_text
from onnxattn.models.hf.jetmoe import _jetmoe
from onnxattn.models.hf.llama import _cohere, _falcon, _gpt_neox, _gptj, _llama, _phi
from onnxattn.models.hf.laguna import _laguna
from onnxattn.models.hf.sweep1 import _aria_text, _ctrl, _gpt_neox_japanese, _openai_gpt
from onnxattn.models.hf.sweep2 import _bitnet, _diffllama, _gemma4_unified
from onnxattn.models.hf.sweep3 import _cohere_compass_text, _moshi
from onnxattn.models.hf.llama4 import _llama4
from onnxattn.models.hf.mimo import _mimo_v2_flash
from onnxattn.models.hf.moe import _dbrx, _ernie4_5_moe, _granitemoe, _phimoe
from onnxattn.models.hf.newer import (_apertus1p5_text, _granite_swa, _granitemoe_swa, _hyperclovax, _jais2, _mellum,
                                      _nanochat)

__all__ = ["NOT_YET", "SUPPORTED", "UnsupportedModel", "from_transformers", "load_local", "supported_message"]

_CONVERTERS = {"llama": _llama, "mistral": _llama, "mixtral": _llama, "qwen2": _llama, "qwen3": _llama,
               "qwen3_moe": _llama, "qwen2_moe": _llama, "phi3": _llama, "smollm3": _llama, "granite": _llama,
               "olmo2": _llama, "starcoder2": _llama, "gpt_oss": _llama, "olmo": _llama, "olmoe": _llama,
               "ernie4_5": _llama, "helium": _llama, "seed_oss": _llama, "exaone4": _llama, "glm4": _llama,
               "glm": _llama, "arcee": _llama, "stablelm": _llama, "nemotron": _llama, "ministral": _llama,
               "ministral3": _llama, "olmo3": _llama, "exaone": _llama, "internlm3": _llama,
               "glm4_moe": _llama, "minimax_m2": _llama, "dots1": _llama,
               "solar_open": _llama, "exaone_moe": _llama, "flex_olmo": _llama,
               "apertus": _llama, "llama4_text": _llama4,
               "granitemoe": _granitemoe, "granitemoeshared": _granitemoe, "ernie4_5_moe": _ernie4_5_moe,
               "falcon": _falcon, "gpt_bigcode": _gpt_bigcode, "opt": _opt, "phimoe": _phimoe,
               "gpt_neox": _gpt_neox, "gptj": _gptj,
               "phi": _phi, "cohere": _cohere, "cohere2": _cohere, "cohere2_moe": _cohere, "dbrx": _dbrx,
               "hunyuan_v1_dense": _llama, "hunyuan_v1_moe": _llama, "afmoe": _llama,
               "gemma": _gemma1, "gemma2": _gemma2, "vaultgemma": _gemma2, "gemma3_text": _gemma3,
               "gemma4_text": _gemma4,
               "gpt2": _gpt2,
               "bert": _bert, "roberta": _bert, "xlm-roberta": _bert, "modernbert": _modernbert,
               "deepseek_v2": _deepseek, "deepseek_v3": _deepseek, "sarvam_mla": _deepseek, "minicpm3": _deepseek,
               "longcat_flash": _longcat_flash,
               "gpt_neo": _gpt_neo, "biogpt": _biogpt, "xglm": _xglm, "codegen": _codegen, "persimmon": _persimmon,
               "flint": _flint, "hy_v3": _hy_v3, "kolibri1": _kolibri1,
               "cwm": _llama, "jais2": _jais2, "hyperclovax": _hyperclovax, "granite_swa": _granite_swa,
               "granitemoe_swa": _granitemoe_swa, "mellum": _mellum, "apertus1p5_text": _apertus1p5_text,
               "nanochat": _nanochat, "youtu": _deepseek, "glm4_moe_lite": _deepseek,
               "deepseek_v32": _deepseek, "glm_moe_dsa": _deepseek,
               "mistral4": _deepseek, "mimo_v2_flash": _mimo_v2_flash, "laguna": _laguna, "dory": _dory, "axk1": _axk1,
               "iquestcoder": _llama, "gpt-sw3": _gpt2, "sarvam_moe": _llama, "emu3_text_model": _llama,
               "aria_text": _aria_text, "openai-gpt": _openai_gpt, "ctrl": _ctrl,
               "gpt_neox_japanese": _gpt_neox_japanese,
               "bitnet": _bitnet, "diffllama": _diffllama, "gemma4_unified_text": _gemma4_unified,
               "moshi": _moshi, "cohere_compass_text": _cohere_compass_text, "jetmoe": _jetmoe,
               "hrm_text": _hrm_text}


def from_transformers(hf_model) -> nn.Module:
    """Our reference model (fp32, eval) with the weights of `hf_model`, a transformers model of a supported
    architecture; anything else raises UnsupportedModel naming what is supported."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in NOT_YET:
        raise _unsupported(f"{type(hf_model).__name__} ({model_type}): {NOT_YET[model_type]}")
    if model_type in REFUSED:  # ALiBi; conv states beside the KV cache
        raise _unsupported(f"{type(hf_model).__name__} ({model_type}): {REFUSED[model_type]}")
    if model_type == "gemma3":
        raise _unsupported("Gemma3ForConditionalGeneration is multimodal; pass its text model as "
                           "Gemma3ForCausalLM(config.text_config) with the language model's weights")
    if model_type == "gemma4":
        raise _unsupported("Gemma4ForConditionalGeneration is multimodal; pass its text model as "
                           "Gemma4ForCausalLM(config.text_config) with the language model's weights")
    if model_type == "llama4":
        raise _unsupported("Llama4ForConditionalGeneration is multimodal; pass its text model, its language_model "
                           "(a Llama4ForCausalLM)")
    if model_type not in _CONVERTERS:
        raise _unsupported(f"{type(hf_model).__name__} (model_type {model_type!r}) is not supported")
    if type(hf_model).__name__ != SUPPORTED[model_type]:
        raise _unsupported(f"pass a {SUPPORTED[model_type]} for {model_type}, got {type(hf_model).__name__}")
    hf_dtype = next(hf_model.parameters()).dtype
    if hf_dtype != torch.float32:  # convert in fp32; export_model casts afterwards
        raise ValueError(f"from_transformers: convert the model to float32 first (it is {hf_dtype}); "
                         f"export with dtype=... to cast")
    return _CONVERTERS[model_type](hf_model).eval()


def load_local(directory) -> nn.Module:
    """The transformers model saved in `directory` (config.json + weights, e.g. a downloaded checkpoint or
    save_pretrained's output) as the class from_transformers expects for its model_type, in float32, eval.
    Local files only: nothing is downloaded."""
    import json
    from pathlib import Path

    import transformers

    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"load_local: {directory} has no config.json (not a transformers model directory)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in SUPPORTED:
        raise _unsupported(f"{directory} holds a {model_type!r} model")
    model_class = getattr(transformers, SUPPORTED[model_type], None)
    if model_class is None:
        raise _unsupported(f"this transformers ({transformers.__version__}) has no {SUPPORTED[model_type]}")
    # eager attention: transformers refuses sdpa where it cannot express the model (Gemma 2's soft-cap)
    model = model_class.from_pretrained(directory, dtype=torch.float32, local_files_only=True,
                                        attn_implementation="eager")
    return model.eval()

