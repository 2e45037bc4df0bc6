"""Translations of the torch custom ops into bare onnxattn nodes (the reference functions are attached
after export, see onnxattn.ops.attach_functions)."""

from __future__ import annotations

import onnxscript
import torch

from onnxattn.export import _torch_ops  # noqa: F401  (defines torch.ops.onnxattn.*)
from onnxattn.ops import DOMAIN, OPSET_VERSION, sdpa

_OPSET = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)
# The exporter sizes a node's outputs by its schema, so each output count gets its own schema view.
_SDPA = onnxscript.values.Op(_OPSET, sdpa.NAME, sdpa.SPEC.onnx_schema(num_outputs=1))
_SDPA_LSE = onnxscript.values.Op(_OPSET, sdpa.NAME, sdpa.SPEC.onnx_schema(num_outputs=2))


def _sdpa_attrs(causal, window, band, scale, softcap):
    return dict(causal=int(causal), window=int(window), band=int(band), scale=float(scale), softcap=float(softcap))


def _sdpa(q, k, v, attn_mask=None, causal=False, window=0, band=0, scale=0.0, softcap=0.0):
    return _SDPA(q, k, v, attn_mask, **_sdpa_attrs(causal, window, band, scale, softcap))


def _sdpa_lse(q, k, v, attn_mask=None, causal=False, window=0, band=0, scale=0.0, softcap=0.0):
    return _SDPA_LSE(q, k, v, attn_mask, **_sdpa_attrs(causal, window, band, scale, softcap))


TRANSLATIONS = {
    torch.ops.onnxattn.scaled_dot_product_attention.default: _sdpa,
    torch.ops.onnxattn.scaled_dot_product_attention_lse.default: _sdpa_lse,
}
