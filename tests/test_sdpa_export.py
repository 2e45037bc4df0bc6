"""onnxattn.export on small torch models that use ScaledDotProductAttention: one onnxattn node per use,
the reference functions attached, full checker, dynamic batch and sequence, and the same numbers as eager
torch in onnxruntime with and without our library."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnxattn
from helpers import OP, run_function, run_kernel, run_onnx_reference
from onnxattn import ops
from onnxattn.nn import ScaledDotProductAttention
from onnxattn.ops import sdpa

ATOL = 1e-5  # float32 end to end (see test_sdpa_numerics.py)


class TwoAttentions(torch.nn.Module):
    """Projections, a causal sliding-window GQA attention, then a bidirectional softcapped attention with a
    key-padding mask: two uses of the module, one without and one with a mask."""

    def __init__(self, embed=16, q_heads=4, kv_heads=2):
        super().__init__()
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, embed // q_heads
        self.q = torch.nn.Linear(embed, q_heads * self.head_dim)
        self.kv = torch.nn.Linear(embed, 2 * kv_heads * self.head_dim)
        self.local = ScaledDotProductAttention(num_query_heads=q_heads, num_kv_heads=kv_heads, window=3)
        self.encoder = ScaledDotProductAttention.bidirectional(softcap=5.0)
        self.out = torch.nn.Linear(q_heads * self.head_dim, embed)

    def heads(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.q_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x, mask):
        q, k, v = self.heads(x)
        y = self.local(q, k, v)
        y = self.encoder(y, k, v, mask)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class WithLse(TwoAttentions):
    """One use that also returns the log-sum-exp, with an additive mask."""

    def forward(self, x, bias):
        q, k, v = self.heads(x)
        y, lse = self.local(q, k, v, bias, return_lse=True)
        return self.out(y.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)), lse


def inputs(model, batch, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, 16, generator=g)
    if isinstance(model, WithLse):
        return x, torch.randn(batch, 1, seq, seq, generator=g)
    mask = torch.rand(batch, 1, 1, seq, generator=g) < 0.8
    mask[..., 0] = True  # every row sees a key
    return x, mask


DYNAMIC = ({0: "batch", 1: "seq"}, {0: "batch", 3: "seq"})
DYNAMIC_LSE = ({0: "batch", 1: "seq"}, {0: "batch", 2: "seq", 3: "seq"})
TRACED = (2, 5)  # batch, seq used for export; runs below use other sizes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = TwoAttentions().eval()
    path = tmp_path_factory.mktemp("export") / "two_attentions.onnx"
    proto = onnxattn.export(model, inputs(model, *TRACED), path, dynamic_shapes=DYNAMIC)
    return model, proto, path


@pytest.fixture(scope="module")
def exported_lse():
    torch.manual_seed(1)
    model = WithLse().eval()
    return model, onnxattn.export(model, inputs(model, *TRACED), dynamic_shapes=DYNAMIC_LSE)


def attention_nodes(proto):
    return list(ops.onnxattn_nodes(proto))


def test_one_node_per_use_with_its_attributes(exported):
    _, proto, _ = exported
    nodes = attention_nodes(proto)
    assert [n.op_type for n in nodes] == [OP, OP]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert attrs[0] == dict(causal=1, window=3, band=0, scale=0.0, softcap=0.0)
    assert attrs[1] == dict(causal=0, window=0, band=0, scale=0.0, softcap=5.0)
    assert [len(n.input) for n in nodes] == [3, 4] and [len(n.output) for n in nodes] == [1, 1]
    assert [n.overload for n in nodes] == ["", sdpa.BOOL_MASK]


def test_functions_attached_by_name_and_overload(exported):
    _, proto, _ = exported
    attached = {(f.domain, f.name, f.overload): f for f in proto.functions}
    assert set(attached) == {(ops.DOMAIN, OP, ""), (ops.DOMAIN, OP, sdpa.BOOL_MASK)}
    opset = ops.model_opset(proto)
    for (_, _, overload), function in attached.items():
        assert function == sdpa.build_function(overload, opset)


def test_saved_model_passes_full_check(exported):
    _, proto, path = exported
    loaded = onnx.load(path)
    assert loaded == proto
    onnx.checker.check_model(loaded, full_check=True)


def test_inputs_and_outputs_stay_dynamic(exported):
    _, proto, _ = exported
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.input}
    assert dims == {"x": ["batch", "seq", 16], "mask": ["batch", 1, 1, "seq"]}
    out = proto.graph.output[0].type.tensor_type.shape.dim
    assert not out[0].HasField("dim_value") and not out[1].HasField("dim_value")


RUNNERS = {"kernel": run_kernel, "function-ort": run_function, "function-onnx-reference": run_onnx_reference}


@pytest.mark.parametrize("path", list(RUNNERS))
@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 9), (1, 17)])
def test_runs_at_other_shapes_like_eager(exported, batch, seq, path):
    model, proto, _ = exported
    x, mask = inputs(model, batch, seq, seed=seq)
    with torch.no_grad():
        expected = model(x, mask).numpy()
    (got,) = RUNNERS[path](proto, {"x": x.numpy(), "mask": mask.numpy()})
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL)


def test_lse_variant_exports_two_outputs(exported_lse):
    _, proto = exported_lse
    (node,) = attention_nodes(proto)
    assert len(node.output) == 2 and node.overload == f"{sdpa.ADDITIVE_MASK}+{sdpa.WITH_LSE}"
    assert [(f.name, f.overload) for f in proto.functions] == [(OP, node.overload)]
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("path", ["kernel", "function-ort"])
@pytest.mark.parametrize("batch, seq", [(1, 3), (2, 11)])
def test_lse_variant_runs_like_eager(exported_lse, batch, seq, path):
    model, proto = exported_lse
    x, bias = inputs(model, batch, seq, seed=seq)
    with torch.no_grad():
        y_ref, lse_ref = model(x, bias)
    y, lse = RUNNERS[path](proto, {"x": x.numpy(), "bias": bias.numpy()})
    np.testing.assert_allclose(y, y_ref.numpy(), atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(lse, lse_ref.numpy(), atol=ATOL, rtol=ATOL)


def test_the_torchlib_registry_is_built_once_and_each_export_gets_a_copy():
    """onnxattn.export keeps torch's exporter from rebuilding its torchlib registry on every call: the registry is
    built once per opset and copied; a copy's registrations (each export adds its custom translations) stay its own."""
    _registration = pytest.importorskip("torch.onnx._internal.exporter._registration")
    from onnxattn.export import _reuse_torchlib_registry

    _reuse_torchlib_registry()
    _reuse_torchlib_registry()  # idempotent: wraps once
    assert _registration.ONNXRegistry.from_torchlib.__func__._onnxattn_cached
    a, b = (_registration.ONNXRegistry.from_torchlib(opset_version=18) for _ in range(2))
    assert a is not b and a.opset_version == b.opset_version == 18
    assert a.functions.keys() == b.functions.keys() and len(a.functions) > 100
    target = next(iter(a.functions))
    a.functions[target].insert(0, "a translation of this export only")
    assert b.functions[target][0] != "a translation of this export only"
    assert _registration.ONNXRegistry.from_torchlib(opset_version=18).functions[target] == b.functions[target]
