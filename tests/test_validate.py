"""onnxattn.validate and `onnxattn validate`: good models pass, each kind of defect is reported."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cli import main as cli_main
from onnxattn.validation import validate


def sdpa_model(q_shape=("B", 4, "S", 16), kv_shape=("B", 2, "S", 16), dtype=TensorProto.FLOAT, attach=True,
               mask=None, **attrs):
    inputs = ["Q", "K", "V"] + (["M"] if mask is not None else [])
    node = helper.make_node("ScaledDotProductAttention", inputs, ["Y"], domain=ops.DOMAIN, name="attn", **attrs)
    graph_inputs = [
        helper.make_tensor_value_info("Q", dtype, list(q_shape)),
        helper.make_tensor_value_info("K", dtype, list(kv_shape)),
        helper.make_tensor_value_info("V", dtype, list(kv_shape)),
    ]
    if mask is not None:
        graph_inputs.append(helper.make_tensor_value_info("M", mask[0], list(mask[1])))
    model = helper.make_model(
        helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("Y", dtype, ["b", "h", "s", "d"])]),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
        ir_version=ops.IR_VERSION,
    )
    if attach:
        ops.attach_functions(model)
    return model


def failed_checks(report) -> dict[str, str]:
    out = {f"model:{c.name}": c.message for c in report.model_checks if not c.ok}
    for n in report.nodes:
        out.update({c.name: c.message for c in n.checks if not c.ok})
    return out


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
@pytest.mark.parametrize("mask", [None, (TensorProto.BOOL, ["B", 1, "S", "S"])])
def test_valid_model_passes_with_numerics(dtype, mask):
    report = validate(sdpa_model(dtype=dtype, mask=mask, causal=1, window=3), numerics=True, dims={"B": 2, "S": 9})
    assert report.ok, str(report)
    assert [c.name for c in report.nodes[0].checks] == ["schema", "attrs", "shapes", "function", "numerics"]
    assert "max error" in report.nodes[0].checks[-1].message


@pytest.mark.parametrize("version", [0, 2])
def test_a_domain_version_this_package_does_not_define_is_reported(version):
    model = sdpa_model()
    next(o for o in model.opset_import if o.domain == ops.DOMAIN).version = version
    report = validate(model)
    assert not report.ok
    assert failed_checks(report)["model:opset"] == (f"the model imports domain 'onnxattn' at version {version}; "
                                                    "this package defines version 1")


def test_missing_function_is_reported():
    model = sdpa_model()
    del model.functions[:]
    failed = failed_checks(validate(model))
    assert "no function onnxattn::ScaledDotProductAttention" in failed["function"]


def test_tampered_function_is_reported():
    model = sdpa_model()
    model.functions[0].node[0].op_type = "Identity"
    assert "differs from this package's reference function" in failed_checks(validate(model))["function"]


def test_wrong_overload_is_reported():
    model = sdpa_model(mask=(TensorProto.BOOL, ["S", "S"]))
    model.graph.node[0].overload = ""
    assert "need 'bool_mask'" in failed_checks(validate(model))["function"]


def test_bad_attribute_is_reported():
    model = sdpa_model(attach=False, causal=2)
    failed = failed_checks(validate(model))
    assert "attribute 'causal' must be 0 or 1, got 2" in failed["attrs"]


def test_bad_head_ratio_is_reported_by_shape_inference_and_node_check():
    model = sdpa_model(q_shape=(1, 3, 5, 16), kv_shape=(1, 2, 5, 16), attach=False)
    failed = failed_checks(validate(model))
    assert "must be a multiple of key/value heads" in failed["shapes"]
    assert "must be a multiple of key/value heads" in failed["model:shape inference"]


def test_unknown_op_is_reported():
    model = sdpa_model(attach=False)
    model.graph.node[0].op_type = "NoSuchAttention"
    assert "unknown op onnxattn::NoSuchAttention" in failed_checks(validate(model))["schema"]


def test_report_text_and_cli_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(sdpa_model(causal=1), good)
    broken = sdpa_model()
    del broken.functions[:]
    onnx.save(broken, bad)
    assert cli_main(["validate", str(good), "--numerics", "--dim", "B=1", "--dim", "S=7"]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "attn" in out
    assert cli_main(["validate", str(bad)]) == 1
    assert "FAILED" in capsys.readouterr().out


def index_input_model(op: str) -> onnx.ModelProto:
    """One node of `op` with index inputs (shared-buffer past_lengths, or a paged batch), dims symbolic."""
    f, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    inputs = {
        "GroupQueryAttention": ([("query", f, ["B", "S", 64]), ("key", f, ["B", "S", 32]), ("value", f, ["B", "S", 32]),
                                 ("past_key", f, ["B", 2, "M", 16]), ("past_value", f, ["B", 2, "M", 16]),
                                 ("past_lengths", i64, ["B"])],
                                [("output", f, 3), ("present_key", f, 4), ("present_value", f, 4)],
                                dict(num_heads=4, kv_num_heads=2)),
        "MultiHeadLatentAttention": ([("query", f, ["B", "S", 48]), ("latent", f, ["B", "S", 32]),
                                      ("k_rope", f, ["B", "S", 8]), ("w_uk", f, [2, 32, 16]), ("w_uv", f, [2, 32, 16]),
                                      ("past_latent", f, ["B", "M", 32]), ("past_k_rope", f, ["B", "M", 8]),
                                      ("past_lengths", i64, ["B"])],
                                     [("output", f, 3), ("present_latent", f, 3), ("present_k_rope", f, 3)],
                                     dict(num_heads=2)),
        "LightningIndexer": ([("query", f, ["B", "S", 64]), ("key", f, ["B", 1, "M", 16]),
                              ("weights", f, ["B", "S", 4]),
                              ("past_lengths", i64, ["B"])], [("key_indices", i64, 3)], dict(num_heads=4, top_k=3)),
        "PagedAttention": ([("query", f, ["T", 64]), ("key", f, ["T", 32]), ("value", f, ["T", 32]),
                            ("key_cache", f, ["N", 4, 2, 16]), ("value_cache", f, ["N", 4, 2, 16]),
                            ("block_table", i32, ["B", "W"]), ("cu_seqlens_q", i32, ["B1"]),
                            ("seq_lens", i32, ["B"])],
                           [("output", f, 2), ("key_cache_out", f, 4), ("value_cache_out", f, 4)],
                           dict(num_heads=4, kv_num_heads=2)),
    }[op]
    values, outputs, attrs = inputs
    node = helper.make_node(op, [name for name, _, _ in values], [name for name, _, _ in outputs], domain=ops.DOMAIN,
                            name="node", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*v) for v in values],
                              [helper.make_tensor_value_info(name, t, [None] * rank) for name, t, rank in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


@pytest.mark.parametrize("op", ["GroupQueryAttention", "MultiHeadLatentAttention", "LightningIndexer"])
def test_shared_buffer_numerics_draw_past_lengths_within_the_buffer(op):
    # past_lengths drawn at random in [0, 4) once made every shared-buffer export fail --numerics (the kernels
    # reject past_lengths + S > M); the buffer length now defaults to S + 4 and past_lengths to [0, M - S]
    report = validate(index_input_model(op), numerics=True, dims={"B": 3, "S": 2})
    assert report.ok, str(report)
    assert "[3, 2, 64]" in report.nodes[0].checks[-1].message or "[3, 2, 48]" in report.nodes[0].checks[-1].message
    assert ", 6, " in report.nodes[0].checks[-1].message  # M = S + 4
    # an explicit buffer length is kept
    assert validate(index_input_model(op), numerics=True, dims={"B": 2, "S": 3, "M": 3}).ok


def test_symbolic_dims_not_given_count_the_default_inside_expressions():
    # the NSA exports' compressed keys are "((past_sequence + sequence)//4)" long and their cache
    # "past_sequence + sequence": evaluated as a whole to the default (4 and 4) they disagreed, and --numerics
    # failed with the kernel's "compressed_key must be [B, Hkv, Nc, .]" on a valid model
    from onnxattn.validation import DEFAULT_DIM, _dim_value

    assert _dim_value("past_sequence + sequence", {}) == 2 * DEFAULT_DIM
    assert _dim_value("((past_sequence + sequence)//4)", {}) == 2 * DEFAULT_DIM // 4
    assert _dim_value("((past_sequence + sequence)//4)", {"past_sequence": 12}) == (12 + DEFAULT_DIM) // 4
    assert _dim_value("M", {}) == DEFAULT_DIM and _dim_value("M", {"M": 9}) == 9
    assert _dim_value("s0 - 10", {}) == 0  # never negative


def test_paged_numerics_draw_a_valid_batch():
    # random int32s in [0, 4) for cu_seqlens_q / seq_lens / block_table failed every paged export's --numerics
    # ("cu_seqlens_q must start at 0"); now the T tokens are split among the B sequences, seq_lens add a past
    # the table holds and the table lists distinct blocks of a pool of B * W
    for seed in range(3):
        report = validate(index_input_model("PagedAttention"), numerics=True, dims={"T": 7, "B": 3, "B1": 4, "W": 2},
                          seed=seed)
        assert report.ok, str(report)
        assert "[6, 4, 2, 16]" in report.nodes[0].checks[-1].message  # the pool: B * W blocks


@pytest.mark.parametrize("shared", [False, True])
def test_mla_numerics_draw_key_indices_within_the_cache(shared):
    # key_indices drawn from [0, 4) failed --numerics wherever the caches held fewer than 4 tokens (DeepSeek-V3.2's
    # export at sequence 1 without a past: "key_indices[0, 0, 1] = 2 is out of range"); now each is a slot of the
    # caches or -1 (no key)
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    values = [("query", f, ["B", "S", 48]), ("latent", f, ["B", "S", 32]), ("k_rope", f, ["B", "S", 8]),
              ("w_uk", f, [2, 32, 16]), ("w_uv", f, [2, 32, 16]), ("past_latent", f, ["B", "P", 32]),
              ("past_k_rope", f, ["B", "P", 8])]
    if shared:
        values.append(("past_lengths", i64, ["B"]))
    names = [name for name, _, _ in values] + [""] * (10 - len(values)) + ["key_indices"]
    values.append(("key_indices", i64, ["B", "S", 8]))
    node = helper.make_node("MultiHeadLatentAttention", names, ["output", "present_latent", "present_k_rope"],
                            domain=ops.DOMAIN, name="node", num_heads=2)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(*v) for v in values],
                              [helper.make_tensor_value_info(n, f, [None] * 3)
                               for n in ("output", "present_latent", "present_k_rope")])
    model = ops.attach_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                                         helper.make_opsetid(ops.DOMAIN, 1)],
                                                   ir_version=ops.IR_VERSION))
    for dims in ({"B": 1, "S": 1, "P": 0}, {"B": 2, "S": 1, "P": 2}, {"B": 2, "S": 3, "P": 5}):
        if shared and dims["P"] < dims["S"]:
            continue  # a shared buffer holds the new tokens
        for seed in range(3):
            report = validate(model, numerics=True, dims=dims, seed=seed)
            assert report.ok, str(report)


def test_unreadable_files_are_a_clear_error(tmp_path, capsys):
    (tmp_path / "text.onnx").write_text("hello")
    for path in (tmp_path / "text.onnx", tmp_path):
        assert cli_main(["validate", str(path)]) == 2
        assert f"{path}: not an ONNX model" in capsys.readouterr().err
