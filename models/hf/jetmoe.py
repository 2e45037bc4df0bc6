"""JetMoE (JetMoeForCausalLM) -> JetMoeModel here, one GroupQueryAttention node per attention layer with the rest in
torch:
- mixture of attention (MoA): a router picks each token's top-k of num_local_experts attention experts (a softmax over
  the top-k logits); expert e's query projection gives num_key_value_heads heads, so a token's k chosen experts give
  k * num_key_value_heads query heads around the shared key / value heads (kv_proj, keys then values); its output
  projection maps each slot's heads back, weighted by the gates, summed, plus a bias. Every expert's projection runs
  on every token (one MatMul) and the chosen ones are gathered: exact, in standard ONNX ops;
- transformers tiles the key / value heads (query head j * Hkv + i reads key head i) where our op groups them (query
  head h reads key head h // k), so the query heads go to the node as [Hkv, k] and come back in that order;
- the MLP: models.moe's experts (input_linear's rows gate then up, output_linear the down projection, the same
  top-k softmax routing) plus an output bias;
- the blocks' RMSNorms have epsilon 1e-6 whatever rms_norm_eps says (transformers builds them without it); the final
  norm takes rms_norm_eps."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models._base import PlainFrameLM, RMSNorm
from onnxattn.models.hf._common import _activation, _check_rope, _copy, _hf_frequencies, _rope_scaling, _unsupported
from onnxattn.models.moe import MixtureOfExperts
from onnxattn.nn import GroupedQueryAttention, Rope

BLOCK_EPS = 1e-6  # JetMoeRMSNorm's default: the decoder layers' norms are built without rms_norm_eps


@dataclasses.dataclass(frozen=True)
class JetMoeConfig:
    """transformers' JetMoeConfig in our names."""

    vocab_size: int
    hidden: int
    num_layers: int
    num_kv_heads: int
    head_dim: int  # kv_channels
    intermediate: int
    num_experts: int
    experts_per_token: int
    rope: Rope
    rms_norm_eps: float = 1e-6
    activation: str = "silu"


class _RoutedOut(nn.Module):
    """The MoA output projection of the node's output [..., Hkv * k * D] (our head order): each slot's heads through
    its chosen expert's output projection, weighted by the gates, summed, plus `bias`. `route` (chosen experts
    [..., k], gates [..., k]) is set by its JetMoeAttention around each forward."""

    route: tuple[torch.Tensor, torch.Tensor] | None = None

    def __init__(self, cfg: JetMoeConfig):
        super().__init__()
        self.k, self.heads, self.head_dim = cfg.experts_per_token, cfg.num_kv_heads, cfg.head_dim
        self.weight = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden, cfg.num_kv_heads * cfg.head_dim))
        self.bias = nn.Parameter(torch.zeros(cfg.hidden))

    def forward(self, out):
        chosen, gates = self.route
        e, h, _ = self.weight.shape
        slots = out.unflatten(-1, (self.heads, self.k, self.head_dim)).transpose(-3, -2).flatten(-2)  # [..., k, W]
        y = nn.functional.linear(slots, self.weight.flatten(0, 1)).unflatten(-1, (e, h))  # [..., k, E, hidden]
        y = y.gather(-2, chosen[..., None, None].expand(*chosen.shape, 1, h)).squeeze(-2)  # [..., k, hidden]
        return (y * gates.unsqueeze(-1)).sum(-2) + self.bias


class JetMoeAttention(GroupedQueryAttention):
    """MoA: routed query projections (`q_experts` [E, Hkv * D, hidden], `router` [E, hidden]) and the shared
    k_proj / v_proj into the node, its output through the routed output projection (a _RoutedOut)."""

    def __init__(self, cfg: JetMoeConfig, layer_idx: int):
        super().__init__(cfg.hidden, cfg.num_kv_heads * cfg.experts_per_token, cfg.num_kv_heads,
                         head_dim=cfg.head_dim, rope=cfg.rope, layer_idx=layer_idx)
        del self.q_proj
        self.k = cfg.experts_per_token
        self.router = nn.Parameter(torch.zeros(cfg.num_experts, cfg.hidden))
        self.q_experts = nn.Parameter(torch.zeros(cfg.num_experts, self.kv_width, cfg.hidden))
        self.o_proj = _RoutedOut(cfg)

    def project(self, x):
        chosen, _ = self.o_proj.route
        e, w, _ = self.q_experts.shape
        q = nn.functional.linear(x, self.q_experts.flatten(0, 1)).unflatten(-1, (e, w))  # [..., E, W]
        q = q.gather(-2, chosen[..., None].expand(*chosen.shape, w))  # [..., k, W]: transformers' heads [k, Hkv]
        q = q.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(-3, -2).flatten(-3)  # ours [Hkv, k]
        return q, self.k_proj(x), self.v_proj(x)

    def forward(self, x, **kwargs):
        logits = nn.functional.linear(x, self.router).float()
        top, chosen = logits.topk(self.k, dim=-1)
        self.o_proj.route = (chosen, torch.softmax(top, dim=-1).to(x.dtype))
        try:
            return super().forward(x, **kwargs)
        finally:
            self.o_proj.route = None


class JetMoeMLP(MixtureOfExperts):
    """models.moe's experts with softmax routing over the top-k logits, plus an output `bias`."""

    def __init__(self, cfg: JetMoeConfig):
        super().__init__(cfg.hidden, cfg.num_experts, cfg.experts_per_token, cfg.intermediate, cfg.activation,
                         scoring="softmax", norm_topk=True)
        self.bias = nn.Parameter(torch.zeros(cfg.hidden))

    def forward(self, x):
        return super().forward(x) + self.bias


class JetMoeBlock(nn.Module):
    def __init__(self, cfg: JetMoeConfig, layer_idx: int):
        super().__init__()
        self.input_norm, self.post_attn_norm = RMSNorm(cfg.hidden, BLOCK_EPS), RMSNorm(cfg.hidden, BLOCK_EPS)
        self.attn, self.mlp = JetMoeAttention(cfg, layer_idx), JetMoeMLP(cfg)

    def forward(self, x, **kv):
        a, present = self.attn(self.input_norm(x), return_present=True, **kv)
        x = x + a
        return x + self.mlp(self.post_attn_norm(x)), present


class JetMoeModel(PlainFrameLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]."""

    def __init__(self, cfg: JetMoeConfig):
        super().__init__(cfg, JetMoeBlock)


def _config(hf) -> JetMoeConfig:
    c = hf.config
    if c.num_attention_heads != c.num_key_value_heads * c.num_experts_per_tok:
        raise _unsupported(f"JetMoE with num_attention_heads {c.num_attention_heads} is not supported: its "
                           f"attention runs num_key_value_heads x num_experts_per_tok query heads")
    scaling = _rope_scaling(c.rope_parameters, c.max_position_embeddings)
    if scaling is not None and scaling.kind == "longrope":
        raise _unsupported("JetMoE with LongRoPE is not supported")
    return JetMoeConfig(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_layers=c.num_hidden_layers,
        num_kv_heads=c.num_key_value_heads, head_dim=c.kv_channels, intermediate=c.intermediate_size,
        num_experts=c.num_local_experts, experts_per_token=c.num_experts_per_tok,
        rope=Rope(c.rope_parameters["rope_theta"], scaling=scaling), rms_norm_eps=c.rms_norm_eps,
        activation=_activation(c.activation_function))


def _jetmoe(hf) -> JetMoeModel:
    cfg = _config(hf)
    ours = JetMoeModel(cfg)
    src = hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        _copy(ours.lm_head.weight, hf.lm_head.weight, "the lm_head weight")
        ours.norm.load_state_dict(src.norm.state_dict())
        for mine, theirs in zip(ours.layers, src.layers):
            a, t = mine.attn, theirs.self_attention
            k, v = t.kv_proj.weight.chunk(2)
            _copy(a.k_proj.weight, k, "the kv_proj weight (keys)")
            _copy(a.v_proj.weight, v, "the kv_proj weight (values)")
            _copy(a.router, t.experts.router.layer.weight, "the attention router weight")
            _copy(a.q_experts, t.experts.input_linear.weight, "the attention experts' input_linear")
            _copy(a.o_proj.weight, t.experts.output_linear.weight, "the attention experts' output_linear")
            _copy(a.o_proj.bias, t.experts.bias, "the attention experts' bias")
            m, x = mine.mlp, theirs.mlp
            _copy(m.router, x.router.layer.weight, "the MoE router weight")
            _copy(m.gate_up_proj, x.input_linear.weight, "the experts' input_linear")  # [E, 2I, H], gate rows first
            _copy(m.down_proj, x.output_linear.weight, "the experts' output_linear")
            _copy(m.bias, x.bias, "the MoE bias")
            mine.input_norm.load_state_dict(theirs.input_layernorm.state_dict())
            mine.post_attn_norm.load_state_dict(theirs.post_attention_layernorm.state_dict())
    short, long = _hf_frequencies(hf.model.rotary_emb)  # long: None (LongRoPE is refused)
    _check_rope(ours, short, hf.model.rotary_emb.attention_scaling, "jetmoe", long)
    return ours.eval()
