"""An independent numpy oracle of onnxattn::GroupQueryAttention (float64 by default).

Written from the op's contract (DESIGN.md §3 and the op's DOC), not from the package's code: it does not
import onnxattn, computes one dense masked softmax per row, and sums hidden keys out explicitly instead of
multiplying them by a zero weight (so NaN in a hidden slot cannot leak in).

Contract, in order:
1. split heads: query [B,S,Hq*D] -> q [B,Hq,S,D]; key [B,S,Hkv*D] -> k [B,Hkv,S,D]; value -> v [B,Hkv,S,Dv].
2. QK-norm when a weight is given: x / sqrt(mean(x^2 over D) + eps) * weight, per head.
3. RoPE (rope=1) on the first R = rotary_dim (0: D) channels of q and k, at position_ids [B,S]
   (default: each query's key position). Channel pairs are (c, c + R/2) (half-split) or (2c, 2c + 1)
   (interleaved); pair c turns by angle position * inv_freq[c], with inv_freq[c] = base^(-2c/R) or the
   given rope_inv_freq; cos and sin are multiplied by rope_attention_scaling:
   (x1, x2) -> s * (x1 cos - x2 sin, x2 cos + x1 sin).
4. the cache, in the input type (`store` rounds the new K/V to it):
   - concatenation (no past_lengths): present = concat(past, new) along the sequence; query i sits at key
     position P + i, P = past length (0 without past);
   - shared buffer (past_lengths): present = the buffer with the new tokens written at
     past_lengths[b] .. past_lengths[b] + S - 1; query i of batch b sits at past_lengths[b] + i; keys at
     >= past_lengths[b] + S are stale and hidden.
5. attention of q over present (GQA repeat-each: query head h uses KV head h // (Hq / Hkv)):
   query at key position p sees key j iff j <= p (causal=1), p - W < j (window W > 0), j is valid, and
   attention_mask[b, j] (when given); scores = scale * q.k (scale 0: 1/sqrt(D)), softcap c > 0:
   c * tanh(scores / c) before masking; a row with no visible key gives zeros.
6. attention sinks (sinks [Hq] given): head h's sink logit joins each row's softmax as one more score
   without a value: weights = softmax([scores, sink])[:-1], so they sum to less than 1 (a +inf sink takes
   all the weight: zeros; a NaN sink gives NaN).

`compute` picks the arithmetic type (float64 for the oracle; a low-precision type gives the plain
low-precision baseline that STYLE.md #10 bounds errors by): every intermediate is rounded to it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def default_inv_freq(rotary_dim: int, base: float) -> np.ndarray:
    """base^(-2c/R) for c < R/2, in float64."""
    return np.power(float(base), -np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def rope_oracle(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, *, interleaved: bool = False,
                scaling: float = 1.0, compute=np.float64) -> np.ndarray:
    """Rotates the first 2 * len(inv_freq) channels of x [B,H,S,D] at positions [B,S] (see step 3)."""
    c = _caster(compute)
    x = c(x)
    rotary = 2 * len(inv_freq)
    angles = c(c(np.asarray(positions, dtype=np.float64))[:, None, :, None] * c(inv_freq))  # [B,1,S,R/2]
    cos, sin = c(c(np.cos(angles)) * scaling), c(c(np.sin(angles)) * scaling)
    if interleaved:
        first, second = np.arange(0, rotary, 2), np.arange(1, rotary, 2)
    else:
        first, second = np.arange(rotary // 2), np.arange(rotary // 2, rotary)
    x1, x2 = x[..., first], x[..., second]
    out = x.copy()
    out[..., first] = c(c(x1 * cos) - c(x2 * sin))
    out[..., second] = c(c(x2 * cos) + c(x1 * sin))
    return out


def rms_norm_oracle(x: np.ndarray, weight: np.ndarray, eps: float, compute=np.float64) -> np.ndarray:
    c = _caster(compute)
    x = c(x)
    mean_sq = c(c(x * x).mean(axis=-1, keepdims=True))
    return c(c(x / c(np.sqrt(c(mean_sq + eps)))) * c(weight))


def gqa_oracle(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    past_lengths: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    q_norm_weight: np.ndarray | None = None,
    k_norm_weight: np.ndarray | None = None,
    rope_inv_freq: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    sinks: np.ndarray | None = None,
    *,
    num_heads: int,
    kv_num_heads: int,
    causal: int = 1,
    window: int = 0,
    attention_chunk: int = 0,
    softcap: float = 0.0,
    scale: float = 0.0,
    rope: int = 0,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: int = 0,
    rope_attention_scaling: float = 1.0,
    qk_norm_epsilon: float = 1e-6,
    store: Callable[[np.ndarray], np.ndarray] | None = None,
    compute=np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (output [B,S,Hq*Dv], present_key, present_value), in `compute`."""
    c = _caster(compute)
    store = store or (lambda x: x)
    batch, seq, q_width = query.shape
    assert num_heads % kv_num_heads == 0, "oracle: num_heads must be a multiple of kv_num_heads"
    assert (past_key is None) == (past_value is None), "oracle: past_key and past_value go together"
    head_dim = q_width // num_heads

    def heads(x, h):
        x = c(x)
        return x.reshape(batch, seq, h, x.shape[-1] // h).transpose(0, 2, 1, 3)

    q, k, v = heads(query, num_heads), heads(key, kv_num_heads), heads(value, kv_num_heads)
    if q_norm_weight is not None:
        q = rms_norm_oracle(q, q_norm_weight, qk_norm_epsilon, compute)
    if k_norm_weight is not None:
        k = rms_norm_oracle(k, k_norm_weight, qk_norm_epsilon, compute)

    # each query's key position [B, S]
    if past_lengths is not None:
        offsets = np.asarray(past_lengths, dtype=np.int64)
    else:
        offsets = np.full(batch, 0 if past_key is None else past_key.shape[2], dtype=np.int64)
    query_pos = offsets[:, None] + np.arange(seq)[None, :]

    if rope:
        rotary = rotary_dim or head_dim
        inv_freq = default_inv_freq(rotary, rope_base) if rope_inv_freq is None else np.asarray(rope_inv_freq)
        assert len(inv_freq) == rotary // 2
        positions = query_pos if position_ids is None else np.asarray(position_ids)
        q = rope_oracle(q, positions, inv_freq, interleaved=bool(rope_interleaved),
                        scaling=rope_attention_scaling, compute=compute)
        k = rope_oracle(k, positions, inv_freq, interleaved=bool(rope_interleaved),
                        scaling=rope_attention_scaling, compute=compute)

    k_new, v_new = c(store(k)), c(store(v))
    if past_lengths is not None:
        present_k, present_v = c(past_key).copy(), c(past_value).copy()
        for b in range(batch):
            start = int(offsets[b])
            assert start + seq <= present_k.shape[2], "oracle: the new tokens must fit in the buffer"
            present_k[b, :, start:start + seq] = k_new[b]
            present_v[b, :, start:start + seq] = v_new[b]
        valid_end = offsets + seq
    elif past_key is not None:
        present_k = np.concatenate([c(past_key), k_new], axis=2)
        present_v = np.concatenate([c(past_value), v_new], axis=2)
        valid_end = np.full(batch, present_k.shape[2])
    else:
        present_k, present_v = k_new, v_new
        valid_end = np.full(batch, seq)
    total = present_k.shape[2]

    j = np.arange(total)[None, None, :]  # [1, 1, T]
    p = query_pos[:, :, None]  # [B, S, 1]
    visible = j < valid_end[:, None, None]
    if causal:
        visible = visible & (j <= p)
    if window > 0:
        visible = visible & (p - window < j)
    if attention_chunk > 0:  # Llama 4: the query's own chunk only
        visible = visible & (np.floor_divide(j, attention_chunk) == np.floor_divide(p, attention_chunk))
    if attention_mask is not None:
        visible = visible & np.asarray(attention_mask, dtype=bool)[:, None, :]
    visible = np.broadcast_to(visible, (batch, seq, total))

    group = num_heads // kv_num_heads
    kv_of = np.arange(num_heads) // group  # repeat-each
    k_all, v_all = present_k[:, kv_of], present_v[:, kv_of]  # [B, Hq, T, .]
    scale = scale if scale != 0.0 else 1.0 / np.sqrt(head_dim)
    value_dim = present_v.shape[3]
    out = np.zeros((batch, num_heads, seq, value_dim), dtype=compute)
    for b in range(batch):
        for i in range(seq):
            seen = np.flatnonzero(visible[b, i])
            if seen.size == 0:
                continue  # no visible key: zeros
            keys, values = k_all[b][:, seen], v_all[b][:, seen]  # [Hq, n, .]
            scores = c(c(np.matmul(q[b, :, i][:, None, :], keys.transpose(0, 2, 1))[:, 0]) * scale)  # [Hq, n]
            if softcap > 0.0:
                scores = c(c(np.tanh(c(scores / softcap))) * softcap)
            if sinks is not None:  # one more logit per head, dropped after the softmax
                scores = np.concatenate([scores, c(sinks)[:, None]], axis=-1)
            top = scores.max(axis=-1, keepdims=True)
            with np.errstate(invalid="ignore"):
                weights = c(np.exp(c(scores - top)))
            if sinks is not None:  # a sink that is the max weighs 1, also when +inf (all weight on it)
                weights[:, -1] = np.where(scores[:, -1] == top[:, 0], c(1.0), weights[:, -1])
            total_weight = c(weights.sum(axis=-1, keepdims=True))
            if sinks is not None:
                weights = weights[:, :-1]
            out[b, :, i] = c(c(np.matmul(weights[:, None, :], values)[:, 0]) / total_weight)
    return out.transpose(0, 2, 1, 3).reshape(batch, seq, num_heads * value_dim), present_k, present_v


def _caster(compute) -> Callable[[np.ndarray], np.ndarray]:
    if np.dtype(compute) == np.float64:
        return lambda x: np.asarray(x, dtype=np.float64)
    return lambda x: np.asarray(x).astype(compute)
