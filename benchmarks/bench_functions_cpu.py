"""CPU benchmark of the reference functions (what onnxruntime runs for our nodes without our library) on long
prompts: the chunked form they take now (query rows in chunks once the scores pass 2^25 floats,
onnxattn.ops._bodies.CHUNK_ELEMENTS) against the same function with every row at once (the plain unfused
decomposition), each in a fresh process: build the session, one untimed call, then one timed call; peak resident
memory (ru_maxrss, inputs and onnxruntime included) and the timed call's seconds.

Ops and sizes (fp32, B=1, 2 threads):
  - GroupQueryAttention, a Llama-3-8B layer (32q/8kv heads, D=128, RoPE), prompt S;
  - NativeSparseAttention, the paper's decoder form (16q/2kv heads, D=128, blocks of 64, top 16, window 512,
    shared selection, sink 1, local 2), S keys;
  - LightningIndexer, DeepSeek-V3.2's (64 heads of 128, top_k 2048), prompt S.
The whole form runs only up to WHOLE_MAX_S (its peak there, 5.7 / 9.9 / 8.7 GB, fits this 24 GB machine; one
doubling more needs ~4x).

    python benchmarks/bench_functions_cpu.py [--sizes 2048 4096 8192] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

OPS = ("GroupQueryAttention", "NativeSparseAttention", "LightningIndexer")
WHOLE_MAX_S = {"GroupQueryAttention": 2048, "NativeSparseAttention": 4096, "LightningIndexer": 4096}
NAMES = {"GroupQueryAttention": "qkv", "NativeSparseAttention": "qkv", "LightningIndexer": "qkw"}  # w: head weights


def model(op: str):
    from onnx import helper

    from onnxattn import ops

    vi = helper.make_tensor_value_info
    if op == "GroupQueryAttention":
        node = helper.make_node(op, ["q", "k", "v"], ["y"], domain=ops.DOMAIN, num_heads=32, kv_num_heads=8, rope=1)
        inputs = [vi("q", 1, [1, "S", 32 * 128]), vi("k", 1, [1, "S", 8 * 128]), vi("v", 1, [1, "S", 8 * 128])]
    elif op == "NativeSparseAttention":
        node = helper.make_node(op, ["q", "k", "v"], ["y"], domain=ops.DOMAIN, block_size=64, top_blocks=16,
                                window=512, causal=1, shared_selection=1, sink_blocks=1, local_blocks=2)
        inputs = [vi("q", 1, [1, 16, "S", 128]), vi("k", 1, [1, 2, "S", 128]), vi("v", 1, [1, 2, "S", 128])]
    else:
        node = helper.make_node(op, ["q", "k", "w"], ["y"], domain=ops.DOMAIN, num_heads=64, top_k=2048)
        inputs = [vi("q", 1, [1, "S", 64 * 128]), vi("k", 1, [1, 1, "S", 128]), vi("w", 1, [1, "S", 64])]
    output = vi("y", 7 if op == "LightningIndexer" else 1, None)  # int64 key_indices, or float
    graph = helper.make_graph([node], "g", inputs, [output])
    return ops.attach_functions(helper.make_model(graph, ir_version=ops.IR_VERSION, opset_imports=[
        helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)]))


def feeds(op: str, seq: int) -> dict:
    rng = np.random.default_rng(0)
    shapes = {"GroupQueryAttention": ((1, seq, 4096), (1, seq, 1024), (1, seq, 1024)),
              "NativeSparseAttention": ((1, 16, seq, 128), (1, 2, seq, 128), (1, 2, seq, 128)),
              "LightningIndexer": ((1, seq, 8192), (1, 1, seq, 128), (1, seq, 64))}[op]
    return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in zip(NAMES[op], shapes)}


def child(op: str, seq: int, whole: bool) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import resource
    import time

    import onnxruntime as ort

    from onnxattn.ops import _bodies

    if whole:
        _bodies.CHUNK_ELEMENTS = 1 << 62
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model(op).SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = feeds(op, seq)
    first = session.run(None, inputs)[0]
    start = time.perf_counter()
    out = session.run(None, inputs)[0]
    seconds = time.perf_counter() - start
    assert np.array_equal(first, out)
    print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "checksum": float(np.abs(out.astype(np.float64)).sum())}))


def measure(op: str, seq: int, whole: bool) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", op, str(seq), "1" if whole else "0"],
                            capture_output=True, text=True, timeout=900)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for op in OPS:
        for form, style in (("chunked", "-o"), ("whole", "--x")):
            points = [(r["S"], r) for r in rows if r["op"] == op and r["form"] == form and "seconds" in r]
            if points:
                xs = [s for s, _ in points]
                axes[0].plot(xs, [r["seconds"] for _, r in points], style, label=f"{op} {form}")
                axes[1].plot(xs, [r["peak_mb"] / 1024 for _, r in points], style, label=f"{op} {form}")
    for ax, label in zip(axes, ("seconds (one call)", "peak RSS, GB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("S")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Reference functions in onnxruntime without our library (fp32, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2] == "1")
        return 0
    import cpu_timing
    from bench_sdpa_cpu import machine

    load_before = cpu_timing.load_average()
    rows = []
    for op in OPS:
        for seq in args.sizes:
            for whole in (False, True):
                if whole and seq > WHOLE_MAX_S[op]:
                    continue
                row = {"op": op, "S": seq, "form": "whole" if whole else "chunked", **measure(op, seq, whole)}
                rows.append(row)
                print(row, flush=True)
    load = [load_before, cpu_timing.load_average()]
    print(f"\nReference functions without our library, fp32, 2 threads; load average {load[0]} -> {load[1]}")
    print(f"  {'op':<22} {'S':>6} {'form':>8} {'seconds':>8} {'peak GB':>8}")
    for r in rows:
        if "error" in r:
            print(f"  {r['op']:<22} {r['S']:>6} {r['form']:>8} failed: {r['error'][:80]}")
        else:
            print(f"  {r['op']:<22} {r['S']:>6} {r['form']:>8} {r['seconds']:8.2f} {r['peak_mb'] / 1024:8.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "functions_cpu.json"
    path.write_text(json.dumps({"machine": machine(), "load_average": load, "rows": rows}, indent=2))
    plot(rows, args.out / "functions_cpu.png")
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
