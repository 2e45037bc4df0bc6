"""Hugging Face transformers models -> the reference models here, with the same weights: the config is
mapped onto ours, each weight copied to its place, and RoPE frequencies checked against the HF model's
own. Export then goes through our modules (onnxattn.export.from_transformers), so the graph uses our ops.
Llama-likes (Mistral, Mixtral, Qwen2/3, Qwen3-MoE, Phi-3, SmolLM3, Granite, OLMo 2, Starcoder2) map onto our
Llama: Phi-3's fused projections are split, the mixtures of experts become models.moe with softmax routing, and
the others set LlamaConfig options (NoPE layers, Granite's multipliers, OLMo 2's whole-projection QK-norm and
post-norm blocks, Starcoder2's LayerNorm and ungated MLP). The parallel-residual decoders map onto our Llama too,
with LayerNorm, ungated MLPs and parallel blocks: GPT-NeoX / Pythia (two norms per block, or sequential blocks with
use_parallel_residual=False; its fused query_key_value split per head, partial rotary), GPT-J (one norm per block,
interleaved RoPE on rotary_dim channels, biased lm_head) and Phi (phi-1 / 1.5 / 2: one norm per block, partial
rotary, biased projections and lm_head; qk_layernorm refused). RoBERTa / XLM-RoBERTa map onto
our BERT (positions from the pad token id); ModernBERT onto models.modernbert. DeepSeek-V3 and DeepSeek-V2 / V2-Lite
map onto models.deepseek (MLA with its latent cache, YaRN with mscale); V2's router scores by softmax, picks greedily
or group-limited (a group scored by its best expert) and scales without renormalising.

LongRoPE (rope_type "longrope": Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini) maps onto RopeScaling("longrope") for
the Llama-likes, both factor sets checked against transformers'. As transformers' rotary embedding
(modeling_rope_utils.dynamic_rope_update), each forward uses the long factors when its largest position + 1
exceeds original_max_position_embeddings (Phi3Config's own field wins over rope_parameters'), else the short
ones; our layers pick the set with a torch.where that exports as Greater + Where. Phi-3's generate() differs:
its prepare_inputs_for_generation drops the cache when the sequence first reaches original_max_position_embeddings
+ 1 tokens and re-encodes it all with the long factors, which a KV-cached graph does not do, so our generation
equals transformers' forward-by-forward decoding, not its generate(), across that boundary. Refused: LongRoPE on
Gemma 2/3 and DeepSeek-V2/V3, and factor lists that are not one per rotated frequency (transformers broadcasts a
single factor).

Nothing is downloaded: pass a model you built (e.g. ``LlamaForCausalLM(LlamaConfig(...))``) or loaded."""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxattn.models import build
from onnxattn.models._base import set_linear
from onnxattn.models.bert import BertConfig, BertModel
from onnxattn.models.deepseek import DeepSeekMoE, DeepSeekV3Config, DeepSeekV3Model
from onnxattn.models.gemma3 import Gemma3Config, Gemma3Model
from onnxattn.models.gpt2 import GPT2Config, GPT2Model
from onnxattn.models.llama import LAYER_TYPES, LlamaConfig, LlamaModel
from onnxattn.models.modernbert import ModernBertConfig, ModernBertModel
from onnxattn.models.moe import MixtureOfExperts
from onnxattn.nn import MultiHeadLatentAttention, RopeScaling

# model_type -> the HF class to pass
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
    "granite": "GraniteForCausalLM",
    "olmo2": "Olmo2ForCausalLM",
    "starcoder2": "Starcoder2ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gptj": "GPTJForCausalLM",
    "phi": "PhiForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "modernbert": "ModernBertModel",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}
NOT_YET: dict[str, str] = {}  # model_type -> why it is not converted yet (listed in every refusal)
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


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
        if params.get("truncate") is False:
            raise _unsupported("YaRN with truncate=False is not supported (the correction range is truncated here)")
        factor, attention = params["factor"], params.get("attention_factor")
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if attention is None and mscale and mscale_all_dim and factor > 1:  # DeepSeek's ratio, as transformers
            attention = (0.1 * mscale * math.log(factor) + 1.0) / (0.1 * mscale_all_dim * math.log(factor) + 1.0)
        return RopeScaling("yarn", factor, params.get("original_max_position_embeddings") or 4096,
                           beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                           attention_factor=attention)
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
        if attn.rope is None:  # NoPE layers (SmolLM3)
            continue
        # MLA rotates only the rope part of each head
        dim = attn.rope_head_dim if isinstance(attn, MultiHeadLatentAttention) else attn.head_dim
        inv_freq, scaling = attn.rope.frequencies(dim)
        long_ok = same(attn.rope.frequencies(dim, long=True)[0], hf_long_inv_freq) if attn.rope.switches else \
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


def _experts(hf) -> dict:
    """LlamaConfig's MoE fields for Mixtral / Qwen3-MoE; the modules say which layers have experts (Qwen3-MoE's
    mlp_only_layers and decoder_sparse_step leave the others a dense MLP)."""
    c = hf.config
    moe = [hasattr(layer.mlp, "experts") for layer in hf.model.layers]
    if not any(moe):
        return {}
    # both route by a softmax over all experts, then top-k; Mixtral always renormalises the chosen weights
    return dict(num_experts=c.num_local_experts if c.model_type == "mixtral" else c.num_experts,
                experts_per_token=c.num_experts_per_tok, moe_intermediate=getattr(c, "moe_intermediate_size", None),
                router_scoring="softmax", norm_topk=bool(getattr(c, "norm_topk_prob", True)),
                dense_layers=tuple(i for i, sparse in enumerate(moe) if not sparse))


def _smollm3(c) -> dict:
    types = tuple(c.layer_types)
    if "sliding_attention" in types and not c.use_sliding_window:
        raise _unsupported("SmolLM3 with sliding_attention layers but use_sliding_window=False is not supported: "
                           "transformers' eager and sdpa masks apply the window there, its flash attention does not")
    return dict(nope_layers=tuple(i for i, rope in enumerate(c.no_rope_layers[:c.num_hidden_layers]) if not rope))


def _granite(c) -> dict:
    return dict(attention_scale=float(c.attention_multiplier), embedding_multiplier=float(c.embedding_multiplier),
                residual_multiplier=float(c.residual_multiplier), logits_scaling=float(c.logits_scaling))


def _starcoder2(c) -> dict:
    bias = bool(c.use_bias)  # every projection, both MLP layers
    return dict(norm="layer", gated_mlp=False, rms_norm_eps=c.norm_epsilon, qkv_bias=bias, o_bias=bias,
                mlp_bias=bias)


# LlamaConfig fields that differ from the Llama mapping, per model_type
_LLAMA_VARIANTS = {"smollm3": _smollm3, "granite": _granite, "starcoder2": _starcoder2,
                   "olmo2": lambda c: dict(qk_proj_norm=True, post_norm=True)}


def _build_llama(c, fields: dict) -> LlamaModel:
    try:
        return build(LlamaConfig(**fields))
    except ValueError as e:  # e.g. more experts per token than experts, or LongRoPE factors for another rotary dim
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e


def _llama(hf) -> LlamaModel:
    c = hf.config
    layer_types = getattr(c, "layer_types", None)
    window = _window(c)
    if layer_types is not None:
        layer_types = tuple(layer_types)
        if "sliding_attention" not in layer_types:
            window = 0
    qwen2 = c.model_type == "qwen2"
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    fields = dict(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads or c.num_attention_heads,
        head_dim=head_dim, intermediate=c.intermediate_size, rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters, c.max_position_embeddings), rotary_dim=_rotary_dim(c, head_dim),
        rms_norm_eps=getattr(c, "rms_norm_eps", None), qkv_bias=qwen2 or bool(getattr(c, "attention_bias", False)),
        o_bias=bool(getattr(c, "attention_bias", False)), mlp_bias=bool(getattr(c, "mlp_bias", False)),
        qk_norm=c.model_type in ("qwen3", "qwen3_moe"), sliding_window=window,
        layer_types=layer_types if window else None, activation=_activation(c.hidden_act),
        tie_embeddings=bool(c.tie_word_embeddings), **_experts(hf))
    variant = _LLAMA_VARIANTS.get(c.model_type)
    if variant is not None:
        fields |= variant(c)
    ours = _build_llama(c, fields)
    cfg, src = ours.config, hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not cfg.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        ours.norm.load_state_dict(src.norm.state_dict())
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            if hasattr(t, "qkv_proj"):  # Phi-3: one projection, rows [q | k | v], no biases
                for name, w in zip(("q_proj", "k_proj", "v_proj"),
                                   t.qkv_proj.weight.split([a.q_width, a.kv_width, a.kv_width])):
                    set_linear(getattr(a, name), w)
                set_linear(a.o_proj, t.o_proj.weight)
            else:
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    set_linear(getattr(a, name), getattr(t, name).weight, getattr(t, name).bias)
            if cfg.qk_norm:
                a.q_norm.copy_(t.q_norm.weight)
                a.k_norm.copy_(t.k_norm.weight)
            if cfg.qk_proj_norm:  # OLMo 2: over all heads
                a.q_proj_norm.load_state_dict(t.q_norm.state_dict())
                a.k_proj_norm.load_state_dict(t.k_norm.state_dict())
            m, h = mine.mlp, theirs.mlp
            if isinstance(m, MixtureOfExperts):
                _copy(m.router, h.gate.weight, "the router weight")
                _copy(m.gate_up_proj, h.experts.gate_up_proj, "the experts' gate_up_proj")
                _copy(m.down_proj, h.experts.down_proj, "the experts' down_proj")
            elif hasattr(h, "gate_up_proj"):  # Phi-3: rows [gate | up], no biases
                gate, up = h.gate_up_proj.weight.chunk(2)
                set_linear(m.gate_proj, gate)
                set_linear(m.up_proj, up)
                set_linear(m.down_proj, h.down_proj.weight)
            else:
                for name in ("gate_proj", "up_proj", "down_proj") if cfg.gated_mlp else ("c_fc", "c_proj"):
                    set_linear(getattr(m, name), getattr(h, name).weight, getattr(h, name).bias)
            # ours carry transformers' names (OLMo 2: post_attention_layernorm norms the attention output)
            norms = {"post_attn_norm": "post_attention_layernorm"}
            norms |= {"post_mlp_norm": "post_feedforward_layernorm"} if cfg.post_norm else \
                {"input_norm": "input_layernorm"}
            for ours_norm, hf_norm in norms.items():  # strict: LayerNorm biases too
                getattr(mine, ours_norm).load_state_dict(getattr(theirs, hf_norm).state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, c.model_type, long)
    return ours


def _parallel_fields(c, *, hidden: int, heads: int, layers: int, intermediate: int, eps: float, activation: str,
                     **fields) -> dict:
    """LlamaConfig fields shared by GPT-NeoX, GPT-J and Phi: LayerNorm, biased ungated MLP, parallel blocks."""
    return dict(vocab_size=c.vocab_size, hidden=hidden, num_layers=layers, num_heads=heads,
                num_kv_heads=heads, intermediate=intermediate, rms_norm_eps=eps,
                norm="layer", gated_mlp=False, mlp_bias=True, parallel_residual=True,
                activation=_activation(activation), tie_embeddings=bool(c.tie_word_embeddings)) | fields


def _copy_head(ours: LlamaModel, embed: nn.Embedding, head: nn.Linear, final_norm: nn.LayerNorm) -> None:
    cfg = ours.config
    ours.embed_tokens.weight.copy_(embed.weight)
    if not cfg.tie_embeddings:
        ours.lm_head.weight.copy_(head.weight)
    if cfg.lm_head_bias:
        ours.lm_head.bias.copy_(head.bias)
    ours.norm.load_state_dict(final_norm.state_dict())


def _gpt_neox(hf) -> LlamaModel:
    c = hf.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads  # transformers' head_size (no head_dim option)
    bias = bool(c.attention_bias)  # query_key_value and dense; the MLP always has biases
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=heads, layers=c.num_hidden_layers, intermediate=c.intermediate_size,
        eps=c.layer_norm_eps, activation=c.hidden_act, rope_theta=c.rope_parameters["rope_theta"],
        rope_scaling=_rope_scaling(c.rope_parameters), rotary_dim=_rotary_dim(c, head_dim), qkv_bias=bias,
        o_bias=bias, parallel_residual=bool(c.use_parallel_residual)))
    src = hf.gpt_neox
    with torch.no_grad():
        _copy_head(ours, src.embed_in, hf.lm_head, src.final_layer_norm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.attention
            # transformers views the output as [..., heads, 3 * head_dim]: rows per head [q_h | k_h | v_h]
            w = t.query_key_value.weight.unflatten(0, (heads, 3, head_dim))
            b = t.query_key_value.bias.unflatten(0, (heads, 3, head_dim)) if bias else None
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                set_linear(getattr(a, name), w[:, i].flatten(0, 1), None if b is None else b[:, i].flatten())
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            set_linear(mine.mlp.c_fc, theirs.mlp.dense_h_to_4h.weight, theirs.mlp.dense_h_to_4h.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.dense_4h_to_h.weight, theirs.mlp.dense_4h_to_h.bias)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "GPT-NeoX", long)
    return ours


def _gptj(hf) -> LlamaModel:
    c = hf.config
    head_dim = c.n_embd // c.n_head
    # transformers' sin / cos table is rotary_dim wide, or n_embd wide without one: that fits a head only with one
    rotary = c.rotary_dim or c.n_embd
    if rotary > head_dim:
        raise _unsupported(f"GPT-J with rotary_dim {c.rotary_dim} rotates {rotary} channels of a {head_dim}-wide "
                           f"head (transformers' GPTJAttention cannot run it either)")
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.n_embd, heads=c.n_head, layers=c.n_layer, intermediate=c.n_inner or 4 * c.n_embd,
        eps=c.layer_norm_epsilon, activation=c.activation_function, rope_theta=10000.0,  # fixed in transformers
        rotary_dim=None if rotary == head_dim else rotary, rope_interleaved=True, shared_block_norm=True,
        lm_head_bias=True))
    src = hf.transformer
    with torch.no_grad():
        _copy_head(ours, src.wte, hf.lm_head, src.ln_f)
        for mine, theirs in zip(ours.layers, src.h):
            a, t = mine.attn, theirs.attn
            for name in ("q_proj", "k_proj", "v_proj"):
                set_linear(getattr(a, name), getattr(t, name).weight)
            set_linear(a.o_proj, t.out_proj.weight)
            set_linear(mine.mlp.c_fc, theirs.mlp.fc_in.weight, theirs.mlp.fc_in.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.fc_out.weight, theirs.mlp.fc_out.bias)
            mine.input_norm.load_state_dict(theirs.ln_1.state_dict())
    # its table's row for position 1 holds [sin(inv_freq) | cos(inv_freq)]; every angle there is <= 1 rad
    sin, cos = src.rotary_emb.embed_positions[1].chunk(2)
    _check_rope(ours, torch.atan2(sin, cos), 1.0, "GPT-J")
    return ours


def _phi(hf) -> LlamaModel:
    c = hf.config
    if c.qk_layernorm:  # a per-head LayerNorm with bias; the op's QK-norm is an RMSNorm
        raise _unsupported("Phi with qk_layernorm is not supported")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    ours = _build_llama(c, _parallel_fields(
        c, hidden=c.hidden_size, heads=c.num_attention_heads, layers=c.num_hidden_layers,
        intermediate=c.intermediate_size, eps=c.layer_norm_eps, activation=c.hidden_act,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads, head_dim=head_dim,
        rope_theta=c.rope_parameters["rope_theta"], rope_scaling=_rope_scaling(c.rope_parameters),
        rotary_dim=_rotary_dim(c, head_dim), qkv_bias=True, o_bias=True, shared_block_norm=True, lm_head_bias=True))
    src = hf.model
    with torch.no_grad():
        _copy_head(ours, src.embed_tokens, hf.lm_head, src.final_layernorm)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                set_linear(getattr(a, name), getattr(t, name).weight, getattr(t, name).bias)
            set_linear(a.o_proj, t.dense.weight, t.dense.bias)
            set_linear(mine.mlp.c_fc, theirs.mlp.fc1.weight, theirs.mlp.fc1.bias)
            set_linear(mine.mlp.c_proj, theirs.mlp.fc2.weight, theirs.mlp.fc2.bias)
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "Phi", long)
    return ours


def _gemma(hf, what: str, **fields) -> Gemma3Model:
    """Our Gemma model with the weights of a Gemma 2 / Gemma 3 causal LM; `fields` are the config fields
    that differ between the two (RoPE, QK-norm, soft-caps)."""
    c, src = hf.config, hf.model
    if getattr(c, "use_bidirectional_attention", False):
        raise _unsupported(f"{what} with use_bidirectional_attention (an encoder variant) is not supported")
    if getattr(c, "attention_bias", False):
        raise _unsupported(f"{what} with attention_bias is not supported (our Gemma has no projection biases)")
    if not torch.equal(hf.lm_head.weight, src.embed_tokens.weight):  # ours always ties them
        raise _unsupported(f"{what} with an output embedding other than the input one is not supported")
    activation = _activation(c.hidden_activation)
    try:
        cfg = Gemma3Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim,
            intermediate=c.intermediate_size, sliding_window=_window(c), layer_types=tuple(c.layer_types),
            query_pre_attn_scalar=c.query_pre_attn_scalar, final_logit_softcap=c.final_logit_softcapping or 0.0,
            rms_norm_eps=c.rms_norm_eps, activation=activation, **fields)
    except ValueError as e:  # e.g. no sliding_window
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    ours = build(cfg)
    one = lambda w: 1.0 + w.float()  # noqa: E731  (Gemma's norms scale by 1 + weight; our QK-norm takes the factor)
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        ours.norm.weight.copy_(src.norm.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                set_linear(getattr(a, name), getattr(t, name).weight)
            if cfg.qk_norm:
                a.q_norm.copy_(one(t.q_norm.weight))
                a.k_norm.copy_(one(t.k_norm.weight))
            for name in ("gate_proj", "up_proj", "down_proj"):
                set_linear(getattr(mine.mlp, name), getattr(theirs.mlp, name).weight)
            for ours_norm, hf_norm in (("input_norm", "input_layernorm"), ("post_attn_norm", "post_attention_layernorm"),
                                       ("pre_mlp_norm", "pre_feedforward_layernorm"),
                                       ("post_mlp_norm", "post_feedforward_layernorm")):
                getattr(mine, ours_norm).weight.copy_(getattr(theirs, hf_norm).weight)
    return ours


def _gemma3(hf) -> Gemma3Model:
    c = hf.config
    full, local = c.rope_parameters["full_attention"], c.rope_parameters["sliding_attention"]
    if local.get("rope_type", "default") != "default":
        raise _unsupported("scaled RoPE on Gemma 3's local layers is not supported")
    # transformers' Gemma 3 keeps attn_logit_softcapping in its config but never applies it
    ours = _gemma(hf, "Gemma 3", rope_local_theta=local["rope_theta"], rope_global_theta=full["rope_theta"],
                  rope_global_scaling=_rope_scaling(full), attn_logit_softcap=0.0)
    rotary = hf.model.rotary_emb
    for layer, kind in zip(ours.layers, c.layer_types):
        inv_freq, scaling = layer.attn.rope.frequencies(layer.attn.head_dim)
        theirs = getattr(rotary, f"{kind}_inv_freq")
        if not torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5) or \
                abs(scaling - getattr(rotary, f"{kind}_attention_scaling")) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of Gemma 3's {kind} layers differ from the transformers model's")
    return ours


def _gemma2(hf) -> Gemma3Model:
    c = hf.config
    params = c.rope_parameters
    if params.get("rope_type", "default") != "default":  # ours would scale the global layers only
        raise _unsupported(f"Gemma 2 with scaled RoPE ({params['rope_type']}) is not supported")
    # transformers' eager attention applies the cap (so do flash / flex; it refuses sdpa for Gemma 2)
    ours = _gemma(hf, "Gemma 2", rope_local_theta=params["rope_theta"], rope_global_theta=params["rope_theta"],
                  qk_norm=False, attn_logit_softcap=c.attn_logit_softcapping or 0.0)
    _check_rope(ours, hf.model.rotary_emb.inv_freq, hf.model.rotary_emb.attention_scaling, "Gemma 2")
    return ours


def _gpt2(hf) -> GPT2Model:
    c = hf.config
    cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_positions, hidden=c.n_embd, num_layers=c.n_layer,
                     num_heads=c.n_head, intermediate=c.n_inner, layer_norm_eps=c.layer_norm_epsilon,
                     activation=_activation(c.activation_function), scale_attn_weights=c.scale_attn_weights,
                     scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx)
    ours = build(cfg)
    src = hf.transformer
    with torch.no_grad():
        ours.wte.weight.copy_(src.wte.weight)
        ours.wpe.weight.copy_(src.wpe.weight)
        ours.ln_f.load_state_dict(src.ln_f.state_dict())
        for mine, theirs in zip(ours.layers, src.h):
            # HF's Conv1D stores weights [in, out]
            set_linear(mine.attn.qkv_proj, theirs.attn.c_attn.weight.T, theirs.attn.c_attn.bias)
            set_linear(mine.attn.o_proj, theirs.attn.c_proj.weight.T, theirs.attn.c_proj.bias)
            set_linear(mine.c_fc, theirs.mlp.c_fc.weight.T, theirs.mlp.c_fc.bias)
            set_linear(mine.c_proj, theirs.mlp.c_proj.weight.T, theirs.mlp.c_proj.bias)
            mine.ln_1.load_state_dict(theirs.ln_1.state_dict())
            mine.ln_2.load_state_dict(theirs.ln_2.state_dict())
    return ours


def _bert(hf) -> BertModel:
    """BERT, and RoBERTa / XLM-RoBERTa (the same blocks; positions counted from the pad token id)."""
    c = hf.config
    what = {"bert": "BERT", "roberta": "RoBERTa", "xlm-roberta": "XLM-RoBERTa"}[c.model_type]
    if getattr(c, "position_embedding_type", "absolute") != "absolute" or getattr(c, "is_decoder", False):
        raise _unsupported(f"{what} with relative position embeddings or as a decoder is not supported")
    padding_idx = None
    if c.model_type != "bert":
        padding_idx = c.pad_token_id
        if padding_idx is None:  # transformers derives the positions from it
            raise _unsupported(f"{what} without pad_token_id is not supported (its positions start after it)")
    activation = _activation(c.hidden_act)
    try:
        cfg = BertConfig(vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
                         num_heads=c.num_attention_heads, intermediate=c.intermediate_size,
                         max_positions=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                         layer_norm_eps=c.layer_norm_eps, activation=activation,
                         pooler=hf.pooler is not None, position_padding_idx=padding_idx)
    except ValueError as e:  # e.g. a pad token id beyond the position table
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    ours = build(cfg)
    e = hf.embeddings
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(ours, name).weight.copy_(getattr(e, name).weight)
        ours.embed_norm.load_state_dict(e.LayerNorm.state_dict())
        for mine, theirs in zip(ours.layers, hf.encoder.layer):
            s = theirs.attention.self
            set_linear(mine.attn.q_proj, s.query.weight, s.query.bias)
            set_linear(mine.attn.k_proj, s.key.weight, s.key.bias)
            set_linear(mine.attn.v_proj, s.value.weight, s.value.bias)
            set_linear(mine.attn.o_proj, theirs.attention.output.dense.weight, theirs.attention.output.dense.bias)
            mine.attn_norm.load_state_dict(theirs.attention.output.LayerNorm.state_dict())
            set_linear(mine.intermediate, theirs.intermediate.dense.weight, theirs.intermediate.dense.bias)
            set_linear(mine.output, theirs.output.dense.weight, theirs.output.dense.bias)
            mine.out_norm.load_state_dict(theirs.output.LayerNorm.state_dict())
        if hf.pooler is not None:
            set_linear(ours.pooler, hf.pooler.dense.weight, hf.pooler.dense.bias)
    return ours


def _modernbert(hf) -> ModernBertModel:
    c = hf.config
    layer_types = tuple(c.layer_types)
    if not set(layer_types) <= set(LAYER_TYPES):
        raise _unsupported(f"ModernBERT layer types other than {', '.join(LAYER_TYPES)} are not supported, got "
                           f"{sorted(set(layer_types) - set(LAYER_TYPES))}")
    thetas = {}
    for kind in set(layer_types):
        params = c.rope_parameters[kind]
        if params.get("rope_type", "default") != "default":
            raise _unsupported(f"ModernBERT with scaled RoPE ({params['rope_type']}) on its {kind} layers is not "
                               f"supported")
        thetas[kind] = params["rope_theta"]
    # only local layers read local_attention (transformers' sliding_window is local_attention // 2)
    local = c.local_attention if "sliding_attention" in layer_types else ModernBertConfig.local_attention
    activation = _activation(c.hidden_activation)
    try:
        cfg = ModernBertConfig(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
            num_heads=c.num_attention_heads, intermediate=c.intermediate_size, local_attention=local,
            layer_types=layer_types, rope_global_theta=thetas.get("full_attention", 160_000.0),
            rope_local_theta=thetas.get("sliding_attention", 10_000.0), norm_eps=c.norm_eps,
            norm_bias=bool(c.norm_bias), attention_bias=bool(c.attention_bias), mlp_bias=bool(c.mlp_bias),
            activation=activation)
    except ValueError as e:  # e.g. local_attention < 2 (a band of width 0)
        raise _unsupported(f"this ModernBertConfig does not map onto ours: {e}") from e
    ours = build(cfg)
    with torch.no_grad():
        ours.tok_embeddings.weight.copy_(hf.embeddings.tok_embeddings.weight)
        ours.embed_norm.load_state_dict(hf.embeddings.norm.state_dict())
        ours.final_norm.load_state_dict(hf.final_norm.state_dict())
        for mine, theirs in zip(ours.layers, hf.layers):
            mine.attn_norm.load_state_dict(theirs.attn_norm.state_dict())  # layer 0: both Identity
            # Wqkv rows are [q | k | v], each hidden wide, as our merged projection's
            set_linear(mine.attn.qkv_proj, theirs.attn.Wqkv.weight, theirs.attn.Wqkv.bias)
            set_linear(mine.attn.o_proj, theirs.attn.Wo.weight, theirs.attn.Wo.bias)
            mine.mlp_norm.load_state_dict(theirs.mlp_norm.state_dict())
            set_linear(mine.mlp.Wi, theirs.mlp.Wi.weight, theirs.mlp.Wi.bias)
            set_linear(mine.mlp.Wo, theirs.mlp.Wo.weight, theirs.mlp.Wo.bias)
    rotary = hf.rotary_emb
    for layer, kind in zip(ours.layers, layer_types):
        inv_freq, scaling = layer.attn.rope.frequencies(layer.attn.head_dim)
        theirs = getattr(rotary, f"{kind}_inv_freq")
        if inv_freq.shape != theirs.shape or not torch.allclose(inv_freq, theirs.float().cpu(), rtol=1e-5) or \
                abs(scaling - getattr(rotary, f"{kind}_attention_scaling")) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of ModernBERT's {kind} layers differ from the transformers "
                               f"model's")
    return ours


def _deepseek_router(c) -> dict:
    """DeepSeekV3Config's router fields: V3's sigmoid router (the defaults), or V2's softmax one."""
    if c.model_type == "deepseek_v3":
        return dict(num_groups=c.n_group or 1, groups_per_token=c.topk_group or 1, norm_topk=bool(c.norm_topk_prob))
    freq = getattr(c, "moe_layer_freq", 1)  # not a transformers field: its model has experts in every layer
    if freq != 1:
        raise _unsupported(f"DeepSeek-V2 with moe_layer_freq = {freq} is not supported: transformers puts experts in "
                           f"every layer from first_k_dense_replace on, DeepSeek's code in every {freq}th")
    if c.norm_topk_prob and c.num_experts_per_tok > 1:
        raise _unsupported("DeepSeek-V2 with norm_topk_prob=True is not supported: transformers ignores it (its "
                           "router never renormalises), DeepSeek's code renormalises instead of scaling")
    router = dict(router_scoring="softmax", group_score="max", norm_topk=False)
    if c.topk_method == "greedy":
        return router | dict(num_groups=1, groups_per_token=1)
    if c.topk_method == "group_limited_greedy" and c.n_group and c.topk_group:
        return router | dict(num_groups=c.n_group, groups_per_token=c.topk_group)
    raise _unsupported(f"DeepSeek-V2 with topk_method {c.topk_method!r} (n_group {c.n_group}, topk_group "
                       f"{c.topk_group}) is not supported: greedy, or group_limited_greedy with both set")


def _deepseek(hf) -> DeepSeekV3Model:
    """DeepSeek-V3, and DeepSeek-V2 / V2-Lite: the same MLA decoder with V2's router (softmax scores, groups
    scored by their best expert, no choice bias); V2's RoPE always pairs channels (interleaved)."""
    c = hf.config
    what = {"deepseek_v2": "DeepSeek-V2", "deepseek_v3": "DeepSeek-V3"}[c.model_type]
    params = c.rope_parameters
    scaling = _rope_scaling(params)
    num_layers, dense = c.num_hidden_layers, c.first_k_dense_replace
    moe = dense < num_layers  # transformers gives layers >= first_k_dense_replace the MoE
    if moe and (not c.n_routed_experts or not c.num_experts_per_tok):
        raise _unsupported(f"{what} with MoE layers (first_k_dense_replace = {dense} < num_hidden_layers = "
                           f"{num_layers}) needs n_routed_experts and num_experts_per_tok >= 1, got "
                           f"{c.n_routed_experts} and {c.num_experts_per_tok}")
    if getattr(c, "mlp_bias", False):  # a DeepseekV2Config field; DeepSeek's MLPs have none
        raise _unsupported(f"{what} with mlp_bias=True is not supported")
    src = hf.model
    # num_key_value_heads has no role: MLA expands the one latent to every head (the cache is per token)
    experts = dict(num_experts=c.n_routed_experts, experts_per_token=c.num_experts_per_tok,
                   moe_intermediate=c.moe_intermediate_size, num_shared_experts=c.n_shared_experts,
                   first_dense_layers=dense, routed_scaling=c.routed_scaling_factor, **_deepseek_router(c)) if moe \
        else dict(num_experts=0)
    try:
        cfg = DeepSeekV3Config(
            vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=num_layers, num_heads=c.num_attention_heads,
            q_rank=c.q_lora_rank, kv_rank=c.kv_lora_rank, nope_head_dim=c.qk_nope_head_dim,
            rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim, intermediate=c.intermediate_size, **experts,
            rope_theta=params["rope_theta"], rope_scaling=scaling,
            mscale_all_dim=float(params.get("mscale_all_dim") or 0.0) if scaling else 0.0,
            # V2 rotates channel pairs (complex numbers); V3 does when rope_interleave, else half-split
            rope_interleaved=c.model_type == "deepseek_v2" or bool(c.rope_interleave),
            attention_bias=bool(c.attention_bias),
            rms_norm_eps=c.rms_norm_eps,
            # transformers builds the latent norms with RMSNorm's default eps, not rms_norm_eps
            latent_norm_eps=src.layers[0].self_attn.kv_a_layernorm.variance_epsilon,
            activation=_activation(c.hidden_act), tie_embeddings=bool(c.tie_word_embeddings))
    except ValueError as e:  # e.g. an expert count the group-limited routing cannot split
        raise _unsupported(f"this {type(c).__name__} does not map onto ours: {e}") from e
    hf_scale = src.layers[0].self_attn.scaling
    ours_scale = cfg.softmax_scale or 1.0 / math.sqrt(cfg.nope_head_dim + cfg.rope_head_dim)
    if abs(ours_scale - hf_scale) > 1e-6 * hf_scale:  # transformers applies mscale_all_dim to any scaled RoPE
        raise _unsupported(f"{what}'s softmax scale {hf_scale} (rope_parameters {params}) is only reproduced "
                           f"for YaRN (ours: {ours_scale})")
    ours = build(cfg)
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        if not cfg.tie_embeddings:
            ours.lm_head.weight.copy_(hf.lm_head.weight)
        ours.norm.weight.copy_(src.norm.weight)
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attn
            if cfg.q_rank:
                set_linear(a.q_a_proj, t.q_a_proj.weight, t.q_a_proj.bias)
                a.q_a_norm.copy_(t.q_a_layernorm.weight)
                set_linear(a.q_b_proj, t.q_b_proj.weight)
            else:
                set_linear(a.q_proj, t.q_proj.weight)
            # [latent R | rope key Dr] in both; RoPE pairs are interleaved in both when rope_interleave
            set_linear(a.kv_a_proj, t.kv_a_proj_with_mqa.weight, t.kv_a_proj_with_mqa.bias)
            a.kv_a_norm.copy_(t.kv_a_layernorm.weight)
            a.load_kv_b_proj(t.kv_b_proj.weight)
            set_linear(a.o_proj, t.o_proj.weight, t.o_proj.bias)
            mine.input_norm.weight.copy_(theirs.input_layernorm.weight)
            mine.post_attn_norm.weight.copy_(theirs.post_attention_layernorm.weight)
            m, h = mine.mlp, theirs.mlp
            if isinstance(m, DeepSeekMoE):
                m.router.copy_(h.gate.weight)
                if m.e_score_correction_bias is not None:  # V3's; V2's router has none
                    m.e_score_correction_bias.copy_(h.gate.e_score_correction_bias)
                m.gate_up_proj.copy_(h.experts.gate_up_proj)
                m.down_proj.copy_(h.experts.down_proj)
                m, h = m.shared_experts, h.shared_experts  # None when n_shared_experts = 0 (HF's is zero-width)
            if m is not None:
                for name in ("gate_proj", "up_proj", "down_proj"):
                    set_linear(getattr(m, name), getattr(h, name).weight)
    _check_rope(ours, src.rotary_emb.inv_freq, src.rotary_emb.attention_scaling, c.model_type)
    return ours


_CONVERTERS = {"llama": _llama, "mistral": _llama, "mixtral": _llama, "qwen2": _llama, "qwen3": _llama,
               "qwen3_moe": _llama, "phi3": _llama, "smollm3": _llama, "granite": _llama, "olmo2": _llama,
               "starcoder2": _llama, "gpt_neox": _gpt_neox, "gptj": _gptj, "phi": _phi, "gemma2": _gemma2,
               "gemma3_text": _gemma3, "gpt2": _gpt2,
               "bert": _bert, "roberta": _bert, "xlm-roberta": _bert, "modernbert": _modernbert,
               "deepseek_v2": _deepseek, "deepseek_v3": _deepseek}


def from_transformers(hf_model) -> nn.Module:
    """Our reference model (fp32, eval) with the weights of `hf_model`, a transformers model of a supported
    architecture; anything else raises UnsupportedModel naming what is supported."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in NOT_YET:
        raise _unsupported(f"{type(hf_model).__name__} ({model_type}): {NOT_YET[model_type]}")
    if model_type == "gemma3":
        raise _unsupported("Gemma3ForConditionalGeneration is multimodal; pass its text model as "
                           "Gemma3ForCausalLM(config.text_config) with the language model's weights")
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

