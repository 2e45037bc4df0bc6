"""The `onnxattn` command: the demo (README's first command), export, run, bench and info."""

from __future__ import annotations

import json

import onnx

from onnxattn import ops
from onnxattn.cli import main


def test_demo_end_to_end(tmp_path, capsys):
    report = tmp_path / "demo.json"
    assert main(["demo", "--out", str(tmp_path), "--batch", "2", "--seq", "21", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "demo: OK" in out and "result: OK" in out
    data = json.loads(report.read_text())
    assert data["ok"] and all(err < 1e-3 for _, _, err in data["rows"])


def test_export_run_bench_info(tmp_path, capsys):
    path = tmp_path / "tiny.onnx"
    assert main(["export", "tiny-decoder", "-o", str(path)]) == 0
    model = onnx.load(path)
    assert sum(n.domain == ops.DOMAIN for n in model.graph.node) == 2
    assert main(["run", str(path), "--dim", "batch=1", "--dim", "sequence=9", "--provider", "CPUExecutionProvider",
                 "--repeat", "1"]) == 0
    assert main(["run", str(path), "--no-library", "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0
    assert main(["bench", str(path), "--provider", "CPUExecutionProvider", "--repeat", "1"]) == 0
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "onnxattn kernels" in out and "reference function" in out and "cpu_isa" in out


def test_unknown_model_name_is_a_clear_error(capsys):
    assert main(["export", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
