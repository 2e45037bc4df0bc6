"""Where the device time goes in the CUDA paths that miss their targets (docs/performance.md): per-kernel device
time from torch.profiler (CUPTI sees every kernel of the process, onnxruntime's included), and for the paths
timed from CUDA graphs also the span from the first kernel's start to the last one's end, so the gaps between
kernels show beside their busy time.

Cases (each guarded: one failing is recorded in its row and the run goes on):
  - sdpa_decode_b1_32k: ScaledDotProductAttention decode, B=1, 32q/8kv, D=128, Skv=32k, fp16, through the C entry
    replayed from a CUDA graph (the benchmark's timing): split-KV kernel + combine; issue 3 misses 70% of copy here;
  - sdpa_decode_b1_32k_lookup, gqa_decode_p32k_lookup: those with the decode's K/V copies through the slot lookup
    (ONNXATTN_SDPA_CUDA_DECODE_LOADS=lookup; direct loads are the default since the H200 run at 82087dc); *_lean:
    two stages a warp, three CTAs an SM (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2, opt-in: no gain there); *_fused: the
    splits merged by each row tile's last CTA, no combine kernel (ONNXATTN_SDPA_CUDA_COMBINE=fused, opt-in); *_columns:
    the combine kernel with a warp per 32 columns of a row (ONNXATTN_SDPA_CUDA_COMBINE=columns, opt-in);
    *_columns_lazy: that with the decode's O rescaled only where a row's max moved (ONNXATTN_SDPA_CUDA_DECODE_RESCALE=
    lazy, opt-in), the decode kernel's time beside the default's;
  - sdpa_decode_b1_4k: the same at 4k (25% of copy: the fixed cost of a call); sdpa_decode_b1_4k_columns with the
    combine kernel by columns;
  - gqa_prefill_s2048 / ort_gqa_prefill_s2048: GroupQueryAttention prefill, B=1, S=2048, 32q/8kv, RoPE, fp16,
    ours and onnxruntime's com.microsoft.GroupQueryAttention through the CUDA EP (op 192 vs core 272 TFLOP/s);
    gqa_prefill_s2048_rows: ours with the queries and new keys turned by the per-row kernels (ONNXATTN_GQA_CUDA_ROTATION=
    rows; the kernels by token are the default: the per-row query kernel took 39.9 us of 181 on the H200 at 21d5171);
    gqa_prefill_s2048_joint: the two kernels by token as one (ONNXATTN_GQA_CUDA_ROTATION=joint, opt-in; they took 20.2
    and 19.1 us of 164 at 2c9a48e);
  - gqa_decode_p32k / ort_gqa_decode_p32k: shared-buffer decode at P=32k (61% vs onnxruntime's 79% of copy);
    gqa_decode_p32k_fused_joint: with the fused merge and the queries rotated ahead by the joint new-token kernel
    (bench_gqa_cuda's fused_joint column);
  - nsa_16k, routed_16k: NativeSparseAttention (paper form) and SparseRoutedAttention at S=16k, bf16, through
    the CUDA EP (3.6x and 13x our dense time); nsa_dot_16k: NSA with dot-product selection (2.7x);
  - nsa_mma_16k, routed_mma_16k: the same with ONNXATTN_SPARSE_CUDA=mma (the tensor-core attention by block);
    (pinned to the old kernels: ONNXATTN_SPARSE_CUDA_LOADS=sync, _ARGMAX=shuffle); nsa_mma_async_16k,
    routed_mma_async_16k: the latency work, the default since the H200 run at 82087dc (LOADS=async: the tensor-core
    kernels with their loads overlapped; ARGMAX=redux: the selection's argmax by warp reductions; NSA 9.49 -> 4.58 ms
    at 16k, routed 13.59 -> 7.93); nsa_mma_tiles_16k, routed_mma_tiles_16k: the async cases by query tiles
    (ONNXATTN_SPARSE_CUDA_BLOCKS=queries, opt-in: no inverted lists, no per-slot merges of the output rows);
    routed_mma_split_16k: routed_mma_async with the routing's lists picked by rescanning every key per pick
    (ONNXATTN_SPARSE_CUDA_ROUTE=split; the default, by group maxima, took the routing from 51.5 to 19.6 ms of the
    routed op at 64k on the H200 at 2c9a48e);
  - nsa_mma_64k, nsa_mma_tiles_64k, routed_mma_64k, routed_mma_tiles_64k, nsa_mma_async_64k, routed_mma_async_64k,
    routed_mma_split_64k: the same at issue 7's S=64k (last: the budget skips them first).

Usage: python benchmarks/profile_cuda.py [--out FILE_OR_DIR] [--cases a,b] [--budget-s 40]
Prints one table per case and writes JSON (device, commit, rows) after every case. Exit 2 without CUDA.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the budget counts imports too (gpu_check.sh caps the whole process)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "gpu"), str(ROOT / "benchmarks")]

CASES = ("sdpa_decode_b1_32k", "sdpa_decode_b1_32k_fused", "sdpa_decode_b1_32k_columns",
         "sdpa_decode_b1_32k_columns_lazy", "sdpa_decode_b1_32k_lookup", "sdpa_decode_b1_32k_lean", "sdpa_decode_b1_4k",
         "sdpa_decode_b1_4k_columns", "gqa_prefill_s2048", "gqa_prefill_s2048_rows", "gqa_prefill_s2048_joint",
         "ort_gqa_prefill_s2048", "gqa_decode_p32k", "gqa_decode_p32k_fused", "gqa_decode_p32k_columns",
         "gqa_decode_p32k_columns_lazy", "gqa_decode_p32k_fused_joint", "gqa_decode_p32k_lookup",
         "gqa_decode_p32k_lean", "ort_gqa_decode_p32k", "nsa_16k", "routed_16k", "nsa_dot_16k", "nsa_mma_16k",
         "routed_mma_16k", "nsa_mma_async_16k", "routed_mma_async_16k", "nsa_mma_tiles_16k", "routed_mma_tiles_16k",
         "nsa_mma_64k", "nsa_mma_tiles_64k", "routed_mma_64k", "routed_mma_tiles_64k", "nsa_mma_async_64k",
         "routed_mma_async_64k", "routed_mma_split_16k", "routed_mma_split_64k")
# Library switches a case runs under (read by the kernels on every call); the decode ones as bench_sdpa_cuda's
# OPT_IN_DECODE columns.
LOOKUP = {"ONNXATTN_SDPA_CUDA_DECODE_LOADS": "lookup"}
LEAN = {"ONNXATTN_SDPA_CUDA_DECODE_STAGES": "2"}
FUSED = {"ONNXATTN_SDPA_CUDA_COMBINE": "fused"}
COLUMNS = {"ONNXATTN_SDPA_CUDA_COMBINE": "columns"}
COLUMNS_LAZY = {**COLUMNS, "ONNXATTN_SDPA_CUDA_DECODE_RESCALE": "lazy"}
CASE_ENV = {"gqa_prefill_s2048_rows": {"ONNXATTN_GQA_CUDA_ROTATION": "rows"},
            "gqa_prefill_s2048_joint": {"ONNXATTN_GQA_CUDA_ROTATION": "joint"},
            **{f"{base}_{name}": switch for base in ("sdpa_decode_b1_32k", "gqa_decode_p32k")
               for name, switch in (("lookup", LOOKUP), ("lean", LEAN), ("fused", FUSED), ("columns", COLUMNS),
                                    ("columns_lazy", COLUMNS_LAZY))},
            "sdpa_decode_b1_4k_columns": COLUMNS,
            "gqa_decode_p32k_fused_joint": {**FUSED, "ONNXATTN_GQA_CUDA_QUERY": "rotated",
                                            "ONNXATTN_GQA_CUDA_ROTATION": "joint"},
            **{f"routed_mma_split_{n}": {"ONNXATTN_SPARSE_CUDA_ROUTE": "split"} for n in ("16k", "64k")}}  # fmt: skip
# Sparse cases that run a benchmark column under their CASE_ENV switches (the column's own switches pinned as well).
SPARSE_BASE = {"routed_mma_split": "routed_mma_async"}
GRAPH_CALLS = 20  # calls per captured graph (as bench_sdpa_cuda.time_graph)


def summarize(events: Iterable, per: int) -> dict:
    """Per-kernel device time of `per` calls' worth of profiler events: kernels (and copies, memsets) by name,
    sorted by time, with calls and microseconds per call; busy = their summed time per call, span = first start
    to last end per call (the gaps between kernels are span - busy)."""
    by_name: dict[str, list[float]] = {}
    first, last = None, None
    for event in events:
        if not str(getattr(event, "device_type", "")).endswith("CUDA") or getattr(event, "is_user_annotation", False):
            continue
        start, end = event.time_range.start, event.time_range.end
        by_name.setdefault(event.name, []).append(end - start)
        first = start if first is None else min(first, start)
        last = end if last is None else max(last, end)
    kernels = [{"name": name, "calls": len(ts) / per, "us": sum(ts) / per} for name, ts in by_name.items()]
    kernels.sort(key=lambda k: -k["us"])
    busy = sum(k["us"] for k in kernels)
    span = (last - first) / per if first is not None else 0.0
    return {"kernels": kernels, "busy_us": busy, "span_us": span}


def profile(fn: Callable[[], None], *, graph: bool, runs: int = 5) -> dict:
    """summarize() of fn: replayed `runs` times from a CUDA graph of GRAPH_CALLS calls, or called `runs` times."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    target, per = fn, runs
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            for _ in range(GRAPH_CALLS):
                fn()
        target, per = captured.replay, runs * GRAPH_CALLS
    target()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            target()
        torch.cuda.synchronize()
    return summarize(prof.events(), per)


# ---- the cases: each returns (fn, graph?, notes)
def sdpa_decode(kv_len: int):
    import torch

    import sdpa_cuda_lib

    q = torch.randn(1, 32, 1, 128, dtype=torch.float16, device="cuda")
    k, v = (torch.randn(1, 8, kv_len, 128, dtype=torch.float16, device="cuda") for _ in range(2))
    y = torch.empty_like(q)
    plan = sdpa_cuda_lib.run(q, k, v, out=y)[2]
    notes = {"plan": plan["reason"], "bytes": 2 * k.numel() * k.element_size()}
    return (lambda: sdpa_cuda_lib.run(q, k, v, out=y)), True, notes


def gqa(kind: str, ours: bool, ort):
    import torch

    import bench_gqa_cuda as g

    gen = torch.Generator(device="cuda").manual_seed(0)
    randn = lambda *s: torch.randn(*s, generator=gen, device="cuda").half()  # noqa: E731
    hq, hkv, d = g.HQ, g.HKV, g.D
    if kind == "prefill":
        seq = 2048
        q, k, v = randn(1, seq, hq * d), randn(1, seq, hkv * d), randn(1, seq, hkv * d)
        if ours:
            cache = [torch.empty(1, hkv, seq, d, dtype=torch.half, device="cuda") for _ in range(2)]
            out = {"output": torch.empty_like(q), "present_key": cache[0], "present_value": cache[1]}
            return g.Bound(ort, g.onnxattn_model(False), {"query": q, "key": k, "value": v}, out,
                           g.ort_cuda_library()), False, {"flops": 4 * hq * seq * seq * d / 2}  # fmt: skip
        cos, sin = g.rope_caches(seq)
        buffers = [torch.zeros(1, hkv, seq, d, dtype=torch.half, device="cuda") for _ in range(2)]
        inputs = {"query": q, "key": k, "value": v, "past_key": buffers[0], "past_value": buffers[1],
                  "seqlens_k": torch.tensor([seq - 1], dtype=torch.int32, device="cuda"),
                  "total_sequence_length": torch.tensor(seq, dtype=torch.int32), "cos_cache": cos, "sin_cache": sin}
        out = {"output": torch.empty_like(q), "present_key": buffers[0], "present_value": buffers[1]}
        return g.Bound(ort, g.ort_gqa_model(), inputs, out, None), False, {"flops": 4 * hq * seq * seq * d / 2}
    past, capacity = 32768, 32769  # as bench_gqa_cuda: the buffer holds the new token (a full one is refused)
    q, k, v = randn(1, 1, hq * d), randn(1, 1, hkv * d), randn(1, 1, hkv * d)
    key_buffer, value_buffer = randn(1, hkv, capacity, d), randn(1, hkv, capacity, d)
    out = {"output": torch.empty_like(q), "present_key": key_buffer, "present_value": value_buffer}
    notes = {"bytes": 2 * hkv * (past + 1) * d * 2}
    if ours:
        inputs = {"query": q, "key": k, "value": v, "past_key": key_buffer, "past_value": value_buffer,
                  "past_lengths": torch.tensor([past], dtype=torch.int64, device="cuda")}  # fmt: skip
        return g.Bound(ort, g.onnxattn_model(True), inputs, out, g.ort_cuda_library()), False, notes
    cos, sin = g.rope_caches(capacity)
    inputs = {"query": q, "key": k, "value": v, "past_key": key_buffer, "past_value": value_buffer,
              "seqlens_k": torch.tensor([past], dtype=torch.int32, device="cuda"),
              "total_sequence_length": torch.tensor(past + 1, dtype=torch.int32), "cos_cache": cos, "sin_cache": sin}
    return g.Bound(ort, g.ort_gqa_model(), inputs, out, None), False, notes


def sparse(name: str, seq: int, ort, switches: dict | None = None):
    """Benchmark column `name` at `seq` through onnxruntime, its own switches with `switches` over them (the op sets
    its switches around each run, so a case's must join them there)."""
    import bench_sparse_cuda as sp

    op = sp.OrtOp(ort, sp.ORT_CASES[name], {**(sp.ORT_ENV.get(name) or {}), **(switches or {})})
    op.bind(sp.problem(seq))
    return op, False, {"op": sp.ORT_CASES[name][0]}


def build(case: str, ort):
    if case.startswith("sdpa_decode"):
        return sdpa_decode(32768 if "_32k" in case else 4096)
    if "gqa" in case:
        if ort is None:
            raise RuntimeError("onnxruntime-gpu unavailable")
        return gqa("prefill" if "prefill" in case else "decode", not case.startswith("ort_"), ort)
    if ort is None:
        raise RuntimeError("onnxruntime-gpu unavailable")
    name, length = case.rsplit("_", 1)  # the benchmark's implementation name, the sequence length
    return sparse(SPARSE_BASE.get(name, name), {"16k": 16384, "64k": 65536}[length], ort, CASE_ENV.get(case))


def format_case(case: str, row: dict, top: int = 8) -> str:
    if "error" in row:
        return f"{case}: {row['error']}"
    head = f"{case}: busy {row['busy_us']:.1f} us per call"
    if row["graph"]:
        head += f", span {row['span_us']:.1f} us (gaps {row['span_us'] - row['busy_us']:.1f} us)"
    lines = [head]
    for k in row["kernels"][:top]:
        share = k["us"] / row["busy_us"] if row["busy_us"] else 0.0
        lines.append(f"  {k['us']:9.1f} us {share:6.1%}  x{k['calls']:<5.3g} {k['name'][:100]}")
    if len(row["kernels"]) > top:
        lines.append(f"  ... {len(row['kernels']) - top} more kernels")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="JSON file, or a folder for profile_cuda.json")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--budget-s", type=float, default=40.0, help="no case starts after this many seconds")
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    import torch

    if not torch.cuda.is_available():
        print("profile_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    import ort_cuda
    from bench_sdpa_cuda import env_vars, environment

    ort, missing = ort_cuda.onnxruntime_cuda()
    env = environment()
    env["onnxruntime"] = getattr(ort, "__version__", None) if ort else f"unavailable: {missing}"
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "profile_cuda.json"
    rows: dict[str, dict] = {}
    print(f"CUDA profile on {env['device']} (commit {env.get('commit', '')[:12]})")
    for case in cases:
        if time.perf_counter() - START > args.budget_s:
            rows[case] = {"error": "skipped: time budget spent (--budget-s)"}
        else:
            try:
                with env_vars(CASE_ENV.get(case, {})):
                    fn, graph, notes = build(case, ort)
                    rows[case] = {**profile(fn, graph=graph), "graph": graph, **notes}
            except Exception as e:  # noqa: BLE001 - one case failing is recorded, not fatal
                rows[case] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(format_case(case, rows[case]))
        if out is not None:
            out.write_text(json.dumps({"environment": env, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
