"""BitNet, DiffLlama and Gemma 4 unified's text model onto the reference models, with modules of their own here
around our attention node and MLP (the node itself stays one GroupQueryAttention per layer).

BitNet (float weights, no quantization_config) is Llama with a weightful RMSNorm on the attention output before
o_proj (attn_sub_norm) and on act(gate) * up before down_proj (ffn_sub_norm): SubNormLinear. Its 1.58-bit
checkpoints (quantization_config, BitLinear / AutoBitLinear modules) quantize activations per token to int8 and
weights to ternary values in the forward, which a float graph does not reproduce: refused.

DiffLlama's differential attention (softmax_1 - lambda * softmax_2) V runs as one node: both softmaxes share q and k,
so a node whose value heads are twice as wide, [V1 | V2] per KV head (v_proj's rows duplicated as transformers'
chunk + repeat pairs them), returns [softmax V1 | softmax V2] per query head; DiffOutput then subtracts the second half
of the heads times lambda from the first, RMS-norms (no weight) over 2 * head_dim, scales by 1 - lambda_init and
projects (o_proj). The cache holds those doubled values, which is what the node needs for every later step.

Gemma 4 unified (gemma4_unified_text: Gemma4UnifiedForCausalLM) is Gemma 4's text model without per-layer inputs or
the MoE block; use_bidirectional_attention "vision" (the default) is causal for text, "all" is refused."""

from __future__ import annotations

import dataclasses
import types

import torch
from torch import nn

from onnxattn.models import build
from onnxattn.models._base import RMSNorm, set_linear
from onnxattn.models.hf._common import _copy, _unsupported
from onnxattn.models.hf.gemma4 import _gemma4
from onnxattn.models.hf.llama import _llama
from onnxattn.models.llama import LlamaModel


class SubNormLinear(nn.Module):
    """BitNet's projections that norm their input first: linear(norm(x)) (attn_sub_norm before o_proj, ffn_sub_norm
    before down_proj), RMSNorm with a weight."""

    def __init__(self, linear: nn.Linear, eps: float):
        super().__init__()
        self.norm, self.linear = RMSNorm(linear.in_features, eps), linear

    def forward(self, x):
        return self.linear(self.norm(x))


def _bitnet(hf) -> LlamaModel:
    quantized = sorted({type(m).__name__ for m in hf.modules() if "BitLinear" in type(m).__name__})
    if getattr(hf.config, "quantization_config", None) is not None or quantized:
        raise _unsupported(f"BitNet with 1.58-bit quantization ({', '.join(quantized) or 'quantization_config'}) "
                           f"is not supported: its forward quantizes activations to int8 per token and weights to "
                           f"ternary values, which our float graph does not reproduce (pass the float model)")
    ours = _llama(hf, variant=lambda _: {})  # Llama's fields and weights; the sub-norms below
    eps = hf.config.rms_norm_eps
    with torch.no_grad():
        for mine, theirs in zip(ours.layers, hf.model.layers):
            mine.attn.o_proj = SubNormLinear(mine.attn.o_proj, eps)
            mine.attn.o_proj.norm.weight.copy_(theirs.self_attn.attn_sub_norm.weight)
            mine.mlp.down_proj = SubNormLinear(mine.mlp.down_proj, eps)
            mine.mlp.down_proj.norm.weight.copy_(theirs.mlp.ffn_sub_norm.weight)
    return ours


class DiffOutput(nn.Module):
    """DiffLlama's combination of the node's output [..., heads * 2D] ([softmax V1 | softmax V2] per head) and o_proj:
    the first half of the heads minus lambda times the second, RMS-normed without weight over 2D, times
    1 - lambda_init, then projected. lambda = exp(q1 . k1) - exp(q2 . k2) + lambda_init, computed as transformers'."""

    def __init__(self, heads: int, head_dim: int, proj: nn.Linear, lambda_init: float, eps: float):
        super().__init__()
        self.heads, self.head_dim, self.lambda_init, self.eps = heads, head_dim, lambda_init, eps
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            setattr(self, name, nn.Parameter(torch.zeros(head_dim)))
        self.proj = proj

    def forward(self, x):
        h = x.unflatten(-1, (self.heads, 2 * self.head_dim))
        first, second = h.chunk(2, dim=-2)  # transformers chunks the heads axis: heads [0, H/2) and [H/2, H)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dim=-1, dtype=torch.float32)).to(x.dtype)
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dim=-1, dtype=torch.float32)).to(x.dtype)
        out = first - (lambda_1 - lambda_2 + self.lambda_init) * second
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps)  # nn.RMSNorm without weight
        return self.proj(((1 - self.lambda_init) * out).flatten(-2))


def _diffllama(hf) -> LlamaModel:
    c = hf.config
    if c.num_attention_heads % 2:  # transformers' chunk of the heads axis needs an even count
        raise _unsupported(f"DiffLlama with an odd num_attention_heads ({c.num_attention_heads}) is not supported")
    plain = _llama(hf, variant=lambda _: {})  # Llama's fields, weights and RoPE check; V and o_proj redone below
    head_dim, kv_heads = plain.layers[0].attn.head_dim, plain.config.num_kv_heads
    ours = build(dataclasses.replace(plain.config, v_head_dim=2 * head_dim))
    state = {k: v for k, v in plain.state_dict().items() if ".v_proj." not in k and ".o_proj." not in k}
    missing = ours.load_state_dict(state, strict=False).missing_keys
    if any(".v_proj." not in k and ".o_proj." not in k for k in missing):
        raise _unsupported(f"DiffLlama's weights do not map onto ours (missing {missing})")
    half = kv_heads // 2
    # KV head g of transformers' value_states1 / value_states2 is head g % half / half + g % half (chunk + repeat)
    pairs = [(g % half, half + g % half) for g in range(kv_heads)]
    with torch.no_grad():
        for mine, theirs in zip(ours.layers, hf.model.layers):
            a, t = mine.attn, theirs.self_attn
            rows = t.v_proj.weight.unflatten(0, (kv_heads, head_dim))
            set_linear(a.v_proj, torch.cat([torch.cat([rows[i], rows[j]]) for i, j in pairs]))
            if t.v_proj.bias is not None:
                bias = t.v_proj.bias.unflatten(0, (kv_heads, head_dim))
                a.v_proj.bias.copy_(torch.cat([torch.cat([bias[i], bias[j]]) for i, j in pairs]))
            proj = nn.Linear(c.num_attention_heads * head_dim, c.hidden_size, bias=t.o_proj.bias is not None)
            set_linear(proj, t.o_proj.weight, t.o_proj.bias)
            a.o_proj = DiffOutput(c.num_attention_heads, head_dim, proj, float(t.lambda_init), c.rms_norm_eps)
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                _copy(getattr(a.o_proj, name), getattr(t, name), name)
    return ours.eval()


class _ConfigView:
    """A transformers config with some attributes overridden (the rest read through)."""

    def __init__(self, config, **overrides):
        self._config, self._overrides = config, overrides

    def __getattr__(self, name):
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_config"], name)


def _gemma4_unified(hf):
    c = hf.config
    if c.use_bidirectional_attention == "all":
        raise _unsupported("Gemma 4 unified with use_bidirectional_attention='all' is not supported (causal "
                           "attention only)")
    # "vision" makes only image tokens bidirectional (the multimodal model's mask); text alone is causal. No
    # per-layer inputs nor MoE block: Gemma 4's converter with those off
    view = _ConfigView(c, use_bidirectional_attention=None, hidden_size_per_layer_input=0, enable_moe_block=False)
    return _gemma4(types.SimpleNamespace(config=view, model=hf.model, lm_head=hf.lm_head))
