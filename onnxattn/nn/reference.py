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
    out = torch.where(empty, torch.zeros_like(row_sum), (probs @ vc) / safe_sum)
    lse = torch.where(empty, torch.full_like(row_sum, float("-inf")), torch.log(safe_sum) + shift)
    return out.to(q.dtype), lse.squeeze(-1).to(torch.float32 if ct != torch.float64 else ct)
