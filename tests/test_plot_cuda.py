"""benchmarks/plot_cuda.py draws the recorded CUDA benchmark runs (benchmarks/results/*_cuda_h100.json)."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NAMES = ("sdpa", "gqa", "paged", "mla")


def load_plot_cuda():
    return load_script("benchmarks/plot_cuda.py", "plot_cuda")


def test_plot_cuda_writes_every_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    files = [RESULTS / f"{name}_cuda_h100.json" for name in NAMES]
    missing = [f.name for f in files if not f.exists()]
    assert not missing, f"recorded CUDA results missing: {missing}"
    plot_cuda = load_plot_cuda()
    assert plot_cuda.main([*map(str, files), "--out-dir", str(tmp_path)]) == 0
    for name in NAMES:
        png = tmp_path / f"{name}_cuda_h100.png"
        assert png.exists() and png.stat().st_size > 10_000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    for title in ("ScaledDotProductAttention", "GroupQueryAttention", "PagedAttention", "MultiHeadLatentAttention"):
        assert f"### {title}" in out
    assert "NVIDIA H100" in out and "| fp16 | B4 H16 S4096 D128 causal |" in out


def test_sdpa_table_shows_the_wgmma_kernel_only_when_it_ran():
    import json

    plot_cuda = load_plot_cuda()
    data = json.loads((RESULTS / "sdpa_cuda_h100.json").read_text())
    for row in data["results"]:  # as a run from before the kernel recorded it
        row.get("tflops", {}).pop("wgmma", None)
    without = plot_cuda.table_sdpa(data)
    assert "wgmma" not in without
    prefill = next(r for r in data["results"] if r["kind"] == "prefill")
    prefill["tflops"]["wgmma"] = 2 * prefill["tflops"]["torch_cudnn"]
    lines = plot_cuda.table_sdpa(data).splitlines()
    assert "| wgmma kernel |" in lines[0] and lines[0].endswith(" wgmma / cuDNN |")
    assert lines[0].count("|") == lines[1].count("|")  # header and rule agree
    row = next(line for line in lines if line.startswith(f"| {plot_cuda.DTYPE[prefill['dtype']]} | {prefill['shape']} |"))
    assert row.count("|") == lines[0].count("|") and row.endswith(" 2.00× |")


def test_runs_it_does_not_draw_are_skipped_with_a_message(tmp_path, capsys):
    """The indexer, whole-model and profile JSONs (their benchmarks print their own tables) and gpu_check's summary
    are named and skipped, not a KeyError; the other files still plot."""
    pytest.importorskip("matplotlib")
    plot_cuda = load_plot_cuda()
    skipped = [RESULTS / f"{name}_cuda_h200.json" for name in ("indexer", "models", "profile")]
    skipped.append(RESULTS / "gpu_check_h200.json")
    assert all(f.exists() for f in skipped)
    assert plot_cuda.main([*map(str, skipped), str(RESULTS / "mla_cuda_h100.json"), "--out-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    for f in skipped:
        assert f"plot_cuda: {f.name}: not drawn here" in err
    assert [p.name for p in tmp_path.iterdir()] == ["mla_cuda_h100.png"]
