"""GroupQueryAttention against onnxruntime's own com.microsoft.GroupQueryAttention (CPU), the op many users
come from: the same projected inputs, rotary embeddings and shared KV buffer give the same output, with and
without attention sinks (its `head_sink` input, our `sinks`). An oracle written by others, so a shared
misreading of the sink's definition (e.g. scaled or not, or carrying a value) would show here."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cuda_ep import make_session

HQ, HKV, D, BASE, M = 4, 2, 16, 10000.0, 32
F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def ours(sinks: bool):
    inputs = ["q", "k", "v", "past_key", "past_value", "past_lengths"]
    inputs += ["", "", "", "", "", "sinks"] if sinks else []  # sinks is input 11
    node = helper.make_node("GroupQueryAttention", inputs, ["y", "present_key", "present_value"], domain=ops.DOMAIN,
                            num_heads=HQ, kv_num_heads=HKV, rope=1, rope_base=BASE)
    graph_inputs = [_vi("q", F32, [1, "S", HQ * D]), _vi("k", F32, [1, "S", HKV * D]), _vi("v", F32, [1, "S", HKV * D]),
                    _vi("past_key", F32, [1, HKV, M, D]), _vi("past_value", F32, [1, HKV, M, D]),
                    _vi("past_lengths", I64, [1])] + ([_vi("sinks", F32, [HQ])] if sinks else [])
    outputs = [_vi("y", F32, [1, "S", HQ * D]), _vi("present_key", F32, [1, HKV, M, D]),
               _vi("present_value", F32, [1, HKV, M, D])]
    model = helper.make_model(helper.make_graph([node], "ours", graph_inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def theirs(sinks: bool):
    inputs = ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_len", "cos_cache", "sin_cache"]
    inputs += ["", "", "sinks"] if sinks else []  # head_sink is input 11
    node = helper.make_node("GroupQueryAttention", inputs, ["y", "present_key", "present_value"],
                            domain="com.microsoft", num_heads=HQ, kv_num_heads=HKV, do_rotary=1)
    graph_inputs = [_vi("q", F32, [1, "S", HQ * D]), _vi("k", F32, [1, "S", HKV * D]), _vi("v", F32, [1, "S", HKV * D]),
                    _vi("past_key", F32, [1, HKV, M, D]), _vi("past_value", F32, [1, HKV, M, D]),
                    _vi("seqlens_k", I32, [1]), _vi("total_len", I32, []), _vi("cos_cache", F32, [M, D // 2]),
                    _vi("sin_cache", F32, [M, D // 2])] + ([_vi("sinks", F32, [HQ])] if sinks else [])
    outputs = [_vi("y", F32, [1, "S", HQ * D]), _vi("present_key", F32, [1, HKV, M, D]),
               _vi("present_value", F32, [1, HKV, M, D])]
    return helper.make_model(helper.make_graph([node], "theirs", graph_inputs, outputs),
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=ops.IR_VERSION)


@pytest.mark.parametrize("library", [True, False], ids=["kernel", "function"])
@pytest.mark.parametrize("sinks", [False, True], ids=["plain", "sinks"])
@pytest.mark.parametrize("past, seq", [(0, 7), (9, 1), (5, 4)], ids=["prefill", "decode", "chunk"])
def test_matches_onnxruntimes_group_query_attention(past, seq, sinks, library):
    rng = np.random.default_rng(past * 10 + seq)
    q = rng.standard_normal((1, seq, HQ * D), np.float32)
    k = rng.standard_normal((1, seq, HKV * D), np.float32)
    v = rng.standard_normal((1, seq, HKV * D), np.float32)
    past_key = np.zeros((1, HKV, M, D), np.float32)
    past_value = np.zeros((1, HKV, M, D), np.float32)
    past_key[:, :, :past] = rng.standard_normal((1, HKV, past, D))
    past_value[:, :, :past] = rng.standard_normal((1, HKV, past, D))
    sink_logits = rng.uniform(-1.0, 3.0, HQ).astype(np.float32)
    angles = np.arange(M, dtype=np.float32)[:, None] * (BASE ** (-np.arange(0, D, 2, dtype=np.float32) / D))[None]
    common = {"q": q, "k": k, "v": v, "past_key": past_key, "past_value": past_value}
    if sinks:
        common["sinks"] = sink_logits
    feeds_theirs = dict(common, seqlens_k=np.array([past + seq - 1], np.int32),
                        total_len=np.array(past + seq, np.int32), cos_cache=np.cos(angles), sin_cache=np.sin(angles))
    reference = make_session(theirs(sinks), providers=["CPUExecutionProvider"], use_library=False)
    expected = reference.run(None, feeds_theirs)
    got = make_session(ours(sinks), providers=["CPUExecutionProvider"], use_library=library).run(
        None, dict(common, past_lengths=np.array([past], np.int64)))
    np.testing.assert_allclose(got[0], expected[0], atol=2e-5, rtol=1e-4)
    valid = past + seq  # the buffers agree where both wrote
    np.testing.assert_allclose(got[1][:, :, :valid], expected[1][:, :, :valid], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(got[2][:, :, :valid], expected[2][:, :, :valid])
    if sinks:  # the sinks matter at these values
        without = {n: x for n, x in common.items() if n != "sinks"} | {"past_lengths": np.array([past], np.int64)}
        plain = make_session(ours(False), providers=["CPUExecutionProvider"], use_library=library).run(None, without)
        assert np.abs(plain[0] - got[0]).max() > 1e-2
