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
from onnxattn.nn.dsa import LightningIndexer, lightning_indexer_reference
from onnxattn.nn.functional import lightning_indexer
from onnxattn.nn.kv_cache import KVCache
from onnxattn.nn.masks import AttentionMask, build_causal_sliding_window_mask
from onnxattn.nn.mla import LatentCache, MultiHeadLatentAttention
from onnxattn.nn.mla_reference import mla_reference
from onnxattn.nn.paged_cache import BlockAllocator, PagedKVCache, PagedStep, PoolExhausted
from onnxattn.nn.reference import apply_rope, gqa_reference, sdpa_reference
from onnxattn.nn.rope import Rope, RopeScaling, positions_from_boundaries
from onnxattn.nn.sdpa import ScaledDotProductAttention
from onnxattn.nn.compressed_cache import CompressedKVCache, compress_kv
from onnxattn.nn.sparse import (
    NativeSparseAttention,
    NSACoarseCompression,
    NSACompressor,
    NSAFineSelection,
    NSAWindowAttention,
    SparseRoutedAttention,
    native_sparse_attention,
    sparse_routed_attention,
)
from onnxattn.nn.sparse_reference import nsa_reference, routed_reference

__all__ = [
    "AttentionHead",
    "AttentionMask",
    "BlockAllocator",
    "CompressedKVCache",
    "GlobalAttention",
    "GroupedQueryAttention",
    "KVCache",
    "LatentCache",
    "LightningIndexer",
    "LocalAttention",
    "MultiHeadLatentAttention",
    "NSACoarseCompression",
    "NSACompressor",
    "NSAFineSelection",
    "NSAWindowAttention",
    "NativeSparseAttention",
    "PagedKVCache",
    "PagedStep",
    "PoolExhausted",
    "Rope",
    "RopeScaling",
    "ScaledDotProductAttention",
    "SparseRoutedAttention",
    "apply_rope",
    "build_causal_sliding_window_mask",
    "compress_kv",
    "functional",
    "gqa_reference",
    "lightning_indexer",
    "lightning_indexer_reference",
    "mla_reference",
    "native_sparse_attention",
    "nsa_reference",
    "positions_from_boundaries",
    "qk_norm",
    "routed_reference",
    "sdpa_reference",
    "sparse_routed_attention",
    "whole_tensor_rms_norm",
]
