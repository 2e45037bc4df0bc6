"""torch.library custom ops, one per onnxattn ONNX op: opaque to torch.export (so the exporter sees one
call per use), computed eagerly by onnxattn.nn.reference, differentiable through that same math."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor

from onnxattn.nn.dsa import lightning_indexer_reference
from onnxattn.nn.mla_reference import check_mla_inputs, check_mla_key_indices, check_mla_past_lengths, mla_reference
from onnxattn.nn.reference import (
    check_gqa_inputs,
    check_gqa_past_lengths,
    gqa_reference,
    paged_reference,
    sdpa_reference,
)
from onnxattn.nn.sparse_reference import nsa_reference, routed_reference


def _register_recompute_autograd(op, reference: Callable, num_tensors: int, attr_names: Sequence[str],
                                 differentiable_outputs: Sequence[int]) -> None:
    """Backward of `op` by recomputing `reference` (the same eager math) under autograd. The first
    `num_tensors` arguments are (optional) tensors, the rest are attributes passed by keyword."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:num_tensors])
        ctx.attrs = dict(zip(attr_names, inputs[num_tensors:]))

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        wanted = [
            t.detach().requires_grad_(needs) if t is not None and t.is_floating_point() else t
            for t, needs in zip(saved, ctx.needs_input_grad)
        ]
        with torch.enable_grad():
            outputs = reference(*wanted, **ctx.attrs)
            outputs = [outputs[i] for i in differentiable_outputs]
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            leaves = [t for t in wanted if t is not None and t.requires_grad]
            computed = iter(torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                                allow_unused=True) if pairs and leaves else [None] * len(leaves))
        result = [next(computed) if t is not None and t.requires_grad else None for t in wanted]
        return (*result, *([None] * len(attr_names)))

    op.register_autograd(backward, setup_context=setup_context)


def _unaliased(t: Tensor, inputs) -> Tensor:
    """Custom ops may not return views of their inputs (e.g. the present cache without a past is the
    new key itself): clone those."""
    storage = t.untyped_storage().data_ptr()
    shares = any(i is not None and i.untyped_storage().data_ptr() == storage for i in inputs)
    return t.clone() if shares else t


# ---- ScaledDotProductAttention ----

_SDPA_ATTRS = ("causal", "window", "band", "scale", "softcap")


@torch.library.custom_op("onnxattn::scaled_dot_product_attention", mutates_args=())
def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
    causal: bool, window: int, band: int, scale: float, softcap: float,
) -> Tensor:
    return sdpa_reference(q, k, v, attn_mask, causal=causal, window=window, band=band, scale=scale, softcap=softcap)[0]


@scaled_dot_product_attention.register_fake
def _(q, k, v, attn_mask, causal, window, band, scale, softcap):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


@torch.library.custom_op("onnxattn::scaled_dot_product_attention_lse", mutates_args=())
def scaled_dot_product_attention_lse(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
    causal: bool, window: int, band: int, scale: float, softcap: float,
) -> tuple[Tensor, Tensor]:
    return sdpa_reference(q, k, v, attn_mask, causal=causal, window=window, band=band, scale=scale, softcap=softcap)


@scaled_dot_product_attention_lse.register_fake
def _(q, k, v, attn_mask, causal, window, band, scale, softcap):
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=lse_dtype)


_register_recompute_autograd(scaled_dot_product_attention, sdpa_reference, 4,
                             _SDPA_ATTRS, differentiable_outputs=(0,))
_register_recompute_autograd(scaled_dot_product_attention_lse, sdpa_reference, 4, _SDPA_ATTRS,
                             differentiable_outputs=(0, 1))


# ---- GroupQueryAttention ----

GQA_TENSORS = ("query", "key", "value", "past_key", "past_value", "past_lengths", "position_ids",
               "q_norm_weight", "k_norm_weight", "rope_inv_freq", "attention_mask", "sinks")
GQA_ATTRS = ("num_heads", "kv_num_heads", "causal", "window", "attention_chunk", "softcap", "scale", "rope",
             "rope_base", "rotary_dim", "rope_interleaved", "rope_attention_scaling", "qk_norm_epsilon")


@torch.library.custom_op("onnxattn::group_query_attention", mutates_args=())
def group_query_attention(
    query: Tensor, key: Tensor, value: Tensor,
    past_key: Optional[Tensor], past_value: Optional[Tensor], past_lengths: Optional[Tensor],
    position_ids: Optional[Tensor], q_norm_weight: Optional[Tensor], k_norm_weight: Optional[Tensor],
    rope_inv_freq: Optional[Tensor], attention_mask: Optional[Tensor], sinks: Optional[Tensor],
    num_heads: int, kv_num_heads: int, causal: bool, window: int, attention_chunk: int, softcap: float,
    scale: float, rope: bool, rope_base: float, rotary_dim: int, rope_interleaved: bool, rope_attention_scaling: float,
    qk_norm_epsilon: float,
) -> tuple[Tensor, Tensor, Tensor]:
    tensors = (query, key, value, past_key, past_value, past_lengths, position_ids, q_norm_weight, k_norm_weight,
               rope_inv_freq, attention_mask, sinks)
    attrs = dict(zip(GQA_ATTRS, (num_heads, kv_num_heads, causal, window, attention_chunk, softcap, scale, rope,
                                 rope_base, rotary_dim, rope_interleaved, rope_attention_scaling, qk_norm_epsilon)))
    check_gqa_inputs(tensors, attrs)  # shapes first (gqa_reference checks them too, also in the backward)
    check_gqa_past_lengths(query, past_key, past_lengths)  # then values: on real tensors, so here only
    out, present_k, present_v = gqa_reference(*tensors, **attrs)
    inputs = (query, key, value, past_key, past_value)
    # contiguous, as the fake kernel says (without a past, the present key is a transposed view)
    return tuple(_unaliased(t.contiguous(), inputs) for t in (out, present_k, present_v))


@group_query_attention.register_fake
def _(query, key, value, past_key, past_value, past_lengths, position_ids, q_norm_weight, k_norm_weight,
      rope_inv_freq, attention_mask, sinks, num_heads, kv_num_heads, *attrs):
    b, s = query.shape[0], query.shape[1]
    d = query.shape[2] // num_heads
    dv = value.shape[2] // kv_num_heads
    if past_lengths is not None:
        total = past_key.shape[2]
    else:
        total = s + (past_key.shape[2] if past_key is not None else 0)
    return (query.new_empty((b, s, num_heads * dv)), key.new_empty((b, kv_num_heads, total, d)),
            value.new_empty((b, kv_num_heads, total, dv)))


_register_recompute_autograd(group_query_attention, gqa_reference, len(GQA_TENSORS), GQA_ATTRS,
                             differentiable_outputs=(0, 1, 2))


# ---- PagedAttention ----

PAGED_TENSORS = ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens",
                 "position_ids", "q_norm_weight", "k_norm_weight", "rope_inv_freq", "sinks")


@torch.library.custom_op("onnxattn::paged_attention", mutates_args=())
def paged_attention(
    query: Tensor, key: Tensor, value: Tensor, key_cache: Tensor, value_cache: Tensor,
    block_table: Tensor, cu_seqlens_q: Tensor, seq_lens: Tensor, position_ids: Optional[Tensor],
    q_norm_weight: Optional[Tensor], k_norm_weight: Optional[Tensor], rope_inv_freq: Optional[Tensor],
    sinks: Optional[Tensor],
    num_heads: int, kv_num_heads: int, causal: bool, window: int, attention_chunk: int, softcap: float,
    scale: float, rope: bool, rope_base: float, rotary_dim: int, rope_interleaved: bool, rope_attention_scaling: float,
    qk_norm_epsilon: float,
) -> tuple[Tensor, Tensor, Tensor]:
    # the updated pools are new tensors (paged_reference writes into copies): outputs may not alias inputs
    attrs = dict(zip(GQA_ATTRS, (num_heads, kv_num_heads, causal, window, attention_chunk, softcap, scale, rope,
                                 rope_base, rotary_dim, rope_interleaved, rope_attention_scaling, qk_norm_epsilon)))
    out, key_out, value_out = paged_reference(query, key, value, key_cache, value_cache, block_table, cu_seqlens_q,
                                              seq_lens, position_ids, q_norm_weight, k_norm_weight, rope_inv_freq,
                                              sinks, **attrs)
    return out.contiguous(), key_out, value_out


@paged_attention.register_fake
def _(query, key, value, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens, position_ids, q_norm_weight,
      k_norm_weight, rope_inv_freq, sinks, num_heads, kv_num_heads, *attrs):
    dv = value.shape[1] // kv_num_heads
    return (query.new_empty((query.shape[0], num_heads * dv)), key_cache.new_empty(key_cache.shape),
            value_cache.new_empty(value_cache.shape))


_register_recompute_autograd(paged_attention, paged_reference, len(PAGED_TENSORS), GQA_ATTRS,
                             differentiable_outputs=(0, 1, 2))


# ---- MultiHeadLatentAttention ----

MLA_TENSORS = ("query", "latent", "k_rope", "w_uk", "w_uv", "past_latent", "past_k_rope", "past_lengths",
               "position_ids", "rope_inv_freq", "key_indices")
MLA_ATTRS = ("num_heads", "causal", "window", "softcap", "scale", "rope_base", "rope_interleaved",
             "rope_attention_scaling")


@torch.library.custom_op("onnxattn::multi_head_latent_attention", mutates_args=())
def multi_head_latent_attention(
    query: Tensor, latent: Tensor, k_rope: Tensor, w_uk: Tensor, w_uv: Tensor,
    past_latent: Optional[Tensor], past_k_rope: Optional[Tensor], past_lengths: Optional[Tensor],
    position_ids: Optional[Tensor], rope_inv_freq: Optional[Tensor], key_indices: Optional[Tensor],
    num_heads: int, causal: bool, window: int, softcap: float, scale: float, rope_base: float,
    rope_interleaved: bool, rope_attention_scaling: float,
) -> tuple[Tensor, Tensor, Tensor]:
    tensors = (query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids, rope_inv_freq,
               key_indices)
    attrs = dict(zip(MLA_ATTRS, (num_heads, causal, window, softcap, scale, rope_base, rope_interleaved,
                                 rope_attention_scaling)))
    check_mla_inputs(tensors, attrs)
    check_mla_past_lengths(query, past_latent, past_lengths)
    check_mla_key_indices(query, latent, past_latent, past_lengths, key_indices)
    outputs = mla_reference(*tensors, **attrs)
    # without a past the present latent is the input itself: outputs may not alias inputs
    return tuple(_unaliased(t.contiguous(), (latent, k_rope, past_latent, past_k_rope)) for t in outputs)


@multi_head_latent_attention.register_fake
def _(query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids, rope_inv_freq,
      key_indices, num_heads, *attrs):
    b, s = query.shape[0], query.shape[1]
    if past_latent is None:
        lead, total = (b,), s
    else:
        lead = tuple(past_latent.shape[:-2])
        total = past_latent.shape[-2] if past_lengths is not None else past_latent.shape[-2] + s
    return (query.new_empty((b, s, num_heads * w_uv.shape[2])), latent.new_empty((*lead, total, latent.shape[2])),
            k_rope.new_empty((*lead, total, k_rope.shape[2])))


_register_recompute_autograd(multi_head_latent_attention, mla_reference, len(MLA_TENSORS), MLA_ATTRS,
                             differentiable_outputs=(0, 1, 2))


# ---- LightningIndexer ----

INDEXER_ATTRS = ("num_heads", "top_k", "scale")


@torch.library.custom_op("onnxattn::lightning_indexer", mutates_args=())
def lightning_indexer(
    query: Tensor, key: Tensor, weights: Tensor, past_lengths: Optional[Tensor], num_heads: int, top_k: int,
    scale: float,
) -> Tensor:
    # no autograd: the output is a discrete selection (integers)
    return lightning_indexer_reference(query, key, weights, past_lengths, num_heads=num_heads, top_k=top_k,
                                       scale=scale).contiguous()


@lightning_indexer.register_fake
def _(query, key, weights, past_lengths, num_heads, top_k, scale):
    return query.new_empty((query.shape[0], query.shape[1], top_k), dtype=torch.int64)


# ---- NativeSparseAttention, SparseRoutedAttention ----

NSA_TENSORS = ("q", "k", "v", "gates", "compressed_key", "compressed_value")
NSA_ATTRS = ("block_size", "top_blocks", "top_tokens", "window", "causal", "shared_selection", "sink_blocks",
             "local_blocks", "scale")


@torch.library.custom_op("onnxattn::native_sparse_attention", mutates_args=())
def native_sparse_attention(
    q: Tensor, k: Tensor, v: Tensor, gates: Optional[Tensor], compressed_key: Optional[Tensor],
    compressed_value: Optional[Tensor], block_size: int, top_blocks: int, top_tokens: int, window: int,
    causal: bool, shared_selection: bool, sink_blocks: int, local_blocks: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    attrs = dict(zip(NSA_ATTRS, (block_size, top_blocks, top_tokens, window, causal, shared_selection, sink_blocks,
                                 local_blocks, scale)))
    y, blocks, tokens = nsa_reference(q, k, v, gates, compressed_key, compressed_value, **attrs)
    return y.contiguous(), blocks.contiguous(), tokens.contiguous()


@native_sparse_attention.register_fake
def _(q, k, v, gates, compressed_key, compressed_value, block_size, top_blocks, top_tokens, window, causal,
      shared_selection, *attrs):
    b, hq, sq = q.shape[0], q.shape[1], q.shape[2]
    hs = k.shape[1] if shared_selection else hq
    return (q.new_empty((b, hq, sq, v.shape[3])), q.new_empty((b, hs, sq, top_blocks), dtype=torch.int64),
            q.new_empty((b, hq, sq, top_tokens), dtype=torch.int64))


_register_recompute_autograd(native_sparse_attention, nsa_reference, len(NSA_TENSORS), NSA_ATTRS,
                             differentiable_outputs=(0,))

ROUTED_TENSORS = ("q", "k", "v", "position_ids")
ROUTED_ATTRS = ("segment_size", "top_k", "causal", "cosine", "rope", "rope_before_routing", "rope_base", "rotary_dim",
                "rope_interleaved", "rope_attention_scaling", "scale")


@torch.library.custom_op("onnxattn::sparse_routed_attention", mutates_args=())
def sparse_routed_attention(
    q: Tensor, k: Tensor, v: Tensor, position_ids: Optional[Tensor], segment_size: int, top_k: int, causal: bool,
    cosine: bool, rope: bool, rope_before_routing: bool, rope_base: float, rotary_dim: int, rope_interleaved: bool,
    rope_attention_scaling: float, scale: float,
) -> tuple[Tensor, Tensor]:
    attrs = dict(zip(ROUTED_ATTRS, (segment_size, top_k, causal, cosine, rope, rope_before_routing, rope_base,
                                    rotary_dim, rope_interleaved, rope_attention_scaling, scale)))
    y, selected = routed_reference(q, k, v, position_ids, **attrs)
    return y.contiguous(), selected.contiguous()


@sparse_routed_attention.register_fake
def _(q, k, v, position_ids, segment_size, top_k, *attrs):
    b, hq, sq = q.shape[0], q.shape[1], q.shape[2]
    return q.new_empty((b, hq, sq, v.shape[3])), q.new_empty((b, hq, sq, top_k), dtype=torch.int64)


_register_recompute_autograd(sparse_routed_attention, routed_reference, len(ROUTED_TENSORS), ROUTED_ATTRS,
                             differentiable_outputs=(0,))
