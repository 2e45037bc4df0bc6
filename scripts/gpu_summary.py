"""Summary of one scripts/gpu_check.sh run: test counts per file and the first failures (from the
pytest JUnit XML), the benchmark table (from bench_sdpa_cuda.json); prints one table and writes
gpu_check.json next to them."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path


def test_summary(xml_path: Path) -> dict:
    if not xml_path.is_file():
        return {"error": f"no {xml_path.name} (pytest did not finish?)"}
    counts: dict[str, Counter] = defaultdict(Counter)
    failures, skip_reasons = [], Counter()
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        group = (case.get("classname") or "?").split(".")[-1]
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failures.append({"test": f"{group}::{case.get('name')}", "message": (child.get("message") or "")[:400]})
            elif child.tag == "skipped":
                outcome = "skipped"
                skip_reasons[(child.get("message") or "")[:160]] += 1
        counts[group][outcome] += 1
    return {
        "by_file": {g: dict(c) for g, c in sorted(counts.items())},
        "failures": failures,
        "skip_reasons": dict(skip_reasons),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--tests-rc", type=int, default=None)
    parser.add_argument("--bench-rc", type=int, default=None)
    args = parser.parse_args(argv)
    tests = test_summary(args.out / "gpu_tests.xml")
    bench_path = args.out / "bench_sdpa_cuda.json"
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None

    print("\n=========================== GPU check summary ===========================")
    if bench:
        env = bench["environment"]
        print(f"device {env['device']}  driver {env['driver']}  torch {env['torch']}  onnxruntime "
              f"{env.get('onnxruntime')}  commit {env['commit'][:12]}")  # fmt: skip
    print(f"{'tests':44} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for group, c in tests.get("by_file", {}).items():
        print(f"{group:44} {c.get('passed', 0):7d} {c.get('failed', 0):7d} {c.get('skipped', 0):8d}")
    if "error" in tests:
        print(tests["error"])
    for reason, n in tests.get("skip_reasons", {}).items():
        print(f"  skipped x{n}: {reason}")
    for f in tests.get("failures", [])[:15]:
        print(f"  FAILED {f['test']}: {f['message'][:200]}")
    if len(tests.get("failures", [])) > 15:
        print(f"  ... {len(tests['failures']) - 15} more failures (gpu_tests.xml)")
    if bench:
        print(f"{'benchmark':8} {'dtype':9} {'shape':32} {'ours':>9} {'best base':>10} {'ratio':>6}  unit")
        for r in bench["results"]:
            metric = r["tflops"] if r["kind"] == "prefill" else r["gbs"]
            base = {k: v for k, v in metric.items() if k != "onnxattn" and v}
            best = max(base.items(), key=lambda kv: kv[1]) if base else (None, None)
            ours = metric.get("onnxattn")
            ratio = f"{ours / best[1]:6.2f}" if ours and best[1] else "   n/a"
            unit = "TFLOP/s" if r["kind"] == "prefill" else "GB/s"
            if r["kind"] == "decode" and r["fraction_of_copy"].get("onnxattn"):
                unit += f" ({100 * r['fraction_of_copy']['onnxattn']:.0f}% of copy)"
            ours_s = f"{ours:9.1f}" if ours else "      n/a"
            best_s = f"{best[1]:10.1f}" if best[1] else "       n/a"
            print(f"{r['kind']:8} {r['dtype']:9} {r['shape']:32} {ours_s} {best_s} {ratio}  {unit} [{best[0]}]")
    elif args.bench_rc is not None:
        print(f"benchmark: no results (exit code {args.bench_rc})")
    summary = {
        "tests_exit_code": args.tests_rc,
        "bench_exit_code": args.bench_rc,
        "tests": tests,
        "environment": bench["environment"] if bench else None,
        "bench_file": bench_path.name if bench else None,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
