"""Attention layers of decoder LLMs and encoders: projections around one GroupQueryAttention node."""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.nn import functional as F
from onnxattn.nn.kv_cache import KVCache
from onnxattn.nn.paged_cache import PagedStep
from onnxattn.nn.reference import apply_rope, rms_norm_heads
from onnxattn.nn.rope import Rope, TokenPositions, longrope_frequencies, node_positions, positions_from_boundaries


def qk_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Per-head RMS norm over the head dim of x [..., D] (Qwen3/Gemma 3 QK-norm), times weight if given."""
    return rms_norm_heads(x, weight, eps)


def whole_tensor_rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The seed's variant: x divided by the RMS of the whole tensor (one scalar for all elements)."""
    return x * torch.rsqrt(x.pow(2).mean() + eps)


class GroupedQueryAttention(TokenPositions, nn.Module):
    """Q/K/V projections, one onnxattn::GroupQueryAttention node (QK-norm, RoPE, KV cache, attention),
    output projection. Input x [B, S, model_dim] -> [B, S, model_dim].

    Options: `num_kv_heads` (GQA; 1 = MQA), `head_dim` (may differ from model_dim / heads), `bias`,
    `causal` (False: bidirectional, BERT), `window` (causal sliding window), `attention_chunk` (Llama 4's chunked
    attention: a query sees only the keys of its own chunk of that many positions), `softcap`, `scale`,
    `rope` (a Rope, or None for no rotary embedding, e.g. GPT-2/BERT), `max_positions` (positions must be
    below it), `qk_norm`, `merged_qkv` (one projection for Q, K and V: one MatMul + Split when exported),
    `sinks` (a learned attention-sink logit per query head, GPT-OSS: the parameter `sinks` [num_query_heads],
    in the space of the scaled scores), `layer_idx` (this layer's slot in a KVCache or a PagedStep),
    `v_head_dim` (the value heads' width Dv, None: head_dim; MiMo-V2-Flash's 128 beside a query / key head of 192:
    v_proj gives num_kv_heads * Dv, the node's output and o_proj's input are num_query_heads * Dv wide)."""

    def __init__(
        self,
        model_dim: int,
        num_query_heads: int,
        num_kv_heads: int | None = None,
        *,
        head_dim: int | None = None,
        bias: bool = False,
        out_bias: bool | None = None,
        causal: bool = True,
        window: int = 0,
        attention_chunk: int = 0,
        softcap: float = 0.0,
        scale: float | None = None,
        rope: Rope | None = Rope(),
        max_positions: int | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        merged_qkv: bool = False,
        sinks: bool = False,
        layer_idx: int = 0,
        v_head_dim: int | None = None,
    ):
        super().__init__()
        num_kv_heads = num_kv_heads or num_query_heads
        if num_query_heads < 1 or num_kv_heads < 1 or num_query_heads % num_kv_heads:
            raise ValueError(f"GroupedQueryAttention: num_query_heads ({num_query_heads}) must be a positive "
                             f"multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if model_dim % num_query_heads:
                raise ValueError(f"GroupedQueryAttention: model_dim ({model_dim}) is not divisible by "
                                 f"num_query_heads ({num_query_heads}); pass head_dim")
            head_dim = model_dim // num_query_heads
        if v_head_dim is not None and v_head_dim < 1:
            raise ValueError(f"GroupedQueryAttention: v_head_dim must be >= 1 (None: head_dim), got {v_head_dim}")
        v_head_dim = head_dim if v_head_dim is None else v_head_dim
        if window < 0:
            raise ValueError(f"GroupedQueryAttention: window must be >= 0 (0 = off), got {window}")
        if attention_chunk < 0:
            raise ValueError(f"GroupedQueryAttention: attention_chunk must be >= 0 (0 = off), got {attention_chunk}")
        self.attention_chunk = attention_chunk
        self.model_dim, self.num_query_heads, self.num_kv_heads, self.head_dim = (
            model_dim, num_query_heads, num_kv_heads, head_dim)
        self.v_head_dim = v_head_dim
        self.causal, self.window, self.softcap, self.scale = causal, window, float(softcap), scale
        self.rope, self.max_positions, self.layer_idx = rope, max_positions, layer_idx
        self.qk_norm_eps = qk_norm_eps
        q_width, kv_width = num_query_heads * head_dim, num_kv_heads * head_dim
        self.q_width, self.kv_width = q_width, kv_width
        # the value projection's and the node output's widths (kv_width and q_width unless v_head_dim differs)
        self.v_width, self.out_width = num_kv_heads * v_head_dim, num_query_heads * v_head_dim
        if merged_qkv:
            self.qkv_proj = nn.Linear(model_dim, q_width + kv_width + self.v_width, bias=bias)
        else:
            self.q_proj = nn.Linear(model_dim, q_width, bias=bias)
            self.k_proj = nn.Linear(model_dim, kv_width, bias=bias)
            self.v_proj = nn.Linear(model_dim, self.v_width, bias=bias)
        self.o_proj = nn.Linear(self.out_width, model_dim, bias=bias if out_bias is None else out_bias)
        self.q_norm = nn.Parameter(torch.ones(head_dim)) if qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(head_dim)) if qk_norm else None
        self.sinks = nn.Parameter(torch.zeros(num_query_heads)) if sinks else None
        if rope is not None:
            inv_freq, self.rope_attention_scaling = rope.frequencies(head_dim)
            # the default frequencies are computed by the op itself; scaled ones travel as an input
            self.register_buffer("rope_inv_freq", inv_freq if rope.scaling else None, persistent=False)
            # LongRoPE: rope_inv_freq is the short set; each forward picks one by its positions (rope_frequencies).
            # The name ends in rope_inv_freq so that models._base.cast_model keeps it float32 as well.
            long = rope.frequencies(head_dim, long=True)[0] if rope.switches else None
            self.register_buffer("long_rope_inv_freq", long, persistent=False)
            self.rotary_dim = rope.rotary_dim or head_dim

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if hasattr(self, "qkv_proj"):
            return torch.split(self.qkv_proj(x), [self.q_width, self.kv_width, self.v_width], dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def merge_qkv(self) -> None:
        """Replaces the separate Q/K/V projections by one merged projection (same function), for decode."""
        if hasattr(self, "qkv_proj"):
            return
        merged = nn.Linear(self.model_dim, self.q_width + self.kv_width + self.v_width,
                           bias=self.q_proj.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            if merged.bias is not None:
                merged.bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
        self.qkv_proj = merged.to(self.q_proj.weight.device, self.q_proj.weight.dtype)
        del self.q_proj, self.k_proj, self.v_proj

    def rope_frequencies(self, last_position) -> torch.Tensor | None:
        """The rope_inv_freq input for one forward (None: the op's default). With LongRoPE, the long or short
        set by `last_position`, a callable giving the forward's largest position as a 0-d tensor (only LongRoPE
        calls it, so other layers add no ops to the graph)."""
        inv_freq = getattr(self, "rope_inv_freq", None)
        if getattr(self, "long_rope_inv_freq", None) is None:
            return inv_freq
        return longrope_frequencies(inv_freq, self.long_rope_inv_freq, last_position(),
                                    self.rope.scaling.original_max_positions)

    def positions(self, batch: int, seq: int, past: int, doc_boundaries=None, device=None) -> torch.Tensor | None:
        """position_ids [B, S] for RoPE: None (the op's default, past + arange) unless documents are packed."""
        if doc_boundaries is None:
            return None
        return positions_from_boundaries(seq, doc_boundaries, past, device).expand(batch, seq)

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
        past_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        doc_boundaries=None,
        return_present: bool = False,
        paged: PagedStep | None = None,
    ):
        """x [B, S, model_dim]. The KV cache comes from `cache` (this layer's slot, updated in place) or from
        explicit `past_key`/`past_value` (with `past_lengths`: preallocated buffers, shared-buffer mode).
        `attention_mask` [B, total keys] is True for real tokens. Returns the output, and with
        `return_present` also (present_key, present_value).

        With `paged` (a PagedStep, e.g. from PagedKVCache.step): x is the step's packed tokens [T, model_dim]
        and the layer runs one PagedAttention node over its pools in the step, which it replaces by the
        updated pools; with `return_present` those come back as (key_cache, value_cache)."""
        if paged is not None:
            return self._forward_paged(x, paged, position_ids, return_present, cache=cache, past_key=past_key,
                                       past_value=past_value, past_lengths=past_lengths,
                                       attention_mask=attention_mask, doc_boundaries=doc_boundaries)
        if cache is not None:
            if past_key is not None:
                raise ValueError("GroupedQueryAttention: pass either cache or past_key/past_value, not both")
            past_key, past_value = cache.get(self.layer_idx)
        b, s, _ = x.shape
        past = 0 if past_key is None else past_key.shape[2]
        if position_ids is None:
            position_ids = self.positions(b, s, past, doc_boundaries, x.device)
        self._positions_of = lambda slots: node_positions(s, x.device, position_ids, past, past_lengths, slots=slots)
        try:
            q, k, v = self.project(x)
            if self.max_positions is not None and self.rope is not None:
                last = position_ids.max().item() if position_ids is not None else (
                    (past_lengths.max().item() if past_lengths is not None else past) + s - 1)
                if last >= self.max_positions:
                    raise ValueError(f"GroupedQueryAttention: position {last} is out of range for max_positions "
                                     f"{self.max_positions}")
            rope = self.rope

            def last_position():  # a tensor even for a traced past, so the exported switch compares at run time
                return self.token_positions().max()

            out, present_k, present_v = F.group_query_attention(
                q, k, v, past_key, past_value, past_lengths, position_ids, self.q_norm, self.k_norm,
                self.rope_frequencies(last_position), attention_mask, self.sinks,
                num_heads=self.num_query_heads, kv_num_heads=self.num_kv_heads, causal=self.causal, window=self.window,
                attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=rope is not None,
                rope_base=rope.base if rope else 10000.0, rotary_dim=rope.rotary_dim or 0 if rope else 0,
                rope_interleaved=rope.interleaved if rope else False,
                rope_attention_scaling=getattr(self, "rope_attention_scaling", 1.0), qk_norm_epsilon=self.qk_norm_eps,
            )
            if cache is not None:
                cache.update(self.layer_idx, present_k, present_v)
            y = self.o_proj(out)
            return (y, (present_k, present_v)) if return_present else y
        finally:
            self._positions_of = None

    def _forward_paged(self, x: torch.Tensor, step: PagedStep, position_ids: torch.Tensor | None,
                       return_present: bool, **unsupported):
        given = sorted(name for name, value in unsupported.items() if value is not None)
        if given:
            raise ValueError(f"GroupedQueryAttention: paged takes the cache from the PagedStep; {', '.join(given)} "
                             f"cannot be combined with it")
        if x.dim() != 2:
            raise ValueError(f"GroupedQueryAttention: with paged, x must be the packed tokens [T, model_dim], got "
                             f"shape {list(x.shape)}")
        key_cache, value_cache = step.pools(self.layer_idx)
        position_ids = position_ids if position_ids is not None else step.position_ids
        self._positions_of = lambda slots: (step.token_positions(x.shape[0]) if slots or position_ids is None
                                            else position_ids)
        try:
            if self.max_positions is not None and self.rope is not None and not torch.compiler.is_exporting():
                last = (int(position_ids.max()) if position_ids is not None and position_ids.numel()
                        else max(step.seq_lens.tolist(), default=0) - 1)
                if last >= self.max_positions:
                    raise ValueError(f"GroupedQueryAttention: position {last} is out of range for max_positions "
                                     f"{self.max_positions}")
            q, k, v = self.project(x)
            rope = self.rope

            def last_position():  # over all sequences of the step, as transformers takes the max over the batch
                return self.token_positions().max()

            out, key_cache, value_cache = F.paged_attention(
                q, k, v, key_cache, value_cache, step.block_table, step.cu_seqlens_q, step.seq_lens, position_ids,
                self.q_norm, self.k_norm, self.rope_frequencies(last_position), self.sinks,
                num_heads=self.num_query_heads, kv_num_heads=self.num_kv_heads, causal=self.causal, window=self.window,
                attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=rope is not None,
                rope_base=rope.base if rope else 10000.0, rotary_dim=rope.rotary_dim or 0 if rope else 0,
                rope_interleaved=rope.interleaved if rope else False,
                rope_attention_scaling=getattr(self, "rope_attention_scaling", 1.0), qk_norm_epsilon=self.qk_norm_eps,
            )
            step.update(self.layer_idx, key_cache, value_cache)
            y = self.o_proj(out)
            return (y, (key_cache, value_cache)) if return_present else y
        finally:
            self._positions_of = None


class GlobalAttention(GroupedQueryAttention):
    """Every layer-local option of GroupedQueryAttention, with full (non-windowed) attention."""

    def __init__(self, model_dim: int, num_query_heads: int, num_kv_heads: int | None = None, **kwargs):
        if kwargs.get("window") or kwargs.get("attention_chunk"):
            raise ValueError("GlobalAttention: has no window or attention_chunk; use LocalAttention or "
                             "GroupedQueryAttention")
        super().__init__(model_dim, num_query_heads, num_kv_heads, **kwargs)


class LocalAttention(GroupedQueryAttention):
    """Windowed attention, two kinds:
    - `kind="sliding"` (default): causal sliding window, each query sees its `window` most recent keys
      (itself included) — Mistral / Gemma local layers; one fused GroupQueryAttention node, KV cache OK.
    - `kind="band"`: the seed's symmetric band |i - j| <= window (bidirectional unless causal=True);
      projections, QK-norm and RoPE in torch around one ScaledDotProductAttention node; no KV cache."""

    def __init__(self, model_dim: int, num_query_heads: int, num_kv_heads: int | None = None, *, window: int,
                 kind: str = "sliding", causal: bool | None = None, **kwargs):
        if window < 1:
            raise ValueError(f"LocalAttention: window must be >= 1, got {window}")
        if kind not in ("sliding", "band"):
            raise ValueError(f"LocalAttention: kind must be 'sliding' or 'band', got {kind!r}")
        for option in ("sinks", "attention_chunk"):
            if kind == "band" and kwargs.get(option):
                raise ValueError(f"LocalAttention(kind='band') has no {option} (ScaledDotProductAttention has no "
                                 f"such input or attribute); use kind='sliding'")
        self.kind, self.band = kind, window if kind == "band" else 0
        if kind == "sliding":
            if causal is False:
                raise ValueError("LocalAttention: the sliding window is causal; use kind='band' for a two-sided one")
            super().__init__(model_dim, num_query_heads, num_kv_heads, window=window, causal=True, **kwargs)
        else:
            super().__init__(model_dim, num_query_heads, num_kv_heads, causal=bool(causal), **kwargs)

    def forward(self, x: torch.Tensor, **kwargs):
        if self.kind == "sliding":
            return super().forward(x, **kwargs)
        if any(kwargs.get(k) is not None for k in ("cache", "past_key", "past_value", "past_lengths", "paged")):
            raise ValueError("LocalAttention(kind='band') has no KV cache support")
        b, s, _ = x.shape
        q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t, h, d in zip(
            self.project(x), (self.num_query_heads, self.num_kv_heads, self.num_kv_heads),
            (self.head_dim, self.head_dim, self.v_head_dim)))
        if self.q_norm is not None:
            q, k = qk_norm(q, self.q_norm, self.qk_norm_eps), qk_norm(k, self.k_norm, self.qk_norm_eps)
        if self.rope is not None:
            positions = kwargs.get("position_ids")
            if positions is None:
                positions = self.positions(b, s, 0, kwargs.get("doc_boundaries"), x.device)
            if positions is None:
                positions = torch.arange(s, device=x.device).expand(b, s)
            inv_freq = self.rope_frequencies(positions.max)
            if inv_freq is None:
                inv_freq = self.rope.frequencies(self.head_dim)[0].to(x.device)
            rope_kwargs = dict(interleaved=self.rope.interleaved, attention_scaling=self.rope_attention_scaling)
            # rotated in float32 (the frequencies are), back to the input dtype for the op's one type T
            q, k = (apply_rope(t, positions, inv_freq, **rope_kwargs).to(t.dtype) for t in (q, k))
        mask = kwargs.get("attention_mask")
        if mask is not None:
            mask = mask.to(torch.bool)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v, mask, causal=self.causal, band=self.band,
                                             scale=self.scale, softcap=self.softcap)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class AttentionHead(nn.Module):
    """One attention head with its own projections: x [B, S, model_dim] -> [B, S, head_dim]."""

    def __init__(self, model_dim: int, head_dim: int, *, causal: bool = True, bias: bool = False,
                 scale: float | None = None):
        super().__init__()
        self.q = nn.Linear(model_dim, head_dim, bias=bias)
        self.k = nn.Linear(model_dim, head_dim, bias=bias)
        self.v = nn.Linear(model_dim, head_dim, bias=bias)
        self.causal, self.scale = causal, scale

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = (proj(x)[:, None] for proj in (self.q, self.k, self.v))
        mask = attention_mask.to(torch.bool)[:, None, None, :] if attention_mask is not None else None
        return F.scaled_dot_product_attention(q, k, v, mask, causal=self.causal, scale=self.scale)[:, 0]
