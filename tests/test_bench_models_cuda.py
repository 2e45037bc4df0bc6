"""The host side of benchmarks/bench_models_cuda.py (its GPU run needs an H100): its 'no CUDA GPU' exit, and
its whole flow on the CPU at a tiny size — exports in parallel worker processes (the same weights as the
benchmarking process builds: every path's greedy tokens agree), every path measured, our nodes' placement
read from the profile, layers sharing weights for the large config, export failures and a spent budget
recorded per row, the table."""

from __future__ import annotations

import json
import shutil
import sys
import time
import types
from pathlib import Path

import pytest
from script_modules import load_script

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
TINY = dict(num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, intermediate=128, vocab_size=256)
SPECS = {
    "base": {"model": TINY, "prompt": 12, "new_tokens": 4, "shared_layers": False},
    "large": {"model": dict(TINY, num_layers=3, tie_embeddings=True), "prompt": 10, "new_tokens": 3,
              "shared_layers": True},
}  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_models_cuda.py", "bench_models_cuda")  # the export workers import it by this name


def library():
    from onnxattn.cuda_ep import library_path

    return library_path()


def run(bench, name, tmp_path, **options):
    options = {"repeat": 1, "deadline": time.perf_counter() + 600, **options}
    return bench.run_config(name, SPECS[name], ort=ort, library=library(), work=tmp_path, device="cpu",
                            dtype=torch.float32, log=lambda text: None, **options)  # fmt: skip


def test_without_cuda_it_exits_2(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert "bench_models_cuda: no CUDA GPU" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exports(bench, tmp_path_factory):
    """export_all of both configs, once per module: the later tests take copies of its files."""
    work = tmp_path_factory.mktemp("exports")
    return bench.export_all(SPECS, work, torch.float32, timeout_s=300, log=lambda text: None)


def test_parallel_exports_then_every_path(bench, exports, tmp_path):
    assert sorted(exports) == sorted([("base", "concat"), ("base", "shared"), ("base", "stock"), ("large", "concat"),
                                      ("large", "stock")])  # fmt: skip
    assert not [v for v in exports.values() if isinstance(v, BaseException)], exports
    configs, rows = {}, []
    for name in SPECS:
        mine = {kind: value for (config, kind), value in exports.items() if config == name}
        configs[name], config_rows = run(bench, name, tmp_path, exports=mine)
        rows += config_rows
    assert [r["path"] for r in rows if r["config"] == "base"] == [
        "onnxattn", "onnxattn_shared", "functions", "stock", "torch_sdpa", "torch_onnxattn"]
    assert "onnxattn_shared" not in [r["path"] for r in rows if r["config"] == "large"]
    for r in rows:
        assert "error" not in r, r
        assert r["same_tokens"] and r["matching"] == SPECS[r["config"]]["new_tokens"], r  # same weights everywhere
        assert r["ttft_ms"] > 0 and r["tokens_per_s"] > 0
        if r["path"].startswith("onnxattn"):
            assert r["placement"] == ["CPUExecutionProvider"]
    assert set(configs["base"]["export_s"]) == {"concat", "shared", "stock"}
    assert configs["large"]["shared_layers"] and configs["base"]["dtype"] == "float32"
    text = bench.format_table({"device": "Fake GPU", "commit": "0123456789abcdef"}, configs, rows)
    assert "float32 generation" in text and "layers share weights" in text and "commit 0123456789ab" in text
    assert sum(1 for line in text.splitlines() if line.strip().startswith("ORT + onnxattn kernels ")) == 2


def test_shared_layers_share_weights_not_caches(bench):
    model, config = bench.build(SPECS["large"], torch.float32)
    assert len(model.layers) == 3 and [layer.attn.layer_idx for layer in model.layers] == [0, 1, 2]
    assert model.layers[1].attn is not model.layers[0].attn
    assert model.layers[1].attn.o_proj.weight is model.layers[0].attn.o_proj.weight
    one = bench.models_package().build("llama", **dict(SPECS["large"]["model"], num_layers=1))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in one.parameters())
    stock = bench.StockLlama(model)  # its own attention modules, the same weights
    assert stock.model.layers[0].attn is not model.layers[0].attn
    assert "forward" not in vars(model.layers[0].attn)


def test_a_failed_export_fails_its_paths_only_and_a_spent_budget_skips(bench, exports, tmp_path):
    failed = {"concat": RuntimeError("boom"), "shared": RuntimeError("boom"), "stock": exports["base", "stock"]}
    _, rows = run(bench, "base", tmp_path, exports=failed)
    errors = {r["path"]: r.get("error") for r in rows}
    assert errors["onnxattn"] == "RuntimeError: export (concat) failed: RuntimeError: boom"
    assert errors["functions"].startswith("RuntimeError: export (concat) failed")
    assert errors["stock"] is None and errors["torch_sdpa"] is None and errors["torch_onnxattn"] is None
    record, rows = run(bench, "base", tmp_path, deadline=time.perf_counter() - 1)
    assert all(r["error"].startswith("skipped: time budget spent") for r in rows) and len(rows) == 6
    assert record["export_s"] == {}



@pytest.fixture
def fake_device(bench, exports, monkeypatch):
    """main with the device faked: tiny configs in float32 on the CPU execution provider, a fixed environment.
    Its exports are copies of the module's (`exports`; main deletes its work folder), since
    test_parallel_exports_then_every_path covers the exports themselves."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.ort_cuda, "onnxruntime_cuda", lambda: (ort, None))
    monkeypatch.setitem(sys.modules, "bench_sdpa_cuda", types.SimpleNamespace(
        environment=lambda: {"date": "2026-11-30", "device": "Fake GPU", "driver": "0", "commit": "abc"}))
    monkeypatch.setattr(bench, "CONFIGS", SPECS)
    run_config = bench.run_config

    def copied_exports(specs, work, dtype, **kw):
        return {job: (Path(shutil.copy(v[0], work)), v[1]) if not isinstance(v, BaseException) else v
                for job, v in exports.items() if job[0] in specs}  # fmt: skip

    monkeypatch.setattr(bench, "export_all", copied_exports)
    monkeypatch.setattr(bench, "run_config", lambda *a, **kw: run_config(*a, **kw, device="cpu", dtype=torch.float32))
    return bench


def test_main_writes_the_json_and_fails_when_our_nodes_leave_the_device(fake_device, monkeypatch, tmp_path, capsys):
    out = tmp_path / "bench_models_cuda.json"
    assert fake_device.main(["--out", str(out), "--configs", "base", "--repeat", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["device"] == "Fake GPU" and data["environment"]["onnxruntime"] == ort.__version__
    assert list(data["configs"]) == ["base"] and len(data["results"]) == 6
    assert not [r for r in data["results"] if "error" in r]
    assert "ORT + onnxattn kernels" in capsys.readouterr().out

    monkeypatch.setattr(fake_device, "placement", lambda sess, ids: ["CPUExecutionProvider", "CUDAExecutionProvider"])
    assert fake_device.main(["--out", str(out), "--configs", "base", "--repeat", "1"]) == 1
    rows = {r["path"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["onnxattn"]["error"].startswith("RuntimeError: placement: GroupQueryAttention ran on")
    assert "error" not in rows["stock"]
