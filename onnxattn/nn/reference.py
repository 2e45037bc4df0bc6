"""The eager math of every mechanism: the numerical reference the kernels and functions are tested
against, and the forward (and, through autograd, the backward) of the torch modules."""

from __future__ import annotations

import math

import torch

from onnxattn.nn.masks import AttentionMask


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for 16-bit inputs (as the kernels accumulate), else the input's own precision."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_sdpa_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> None:
    name = "ScaledDotProductAttention"
    for label, t, layout in (("q", q, "[B, Hq, Sq, D]"), ("k", k, "[B, Hkv, Skv, D]"), ("v", v, "[B, Hkv, Skv, Dv]")):
        if t.dim() != 4:
            raise ValueError(f"{name}: {label} must have rank 4 {layout}, got shape {list(t.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"{name}: batch sizes differ: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"{name}: k must have head size D = {q.shape[3]} (from q), got shape {list(k.shape)}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"{name}: v must be [B, Hkv, Skv, Dv] matching k {list(k.shape)}, got {list(v.shape)}")
    if k.shape[1] < 1 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"{name}: query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise ValueError(f"{name}: attn_mask must be bool or {q.dtype} (the type of q), got {attn_mask.dtype}")
        target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        if attn_mask.dim() > 4 or any(
            d != 1 and d != t for d, t in zip(reversed(attn_mask.shape), reversed(target))
        ):
            raise ValueError(
                f"{name}: attn_mask of shape {list(attn_mask.shape)} does not broadcast to [B, Hq, Sq, Skv] = {list(target)}"
            )


def check_scale_and_softcap(scale: float, softcap: float) -> None:
    """The op's contract: scale finite (0 = 1/sqrt(D)), softcap finite and >= 0 (0 = off)."""
    name = "ScaledDotProductAttention"
    if not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be finite (0 or None = 1/sqrt(D)), got {scale}")
    if not (math.isfinite(softcap) and softcap >= 0):
        raise ValueError(f"{name}: softcap must be finite and >= 0 (0 = off), got {softcap}")


def sdpa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    window: int = 0,
    band: int = 0,
    scale: float = 0.0,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager onnxattn::ScaledDotProductAttention: returns (Y [B,Hq,Sq,Dv] in q's dtype, LSE [B,Hq,Sq] float32).

    Same contract as the ONNX op: bottom-right aligned structural masks, bool (True = attend) or additive
    masks, softcap before masking, empty rows give zeros and LSE = -inf. Differentiable everywhere the
    result is finite (gradients of empty rows are zero)."""
    check_sdpa_shapes(q, k, v, attn_mask)
    check_scale_and_softcap(scale, softcap)
    ct = compute_dtype(q.dtype)
    group = q.shape[1] // k.shape[1]
    qc, kc, vc = q.to(ct), k.to(ct).repeat_interleave(group, dim=1), v.to(ct).repeat_interleave(group, dim=1)
    scale = scale if scale != 0.0 else 1.0 / math.sqrt(q.shape[-1])
    scores = (qc @ kc.transpose(-1, -2)) * scale
    if softcap > 0.0:
        scores = softcap * torch.tanh(scores / softcap)
    visible = AttentionMask(bool(causal), int(window), int(band)).materialize(q.shape[2], k.shape[2], q.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            visible = visible & attn_mask
        else:
            scores = scores + attn_mask.to(ct)
    scores = scores.masked_fill(~visible, float("-inf"))
    if scores.shape[-1] == 0:  # no keys at all (amax cannot reduce an empty dim): every row is empty
        row_max = scores.new_full((*scores.shape[:-1], 1), float("-inf"))
    else:
        row_max = scores.amax(dim=-1, keepdim=True)
    # Rows with no visible key subtract 0, so exp gives exact zeros. The shift cancels in the softmax, so
    # it carries no gradient.
    shift = torch.where(torch.isinf(row_max) & (row_max < 0), torch.zeros_like(row_max), row_max).detach()
    probs = torch.exp(scores - shift)
    row_sum = probs.sum(dim=-1, keepdim=True)
    empty = row_sum == 0
    safe_sum = torch.where(empty, torch.ones_like(row_sum), row_sum)
    # A key no row gives weight to contributes nothing, even if its V holds NaN (e.g. a stale cache slot),
    # as in the kernels and the reference function.
    weighed = (probs > 0).any(dim=-2).unsqueeze(-1)  # [B, Hq, Skv, 1]
    vc = torch.where(weighed, vc, torch.zeros_like(vc))
    out = torch.where(empty, torch.zeros_like(row_sum), (probs @ vc) / safe_sum)
    lse = torch.where(empty, torch.full_like(row_sum, float("-inf")), torch.log(safe_sum) + shift)
    return out.to(q.dtype), lse.squeeze(-1).to(torch.float32 if ct != torch.float64 else ct)


# ---- GroupQueryAttention ----


def default_inv_freq(rotary_dim: int, base: float, device=None) -> torch.Tensor:
    """RoPE inverse frequencies base^(-2i/rotary_dim), float32 [rotary_dim / 2]."""
    exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.int64).to(torch.float32) / rotary_dim
    return torch.exp(-exponents * math.log(base))


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, *, interleaved: bool = False,
               attention_scaling: float = 1.0) -> torch.Tensor:
    """Rotates the first 2 * len(inv_freq) channels of x [B, H, S, D] at int positions [B, S]:
    half-split pairs (c, c + rotary/2) or interleaved pairs (2c, 2c + 1)."""
    rotary = 2 * inv_freq.shape[0]
    angles = positions.to(torch.float32)[:, None, :, None] * inv_freq.to(torch.float32)  # [B, 1, S, rotary/2]
    cos, sin = torch.cos(angles) * attention_scaling, torch.sin(angles) * attention_scaling
    x_rot, x_pass = x[..., :rotary], x[..., rotary:]
    if interleaved:
        pairs = x_rot.unflatten(-1, (rotary // 2, 2))
        x1, x2 = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    else:
        x1, x2 = x_rot[..., : rotary // 2], x_rot[..., rotary // 2:]
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((rotated, x_pass), dim=-1)


def rms_norm_heads(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Per-head RMS norm over the last dim (QK-norm), times weight when given."""
    out = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return out * weight.to(out.dtype) if weight is not None else out


_ONNX_FLOAT_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}  # TensorProto element types


def check_gqa_inputs(tensors, attrs) -> None:
    """The op's shape and attribute checks (onnxattn.ops.gqa, so torch and ONNX give the same messages):
    ValueError naming the op and the input. Tensors of other dtypes (float64 for gradcheck, integer masks)
    are checked for shape only."""
    from onnx import helper

    from onnxattn.ops import TensorInfo, gqa

    float_inputs = (0, 1, 2, 3, 4, 7, 8, 11)  # type T
    infos = [None if t is None else TensorInfo(_ONNX_FLOAT_TYPES.get(t.dtype, 0) if i in float_inputs else 0,
                                               tuple(t.shape)) for i, t in enumerate(tensors)]
    kinds = {a.name: a.kind for a in gqa.SPEC.attrs}
    gqa.SPEC.infer_node(infos, [helper.make_attribute(name, int(v) if kinds[name] == "int" else float(v))
                                for name, v in attrs.items()])


def check_gqa_past_lengths(query: torch.Tensor, past_key: torch.Tensor | None,
                           past_lengths: torch.Tensor | None) -> None:
    """past_lengths values, which shape inference cannot see (the kernel's message). Reads the values, so
    it runs on real tensors only (the custom op's eager forward), not while torch traces the backward."""
    if past_lengths is not None and past_key is not None:
        buffer, seq = past_key.shape[2], query.shape[1]
        bad = ((past_lengths < 0) | (past_lengths + seq > buffer)).nonzero()
        if bad.numel():
            b = int(bad[0, 0])
            raise ValueError(f"GroupQueryAttention: past_lengths[{b}] = {int(past_lengths[b])} is out of range: the "
                             f"buffers hold {buffer} tokens, so with {seq} new tokens it must be in "
                             f"[0, {buffer - seq}]")


def gqa_reference(
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
    scale: float = 0.0,
    rope: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    qk_norm_epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager onnxattn::GroupQueryAttention: (output [B,S,Hq*Dv], present_key, present_value), with the
    op's contract (see docs/ops.md): QK-norm -> RoPE -> cache update -> attention (with `sinks`, per-head
    attention-sink logits in each row's softmax denominator)."""
    check_gqa_inputs(
        (query, key, value, past_key, past_value, past_lengths, position_ids, q_norm_weight, k_norm_weight,
         rope_inv_freq, attention_mask, sinks),
        dict(num_heads=num_heads, kv_num_heads=kv_num_heads, causal=causal, window=window,
             attention_chunk=attention_chunk, softcap=softcap, scale=scale, rope=rope, rope_base=rope_base,
             rotary_dim=rotary_dim, rope_interleaved=rope_interleaved, rope_attention_scaling=rope_attention_scaling,
             qk_norm_epsilon=qk_norm_epsilon))
    b, s, _ = query.shape
    ct = compute_dtype(query.dtype)
    split = lambda x, h: x.to(ct).unflatten(-1, (h, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(query, num_heads), split(key, kv_num_heads), split(value, kv_num_heads)
    if q_norm_weight is not None:
        q = rms_norm_heads(q, q_norm_weight, qk_norm_epsilon)
    if k_norm_weight is not None:
        k = rms_norm_heads(k, k_norm_weight, qk_norm_epsilon)

    steps = torch.arange(s, device=query.device)
    if past_lengths is not None:
        past_len = past_lengths.to(torch.int64)[:, None]  # [B, 1]
    else:
        past_len = torch.full((1, 1), past_key.shape[2] if past_key is not None else 0, device=query.device)
    query_pos = (past_len + steps).expand(b, s)  # each query's key position
    if rope:
        rd = rotary_dim or q.shape[-1]
        inv_freq = rope_inv_freq if rope_inv_freq is not None else default_inv_freq(rd, rope_base, query.device)
        positions = position_ids if position_ids is not None else query_pos
        q = apply_rope(q, positions, inv_freq, interleaved=rope_interleaved, attention_scaling=rope_attention_scaling)
        k = apply_rope(k, positions, inv_freq, interleaved=rope_interleaved, attention_scaling=rope_attention_scaling)

    k_new, v_new = k.to(key.dtype), v.to(value.dtype)
    if past_lengths is not None:
        index = (past_len + steps)[:, None, :, None]  # [B, 1, S, 1]
        present_k = past_key.scatter(2, index.expand_as(k_new), k_new)
        present_v = past_value.scatter(2, index.expand_as(v_new), v_new)
    elif past_key is not None:
        present_k, present_v = torch.cat((past_key, k_new), dim=2), torch.cat((past_value, v_new), dim=2)
    else:
        present_k, present_v = k_new, v_new

    total = present_k.shape[2]
    j = torch.arange(total, device=query.device)
    p = query_pos[:, None, :, None]  # [B, 1, S, 1]
    visible = torch.ones(1, 1, 1, total, dtype=torch.bool, device=query.device)
    if causal:
        visible = visible & (j <= p)
    if window > 0:
        visible = visible & (j > p - window)
    if attention_chunk > 0:
        visible = visible & (j // attention_chunk == p // attention_chunk)
    if past_lengths is not None:
        visible = visible & (j < (past_len + s)[:, None, :, None])
    if attention_mask is not None:
        visible = visible & attention_mask.to(torch.bool)[:, None, None, :]
    visible = visible.expand(b, 1, s, total)
    out, lse = sdpa_reference(q, present_k.to(ct), present_v.to(ct), visible, scale=scale, softcap=softcap)
    if sinks is not None:
        # sum_j e^s_j / (sum_j e^s_j + e^sink) = sigmoid(lse - sink); an empty row (lse = -inf) stays zero
        out = out * torch.sigmoid(lse.to(ct) - sinks.to(ct)[:, None])[..., None]
    return out.transpose(1, 2).flatten(2).to(query.dtype), present_k, present_v


# ---- PagedAttention ----


def check_paged_inputs(tensors, attrs) -> None:
    """The op's shape and attribute checks (onnxattn.ops.paged): ValueError naming the op and the input."""
    from onnx import helper

    from onnxattn.ops import TensorInfo, paged

    float_inputs = (0, 1, 2, 3, 4, 9, 10, 12)  # of the op's type T; index inputs are checked for shape only
    infos = [None if t is None else TensorInfo(_ONNX_FLOAT_TYPES.get(t.dtype, 0) if i in float_inputs else 0,
                                               tuple(t.shape)) for i, t in enumerate(tensors)]
    kinds = {a.name: a.kind for a in paged.SPEC.attrs}
    paged.SPEC.infer_node(infos, [helper.make_attribute(name, int(v) if kinds[name] == "int" else float(v))
                                  for name, v in attrs.items()])


def check_paged_layout(tokens: int, num_blocks: int, block_size: int, block_table: torch.Tensor,
                       cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor) -> None:
    """The index inputs' values, with the kernel's messages and in its order: every block the op reads or
    writes exists, and every sequence's tokens fit in the rows and in its block table."""
    name = "PagedAttention"
    cu, lengths = cu_seqlens_q.tolist(), seq_lens.tolist()
    if cu[0] != 0:
        raise ValueError(f"{name}: input 'cu_seqlens_q' must start at 0, got {cu[0]}")
    if cu[-1] != tokens:
        raise ValueError(f"{name}: input 'cu_seqlens_q' must end at the token count T = {tokens}, got {cu[-1]}")
    for b in range(len(lengths)):
        if cu[b + 1] < cu[b]:
            raise ValueError(f"{name}: input 'cu_seqlens_q' must not decrease, got {cu[b]} then {cu[b + 1]} at {b}")
    max_blocks = block_table.shape[1]
    capacity = max_blocks * block_size
    for b, length in enumerate(lengths):
        new = cu[b + 1] - cu[b]
        if length < 0:
            raise ValueError(f"{name}: input 'seq_lens' must be >= 0, got seq_lens[{b}] = {length}")
        if length < new:
            raise ValueError(f"{name}: seq_lens[{b}] = {length} is smaller than the sequence's {new} new tokens")
        if length > capacity:
            raise ValueError(f"{name}: seq_lens[{b}] = {length} is larger than its block table can hold "
                             f"({max_blocks} blocks of {block_size} = {capacity})")
        used = block_table[b, : (length + block_size - 1) // block_size].tolist()
        for i, index in enumerate(used):
            if not 0 <= index < num_blocks:
                raise ValueError(f"{name}: block_table[{b}, {i}] = {index} is out of range [0, {num_blocks})")


def paged_reference(
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
    scale: float = 0.0,
    rope: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    qk_norm_epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eager onnxattn::PagedAttention: (output [T, Hq*Dv], key_cache_out, value_cache_out). Each sequence
    runs as a GroupQueryAttention over its blocks gathered into a contiguous cache (the math the kernel
    does without the gather). Checks its inputs as the kernel does (ValueError naming the op and input)."""
    tensors = (query, key, value, key_cache, value_cache, block_table, cu_seqlens_q, seq_lens, position_ids,
               q_norm_weight, k_norm_weight, rope_inv_freq, sinks)
    check_paged_inputs(tensors, dict(
        num_heads=num_heads, kv_num_heads=kv_num_heads, causal=causal, window=window, attention_chunk=attention_chunk,
        softcap=softcap, scale=scale, rope=rope, rope_base=rope_base, rotary_dim=rotary_dim,
        rope_interleaved=rope_interleaved, rope_attention_scaling=rope_attention_scaling,
        qk_norm_epsilon=qk_norm_epsilon))
    check_paged_layout(query.shape[0], key_cache.shape[0], key_cache.shape[1], block_table, cu_seqlens_q, seq_lens)
    block_size = key_cache.shape[1]
    cu = cu_seqlens_q.to(torch.int64).tolist()
    lengths = seq_lens.to(torch.int64).tolist()
    attrs = dict(num_heads=num_heads, kv_num_heads=kv_num_heads, causal=causal, window=window,
                 attention_chunk=attention_chunk, softcap=softcap, scale=scale, rope=rope, rope_base=rope_base,
                 rotary_dim=rotary_dim, rope_interleaved=rope_interleaved,
                 rope_attention_scaling=rope_attention_scaling, qk_norm_epsilon=qk_norm_epsilon)
    key_out, value_out = key_cache.clone(), value_cache.clone()
    outputs = []
    for b in range(len(lengths)):
        start, end, total = cu[b], cu[b + 1], lengths[b]
        past = total - (end - start)
        blocks = block_table[b, : (total + block_size - 1) // block_size].to(torch.int64)
        # the sequence's cache as [1, Hkv, P, .] (positions < past), then one GroupQueryAttention step
        past_k = key_cache[blocks].flatten(0, 1)[:past].permute(1, 0, 2)[None]
        past_v = value_cache[blocks].flatten(0, 1)[:past].permute(1, 0, 2)[None]
        positions = position_ids[start:end][None] if position_ids is not None else None
        out, present_k, present_v = gqa_reference(
            query[start:end][None], key[start:end][None], value[start:end][None], past_k, past_v, None, positions,
            q_norm_weight, k_norm_weight, rope_inv_freq, None, sinks, **attrs)
        outputs.append(out[0])
        new_positions = torch.arange(past, total, device=blocks.device)
        slots = blocks[new_positions // block_size] * block_size + new_positions % block_size
        key_out.view(-1, *key_cache.shape[2:])[slots] = present_k[0, :, past:].permute(1, 0, 2)
        value_out.view(-1, *value_cache.shape[2:])[slots] = present_v[0, :, past:].permute(1, 0, 2)
    if not outputs:  # an empty batch
        return query.new_zeros((0, num_heads * (value.shape[1] // kv_num_heads))), key_out, value_out
    return torch.cat(outputs, dim=0), key_out, value_out
