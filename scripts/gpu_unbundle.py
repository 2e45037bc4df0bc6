"""Splits the benchmarks.json a scripts/gpu_check.sh run returns into benchmarks/results/.

The device tool returns at most 8 files, so scripts/gpu_summary.py bundles every bench_<name>_cuda.json of the
run into one benchmarks.json ({"sdpa": <contents>, "gqa": ..., "models": ...}). This writes each entry back as
benchmarks/results/<name>_cuda_<tag>.json, the layout benchmarks/plot_cuda.py and docs/performance.md read;
<tag> comes from the device the entry records ("NVIDIA H100 80GB HBM3" -> h100), or --tag. With --summary, the
run's gpu_check.json goes to gpu_check_<tag>.json next to them.

    python scripts/gpu_unbundle.py <files_at>/benchmarks.json [--results benchmarks/results] [--tag h100]
        [--summary <files_at>/gpu_check.json] [--only sdpa,models]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MODEL = re.compile(r"[A-Z]{1,2}\d{1,4}[A-Z]?", re.IGNORECASE)  # H100, A100, H200, L40S, V100, T4


def device_name(entry) -> str | None:
    """The device a benchmark JSON records (under environment, or at the top for older runs; for a file that
    gpu_summary could not parse, the first "device" in its text)."""
    if not isinstance(entry, dict):
        return None
    if set(entry) == {"unparsed_text"}:
        found = re.search(r'"device":\s*"([^"]+)"', entry["unparsed_text"])
        return found[1] if found else None
    env = entry.get("environment") if isinstance(entry.get("environment"), dict) else {}
    return env.get("device") or entry.get("device")


def device_tag(name: str) -> str:
    """Short file-name tag of a device name: its model number (NVIDIA H100 80GB HBM3 -> h100), else the whole
    name made file-safe."""
    for word in re.split(r"[\s_\-]+", name):
        if _MODEL.fullmatch(word) and not word.isdigit():
            return word.lower()
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "gpu"


def unbundle(bundle: dict, results: Path, tag: str | None = None, only: set[str] | None = None) -> list[Path]:
    """Writes each entry of `bundle` to results/<name>_cuda_<tag>.json; returns the paths written."""
    plan = []
    for name, entry in bundle.items():
        if only is not None and name not in only:
            continue
        entry_tag = tag or (device_tag(device_name(entry)) if device_name(entry) else None)
        if not entry_tag:
            raise ValueError(f"gpu_unbundle: {name!r} records no device; pass --tag")
        plan.append((results / f"{name}_cuda_{entry_tag}.json", entry))
    results.mkdir(parents=True, exist_ok=True)
    for path, entry in plan:  # every name checked before anything is written
        if isinstance(entry, dict) and set(entry) == {"unparsed_text"}:  # gpu_summary could not parse it
            path.write_text(entry["unparsed_text"])
        else:
            path.write_text(json.dumps(entry, indent=1))
    return [path for path, _ in plan]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="benchmarks.json as returned from $OUT")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", help="device tag for the file names (default: from each entry's device)")
    parser.add_argument("--summary", type=Path, help="the run's gpu_check.json, copied to gpu_check_<tag>.json")
    parser.add_argument("--only", help="comma-separated subset of the bundle's names")
    args = parser.parse_args(argv)
    try:
        bundle = json.loads(args.bundle.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"gpu_unbundle: cannot read {args.bundle}: {e}", file=sys.stderr)
        return 2
    if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle):
        print(f"gpu_unbundle: {args.bundle} is not a bundle ({{name: benchmark JSON}})", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    try:
        written = unbundle(bundle, args.results, args.tag, only)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if args.summary:
        tags = {p.stem.rsplit("_cuda_", 1)[1] for p in written}
        tag = args.tag or (tags.pop() if len(tags) == 1 else None)
        if not tag:
            print("gpu_unbundle: --summary needs one device tag (pass --tag)", file=sys.stderr)
            return 2
        path = args.results / f"gpu_check_{tag}.json"
        path.write_text(args.summary.read_text())
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
