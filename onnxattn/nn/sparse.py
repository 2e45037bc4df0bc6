"""Sparse attention modules: Native Sparse Attention (the seed's three paths and the NSA paper's decoder
form) and block-routed attention (the seed's SparseRoutedAttention, MoBA). Each call is one torch custom
op, so each exports to one onnxattn node (the window path to ScaledDotProductAttention).

Training: selection (blocks, segments, tokens) is discrete and carries no gradient; the attention over the
selected keys is an ordinary softmax attention, so Q, K, V, the compressed tokens (and the compressor's
weights) and the gates get their true gradients through it.
"""

from __future__ import annotations

import torch
from torch import nn

from onnxattn.export import _torch_ops  # noqa: F401  (registers torch.ops.onnxattn.*)
from onnxattn.nn.rope import Rope, positions_from_boundaries
from onnxattn.nn.sdpa import ScaledDotProductAttention
from onnxattn.ops import nsa as nsa_op


def native_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: torch.Tensor | None = None,
    compressed_key: torch.Tensor | None = None,
    compressed_value: torch.Tensor | None = None,
    *,
    block_size: int = 64,
    top_blocks: int = 16,
    top_tokens: int = 0,
    window: int = 0,
    causal: bool = False,
    shared_selection: bool = False,
    sink_blocks: int = 0,
    local_blocks: int = 0,
    scale: float | None = None,
    return_selection: bool = False,
):
    """onnxattn::NativeSparseAttention on q [B,Hq,Sq,D], k [B,Hkv,Skv,D], v [B,Hkv,Skv,Dv]; gates (after the
    sigmoid) broadcastable to [B,Hq,Sq,3]; compressed tokens [B,Hkv,Skv // block_size, D|Dv]. Returns Y, or
    (Y, selected_blocks, selected_tokens) with return_selection. See docs/ops.md."""
    y, blocks, tokens = torch.ops.onnxattn.native_sparse_attention(
        q, k, v, gates, compressed_key, compressed_value, int(block_size), int(top_blocks), int(top_tokens),
        int(window), bool(causal), bool(shared_selection), int(sink_blocks), int(local_blocks), float(scale or 0.0))
    return (y, blocks, tokens) if return_selection else y


def sparse_routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    *,
    segment_size: int = 64,
    top_k: int = 3,
    causal: bool = False,
    cosine: bool = True,
    rope: bool = False,
    rope_before_routing: bool = False,
    rope_base: float = 10000.0,
    rotary_dim: int = 0,
    rope_interleaved: bool = False,
    rope_attention_scaling: float = 1.0,
    scale: float | None = None,
    return_selection: bool = False,
):
    """onnxattn::SparseRoutedAttention on q [B,Hq,Sq,D], k [B,Hkv,Skv,D] (both before RoPE), v [B,Hkv,Skv,Dv];
    position_ids [B or 1, Skv] int64. Returns Y, or (Y, selected_segments) with return_selection."""
    y, selected = torch.ops.onnxattn.sparse_routed_attention(
        q, k, v, position_ids, int(segment_size), int(top_k), bool(causal), bool(cosine), bool(rope),
        bool(rope_before_routing), float(rope_base), int(rotary_dim), bool(rope_interleaved),
        float(rope_attention_scaling), float(scale or 0.0))
    return (y, selected) if return_selection else y


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be >= 1, got {value}")


class NSACoarseCompression(nn.Module):
    """The seed's coarse path: blocks of `block_size` keys scored by <q, mean key of the block>; each query
    (head) attends at full resolution to the keys of its `top_blocks` best blocks. Non-causal by default
    (the trailing partial block is dropped); ``causal=True`` makes it a decoder's selection (own block
    always in)."""

    def __init__(self, block_size: int = 64, top_blocks: int = 16, *, causal: bool = False,
                 shared_selection: bool = False, sink_blocks: int = 0, local_blocks: int = 0,
                 scale: float | None = None):
        super().__init__()
        _positive("NSACoarseCompression", block_size=block_size, top_blocks=top_blocks)
        self.options = dict(block_size=block_size, top_blocks=top_blocks, causal=causal,
                            shared_selection=shared_selection, sink_blocks=sink_blocks, local_blocks=local_blocks,
                            scale=scale)

    def forward(self, q, k, v, *, return_indices: bool = False):
        """Y [B,Hq,Sq,Dv], and with return_indices the selected blocks [B,Hs,Sq,top_blocks] (-1 unused)."""
        y, blocks, _ = native_sparse_attention(q, k, v, return_selection=True, **self.options)
        return (y, blocks) if return_indices else y


class NSAFineSelection(nn.Module):
    """The seed's fine path: each query attends to its `top_tokens` keys of largest score (exact: a dense
    score pass and a top-k per query). ``causal=True`` restricts both to past keys."""

    def __init__(self, top_tokens: int, *, causal: bool = False, scale: float | None = None):
        super().__init__()
        _positive("NSAFineSelection", top_tokens=top_tokens)
        self.options = dict(top_blocks=0, top_tokens=top_tokens, causal=causal, scale=scale)

    def forward(self, q, k, v, *, return_indices: bool = False):
        """Y [B,Hq,Sq,Dv], and with return_indices selected_indices [B,Hq,Sq,top_tokens] (ascending, -1 unused)."""
        y, _, tokens = native_sparse_attention(q, k, v, return_selection=True, **self.options)
        return (y, tokens) if return_indices else y


class NSAWindowAttention(ScaledDotProductAttention):
    """The sliding-window path: causal, the `window` most recent keys including the current one. Exports to
    ScaledDotProductAttention(causal=1, window=W)."""

    def __init__(self, window: int, *, scale: float | None = None):
        _positive("NSAWindowAttention", window=window)
        super().__init__(causal=True, window=window, scale=scale)


class NSACompressor(nn.Module):
    """Compressed tokens for the paper's compression branch: one per complete block of `block_size` tokens of
    x [B,H,S,D] -> [B,H,S // block_size,D]. "mean" pools (no parameters; the seed's compressed cache);
    "linear" is a learned map of the block's tokens plus an intra-block position embedding (the paper's
    phi, with one linear layer)."""

    def __init__(self, head_dim: int, block_size: int, kind: str = "mean"):
        super().__init__()
        if kind not in ("mean", "linear"):
            raise ValueError(f"NSACompressor: kind must be 'mean' or 'linear', got {kind!r}")
        self.block_size, self.kind = block_size, kind
        if kind == "linear":
            self.position = nn.Parameter(torch.zeros(block_size, head_dim))
            self.proj = nn.Linear(block_size * head_dim, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, s, d = x.shape
        n = s // self.block_size
        if isinstance(n, int) and n == 0:  # no whole block yet; exported at such a static length, torch emitted a
            return x.new_zeros(b, h, 0, d)  # Reshape onnxruntime refuses (a 0 in its shape)
        blocks = x[:, :, : n * self.block_size].reshape(b, h, n, self.block_size, d)
        if self.kind == "mean":
            return blocks.mean(dim=3)
        return self.proj((blocks + self.position.to(x.dtype)).flatten(-2))


class NativeSparseAttention(nn.Module):
    """Native Sparse Attention over pre-projected heads q [B,Hq,S,D], k/v [B,Hkv,S,D]: block selection +
    (fine selection or compression) + sliding window, mixed by gates (one onnxattn node).

    Gates: ``gate="param"`` learns one logit per head and branch ([Hq, 3], zeros at init, sigmoid: the
    seed); ``gate="mlp"`` computes them per token from the hidden states x [B,S,hidden] (the paper).
    ``compression`` ("mean" or "linear") adds the paper's compression branch, whose attention scores drive
    the block selection. ``seed(...)`` and ``paper(...)`` build the two published configurations."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, *, block_size: int = 64,
                 top_blocks: int = 16, top_tokens: int = 0, window: int = 0, causal: bool = False,
                 shared_selection: bool = False, sink_blocks: int = 0, local_blocks: int = 0,
                 compression: str | None = None, gate: str = "param", hidden: int | None = None,
                 scale: float | None = None):
        super().__init__()
        name = "NativeSparseAttention"
        _positive(name, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, block_size=block_size)
        if num_heads % num_kv_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if gate not in ("param", "mlp") or (gate == "mlp" and not hidden):
            raise ValueError(f"{name}: gate must be 'param' or 'mlp' (with hidden), got {gate!r}, hidden={hidden}")
        self.num_heads, self.num_kv_heads, self.head_dim, self.gate_kind = num_heads, num_kv_heads, head_dim, gate
        self.options = dict(block_size=block_size, top_blocks=top_blocks, top_tokens=top_tokens, window=window,
                            causal=causal, shared_selection=shared_selection, sink_blocks=sink_blocks,
                            local_blocks=local_blocks, scale=scale)
        # the op's cross-attribute rules now, not at the first forward (e.g. paper(top_blocks=2): the own, sink and
        # local blocks are forced)
        nsa_op.check_attributes({**self.options, "causal": int(causal)}, has_compressed=compression is not None)
        if gate == "param":
            self.gate_logits = nn.Parameter(torch.zeros(num_heads, 3))
        else:
            self.gate_proj = nn.Linear(hidden, num_heads * 3)
        self.compress_key = self.compress_value = None
        if compression is not None:
            self.compress_key = NSACompressor(head_dim, block_size, compression)
            self.compress_value = NSACompressor(head_dim, block_size, compression)

    @classmethod
    def seed(cls, num_heads: int, head_dim: int, *, num_kv_heads: int | None = None, block_size: int = 64,
             top_blocks: int = 4, top_tokens: int = 64, window: int = 64, **kwargs) -> NativeSparseAttention:
        """The seed's configuration: non-causal coarse and fine paths per head, learned per-head gates."""
        return cls(num_heads, num_kv_heads or num_heads, head_dim, block_size=block_size, top_blocks=top_blocks,
                   top_tokens=top_tokens, window=window, **kwargs)

    @classmethod
    def paper(cls, num_heads: int, num_kv_heads: int, head_dim: int, hidden: int, *, block_size: int = 64,
              top_blocks: int = 16, window: int = 512, compression: str = "linear", **kwargs) -> NativeSparseAttention:
        """The NSA paper's decoder: causal, GQA-shared selection driven by the compression branch, a sink and
        a local block forced, per-token gates from the hidden states."""
        return cls(num_heads, num_kv_heads, head_dim, block_size=block_size, top_blocks=top_blocks, window=window,
                   causal=True, shared_selection=True, sink_blocks=1, local_blocks=1, compression=compression,
                   gate="mlp", hidden=hidden, **kwargs)

    def gates(self, q: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """Gate values (sigmoid), broadcastable to [B, Hq, S, 3]."""
        if self.gate_kind == "param":
            return torch.sigmoid(self.gate_logits)[:, None, :].to(q.dtype)
        if x is None:
            raise ValueError("NativeSparseAttention: gate='mlp' needs the hidden states x [B, S, hidden]")
        b, s = x.shape[0], x.shape[1]
        return torch.sigmoid(self.gate_proj(x)).reshape(b, s, self.num_heads, 3).transpose(1, 2).to(q.dtype)

    def forward(self, q, k, v, x: torch.Tensor | None = None, *, return_selection: bool = False):
        ck = cv = None
        if self.compress_key is not None:
            ck, cv = self.compress_key(k), self.compress_value(v)
        return native_sparse_attention(q, k, v, self.gates(q, x), ck, cv, return_selection=return_selection,
                                       **self.options)


class SparseRoutedAttention(nn.Module):
    """Block-routed attention over q [B,Hq,S,D], k/v [B,Hkv,S,D] (before RoPE): each query routes to its
    `top_k` segments of `segment_size` keys by centroid similarity (``routing="cosine"``, the seed, or
    ``"dot"``, MoBA) and attends to their keys. ``causal=True``: past segments only, own segment always.
    With ``rope``, RoPE is applied inside the op at the positions (``position_ids``, or from document
    boundaries: positions restart at 0 at each document start), before routing if ``rope_before_routing``
    (MoBA) or after (the seed's order)."""

    def __init__(self, segment_size: int = 64, top_k: int = 3, *, causal: bool = False, routing: str = "cosine",
                 rope: Rope | None = None, rope_before_routing: bool = False, scale: float | None = None):
        super().__init__()
        _positive("SparseRoutedAttention", segment_size=segment_size, top_k=top_k)
        if routing not in ("cosine", "dot"):
            raise ValueError(f"SparseRoutedAttention: routing must be 'cosine' or 'dot', got {routing!r}")
        if rope is not None and rope.scaling is not None:
            raise ValueError("SparseRoutedAttention: the op takes plain RoPE (base, rotary_dim, layout); "
                             "RoPE scaling is not supported")
        self.rope = rope
        self.options = dict(segment_size=segment_size, top_k=top_k, causal=causal, cosine=routing == "cosine",
                            rope=rope is not None, rope_before_routing=rope_before_routing, scale=scale)
        if rope is not None:
            self.options.update(rope_base=rope.base, rotary_dim=rope.rotary_dim or 0, rope_interleaved=rope.interleaved)

    def forward(self, q, k, v, position_ids: torch.Tensor | None = None, *, doc_boundaries=None,
                return_selection: bool = False):
        """doc_boundaries: start indices (among the keys) of packed documents; positions restart there."""
        if doc_boundaries is not None:
            if position_ids is not None:
                raise ValueError("SparseRoutedAttention: pass position_ids or doc_boundaries, not both")
            position_ids = positions_from_boundaries(k.shape[2], doc_boundaries, device=k.device)[None]
        return sparse_routed_attention(q, k, v, position_ids, return_selection=return_selection, **self.options)
