"""``from_transformers``: a Hugging Face transformers model -> one validated .onnx with onnxattn ops, by
way of the reference models (onnxattn.models.hf maps config and weights), so the graph is the same as
``export_model``'s: past/present KV per layer for decoders, input_ids and attention_mask (and token_type_ids,
but for ModernBERT) for encoders, dynamic batch / sequence / past, functions attached."""

from __future__ import annotations

import os

from onnxattn.export._models import ExportResult, export_model


def from_transformers(hf_model, path: str | os.PathLike, **export_options) -> ExportResult:
    """Exports `hf_model`, a transformers model of a supported architecture in float32 (models.hf.SUPPORTED;
    or the directory of a saved one: config.json + weights, local files only, as `onnxattn export DIR` takes it;
    docs/huggingface.md says how each maps onto our ops and what is refused), to `path`; `export_options` as for
    export_model (dtype, cache, logits, validate, ...). Other architectures and settings raise a ValueError
    (UnsupportedModel) that lists the supported ones.

    Decoders: one graph for prefill and decode. DeepSeek-V2's and V3's caches are their latents:
    past_key_values.{i}.key [B, 1, P, kv_lora_rank], .value [B, 1, P, qk_rope_head_dim]; DeepSeek-V3.2's and GLM-5's
layers with an indexer add .index_key [B, 1, P, index_head_dim] (the indexer's keys). LongRoPE is a Greater +
    Where in front of each node's rope_inv_freq, picking the factor set per run as transformers' forward does, so
    KV-cached generation equals transformers' model run forward by forward with its cache; Phi-3's generate()
    differs once the sequence crosses original_max_position_embeddings (it re-encodes everything there).

    Encoders output last_hidden_state (and pooler_output when the model has a pooler). RoBERTa / XLM-RoBERTa
    derive positions from the ids as transformers does (from pad_token_id + 1, pad tokens skipped), so feed the
    pad token where attention_mask is 0. ModernBERT takes no token_type_ids."""
    from onnxattn.models.hf import from_transformers as convert
    from onnxattn.models.hf import load_local

    if isinstance(hf_model, (str, os.PathLike)):  # a checkpoint directory, as the command line takes it
        hf_model = load_local(hf_model)
    # the conversion is this call's own: a dtype cast may happen in place
    return export_model(convert(hf_model), path, _owned=True, **export_options)
