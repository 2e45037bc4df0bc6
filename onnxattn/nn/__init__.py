"""Torch reference modules of the onnxattn mechanisms. Each exports to one onnxattn node per use."""

from onnxattn.nn import functional
from onnxattn.nn.masks import AttentionMask, build_causal_sliding_window_mask
from onnxattn.nn.reference import sdpa_reference
from onnxattn.nn.sdpa import ScaledDotProductAttention

__all__ = [
    "AttentionMask",
    "ScaledDotProductAttention",
    "build_causal_sliding_window_mask",
    "functional",
    "sdpa_reference",
]
