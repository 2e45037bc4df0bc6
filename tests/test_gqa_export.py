"""onnxattn.export of the GroupQueryAttention modules: each exports to exactly the expected onnxattn nodes
(one GroupQueryAttention per use with the right overload and attributes; LocalAttention(kind="band") and
AttentionHead to ScaledDotProductAttention; merged QKV as one MatMul + Split), the matching functions are
attached, the full checker passes, and the model runs at other batch / sequence / past lengths like eager
torch in onnxruntime without the library (the function), in onnx.reference, and with the library (our
kernels). Also: unused
trailing present outputs are dropped from the node (and kept when used).

Tolerance: float32 end to end; onnxruntime's and torch's matmuls round differently (~1e-6 on outputs of
magnitude ~1), so 2e-5 absolute + 1e-5 relative.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pytest
import torch

import onnxattn
from helpers import GQA, OP as SDPA, gqa_model, run_function, run_kernel, run_onnx_reference
from onnxattn import ops
from onnxattn.nn import AttentionHead, GlobalAttention, GroupedQueryAttention, LocalAttention, Rope, RopeScaling

ATOL, RTOL = 2e-5, 1e-5
DIM = 32


class Plain(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x)


class WithPast(Plain):
    """Explicit cache in, present caches out."""

    def forward(self, x, past_key, past_value):
        y, (k, v) = self.attn(x, past_key=past_key, past_value=past_value, return_present=True)
        return y, k, v


class WithPastOutputOnly(Plain):
    """Computes the present caches but returns only the output: the node must lose its present outputs."""

    def forward(self, x, past_key, past_value):
        return self.attn(x, past_key=past_key, past_value=past_value, return_present=True)[0]


class WithPastKeyOnly(Plain):
    """Returns present_key but not present_value: the node must keep both (they are a pair)."""

    def forward(self, x, past_key, past_value):
        y, (k, _) = self.attn(x, past_key=past_key, past_value=past_value, return_present=True)
        return y, k


class Shared(Plain):
    """Shared-buffer cache: preallocated buffers plus valid lengths per sequence."""

    def forward(self, x, past_key, past_value, past_lengths):
        y, (k, v) = self.attn(x, past_key=past_key, past_value=past_value, past_lengths=past_lengths,
                              return_present=True)
        return y, k, v


class Masked(Plain):
    """Key-padding mask and explicit positions."""

    def forward(self, x, attention_mask, position_ids):
        return self.attn(x, attention_mask=attention_mask, position_ids=position_ids)


class BandMasked(Plain):
    def forward(self, x, attention_mask):
        return self.attn(x, attention_mask=attention_mask)


X = {0: "batch", 1: "seq"}
CACHE = {0: "batch", 2: "past"}
DYNAMIC = {
    Plain: (X,),
    WithPast: (X, CACHE, CACHE),
    WithPastOutputOnly: (X, CACHE, CACHE),
    WithPastKeyOnly: (X, CACHE, CACHE),
    Shared: (X, {0: "batch", 2: "buffer"}, {0: "batch", 2: "buffer"}, {0: "batch"}),
    Masked: (X, X, X),
    BandMasked: (X, X),
}


@dataclasses.dataclass(frozen=True)
class ExportCase:
    id: str
    build: Callable[[], torch.nn.Module]
    wrapper: type[Plain]
    nodes: tuple[tuple[str, str, dict[str, Any]], ...]  # (op type, overload, attributes that must match)
    matmuls: int = 4  # MatMul nodes in the graph: projections
    splits: int = 0
    outputs: int = 1  # outputs of the attention node

    @property
    def has_gqa(self) -> bool:
        return any(op == GQA for op, _, _ in self.nodes)


def _yarn_factor(factor: float) -> float:
    return 0.1 * math.log(factor) + 1.0


def _with_sinks():
    attn = GroupedQueryAttention(DIM, 4, 2, window=3, sinks=True)
    with torch.no_grad():
        attn.sinks.copy_(torch.tensor([1.5, -0.5, 0.0, 3.0]))  # the initial zeros would still matter, but less
    return attn


def _merged_with_bias():
    attn = GroupedQueryAttention(DIM, 4, 2, bias=True)
    attn.merge_qkv()
    return attn


CASES = [
    ExportCase("gqa", lambda: GroupedQueryAttention(DIM, 4, 2), Plain,
               ((GQA, "", dict(num_heads=4, kv_num_heads=2, causal=1, window=0, rope=1, rotary_dim=0,
                               rope_base=10000.0, rope_interleaved=0, rope_attention_scaling=1.0)),)),
    ExportCase("gqa-qk-norm-llama3", lambda: GroupedQueryAttention(
        DIM, 4, 2, qk_norm=True, qk_norm_eps=1e-5,
        rope=Rope(base=500000.0, scaling=RopeScaling("llama3", 8.0, original_max_positions=64))), Plain,
        ((GQA, "qnorm+knorm+inv_freq", dict(rope=1, rope_attention_scaling=1.0, qk_norm_epsilon=1e-5)),)),
    ExportCase("gqa-yarn-partial-interleaved", lambda: GroupedQueryAttention(
        DIM, 4, 2, head_dim=12, rope=Rope(rotary_dim=6, interleaved=True,
                                          scaling=RopeScaling("yarn", 4.0, original_max_positions=32))), Plain,
        ((GQA, "inv_freq", dict(rotary_dim=6, rope_interleaved=1, rope_attention_scaling=_yarn_factor(4.0))),)),
    # original context 8: traced at positions <= 7 (short factors), RUN_SHAPES reach 9 (long)
    ExportCase("gqa-longrope-partial-past", lambda: GroupedQueryAttention(
        DIM, 4, 2, rope=Rope(rotary_dim=6, scaling=RopeScaling("longrope", 4.0, original_max_positions=8,
                                                                short_factor=(1.0, 1.3, 2.0),
                                                                long_factor=(2.5, 4.0, 8.0)))), WithPast,
        ((GQA, "past+inv_freq+present", dict(rotary_dim=6, rope_attention_scaling=math.sqrt(1 + math.log(4) /
                                                                                            math.log(8)))),),
        outputs=3),
    ExportCase("gqa-merged-qkv", lambda: GroupedQueryAttention(DIM, 4, 2, merged_qkv=True, qk_norm=True), Plain,
               ((GQA, "qnorm+knorm", {}),), matmuls=2, splits=1),
    ExportCase("gqa-past-present", lambda: GroupedQueryAttention(DIM, 4, 2, window=4, softcap=3.0), WithPast,
               ((GQA, "past+present", dict(window=4, softcap=3.0)),), outputs=3),
    ExportCase("gqa-sinks-past-present", _with_sinks, WithPast, ((GQA, "past+sinks+present", dict(window=3)),),
               outputs=3),
    ExportCase("gqa-merged-past-present", _merged_with_bias, WithPast, ((GQA, "past+present", {}),), matmuls=2,
               splits=1, outputs=3),
    ExportCase("gqa-shared-buffer", lambda: GroupedQueryAttention(DIM, 4, 1, qk_norm=True), Shared,
               ((GQA, "past+shared+qnorm+knorm+present", dict(kv_num_heads=1)),), outputs=3),
    ExportCase("gqa-mask-positions", lambda: GroupedQueryAttention(DIM, 4, 2, scale=0.25), Masked,
               ((GQA, "pos+mask", dict(scale=0.25)),)),
    ExportCase("gqa-bert", lambda: GroupedQueryAttention(DIM, 4, rope=None, causal=False, bias=True), Masked,
               ((GQA, "pos+mask", dict(causal=0, rope=0, kv_num_heads=4)),)),
    ExportCase("global", lambda: GlobalAttention(DIM, 4, 2, qk_norm=True), Plain,
               ((GQA, "qnorm+knorm", dict(window=0, causal=1)),)),
    ExportCase("local-sliding-past", lambda: LocalAttention(DIM, 4, 2, window=3), WithPast,
               ((GQA, "past+present", dict(window=3, causal=1)),), outputs=3),
    ExportCase("local-band", lambda: LocalAttention(DIM, 4, 2, window=2, kind="band"), Plain,
               ((SDPA, "", dict(band=2, causal=0, window=0)),)),
    ExportCase("local-band-causal-mask", lambda: LocalAttention(DIM, 4, 2, window=1, kind="band", causal=True,
                                                                rope=None), BandMasked,
               ((SDPA, "bool_mask", dict(band=1, causal=1)),)),
    ExportCase("attention-head", lambda: AttentionHead(DIM, 8, bias=True), Plain,
               ((SDPA, "", dict(causal=1, band=0, window=0)),), matmuls=3),
    ExportCase("present-unused", lambda: GroupedQueryAttention(DIM, 4, 2), WithPastOutputOnly, ((GQA, "past", {}),)),
    ExportCase("present-key-only", lambda: GroupedQueryAttention(DIM, 4, 2), WithPastKeyOnly,
               ((GQA, "past+present", {}),), outputs=3),
]
CASES_BY_ID = {c.id: c for c in CASES}
TRACED = (2, 5, 3)  # batch, seq, past used for export; the runs use other sizes
RUN_SHAPES = [(1, 1, 7), (3, 4, 2), (1, 9, 1)]


def inputs_of(case: ExportCase, module: Plain, batch: int, seq: int, past: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, DIM, generator=g)
    attn = module.attn
    if case.wrapper in (WithPast, WithPastOutputOnly, WithPastKeyOnly):
        shape = (batch, attn.num_kv_heads, past, attn.head_dim)
        return x, torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    if case.wrapper is Shared:
        buffer = past + seq + 2
        lengths = torch.tensor([max(past - i, 0) for i in range(batch)])
        k, v = (torch.randn(batch, attn.num_kv_heads, buffer, attn.head_dim, generator=g) for _ in range(2))
        for b, n in enumerate(lengths.tolist()):  # stale slots
            k[b, :, n:], v[b, :, n:] = float("nan"), float("nan")
        return x, k, v, lengths
    if case.wrapper in (Masked, BandMasked):
        mask = torch.ones(batch, seq, dtype=torch.bool)
        mask[-1, : seq // 2] = False  # the last sequence is left-padded
        if case.wrapper is BandMasked:
            return x, mask
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return x, mask, positions
    return (x,)


@functools.lru_cache(maxsize=None)
def exported(case_id: str) -> tuple[Plain, onnx.ModelProto]:
    case = CASES_BY_ID[case_id]
    torch.manual_seed(0)
    module = case.wrapper(case.build()).eval()
    with torch.no_grad():
        for name in ("q_norm", "k_norm"):  # distinct, non-trivial norm weights
            if getattr(module.attn, name, None) is not None:
                getattr(module.attn, name).uniform_(0.5, 1.5)
    proto = onnxattn.export(module, inputs_of(case, module, *TRACED), dynamic_shapes=DYNAMIC[case.wrapper])
    return module, proto


def case_params(cases=CASES):
    return [pytest.param(c, id=c.id) for c in cases]


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("case", case_params())
def test_exports_exactly_the_expected_nodes(case: ExportCase):
    _, proto = exported(case.id)
    nodes = list(ops.onnxattn_nodes(proto))
    assert [(n.op_type, n.overload) for n in nodes] == [(op, overload) for op, overload, _ in case.nodes]
    for node, (_, _, attrs) in zip(nodes, case.nodes):
        got = attributes(node)
        assert {name: got[name] for name in attrs} == pytest.approx(attrs)
        assert len(node.output) == case.outputs
    op_types = [n.op_type for n in proto.graph.node]
    assert op_types.count("MatMul") == case.matmuls and op_types.count("Split") == case.splits, op_types


@pytest.mark.parametrize("case", case_params())
def test_functions_attached_and_full_check(case: ExportCase, tmp_path):
    _, proto = exported(case.id)
    spec = {op: ops.get_spec(op) for op, _, _ in case.nodes}
    opset = ops.model_opset(proto)
    attached = {(f.name, f.overload): f for f in proto.functions if f.domain == ops.DOMAIN}
    assert set(attached) == {(op, overload) for op, overload, _ in case.nodes}
    for (op, overload), function in attached.items():
        assert function == spec[op].build_function(overload, opset)
    path = tmp_path / "model.onnx"
    onnxattn.export.save(proto, path)
    assert onnx.load(path) == proto
    onnx.checker.check_model(onnx.load(path), full_check=True)


def test_inputs_and_outputs_stay_dynamic():
    _, proto = exported("gqa-past-present")
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.input}
    cache = ["batch", 2, "past", 8]
    assert dims == {"x": ["batch", "seq", DIM], "past_key": cache, "past_value": cache}
    for output in proto.graph.output:
        first = output.type.tensor_type.shape.dim[0]
        assert not first.HasField("dim_value"), output.name


def _path_params():
    params = []
    for case in CASES:
        for path in ("function-ort", "function-onnx-reference", "kernel"):
            params.append(pytest.param(case, path, id=f"{case.id}-{path}"))
    return params


RUNNERS = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference, "kernel": run_kernel}


@pytest.mark.parametrize("case, path", _path_params())
def test_runs_at_other_shapes_like_eager(case: ExportCase, path: str):
    module, proto = exported(case.id)
    shapes = RUN_SHAPES if path != "function-onnx-reference" else RUN_SHAPES[1:2]  # onnx.reference is slow
    names = [i.name for i in proto.graph.input]
    for batch, seq, past in shapes:
        args = inputs_of(case, module, batch, seq, past, seed=seq)
        with torch.no_grad():
            expected = module(*args)
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        got = RUNNERS[path](proto, {name: a.numpy() for name, a in zip(names, args)})
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, atol=ATOL, rtol=RTOL, err_msg=f"batch {batch}, seq {seq}, past {past}")


def test_longrope_switch_is_exported_not_folded():
    """LongRoPE's factor set is chosen in the graph, by a Greater on the positions (from the past length) and a
    Where in front of rope_inv_freq, not fixed at the traced length; test_runs_at_other_shapes_like_eager runs
    both sides of the boundary (positions up to 7, and up to 9) on every path."""
    module, proto = exported("gqa-longrope-partial-past")
    producers = {out: n for n in proto.graph.node for out in n.output}
    (node,) = ops.onnxattn_nodes(proto)
    where = producers[node.input[9]]
    assert where.op_type == "Where" and producers[where.input[0]].op_type == "Greater"
    values = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    np.testing.assert_array_equal(values[where.input[1]], module.attn.long_rope_inv_freq.numpy())
    np.testing.assert_array_equal(values[where.input[2]], module.attn.rope_inv_freq.numpy())
    assert not np.allclose(module.attn.long_rope_inv_freq.numpy(), module.attn.rope_inv_freq.numpy())


# ---------------------------------------------------------------------------------------------------------
# Unused trailing present outputs (attach_functions)

@pytest.mark.parametrize("read, outputs, overload", [
    (("output",), 1, "past"),
    (("output", "present_key", "present_value"), 3, "past+present"),
    (("output", "present_value"), 3, "past+present"),  # present_key is not trailing
    (("output", "present_key"), 3, "past+present"),  # present_value is unused but pairs with present_key
    (("present_key", "present_value"), 3, "past+present"),
])
def test_attach_functions_drops_unused_trailing_present_outputs(read, outputs, overload):
    model = gqa_model(["past_key", "past_value"], with_present=True, attrs=dict(num_heads=4, kv_num_heads=2),
                      attach=False)
    kept = [o for o in model.graph.output if o.name in read]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    ops.attach_functions(model)
    (node,) = ops.onnxattn_nodes(model)
    assert len(node.output) == outputs and node.overload == overload
    assert [(f.name, f.overload) for f in model.functions] == [(GQA, overload)]
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    feeds = {"query": rng.standard_normal((1, 3, 32)), "key": rng.standard_normal((1, 3, 16)),
             "value": rng.standard_normal((1, 3, 16)), "past_key": rng.standard_normal((1, 2, 2, 8)),
             "past_value": rng.standard_normal((1, 2, 2, 8))}
    got = run_function(model, {k: v.astype(np.float32) for k, v in feeds.items()})
    assert len(got) == len(read)


def test_attach_functions_drops_present_outputs_again_when_no_longer_read():
    """attach_functions works in place and may run again after the graph changed: present outputs read by
    another node are kept; once nothing reads them, re-attaching drops them (the attached function's own
    formal names, present_key/present_value, are not reads of the graph's values of the same names)."""
    model = gqa_model(["past_key", "past_value"], with_present=True, attrs=dict(num_heads=4, kv_num_heads=2),
                      attach=False)
    (node,) = [n for n in model.graph.node if n.domain == ops.DOMAIN]
    model.graph.node.append(onnx.helper.make_node("Identity", ["present_key"], ["k_copy"]))
    del model.graph.output[1:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("k_copy", onnx.TensorProto.FLOAT, None))
    ops.attach_functions(model)
    assert len(node.output) == 3 and node.overload == "past+present"
    model.graph.node.pop()
    del model.graph.output[1:]
    ops.attach_functions(model)
    assert list(node.output) == ["output"] and node.overload == "past"
    assert [(f.name, f.overload) for f in model.functions] == [(GQA, "past")]
