"""Summary of one scripts/gpu_check.sh run: test counts per file and the first failures (from the
pytest JUnit XML files gpu_tests*.xml), the benchmark tables
(from bench_sdpa_cuda.json, bench_gqa_cuda.json, bench_paged_cuda.json and bench_sparse_cuda.json); prints one
table and writes gpu_check.json next to them. The serial stages' reports (gpu_tests_gqa.xml, ...) are then merged
into gpu_tests.xml, so the folder holds at most 8 files (what the device tool returns)."""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path


def test_summary(xml_paths: list[Path]) -> dict:
    missing = [p.name for p in xml_paths if not p.is_file()]
    counts: dict[str, Counter] = defaultdict(Counter)
    failures, skip_reasons = [], Counter()
    cases = [c for p in xml_paths if p.is_file() for c in ET.parse(p).getroot().iter("testcase")]
    for case in cases:
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
    out = {
        "by_file": {g: dict(c) for g, c in sorted(counts.items())},
        "failures": failures,
        "skip_reasons": dict(skip_reasons),
    }
    if missing:
        out["error"] = f"no {', '.join(missing)} (pytest did not finish?)"
    return out


def merge_reports(xml_paths: list[Path], into: Path) -> None:
    """One JUnit report from several (each testsuite tagged with its file); the merged-in files are removed.
    A report that does not parse stays as it is."""
    if len(xml_paths) < 2:
        return
    merged, done = ET.Element("testsuites"), []
    for path in xml_paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as e:
            print(f"gpu_summary: {path.name} not merged ({e})")
            continue
        for suite in [root] if root.tag == "testsuite" else list(root):
            suite.set("file", path.name)
            merged.append(suite)
        done.append(path)
    ET.ElementTree(merged).write(into, encoding="utf-8", xml_declaration=True)
    for path in done:
        if path != into:
            path.unlink()


def sparse_bench_lines(bench: dict) -> list[str]:
    """The sparse attention benchmark (bench_sparse_cuda.json): ms per implementation and the time ratios."""
    def cell(x, spec="9.2f"):
        return format(x, spec) if isinstance(x, (int, float)) else "n/a".rjust(int(spec.split(".")[0]))

    lines = [f"{'sparse bench':12} {'S':>6} {'nsa ms':>9} {'routed ms':>9} {'dense ms':>9} {'torch ms':>9} "
             f"{'nsa/dense':>9} {'rtd/dense':>9} {'nsa/torch':>9} {'rtd/torch':>9}  dense, torch ="]
    for r in bench.get("results", []):
        ms, ratio = r.get("ms", {}), r.get("ratio", {})
        dense, torch_ref = r.get("dense_ref"), r.get("torch_ref")
        cells = [cell(ms.get("nsa")), cell(ms.get("routed")), cell(ms.get(dense) if dense else None),
                 cell(ms.get(torch_ref) if torch_ref else None)]
        cells += [cell(ratio.get(k), "9.3f") for k in ("nsa/dense", "routed/dense", "nsa/torch", "routed/torch")]
        seq = r.get("seq", 0)
        lines.append(f"{'prefill':12} {f'{seq // 1024}k' if seq % 1024 == 0 else seq:>6} {' '.join(cells)}  "
                     f"{dense or '-'}, {torch_ref or '-'}")
        for name, text in r.get("errors", {}).items():
            lines.append(f"  {name}: {text[:160]}")
    return lines


def print_gqa_bench(bench: dict) -> None:
    unit_of = {"prefill": ("tflops", "TFLOP/s"), "decode": ("gbs", "GB/s")}
    print(f"{'GQA bench':9} {'shape':34} {'ours gpu':>9} {'ort gpu':>9} {'ours wall':>9} {'ort wall':>9}  unit")
    for r in bench["results"]:
        key, unit = unit_of[r["kind"]]
        ours, theirs = r[key].get("onnxattn", {}), r[key].get("ort_gqa", {})
        cells = " ".join(f"{v:9.1f}" if v else "      n/a" for v in (ours.get("gpu"), theirs.get("gpu"),
                                                                       ours.get("wall"), theirs.get("wall")))
        if r["kind"] == "decode" and r["fraction_of_copy"].get("onnxattn", {}).get("gpu"):
            unit += f" (ours {100 * r['fraction_of_copy']['onnxattn']['gpu']:.0f}% of copy)"
        print(f"{r['kind']:9} {r['shape']:34} {cells}  {unit}")


def print_paged_bench(bench: dict) -> None:
    print(f"{'paged bench':11} {'shape':36} {'ours graph':>10} {'% copy':>7} {'contiguous':>10}  GB/s of K+V read")
    for r in bench["results"]:
        ours, contig = r["gbs"].get("onnxattn", {}), r["gbs"].get("gqa_contiguous", {})
        frac = r["fraction_of_copy"].get("onnxattn", {}).get("graph")
        cells = [f"{ours['graph']:10.0f}" if ours.get("graph") else "       n/a",
                 f"{100 * frac:6.0f}%" if frac else "    n/a", f"{contig['graph']:10.0f}" if contig.get("graph") else "       n/a"]
        print(f"{r['kind']:11} {r['shape']:36} {' '.join(cells)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--tests-rc", type=int, default=None)
    parser.add_argument("--bench-rc", type=int, default=None)
    parser.add_argument("--gqa-tests-rc", type=int, default=None)
    parser.add_argument("--gqa-bench-rc", type=int, default=None)
    parser.add_argument("--paged-tests-rc", type=int, default=None)
    parser.add_argument("--paged-bench-rc", type=int, default=None)
    parser.add_argument("--sparse-bench-rc", type=int, default=None)
    parser.add_argument("--sanitize-rc", type=int, default=None)
    args = parser.parse_args(argv)
    # One report from the parallel run (pytest-xdist), or one per op family from the serial stages.
    xml = sorted(args.out.glob("gpu_tests*.xml")) or [args.out / "gpu_tests.xml"]
    tests = test_summary(xml)
    bench_path = args.out / "bench_sdpa_cuda.json"
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else None
    gqa_bench_path = args.out / "bench_gqa_cuda.json"
    gqa_bench = json.loads(gqa_bench_path.read_text()) if gqa_bench_path.is_file() else None
    paged_bench_path = args.out / "bench_paged_cuda.json"
    paged_bench = json.loads(paged_bench_path.read_text()) if paged_bench_path.is_file() else None
    sparse_bench_path = args.out / "bench_sparse_cuda.json"
    sparse_bench = json.loads(sparse_bench_path.read_text()) if sparse_bench_path.is_file() else None

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
    for label, rc in (("GPU tests (but GroupQueryAttention's)", args.tests_rc), ("GroupQueryAttention tests", args.gqa_tests_rc),
                      ("PagedAttention tests", args.paged_tests_rc)):
        if rc == 124:
            print(f"  {label} were interrupted at their time cap: the counts cover what ran")
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
    if gqa_bench:
        print_gqa_bench(gqa_bench)
    elif args.gqa_bench_rc is not None:
        print(f"GQA benchmark: no results (exit code {args.gqa_bench_rc})")
    if paged_bench:
        print_paged_bench(paged_bench)
    elif args.paged_bench_rc is not None:
        print(f"PagedAttention benchmark: no results (exit code {args.paged_bench_rc})")
    if sparse_bench:
        print("\n".join(sparse_bench_lines(sparse_bench)))
    elif args.sparse_bench_rc is not None:
        print(f"sparse attention benchmark: no results (exit code {args.sparse_bench_rc})")
    if args.sanitize_rc is not None:
        print(f"compute-sanitizer: {'clean' if args.sanitize_rc == 0 else f'errors (exit code {args.sanitize_rc})'}")
    summary = {
        "tests_exit_code": args.tests_rc,
        "gqa_tests_exit_code": args.gqa_tests_rc,
        "bench_exit_code": args.bench_rc,
        "gqa_bench_exit_code": args.gqa_bench_rc,
        "paged_tests_exit_code": args.paged_tests_rc,
        "paged_bench_exit_code": args.paged_bench_rc,
        "sparse_bench_exit_code": args.sparse_bench_rc,
        "sanitize_exit_code": args.sanitize_rc,
        "tests": tests,
        "environment": next((b["environment"] for b in (bench, gqa_bench, paged_bench, sparse_bench) if b), None),
        "bench_file": bench_path.name if bench else None,
        "gqa_bench_file": gqa_bench_path.name if gqa_bench else None,
        "paged_bench_file": paged_bench_path.name if paged_bench else None,
        "sparse_bench_file": sparse_bench_path.name if sparse_bench else None,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    merge_reports([p for p in xml if p.is_file()], args.out / "gpu_tests.xml")
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
