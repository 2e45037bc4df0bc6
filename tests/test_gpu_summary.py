"""scripts/gpu_summary.py's benchmark bundle and scripts/gpu_unbundle.py: the device tool returns at most 8 files
from $OUT, so gpu_summary moves every bench_<name>_cuda.json into one benchmarks.json after printing its tables,
and gpu_unbundle writes the entries back as benchmarks/results/<name>_cuda_<device>.json. Round trip of the
committed H100 results, the models benchmark's table, unparsable and earlier bundles, device tags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from script_modules import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The committed H100 results but the models benchmark, which the tests replace by a made-up one (models_result)
COMMITTED = sorted(p for p in RESULTS.glob("*_cuda_h100.json") if p.name != "models_cuda_h100.json")




@pytest.fixture(scope="module")
def summary():
    return load_script("scripts/gpu_summary.py", "gpu_summary")


@pytest.fixture(scope="module")
def unbundle():
    return load_script("scripts/gpu_unbundle.py", "gpu_unbundle")


def models_result() -> dict:
    rows = [{"config": "base", "path": "onnxattn", "label": "ORT + onnxattn kernels", "ttft_ms": 12.5,
             "tokens_per_s": 480.0, "same_tokens": True, "matching": 128, "placement": ["CUDAExecutionProvider"]},
            {"config": "base", "path": "torch_sdpa", "label": "eager torch, F.scaled_dot_product_attention",
             "ttft_ms": 20.0, "tokens_per_s": 300.0, "same_tokens": False, "matching": 77},
            {"config": "large", "path": "stock", "label": "ORT, stock ops (plain torch.onnx.export)",
             "error": "skipped: time budget spent (--budget-s)"}]  # fmt: skip
    env = {"device": "NVIDIA H100 80GB HBM3", "driver": "580", "commit": "0123456789abcdef", "date": "2026-11-30"}
    return {"environment": env, "configs": {}, "results": rows}


def out_folder(tmp_path: Path) -> Path:
    """$OUT as the benchmarks leave it: the committed H100 results under their bench_<name>_cuda.json names, plus
    a models benchmark."""
    out = tmp_path / "out"
    out.mkdir()
    for path in COMMITTED:
        shutil.copy(path, out / f"bench_{path.name.removesuffix('_cuda_h100.json')}_cuda.json")
    (out / "bench_models_cuda.json").write_text(json.dumps(models_result(), indent=1))
    return out


def test_committed_results_exist():
    assert {p.name for p in COMMITTED} >= {"sdpa_cuda_h100.json", "gqa_cuda_h100.json", "paged_cuda_h100.json"}


def test_summary_prints_the_tables_then_bundles_and_unbundling_restores_the_results(summary, unbundle, tmp_path,
                                                                                     capsys):  # fmt: skip
    out = out_folder(tmp_path)
    names = sorted(p.name.removesuffix("_cuda_h100.json") for p in COMMITTED) + ["models"]
    (out / "gpu_tests.xml").write_text('<testsuites><testsuite name="pytest"><testcase classname="tests.gpu.t" '
                                       'name="a"/></testsuite></testsuites>')  # fmt: skip
    assert summary.main([str(out), "--tests-rc", "0", "--bench-rc", "0", "--models-bench-rc", "0"]) == 0
    text = capsys.readouterr().out
    assert "device NVIDIA H100 80GB HBM3" in text  # the SDPA table, read before the files went
    assert any(line.split()[:2] == ["prefill", "float16"] for line in text.splitlines())
    line = next(x for x in text.splitlines() if "ORT + onnxattn kernels" in x)
    assert line.split()[:2] == ["generate", "base"] and "12.5 ms" in line and "480.0 tok/s  True (128)" in line
    assert "skipped: time budget spent" in text and f"bundled {', '.join(sorted(names))}" in text

    assert sorted(p.name for p in out.iterdir()) == ["benchmarks.json", "gpu_check.json", "gpu_tests.xml"]
    bundle = json.loads((out / "benchmarks.json").read_text())
    assert sorted(bundle) == sorted(names)
    written = json.loads((out / "gpu_check.json").read_text())
    assert written["bench_bundle"]["file"] == "benchmarks.json" and written["models_bench_exit_code"] == 0
    assert written["models_bench_file"] == "bench_models_cuda.json"
    assert "bench_models_cuda.json" in written["bench_bundle"]["from"]

    results = tmp_path / "results"
    assert unbundle.main([str(out / "benchmarks.json"), "--results", str(results), "--summary",
                          str(out / "gpu_check.json")]) == 0  # fmt: skip
    assert sorted(p.name for p in results.iterdir()) == sorted(
        [p.name for p in COMMITTED] + ["models_cuda_h100.json", "gpu_check_h100.json"])
    for path in COMMITTED:  # the same contents under the names plot_cuda.py and docs/performance.md read
        assert json.loads((results / path.name).read_text()) == json.loads(path.read_text()), path.name
    assert json.loads((results / "models_cuda_h100.json").read_text()) == models_result()
    assert json.loads((results / "gpu_check_h100.json").read_text()) == written


def test_bundle_merges_an_earlier_one_and_keeps_unparsable_text(summary, unbundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "benchmarks.json").write_text(json.dumps({"sdpa": {"old": 1}, "gqa": {"old": 2}}))
    (out / "bench_sdpa_cuda.json").write_text(json.dumps({"new": 1, "device": "NVIDIA H200"}))
    (out / "bench_models_cuda.json").write_text('{"environment": {"device": "NVIDIA H200"}, "results": [')  # cut off
    (out / "bench_notes.json").write_text("{}")  # not a benchmark's name: stays
    assert summary.bundle_benchmarks(out) == ["models", "sdpa"]
    bundle = json.loads((out / "benchmarks.json").read_text())
    assert bundle["sdpa"] == {"new": 1, "device": "NVIDIA H200"} and bundle["gqa"] == {"old": 2}
    assert bundle["models"] == {"unparsed_text": '{"environment": {"device": "NVIDIA H200"}, "results": ['}
    assert sorted(p.name for p in out.iterdir()) == ["bench_notes.json", "benchmarks.json"]
    assert summary.bundle_benchmarks(out) == []  # nothing new: the bundle stays as it is

    results = tmp_path / "results"
    only = ["--only", "sdpa,gqa"]
    assert unbundle.main([str(out / "benchmarks.json"), "--results", str(results), *only]) == 2  # gqa: no device
    assert not results.exists()  # nothing written
    assert unbundle.main([str(out / "benchmarks.json"), "--results", str(results), "--only", "sdpa,models"]) == 0
    assert (results / "sdpa_cuda_h200.json").is_file()
    assert (results / "models_cuda_h200.json").read_text().endswith('"results": [')  # the text as it came
    assert unbundle.main([str(out / "benchmarks.json"), "--results", str(results), "--tag", "h100x"]) == 0
    assert (results / "gqa_cuda_h100x.json").is_file()


def test_summary_survives_a_benchmark_json_cut_off(summary, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench_gqa_cuda.json").write_text('{"environment": ')
    assert summary.main([str(out), "--gqa-bench-rc", "124"]) == 0
    text = capsys.readouterr().out
    assert "bench_gqa_cuda.json does not parse" in text and "GQA benchmark: no results (exit code 124)" in text
    assert json.loads((out / "benchmarks.json").read_text()) == {"gqa": {"unparsed_text": '{"environment": '}}


@pytest.mark.parametrize("name,tag", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                      ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA L40S", "l40s"), ("Tesla T4", "t4"),
                                      ("NVIDIA GeForce RTX 4090", "nvidia_geforce_rtx_4090")])  # fmt: skip
def test_device_tags(unbundle, name, tag):
    assert unbundle.device_tag(name) == tag


def test_unbundle_refuses_what_is_not_a_bundle(unbundle, tmp_path, capsys):
    (tmp_path / "b.json").write_text("[1, 2]")
    assert unbundle.main([str(tmp_path / "b.json"), "--results", str(tmp_path / "r")]) == 2
    assert unbundle.main([str(tmp_path / "missing.json")]) == 2
    assert "not a bundle" in capsys.readouterr().err


def test_summary_columns_are_the_benchmarks(summary):
    """The summary's baselines and opt-in paths are bench_sdpa_cuda's own (one list each, held equal here)."""
    bench = load_script("benchmarks/bench_sdpa_cuda.py", "bench_sdpa_cuda_columns")
    assert summary.BASELINES == bench.BASELINE_IMPLS
    assert summary.OPT_IN_PATHS == tuple(bench.OPT_IN_DECODE)
    gqa = load_script("benchmarks/bench_gqa_cuda.py", "bench_gqa_cuda_columns")
    assert summary.OPT_IN_PATHS + summary.GQA_OPT_IN_PATHS == tuple(gqa.DECODE_COLUMNS)


def test_opt_in_decode_paths_are_reported_and_never_taken_for_baselines(summary, tmp_path, capsys):
    """A decode row whose opt-in path (here the fused merge) beats every baseline: the ratio is still against the best
    baseline, and the line gives each opt-in path's fraction of copy bandwidth beside ours, in both tables."""
    out = tmp_path / "out"
    out.mkdir()
    env = {"device": "NVIDIA H200", "driver": "580", "torch": "2.11", "commit": "0123456789abcdef"}
    sdpa_row = {"kind": "decode", "dtype": "float16", "shape": "B1 32q/8kv Skv32k D128",
                "gbs": {"onnxattn": 2600.0, "lean": 2500.0, "fused": 3000.0, "torch_flash": 2700.0, "ort_gqa": 900.0},
                "fraction_of_copy": {"onnxattn": 0.62, "lean": 0.6, "fused": 0.714, "torch_flash": 0.64,
                                     "ort_gqa": 0.21}}  # fmt: skip
    gqa_row = {"kind": "decode", "shape": "B1 32q/8kv P32k M32k D128",
               "gbs": {"onnxattn": {"gpu": 2300.0}, "ort_gqa": {"gpu": 3100.0}},
               "fraction_of_copy": {"onnxattn": {"gpu": 0.54, "graph": 0.5}, "fused": {"gpu": 0.66, "graph": 0.6},
                                    "fused_joint": {"gpu": 0.68}, "ort_gqa": {"gpu": 0.73}}}  # fmt: skip
    (out / "bench_sdpa_cuda.json").write_text(json.dumps({"environment": env, "results": [sdpa_row]}))
    (out / "bench_gqa_cuda.json").write_text(json.dumps({"environment": env, "results": [gqa_row]}))
    assert summary.main([str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sdpa_line = next(x for x in lines if x.startswith("decode   float16"))
    assert "2700.0   0.96  GB/s (62% of copy; lean 60%, fused 71%) [torch_flash]" in sdpa_line
    gqa_line = next(x for x in lines if x.startswith("decode    B1 32q/8kv P32k"))
    assert gqa_line.endswith("GB/s (ours 54% of copy; fused 66%, fused_joint 68%)")
