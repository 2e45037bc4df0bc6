"""GroupedQueryAttention.forward in plain torch ops, for the whole-model benchmarks' stock path
(bench_models_cpu.py, bench_models_cuda.py): torch.onnx.export of a model whose attention layers run this emits
stock ONNX ops only."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.nn import GroupedQueryAttention, apply_rope


def stock_attention(self: GroupedQueryAttention, x, *, cache=None, past_key=None, past_value=None, return_present=False,
                    **unused):
    """GroupedQueryAttention.forward in plain torch ops (concatenation cache, no QK-norm / window), so
    torch.onnx.export emits stock ONNX ops only. RoPE in float32, rounded back to the model's dtype."""
    if cache is not None:
        past_key, past_value = cache.get(self.layer_idx)
    b, s, _ = x.shape
    q, k, v = (t.unflatten(-1, (h, self.head_dim)).transpose(1, 2)
               for t, h in zip(self.project(x), (self.num_query_heads, self.num_kv_heads, self.num_kv_heads)))
    past = 0 if past_key is None else past_key.shape[2]
    steps = torch.arange(s, device=x.device) + past
    inv_freq = self.rope.frequencies(self.head_dim)[0].to(x.device)
    q, k = (apply_rope(t, steps[None].expand(b, s), inv_freq).to(t.dtype) for t in (q, k))
    if past_key is not None:
        k, v = torch.cat([past_key, k], 2), torch.cat([past_value, v], 2)
    if cache is not None:
        cache.update(self.layer_idx, k, v)
    group = self.num_query_heads // self.num_kv_heads
    mask = torch.arange(k.shape[2], device=x.device)[None, :] <= steps[:, None]  # bottom-right causal
    out = nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1),
                                                     attn_mask=mask)
    y = self.o_proj(out.transpose(1, 2).flatten(2))
    return (y, (k, v)) if return_present else y
