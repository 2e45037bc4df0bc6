"""Shared by the converters: the supported model types, refusals, activation and RoPE mapping, weight copies."""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxattn.nn import MultiHeadLatentAttention, RopeScaling

# model_type -> the HF class to pass
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
    "olmo": "OlmoForCausalLM",
    "olmoe": "OlmoeForCausalLM",
    "ernie4_5": "Ernie4_5ForCausalLM",
    "helium": "HeliumForCausalLM",
    "seed_oss": "SeedOssForCausalLM",
    "exaone4": "Exaone4ForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "glm": "GlmForCausalLM",
    "arcee": "ArceeForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "nemotron": "NemotronForCausalLM",
    "ministral": "MinistralForCausalLM",
    "ministral3": "Ministral3ForCausalLM",
    "olmo3": "Olmo3ForCausalLM",
    "exaone": "LlamaForCausalLM",  # transformers runs EXAONE 3 / 3.5 checkpoints as Llama
    "internlm3": "LlamaForCausalLM",  # as Llama too
    "glm4_moe": "Glm4MoeForCausalLM",
    "minimax_m2": "MiniMaxM2ForCausalLM",
    "dots1": "Dots1ForCausalLM",
    "solar_open": "SolarOpenForCausalLM",
    "exaone_moe": "ExaoneMoeForCausalLM",
    "flex_olmo": "FlexOlmoForCausalLM",
    "apertus": "ApertusForCausalLM",
    "vaultgemma": "VaultGemmaForCausalLM",
    "llama4_text": "Llama4ForCausalLM",
    "granitemoe": "GraniteMoeForCausalLM",
    "granitemoeshared": "GraniteMoeSharedForCausalLM",
    "ernie4_5_moe": "Ernie4_5_MoeForCausalLM",
    "falcon": "FalconForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM",
    "opt": "OPTForCausalLM",
    "phimoe": "PhimoeForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "phi": "PhiForCausalLM",
    "cohere": "CohereForCausalLM",
    "cohere2": "Cohere2ForCausalLM",
    "cohere2_moe": "Cohere2MoeForCausalLM",
    "dbrx": "DbrxForCausalLM",
    "hunyuan_v1_dense": "HunYuanDenseV1ForCausalLM",
    "hunyuan_v1_moe": "HunYuanMoEV1ForCausalLM",
    "afmoe": "AfmoeForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma4_text": "Gemma4ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "modernbert": "ModernBertModel",
    # GPT family and more decoders (models.hf.gpt_family); kept before the MLA entries, which the list ends with
    "gpt_neo": "GPTNeoForCausalLM",
    "biogpt": "BioGptForCausalLM",
    "xglm": "XGLMForCausalLM",
    "codegen": "CodeGenForCausalLM",
    "persimmon": "PersimmonForCausalLM",
    "flint": "FlintForCausalLM",
    "hy_v3": "HYV3ForCausalLM",
    "kolibri1": "Kolibri1ForCausalLM",
    # newer Llama-likes (models.hf.newer) and MLA decoders (models.hf.deepseek); before the entries the list ends with
    "cwm": "CwmForCausalLM",
    "jais2": "Jais2ForCausalLM",
    "hyperclovax": "HyperCLOVAXForCausalLM",
    "granite_swa": "GraniteSWAForCausalLM",
    "granitemoe_swa": "GraniteMoeSWAForCausalLM",
    "mellum": "MellumForCausalLM",
    "apertus1p5_text": "Apertus1p5TextForCausalLM",
    "nanochat": "NanoChatForCausalLM",
    "youtu": "YoutuForCausalLM",
    "glm4_moe_lite": "Glm4MoeLiteForCausalLM",
    "mistral4": "Mistral4ForCausalLM",
    "mimo_v2_flash": "MiMoV2FlashForCausalLM",
    "axk1": "AXK1ForCausalLM",
    "laguna": "LagunaForCausalLM",
    "dory": "DoryForCausalLM",
    "sarvam_mla": "DeepseekV3ForCausalLM",  # transformers runs Sarvam-MLA (SarvamMLAConfig) as DeepSeek-V3
    "minicpm3": "MiniCPM3ForCausalLM",
    "longcat_flash": "LongcatFlashForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
NOT_YET: dict[str, str] = {}  # model_type -> why it is not converted yet (listed in every refusal)
# model_type -> why it is refused for good (named in its own refusal only, as Falcon's alibi=True)
_INKLING_REFUSAL = (
    "Inkling is not supported: each layer runs causal short convolutions over the previous tokens' key and value "
    "projections (k_sconv, v_sconv) and block outputs (attn_sconv, mlp_sconv), so a decode step needs their conv "
    "states beside the KV cache, and our exported graphs carry past keys and values only")
REFUSED = {
    "mpt": "MPT is not supported: its attention adds ALiBi position biases and our attention op has no ALiBi bias",
    "bloom": "BLOOM is not supported: its attention adds ALiBi position biases and our attention op has no ALiBi bias",
    # DeepSeek-V3.2's sparse attention (DSA): dense attention equals it only up to index_topk keys, not at every length
    "axk2": ("A.X-K2 is not supported: every layer's MLA is DeepSeek-V3.2's sparse attention (DSA), attending only to "
             "the index_topk keys a learned indexer picks for each query, and our attention ops take no per-query "
             "key indices"),
    "hy_v4": ("Hy4 (HY-V4) is not supported: its MLA layers are DeepSeek-V3.2's sparse attention (DSA), attending "
              "only to the index_topk keys a learned indexer picks for each query (its shared-indexer layers reuse "
              "the picks), and our attention ops take no per-query key indices"),
    "lara_mini": ("Lara-4-Mini is not supported: its linear_attention layers are Gated DeltaNet (a causal depthwise "
                  "convolution and a gated delta-rule recurrence), which none of our attention ops computes, and a "
                  "decode step needs their conv and recurrent states beside the KV cache, which our exported graphs "
                  "do not carry"),
    # decoding state beyond the KV cache
    "inkling_text": _INKLING_REFUSAL,
    "inkling_mm_model": _INKLING_REFUSAL,
    "zaya": ("ZAYA is not supported: its compressed convolutional attention (CCA) mixes q and k over the previous "
             "tokens with causal convolutions and takes half of each value head from the previous token's "
             "projection, so a decode step needs those tokens' projections (conv and recurrent states) beside the "
             "KV cache, and our exported graphs carry past keys and values only"),
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "relu2": "relu2",
                "xielu": "xielu"}  # xielu: Llama's ungated MLP only (models.llama.XIELU)


def supported_message() -> str:
    listed = ", ".join(f"{t} ({c})" for t, c in SUPPORTED.items())
    later = "; ".join(f"{t}: {why}" for t, why in NOT_YET.items())
    return f"supported: {listed}" + (f". Not yet: {later}" if later else "")


class UnsupportedModel(ValueError):
    pass


def _unsupported(why: str) -> UnsupportedModel:
    return UnsupportedModel(f"from_transformers: {why}. {supported_message()}")


def _activation(name: str) -> str:
    if name not in _ACTIVATIONS:
        raise _unsupported(f"activation {name!r} has no equivalent here (known: {', '.join(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _rope_scaling(params: dict, max_positions: int | None = None) -> RopeScaling | None:
    """Our RopeScaling for transformers' rope_parameters. LongRoPE needs `max_positions` (the config's
    max_position_embeddings, for its default factor); converters that do not pass it refuse LongRoPE."""
    kind = params.get("rope_type", "default")
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling("linear", params["factor"])
    if kind == "llama3":
        return RopeScaling("llama3", params["factor"], params["original_max_position_embeddings"],
                           low_freq_factor=params["low_freq_factor"], high_freq_factor=params["high_freq_factor"])
    if kind == "yarn":
        factor, attention = params["factor"], params.get("attention_factor")
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if attention is None and mscale and mscale_all_dim and factor > 1:  # DeepSeek's ratio, as transformers
            attention = (0.1 * mscale * math.log(factor) + 1.0) / (0.1 * mscale_all_dim * math.log(factor) + 1.0)
        return RopeScaling("yarn", factor, params.get("original_max_position_embeddings") or 4096,
                           beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                           attention_factor=attention, truncate=params.get("truncate") is not False)
    if kind == "longrope":
        if max_positions is None:
            raise _unsupported("LongRoPE (rope_type 'longrope') is supported for the Llama-like architectures "
                               "(Phi-3, Phi-3.5, Phi-4-mini, ...), not for this one")
        original = params["original_max_position_embeddings"]
        # transformers: factor, else max_position_embeddings / original_max_position_embeddings (attention factor)
        factor = params.get("factor")
        try:
            return RopeScaling("longrope", factor if factor is not None else max_positions / original, original,
                               attention_factor=params.get("attention_factor"), short_factor=params["short_factor"],
                               long_factor=params["long_factor"])
        except ValueError as e:  # e.g. factor lists of different lengths
            raise _unsupported(f"these LongRoPE parameters do not map onto ours: {e}") from e
    raise _unsupported(f"RoPE type {kind!r} is not supported (default, linear, llama3, yarn, longrope are)")


def _check_rope(ours: nn.Module, hf_inv_freq: torch.Tensor, hf_scaling: float, what: str,
                hf_long_inv_freq: torch.Tensor | None = None) -> None:
    """Our frequencies must be HF's (catches RoPE variants whose parameters map imperfectly); with LongRoPE
    both sets, short (`hf_inv_freq`) and long."""
    def same(inv_freq, theirs):
        return theirs is not None and inv_freq.shape == theirs.shape and \
            torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5)

    for attn in ours.attention_layers():
        # Hunyuan's layers rotate in torch (rope_then_norm), the node not at all
        rope = attn.rope if attn.rope is not None else getattr(attn, "rope_then_norm", None)
        if rope is None:  # NoPE layers (SmolLM3)
            continue
        # MLA rotates only the rope part of each head
        dim = attn.rope_head_dim if isinstance(attn, MultiHeadLatentAttention) else attn.head_dim
        inv_freq, scaling = rope.frequencies(dim)
        long_ok = same(rope.frequencies(dim, long=True)[0], hf_long_inv_freq) if rope.switches else \
            hf_long_inv_freq is None
        if not same(inv_freq, hf_inv_freq) or not long_ok or abs(scaling - hf_scaling) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of {what} differ from the transformers model's")


def _hf_frequencies(rotary) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(short or only inv_freq, LongRoPE's long inv_freq or None) of a transformers rotary embedding. Its
    inv_freq buffer holds whichever set the last forward used; original_inv_freq keeps the initial (short) one, and
    the long set is computed as its longrope update does (modeling_rope_utils.dynamic_rope_update)."""
    short = getattr(rotary, "original_inv_freq", rotary.inv_freq)
    if getattr(rotary, "rope_type", None) != "longrope":
        return short, None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    original = rotary.config.rope_parameters["original_max_position_embeddings"]
    return short, ROPE_INIT_FUNCTIONS["longrope"](rotary.config, None, seq_len=original + 1)[0]


def _window(hf_cfg) -> int:
    return int(getattr(hf_cfg, "sliding_window", None) or 0)


def _copy(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if param.shape != value.shape:  # copy_ would broadcast
        raise ValueError(f"{what} of shape {list(value.shape)} does not fit ours ({list(param.shape)})")
    param.copy_(value)


def _rotary_dim(c, head_dim: int) -> int | None:
    """Partial rotary (Phi-3 / Phi-4-mini): the channels transformers rotates, None for the whole head."""
    factor = c.rope_parameters.get("partial_rotary_factor", 1.0)
    dim = int(head_dim * factor)  # as transformers truncates
    if dim == head_dim:
        return None
    if dim < 2 or dim % 2:  # transformers would rotate dim + 1 channels with frequencies for dim
        raise _unsupported(f"{c.model_type} with partial_rotary_factor {factor} rotates {dim} of {head_dim} channels; "
                           f"only an even count >= 2 is supported")
    return dim
