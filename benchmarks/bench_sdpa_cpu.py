"""CPU benchmark of onnxattn::ScaledDotProductAttention against the alternatives, side by side in one run.

Prefill, fp32, causal, B=1, Hq=8, Hkv=2, D=64 (a GQA layer of a small Llama), S in {512, 2048, 8192}:
  - onnxattn   our CPU kernel (onnxruntime + the onnxattn library)
  - torch      torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)
  - ort_gqa    onnxruntime's com.microsoft.GroupQueryAttention (CPU EP)
  - onnx_attn  ONNX Attention (opset 23, is_causal=1) in onnxruntime
  - function   our reference function, inlined by onnxruntime (no library)
GFLOP/s use the causal FLOP count 4*B*Hq*S^2*D/2. Each size runs --repeat rounds; in each round every
implementation runs one burst (so drifts in machine load hit them alike; ratios are what to read): a pause of
--settle seconds, one untimed call, then timed calls for at least --burst seconds (at least one); the median
over all timed calls (cpu_timing.py, shared by all the CPU benchmarks). The pause matters on a small machine:
after a run, each onnxruntime session's pool threads spin (~33 ms of CPU on the 2-core machine) and torch's
OpenMP threads too (~10 ms); a call started right after another implementation's shares the cores with them
(measured at S=512 back to back: ours 0.8 -> 1.9 ms, ONNX Attention 1.4 -> 4-7 ms). The untimed call wakes the
implementation's own threads, which slept through the pause. Then the extra peak memory of a first S=16384 run
in a fresh process (resident-set high-water mark).

    python benchmarks/bench_sdpa_cpu.py [--sizes 512 2048 8192] [--repeat 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cuda_ep import build_info, make_session

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

B, HQ, HKV, D = 1, 8, 2, 64
IMPLS = ("onnxattn", "torch", "ort_gqa", "onnx_attn", "function")


def _model(nodes, inputs, outputs, opset=21, extra_opsets=()):
    model = helper.make_model(
        helper.make_graph(nodes, "bench", inputs, outputs),
        opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
        ir_version=ops.IR_VERSION,
    )
    return model


def _bnsh(name, heads):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [B, heads, "S", D])


def sdpa_model() -> onnx.ModelProto:
    node = helper.make_node("ScaledDotProductAttention", ["Q", "K", "V"], ["Y"], domain=ops.DOMAIN, causal=1)
    model = _model([node], [_bnsh("Q", HQ), _bnsh("K", HKV), _bnsh("V", HKV)], [_bnsh("Y", HQ)],
                   extra_opsets=[helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)])
    return ops.attach_functions(model)


def onnx_attention_model() -> onnx.ModelProto:
    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], is_causal=1)
    return _model([node], [_bnsh("Q", HQ), _bnsh("K", HKV), _bnsh("V", HKV)], [_bnsh("Y", HQ)], opset=23)


def ort_gqa_model() -> onnx.ModelProto:
    # BSNH packed inputs, no past: a prompt pass (GroupQueryAttention is always causal).
    f = TensorProto.FLOAT
    node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "", "", "seqlens_k", "total_len"],
        ["y", "present_k", "present_v"],
        domain="com.microsoft", num_heads=HQ, kv_num_heads=HKV,
    )
    inputs = [
        helper.make_tensor_value_info("q", f, [B, "S", HQ * D]),
        helper.make_tensor_value_info("k", f, [B, "S", HKV * D]),
        helper.make_tensor_value_info("v", f, [B, "S", HKV * D]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [B]),
        helper.make_tensor_value_info("total_len", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("y", f, [B, "S", HQ * D])]
    outputs += [helper.make_tensor_value_info(n, f, None) for n in ("present_k", "present_v")]
    return _model([node], inputs, outputs, extra_opsets=[helper.make_opsetid("com.microsoft", 1)])


class Runner:
    """Builds each implementation once; `feeds(S)` makes inputs; `run(impl)` times one call."""

    def __init__(self, only: str | None = None):
        cpu = ["CPUExecutionProvider"]
        makers = {
            "onnxattn": lambda: make_session(sdpa_model(), providers=cpu),
            "function": lambda: make_session(sdpa_model(), providers=cpu, use_library=False),
            "onnx_attn": lambda: make_session(onnx_attention_model(), providers=cpu, use_library=False),
            "ort_gqa": lambda: make_session(ort_gqa_model(), providers=cpu, use_library=False),
        }
        self.sessions = {name: make() for name, make in makers.items() if only in (None, name)}

    def prepare(self, s: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((B, HQ, s, D), np.float32)
        k = rng.standard_normal((B, HKV, s, D), np.float32)
        v = rng.standard_normal((B, HKV, s, D), np.float32)
        self.bnsh = {"Q": q, "K": k, "V": v}
        self.bsnh = {
            "q": np.ascontiguousarray(q.transpose(0, 2, 1, 3).reshape(B, s, HQ * D)),
            "k": np.ascontiguousarray(k.transpose(0, 2, 1, 3).reshape(B, s, HKV * D)),
            "v": np.ascontiguousarray(v.transpose(0, 2, 1, 3).reshape(B, s, HKV * D)),
            "seqlens_k": np.full((B,), s - 1, np.int32),
            "total_len": np.array(s, np.int32),
        }
        self.torch_inputs = tuple(torch.from_numpy(x) for x in (q, k, v))

    def call(self, impl: str):
        if impl == "torch":
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(*self.torch_inputs, is_causal=True,
                                                                        enable_gqa=True).numpy()
        if impl == "ort_gqa":
            y = self.sessions[impl].run(["y"], self.bsnh)[0]
            return y.reshape(B, -1, HQ, D).transpose(0, 2, 1, 3)
        return self.sessions[impl].run(None, self.bnsh)[0]


def bench_speed(runner: Runner, sizes, repeat: int, function_max: int, settle: float = cpu_timing.SETTLE,
                burst: float = cpu_timing.BURST) -> list[dict]:
    rows = []
    for s in sizes:
        runner.prepare(s)
        impls = [i for i in IMPLS if i != "function" or s <= function_max]
        reference = runner.call("torch")
        for impl in impls:  # warm-up and agreement check
            err = float(np.max(np.abs(runner.call(impl) - reference)))
            if err > 1e-3:
                raise SystemExit(f"{impl} disagrees with torch at S={s}: max error {err:.2e}")
        # interleaved bursts, so drifts in machine load hit every impl alike
        median = cpu_timing.median_rounds({i: (lambda i=i: runner.call(i)) for i in impls}, repeat, settle, burst)
        flops = 4 * B * HQ * s * s * D / 2
        for impl in impls:
            seconds = median[impl]
            rows.append({"S": s, "impl": impl, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9})
    return rows


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def measure_memory_child(impl: str, s: int) -> None:
    """In a fresh process: extra peak resident memory of the first run of `impl` (Linux): VmHWM after the
    run minus VmRSS before it, with inputs made and the session created. Includes the output tensor."""
    runner = Runner(only=impl)
    runner.prepare(s)
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _rss_kib("VmRSS")
    runner.call(impl)
    print(json.dumps({"S": s, "impl": impl, "extra_peak_mib": (_rss_kib("VmHWM") - before) / 1024}))


def bench_memory(s: int, impls) -> list[dict]:
    rows = []
    for impl in impls:
        out = subprocess.run([sys.executable, __file__, "--memory-child", impl, "--memory-size", str(s)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def machine() -> dict:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    import onnxruntime as ort

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "commit": commit,
        "onnxruntime": ort.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "library": build_info(),
    }


def print_table(rows: list[dict], memory: list[dict]) -> None:
    sizes = sorted({r["S"] for r in rows})
    by = {(r["S"], r["impl"]): r for r in rows}
    print(f"\nfp32 causal prefill, B={B}, Hq={HQ}, Hkv={HKV}, D={D}: GFLOP/s (ms), and onnxattn's speed-up")
    print(f"{'impl':<10}" + "".join(f"{f'S={s}':>24}" for s in sizes))
    for impl in IMPLS:
        cells = []
        for s in sizes:
            r = by.get((s, impl))
            cells.append(f"{r['gflops']:8.1f} ({r['ms']:8.2f}ms)" if r else f"{'-':>22}")
        print(f"{impl:<10}" + "".join(f"{c:>24}" for c in cells))
    for impl in IMPLS[1:]:
        ratios = [f"{by[(s, impl)]['ms'] / by[(s, 'onnxattn')]['ms']:.2f}x" if (s, impl) in by else "-" for s in sizes]
        print(f"onnxattn vs {impl:<10}" + "".join(f"{x:>24}" for x in ratios)[10:])
    if memory:
        print(f"\nextra peak resident memory of a first run at S={memory[0]['S']} (fresh process; includes the "
              f"{B * HQ * memory[0]['S'] * D * 4 / 2**20:.0f} MiB output):")
        for m in memory:
            print(f"  {m['impl']:<10} {m['extra_peak_mib']:8.1f} MiB")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl in IMPLS:
        pts = sorted((r["S"], r["gflops"]) for r in rows if r["impl"] == impl)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length S")
    ax.set_ylabel("GFLOP/s (causal FLOPs)")
    ax.set_title(f"CPU causal SDPA, fp32, B={B} Hq={HQ} Hkv={HKV} D={D}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeat", type=int, default=5)
    cpu_timing.add_arguments(parser)
    parser.add_argument("--function-max", type=int, default=4096,
                        help="largest S for the inlined function (it materializes S x S scores)")
    parser.add_argument("--memory-size", type=int, default=16384, help="S of the peak-memory run (0: skip)")
    parser.add_argument("--memory-impls", nargs="+", default=["onnxattn", "torch"],
                        help="implementations in the peak-memory run (ort_gqa/onnx_attn/function hold S x S)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return measure_memory_child(args.memory_child, args.memory_size)

    runner = Runner()
    load_before = cpu_timing.load_average()  # other work on the machine: recorded with the rows
    rows = bench_speed(runner, args.sizes, args.repeat, args.function_max, args.settle, args.burst)
    memory = bench_memory(args.memory_size, args.memory_impls) if args.memory_size else []
    load = [load_before, cpu_timing.load_average()]
    print_table(rows, memory)
    print(f"load average {load[0]} -> {load[1]}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "sdpa_cpu"
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine(), "load_average": load, "speed": rows,
                                                     "memory": memory}, indent=2))
    plot(rows, stem.with_suffix(".png"))
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")


if __name__ == "__main__":
    main()
