"""The op registry (onnxattn.ops): schemas registered with onnx.defs, every function overload of every spec
valid for opsets 18..23, and attach_functions (idempotent, opset floor, overload tagging)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.checker
import onnx.defs
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from helpers import (
    OP,
    feeds_of,
    random_problem,
    run_function,
    run_kernel,
    run_onnx_reference,
    sdpa_model,
)
from oracle import sdpa_oracle
from onnxattn import ops
from onnxattn.ops import sdpa

OPSETS = range(ops.MIN_MODEL_OPSET, 24)  # 18..23
SPECS = [pytest.param(spec, id=name) for name, spec in sorted(ops.SPECS.items())]


@pytest.mark.parametrize("spec", SPECS)
def test_schema_is_registered_with_onnx(spec):
    assert onnx.defs.has(spec.name, ops.OPSET_VERSION, ops.DOMAIN)
    schema = onnx.defs.get_schema(spec.name, ops.OPSET_VERSION, ops.DOMAIN)
    assert [i.name for i in schema.inputs] == [i.name for i in spec.inputs]
    assert [o.name for o in schema.outputs] == [o.name for o in spec.outputs]
    assert sorted(schema.attributes) == sorted(a.name for a in spec.attrs)
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    assert [i.option == optional for i in schema.inputs] == [i.optional for i in spec.inputs]
    assert schema.has_type_and_shape_inference_function


@pytest.mark.parametrize("spec", SPECS)
def test_register_schemas_is_idempotent(spec):
    ops.register_schemas()
    ops.register_schemas()
    assert onnx.defs.get_schema(spec.name, ops.OPSET_VERSION, ops.DOMAIN).name == spec.name


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("spec", SPECS)
def test_every_overload_builds_and_passes_check_function(spec, opset):
    assert len(set(spec.overloads)) == len(spec.overloads), "overload names must be unique"
    ctx = onnx.checker.C.CheckerContext()
    ctx.ir_version = ops.IR_VERSION
    ctx.opset_imports = {"": opset, ops.DOMAIN: ops.OPSET_VERSION}
    failures = []
    for overload in spec.overloads:
        function = spec.build_function(overload, opset)
        assert (function.domain, function.name, function.overload) == (ops.DOMAIN, spec.name, overload)
        assert {o.domain: o.version for o in function.opset_import}.get("") == opset
        try:
            onnx.checker.check_function(function, ctx)
        except onnx.checker.ValidationError as e:
            failures.append(f"{overload!r}: {e}")
    assert not failures, "\n".join(failures)


def test_unknown_overload_is_rejected():
    with pytest.raises(ValueError, match="unknown overload"):
        sdpa.build_function("no_such_overload", 18)


def test_get_spec_of_unknown_op():
    with pytest.raises(ops.OpError, match=r"unknown op onnxattn::NoSuchOp \(known: .*ScaledDotProductAttention"):
        ops.get_spec("NoSuchOp")


# (overload, mask kind, with_lse): every signature of ScaledDotProductAttention
SDPA_SIGNATURES = [
    ("", None, False),
    (sdpa.BOOL_MASK, "bool", False),
    (sdpa.ADDITIVE_MASK, "additive", False),
    (sdpa.WITH_LSE, None, True),
    (f"{sdpa.BOOL_MASK}+{sdpa.WITH_LSE}", "bool", True),
    (f"{sdpa.ADDITIVE_MASK}+{sdpa.WITH_LSE}", "additive", True),
]


def test_sdpa_signatures_cover_the_overloads():
    assert sorted(s[0] for s in SDPA_SIGNATURES) == sorted(sdpa.SPEC.overloads)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("overload, mask, with_lse", [pytest.param(*s, id=s[0] or "plain") for s in SDPA_SIGNATURES])
def test_sdpa_every_signature_works_everywhere(overload, mask, with_lse, opset):
    """Each present/absent combination of the optional input and output, at each opset: the checker, the
    kernel, the function in onnxruntime and in onnx.reference all accept it and agree with the oracle."""
    model = sdpa_model(mask=mask, with_lse=with_lse, attrs=dict(causal=1), opset=opset)
    (node,) = ops.onnxattn_nodes(model)
    assert node.overload == overload
    assert [(f.name, f.overload) for f in model.functions] == [(OP, overload)]
    onnx.checker.check_model(model, full_check=True)

    rng = np.random.default_rng(opset)
    attn_mask = None
    if mask == "bool":
        attn_mask = rng.random((3, 6)) < 0.7
    elif mask == "additive":
        attn_mask = rng.standard_normal((3, 6)).astype(np.float32)
    p = random_problem(rng, q_heads=4, kv_heads=2, q_len=3, kv_len=6, head_dim=8, mask=attn_mask)
    y_ref, lse_ref = sdpa_oracle(p.q, p.k, p.v, p.mask, causal=1)
    for run in (run_kernel, run_function, run_onnx_reference):
        outputs = run(model, p.feeds)
        assert len(outputs) == (2 if with_lse else 1)
        np.testing.assert_allclose(outputs[0], y_ref, atol=1e-5, rtol=1e-5, err_msg=run.__name__)
        if with_lse:
            np.testing.assert_allclose(outputs[1], lse_ref, atol=1e-5, rtol=1e-5, err_msg=run.__name__)


def test_single_overload_model_runs_directly_in_reference_evaluator():
    """onnx.reference keys local functions by (domain, name) and ignores `overload`: a model with one
    overload runs without inlining and agrees with the inlined run."""
    model = sdpa_model(mask="bool", with_lse=True, attrs=dict(causal=1))
    assert len(model.functions) == 1
    p = random_problem(np.random.default_rng(0), q_len=4, kv_len=6, head_dim=8, mask=np.random.default_rng(1).random((4, 6)) < 0.7)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = ReferenceEvaluator(model).run(None, p.feeds)
    for x, y in zip(direct, run_onnx_reference(model, p.feeds)):
        np.testing.assert_array_equal(x, y)


def test_reference_evaluator_needs_inlining_with_two_overloads():
    """Why helpers.run_onnx_reference inlines first: with two overloads of one op in a model,
    ReferenceEvaluator resolves both nodes to one body. If this starts passing, onnx learned overloads."""
    q = helper.make_tensor_value_info("Q", TensorProto.FLOAT, ["B", "H", "S", "D"])
    mask = helper.make_tensor_value_info("M", TensorProto.BOOL, ["S", "S"])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "H", "S", "D"])
    nodes = [
        helper.make_node(OP, ["Q", "Q", "Q"], ["Y1"], domain=ops.DOMAIN),
        helper.make_node(OP, ["Y1", "Q", "Q", "M"], ["Y"], domain=ops.DOMAIN),
    ]
    model = helper.make_model(helper.make_graph(nodes, "two", [q, mask], [y]), ir_version=ops.IR_VERSION,
                              opset_imports=[helper.make_opsetid("", 18)])
    ops.attach_functions(model)
    assert sorted(f.overload for f in model.functions) == ["", sdpa.BOOL_MASK]
    rng = np.random.default_rng(0)
    feeds = {"Q": rng.standard_normal((1, 2, 3, 4)).astype(np.float32), "M": rng.random((3, 3)) < 0.7}
    expected = run_function(model, feeds)[0]
    np.testing.assert_allclose(run_onnx_reference(model, feeds)[0], expected, atol=1e-6)
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(RuntimeError, match="expected number of inputs"):
        ReferenceEvaluator(model).run(None, feeds)


# ---------------------------------------------------------------------------------------------------------
# attach_functions


def bare_model(opset=18, **node_attrs) -> onnx.ModelProto:
    return sdpa_model(mask="bool", attrs=node_attrs, opset=opset, attach=False)


def test_attach_functions_is_idempotent():
    once = ops.attach_functions(bare_model(causal=1))
    twice = ops.attach_functions(onnx.ModelProto.FromString(once.SerializeToString()))
    assert twice.SerializeToString() == once.SerializeToString()
    assert len(twice.functions) == 1


def test_attach_functions_replaces_stale_functions_and_keeps_others():
    model = ops.attach_functions(bare_model())
    other = helper.make_function("custom.domain", "Identity2", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])],
                                 [helper.make_opsetid("", 18)])
    stale = sdpa.build_function(sdpa.WITH_LSE, 18)  # an overload no node uses
    model.functions.extend([other, stale])
    ops.attach_functions(model)
    assert sorted((f.domain, f.name, f.overload) for f in model.functions) == [
        ("custom.domain", "Identity2", ""), (ops.DOMAIN, OP, sdpa.BOOL_MASK)]


def test_attach_functions_sets_overload_and_writes_every_attribute():
    model = bare_model(window=3)
    (node,) = ops.onnxattn_nodes(model)
    assert node.overload == "" and [a.name for a in node.attribute] == ["window"]
    ops.attach_functions(model)
    assert node.overload == sdpa.BOOL_MASK
    assert {a.name: helper.get_attribute_value(a) for a in node.attribute} == dict(
        causal=0, window=3, band=0, scale=0.0, softcap=0.0)
    assert {o.domain: o.version for o in model.opset_import}[ops.DOMAIN] == ops.OPSET_VERSION
    assert model.ir_version >= 10


def test_attach_functions_adds_missing_domain_import():
    model = bare_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 18))
    ops.attach_functions(model)
    assert {o.domain: o.version for o in model.opset_import} == {"": 18, ops.DOMAIN: ops.OPSET_VERSION}
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("opset", [13, 17])
def test_attach_functions_rejects_old_opsets(opset):
    with pytest.raises(ops.OpError, match=rf"need opset >= 18, the model has {opset}"):
        ops.attach_functions(bare_model(opset=opset))


def test_attach_functions_builds_for_the_model_opset():
    model = ops.attach_functions(bare_model(opset=21))
    assert [{o.domain: o.version for o in f.opset_import}[""] for f in model.functions] == [21]


def test_attach_functions_finds_nodes_in_subgraphs():
    """A node inside an If branch is tagged and its function attached."""
    inner = sdpa_model(attach=False).graph
    branch = helper.make_graph(list(inner.node), "branch", [], list(inner.output))
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["Y"], then_branch=branch, else_branch=branch)],
        "outer", [cond, *inner.input], list(inner.output),
    )
    model = helper.make_model(graph, ir_version=ops.IR_VERSION,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(ops.DOMAIN, 1)])
    ops.attach_functions(model)
    assert [n.overload for n in ops.onnxattn_nodes(model)] == ["", ""]
    assert [(f.name, f.overload) for f in model.functions] == [(OP, "")]
    p = random_problem(np.random.default_rng(0), q_len=3, kv_len=3, head_dim=8)
    feeds = dict(feeds_of(p.q, p.k, p.v), cond=np.array(True))
    np.testing.assert_allclose(run_function(model, feeds)[0], sdpa_oracle(p.q, p.k, p.v)[0], atol=1e-5)


@pytest.mark.parametrize("op, outputs", [
    ("GroupQueryAttention", ["o", "present_key"]),
    ("GroupQueryAttention", ["o", "", "present_value"]),
    ("MultiHeadLatentAttention", ["o", "present_latent"]),
    ("MultiHeadLatentAttention", ["o", "", "present_k_rope"]),
    ("PagedAttention", ["o", "key_cache_out"]),
    ("PagedAttention", ["o", "", "value_cache_out"]),
])
def test_a_node_asking_for_one_cache_of_two_is_refused_by_shape_inference_and_the_kernel(op, outputs):
    # the kernels ran and returned no second cache (or one of garbage) while strict shape inference accepted the node;
    # only attach_functions / validate said that both caches go together
    from onnxattn.cuda_ep import make_session

    f = TensorProto.FLOAT
    if op == "GroupQueryAttention":
        values = [("query", [1, 2, 32]), ("key", [1, 2, 16]), ("value", [1, 2, 16]), ("past_key", [1, 2, 3, 8]),
                  ("past_value", [1, 2, 3, 8])]
        attrs, message = dict(num_heads=4, kv_num_heads=2), "'present_key' and 'present_value' must be requested"
    elif op == "MultiHeadLatentAttention":
        values = [("query", [1, 2, 24]), ("latent", [1, 2, 8]), ("k_rope", [1, 2, 4]), ("w_uk", [2, 8, 8]),
                  ("w_uv", [2, 8, 8]), ("past_latent", [1, 3, 8]), ("past_k_rope", [1, 3, 4])]
        attrs, message = dict(num_heads=2), "'present_latent' and 'present_k_rope' must be requested"
    else:  # one sequence of 2 new tokens in block 0
        values = [("query", [2, 32]), ("key", [2, 16]), ("value", [2, 16]), ("key_cache", [1, 4, 2, 8]),
                  ("value_cache", [1, 4, 2, 8]), ("block_table", [1, 1]), ("cu_seqlens_q", [2]), ("seq_lens", [1])]
        attrs, message = dict(num_heads=4, kv_num_heads=2), "'key_cache_out' and 'value_cache_out' must be requested"
    index = {"block_table": np.zeros((1, 1), np.int32), "cu_seqlens_q": np.array([0, 2], np.int32),
             "seq_lens": np.array([2], np.int32)}
    node = helper.make_node(op, [n for n, _ in values], outputs, domain=ops.DOMAIN, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.INT32 if n in index else f, s)
                                            for n, s in values],
                              [helper.make_tensor_value_info(n, f, None) for n in outputs if n])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    with pytest.raises(onnx.shape_inference.InferenceError, match=message):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    feeds = {n: index.get(n, np.zeros(s, np.float32)) for n, s in values}
    with pytest.raises(Exception, match=message):
        make_session(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
