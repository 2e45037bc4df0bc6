"""CPU benchmark of the sparse attention kernels (issue 7) against our dense causal attention, side by side.

Shape: B=1, Hq=16, Hkv=2, D=128, fp32, blocks/segments of 64, 16 chosen per query, window 512:
  - nsa:    NativeSparseAttention in the paper's decoder form: causal, GQA-shared selection driven by the
            compression branch (compressed tokens = block means, given as inputs), 1 sink + 1 local block
            (+ the own one) among the 16, sliding window 512, gates [B,Hq,S,3];
  - routed: SparseRoutedAttention in the MoBA form: causal, dot-product routing after RoPE, top 16 incl. the
            own segment;
  - dense:  ScaledDotProductAttention, causal, at the same S (our fastest dense kernel);
  - *-function: the same nodes run as their reference functions (onnxruntime without the library, inlined),
            at a smaller S where its S x S intermediates fit in memory.
Inputs are random normal: queries of neighbouring positions choose unrelated blocks, the hardest case for a
kernel that shares K/V loads between rows (real models' selections overlap more).

Reported: ms (median over --repeat rounds of bursts, cpu_timing.py as every CPU benchmark: in each round every
implementation a pause of --settle seconds, one untimed call, then timed calls for at least --burst seconds,
so load changes on the shared machine hit them alike and no call runs beside another session's spinning
pool threads), the dense/sparse ratio, and the multiply-adds each performs (attention FLOPs over the keys it
attends to: 4 * D * keys per row; selection and compression extra).

    python benchmarks/bench_sparse_cpu.py [--seq 16384] [--function-seq 2048] [--threads 2] [--repeat 3]
                                          [--settle 0.1] [--burst 0.02]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from onnxattn import ops

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

HQ, HKV, D, BLOCK, TOP, WINDOW = 16, 2, 128, 64, 16, 512
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def model(op: str, inputs: list[str], attrs: dict, selection: str | None = None):
    """One node; `selection`: also its list output of that name (selected_blocks, selected_segments)."""
    shapes = {"Q": [1, HQ, "S", D], "K": [1, HKV, "S", D], "V": [1, HKV, "S", D], "gates": [1, HQ, "S", 3],
              "compressed_key": [1, HKV, "N", D], "compressed_value": [1, HKV, "N", D], "position_ids": [1, "S"]}
    outputs = [_vi("Y", F32, [1, HQ, "S", D])] + ([_vi(selection, I64, None)] if selection else [])
    node = helper.make_node(op, inputs, [o.name for o in outputs], domain=ops.DOMAIN, **attrs)
    graph = helper.make_graph([node], op, [_vi(n, I64 if n == "position_ids" else F32, shapes[n]) for n in inputs],
                              outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                          ir_version=ops.IR_VERSION)
    return ops.attach_functions(m)


NSA = dict(block_size=BLOCK, top_blocks=TOP, top_tokens=0, window=WINDOW, causal=1, shared_selection=1, sink_blocks=1,
           local_blocks=1, scale=0.0)
ROUTED = dict(segment_size=BLOCK, top_k=TOP, causal=1, cosine=0, rope=1, rope_before_routing=1, rope_base=10000.0,
              rotary_dim=0, rope_interleaved=0, rope_attention_scaling=1.0, scale=0.0)
CASES = {
    "nsa": ("NativeSparseAttention", ["Q", "K", "V", "gates", "compressed_key", "compressed_value"], NSA),
    "routed": ("SparseRoutedAttention", ["Q", "K", "V", "position_ids"], ROUTED),
    "dense": ("ScaledDotProductAttention", ["Q", "K", "V"], dict(causal=1, window=0, band=0, scale=0.0, softcap=0.0)),
}


def feeds(s: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, HQ, s, D), np.float32)
    k = rng.standard_normal((1, HKV, s, D), np.float32)
    v = rng.standard_normal((1, HKV, s, D), np.float32)
    n = s // BLOCK
    return {"Q": q, "K": k, "V": v, "gates": rng.uniform(0.2, 0.8, (1, HQ, s, 3)).astype(np.float32),
            "compressed_key": k[:, :, : n * BLOCK].reshape(1, HKV, n, BLOCK, D).mean(3),
            "compressed_value": v[:, :, : n * BLOCK].reshape(1, HKV, n, BLOCK, D).mean(3),
            "position_ids": np.arange(s, dtype=np.int64)[None]}


def attended_keys(name: str, s: int) -> float:
    """Keys each query row attends to, summed over rows (causal)."""
    p = np.arange(s)
    if name == "dense":
        return float((p + 1).sum())
    chosen = np.minimum(p // BLOCK + 1, TOP) * BLOCK  # whole blocks (the own one partly)
    keys = np.minimum(chosen, p + 1)
    if name == "nsa":
        keys = keys + np.minimum(p + 1, WINDOW) + np.minimum((p + 1) // BLOCK, s // BLOCK)  # + window + compressed
    return float(keys.sum())


def options(threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    return o


def bench(names: list[str], s: int, threads: int, repeat: int, library: bool, settle: float = cpu_timing.SETTLE,
          burst: float = cpu_timing.BURST) -> list[dict]:
    """Median time of each implementation over `repeat` rounds of bursts (cpu_timing: every implementation one
    burst per round), so a change in the shared machine's load hits all of them alike."""
    from onnxattn.cuda_ep import make_session

    data = feeds(s)
    runs = {}
    for name in names:
        op, inputs, attrs = CASES[name]
        session = make_session(model(op, inputs, attrs), providers=["CPUExecutionProvider"], use_library=library,
                               session_options=options(threads))
        f = {n: a for n, a in data.items() if n in inputs}
        runs[name] = lambda session=session, f=f: session.run(None, f)  # each burst's untimed call warms up
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    rows = []
    for name in names:
        seconds = median[name]
        flops = 4 * D * HQ * attended_keys(name, s)
        rows.append({"impl": name + ("" if library else "-function"), "S": s, "ms": seconds * 1e3,
                     "attention_gflop": flops / 1e9, "gflops": flops / seconds / 1e9, "threads": threads})
    return rows


def check_agreement(s: int, threads: int) -> dict:
    """Kernel vs function at the function's size: the benchmark times the right thing."""
    from onnxattn.cuda_ep import make_session

    out = {}
    for name in ("nsa", "routed"):
        op, inputs, attrs = CASES[name]
        m = model(op, inputs, attrs)
        f = {n: a for n, a in feeds(s, seed=1).items() if n in inputs}
        got = make_session(m, providers=["CPUExecutionProvider"], session_options=options(threads)).run(None, f)[0]
        want = make_session(m, providers=["CPUExecutionProvider"], use_library=False,
                            session_options=options(threads)).run(None, f)[0]
        out[name] = float(np.max(np.abs(got - want)))
    return out


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = [r["impl"].replace("-function", "\nfunction") + f"\nS={r['S']}" for r in rows]
    ax.bar(labels, [r["ms"] for r in rows], color=["tab:blue" if "function" not in r["impl"] else "tab:gray"
                                                   for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"Sparse attention, CPU fp32, Hq={HQ}/Hkv={HKV}, D={D}, blocks of {BLOCK}, top {TOP}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--function-seq", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds of bursts")
    cpu_timing.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = cpu_timing.load_average()  # other work on the machine: recorded with the rows
    agreement = check_agreement(min(args.function_seq, 1024), args.threads)
    timing = (args.threads, args.repeat)
    rows = bench(["nsa", "routed", "dense"], args.seq, *timing, True, args.settle, args.burst)
    rows += bench(["nsa", "routed"], args.function_seq, *timing, True, args.settle, args.burst)
    rows += bench(["nsa", "routed"], args.function_seq, *timing, False, args.settle, args.burst)
    load = [load_before, cpu_timing.load_average()]

    print(f"\nSparse attention, fp32, B=1, Hq={HQ}, Hkv={HKV}, D={D}, blocks of {BLOCK}, top {TOP}, window {WINDOW}, "
          f"{args.threads} threads (median over {args.repeat} rounds of bursts); load average {load[0]} -> {load[1]}")
    print(f"{'impl':<18}{'S':>7}{'ms':>11}{'attn GFLOP':>12}{'GFLOP/s':>9}  vs dense / vs function")
    dense = next(r for r in rows if r["impl"] == "dense")
    by = {(r["impl"], r["S"]): r for r in rows}
    for r in rows:
        note = ""
        if r["S"] == args.seq and r["impl"] != "dense":
            note = f"{dense['ms'] / r['ms']:.1f}x faster than dense"
        elif r["impl"] in ("nsa", "routed"):
            note = f"{by[(r['impl'] + '-function', r['S'])]['ms'] / r['ms']:.1f}x faster than its function"
        print(f"{r['impl']:<18}{r['S']:>7}{r['ms']:>11.1f}{r['attention_gflop']:>12.1f}{r['gflops']:>9.1f}  {note}")
    print(f"kernel vs function max |difference| at S={min(args.function_seq, 1024)}: "
          + ", ".join(f"{k} {v:.1e}" for k, v in agreement.items()))

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_sdpa_cpu import machine

    args.out.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["load_average"] = list(__import__("os").getloadavg())
    result = {"machine": info, "load_average": load,
              "timing": {"repeat": args.repeat, "settle": args.settle, "burst": args.burst},
              "shape": dict(B=1, Hq=HQ, Hkv=HKV, D=D, block=BLOCK, top=TOP, window=WINDOW),
              "rows": rows, "ratio_dense_over": {n: dense["ms"] / by[(n, args.seq)]["ms"] for n in ("nsa", "routed")},
              "kernel_vs_function_max_abs": agreement}
    path = args.out / "sparse_cpu.json"
    path.write_text(json.dumps(result, indent=2))
    plot(rows, args.out / "sparse_cpu.png")
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
