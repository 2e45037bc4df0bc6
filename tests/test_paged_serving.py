"""The end-to-end paged serving example (models/paged_serving.py): a tiny Llama-style decoder (a sliding-window
layer, QK-norm) serving 4 requests of different prompt lengths with continuous batching and prefix sharing,
token for token equal to eager torch with a contiguous KVCache, in eager torch over a PagedKVCache and in
onnxruntime (our kernel, and the reference function without the library) with the pools bound in place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from helpers import kernel_ops_run, session_options
from onnxattn import ops
from onnxattn.models import paged_serving
from onnxattn.models.paged_serving import OrtEngine, TorchEngine, build_demo, generate_contiguous, serve
from onnxattn.ops import paged


@pytest.fixture(scope="module")
def demo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # pytest -n 2 on two cores
    lm, new_cache, requests = build_demo()
    yield lm, new_cache, requests, generate_contiguous(lm, requests)
    torch.set_num_threads(threads)


def test_schedule_batches_continuously_and_shares_a_prefix(demo):
    lm, new_cache, requests, expected = demo
    result = serve(TorchEngine(lm), new_cache(), requests)
    assert result.tokens == expected
    steps = result.steps
    assert any(max(s.values()) > 1 and min(s.values()) == 1 for s in steps), "no step mixes prefill and decode"
    first_d = next(i for i, s in enumerate(steps) if "d" in s)
    assert first_d > 0 and "b" in steps[first_d - 1] and "b" not in steps[first_d], "d must join when b finishes"
    assert len({len(r.prompt) for r in requests}) == 4
    assert result.shared_blocks == {"d": 4}  # a's 13-token prompt: 3 full blocks and a partly filled one


@pytest.mark.parametrize("use_library", [True, False], ids=["kernel", "function"])
def test_onnxruntime_generates_the_contiguous_tokens(demo, use_library: bool):
    lm, new_cache, requests, expected = demo
    cache = new_cache()
    options = session_options()
    options.enable_profiling = use_library
    engine = OrtEngine(lm, cache, use_library=use_library, session_options=options)
    result = serve(engine, cache, requests)
    assert result.tokens == expected
    # the pools onnxruntime wrote are the cache's own tensors (bound in place, never replaced)
    assert all(v.data_ptr() == p.data_ptr() for v, p in zip(engine.pools, cache.key_caches + cache.value_caches))
    if use_library:
        assert paged.NAME in kernel_ops_run(engine.session), "the kernel did not run"


def test_exported_graph_has_one_paged_attention_node_per_layer_writing_the_graph_outputs(demo):
    lm, new_cache, _, _ = demo
    proto = paged_serving.PagedCausalLM(lm).export(new_cache())
    nodes = list(ops.onnxattn_nodes(proto))
    assert [n.op_type for n in nodes] == [paged.NAME] * lm.config.num_layers
    producers = {o: n for n in proto.graph.node for o in n.output}
    for i in range(lm.config.num_layers):
        for kind in ("key", "value"):
            node = producers[f"{kind}_cache_out.{i}"]
            assert node.op_type == paged.NAME and f"{kind}_cache.{i}" in node.input
    windows = [onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "window")) for n in nodes]
    assert windows == [6, 0]


def test_main_reports_equality(capsys):
    assert paged_serving.main(["--no-library"]) == 0
    out = capsys.readouterr().out
    assert out.count("token-for-token equal to contiguous eager torch") == 2 and "DIFFERENT" not in out


def test_cache_layout_of_the_demo(demo):
    lm, new_cache, _, _ = demo
    cache = new_cache()
    assert [tuple(p.shape) for p in cache.key_caches] == [(64, 4, 2, 16)] * 2
    assert np.isclose(cache.key_caches[0].sum().item(), 0.0)


def test_gpt_oss_serves_paged_with_attention_sinks(capsys):
    """The gpt-oss reference model (sinks in every layer, sliding and full layers) through PagedAttention: eager
    paged torch, our kernel and the reference function all give the contiguous model's tokens."""
    assert paged_serving.main(["--model", "gpt-oss"]) == 0
    out = capsys.readouterr().out
    assert out.count("token-for-token equal to contiguous eager torch") == 3 and "DIFFERENT" not in out


def test_llama4_serves_paged_with_chunked_attention(capsys):
    """The llama4 reference model (chunked RoPE layers with a chunk of 8, shorter than the requests, a NoPE layer with
    the attention temperature, experts) through PagedAttention: all three paths give the contiguous model's tokens."""
    assert paged_serving.main(["--model", "llama4"]) == 0
    out = capsys.readouterr().out
    assert out.count("token-for-token equal to contiguous eager torch") == 3 and "DIFFERENT" not in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "deepseek-v3"], "DeepSeekV3Model attends with MultiHeadLatentAttention"),
    (["--model", "nsa"], "SparseDecoder attends with NativeSparseAttention"),
    (["--model", "gemma4"], "Gemma4Model has a forward of its own"),  # it served different tokens
    (["--model", "bert"], "BertModel is not a reference decoder"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--chunk", "0"], "--chunk must be at least 1"),
    (["--block-size", "-1"], "--block-size must be at least 1"),
])
def test_main_refuses_what_it_cannot_serve(argv, message, capsys):
    # these were tracebacks (a TypeError from the first layer called with paged=, an IndexError for --chunk 0), or
    # for Gemma 4 other tokens than its contiguous generation (its per-layer inputs and shared K/V not replayed)
    with pytest.raises(SystemExit) as exit_info:
        paged_serving.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
