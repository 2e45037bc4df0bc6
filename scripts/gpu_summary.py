"""Summary of one scripts/gpu_check.sh run: test counts per file and the first failures (from the
pytest JUnit XML files gpu_tests*.xml), the benchmark tables
(from bench_sdpa_cuda.json, bench_gqa_cuda.json, bench_paged_cuda.json, bench_sparse_cuda.json and
bench_models_cuda.json); prints one table and writes gpu_check.json next to them. Then, so that the folder
holds at most 8 files (what the device tool returns): the serial stages' reports (gpu_tests_gqa.xml, ...) are
merged into gpu_tests.xml, and every bench_<name>_cuda.json is bundled into benchmarks.json
({"sdpa": <its contents>, "gqa": ..., "models": ...}; entries of an earlier bundle there that this run did not
remake stay) and removed. scripts/gpu_unbundle.py splits the returned bundle into benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import re
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

    # The default path's columns (mma with overlapped loads since 82087dc); runs without them: the fast path's.
    lines = [f"{'sparse bench':12} {'S':>6} {'nsa ms':>9} {'routed ms':>9} {'dense ms':>9} {'torch ms':>9} "
             f"{'nsa/dense':>9} {'rtd/dense':>9} {'nsa/torch':>9} {'rtd/torch':>9} {'dot/dense':>9} {'nsa/simpl':>9}"
             "  dense, torch = (nsa, routed: the default path)"]
    for r in bench.get("results", []):
        ms, ratio = r.get("ms", {}), r.get("ratio", {})
        dense, torch_ref = r.get("dense_ref"), r.get("torch_ref")
        nsa, routed = ("nsa_mma_async", "routed_mma_async") if "nsa_mma_async" in ms else ("nsa", "routed")
        cells = [cell(ms.get(nsa)), cell(ms.get(routed)), cell(ms.get(dense) if dense else None),
                 cell(ms.get(torch_ref) if torch_ref else None)]
        cells += [cell(ratio.get(k), "9.3f") for k in (f"{nsa}/dense", f"{routed}/dense", f"{nsa}/torch",
                                                        f"{routed}/torch", "nsa_dot/dense", "nsa/nsa_simple")]
        seq = r.get("seq", 0)
        lines.append(f"{'prefill':12} {f'{seq // 1024}k' if seq % 1024 == 0 else seq:>6} {' '.join(cells)}  "
                     f"{dense or '-'}, {torch_ref or '-'}")
        for name, text in r.get("errors", {}).items():
            lines.append(f"  {name}: {text[:160]}")
    return lines


def models_bench_lines(bench: dict) -> list[str]:
    """The whole-model generation benchmark (bench_models_cuda.json): time to first token and decode rate per
    config and path."""
    lines = [f"{'models bench':12} {'config':6} {'path':46} {'1st token':>10} {'decode':>12}  same tokens (matching)"]
    for r in bench.get("results", []):
        head = f"{'generate':12} {r.get('config', '?'):6} {r.get('label', r.get('path', '?'))[:46]:46}"
        if "error" in r:
            lines.append(f"{head} {r['error'][:100]}")
        else:
            lines.append(f"{head} {r['ttft_ms']:7.1f} ms {r['tokens_per_s']:6.1f} tok/s  {r.get('same_tokens')} "
                         f"({r.get('matching')})")  # fmt: skip
    return lines


BUNDLE = "benchmarks.json"
_BENCH_FILE = re.compile(r"bench_(?P<name>[A-Za-z0-9]+)_cuda\.json")


def load_json(path: Path) -> dict | None:
    """A benchmark's JSON, or None when it is missing or does not parse (e.g. cut off by its time cap)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"gpu_summary: {path.name} does not parse ({e}); its table is left out")
        return None


def bundle_benchmarks(out: Path) -> list[str]:
    """Moves every bench_<name>_cuda.json of `out` into out/benchmarks.json under <name> (merged into a
    bundle already there); a file that does not parse goes in as {"unparsed_text": its text}. Returns the
    names bundled."""
    files = sorted(p for p in out.glob("bench_*_cuda.json") if _BENCH_FILE.fullmatch(p.name))
    if not files:
        return []
    bundle = {}
    if (out / BUNDLE).is_file():
        try:
            bundle = json.loads((out / BUNDLE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            print(f"gpu_summary: the earlier {BUNDLE} does not parse ({e}); replaced")
    names = []
    for path in files:
        name = _BENCH_FILE.fullmatch(path.name)["name"]
        text = path.read_text(errors="replace")
        try:
            bundle[name] = json.loads(text)
        except json.JSONDecodeError:
            bundle[name] = {"unparsed_text": text}
        names.append(name)
    (out / BUNDLE).write_text(json.dumps(bundle, indent=1))
    for path in files:
        path.unlink()
    return names


# bench_sdpa_cuda's columns (tests/test_gpu_summary.py holds these to its BASELINE_IMPLS and OPT_IN_DECODE): the
# baselines a row's ratio is taken against, and the decode rows' opt-in paths of ours, timed beside the default (in
# bench_gqa_cuda's rows too, with its own GQA_OPT_IN_PATHS: the rest of its DECODE_COLUMNS), which are not baselines.
BASELINES = ("torch_flash", "torch_cudnn", "ort_gqa")
OPT_IN_PATHS = ("pdl", "lookup", "lean", "fused", "columns", "lazy", "columns_lazy")
GQA_OPT_IN_PATHS = ("fused_joint",)


def opt_in_fractions(row: dict, timing: str | None = None, names: tuple[str, ...] = OPT_IN_PATHS) -> str:
    """A decode row's opt-in paths' fractions of copy bandwidth, e.g. "; lean 60%, fused 71%", so that the summary
    alone says whether one beats the default; `timing`: the key of a per-timing dict (bench_gqa_cuda's rows)."""
    cells = []
    for name in names:
        value = row["fraction_of_copy"].get(name)
        value = value.get(timing) if timing and isinstance(value, dict) else value
        if isinstance(value, (int, float)):
            cells.append(f"{name} {100 * value:.0f}%")
    return "; " + ", ".join(cells) if cells else ""


def print_gqa_bench(bench: dict) -> None:
    unit_of = {"prefill": ("tflops", "TFLOP/s"), "decode": ("gbs", "GB/s")}
    print(f"{'GQA bench':9} {'shape':34} {'ours gpu':>9} {'ort gpu':>9} {'ours wall':>9} {'ort wall':>9}  unit")
    for r in bench["results"]:
        key, unit = unit_of[r["kind"]]
        ours, theirs = r[key].get("onnxattn", {}), r[key].get("ort_gqa", {})
        cells = " ".join(f"{v:9.1f}" if v else "      n/a" for v in (ours.get("gpu"), theirs.get("gpu"),
                                                                       ours.get("wall"), theirs.get("wall")))
        if r["kind"] == "decode" and r["fraction_of_copy"].get("onnxattn", {}).get("gpu"):
            opt_in = opt_in_fractions(r, "gpu", OPT_IN_PATHS + GQA_OPT_IN_PATHS)
            unit += f" (ours {100 * r['fraction_of_copy']['onnxattn']['gpu']:.0f}% of copy{opt_in})"
        elif r["kind"] == "prefill" and r[key].get("joint", {}).get("gpu"):  # ONNXATTN_GQA_CUDA_ROTATION=joint
            unit += f" (joint kernel {r[key]['joint']['gpu']:.1f})"
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
    parser.add_argument("--models-bench-rc", type=int, default=None)
    parser.add_argument("--sanitize-rc", type=int, default=None)
    args = parser.parse_args(argv)
    # One report from the parallel run (pytest-xdist), or one per op family from the serial stages.
    xml = sorted(args.out.glob("gpu_tests*.xml")) or [args.out / "gpu_tests.xml"]
    tests = test_summary(xml)
    bench_path = args.out / "bench_sdpa_cuda.json"
    bench = load_json(bench_path)
    gqa_bench_path = args.out / "bench_gqa_cuda.json"
    gqa_bench = load_json(gqa_bench_path)
    paged_bench_path = args.out / "bench_paged_cuda.json"
    paged_bench = load_json(paged_bench_path)
    sparse_bench_path = args.out / "bench_sparse_cuda.json"
    sparse_bench = load_json(sparse_bench_path)
    models_bench_path = args.out / "bench_models_cuda.json"
    models_bench = load_json(models_bench_path)

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
            base = {k: metric[k] for k in BASELINES if metric.get(k)}
            best = max(base.items(), key=lambda kv: kv[1]) if base else (None, None)
            ours = metric.get("onnxattn")
            ratio = f"{ours / best[1]:6.2f}" if ours and best[1] else "   n/a"
            unit = "TFLOP/s" if r["kind"] == "prefill" else "GB/s"
            if r["kind"] == "decode" and r["fraction_of_copy"].get("onnxattn"):
                unit += f" ({100 * r['fraction_of_copy']['onnxattn']:.0f}% of copy{opt_in_fractions(r)})"
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
    if models_bench:
        print("\n".join(models_bench_lines(models_bench)))
    elif args.models_bench_rc is not None:
        print(f"models benchmark: no results (exit code {args.models_bench_rc})")
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
        "models_bench_exit_code": args.models_bench_rc,
        "sanitize_exit_code": args.sanitize_rc,
        "tests": tests,
        "environment": next((b["environment"] for b in (bench, gqa_bench, paged_bench, sparse_bench, models_bench)
                             if b and "environment" in b), None),
        "bench_file": bench_path.name if bench else None,
        "gqa_bench_file": gqa_bench_path.name if gqa_bench else None,
        "paged_bench_file": paged_bench_path.name if paged_bench else None,
        "sparse_bench_file": sparse_bench_path.name if sparse_bench else None,
        "models_bench_file": models_bench_path.name if models_bench else None,
        "bench_bundle": None,
    }
    bundled = sorted(p.name for p in args.out.glob("bench_*_cuda.json"))
    if bundled:  # the files' names above stay as they were written; their contents move into the bundle
        summary["bench_bundle"] = {"file": BUNDLE, "from": bundled}
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    merge_reports([p for p in xml if p.is_file()], args.out / "gpu_tests.xml")
    names = bundle_benchmarks(args.out)
    print(f"wrote {args.out / 'gpu_check.json'}" + (f"; bundled {', '.join(names)} into {args.out / BUNDLE}" if names else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
