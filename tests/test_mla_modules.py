"""The torch side of multi-head latent attention: gradients of the custom op and of both module forms
(gradcheck), the absorbed and expanded formulations of the eager reference, the DeepSeek form against an
independent re-implementation of DeepSeek-V3's attention (kv_b_proj layout, interleaved RoPE, low-rank
query), prefill + decode with a LatentCache against one pass, the seed form's head merge, and the export of
both forms (one MultiHeadLatentAttention node; MatMuls + RotaryEmbedding + ScaledDotProductAttention) run by
onnxruntime with and without our library."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

import onnxattn.export as ox
from onnxattn import ops
from onnxattn.cuda_ep import make_session
from onnxattn.nn import LatentCache, MultiHeadLatentAttention, Rope, RopeScaling, mla_reference
from onnxattn.nn.functional import multi_head_latent_attention

CPU = ["CPUExecutionProvider"]


def _inputs(dtype=torch.float64, b=2, s=3, h=2, r=4, dn=2, dr=2, dv=3, past=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return dict(query=t(b, s, h * (dn + dr)), latent=t(b, s, r), k_rope=t(b, s, dr), w_uk=t(h, r, dn) / math.sqrt(r),
                w_uv=t(h, r, dv) / math.sqrt(r), past_latent=t(b, past, r), past_k_rope=t(b, past, dr))


# ---------------------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("mode", ["concat", "shared", "no-past", "key-indices"])
def test_functional_gradcheck(mode):
    """The custom op's backward (recomputed through the eager reference) against finite differences, for
    every differentiable input, outputs and caches alike."""
    x = _inputs()
    extra = {}
    if mode == "shared":
        extra["past_lengths"] = torch.tensor([0, 1])
        x["past_latent"], x["past_k_rope"] = (torch.cat([t, torch.zeros_like(t)], 1) for t in
                                              (x["past_latent"], x["past_k_rope"]))
    elif mode == "no-past":
        del x["past_latent"], x["past_k_rope"]
    elif mode == "key-indices":  # DSA: gradients flow to the listed keys only (the selection itself is discrete)
        total = x["past_latent"].shape[1] + x["query"].shape[1]
        extra["key_indices"] = torch.randint(-1, total, (*x["query"].shape[:2], 3), generator=torch.Generator()
                                             .manual_seed(3))
    names = list(x)
    leaves = [x[n].requires_grad_() for n in names]

    def fn(*tensors):
        return multi_head_latent_attention(**dict(zip(names, tensors)), **extra, num_heads=2, rope_interleaved=True,
                                           softcap=3.0)

    assert torch.autograd.gradcheck(fn, leaves, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("form", ["deepseek", "seed"])
def test_module_gradcheck(form):
    torch.manual_seed(0)
    if form == "deepseek":
        m = MultiHeadLatentAttention(8, 2, kv_rank=4, q_rank=6, nope_head_dim=2, rope_head_dim=2, v_head_dim=3)
    else:
        m = MultiHeadLatentAttention(8, 2, form="seed", latent_dim=4, rope_head_dim=2)
    m = m.double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,), atol=1e-6, rtol=1e-5)
    m(x).pow(2).sum().backward()  # and every parameter gets a gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ---------------------------------------------------------------------------------------------------------
# The eager reference: absorbed == expanded


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_reference_absorbed_equals_expanded(dtype, tol):
    x = _inputs(dtype, b=2, s=5, h=4, r=32, dn=16, dr=8, dv=16, past=7)
    attrs = dict(num_heads=4, rope_interleaved=True, window=6)
    expanded = mla_reference(**x, **attrs)
    absorbed = mla_reference(**x, **attrs, absorbed=True)
    scale = expanded[0].abs().max()
    assert float((absorbed[0] - expanded[0]).abs().max() / scale) < tol
    for a, e in zip(absorbed[1:], expanded[1:]):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# The DeepSeek form against DeepSeek-V3's attention written out


def _deepseek_v3_attention(x, q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o, *, h, dn, dr, dv, r, eps, inv_freq,
                           attention_factor, scale):
    """DeepSeek-V3's attention (no cache) as its reference code computes it: kv_b_proj weight
    [H*(Dn+Dv), R] applied to the normalised latent, interleaved (complex-pair) RoPE, causal softmax."""
    def norm(t, w):
        return w * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps))

    b, s, _ = x.shape
    q = (norm(x @ q_a.T, q_a_norm) @ q_b.T).view(b, s, h, dn + dr)
    q_nope, q_pe = q.split([dn, dr], -1)
    kv_a_out = x @ kv_a.T
    c, k_pe = kv_a_out.split([r, dr], -1)
    kv = (norm(c, kv_a_norm) @ kv_b.T).view(b, s, h, dn + dv)
    k_nope, v = kv.split([dn, dv], -1)
    angles = torch.arange(s, dtype=torch.float32)[:, None] * inv_freq[None]  # [S, Dr/2]
    rot = torch.polar(torch.full_like(angles, attention_factor), angles)

    def rope(t):  # t [B, S, (H,) Dr]: pairs (2i, 2i+1) as complex numbers
        z = torch.view_as_complex(t.float().reshape(*t.shape[:-1], dr // 2, 2))
        z = z * (rot[None, :, None] if t.dim() == 4 else rot[None])
        return torch.view_as_real(z).flatten(-2)

    q = torch.cat([q_nope, rope(q_pe)], -1).transpose(1, 2)  # [B, H, S, Dn+Dr]
    k = torch.cat([k_nope, rope(k_pe)[:, :, None].expand(b, s, h, dr)], -1).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(scores, -1) @ v.transpose(1, 2)
    return out.transpose(1, 2).flatten(2) @ o.T


@pytest.mark.parametrize("yarn", [False, True])
def test_deepseek_form_matches_deepseek_v3_attention(yarn):
    torch.manual_seed(0)
    h, r, dn, dr, dv, q_rank = 4, 32, 16, 8, 12, 24
    scaling = RopeScaling("yarn", factor=4.0, original_max_positions=16, attention_factor=1.0) if yarn else None
    scale = 0.7 / math.sqrt(dn + dr) if yarn else None
    m = MultiHeadLatentAttention(48, h, kv_rank=r, q_rank=q_rank, nope_head_dim=dn, rope_head_dim=dr, v_head_dim=dv,
                                 rope=Rope(interleaved=True, scaling=scaling), scale=scale)
    with torch.no_grad():
        for p in (m.q_a_norm, m.kv_a_norm):
            p.uniform_(0.5, 1.5)
    kv_b = torch.randn(h * (dn + dv), r) / math.sqrt(r)
    m.load_kv_b_proj(kv_b)
    x = torch.randn(2, 7, 48)
    inv_freq, factor = m.rope.frequencies(dr)
    want = _deepseek_v3_attention(x, m.q_a_proj.weight, m.q_a_norm, m.q_b_proj.weight, m.kv_a_proj.weight, m.kv_a_norm,
                                  kv_b, m.o_proj.weight, h=h, dn=dn, dr=dr, dv=dv, r=r, eps=m.norm_eps,
                                  inv_freq=inv_freq, attention_factor=factor, scale=scale or (dn + dr) ** -0.5)
    torch.testing.assert_close(m(x), want, atol=2e-5, rtol=1e-4)


def test_prefill_then_decode_equals_one_pass():
    """A LatentCache grown by a prefill, a decode step and a chunk gives the one-pass output; it holds
    R + Dr values per token ([B, 1, P, R] and [B, 1, P, Dr])."""
    torch.manual_seed(0)
    m = MultiHeadLatentAttention(32, 4, kv_rank=16, nope_head_dim=8, rope_head_dim=4, v_head_dim=8, q_rank=None)
    x = torch.randn(2, 9, 32)
    full = m(x)
    cache = LatentCache()
    parts = [m(x[:, :5], cache=cache), m(x[:, 5:6], cache=cache), m(x[:, 6:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=2e-6, rtol=1e-5)
    latent, rope = cache.get(0)
    assert latent.shape == (2, 1, 9, 16) and rope.shape == (2, 1, 9, 4)
    assert cache.bytes_per_token(0) == (16 + 4) * 4
    # shared buffers: the same steps written into preallocated [B, M, .] buffers
    buffers = (torch.full((2, 12, 16), float("nan")), torch.full((2, 12, 4), float("nan")))
    outs = []
    for start, end in ((0, 5), (5, 6), (6, 9)):
        y, buffers = m(x[:, start:end], past_latent=buffers[0], past_k_rope=buffers[1],
                       past_lengths=torch.tensor([start, start]), return_present=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(buffers[0][:, :9], latent[:, 0])


# ---------------------------------------------------------------------------------------------------------
# The seed's form


def test_seed_form_merges_heads_before_w_o():
    """Per head: Q = x W_Q, c = x W_DKV, K = c W_UK, V = c W_UV, RoPE on the first rope_head_dim channels,
    causal attention; the heads concatenated along features ([B, S, H*D]) before W_O."""
    torch.manual_seed(0)
    h, d, rd = 3, 8, 4
    m = MultiHeadLatentAttention(24, h, form="seed", latent_dim=10, rope_head_dim=rd, onnx_rope=False)
    x = torch.randn(2, 6, 24)
    c = m.kv_down_proj(x)
    inv_freq = 10000.0 ** (-torch.arange(0, rd, 2, dtype=torch.float32) / rd)
    angles = torch.arange(6, dtype=torch.float32)[:, None] * inv_freq  # [S, rd/2]

    def rope(t):  # half-split on the first rd channels of t [B, S, D]
        a, bb, rest = t[..., : rd // 2], t[..., rd // 2: rd], t[..., rd:]
        return torch.cat([a * angles.cos() - bb * angles.sin(), bb * angles.cos() + a * angles.sin(), rest], -1)

    heads = []
    for i in range(h):
        cols = slice(i * d, (i + 1) * d)
        q = rope(x @ m.q_proj.weight[cols].T)
        k = rope(c @ m.k_up_proj.weight[cols].T)
        v = c @ m.v_up_proj.weight[cols].T
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v)
    want = m.o_proj(torch.cat(heads, -1))
    torch.testing.assert_close(m(x), want, atol=2e-6, rtol=1e-5)
    bidirectional = MultiHeadLatentAttention(24, h, form="seed", latent_dim=10, rope_head_dim=rd, causal=False)
    bidirectional.load_state_dict(m.state_dict())
    assert not torch.allclose(bidirectional(x)[:, :-1], m(x)[:, :-1])  # later keys now visible
    torch.testing.assert_close(bidirectional(x)[:, -1], m(x)[:, -1])  # the last query saw every key anyway


# ---------------------------------------------------------------------------------------------------------
# Export


def _ort(proto, feeds, use_library):
    return make_session(proto, providers=CPU, use_library=use_library).run(None, feeds)


class _WithCache(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, past_latent, past_k_rope):
        y, (latent, rope) = self.m(x, past_latent=past_latent, past_k_rope=past_k_rope, return_present=True)
        return y, latent, rope


def test_export_deepseek_form_is_one_node():
    torch.manual_seed(0)
    m = MultiHeadLatentAttention(48, 4, kv_rank=32, q_rank=24, nope_head_dim=16, rope_head_dim=8, v_head_dim=12,
                                 rope=Rope(scaling=RopeScaling("yarn", factor=4.0, original_max_positions=16)))
    graph = _WithCache(m).eval()
    x, latent, rope = torch.randn(2, 5, 48), torch.randn(2, 1, 3, 32), torch.randn(2, 1, 3, 8)
    proto = ox.export(graph, (x, latent, rope), dynamic_shapes=({0: "b", 1: "s"}, {0: "b", 2: "p"}, {0: "b", 2: "p"}),
                      input_names=["x", "past_latent", "past_k_rope"])
    nodes = [n for n in ops.onnxattn_nodes(proto)]
    assert [n.op_type for n in nodes] == ["MultiHeadLatentAttention"]
    assert nodes[0].overload == "past+inv_freq+present"
    want = [t.detach().numpy() for t in graph(x, latent, rope)]
    feeds = {"x": x.numpy(), "past_latent": latent.numpy(), "past_k_rope": rope.numpy()}
    for use_library in (True, False):
        for got, ref in zip(_ort(proto, feeds, use_library), want):
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("opset, onnx_rope", [(23, True), (18, False), (None, True)])
def test_export_seed_form(opset, onnx_rope):
    """MatMuls + RoPE + one ScaledDotProductAttention node: ONNX's standard RotaryEmbedding (opset 23) or
    plain ops (any opset)."""
    torch.manual_seed(0)
    m = MultiHeadLatentAttention(24, 3, form="seed", latent_dim=10, rope_head_dim=4, onnx_rope=onnx_rope,
                                 rope=Rope(interleaved=True)).eval()
    x = torch.randn(2, 6, 24)
    proto = ox.export(m, (x,), dynamic_shapes=({0: "b", 1: "s"},), input_names=["x"], opset_version=opset)
    # no opset given: 23, which RotaryEmbedding needs (torch's default failed in onnxscript's version converter)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == (opset or 23)
    op_types = {n.op_type for n in proto.graph.node}
    assert ("RotaryEmbedding" in op_types) == onnx_rope
    assert [n.op_type for n in ops.onnxattn_nodes(proto)] == ["ScaledDotProductAttention"]
    onnx.checker.check_model(proto, full_check=True)
    for use_library in (True, False):
        got = _ort(proto, {"x": x.numpy()}, use_library)[0]
        np.testing.assert_allclose(got, m(x).detach().numpy(), atol=2e-6, rtol=1e-5)
