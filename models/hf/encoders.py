"""The encoders: BERT, RoBERTa / XLM-RoBERTa -> our BERT; ModernBERT -> models.modernbert."""

from __future__ import annotations

import torch

from onnxattn.models import build
from onnxattn.models._base import set_linear
from onnxattn.models.bert import BertConfig, BertModel
from onnxattn.models.hf._common import _activation, _unsupported
from onnxattn.models.llama import LAYER_TYPES
from onnxattn.models.modernbert import ModernBertConfig, ModernBertModel


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
