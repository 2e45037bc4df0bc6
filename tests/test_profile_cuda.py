"""benchmarks/profile_cuda.py's host logic (no GPU here): the per-kernel summary of profiler events, the printed
table, and its refusals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prof():
    spec = importlib.util.spec_from_file_location("profile_cuda", ROOT / "benchmarks" / "profile_cuda.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["profile_cuda"] = module
    spec.loader.exec_module(module)
    return module


def event(name, start, end, device="DeviceType.CUDA"):
    return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_summary_sums_kernels_per_call_and_measures_the_gaps(prof):
    # two calls of decode (40 us) + combine (5 us), 10 us apart, plus a host event that must not count
    events = [event("decode", 0, 40), event("combine", 45, 50), event("decode", 60, 100), event("combine", 105, 110),
              event("cudaLaunchKernel", 0, 200, device="DeviceType.CPU")]
    s = prof.summarize(events, per=2)
    assert [k["name"] for k in s["kernels"]] == ["decode", "combine"]
    assert s["kernels"][0] == {"name": "decode", "calls": 1.0, "us": 40.0}
    assert s["busy_us"] == 45.0 and s["span_us"] == 55.0  # 110 us over 2 calls; 10 us of gaps per call
    assert prof.summarize([], per=3) == {"kernels": [], "busy_us": 0.0, "span_us": 0.0}


def test_table_shows_shares_gaps_and_errors(prof):
    row = {**prof.summarize([event("decode", 0, 30), event("combine", 35, 40)], per=1), "graph": True}
    text = prof.format_case("sdpa_decode_b1_32k", row)
    assert "busy 35.0 us per call, span 40.0 us (gaps 5.0 us)" in text
    assert "85.7%" in text and "decode" in text and "combine" in text
    row["graph"] = False
    assert "gaps" not in prof.format_case("x", row)
    assert prof.format_case("nsa_16k", {"error": "RuntimeError: boom"}) == "nsa_16k: RuntimeError: boom"


def test_unknown_cases_are_refused_and_no_gpu_exits_2(prof, capsys):
    with pytest.raises(SystemExit):
        prof.main(["--cases", "sdpa_decode_b1_32k,warp_speed"])
    assert "unknown case(s) warp_speed" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert prof.main(["--cases", "sdpa_decode_b1_4k"]) == 2



def test_case_switches_name_known_cases(prof):
    assert prof.CASE_ENV["gqa_prefill_s2048_rows"] == {"ONNXATTN_GQA_CUDA_ROTATION": "rows"}
    assert prof.CASE_ENV["gqa_prefill_s2048_joint"] == {"ONNXATTN_GQA_CUDA_ROTATION": "joint"}
    assert set(prof.CASE_ENV) <= set(prof.CASES)
