"""The torch side of onnxattn::LightningIndexer (DeepSeek-V3.2's DSA key selection): the functional custom op
against a loop oracle of the contract and against the module's own math, ties and padding, the custom op's
bad-input errors, and the export of the LightningIndexer module (projections, LayerNorm and RoPE as standard ops,
one LightningIndexer node) run by onnxruntime through the node's function at other shapes, both cache modes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.reference
import pytest
import torch
from model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

import onnxattn.export as ox
from onnxattn import ops
from onnxattn.cuda_ep import make_session
from onnxattn.nn import LightningIndexer, Rope, lightning_indexer, lightning_indexer_reference
from onnxattn.nn.dsa import lightning_indexer_scores

CPU = ["CPUExecutionProvider"]


def _inputs(b=2, s=3, h=4, d=8, total=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, s, h * d, generator=g, dtype=dtype), torch.randn(b, 1, total, d, generator=g, dtype=dtype),
            torch.randn(b, s, h, generator=g))


def _oracle(query, key, weights, past_lengths, *, num_heads, top_k, scale=0.0):
    """The contract query by query in float64 (scores) and plain Python (selection): sort by (-score, position)."""
    b, s, width = query.shape
    d = key.shape[-1]
    k = key.reshape(b, -1, d).double()
    q = query.double().reshape(b, s, num_heads, d)
    scale = scale or d ** -0.5
    out = np.full((b, s, top_k), -1, dtype=np.int64)
    for bi in range(b):
        first = k.shape[1] - s if past_lengths is None else int(past_lengths[bi])
        for i in range(s):
            visible = range(first + i + 1)
            score = {t: float((weights[bi, i].double() * torch.relu(scale * (q[bi, i] @ k[bi, t]))).sum())
                     for t in visible}
            picked = sorted(sorted(visible, key=lambda t: (-score[t], t))[:top_k])
            out[bi, i, :len(picked)] = picked
    return out


@pytest.mark.parametrize("b, s, h, d, total, top_k, shared", [
    (2, 3, 4, 8, 7, 4, False),    # prefill over a past, some rows padded
    (1, 1, 2, 16, 9, 3, False),   # decode
    (2, 5, 3, 4, 5, 8, False),    # no past, top_k > T: every row padded
    (3, 2, 4, 8, 10, 3, True),    # shared buffers, each row its own past length
])
def test_functional_matches_oracle(b, s, h, d, total, top_k, shared):
    query, key, weights = _inputs(b, s, h, d, total)
    lengths = torch.tensor([0, 3, total - s][:b]) if shared else None
    got = lightning_indexer(query, key, weights, lengths, num_heads=h, top_k=top_k)
    assert got.dtype == torch.int64 and got.shape == (b, s, top_k)
    np.testing.assert_array_equal(got.numpy(), _oracle(query, key, weights, lengths, num_heads=h, top_k=top_k))
    # key [B, T, D] is the same op; the eager reference is what the custom op runs
    flat = lightning_indexer(query, key[:, 0], weights, lengths, num_heads=h, top_k=top_k)
    assert torch.equal(flat, got)
    assert torch.equal(lightning_indexer_reference(query, key, weights, lengths, num_heads=h, top_k=top_k), got)


def test_scale_and_low_precision_inputs():
    query, key, weights = _inputs(total=9)
    got = lightning_indexer(query, key, weights, num_heads=4, top_k=3, scale=0.7)
    np.testing.assert_array_equal(got.numpy(), _oracle(query, key, weights, None, num_heads=4, top_k=3, scale=0.7))
    for dtype in (torch.float16, torch.bfloat16):  # scored in float32 whatever the input type
        half = lightning_indexer(query.to(dtype), key.to(dtype), weights, num_heads=4, top_k=3)
        want = _oracle(query.to(dtype).float(), key.to(dtype).float(), weights, None, num_heads=4, top_k=3)
        np.testing.assert_array_equal(half.numpy(), want)


def test_ties_go_to_the_lower_position_and_lists_ascend():
    query, key, weights = _inputs(b=1, s=2, total=12)
    # zero head weights: every visible key scores 0, so the first top_k positions win
    got = lightning_indexer(query, key, torch.zeros_like(weights), num_heads=4, top_k=5)
    assert got.tolist() == [[[0, 1, 2, 3, 4]] * 2]
    # repeated keys tie exactly: the lower copy wins; a high-scoring late key is listed last (ascending order)
    key = key.clone()
    key[:, :, 6:] = key[:, :, :6]
    got = lightning_indexer(query, key, weights.abs(), num_heads=4, top_k=4)
    assert (got.diff(dim=-1) > 0).all()
    scores = lightning_indexer_scores(query, key, weights.abs(), num_heads=4)
    for i in range(2):
        picked = set(got[0, i].tolist())
        for t in range(6, 12):  # a copy is picked only with its original
            assert t not in picked or t - 6 in picked or scores[0, i, t - 6] < scores[0, i, t]


def test_scores_are_the_module_math():
    """lightning_indexer_scores is DeepSeek-V3.2's indexer score (transformers' form: per-head ReLU scores
    [B, H, S, T], weighted by the head weights, summed), with hidden keys at -inf."""
    query, key, weights = _inputs(b=2, s=3, h=4, d=8, total=7)
    q = query.unflatten(-1, (4, 8)).transpose(1, 2)  # [B, H, S, D]
    per_head = torch.relu(q @ key.transpose(-1, -2) * 8 ** -0.5)  # [B, H, S, T]
    want = (per_head * weights.transpose(1, 2)[..., None]).sum(1)
    want = want.masked_fill(torch.arange(7) > torch.arange(4, 7)[:, None], float("-inf"))
    got = lightning_indexer_scores(query, key, weights, num_heads=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _module(interleaved=False, topk=5):
    torch.manual_seed(0)
    return LightningIndexer(32, 24, 4, 16, 8, topk, rope=Rope(interleaved=interleaved)).eval()


@pytest.mark.parametrize("interleaved", [False, True])
def test_module_is_the_functional_on_its_projections(interleaved):
    m = _module(interleaved)
    g = torch.Generator().manual_seed(1)
    x, q_resid, past = torch.randn(2, 3, 32, generator=g), torch.randn(2, 3, 24, generator=g), torch.randn(2, 1, 6, 16)
    with torch.no_grad():
        picks, keys = m(x, q_resid, past_keys=past)
        positions = torch.arange(6, 9)[None]
        q = m._rotate(m.wq_b(q_resid).unflatten(-1, (4, 16)).transpose(1, 2), positions).transpose(1, 2).flatten(2)
        weights = m.weights_proj(x) * 4 ** -0.5
        assert torch.equal(keys, torch.cat([past, m.keys(x, positions)], dim=2))
        np.testing.assert_array_equal(picks.numpy(), _oracle(q, keys, weights, None, num_heads=4, top_k=5))


def test_module_shared_buffers_pick_as_concatenated_caches():
    m = _module()
    g = torch.Generator().manual_seed(2)
    x, q_resid = torch.randn(2, 2, 32, generator=g), torch.randn(2, 2, 24, generator=g)
    lengths = torch.tensor([3, 6])
    history = torch.randn(2, 1, 6, 16, generator=g)
    buffer = torch.cat([history, torch.randn(2, 1, 4, 16, generator=g)], dim=2)  # junk after each row's past
    with torch.no_grad():
        picks, present = m(x, q_resid, past_keys=buffer, past_lengths=lengths)
        for b in range(2):
            n = int(lengths[b])
            want, keys = m(x[b:b + 1], q_resid[b:b + 1], past_keys=history[b:b + 1, :, :n])
            assert torch.equal(picks[b:b + 1], want)
            torch.testing.assert_close(present[b:b + 1, :, :n + 2], keys)  # batch 1 vs 2: rounding


# ---------------------------------------------------------------------------------------------------------
# Bad input: the custom op's ValueErrors name the op and the input


def _bad_cases():
    q, k, w = _inputs(b=2, s=3, h=4, d=8, total=7)
    lengths = torch.tensor([0, 4])
    return [
        ("query-rank", (q[0], k, w, None), {}, "input 'query'"),
        ("key-batch", (q, k[:1], w, None), {}, "input 'key'"),
        ("key-rank", (q, k[:, 0, 0], w, None), {}, "input 'key'"),
        ("key-too-short", (q, k[:, :, :2], w, None), {}, "input 'key'"),
        ("query-width", (q[..., :30], k, w, None), {}, "query width"),
        ("weights-heads", (q, k, w[..., :3], None), {}, "input 'weights'"),
        ("weights-dtype", (q, k, w.double(), None), {}, "input 'weights' must be float32"),
        ("key-dtype", (q, k.half(), w, None), {}, "input 'key'"),
        ("past-lengths-shape", (q, k, w, lengths[:1]), {}, "input 'past_lengths'"),
        ("past-lengths-dtype", (q, k, w, lengths.int()), {}, "input 'past_lengths' must be int64"),
        ("past-lengths-negative", (q, k, w, torch.tensor([0, -1])), {}, r"past_lengths\[1\] = -1 is out of range"),
        ("past-lengths-overflow", (q, k, w, torch.tensor([5, 0])), {}, r"past_lengths\[0\] = 5 is out of range"),
        ("num-heads", (q, k, w, None), dict(num_heads=0), "num_heads"),
        ("top-k", (q, k, w, None), dict(top_k=0), "top_k"),
    ]


@pytest.mark.parametrize("args, attrs, message", [pytest.param(*c[1:], id=c[0]) for c in _bad_cases()])
def test_bad_input_names_the_op_and_input(args, attrs, message):
    with pytest.raises(ValueError, match=message) as info:
        lightning_indexer(*args, **dict(num_heads=4, top_k=3) | attrs)
    assert str(info.value).startswith("LightningIndexer:")


# ---------------------------------------------------------------------------------------------------------
# Export: one LightningIndexer node, run through its function by onnxruntime (no library) and onnx.reference


class _Concat(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x, q_resid, past_keys):
        return self.m(x, q_resid, past_keys=past_keys)


class _Shared(_Concat):
    def forward(self, x, q_resid, past_keys, past_lengths):
        return self.m(x, q_resid, past_keys=past_keys, past_lengths=past_lengths)


def _feeds(mode, batch, seq, past, seed):
    g = torch.Generator().manual_seed(seed)
    x, q_resid = torch.randn(batch, seq, 32, generator=g), torch.randn(batch, seq, 24, generator=g)
    if mode == "concat":
        return x, q_resid, torch.randn(batch, 1, past, 16, generator=g)
    lengths = torch.randint(0, past + 1, (batch,), generator=g)  # buffers of past + seq slots
    return x, q_resid, torch.randn(batch, 1, past + seq, 16, generator=g), lengths


_DYNAMIC = {"concat": ({0: "batch", 1: "seq"}, {0: "batch", 1: "seq"}, {0: "batch", 2: "past"}),
            "shared": ({0: "batch", 1: "seq"}, {0: "batch", 1: "seq"}, {0: "batch", 2: "buffer"}, {0: "batch"})}
_NAMES = ["x", "q_resid", "past_keys", "past_lengths"]


@pytest.fixture(scope="module")
def exported():
    protos = {}
    for mode, wrapper in (("concat", _Concat), ("shared", _Shared)):
        graph = wrapper(_module()).eval()
        args = _feeds(mode, 2, 3, 4, seed=0)
        protos[mode] = graph, ox.export(graph, args, dynamic_shapes=_DYNAMIC[mode], input_names=_NAMES[:len(args)],
                                        output_names=["key_indices", "present_keys"])
    return protos


@pytest.mark.parametrize("mode", ["concat", "shared"])
def test_export_is_one_lightning_indexer_node(exported, mode):
    _, proto = exported[mode]
    nodes = list(ops.onnxattn_nodes(proto))
    assert [n.op_type for n in nodes] == ["LightningIndexer"]
    node = nodes[0]
    assert node.overload == ("shared" if mode == "shared" else "")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == dict(num_heads=4, top_k=5, scale=0.0)  # explicit (onnx.reference ignores defaults)
    assert len(node.input) == (4 if mode == "shared" else 3) and node.output[0] == "key_indices"
    # no unfused indexer left: the [B, S, H, T] scores and their TopK live only in the node's function
    op_types = {n.op_type for n in proto.graph.node}
    assert not op_types & {"TopK", "Relu", "ReduceSum"}, op_types
    assert {"LayerNormalization", "MatMul"} <= op_types
    assert [f.name for f in proto.functions] == ["LightningIndexer"]
    onnx.checker.check_model(proto, full_check=True)
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.input}
    past = "past" if mode == "concat" else "buffer"
    assert dims["x"] == ["batch", "seq", 32] and dims["past_keys"] == ["batch", 1, past, 16]
    out = [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert out[2] == 5 and all(isinstance(v, str) for v in out[:2]), out
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


@pytest.mark.parametrize("mode", ["concat", "shared"])
@pytest.mark.parametrize("batch, seq, past", [(2, 3, 4), (1, 1, 9), (3, 6, 2), (2, 7, 0)])
def test_exported_function_runs_like_eager(exported, mode, batch, seq, past):
    graph, proto = exported[mode]
    session = make_session(proto, providers=CPU, use_library=False)
    args = _feeds(mode, batch, seq, past, seed=seq + past)
    with torch.no_grad():
        want = [t.numpy() for t in graph(*args)]
    got = session.run(None, {name: a.numpy() for name, a in zip(_NAMES, args)})
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_functional_export_runs_in_onnx_reference(shared):
    """The bare op, exported from the functional: onnx.reference (exact arity, explicit attributes) and onnxruntime
    without the library agree with eager, both overloads."""

    class Op(torch.nn.Module):
        def forward(self, query, key, weights, past_lengths=None):
            return lightning_indexer(query, key, weights, past_lengths, num_heads=4, top_k=3)

    query, key, weights = _inputs(b=2, s=3, h=4, d=8, total=6)
    args = (query, key, weights) + ((torch.tensor([1, 3]),) if shared else ())
    dynamic = ({0: "b", 1: "s"}, {0: "b", 2: "t"}, {0: "b", 1: "s"}) + (({0: "b"},) if shared else ())
    names = ["query", "key", "weights", "past_lengths"][:len(args)]
    proto = ox.export(Op().eval(), args, dynamic_shapes=dynamic, input_names=names)
    assert [n.op_type for n in proto.graph.node] == ["LightningIndexer"]
    feeds = {n: a.numpy() for n, a in zip(names, args)}
    want = Op()(*args).numpy()
    np.testing.assert_array_equal(onnx.reference.ReferenceEvaluator(proto).run(None, feeds)[0], want)
    np.testing.assert_array_equal(make_session(proto, providers=CPU, use_library=False).run(None, feeds)[0], want)
