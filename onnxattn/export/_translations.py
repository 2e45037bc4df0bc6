"""Translations of the torch custom ops into bare onnxattn nodes (the reference functions are attached
after export, see onnxattn.ops.attach_functions)."""

from __future__ import annotations

import onnxscript
import torch

from onnxattn.export import _torch_ops  # noqa: F401  (defines torch.ops.onnxattn.*)
from onnxattn.export._torch_ops import GQA_ATTRS, INDEXER_ATTRS, MLA_ATTRS, NSA_ATTRS, ROUTED_ATTRS
from onnxattn.ops import DOMAIN, OPSET_VERSION, gqa, indexer, mla, nsa, paged, routed, sdpa

_OPSET = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)
# The exporter sizes a node's outputs by its schema, so each output count gets its own schema view.
_SDPA = onnxscript.values.Op(_OPSET, sdpa.NAME, sdpa.SPEC.onnx_schema(num_outputs=1))
_SDPA_LSE = onnxscript.values.Op(_OPSET, sdpa.NAME, sdpa.SPEC.onnx_schema(num_outputs=2))
_GQA = onnxscript.values.Op(_OPSET, gqa.NAME, gqa.SPEC.onnx_schema())
_PAGED = onnxscript.values.Op(_OPSET, paged.NAME, paged.SPEC.onnx_schema())
_MLA = onnxscript.values.Op(_OPSET, mla.NAME, mla.SPEC.onnx_schema())
_INDEXER = onnxscript.values.Op(_OPSET, indexer.NAME, indexer.SPEC.onnx_schema())
_NSA = onnxscript.values.Op(_OPSET, nsa.NAME, nsa.SPEC.onnx_schema())
_ROUTED = onnxscript.values.Op(_OPSET, routed.NAME, routed.SPEC.onnx_schema())


def _sdpa_attrs(causal, window, band, scale, softcap):
    return dict(causal=int(causal), window=int(window), band=int(band), scale=float(scale), softcap=float(softcap))


def _sdpa(q, k, v, attn_mask=None, causal=False, window=0, band=0, scale=0.0, softcap=0.0):
    return _SDPA(q, k, v, attn_mask, **_sdpa_attrs(causal, window, band, scale, softcap))


def _sdpa_lse(q, k, v, attn_mask=None, causal=False, window=0, band=0, scale=0.0, softcap=0.0):
    return _SDPA_LSE(q, k, v, attn_mask, **_sdpa_attrs(causal, window, band, scale, softcap))


def _gqa(query, key, value, past_key=None, past_value=None, past_lengths=None, position_ids=None,
         q_norm_weight=None, k_norm_weight=None, rope_inv_freq=None, attention_mask=None, sinks=None, *attrs):
    values = dict(zip(GQA_ATTRS, attrs))
    kinds = {a.name: a.kind for a in gqa.SPEC.attrs}
    onnx_attrs = {name: int(v) if kinds[name] == "int" else float(v) for name, v in values.items()}
    return _GQA(query, key, value, past_key, past_value, past_lengths, position_ids, q_norm_weight, k_norm_weight,
                rope_inv_freq, attention_mask, sinks, **onnx_attrs)


def _paged(query, key, value, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens, position_ids=None,
           q_norm_weight=None, k_norm_weight=None, rope_inv_freq=None, sinks=None, *attrs):
    # every attribute explicit (onnx.reference ignores function defaults); unused cache outputs are
    # dropped later by attach_functions
    kinds = {a.name: a.kind for a in paged.SPEC.attrs}
    onnx_attrs = {name: int(v) if kinds[name] == "int" else float(v) for name, v in zip(GQA_ATTRS, attrs)}
    return _PAGED(query, key, value, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens, position_ids,
                  q_norm_weight, k_norm_weight, rope_inv_freq, sinks, **onnx_attrs)


def _mla(query, latent, k_rope, w_uk, w_uv, past_latent=None, past_k_rope=None, past_lengths=None,
         position_ids=None, rope_inv_freq=None, key_indices=None, *attrs):
    kinds = {a.name: a.kind for a in mla.SPEC.attrs}
    onnx_attrs = {name: int(v) if kinds[name] == "int" else float(v) for name, v in zip(MLA_ATTRS, attrs)}
    return _MLA(query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids,
                rope_inv_freq, key_indices, **onnx_attrs)


def _explicit(spec, names, values) -> dict:
    kinds = {a.name: a.kind for a in spec.attrs}
    return {name: int(v) if kinds[name] == "int" else float(v) for name, v in zip(names, values)}


def _indexer(query, key, weights, past_lengths=None, *attrs):
    return _INDEXER(query, key, weights, past_lengths, **_explicit(indexer.SPEC, INDEXER_ATTRS, attrs))


def _nsa(q, k, v, gates=None, compressed_key=None, compressed_value=None, *attrs):
    # all three outputs; attach_functions drops the selections when nothing reads them
    return _NSA(q, k, v, gates, compressed_key, compressed_value, **_explicit(nsa.SPEC, NSA_ATTRS, attrs))


def _routed(q, k, v, position_ids=None, *attrs):
    return _ROUTED(q, k, v, position_ids, **_explicit(routed.SPEC, ROUTED_ATTRS, attrs))


TRANSLATIONS = {
    torch.ops.onnxattn.scaled_dot_product_attention.default: _sdpa,
    torch.ops.onnxattn.scaled_dot_product_attention_lse.default: _sdpa_lse,
    torch.ops.onnxattn.group_query_attention.default: _gqa,
    torch.ops.onnxattn.paged_attention.default: _paged,
    torch.ops.onnxattn.multi_head_latent_attention.default: _mla,
    torch.ops.onnxattn.lightning_indexer.default: _indexer,
    torch.ops.onnxattn.native_sparse_attention.default: _nsa,
    torch.ops.onnxattn.sparse_routed_attention.default: _routed,
}
