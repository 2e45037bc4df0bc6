"""Dory (NVIDIA Nemotron-Labs Dory, an nGPT-style normalized transformer with a recurrent middle section) ->
DoryModel here, one GroupQueryAttention node per attention layer with the rest in torch:
- every norm is an L2 norm onto the unit sphere (x * rsqrt(sum(x^2) + 1e-6)), the blocks interpolate towards the
  normed attention / MLP output at learned per-channel rates (|lambda_1|, |lambda_2|) instead of adding it;
- q and k L2-normed per head and rotated in torch before the node (which gets rope=0 and no QK-norm; its cache holds
  K normed and rotated, as transformers'), q then scaled per head and channel by (sqk * sqk_scale)^2; the node's
  output times sigmoid(gate_proj(x) * (s_gate * s_gate_scale)^2), L2-normed, then o_proj;
- the MLP's gate / up scaled per channel (suv_gate, suv_up), its product L2-normed before down_proj; the logits
  scaled per token id (logit_scale);
- the recurrent section (n_recurrent_layers run n_recurrent_loops times, each loop from the input section's normed
  output added to the normed state) unrolled: each loop's layers share the weights and keep a KV cache of their own,
  as transformers' recurrent_kv_cache_mode "per_loop". "last_loop" (one cache per recurrent layer, written by the last
  loop and read by the earlier ones) is refused: our layers each read and write a cache of their own."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from onnxattn.models._base import ACTIVATIONS, CausalLM
from onnxattn.models.hf._common import _activation, _copy, _rope_scaling, _unsupported
from onnxattn.nn import GroupedQueryAttention, Rope
from onnxattn.nn.reference import apply_rope

EPS = 1e-6  # DoryL2Norm's, fixed
LAYER_KINDS = ("full_attention", "sliding_attention")


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Onto the unit sphere over the last dim, in float32 (as transformers' DoryL2Norm)."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) + EPS)).to(x.dtype)


@dataclasses.dataclass(frozen=True)
class DoryConfig:
    """transformers' DoryConfig in our names; its nGPT scale factors (initializer_range and friends) as given."""

    vocab_size: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    layer_types: tuple[str, ...]  # one per distinct layer (the recurrent ones once)
    n_input_layers: int
    n_recurrent_layers: int
    n_recurrent_loops: int
    sliding_window: int
    rope: dict  # layer kind -> (theta, RopeScaling or None)
    activation: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    sqk_scale: float = 1.0  # q times (sqk * sqk_scale)^2
    s_gate_scale: float = 1.0  # the gate's logits times (s_gate * s_gate_scale)^2
    suv_scale: float = 1.0  # gate / up times suv_gate / suv_up * suv_scale
    lambda_scale: float = 1.0  # the rates |lambda * lambda_scale|
    logit_scale_factor: float = 1.0  # logits times logit_scale * logit_scale_factor

    @property
    def unrolled(self) -> list[int]:
        """Our layers -> the transformers layer each runs (the recurrent ones once per loop)."""
        start, end = self.n_input_layers, self.n_input_layers + self.n_recurrent_layers
        return [*range(start), *[i for _ in range(self.n_recurrent_loops) for i in range(start, end)],
                *range(end, len(self.layer_types))]


class _GatedNormedLinear(nn.Linear):
    """o_proj of L2-norm(x * gate), `gate` set by its DoryAttention around each forward."""

    gate: torch.Tensor | None = None

    def forward(self, x):
        return super().forward(l2_norm(x * self.gate))


class DoryAttention(GroupedQueryAttention):
    """q / k L2-normed per head and rotated in torch at the node's positions, q scaled per head and channel; the
    node without RoPE or QK-norm; its output gated and L2-normed before o_proj (a _GatedNormedLinear)."""

    def __init__(self, cfg: DoryConfig, kind: str, layer_idx: int):
        super().__init__(cfg.hidden, cfg.num_heads, cfg.num_kv_heads, head_dim=cfg.head_dim, bias=cfg.attention_bias,
                         window=cfg.sliding_window if kind == "sliding_attention" else 0, rope=None,
                         layer_idx=layer_idx)
        theta, scaling = cfg.rope[kind]
        inv_freq, self.torch_rope_scaling = Rope(theta, scaling=scaling).frequencies(cfg.head_dim)
        # the name ends in rope_inv_freq so that models._base.cast_model keeps it float32
        self.register_buffer("torch_rope_inv_freq", inv_freq, persistent=False)
        self.o_proj = _GatedNormedLinear(self.out_width, self.model_dim, bias=cfg.attention_bias)
        self.gate_proj = nn.Linear(cfg.hidden, self.q_width, bias=False)
        self.sqk = nn.Parameter(torch.ones(self.q_width))
        self.s_gate = nn.Parameter(torch.ones(self.q_width))
        self.sqk_scale, self.s_gate_scale = cfg.sqk_scale, cfg.s_gate_scale

    def share(self, other: DoryAttention) -> None:
        """Takes `other`'s weights (a later loop's copy of a recurrent layer), keeping its own cache slot."""
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "sqk", "s_gate"):
            setattr(self, name, getattr(other, name))

    def _rotate(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        """t [..., S, heads * head_dim] (or paged [T, ...]) L2-normed per head, then rotated at the node's positions."""
        h = l2_norm(t.unflatten(-1, (heads, self.head_dim))).transpose(-3, -2)  # [B, H, S, D] or paged [H, T, D]
        positions = self.token_positions()
        paged = h.dim() == 3
        if paged:
            h, positions = h[None], positions.reshape(1, -1)
        h = apply_rope(h, positions, self.torch_rope_inv_freq, attention_scaling=self.torch_rope_scaling).to(t.dtype)
        return (h[0] if paged else h).transpose(-3, -2)  # [..., S, heads, head_dim]

    def project(self, x):
        q, k, v = super().project(x)
        scale = (self.sqk * self.sqk_scale).view(self.num_query_heads, self.head_dim).square()
        q = (self._rotate(q, self.num_query_heads) * scale).flatten(-2)
        return q, self._rotate(k, self.num_kv_heads).flatten(-2), v

    def forward(self, x, **kwargs):
        self.o_proj.gate = torch.sigmoid(self.gate_proj(x) * (self.s_gate * self.s_gate_scale).square())
        try:
            return super().forward(x, **kwargs)
        finally:
            self.o_proj.gate = None


class DoryMLP(nn.Module):
    def __init__(self, cfg: DoryConfig):
        super().__init__()
        h, i = cfg.hidden, cfg.intermediate
        self.gate_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=cfg.mlp_bias)
        self.suv_gate, self.suv_up = nn.Parameter(torch.ones(i)), nn.Parameter(torch.ones(i))
        self.act, self.suv_scale = ACTIVATIONS[cfg.activation], cfg.suv_scale

    def forward(self, x):
        gate = self.gate_proj(x) * (self.suv_gate * self.suv_scale)
        up = self.up_proj(x) * (self.suv_up * self.suv_scale)
        return self.down_proj(l2_norm(self.act(gate) * up))


class DoryBlock(nn.Module):
    """h = norm(x); h + |lambda_1| (norm(attn(h)) - h); then the same with the MLP on its norm. A recurrent loop's
    first block (`loop` = (first loop, last loop)) starts from norm(x) + the input section's normed output, which the
    first loop's stores in `carry` (a dict the model's blocks share) and the last one's drops."""

    def __init__(self, cfg: DoryConfig, kind: str, layer_idx: int, carry: dict, loop: tuple[bool, bool] | None):
        super().__init__()
        self.attn, self.mlp = DoryAttention(cfg, kind, layer_idx), DoryMLP(cfg)
        self.lambda_1 = nn.Parameter(torch.ones(cfg.hidden))
        self.lambda_2 = nn.Parameter(torch.ones(cfg.hidden))
        self.lambda_scale, self.carry, self.loop = cfg.lambda_scale, carry, loop

    def share(self, other: DoryBlock) -> None:
        self.attn.share(other.attn)
        self.mlp, self.lambda_1, self.lambda_2 = other.mlp, other.lambda_1, other.lambda_2

    def forward(self, x, **kv):
        if self.loop is not None:
            first, last = self.loop
            if first:
                self.carry["input"] = l2_norm(x)
            x = l2_norm(x) + self.carry["input"]
            if last:
                del self.carry["input"]
        h = l2_norm(x)
        a, present = self.attn(h, return_present=True, **kv)
        h = h + (self.lambda_1 * self.lambda_scale).abs() * (l2_norm(a) - h)
        h = l2_norm(h)
        return h + (self.lambda_2 * self.lambda_scale).abs() * (l2_norm(self.mlp(h)) - h), present


class DoryModel(CausalLM):
    """token ids [B, S] (+ KV cache, see CausalLM) -> logits [B, S, vocab]; cfg.unrolled says which transformers layer
    each of ours runs."""

    def __init__(self, cfg: DoryConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        carry, start, n, loops = {}, cfg.n_input_layers, cfg.n_recurrent_layers, cfg.n_recurrent_loops
        layers, first_copy = [], {}
        for ours, theirs in enumerate(cfg.unrolled):
            loop = (ours - start) // n if start <= ours < start + n * loops else None
            entry = (loop == 0, loop == loops - 1) if loop is not None and ours == start + loop * n else None
            layers.append(DoryBlock(cfg, cfg.layer_types[theirs], ours, carry, entry))
            if theirs in first_copy:
                layers[-1].share(first_copy[theirs])
            else:
                first_copy[theirs] = layers[-1]
        self.layers = nn.ModuleList(layers)
        self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.ones(cfg.vocab_size))

    def embed(self, input_ids, positions):
        return self.embed_tokens(input_ids)

    def head(self, x):
        logits = self.lm_head(l2_norm(x)).float()  # scaled in float32, as transformers' DoryLMHead
        return (logits * (self.logit_scale.float() * self.config.logit_scale_factor)).to(x.dtype)


def _config(hf) -> DoryConfig:
    c = hf.config
    if c.recurrent_kv_cache_mode != "per_loop":
        raise _unsupported(f"Dory with recurrent_kv_cache_mode {c.recurrent_kv_cache_mode!r} is not supported: its "
                           f"earlier recurrent loops attend over the last loop's cached keys and values without "
                           f"writing their own, and our attention layers each read and write a cache of their own "
                           f"(per_loop is supported)")
    if not c.n_recurrent_layers:  # its loops would only re-add the input section's output, without a layer
        raise _unsupported("Dory without recurrent layers (n_recurrent_layers 0) is not supported")
    types = tuple(c.layer_types)
    if set(types) - set(LAYER_KINDS):
        raise _unsupported(f"Dory with layer_types {list(types)} is not supported (known: {LAYER_KINDS})")
    if "sliding_attention" in types and not c.sliding_window:
        raise _unsupported(f"Dory with sliding_window {c.sliding_window} and sliding_attention layers is not "
                           f"supported (transformers cannot run it either)")
    head_dim = c.head_dim or c.hidden_size // c.num_attention_heads
    rope = {}
    for kind in set(types):
        params = c.rope_parameters[kind]
        scaling = _rope_scaling(params, c.max_position_embeddings)
        if scaling is not None and scaling.kind == "longrope":  # its factor sets switch per forward
            raise _unsupported("Dory with LongRoPE is not supported (RoPE in torch before the node takes one set)")
        rope[kind] = (params["rope_theta"], scaling)
    r = c.initializer_range
    return DoryConfig(
        vocab_size=c.vocab_size, hidden=c.hidden_size, num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads or c.num_attention_heads, head_dim=head_dim,
        intermediate=c.intermediate_size, layer_types=types, n_input_layers=c.n_input_layers,
        n_recurrent_layers=c.n_recurrent_layers, n_recurrent_loops=c.n_recurrent_loops,
        sliding_window=c.sliding_window or 0, rope=rope, activation=_activation(c.hidden_act),
        attention_bias=bool(c.attention_bias), mlp_bias=bool(c.mlp_bias),
        # as DoryAttention, DoryMLP, DoryDecoderLayer and DoryLMHead set them
        sqk_scale=head_dim ** 0.5 / r, s_gate_scale=c.hidden_size ** 0.25 / r, suv_scale=c.hidden_size ** 0.5,
        lambda_scale=c.ngpt_alpha_init / r, logit_scale_factor=1 / r)


def _check_rope(ours: DoryModel, hf) -> None:
    rotary = hf.model.rotary_emb
    for layer, kind in zip(ours.layers, (ours.config.layer_types[i] for i in ours.config.unrolled)):
        theirs = getattr(rotary, f"{kind}_original_inv_freq")
        mine, scaling = layer.attn.torch_rope_inv_freq, layer.attn.torch_rope_scaling
        if mine.shape != theirs.shape or not torch.allclose(mine, theirs.float().cpu(), rtol=1e-5) or \
                abs(scaling - getattr(rotary, f"{kind}_attention_scaling")) > 1e-6:
            raise _unsupported(f"the RoPE frequencies of dory's {kind} layers differ from the transformers model's")


def _dory(hf) -> DoryModel:
    cfg = _config(hf)
    ours = DoryModel(cfg)
    src = hf.model
    with torch.no_grad():
        ours.embed_tokens.weight.copy_(src.embed_tokens.weight)
        _copy(ours.lm_head.weight, hf.lm_head.weight, "the lm_head weight")
        _copy(ours.logit_scale, hf.lm_head.logit_scale, "the logit_scale")
        done = set()
        for mine, theirs_idx in zip(ours.layers, cfg.unrolled):
            if theirs_idx in done:  # a later loop's copy: its weights are the first copy's
                continue
            done.add(theirs_idx)
            theirs = src.layers[theirs_idx]
            a, t = mine.attn, theirs.self_attn
            for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"):
                _copy(getattr(a, name).weight, getattr(t, name).weight, f"the {name} weight")
                if getattr(a, name).bias is not None:
                    _copy(getattr(a, name).bias, getattr(t, name).bias, f"the {name} bias")
            for name in ("sqk", "s_gate"):
                _copy(getattr(a, name), getattr(t, name), f"the attention's {name}")
            mine.mlp.load_state_dict({k: v for k, v in theirs.mlp.state_dict().items()})
            for name in ("lambda_1", "lambda_2"):
                _copy(getattr(mine, name), getattr(theirs, name), f"the layer's {name}")
    _check_rope(ours, hf)
    return ours.eval()
