"""benchmarks/cpu_timing.py, the burst timing every CPU benchmark uses (a pause, one untimed call, timed calls
for at least `burst` seconds, the median), with a fake clock; and each CPU benchmark's main run end to end
at tiny sizes with that timing (its CLI, its JSON fields, its table)."""

from __future__ import annotations

import json
import sys

import pytest
from script_modules import ROOT, load_script

timing = load_script("benchmarks/cpu_timing.py", "cpu_timing")


class FakeMachine:
    """A clock that advances only when the timed callable runs (by the next of `durations`) or sleeps."""

    def __init__(self, durations):
        self.now, self.durations, self.events = 0.0, list(durations), []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.events.append(("sleep", seconds))
        self.now += seconds

    def call(self, name="f"):
        def fn():
            self.events.append(("call", name))
            self.now += self.durations.pop(0)

        return fn

    def clocks(self):
        return {"clock": self.clock, "sleep": self.sleep, "cpu_clock": self.clock}


def test_burst_pauses_discards_one_call_and_times_until_burst_seconds():
    m = FakeMachine([1.0, 0.005, 0.007, 0.009, 0.5])
    times = timing.time_burst(m.call(), settle=0.1, burst=0.02, **m.clocks())
    assert times == pytest.approx([0.005, 0.007, 0.009])  # the 1.0 s first call is not timed; 0.021 >= 0.02
    assert m.events == [("sleep", 0.1), ("call", "f"), ("call", "f"), ("call", "f"), ("call", "f")]
    assert m.durations == [0.5]  # stopped as soon as the burst was long enough


def test_burst_times_at_least_one_call_and_records_cpu_times():
    m = FakeMachine([0.3, 0.2, 9.9])
    cpu: list[float] = []
    assert timing.time_burst(m.call(), settle=0.0, burst=0.0, cpu_times=cpu, **m.clocks()) == pytest.approx([0.2])
    assert cpu == pytest.approx([0.2])
    m = FakeMachine([0.3, 0.2, 9.9])  # a burst shorter than one call still times exactly one
    assert timing.time_burst(m.call(), settle=0.0, burst=0.1, **m.clocks()) == pytest.approx([0.2])


def test_rounds_interleave_the_implementations_and_take_the_median():
    m = FakeMachine([1, 0.010, 1, 0.100, 1, 0.030, 1, 0.300, 1, 0.020, 1, 0.200])
    fns = {"a": m.call("a"), "b": m.call("b")}
    median = timing.median_rounds(fns, 3, settle=0.05, burst=0.001, **m.clocks())
    assert median == pytest.approx({"a": 0.020, "b": 0.200})
    calls = [e[1] for e in m.events if e[0] == "call"]
    assert calls == ["a", "a", "b", "b"] * 3  # a burst each per round, in order
    assert sum(e[0] == "sleep" for e in m.events) == 6  # a pause before every burst


def test_default_cli_options():
    import argparse

    parser = argparse.ArgumentParser()
    timing.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.settle, args.burst) == (timing.SETTLE, timing.BURST) == (0.1, 0.02)
    assert parser.parse_args(["--settle", "0", "--burst", "0.5"]).burst == 0.5


def test_sdpa_benchmark_uses_the_shared_timing():
    sdpa = load_script("benchmarks/bench_sdpa_cpu.py", "bench_sdpa_cpu")
    assert sdpa.cpu_timing is sys.modules["cpu_timing"] or sdpa.cpu_timing.__file__ == timing.__file__
    assert not hasattr(sdpa, "time_burst")  # one source of truth


TINY = {
    "bench_gqa_cpu": ["--prefill", "64", "--past", "32", "--capacity", "128", "--repeat", "2"],
    "bench_mla_cpu": ["--past", "32", "--heads", "2", "--repeat", "2", "--chunks", "4x0", "2x16", "--threads", "1",
                      "--indexed", "8", "--indexed-past", "64", "--batches", "3", "20", "--batch-past", "24"],
    "bench_paged_cpu": ["--batch", "2", "--past", "40", "--block-size", "16", "--repeat", "2"],
    "bench_sparse_cpu": ["--seq", "256", "--function-seq", "128", "--repeat", "1"],
}


def test_gqa_benchmark_with_sinks_times_both_ops_with_sinks(tmp_path, monkeypatch):
    """--sinks: our sinks input and onnxruntime's head_sink in the same rounds (after a check that they agree),
    written to gqa_cpu_sinks.json."""
    module = load_script("benchmarks/bench_gqa_cpu.py", "bench_gqa_cpu")
    monkeypatch.setattr(sys, "argv", ["bench_gqa_cpu", *TINY["bench_gqa_cpu"], "--sinks", "--no-function", "--settle",
                                      "0", "--burst", "0.001", "--out", str(tmp_path)])
    module.main()
    rows = json.loads((tmp_path / "gqa_cpu_sinks.json").read_text())["rows"]
    impls = {"onnxattn", "ort_gqa", "onnxattn+sinks", "ort_gqa+sinks"}
    assert {r["impl"] for r in rows if r["phase"] == "prefill"} == impls
    assert {r["impl"] for r in rows if r["phase"] == "decode"} == impls
    assert not (tmp_path / "gqa_cpu.json").exists()


def test_gqa_benchmark_in_float16(tmp_path, monkeypatch):
    """--dtype float16: every implementation on fp16 inputs and caches (after the check that ours and onnxruntime's
    agree), GB/s counting 2-byte K/V, written to gqa_cpu_float16.json."""
    module = load_script("benchmarks/bench_gqa_cpu.py", "bench_gqa_cpu")
    monkeypatch.setattr(sys, "argv", ["bench_gqa_cpu", *TINY["bench_gqa_cpu"], "--dtype", "float16", "--settle", "0",
                                      "--burst", "0.001", "--out", str(tmp_path)])
    module.main()
    result = json.loads((tmp_path / "gqa_cpu_float16.json").read_text())
    assert result["dtype"] == "float16" and {r["dtype"] for r in result["rows"]} == {"float16"}
    decode = [r for r in result["rows"] if r["phase"] == "decode"]
    assert {r["impl"] for r in decode} == {"onnxattn", "ort_gqa", "function"} and all(r["in_place"] for r in decode)
    for r in decode:  # 2 bytes an element of the K and V read
        assert r["gbps"] == pytest.approx(2 * module.HKV * (r["P"] + 1) * module.D * 2 / (r["ms"] * 1e-3) / 1e9)
    assert not (tmp_path / "gqa_cpu.json").exists()


@pytest.mark.parametrize("name", sorted(TINY))
def test_cpu_benchmark_runs_end_to_end(name, tmp_path, monkeypatch, capsys):
    module = load_script(f"benchmarks/{name}.py", name)
    assert module.cpu_timing.__file__ == timing.__file__
    monkeypatch.setattr(sys, "argv", [name, *TINY[name], "--settle", "0", "--burst", "0.001", "--out", str(tmp_path)])
    module.main()
    out = capsys.readouterr().out
    result = json.loads((tmp_path / f"{name.removeprefix('bench_')}.json").read_text())
    assert result["machine"]["cores"] and len(result["load_average"]) >= 2
    assert result["timing"]["settle"] == 0 and result["timing"]["burst"] == 0.001
    rows = result["rows"]
    assert rows and all(r.get("ms", r.get("absorbed_ms", r.get("paged_ms", r.get("indexed_ms", 0)))) > 0 for r in rows)
    if name == "bench_gqa_cpu":
        assert {(r["phase"], r["impl"]) for r in rows} == {("prefill", "onnxattn"), ("prefill", "ort_gqa"),
                                                          ("prefill", "function"), ("prefill", "function_whole"),
                                                          ("decode", "onnxattn"), ("decode", "ort_gqa"),
                                                          ("decode", "function")}
        assert all(r["in_place"] for r in rows if r["phase"] == "decode") and "onnxattn is" in out
    elif name == "bench_mla_cpu":
        assert [r["impl"] for r in rows if r["phase"] == "decode"] == ["absorbed", "expanded", "function"]
        assert [(r["S"], r["P"]) for r in rows if r["phase"] == "chunk"] == [(4, 0), (2, 16)]
        assert [(r["P"], r["K"]) for r in rows if r["phase"] == "indexed"] == [(64, 8)]
        dtypes = {r["dtype"]: r for r in rows if r["phase"] == "dtype"}
        assert list(dtypes) == ["float32", "float16", "bfloat16"] and dtypes["float32"]["vs_float32"] == 1.0
        assert 0 < dtypes["float16"]["max_rel_error_vs_float32"] <= module.DTYPE_TOLERANCE["float16"]
        batch = [r for r in rows if r["phase"] == "batch"]
        assert [(r["B"], r["P"]) for r in batch] == [(1, 24), (3, 24), (20, 24)] and batch[0]["per_sequence_vs_b1"] == 1
        assert "kernel's own choice" in out and "dense / indexed" in out and "by dtype" in out and "batched" in out
    elif name == "bench_paged_cpu":
        assert [(r["threads"], r["layout"]) for r in rows] == [(1, "in-order"), (1, "shuffled"), (2, "in-order"),
                                                               (2, "shuffled")]
        assert all(r["max_error"] <= 1e-4 and r["paged_in_place"] and "ratio" in r for r in rows)
        assert all("cpu_ratio" in r for r in rows if r["threads"] == 1)
    else:
        assert [r["impl"] for r in rows] == ["nsa", "routed", "dense", "nsa", "routed", "nsa-function",
                                             "routed-function"]
        assert set(result["ratio_dense_over"]) == {"nsa", "routed"} and "faster than dense" in out


@pytest.mark.parametrize("name", ["bench_sdpa_cpu", *sorted(TINY)])
def test_benchmarks_import_without_benchmarks_on_the_path(name, monkeypatch):
    """Loaded by path (as the tests, or bench_sparse_cuda importing bench_sparse_cpu), a benchmark finds
    cpu_timing next to it."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(ROOT / "benchmarks")])
    monkeypatch.delitem(sys.modules, "cpu_timing")
    module = load_script(f"benchmarks/{name}.py", f"{name}_path_check")
    assert module.cpu_timing.__file__ == timing.__file__


def test_functions_benchmark_runs_end_to_end(tmp_path, monkeypatch):
    """bench_functions_cpu.py: each (op, S, form) in a fresh process, rows with seconds and peak memory, JSON and
    plot; the two forms of a function give the same result."""
    module = load_script("benchmarks/bench_functions_cpu.py", "bench_functions_cpu")
    monkeypatch.setattr(sys, "argv", ["bench_functions_cpu", "--sizes", "64", "--out", str(tmp_path)])
    assert module.main() == 0
    rows = json.loads((tmp_path / "functions_cpu.json").read_text())["rows"]
    assert {(r["op"], r["form"]) for r in rows} == {(op, form) for op in module.OPS for form in ("chunked", "whole")}
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in rows)
    for op in module.OPS:
        assert len({r["checksum"] for r in rows if r["op"] == op}) == 1
    assert (tmp_path / "functions_cpu.png").stat().st_size > 0


cpu_peak = load_script("benchmarks/cpu_peak.py", "cpu_peak")


def test_cpu_peak_measures_the_widest_vectors_this_cpu_has_and_writes_its_json(tmp_path):
    """benchmarks/cpu_peak.py at tiny sizes: its FMA loop compiles here for this CPU's widest vectors (the peak
    the CPU targets are judged against must not be an AVX2 figure on an AVX-512 machine), every run gives a
    positive rate, and the JSON holds what docs/performance.md quotes."""
    out = tmp_path / "peak.json"
    result = cpu_peak.main(["--threads", "1", "--iterations", "20000", "--gib", "0.01", "--repeats", "2",
                            "--out", str(out)])
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    assert result["fma"]["vector_floats"] == (16 if "avx512f" in flags else 8)
    assert len(result["fma"]["gflops_runs"]) == 2 and min(result["fma"]["gflops_runs"]) > 0
    assert result["fma"]["gflops_best"] == max(result["fma"]["gflops_runs"])
    assert result["read"]["gbs_best"] > 0
    assert json.loads(out.read_text())["fma"]["chains"] == result["fma"]["chains"]
