"""Functional forms of the onnxattn mechanisms. Each call is one torch custom op, so it exports to one
onnxattn node; eagerly it runs onnxattn.nn.reference and is differentiable."""

from __future__ import annotations

import torch

from onnxattn.export import _torch_ops  # noqa: F401  (registers torch.ops.onnxattn.*)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    band: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    return_lse: bool = False,
):
    """onnxattn::ScaledDotProductAttention on q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv].

    causal is bottom-right aligned (query i sees keys j <= i + Skv - Sq); window > 0 keeps the `window`
    most recent keys; band > 0 keeps |i + Skv - Sq - j| <= band; attn_mask is bool (True = attend) or
    additive, broadcastable to [B,Hq,Sq,Skv]; scale None means 1/sqrt(D); softcap > 0 caps the scores
    before masking. Rows with no visible key give zeros. Returns Y, or (Y, LSE) with return_lse."""
    args = (q, k, v, attn_mask, bool(causal), int(window), int(band), float(scale or 0.0), float(softcap))
    if return_lse:
        return torch.ops.onnxattn.scaled_dot_product_attention_lse(*args)
    return torch.ops.onnxattn.scaled_dot_product_attention(*args)


def group_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    past_lengths: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    rope_inv_freq: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    *,
    num_heads: int,
    kv_num_heads: int,
    causal: bool = True,
    window: int = 0,
    attention_chunk: int = 0,
    softcap: float = 0.0,
    scale: float | None = None,
    rope: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    qk_norm_epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """onnxattn::GroupQueryAttention on projected query [B,S,Hq*D], key [B,S,Hkv*D], value [B,S,Hkv*Dv]:
    QK-norm -> RoPE -> KV cache update -> attention; `sinks` [Hq]: attention-sink logits (GPT-OSS). Returns
    (output [B,S,Hq*Dv], present_key, present_value); see docs/ops.md for the two cache modes and the
    visibility rules."""
    return torch.ops.onnxattn.group_query_attention(
        query, key, value, past_key, past_value, past_lengths, position_ids, q_norm_weight, k_norm_weight,
        rope_inv_freq, attention_mask, sinks, int(num_heads), int(kv_num_heads), bool(causal), int(window),
        int(attention_chunk), float(softcap), float(scale or 0.0), bool(rope), float(rope_base), int(rotary_dim),
        bool(rope_interleaved), float(rope_attention_scaling), float(qk_norm_epsilon),
    )


def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    q_norm_weight: torch.Tensor | None = None,
    k_norm_weight: torch.Tensor | None = None,
    rope_inv_freq: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    *,
    num_heads: int,
    kv_num_heads: int,
    causal: bool = True,
    window: int = 0,
    attention_chunk: int = 0,
    softcap: float = 0.0,
    scale: float | None = None,
    rope: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    qk_norm_epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """onnxattn::PagedAttention on a ragged batch of packed tokens: query [T,Hq*D], key [T,Hkv*D], value
    [T,Hkv*Dv] (sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1, int32 [B+1]) over block pools
    key_cache/value_cache [num_blocks, block_size, Hkv, D|Dv] listed per sequence by block_table [B, max_blocks]
    int32; seq_lens [B] int32 counts each sequence's keys including its new tokens. Returns (output [T,Hq*Dv],
    key_cache_out, value_cache_out): the pools with the new tokens written (new tensors in torch; the kernel
    updates them in place). `sinks` and the attributes as in group_query_attention; see docs/ops.md."""
    return torch.ops.onnxattn.paged_attention(
        query, key, value, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens, position_ids, q_norm_weight,
        k_norm_weight, rope_inv_freq, sinks, int(num_heads), int(kv_num_heads), bool(causal), int(window),
        int(attention_chunk), float(softcap), float(scale or 0.0), bool(rope), float(rope_base), int(rotary_dim),
        bool(rope_interleaved), float(rope_attention_scaling), float(qk_norm_epsilon),
    )


def multi_head_latent_attention(
    query: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    past_latent: torch.Tensor | None = None,
    past_k_rope: torch.Tensor | None = None,
    past_lengths: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    rope_inv_freq: torch.Tensor | None = None,
    key_indices: torch.Tensor | None = None,
    *,
    num_heads: int,
    causal: bool = True,
    window: int = 0,
    softcap: float = 0.0,
    scale: float | None = None,
    rope_base: float = 10000.0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """onnxattn::MultiHeadLatentAttention (DeepSeek-V2/V3 MLA) on query [B,S,H*(Dn+Dr)], the new tokens' latent
    [B,S,R] and rope keys [B,S,Dr] (before RoPE), with up-projections w_uk [H,R,Dn] and w_uv [H,R,Dv]. Caches
    past_latent [B,P,R] / past_k_rope [B,P,Dr] (or [B,1,P,.]; buffers with past_lengths). key_indices [B,S,K]
    int64 (DeepSeek-V3.2 sparse attention): each query sees only the cache positions it lists. Returns (output
    [B,S,H*Dv], present_latent, present_k_rope); scale None means 1/sqrt(Dn+Dr). See docs/ops.md."""
    return torch.ops.onnxattn.multi_head_latent_attention(
        query, latent, k_rope, w_uk, w_uv, past_latent, past_k_rope, past_lengths, position_ids, rope_inv_freq,
        key_indices, int(num_heads), bool(causal), int(window), float(softcap), float(scale or 0.0), float(rope_base),
        bool(rope_interleaved), float(rope_attention_scaling),
    )


def lightning_indexer(
    query: torch.Tensor,
    key: torch.Tensor,
    weights: torch.Tensor,
    past_lengths: torch.Tensor | None = None,
    *,
    num_heads: int,
    top_k: int,
    scale: float | None = None,
) -> torch.Tensor:
    """onnxattn::LightningIndexer (DeepSeek-V3.2 sparse attention's key selection) on query [B,S,H*D] (the
    indexer's queries after RoPE), key [B,T,D] or [B,1,T,D] (its key cache, the new tokens' keys included; a
    buffer with past_lengths [B] int64) and weights [B,S,H] float32. Returns key_indices [B,S,top_k] int64: per
    query the top_k visible keys by sum_h weights[h] * relu(scale * q_h . k), ties to the lower position, in
    ascending order, -1 padding when fewer are visible (multi_head_latent_attention's key_indices). scale None
    means 1/sqrt(D). Not differentiable (a discrete selection). See docs/ops.md."""
    return torch.ops.onnxattn.lightning_indexer(query, key, weights, past_lengths, int(num_heads), int(top_k),
                                                float(scale or 0.0))
