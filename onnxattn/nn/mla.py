"""Multi-head latent attention (DeepSeek-V2/V3 MLA) modules, in two forms, and its latent cache.

- ``form="deepseek"`` (default): DeepSeek-V3's layer — optional low-rank query (W_DQ, RMSNorm, W_UQ), the
  joint down-projection to the latent c_kv (RMSNorm) and the rope key, one onnxattn::MultiHeadLatentAttention
  node (RoPE, latent cache, attention; the kernels run the absorbed form for decode), W_O. Caches R + Dr
  values per token (a LatentCache for eager generation, or explicit past tensors / shared buffers).
- ``form="seed"``: the plain formulation Q = x W_Q, c = x W_DKV, K = c W_UK, V = c W_UV, RoPE on the first
  `rope_head_dim` channels of each head's Q and K, attention, heads merged back to [B, S, H*D], W_O. Exports
  as MatMuls, RoPE (ONNX's standard RotaryEmbedding, opset 23, or plain ops) and one
  onnxattn::ScaledDotProductAttention node. No cache.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from onnxattn.nn import functional as F
from onnxattn.nn.kv_cache import KVCache
from onnxattn.nn.reference import apply_rope, compute_dtype
from onnxattn.nn.rope import Rope, TokenPositions, longrope_frequencies, node_positions

FORMS = ("deepseek", "seed")


class LatentCache(KVCache):
    """The MLA cache for eager generation: per layer the latent c_kv [B, 1, P, R] and the rope keys after
    RoPE [B, 1, P, Dr] — R + Dr values per token, shared by all heads. Stored in KVCache's (key, value) slots
    in the [B, Hkv=1, P, .] layout, so decoder models and the generation tooling treat it as any KV cache."""

    def bytes_per_token(self, layer_idx: int) -> int:
        latent, rope = self.get(layer_idx)
        return 0 if latent is None else (latent.shape[-1] * latent.element_size() + rope.shape[-1] * rope.element_size())


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """DeepSeek's RMSNorm: normalised in float32 (float64 stays), then weight * x in the input dtype."""
    h = x.to(compute_dtype(x.dtype))
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _no_longrope(name: str, rope: Rope) -> None:
    if rope.switches:  # its frequencies are chosen per forward (the deepseek form does); not wired here
        raise ValueError(f"{name}: LongRoPE scaling is not supported by the seed form (the deepseek form takes it)")


def _onnx_rotary_embedding_available() -> bool:
    return hasattr(torch.onnx, "ops") and hasattr(torch.onnx.ops, "rotary_embedding")


class MultiHeadLatentAttention(TokenPositions, nn.Module):
    """x [B, S, model_dim] -> [B, S, model_dim] through multi-head latent attention (see the module doc).

    DeepSeek form: `kv_rank` R (latent width), `q_rank` (None: one query projection), `nope_head_dim` Dn,
    `rope_head_dim` Dr, `v_head_dim` Dv, `rope` (default: interleaved pairs, as DeepSeek checkpoints; a scaled
    Rope, e.g. YaRN, travels as the op's inverse frequencies and attention factor), `scale` (None:
    1/sqrt(Dn + Dr); DeepSeek-V3 with YaRN passes mscale^2/sqrt(Dn + Dr)), `norm_eps`, `window`, `softcap`,
    `layer_idx` (its slot in a LatentCache).

    Seed form: `head_dim` D, `latent_dim` R, `rope_head_dim` (channels rotated at the start of each head),
    `causal` (default True; False: bidirectional), `onnx_rope` (None: ONNX RotaryEmbedding when torch has
    torch.onnx.ops.rotary_embedding — exports then need opset_version >= 23; False: plain ONNX ops)."""

    def __init__(
        self,
        model_dim: int,
        num_heads: int,
        *,
        form: str = "deepseek",
        kv_rank: int | None = None,
        q_rank: int | None = None,
        nope_head_dim: int | None = None,
        rope_head_dim: int = 64,
        v_head_dim: int | None = None,
        head_dim: int | None = None,
        latent_dim: int | None = None,
        rope: Rope | None = None,
        causal: bool = True,
        window: int = 0,
        softcap: float = 0.0,
        scale: float | None = None,
        norm_eps: float = 1e-6,
        bias: bool = False,
        onnx_rope: bool | None = None,
        layer_idx: int = 0,
    ):
        super().__init__()
        name = type(self).__name__
        if form not in FORMS:
            raise ValueError(f"{name}: form must be one of {FORMS}, got {form!r}")
        if num_heads < 1:
            raise ValueError(f"{name}: num_heads must be >= 1, got {num_heads}")
        if rope_head_dim < 2 or rope_head_dim % 2:
            raise ValueError(f"{name}: rope_head_dim must be even and >= 2 (RoPE rotates pairs), got {rope_head_dim}")
        if window < 0:
            raise ValueError(f"{name}: window must be >= 0 (0 = off), got {window}")
        self.form, self.model_dim, self.num_heads, self.rope_head_dim = form, model_dim, num_heads, rope_head_dim
        self.causal, self.window, self.softcap, self.scale = causal, window, float(softcap), scale
        self.norm_eps, self.layer_idx = norm_eps, layer_idx
        if form == "deepseek":
            self._init_deepseek(kv_rank, q_rank, nope_head_dim, v_head_dim, rope, bias)
        else:
            self._init_seed(head_dim, latent_dim, rope, bias, onnx_rope)

    # ---- DeepSeek form ----

    def _init_deepseek(self, kv_rank, q_rank, nope_head_dim, v_head_dim, rope, bias):
        name, h, dr = type(self).__name__, self.num_heads, self.rope_head_dim
        for label, value in (("kv_rank", kv_rank), ("nope_head_dim", nope_head_dim), ("v_head_dim", v_head_dim)):
            if value is None or value < 1:
                raise ValueError(f"{name}: the deepseek form needs {label} >= 1, got {value}")
        if q_rank is not None and q_rank < 1:
            raise ValueError(f"{name}: q_rank must be >= 1 (None: no low-rank query path), got {q_rank}")
        self.kv_rank, self.q_rank, self.nope_head_dim, self.v_head_dim = kv_rank, q_rank, nope_head_dim, v_head_dim
        q_width = h * (nope_head_dim + dr)
        if q_rank:
            self.q_a_proj = nn.Linear(self.model_dim, q_rank, bias=bias)  # W_DQ
            self.q_a_norm = nn.Parameter(torch.ones(q_rank))
            self.q_b_proj = nn.Linear(q_rank, q_width, bias=False)  # W_UQ
        else:
            self.q_proj = nn.Linear(self.model_dim, q_width, bias=False)
        self.kv_a_proj = nn.Linear(self.model_dim, kv_rank + dr, bias=bias)  # W_DKV and the rope-key projection
        self.kv_a_norm = nn.Parameter(torch.ones(kv_rank))
        self.w_uk = nn.Parameter(torch.randn(h, kv_rank, nope_head_dim) / math.sqrt(kv_rank))
        self.w_uv = nn.Parameter(torch.randn(h, kv_rank, v_head_dim) / math.sqrt(kv_rank))
        self.o_proj = nn.Linear(h * v_head_dim, self.model_dim, bias=False)
        self.rope = rope if rope is not None else Rope(interleaved=True)
        if self.rope.rotary_dim not in (None, dr):
            raise ValueError(f"{name}: RoPE rotates the whole rope part (rope_head_dim = {dr}); rotary_dim must be None")
        inv_freq, self.rope_attention_scaling = self.rope.frequencies(dr)
        # LongRoPE (MiniCPM3): rope_inv_freq is the short set; each forward picks one by its positions, as
        # GroupedQueryAttention.rope_frequencies does
        long = self.rope.frequencies(dr, long=True)[0] if self.rope.switches else None
        self.register_buffer("long_rope_inv_freq", long, persistent=False)
        # the default frequencies are computed by the op itself; scaled ones travel as an input
        self.register_buffer("rope_inv_freq", inv_freq if self.rope.scaling else None, persistent=False)

    def query_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised query latent [B,S,q_rank] (low-rank query path) that q_b_proj maps to the query."""
        return _rms_norm(self.q_a_proj(x), self.q_a_norm, self.norm_eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query [B,S,H*(Dn+Dr)], normalised latent [B,S,R], rope keys before RoPE [B,S,Dr])."""
        if self.q_rank:
            q = self.q_b_proj(self.query_latent(x))
        else:
            q = self.q_proj(x)
        latent, k_rope = torch.split(self.kv_a_proj(x), [self.kv_rank, self.rope_head_dim], dim=-1)
        return q, _rms_norm(latent, self.kv_a_norm, self.norm_eps), k_rope

    def load_kv_b_proj(self, weight: torch.Tensor) -> None:
        """Sets W_UK and W_UV from DeepSeek's kv_b_proj.weight [H*(Dn+Dv), R]."""
        h, dn, dv, r = self.num_heads, self.nope_head_dim, self.v_head_dim, self.kv_rank
        if tuple(weight.shape) != (h * (dn + dv), r):
            raise ValueError(f"{type(self).__name__}: kv_b_proj.weight must be [H*(Dn+Dv), R] = [{h * (dn + dv)}, {r}], "
                             f"got {list(weight.shape)}")
        w = weight.view(h, dn + dv, r)
        with torch.no_grad():
            self.w_uk.copy_(w[:, :dn].transpose(1, 2))
            self.w_uv.copy_(w[:, dn:].transpose(1, 2))

    def forward(
        self,
        x: torch.Tensor,
        *,
        cache: KVCache | None = None,
        past_latent: torch.Tensor | None = None,
        past_k_rope: torch.Tensor | None = None,
        past_lengths: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        key_indices: torch.Tensor | None = None,
        return_present: bool = False,
    ):
        """x [B, S, model_dim]. The latent cache comes from `cache` (this layer's slot, updated in place) or
        from explicit `past_latent`/`past_k_rope` ([B, P, .] or [B, 1, P, .]; with `past_lengths`: preallocated
        buffers, shared-buffer mode). `key_indices` [B, S, K] int64 (DeepSeek sparse attention, deepseek form):
        each query attends only to the cache positions it lists. Returns the output, and with `return_present`
        also (present_latent, present_k_rope)."""
        if self.form == "seed":
            given = [k for k, v in dict(cache=cache, past_latent=past_latent, past_k_rope=past_k_rope,
                                        past_lengths=past_lengths, key_indices=key_indices).items() if v is not None]
            if given or return_present:
                raise ValueError(f"{type(self).__name__}(form='seed') has no cache; got "
                                 f"{', '.join(given) or 'return_present'} (use the deepseek form)")
            return self._forward_seed(x, position_ids)
        if cache is not None:
            if past_latent is not None:
                raise ValueError(f"{type(self).__name__}: pass either cache or past_latent/past_k_rope, not both")
            past_latent, past_k_rope = cache.get(self.layer_idx)
            if past_latent is None:  # an empty cache in the [B, 1, 0, .] layout it keeps
                past_latent = x.new_zeros(x.shape[0], 1, 0, self.kv_rank)
                past_k_rope = x.new_zeros(x.shape[0], 1, 0, self.rope_head_dim)
        past = past_latent.shape[-2] if past_latent is not None else 0  # [B, P, R] or [B, 1, P, R]; traced
        self._positions_of = lambda slots: node_positions(x.shape[1], x.device, position_ids, past, past_lengths,
                                                          slots=slots)
        try:
            q, latent, k_rope = self.project(x)
            inv_freq = self.rope_inv_freq
            if self.long_rope_inv_freq is not None:  # LongRoPE: by the forward's largest position (over the batch)
                inv_freq = longrope_frequencies(inv_freq, self.long_rope_inv_freq, self.token_positions().max(),
                                                self.rope.scaling.original_max_positions)
            out, present_latent, present_k_rope = F.multi_head_latent_attention(
                q, latent, k_rope, self.w_uk, self.w_uv, past_latent, past_k_rope, past_lengths, position_ids,
                inv_freq, key_indices, num_heads=self.num_heads, causal=self.causal, window=self.window,
                softcap=self.softcap, scale=self.scale, rope_base=self.rope.base,
                rope_interleaved=self.rope.interleaved,
                rope_attention_scaling=self.rope_attention_scaling)
            if cache is not None:
                cache.update(self.layer_idx, present_latent, present_k_rope)
            y = self.o_proj(out)
            return (y, (present_latent, present_k_rope)) if return_present else y
        finally:
            self._positions_of = None

    # ---- the seed's form ----

    def _init_seed(self, head_dim, latent_dim, rope, bias, onnx_rope):
        name, h = type(self).__name__, self.num_heads
        if head_dim is None:
            if self.model_dim % h:
                raise ValueError(f"{name}: model_dim ({self.model_dim}) is not divisible by num_heads ({h}); "
                                 f"pass head_dim")
            head_dim = self.model_dim // h
        if latent_dim is None or latent_dim < 1:
            raise ValueError(f"{name}: the seed form needs latent_dim >= 1, got {latent_dim}")
        if self.rope_head_dim > head_dim:
            raise ValueError(f"{name}: rope_head_dim ({self.rope_head_dim}) must be <= head_dim ({head_dim})")
        self.head_dim, self.latent_dim = head_dim, latent_dim
        self.q_proj = nn.Linear(self.model_dim, h * head_dim, bias=bias)  # W_Q
        self.kv_down_proj = nn.Linear(self.model_dim, latent_dim, bias=bias)  # W_DKV
        self.k_up_proj = nn.Linear(latent_dim, h * head_dim, bias=bias)  # W_UK
        self.v_up_proj = nn.Linear(latent_dim, h * head_dim, bias=bias)  # W_UV
        self.o_proj = nn.Linear(h * head_dim, self.model_dim, bias=bias)  # W_O
        self.rope = rope if rope is not None else Rope()
        _no_longrope(name, self.rope)
        inv_freq, self.rope_attention_scaling = Rope(self.rope.base, self.rope_head_dim, self.rope.interleaved,
                                                     self.rope.scaling).frequencies(head_dim)
        self.register_buffer("rope_inv_freq", inv_freq, persistent=False)
        self.onnx_rope = _onnx_rotary_embedding_available() if onnx_rope is None else bool(onnx_rope)
        if self.onnx_rope and not _onnx_rotary_embedding_available():
            raise ValueError(f"{name}: onnx_rope needs torch.onnx.ops.rotary_embedding (torch >= 2.8)")

    def _rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE of the first rope_head_dim channels of x [B, H, S, D]. While exporting with onnx_rope: ONNX's
        RotaryEmbedding (opset 23; cos/sin per token); eagerly the same math in torch (it has a backward)."""
        if self.onnx_rope and torch.compiler.is_exporting():
            angles = positions.to(torch.float32)[..., None] * self.rope_inv_freq.to(torch.float32)  # [B, S, rd/2]
            cos = (torch.cos(angles) * self.rope_attention_scaling).to(x.dtype)
            sin = (torch.sin(angles) * self.rope_attention_scaling).to(x.dtype)
            return torch.onnx.ops.rotary_embedding(x, cos, sin, interleaved=self.rope.interleaved,
                                                   rotary_embedding_dim=self.rope_head_dim)
        rotated = apply_rope(x.to(compute_dtype(x.dtype)), positions, self.rope_inv_freq, interleaved=self.rope.interleaved,
                             attention_scaling=self.rope_attention_scaling)
        return rotated.to(x.dtype)

    def _forward_seed(self, x: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = x.shape
        heads = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        c = self.kv_down_proj(x)
        q, k, v = heads(self.q_proj(x)), heads(self.k_up_proj(c)), heads(self.v_up_proj(c))
        positions = position_ids if position_ids is not None else torch.arange(s, device=x.device).expand(b, s)
        q, k = self._rotate(q, positions), self._rotate(k, positions)
        out = F.scaled_dot_product_attention(q, k, v, causal=self.causal, window=self.window, scale=self.scale,
                                             softcap=self.softcap)
        return self.o_proj(out.transpose(1, 2).flatten(2))  # heads merged back to [B, S, H*D] before W_O

    def extra_repr(self) -> str:
        if self.form == "seed":
            return (f"form=seed, heads={self.num_heads}, head_dim={self.head_dim}, latent_dim={self.latent_dim}, "
                    f"rope_head_dim={self.rope_head_dim}, causal={self.causal}")
        return (f"heads={self.num_heads}, kv_rank={self.kv_rank}, q_rank={self.q_rank}, nope={self.nope_head_dim}, "
                f"rope={self.rope_head_dim}, v={self.v_head_dim}")


__all__ = ["FORMS", "LatentCache", "MultiHeadLatentAttention"]
