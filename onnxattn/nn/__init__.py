"""Torch reference modules of the onnxattn mechanisms. Each exports to one onnxattn node per use."""

from onnxattn.nn import functional
from onnxattn.nn.gqa import (
    AttentionHead,
    GlobalAttention,
    GroupedQueryAttention,
    LocalAttention,
    qk_norm,
    whole_tensor_rms_norm,
)
from onnxattn.nn.kv_cache import KVCache
from onnxattn.nn.masks import AttentionMask, build_causal_sliding_window_mask
from onnxattn.nn.mla import LatentCache, MultiHeadLatentAttention
from onnxattn.nn.mla_reference import mla_reference
from onnxattn.nn.paged_cache import BlockAllocator, PagedKVCache, PagedStep, PoolExhausted
from onnxattn.nn.reference import apply_rope, gqa_reference, sdpa_reference
from onnxattn.nn.rope import Rope, RopeScaling, positions_from_boundaries
from onnxattn.nn.sdpa import ScaledDotProductAttention

__all__ = [
    "AttentionHead",
    "AttentionMask",
    "BlockAllocator",
    "GlobalAttention",
    "GroupedQueryAttention",
    "KVCache",
    "LatentCache",
    "LocalAttention",
    "MultiHeadLatentAttention",
    "PagedKVCache",
    "PagedStep",
    "PoolExhausted",
    "Rope",
    "RopeScaling",
    "ScaledDotProductAttention",
    "apply_rope",
    "build_causal_sliding_window_mask",
    "functional",
    "gqa_reference",
    "mla_reference",
    "positions_from_boundaries",
    "qk_norm",
    "sdpa_reference",
    "whole_tensor_rms_norm",
]
