"""HRM-Text (Sapient's Hierarchical Reasoning Model for text) -> HrmTextModel here, one GroupQueryAttention node per
attention call with the rest in torch:
- two weight-shared stacks, L and H, of num_layers_per_stack pre-norm blocks each (weightless RMS norms, a final one
  per stack); per H cycle the L stack runs L_cycles times on z_L + z_H, then the H stack once on z_H + z_L, from
  z_H = the token embeddings times embedding_scale and z_L = the learned z_L_init; the logits are lm_head(z_H);
- every pass unrolled: H_cycles x (L_cycles + 1) passes of a stack's layers, each pass's layers sharing the stack's
  weights and keeping a KV cache of their own, at transformers' cache slots (pass * num_layers_per_stack + layer);
- attention with as many KV heads as query heads, RoPE on the node, the node's output times
  sigmoid(gate_proj(x)) per channel before o_proj (LlamaAttention's output gate, gate_proj biased with the others).
prefix_lm (its default) only acts on token_type_ids (a bidirectional block over the tokens marked 1, in the
prefill); without them transformers runs causally, and so does our graph, which takes no token_type_ids (our nodes
are causal or not as a whole). So both settings convert; a prefix prompt is not expressible in the exported graph."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models._base import CausalLM, SwiGLU
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _hf_frequencies, _rope_scaling, _unsupported
from onnxattn.models.llama import LlamaAttention
from onnxattn.nn import Rope, RopeScaling

STACKS = ("low", "high")  # the L stack updates z_L, the H stack z_H


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS norm over the last dim in float32 (as transformers' HrmTextRMSNorm)."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@dataclasses.dataclass(frozen=True)
class HrmTextConfig:
    """transformers' HrmTextConfig in our names (layers_per_stack: its num_layers_per_stack, the real depth)."""

    vocab_size: int
    hidden: int
    num_heads: int
    head_dim: int
    intermediate: int
    layers_per_stack: int
    h_cycles: int
    l_cycles: int
    embedding_scale: float
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    activation: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def passes(self) -> list[str]:
        """The stack each pass runs, in order: per H cycle l_cycles L passes, then one H pass."""
        return [stack for _ in range(self.h_cycles) for stack in ["low"] * self.l_cycles + ["high"]]


class HrmTextBlock(nn.Module):
    """Pre-norm attention and MLP around residuals. The first block of a pass (`first`) starts from z_L + z_H (from
    `states`, which the model's blocks share); the last one (`last`) ends with its stack's final norm, giving its
    stack's new state, which it stores."""

    def __init__(self, cfg: HrmTextConfig, stack: str, layer_idx: int, states: dict, first: bool, last: bool):
        super().__init__()
        self.attn = LlamaAttention(cfg.hidden, cfg.num_heads, cfg.num_heads, head_dim=cfg.head_dim,
                                   bias=cfg.attention_bias, rope=Rope(cfg.rope_theta, scaling=cfg.rope_scaling),
                                   layer_idx=layer_idx, output_gate=True)
        # transformers' gate_proj has a bias where the other projections have one (LlamaAttention's never)
        self.attn.gate_proj = nn.Linear(cfg.hidden, self.attn.out_width, bias=cfg.attention_bias)
        self.mlp = SwiGLU(cfg.hidden, cfg.intermediate, cfg.mlp_bias, cfg.activation)
        self.eps, self.stack, self.states, self.first, self.last = cfg.rms_norm_eps, stack, states, first, last

    def share(self, other: HrmTextBlock) -> None:
        """Takes `other`'s weights (the same stack layer in an earlier pass), keeping its own cache slot."""
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"):
            setattr(self.attn, name, getattr(other.attn, name))
        self.mlp = other.mlp

    def forward(self, x, **kv):
        if self.first:
            x = self.states["low"] + self.states["high"]
        a, present = self.attn(rms_norm(x, self.eps), return_present=True, **kv)
        x = x + a
        x = x + self.mlp(rms_norm(x, self.eps))
        if self.last:
            x = self.states[self.stack] = rms_norm(x, self.eps)
        return x, present


class HrmTextModel(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]; its layers are the unrolled passes
    (cfg.passes), layers_per_stack each, the passes of a stack sharing its weights."""

    def __init__(self, cfg: HrmTextConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.z_L_init = nn.Parameter(torch.zeros(cfg.hidden))
        self.states: dict[str, torch.Tensor] = {}  # z_L and z_H between passes, one forward's
        n, layers, first_copy = cfg.layers_per_stack, [], {}
        for p, stack in enumerate(cfg.passes):
            for j in range(n):
                layers.append(HrmTextBlock(cfg, stack, p * n + j, self.states, j == 0, j == n - 1))
                if (stack, j) in first_copy:
                    layers[-1].share(first_copy[stack, j])
                else:
                    first_copy[stack, j] = layers[-1]
        self.layers = nn.ModuleList(layers)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)

    def embed(self, input_ids, positions):
        high = self.embed_tokens(input_ids) * self.config.embedding_scale
        self.states.update(high=high, low=self.z_L_init.to(high.dtype).expand_as(high))
        return high

    def head(self, x):
        self.states.clear()  # x is the last H pass's z_H
        return self.lm_head(x)


def _config(hf) -> HrmTextConfig:
    c = hf.config
    n = c.num_layers_per_stack
    if n != len(hf.model.L_module.layers) or n != len(hf.model.H_module.layers):
        raise _unsupported(f"HRM-Text with num_layers_per_stack {n} and stacks of {len(hf.model.L_module.layers)} / "
                           f"{len(hf.model.H_module.layers)} layers is not supported")
    if n < 1 or c.H_cycles < 1 or c.L_cycles < 0:
        raise _unsupported(f"HRM-Text with num_layers_per_stack {n}, H_cycles {c.H_cycles} and L_cycles {c.L_cycles} "
                           f"is not supported (it runs no attention layer)")
    params = c.rope_parameters
    return HrmTextConfig(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_heads=c.num_attention_heads, head_dim=c.head_dim,
        intermediate=c.intermediate_size, layers_per_stack=n, h_cycles=c.H_cycles, l_cycles=c.L_cycles,
        embedding_scale=float(c.embedding_scale), rope_theta=params["rope_theta"],
        rope_scaling=_rope_scaling(params, c.max_position_embeddings), rms_norm_eps=c.rms_norm_eps,
        activation=_activation(c.hidden_act), attention_bias=bool(c.attention_bias), mlp_bias=bool(c.mlp_bias))


def _hrm_text(hf) -> HrmTextModel:
    cfg = _config(hf)
    ours = HrmTextModel(cfg)
    src = hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        _copy(ours.z_L_init, src.z_L_init, "z_L_init")
        _copy(ours.lm_head.weight, hf.lm_head.weight, "the lm_head weight")
        n = cfg.layers_per_stack
        for stack, theirs in (("low", src.L_module), ("high", src.H_module)):
            if stack not in cfg.passes:  # L_cycles 0: the L stack never runs
                continue
            p = cfg.passes.index(stack)  # the stack's first pass holds its weights
            for j, layer in enumerate(theirs.layers):
                mine, t = ours.layers[p * n + j], layer.self_attn
                for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"):
                    _copy(getattr(mine.attn, name).weight, getattr(t, name).weight, f"the {name} weight")
                    if getattr(mine.attn, name).bias is not None:
                        _copy(getattr(mine.attn, name).bias, getattr(t, name).bias, f"the {name} bias")
                mine.mlp.load_state_dict(layer.mlp.state_dict())
    short, long = _hf_frequencies(src.rotary_emb)
    _check_rope(ours, short, src.rotary_emb.attention_scaling, "hrm_text's layers", long)
    return ours.eval()
