"""CPU benchmark of onnxattn::LightningIndexer (DeepSeek-V3.2's DSA key selection): the kernel against the reference
function inlined by onnxruntime (what a model runs without our library, and what an unfused export of the indexer
computes: MatMul, Relu, MatMul over heads, TopK), side by side in one run, plus each one's peak memory.

DeepSeek-V3.2 indexer sizes: H=64 index heads of D=128, top_k=2048, fp32 queries and keys, B=1.
- decode: one query over T cached keys (concatenation layout: the keys include the new token's).
- prefill: a causal prompt of S tokens (T = S).
Reported: ms (median over --repeat rounds of bursts, cpu_timing.py as every CPU benchmark), GFLOP/s of the visible
(query, key, head) dot products (2 * H * D each), and for prefill the peak resident memory of a fresh process that
builds the session and runs the call once (VmHWM, so the inputs and onnxruntime itself are included; the
function's per-head scores, [B, S, H, T] float32 up to 2^25 values and chunks of query rows beyond, are most of
its figure).

    python benchmarks/bench_indexer_cpu.py [--decode 8192 32768 131072] [--prefill 1024 2048 4096]
                                           [--function-prefill 4096] [--repeat 5] [--threads 0] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cuda_ep import make_session

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

H, D, TOP_K = 64, 128, 2048
F32 = TensorProto.FLOAT


def indexer_model():
    vi = helper.make_tensor_value_info
    node = helper.make_node("LightningIndexer", ["q", "k", "w"], ["idx"], domain=ops.DOMAIN, num_heads=H, top_k=TOP_K)
    inputs = [vi("q", F32, [1, "S", H * D]), vi("k", F32, [1, 1, "T", D]), vi("w", F32, [1, "S", H])]
    outputs = [vi("idx", TensorProto.INT64, [1, "S", TOP_K])]
    model = helper.make_model(helper.make_graph([node], "indexer", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def feeds(seq: int, total: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"q": rng.standard_normal((1, seq, H * D), dtype=np.float32),
            "k": rng.standard_normal((1, 1, total, D), dtype=np.float32),
            "w": rng.standard_normal((1, seq, H), dtype=np.float32) * H ** -0.5}


def session(library: bool, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return make_session(indexer_model(), use_library=library, session_options=options,
                        providers=["CPUExecutionProvider"])


def visible_flops(seq: int, total: int) -> float:
    pairs = sum(total - seq + i + 1 for i in range(seq))
    return 2.0 * H * D * pairs


def same_sets(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose picks agree (both lists are ascending, so equal rows are equal arrays)."""
    return float(np.mean(np.all(a == b, axis=-1)))


def bench(seq: int, total: int, with_function: bool, repeat: int, threads: int, settle: float, burst: float) -> dict:
    inputs = feeds(seq, total)
    impls = {"kernel": session(True, threads)}
    if with_function:
        impls["function"] = session(False, threads)
    runs = {name: (lambda s=s: s.run(None, inputs)) for name, s in impls.items()}
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    row = {"S": seq, "T": total, "kernel_ms": median["kernel"] * 1e3,
           "kernel_gflops": visible_flops(seq, total) / median["kernel"] / 1e9}
    if with_function:
        row["function_ms"] = median["function"] * 1e3
        row["speedup"] = median["function"] / median["kernel"]
        row["same_picks"] = same_sets(runs["kernel"]()[0], runs["function"]()[0])
    return row


def peak_memory_mb(seq: int, total: int, library: bool, threads: int) -> float:
    """Peak resident memory (VmHWM) of a fresh process that builds the session and runs once. (Not ru_maxrss:
    Linux carries it across execve, so a child would report this benchmark's own peak.)"""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_indexer_cpu as b; "
            f"s = b.session({library}, {threads}); s.run(None, b.feeds({seq}, {total})); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1]) / 1024.0


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, kernel, function = [], [], []
    for r in rows:
        labels.append(f"{r['kind']}\nS={r['S']}\nT={r['T']}")
        kernel.append(r["kernel_ms"])
        function.append(r.get("function_ms", np.nan))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, kernel, 0.4, label="kernel", color="tab:blue")
    ax.bar(x + 0.2, function, 0.4, label="function (inlined)", color="tab:gray")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"LightningIndexer, CPU fp32, H={H}, D={D}, top {TOP_K}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode", type=int, nargs="*", default=[8192, 32768, 131072], help="cache lengths T")
    parser.add_argument("--prefill", type=int, nargs="*", default=[1024, 2048, 4096], help="prompt lengths S")
    parser.add_argument("--function-prefill", type=int, default=4096,
                        help="largest prompt the inlined function runs at (seconds each at 4k)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of bursts")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    cpu_timing.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = cpu_timing.load_average()  # other work on the machine: recorded with the rows
    rows = []
    for total in args.decode:
        rows.append(dict(kind="decode", **bench(1, total, True, args.repeat, args.threads, args.settle, args.burst)))
    for seq in args.prefill:
        with_function = seq <= args.function_prefill
        row = dict(kind="prefill", **bench(seq, seq, with_function, max(1, args.repeat // 2), args.threads,
                                           args.settle, args.burst))
        if not args.no_memory:
            row["kernel_peak_mb"] = peak_memory_mb(seq, seq, True, args.threads)
            if with_function:
                row["function_peak_mb"] = peak_memory_mb(seq, seq, False, args.threads)
        rows.append(row)

    print(f"\nLightningIndexer, fp32, B=1, H={H}, D={D}, top_k={TOP_K}; onnxruntime {ort.__version__}, "
          f"threads={args.threads or 'default'}")
    print(f"  {'kind':<8} {'S':>6} {'T':>7} {'kernel ms':>10} {'GFLOP/s':>8} {'function ms':>12} {'speed-up':>9} "
          f"{'same':>5} {'kernel MB':>10} {'function MB':>12}")
    for r in rows:
        fn = f"{r['function_ms']:12.1f} {r['speedup']:8.1f}x {r['same_picks']:5.2f}" if "function_ms" in r else \
            f"{'-':>12} {'-':>9} {'-':>5}"
        mem = f"{r.get('kernel_peak_mb', float('nan')):10.0f} {r.get('function_peak_mb', float('nan')):12.0f}"
        print(f"  {r['kind']:<8} {r['S']:>6} {r['T']:>7} {r['kernel_ms']:10.2f} {r['kernel_gflops']:8.1f} {fn} {mem}")
    load = [load_before, cpu_timing.load_average()]
    print(f"load average {load[0]} -> {load[1]}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "indexer_cpu.json"
    from bench_sdpa_cpu import machine  # same machine description as the other CPU benchmarks

    timing = {"repeat": args.repeat, "settle": args.settle, "burst": args.burst}
    path.write_text(json.dumps({"machine": machine(), "threads": args.threads, "load_average": load,
                                "timing": timing, "rows": rows}, indent=2))
    plot(rows, path.with_suffix(".png"))
    print(f"\nwrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
