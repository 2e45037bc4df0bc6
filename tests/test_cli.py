"""The `onnxattn` command: the demo (README's first command), export, generate, run, bench and info."""

from __future__ import annotations

import json

import onnx
from model_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

from onnxattn import ops
from onnxattn.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    report = tmp_path / "demo.json"
    assert main(["demo", "--out", str(tmp_path), "--batch", "2", "--seq", "21", "--new-tokens", "8",
                 "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "demo: OK" in out and "result: OK" in out and "model llama" in out
    data = json.loads(report.read_text())
    assert data["ok"] and data["model"] == "llama"
    assert [r["same_tokens"] for r in data["generation"]] == [True, True, True]
    assert all(r["max_abs_diff"] < 1e-3 for r in data["logits"])


def test_export_run_bench_info(tmp_path, capsys):
    path = tmp_path / "gpt2.onnx"
    assert main(["export", "gpt2", "-o", str(path), "--set", "num_layers=1", "--quiet"]) == 0
    model = onnx.load(path)
    assert sum(n.domain == ops.DOMAIN for n in model.graph.node) == 1
    assert [i.name for i in model.graph.input] == ["input_ids", "past_key_values.0.key", "past_key_values.0.value"]
    dims = ["--dim", "batch=1", "--dim", "sequence=9", "--dim", "past_sequence=3"]
    assert main(["run", str(path), *dims, "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0
    assert main(["run", str(path), "--no-library", "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0
    assert main(["run", str(path), "--provider", "cpu", "--repeat", "1"]) == 0  # generate's spelling works too
    assert main(["bench", str(path), *dims, "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "exported gpt2 (decoder, float32, cache concat)" in out and "validation: OK" in out
    assert "onnxattn kernels" in out and "reference function" in out and "cpu_isa" in out

    assert main(["generate", str(path), "--ids", "1,2,3;4,5,6", "-n", "5", "--quiet", "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "prompt 2 x 3, 5 new tokens per row" in out and "tokens/s" in out
    assert main(["generate", str(path), "-n", "1", "--quiet", "--provider", "cpu"]) == 0
    assert "no decode step (one new token)" in capsys.readouterr().out  # was "decode 0.0 tokens/s"
    # refused up front: a batch of none (it "succeeded" with no output), negative ids (Gather read them from the
    # table's end), a --dim no input has (ignored), a demo that would generate nothing (failed after exporting)
    for argv, message in ((["generate", str(path), "--batch", "0"], "input_ids must be [batch >= 1"),
                          (["generate", str(path), "--ids", "3,-1"], "token ids >= 0, got -1"),
                          (["run", str(path), "--dim", "seq=3"], "--dim seq: the inputs have no dim of that name"),
                          (["demo", "--new-tokens", "0"], "demo: --new-tokens must be at least 1"),
                          (["generate", "llama", "--dtype", "bfloat16", "--provider", "cpu"],
                           "--dtype bfloat16 needs the CUDA provider")):
        assert main([*argv, "--quiet"] if argv[0] == "generate" else argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    # an exported file has no eager model to compare with: refused before generating anything
    assert main(["generate", str(path), "-n", "5", "--quiet", "--provider", "cpu", "--compare-torch"]) == 2
    captured = capsys.readouterr()
    assert "--compare-torch needs a model name or a transformers checkpoint" in captured.err
    assert "tokens/s" not in captured.out

    # a model onnxruntime refuses (a node edited after export): its message, no traceback
    for attribute in next(n for n in model.graph.node if n.domain == ops.DOMAIN).attribute:
        if attribute.name == "kv_num_heads":
            attribute.i = 3
    onnx.save(model, tmp_path / "bad.onnx")
    assert main(["run", str(tmp_path / "bad.onnx"), "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert "onnxattn run: error: [ONNXRuntimeError]" in err and "must be a multiple of kv_num_heads (3)" in err


def test_generate_a_model_name_compared_with_torch(tmp_path, capsys):
    args = ["generate", "gemma3", "--out", str(tmp_path), "--batch", "2", "-n", "6", "--compare-torch", "--quiet",
            "--provider", "cpu"]
    assert main(args) == 0
    assert "tokens equal to eager torch: yes" in capsys.readouterr().out
    assert main([*args, "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "3"]) == 0
    assert main([*args, "--no-library"]) == 0


def test_unknown_model_name_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "llama" in err and "deepseek-v3" in err
    assert "error: unknown model" in err  # the message, not str(KeyError)'s quoted repr
    # a missing exported file is a missing file, not an unknown model name
    assert main(["generate", "missing.onnx", "--quiet"]) == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
    exported = tmp_path / "exported.onnx"
    exported.write_bytes(b"")
    assert main(["export", str(exported)]) == 2
    assert "is an exported model: this command takes a model name" in capsys.readouterr().err


def test_help_names_every_registered_model_by_kind():
    """The CLI names the models without importing torch for --help: its list must be the registry's."""
    from onnxattn import models
    from onnxattn.cli import MODEL_NAMES

    kinds = {name: models.build(name).kind for name in models.MODELS}
    assert set(MODEL_NAMES["decoders"]) == {n for n, k in kinds.items() if k == "decoder"}
    assert set(MODEL_NAMES["others"]) == {n for n, k in kinds.items() if k != "decoder"}


def test_run_and_bench_feed_inputs_that_keep_the_models_contracts(tmp_path, capsys):
    """`run` and `bench` make random inputs the model accepts: BERT's token_type_ids below its 2 types and a mask of
    ones, a shared-buffer decoder's past_lengths within the room its buffers leave (they had drawn every integer
    from [0, 16): onnxruntime refused both models)."""
    from onnxattn.cli import _random_feeds
    from onnxattn.cuda_ep import make_session

    for name, extra in (("bert", []), ("gemma3", ["--cache", "shared"])):
        path = tmp_path / f"{name}.onnx"
        assert main(["export", name, "-o", str(path), "--set", "num_layers=1", "--quiet", *extra]) == 0
        for command in ("run", "bench"):
            assert main([command, str(path), "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0, command
        feeds = _random_feeds(make_session(str(path), providers=["CPUExecutionProvider"]), str(path), {})
        if name == "bert":
            assert feeds["token_type_ids"].max() < 2 and feeds["attention_mask"].min() == 1
        else:
            buffer = feeds["past_key_values.0.key"].shape[2]
            assert buffer == 8 and 0 <= feeds["past_lengths"].min() and feeds["past_lengths"].max() <= 4
    capsys.readouterr()


def test_generate_draws_a_random_prompt_from_the_models_vocabulary(tmp_path, capsys):
    """A .onnx file's random prompt comes from the rows of its embedding (it came from 256 ids whatever the model:
    a vocabulary of 100 failed in onnxruntime with a traceback); ids past it are onnxruntime's one-line error."""
    path = tmp_path / "small-vocab.onnx"
    assert main(["export", "llama", "-o", str(path), "--set", "num_layers=1", "--set", "vocab_size=100",
                 "--quiet"]) == 0
    for seed in range(3):
        assert main(["generate", str(path), "-n", "2", "--quiet", "--provider", "cpu", "--seed", str(seed)]) == 0
    assert main(["generate", str(path), "-n", "2", "--quiet", "--provider", "cpu", "--ids", "150"]) == 2
    assert "onnxattn generate: error:" in capsys.readouterr().err


def test_run_and_bench_take_bfloat16_inputs_and_outputs(tmp_path, capsys):
    """bfloat16 inputs were fed as float16 arrays ("tensor(float16)" matched "float16" in "tensor(bfloat16)") and
    bfloat16 outputs have no numpy type: both go through onnxruntime bfloat16 tensors now. (A bfloat16 decoder needs
    the CUDA provider; a Cast graph runs on the CPU.)"""
    import numpy as np
    from onnx import TensorProto, helper

    from onnxattn.cli import _bfloat16_value, _run
    from onnxattn.cuda_ep import make_session

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.FLOAT),
         helper.make_node("Identity", ["x"], ["same"])],
        "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 3])],
        [helper.make_tensor_value_info("wide", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("same", TensorProto.BFLOAT16, ["batch", 3])])
    path = tmp_path / "bf16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    for command in ("run", "bench"):
        assert main([command, str(path), "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0, command
    assert "same: [4, 3] float32" in capsys.readouterr().out
    x = np.array([[1.0, -2.5, 3.0e-3], [65504.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]], np.float32)
    wide, same = _run(make_session(str(path), providers=["CPUExecutionProvider"]), {"x": _bfloat16_value(x)})
    bfloat16 = (x.view(np.uint32) + 0x7FFF + ((x.view(np.uint32) >> 16) & 1)) >> 16 << 16  # round to nearest even
    np.testing.assert_array_equal(wide, bfloat16.view(np.float32))
    np.testing.assert_array_equal(same, wide)
    assert wide[1, 1] == 1.0 and wide[1, 2] == 1.0 + 2.0 ** -6  # ties to even, both ways
    assert main(["run", str(path), "--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_models_without_a_kv_cache_refuse_last_logits_and_generation(tmp_path, capsys):
    # --logits last was silently ignored for them (every position came out); generate refuses them before exporting
    assert main(["export", "tiny-decoder", "--logits", "last", "-o", str(tmp_path / "t.onnx"), "--quiet"]) == 2
    assert "TinyDecoder (stateless) cannot export logits='last'" in capsys.readouterr().err
    assert main(["generate", "bert", "-n", "2", "--quiet"]) == 2
    assert "bert is not a decoder with a KV cache" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
