"""The host side of benchmarks/bench_sparse_cuda.py (its GPU run needs an H100): ratios and the table from a
fake result, main's control flow with the device faked (rows, errors recorded and the run going on, exit
status, JSON), its 'no CUDA GPU' exit, and what scripts/gpu_summary.py and benchmarks/plot_cuda.py make of
its JSON (gpu_summary also merges the serial stages' JUnit reports, so gpu_check.sh's $OUT stays <= 8 files)."""

from __future__ import annotations

import json
import os
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from script_modules import load_script

torch = pytest.importorskip("torch")




@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_sparse_cuda.py", "bench_sparse_cuda")


MS = {"nsa": 40.0, "nsa_dot": 20.0, "nsa_simple": 160.0, "routed": 30.0, "routed_simple": 240.0, "dense": 70.0,
      "dense_ort": 80.0, "torch_flash": 55.0, "torch_cudnn": 50.0, "nsa_mma": 10.0, "nsa_dot_mma": 5.0,
      "routed_mma": 12.0, "nsa_mma_async": 5.0, "routed_mma_async": 6.0, "nsa_mma_tiles": 2.5,
      "routed_mma_tiles": 4.5}


def fake_result(bench) -> dict:
    rows = [bench.derive({"seq": 16384, "ms": {"nsa": 8.0, "dense": 6.0, "torch_flash": 4.0},
                          "errors": {"routed": "skipped: time budget spent (--budget-s)"}, "notes": {}}),
            bench.derive({"seq": 65536, "ms": dict(MS), "errors": {}, "notes": {}})]  # fmt: skip
    env = {"device": "NVIDIA H100 80GB HBM3", "driver": "580", "commit": "0123456789abcdef", "date": "2026-11-30"}
    return {"environment": env, "config": {}, "results": rows}


def test_ratios_use_the_same_path_dense_and_the_faster_torch_backend(bench):
    r = fake_result(bench)["results"][1]
    assert r["dense_ref"] == "dense_ort" and r["torch_ref"] == "torch_cudnn"
    assert r["ratio"] == pytest.approx({"nsa/dense": 0.5, "routed/dense": 0.375, "nsa/torch": 0.8, "routed/torch": 0.6,
                                        "nsa_dot/dense": 0.25, "nsa_dot/torch": 0.4, "nsa_simple/dense": 2.0,
                                        "nsa_simple/torch": 3.2, "nsa/nsa_simple": 0.25, "routed_simple/dense": 3.0,
                                        "routed_simple/torch": 4.8, "routed/routed_simple": 0.125,
                                        "nsa_mma/dense": 0.125, "nsa_mma/torch": 0.2, "nsa_dot_mma/dense": 0.0625,
                                        "nsa_dot_mma/torch": 0.1, "routed_mma/dense": 0.15, "routed_mma/torch": 0.24,
                                        "nsa_mma/nsa": 0.25, "nsa_dot_mma/nsa_dot": 0.25,
                                        "routed_mma/routed": 0.4, "nsa_mma_async/dense": 0.0625,
                                        "nsa_mma_async/torch": 0.1, "routed_mma_async/dense": 0.075,
                                        "routed_mma_async/torch": 0.12, "nsa_mma_async/nsa_mma": 0.5,
                                        "routed_mma_async/routed_mma": 0.5, "nsa_mma_tiles/dense": 0.03125,
                                        "nsa_mma_tiles/torch": 0.05, "routed_mma_tiles/dense": 0.05625,
                                        "routed_mma_tiles/torch": 0.09, "nsa_mma_tiles/nsa_mma_async": 0.5,
                                        "routed_mma_tiles/routed_mma_async": 0.75})  # fmt: skip
    assert r["tflops"]["nsa_mma"] == pytest.approx(4 * r["tflops"]["nsa"])  # the same keys in a quarter of the time
    assert r["attended_keys"]["dense"] > r["attended_keys"]["nsa"] > r["attended_keys"]["nsa_dot"]
    s = 65536
    assert r["attended_keys"]["dense"] == s * (s + 1) / 2
    assert r["tflops"]["torch_cudnn"] == pytest.approx(4 * 128 * 16 * s * (s + 1) / 2 / 0.050 / 1e12)
    assert r["tflops"]["nsa"] < r["tflops"]["dense"]  # far fewer keys attended
    partial = fake_result(bench)["results"][0]
    assert partial["dense_ref"] == "dense" and partial["ratio"]["routed/dense"] is None
    assert partial["ratio"]["nsa/torch"] == pytest.approx(2.0)


def test_table(bench):
    text = bench.format_table(fake_result(bench)["environment"], fake_result(bench)["results"])
    assert "NVIDIA H100 80GB HBM3" in text and "commit 0123456789ab" in text
    lines = text.splitlines()
    # the default path, its opt-in variants and the dense references first; the simple kernels last
    assert any(line.split()[:8] == ["64k", "10.00", "12.00", "2.50", "4.50", "5.00", "6.00", "80.00"] for line in lines)
    assert any(line.split()[-2:] == ["160.00", "240.00"] for line in lines)
    ratios = ["64k", "0.125", "0.150", "0.031", "0.056", "0.200", "0.240", "0.500", "0.375", "dense_ort,",
              "torch_cudnn"]
    assert ratios in [line.split() for line in lines]
    assert "S=16k routed: skipped: time budget spent" in text


def test_without_cuda_it_exits_2(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert "bench_sparse_cuda: no CUDA GPU" in capsys.readouterr().err


class FakeOrtOp:
    broken: set[str] = set()

    def __init__(self, ort, case, env=None):
        op = case[0]
        if op in self.broken:
            raise RuntimeError(f"placement: {op} ran on ['CPUExecutionProvider'], not CUDAExecutionProvider")
        self.providers, self.bound = ["CUDAExecutionProvider"], None

    def bind(self, t):
        self.bound = t

    def release(self):
        self.bound = None

    def __call__(self):
        assert self.bound is not None


@pytest.fixture
def fake_device(bench, monkeypatch):
    """Everything main touches on the device replaced by host stand-ins: CPU tensors, no-op synchronisation,
    fixed kernel timings; torch_cudnn runs out of memory."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(bench.lib, "has_cuda", lambda: True)
    monkeypatch.setattr(bench.lib, "run", lambda q, k, v, causal, out: (out, None, {"reason": "fake plan"}))
    monkeypatch.setattr(bench, "environment", lambda: {"date": "2026-11-30T00:00:00+00:00", "device": "Fake GPU",
                                                       "driver": "0", "commit": "abc"})  # fmt: skip
    monkeypatch.setattr(bench.ort_cuda, "onnxruntime_cuda", lambda: (types.SimpleNamespace(__version__="9.9"), None))
    monkeypatch.setattr(bench, "OrtOp", FakeOrtOp)
    monkeypatch.setattr(bench, "problem", lambda s, seed=0: {n: torch.zeros(1, h, s, 8) for n, h in (("Q", 4), ("K", 2), ("V", 2))})

    def torch_call(name, t, notes):
        if name == "torch_cudnn":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return lambda: None

    monkeypatch.setattr(bench, "torch_call", torch_call)
    monkeypatch.setattr(bench, "time_cuda", lambda fn, warmup, repeats: 2.0)
    monkeypatch.setattr(bench, "time_graph", lambda fn, calls, repeats: 1.0)
    monkeypatch.setattr(FakeOrtOp, "broken", set())
    return bench


def test_main_records_errors_and_goes_on(fake_device, tmp_path, capsys):
    out = tmp_path / "bench_sparse_cuda.json"
    assert fake_device.main(["--out", str(out), "--seqs", "128,256", "--repeats", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["onnxruntime"] == "9.9"
    ort_names = ("nsa", "nsa_dot", "nsa_simple", "routed", "routed_simple", "dense_ort", "nsa_mma", "nsa_dot_mma",
                 "routed_mma", "nsa_mma_async", "routed_mma_async", "nsa_mma_tiles", "routed_mma_tiles")
    assert data["environment"]["placement"] == {n: ["CUDAExecutionProvider"] for n in ort_names}
    assert [r["seq"] for r in data["results"]] == [128, 256]
    for r in data["results"]:
        assert set(r["ms"]) == {*ort_names, "dense", "torch_flash"}
        assert r["ms"]["torch_flash"] == 1.0 and r["timing"]["torch_flash"]["timer"].startswith("graph")
        assert "OutOfMemoryError" in r["errors"]["torch_cudnn"]
        assert r["torch_ref"] == "torch_flash" and r["dense_ref"] == "dense_ort" and r["dense_plan"] == "fake plan"
        assert r["ratio"]["nsa/torch"] == pytest.approx(r["ms"]["nsa"] / 1.0)
    assert "S=256 torch_cudnn: OutOfMemoryError" in capsys.readouterr().out


def test_a_node_off_the_cuda_ep_fails_the_run(fake_device, tmp_path):
    FakeOrtOp.broken = {"SparseRoutedAttention"}
    out = tmp_path / "b.json"
    assert fake_device.main(["--out", str(out), "--seqs", "128", "--repeats", "1"]) == 1
    row = json.loads(out.read_text())["results"][0]
    assert row["errors"]["routed"].startswith("RuntimeError: placement: SparseRoutedAttention ran on ['CPUExecutionProvider']")
    assert "routed" not in row["ms"] and "nsa" in row["ms"]


def test_a_spent_budget_skips_and_still_writes(fake_device, tmp_path):
    out = tmp_path / "b.json"
    assert fake_device.main(["--out", str(out), "--seqs", "128", "--budget-s", "0"]) == 0
    row = json.loads(out.read_text())["results"][0]
    assert row["ms"] == {} and all(e.startswith("skipped: time budget") for e in row["errors"].values())


def junit(path: Path, suite: str, cases: dict[str, str]) -> None:
    root = ET.Element("testsuites")
    s = ET.SubElement(root, "testsuite", name="pytest")
    for name, outcome in cases.items():
        c = ET.SubElement(s, "testcase", classname=f"tests.gpu.{suite}", name=name)
        if outcome != "passed":
            ET.SubElement(c, outcome, message="boom")
    ET.ElementTree(root).write(path)


def test_gpu_summary_prints_the_sparse_table_and_merges_the_reports(bench, tmp_path, capsys):
    summary = load_script("scripts/gpu_summary.py", "gpu_summary")
    (tmp_path / "bench_sparse_cuda.json").write_text(json.dumps(fake_result(bench)))
    junit(tmp_path / "gpu_tests.xml", "test_sdpa_cuda_ort", {"a": "passed", "b": "skipped"})
    junit(tmp_path / "gpu_tests_gqa.xml", "test_gqa_cuda_ort", {"c": "passed"})
    junit(tmp_path / "gpu_tests_sparse.xml", "test_sparse_cuda_ort", {"d": "failure"})
    assert summary.main([str(tmp_path), "--sparse-bench-rc", "0", "--tests-rc", "1"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.split()[:2] == ["prefill", "64k"])
    # the default path's columns (mma with overlapped loads)
    assert line.split()[2:10] == ["5.00", "6.00", "80.00", "50.00", "0.062", "0.075", "0.100", "0.120"]
    assert "routed: skipped: time budget" in out and "FAILED test_sparse_cuda_ort::d" in out
    assert sorted(p.name for p in tmp_path.glob("gpu_tests*.xml")) == ["gpu_tests.xml"]
    again = summary.test_summary([tmp_path / "gpu_tests.xml"])["by_file"]
    assert again == {"test_sdpa_cuda_ort": {"passed": 1, "skipped": 1}, "test_gqa_cuda_ort": {"passed": 1},
                     "test_sparse_cuda_ort": {"failed": 1}}  # fmt: skip
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["sparse_bench_file"] == "bench_sparse_cuda.json" and written["environment"]["device"].startswith("NVIDIA")
    assert written["tests"]["by_file"] == again


def test_plot_cuda_draws_the_sparse_json(bench, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot_cuda = load_script("benchmarks/plot_cuda.py", "plot_cuda_sparse")
    path = tmp_path / "sparse_cuda_h100.json"
    path.write_text(json.dumps(fake_result(bench)))
    assert plot_cuda.kind_of(tmp_path / "run.json", fake_result(bench)) == "sparse"
    assert plot_cuda.main([str(path), "--out-dir", str(tmp_path / "png")]) == 0
    png = tmp_path / "png" / "sparse_cuda_h100.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "### Sparse attention — NVIDIA H100" in out
    # the columns some row has: nsa, nsa_dot, routed, the mma ones, dense (C entry, ORT), torch; then the ratios
    assert ("| 64k | 40.00 | 20.00 | 30.00 | 10.00 | 5.00 | 12.00 | 5.00 | 6.00 | 2.50 | 4.50 | 70.00 | 80.00 | "
            "55.00 | 50.00 | 0.500 | 0.375 | 0.800 | 0.600 | 0.125 | 0.062 | 0.150 | 0.062 | 0.075 | 0.031 | 0.056 |") in out
    assert "| 16k | 8.00 | — |" in out


def test_measure_repeats_within_the_share_or_runs_once(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    calls = []
    m = bench.measure(lambda: calls.append(1), "wall", share_s=5.0, max_repeats=4)
    assert m["repeats"] == 4 and m["timer"] == "wall" and len(calls) == 2 + 4
    calls.clear()
    m = bench.measure(lambda: calls.append(1), "wall", share_s=5.0, max_repeats=4, predicted_s=3.0)
    assert m["repeats"] == 1 and m["timer"].startswith("wall, one call") and len(calls) == 1


def test_env_vars_sets_and_restores(bench, monkeypatch):
    """The CUDA benchmarks' switch helper (bench_sdpa_cuda.env_vars): set for the block, then back as before."""
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", "simple")
    monkeypatch.delenv("ONNXATTN_MLA_CUDA_KERNEL", raising=False)
    with bench.env_vars({"ONNXATTN_SPARSE_CUDA": "fast", "ONNXATTN_MLA_CUDA_KERNEL": "mma"}):
        assert os.environ["ONNXATTN_SPARSE_CUDA"] == "fast" and os.environ["ONNXATTN_MLA_CUDA_KERNEL"] == "mma"
    assert os.environ["ONNXATTN_SPARSE_CUDA"] == "simple" and "ONNXATTN_MLA_CUDA_KERNEL" not in os.environ
