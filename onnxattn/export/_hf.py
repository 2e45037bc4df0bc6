"""``from_transformers``: a Hugging Face transformers model -> one validated .onnx with onnxattn ops, by
way of the reference models (onnxattn.models.hf maps config and weights), so the graph is the same as
``export_model``'s: past/present KV per layer for decoders, input_ids and attention_mask (and token_type_ids,
but for ModernBERT) for encoders, dynamic batch / sequence / past, functions attached."""

from __future__ import annotations

import os

from onnxattn.export._models import ExportResult, export_model


def from_transformers(hf_model, path: str | os.PathLike, **export_options) -> ExportResult:
    """Exports `hf_model` (LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM,
    Qwen2/Qwen3/Qwen3MoeForCausalLM, Phi3ForCausalLM, SmolLM3ForCausalLM, GraniteForCausalLM, Olmo2ForCausalLM,
    Starcoder2ForCausalLM, GPTNeoXForCausalLM, GPTJForCausalLM, PhiForCausalLM, Gemma2/Gemma3ForCausalLM,
    GPT2LMHeadModel, BertModel, RobertaModel, XLMRobertaModel, ModernBertModel or DeepseekV3ForCausalLM, float32)
    to `path`; `export_options` as for export_model (dtype, cache, logits, validate, ...). Gemma 2 keeps its
    attention logit soft-cap (the GroupQueryAttention nodes' softcap) and its final one. Phi-3's partial rotary is
    the nodes' rotary_dim. LongRoPE (Phi-3-mini-128k, Phi-3.5-mini, Phi-4-mini; the Llama-likes but GPT-NeoX and
    Phi) is a Greater + Where in front of each node's rope_inv_freq: a forward whose largest position + 1 exceeds
    original_max_position_embeddings rotates with the long factors, else with the short ones, as transformers'
    rotary embedding decides per forward (cached keys keep the set they were rotated with). So KV-cached generation
    equals transformers' model run forward by forward with its cache; it differs from transformers' generate() once
    the sequence crosses that length, because Phi-3's generate drops the cache there and re-encodes everything with
    the long factors. SmolLM3's NoPE layers are nodes with rope=0; Granite's attention_multiplier is the nodes'
    scale, its other multipliers standard ops around them. OLMo 2's QK-norm spans all heads, so it runs in standard
    ops before the node (whose QK-norm is per head). Mixtral's and Qwen3-MoE's experts all run on every token, mixed
    by the router's top-k weights (standard ONNX ops). GPT-NeoX, GPT-J and Phi keep their parallel blocks (standard
    ops around the nodes); GPT-J's RoPE is the nodes' rope_interleaved, their partial rotary the nodes' rotary_dim.
    DeepSeek-V3's caches are its latents: past_key_values.{i}.key [B, 1, P, kv_lora_rank], .value
    [B, 1, P, qk_rope_head_dim].

    Encoders output last_hidden_state (and pooler_output when the model has a pooler). RoBERTa / XLM-RoBERTa
    derive positions from the ids as transformers does (from pad_token_id + 1, pad tokens skipped), so feed the
    pad token where attention_mask is 0. ModernBERT takes no token_type_ids; its global layers are
    GroupQueryAttention nodes (causal=0, RoPE), its local layers ScaledDotProductAttention nodes with
    band = local_attention // 2 (|i - j| <= band, transformers' sdpa / eager mask) after RoPE in standard ops.
    Other architectures and settings raise a ValueError (UnsupportedModel) that lists the supported ones."""
    from onnxattn.models.hf import from_transformers as convert

    # the conversion is this call's own: a dtype cast may happen in place
    return export_model(convert(hf_model), path, _owned=True, **export_options)
