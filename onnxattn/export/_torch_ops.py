"""torch.library custom ops, one per onnxattn ONNX op: opaque to torch.export (so the exporter sees one
call per use), computed eagerly by onnxattn.nn.reference, differentiable through that same math."""

from __future__ import annotations

from typing import Optional

import torch

from onnxattn.nn.reference import sdpa_reference

_SDPA_ATTRS = ("causal", "window", "band", "scale", "softcap")


def _sdpa_backward_factory(with_lse: bool):
    def setup_context(ctx, inputs, output):
        q, k, v, attn_mask, *attrs = inputs
        ctx.save_for_backward(q, k, v, attn_mask)
        ctx.attrs = dict(zip(_SDPA_ATTRS, attrs))

    def backward(ctx, *grads):
        q, k, v, attn_mask = ctx.saved_tensors
        differentiable = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.is_floating_point() else [])
        wanted = [t.detach().requires_grad_(needs) for t, needs in zip(differentiable, ctx.needs_input_grad)]
        mask = wanted[3] if len(wanted) > 3 else attn_mask
        with torch.enable_grad():
            out, lse = sdpa_reference(*wanted[:3], mask, **ctx.attrs)
            outputs, out_grads = [out], [grads[0]]
            if with_lse:
                outputs.append(lse)
                out_grads.append(grads[1])
            inputs = [t for t in wanted if t.requires_grad]
            computed = iter(torch.autograd.grad(outputs, inputs, out_grads, allow_unused=True)) if inputs else iter(())
        result = [next(computed) if t.requires_grad else None for t in wanted]
        result += [None] * (4 - len(result))  # q, k, v, attn_mask
        return (*result, *([None] * len(_SDPA_ATTRS)))

    return setup_context, backward


@torch.library.custom_op("onnxattn::scaled_dot_product_attention", mutates_args=())
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    causal: bool,
    window: int,
    band: int,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    return sdpa_reference(q, k, v, attn_mask, causal=causal, window=window, band=band, scale=scale, softcap=softcap)[0]


@scaled_dot_product_attention.register_fake
def _(q, k, v, attn_mask, causal, window, band, scale, softcap):
    return q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))


@torch.library.custom_op("onnxattn::scaled_dot_product_attention_lse", mutates_args=())
def scaled_dot_product_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor],
    causal: bool,
    window: int,
    band: int,
    scale: float,
    softcap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    return sdpa_reference(q, k, v, attn_mask, causal=causal, window=window, band=band, scale=scale, softcap=softcap)


@scaled_dot_product_attention_lse.register_fake
def _(q, k, v, attn_mask, causal, window, band, scale, softcap):
    out = q.new_empty((q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    return out, q.new_empty((q.shape[0], q.shape[1], q.shape[2]), dtype=lse_dtype)


for _op, _with_lse in ((scaled_dot_product_attention, False), (scaled_dot_product_attention_lse, True)):
    _setup, _backward = _sdpa_backward_factory(_with_lse)
    _op.register_autograd(_backward, setup_context=_setup)
