"""CPU benchmark of a mixture-of-experts decoder's generation: the experts gathered per token in decode steps
(models.moe's default: an If node picks them when T * k < E) vs every expert on every token (the export before),
in onnxruntime with our kernels, same weights, same run.

Model: our Llama with experts (default 4 layers, hidden 512, 8/2 heads, 32 experts of width 512, 4 per token — the
GPT-OSS ratio E / k = 8 — first layer dense, vocabulary 32000), prompt 256, 64 new tokens, greedy, fp32, batch 1 and
4. Time to first token and decode tokens/s, best of --repeat runs after a warm-up; the tokens of both exports
must be equal. The ratio gathered / all is the number to read (the machine is shared and noisy).

    python benchmarks/bench_moe_cpu.py [--threads 2] [--repeat 2] [--batch 1 4] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from onnxattn import models
from onnxattn.export import export_model
from onnxattn.generate import generate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models_cpu import best, session  # noqa: E402
from bench_sdpa_cpu import machine  # noqa: E402

CONFIG = dict(num_layers=4, hidden=512, num_heads=8, num_kv_heads=2, intermediate=1536, vocab_size=32000,
              num_experts=32, experts_per_token=4, moe_intermediate=512, dense_layers=(0,))


def export(dispatch: str, config: dict, path: Path):
    model = models.build("llama", **config).eval()
    for layer in model.layers:
        if hasattr(layer.mlp, "dispatch"):
            layer.mlp.dispatch = dispatch
    return export_model(model, path, logits="last", progress=False, numerics=False)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.38
    for i, dispatch in enumerate(("all", "auto")):
        sel = [next(r for r in rows if r["batch"] == b and r["dispatch"] == dispatch) for b in batches]
        xs = np.arange(len(batches)) + (i - 0.5) * width
        label = "every expert on every token" if dispatch == "all" else "gathered per token in decode (default)"
        left.bar(xs, [r["ttft_ms"] for r in sel], width, label=label)
        right.bar(xs, [r["tokens_per_s"] for r in sel], width, label=label)
    for ax, name in ((left, "time to first token (ms, lower is better)"), (right, "decode tokens/s (higher is better)")):
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel(name)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-moe-"))
    exports = {d: export(d, CONFIG, work / f"moe_{d}.onnx") for d in ("all", "auto")}
    rows = []
    for batch in args.batch:
        ids = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (batch, args.prompt))
        tokens = None
        for dispatch, result in exports.items():
            print(f"running batch {batch}, dispatch {dispatch} ...", file=sys.stderr, flush=True)
            sess = session(result.path, args.threads, True)
            first, decode = best(lambda: generate(sess, ids, args.new_tokens, progress=False), args.repeat)
            tokens = first.tokens if tokens is None else tokens
            rows.append({"batch": batch, "dispatch": dispatch, "ttft_ms": first.time_to_first_token * 1e3,
                         "tokens_per_s": decode.tokens_per_second,
                         "same_tokens": bool(np.array_equal(first.tokens, tokens))})
    load = os.getloadavg()
    c = CONFIG
    title = (f"MoE decoder: {c['num_layers']} layers (first dense), hidden {c['hidden']}, {c['num_experts']} experts "
             f"x {c['moe_intermediate']}, {c['experts_per_token']} per token; prompt {args.prompt}, "
             f"{args.new_tokens} new tokens, fp32, {args.threads} threads, ORT + onnxattn kernels")
    print(f"\n{title} (load average {load[0]:.1f})")
    print(f"  {'batch':>5} {'experts':<34} {'first token':>12} {'decode':>14} {'decode ratio':>13}  same tokens")
    for r in rows:
        base = next(x for x in rows if x["batch"] == r["batch"] and x["dispatch"] == "all")
        r["decode_ratio_vs_all"] = r["tokens_per_s"] / base["tokens_per_s"]
        name = "every expert on every token" if r["dispatch"] == "all" else "gathered in decode (default)"
        print(f"  {r['batch']:>5} {name:<34} {r['ttft_ms']:9.1f} ms {r['tokens_per_s']:9.1f} tok/s "
              f"{r['decode_ratio_vs_all']:12.2f}x  {r['same_tokens']}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": {**machine(), "load_average": load, "threads": args.threads},
              "config": {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIG.items()},
              "prompt": args.prompt, "new_tokens": args.new_tokens, "rows": rows}
    (args.out / "moe_cpu.json").write_text(json.dumps(record, indent=2))
    plot(rows, title, args.out / "moe_cpu.png")
    print(f"\nwrote {args.out / 'moe_cpu.json'} and {args.out / 'moe_cpu.png'}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - start:.0f}s", file=sys.stderr)
