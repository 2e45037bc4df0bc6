"""The sparse torch modules: what they compute (equal to the functional forms and the oracle), their
gradients (gradcheck in float64: true gradients through the attention over the selected keys to Q, K, V,
the compressed tokens and the gates; selection is discrete), export (one onnxattn node per use, equal to
eager torch in onnxruntime with and without the library), and the compressed KV cache."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from helpers import function_session, kernel_session
from oracle_sparse import nsa_oracle, routed_oracle
from sparse_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
import onnxattn
from onnxattn.nn import (
    CompressedKVCache,
    NativeSparseAttention,
    NSACoarseCompression,
    NSAFineSelection,
    NSAWindowAttention,
    Rope,
    SparseRoutedAttention,
    compress_kv,
    native_sparse_attention,
    sparse_routed_attention,
)
from onnxattn.nn.functional import scaled_dot_product_attention


def qkv(batch=1, hq=4, hkv=2, s=12, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, h, s, d, generator=g, dtype=dtype) for h in (hq, hkv, hkv))


# ---- what the modules compute ----

def test_coarse_and_fine_modules_are_the_op_branches():
    q, k, v = qkv(s=13)
    coarse = NSACoarseCompression(4, 2)
    y, blocks = coarse(q, k, v, return_indices=True)
    want = nsa_oracle(q.numpy(), k.numpy(), v.numpy(), block_size=4, top_blocks=2)
    np.testing.assert_allclose(y.numpy(), want[0], atol=1e-5)
    np.testing.assert_array_equal(blocks.numpy(), want[1])
    fine = NSAFineSelection(5, causal=True)
    y, selected_indices = fine(q, k, v, return_indices=True)
    want = nsa_oracle(q.numpy(), k.numpy(), v.numpy(), block_size=64, top_blocks=0, top_tokens=5, causal=1)
    np.testing.assert_allclose(y.numpy(), want[0], atol=1e-5)
    np.testing.assert_array_equal(selected_indices.numpy(), want[2])
    window = NSAWindowAttention(3)
    want = nsa_oracle(q.numpy(), k.numpy(), v.numpy(), block_size=64, top_blocks=0, window=3)
    np.testing.assert_allclose(window(q, k, v).numpy(), want[0], atol=1e-5)


def test_seed_module_mixes_the_three_paths_with_sigmoid_gates():
    q, k, v = qkv(s=16)
    nsa = NativeSparseAttention.seed(4, 8, num_kv_heads=2, block_size=4, top_blocks=2, top_tokens=5, window=3)
    with torch.no_grad():
        nsa.gate_logits.copy_(torch.randn(4, 3))
    gates = torch.sigmoid(nsa.gate_logits.detach())[:, None, :].numpy()
    want = nsa_oracle(q.numpy(), k.numpy(), v.numpy(), gates, block_size=4, top_blocks=2, top_tokens=5, window=3)
    np.testing.assert_allclose(nsa(q, k, v).detach().numpy(), want[0], atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(top_blocks=2), r"the forced blocks \(own block 1 \+ sink_blocks 1 \+ local_blocks 1\) exceed top_blocks = 2"),
    (dict(top_blocks=0), r"sink_blocks and local_blocks need the block branch"),
])  # fmt: skip
def test_paper_module_refuses_bad_block_counts_when_built(kwargs, message):
    # the op's cross-attribute rules at construction, not at the first forward
    with pytest.raises(onnxattn.ops.OpError, match=f"^NativeSparseAttention: {message}"):
        NativeSparseAttention.paper(4, 2, 8, 32, block_size=4, **kwargs)
    with pytest.raises(onnxattn.ops.OpError, match="every branch is off"):
        NativeSparseAttention(4, 2, 8, top_blocks=0)


def test_paper_module_uses_the_compressor_and_the_gate_mlp():
    q, k, v = qkv(s=20)
    x = torch.randn(1, 20, 32)
    nsa = NativeSparseAttention.paper(4, 2, 8, 32, block_size=4, top_blocks=4, window=6)
    with torch.no_grad():
        ck, cv = nsa.compress_key(k), nsa.compress_value(v)
        gates = nsa.gates(q, x)
    assert ck.shape == (1, 2, 5, 8) and gates.shape == (1, 4, 20, 3)
    want = nsa_oracle(q.numpy(), k.numpy(), v.numpy(), gates.numpy(), ck.numpy(), cv.numpy(), block_size=4,
                      top_blocks=4, window=6, causal=1, shared_selection=1, sink_blocks=1, local_blocks=1)
    y, blocks, _ = nsa(q, k, v, x, return_selection=True)
    np.testing.assert_allclose(y.detach().numpy(), want[0], atol=1e-5)
    np.testing.assert_array_equal(blocks.numpy(), want[1])


def test_routed_module_resets_positions_at_document_boundaries():
    q, k, v = qkv(s=12)
    moba = SparseRoutedAttention(4, 2, causal=True, routing="dot", rope=Rope(10000.0), rope_before_routing=True)
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]])
    want = routed_oracle(q.numpy(), k.numpy(), v.numpy(), positions, segment_size=4, top_k=2, causal=1, cosine=0,
                         rope=1, rope_before_routing=1)
    y, selected = moba(q, k, v, doc_boundaries=[5], return_selection=True)
    np.testing.assert_allclose(y.numpy(), want[0], atol=1e-5)
    np.testing.assert_array_equal(selected.numpy(), want[1])
    np.testing.assert_allclose(moba(q, k, v, torch.from_numpy(positions)).numpy(), want[0], atol=1e-5)


# ---- gradients ----

def test_nsa_gradcheck_seed_configuration():
    q, k, v = (t.requires_grad_() for t in qkv(s=9, d=4, dtype=torch.float64))
    gates = torch.rand(4, 1, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, g: native_sparse_attention(q, k, v, g, block_size=3, top_blocks=2, top_tokens=3,  # noqa: E731
                                                    window=2)
    assert torch.autograd.gradcheck(fn, (q, k, v, gates), eps=1e-6, atol=1e-5)


def test_nsa_gradcheck_paper_configuration_reaches_the_compressed_tokens():
    q, k, v = (t.requires_grad_() for t in qkv(s=10, d=4, dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    ck, cv = (torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    gates = torch.rand(1, 4, 10, 3, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, g, ck, cv: native_sparse_attention(  # noqa: E731
        q, k, v, g, ck, cv, block_size=3, top_blocks=3, window=4, causal=True, shared_selection=True, sink_blocks=1)
    assert torch.autograd.gradcheck(fn, (q, k, v, gates, ck, cv), eps=1e-6, atol=1e-5)


def test_routed_gradcheck_with_rope():
    q, k, v = (t.requires_grad_() for t in qkv(s=10, d=4, dtype=torch.float64))
    fn = lambda q, k, v: sparse_routed_attention(q, k, v, segment_size=3, top_k=2, causal=True, rope=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-5)


def test_gradients_equal_dense_attention_restricted_to_the_selected_keys():
    """K/V get the gradient of attention over the chosen keys (not dOut to Q and nothing to K/V): the same as
    SDPA with a boolean mask of the selection."""
    q, k, v = (t.requires_grad_() for t in qkv(s=12))
    y, selected = sparse_routed_attention(q, k, v, segment_size=4, top_k=1, return_selection=True)
    mask = torch.zeros(1, 4, 12, 12, dtype=torch.bool)
    for c in range(3):
        mask[..., c * 4:(c + 1) * 4] |= (selected == c).any(-1, keepdim=True)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    dense = scaled_dot_product_attention(q2, k2, v2, mask)
    torch.testing.assert_close(y, dense)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (dense * w).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad)
        assert a.grad.abs().sum() > 0


def test_training_step_updates_gates_and_compressor():
    q, k, v = qkv(s=16)
    x = torch.randn(1, 16, 32)
    nsa = NativeSparseAttention.paper(4, 2, 8, 32, block_size=4, top_blocks=3, window=4)
    nsa(q, k, v, x).square().mean().backward()
    for name, p in nsa.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- export ----

class _Wrap(torch.nn.Module):
    def __init__(self, module, **kw):
        super().__init__()
        self.module, self.kw = module, kw

    def forward(self, q, k, v):
        out = self.module(q, k, v, **self.kw)
        return out if isinstance(out, torch.Tensor) else tuple(out)


def _export_and_run(module, args, op_type, names, dynamic=True):
    dims = {0: "batch", 2: "seq"}
    dynamic_shapes = tuple(dims if a.dim() == 4 else {0: "batch", 1: "seq"} for a in args) if dynamic else None
    model = onnxattn.export(module.eval(), args, dynamic_shapes=dynamic_shapes, input_names=names)
    assert [n.op_type for n in model.graph.node if n.domain == "onnxattn"] == [op_type]
    with torch.no_grad():
        want = module(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    for session in (kernel_session(model), function_session(model)):
        got = session.run(None, feeds)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-5)
    return model


def test_export_coarse_fine_and_window_modules():
    q, k, v = qkv(batch=2, s=13)
    _export_and_run(_Wrap(NSACoarseCompression(4, 2)), (q, k, v), "NativeSparseAttention", ["q", "k", "v"])
    model = _export_and_run(_Wrap(NSAFineSelection(4, causal=True), return_indices=True), (q, k, v),
                            "NativeSparseAttention", ["q", "k", "v"])
    node = next(n for n in model.graph.node if n.domain == "onnxattn")
    assert len(node.output) == 3  # Y, and the token list the wrapper returns
    _export_and_run(_Wrap(NSAWindowAttention(3)), (q, k, v), "ScaledDotProductAttention", ["q", "k", "v"])


def test_export_paper_module_with_gate_mlp_and_compressor():
    q, k, v = qkv(batch=2, s=16)
    x = torch.randn(2, 16, 32)
    nsa = NativeSparseAttention.paper(4, 2, 8, 32, block_size=4, top_blocks=3, window=5).eval()
    model = _export_and_run(nsa, (q, k, v, x), "NativeSparseAttention", ["q", "k", "v", "x"])
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("compression", ["linear", "mean"])
def test_export_paper_module_shorter_than_a_block_at_a_static_length(compression):
    # no whole block to compress: the linear compressor's Reshape to [B, H, 0, ...] exported with a 0 in its static
    # shape, which onnxruntime refused at session load ("Invalid position of 0"); now no tokens, no Reshape
    q, k, v = qkv(batch=1, s=3)
    x = torch.randn(1, 3, 32)
    nsa = NativeSparseAttention.paper(4, 2, 8, 32, block_size=4, top_blocks=3, window=5, compression=compression)
    _export_and_run(nsa, (q, k, v, x), "NativeSparseAttention", ["q", "k", "v", "x"], dynamic=False)


def test_export_routed_module():
    q, k, v = qkv(batch=2, s=12)
    positions = torch.arange(12)[None].repeat(2, 1)
    moba = SparseRoutedAttention(4, 2, causal=True, routing="dot", rope=Rope(10000.0), rope_before_routing=True)
    _export_and_run(moba, (q, k, v, positions), "SparseRoutedAttention", ["q", "k", "v", "position_ids"])


# ---- the compressed KV cache ----

@pytest.mark.parametrize("steps", [(10,), (1,) * 13, (5, 1, 1, 7, 2)])
def test_compressed_cache_built_incrementally_equals_compress_kv(steps):
    g = torch.Generator().manual_seed(1)
    total = sum(steps)
    k, v = torch.randn(2, 3, total, 4, generator=g), torch.randn(2, 3, total, 6, generator=g)
    cache, at = CompressedKVCache(chunk_size=3, recent=2), 0
    for n in steps:
        keys, values = cache.update(0, k[:, :, at:at + n], v[:, :, at:at + n])
        at += n
        want_k, want_v = compress_kv(k[:, :, :at], v[:, :, :at], 3, 2)
        torch.testing.assert_close(keys, want_k)
        torch.testing.assert_close(values, want_v)
    assert cache.length(0) == total
    pooled = max(total - 2, 0) // 3 * 3
    torch.testing.assert_close(keys[:, :, : pooled // 3], k[:, :, :pooled].reshape(2, 3, -1, 3, 4).mean(3))
    torch.testing.assert_close(keys[:, :, pooled // 3:], k[:, :, pooled:])


def test_compress_kv_exports():
    class Compress(torch.nn.Module):
        def forward(self, k, v):
            return compress_kv(k, v, 4, 3)

    k, v = qkv(batch=2, hq=2, hkv=2, s=19)[:2]
    model = onnxattn.export(Compress(), (k, v), dynamic_shapes=({2: "seq"}, {2: "seq"}), input_names=["k", "v"])
    for s in (19, 7, 2):
        kk, vv = k[:, :, :s].contiguous(), v[:, :, :s].contiguous()
        got = function_session(model).run(None, {"k": kk.numpy(), "v": vv.numpy()})
        for g, w in zip(got, compress_kv(kk, vv, 4, 3)):
            np.testing.assert_allclose(g, w.numpy(), atol=1e-6)
