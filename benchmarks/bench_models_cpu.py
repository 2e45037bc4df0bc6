"""CPU benchmark of whole-model generation: a Llama-style decoder (default 4 layers, hidden 512, 8/2 heads,
head dim 64, SwiGLU 1536, vocabulary 32000), prompt 1024, 128 new tokens, batch 1, greedy, fp32.

Paths, all with the same weights and the KV cache:
  - ORT + onnxattn kernels: our export (GroupQueryAttention nodes), concatenation cache;
  - ORT + onnxattn kernels, shared buffer: preallocated cache updated in place (I/O binding);
  - ORT, reference functions: the same graph without our library (onnxruntime inlines the functions);
  - ORT, stock ops: the same model exported by plain torch.onnx.export, attention as plain torch math
    (RoPE, concat, F.scaled_dot_product_attention with an explicit causal mask), no onnxattn op;
  - eager torch, F.scaled_dot_product_attention: that stock model eagerly;
  - eager torch, onnxattn reference modules: our modules eagerly (their math is the readable reference).
Time to first token (prefill + first sample) and decode tokens/s (the 127 steps after the first token),
best of --repeat runs after a warm-up. Every path's tokens are checked against the first path's.
Logits of the last position only (what generation needs), in every path.

    python benchmarks/bench_models_cpu.py [--threads 2] [--repeat 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onnxattn import models
from onnxattn.export import export_model
from onnxattn.generate import generate, generate_torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stock_attention import stock_attention  # noqa: E402

CONFIG = dict(num_layers=4, hidden=512, num_heads=8, num_kv_heads=2, intermediate=1536, vocab_size=32000)


class StockLlama(nn.Module):
    """The same model with stock attention (the forward of every GroupedQueryAttention swapped)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        for attn in model.attention_layers():
            attn.forward = stock_attention.__get__(attn)

    def forward(self, input_ids, past_key_values):
        logits, presents = self.model(input_ids, past_key_values, logits_to_keep=1)
        return logits, presents


def export_stock(model, path: Path) -> None:
    """Plain torch.onnx.export (dynamo), no onnxattn translation table."""
    layers = len(model.layers)
    ids, past = model.example_inputs(2, 5, 3)
    kv = {0: "batch", 2: "past_sequence"}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            StockLlama(model).eval(), (ids, past), dynamo=True,
            dynamic_shapes=({0: "batch", 1: "sequence"}, [(kv, kv)] * layers),
            input_names=["input_ids"] + [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")],
            output_names=["logits"] + [f"present.{i}.{t}" for i in range(layers) for t in ("key", "value")],
            verbose=False)
    program.save(str(path))


def options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return so


def session(path, threads: int, use_library: bool):
    from onnxattn.cuda_ep import make_session

    return make_session(path, use_library=use_library, providers=["CPUExecutionProvider"], session_options=options(threads))


def best(run, repeat: int):
    """Best time to first token and best decode rate over `repeat` runs (after one warm-up run)."""
    run()
    results = [run() for _ in range(repeat)]
    return min(results, key=lambda r: r.time_to_first_token), max(results, key=lambda r: r.tokens_per_second)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["path"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    left.barh(labels, [r["ttft_ms"] for r in rows], color="tab:blue")
    left.set_xlabel("time to first token (ms, lower is better)")
    right.barh(labels, [r["tokens_per_s"] for r in rows], color="tab:green")
    right.set_xlabel("decode tokens/s (higher is better)")
    right.set_yticklabels([])
    for ax in (left, right):
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="config override")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    config = dict(CONFIG, **{k: int(v) for k, v in (item.split("=") for item in args.set)})
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    ours = export_model(models.build("llama", **config), work / "llama.onnx", logits="last", progress=False)
    shared = export_model(ours.model, work / "llama_shared.onnx", cache="shared", logits="last", progress=False,
                          numerics=False)
    stock_model = models.build("llama", **config)
    export_stock(stock_model, work / "llama_stock.onnx")
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], (1, args.prompt))
    n, t = args.new_tokens, args.threads
    paths = {
        "ORT + onnxattn kernels": lambda: generate(session(ours.path, t, True), ids, n, progress=False),
        # a path, not a session: generate makes the session and binds presents to the past buffers
        "ORT + onnxattn kernels, shared buffer": lambda: generate(shared.path, ids, n, progress=False,
                                                                  providers=["CPUExecutionProvider"],
                                                                  session_options=options(t)),
        "ORT, reference functions (no library)": lambda: generate(session(ours.path, t, False), ids, n, progress=False),
        "ORT, stock ops (plain torch.onnx.export)": lambda: generate(session(work / "llama_stock.onnx", t, False), ids, n,
                                                                     progress=False),
        "eager torch, F.scaled_dot_product_attention": lambda: generate_torch(stock_model, ids, n),
        "eager torch, onnxattn reference modules": lambda: generate_torch(ours.model, ids, n),
    }
    rows, first_tokens = [], None
    for label, run in paths.items():
        print(f"running {label} ...", file=sys.stderr, flush=True)
        with torch.no_grad():
            fastest_first, fastest_decode = best(run, args.repeat)
        first_tokens = fastest_first.tokens if first_tokens is None else first_tokens
        rows.append({"path": label, "ttft_ms": fastest_first.time_to_first_token * 1e3,
                     "tokens_per_s": fastest_decode.tokens_per_second,
                     "same_tokens": bool(np.array_equal(fastest_first.tokens, first_tokens))})
    load = os.getloadavg()
    title = (f"Llama-style {config['num_layers']} layers, hidden {config['hidden']}, heads {config['num_heads']}/"
             f"{config['num_kv_heads']}, vocab {config['vocab_size']}; prompt {args.prompt}, {n} new tokens, batch 1, "
             f"fp32, {t} threads")
    print(f"\n{title} (load average {load[0]:.1f})")
    print(f"  {'path':<46} {'first token':>12} {'decode':>14}  same tokens")
    for r in rows:
        print(f"  {r['path']:<46} {r['ttft_ms']:9.1f} ms {r['tokens_per_s']:9.1f} tok/s  {r['same_tokens']}")
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_sdpa_cpu import machine  # the machine description the other benchmarks record

    record = {"machine": {**machine(), "load_average": load, "threads": t}, "config": config, "prompt": args.prompt,
              "new_tokens": n, "rows": rows}
    (args.out / "models_cpu.json").write_text(json.dumps(record, indent=2))
    plot(rows, title, args.out / "models_cpu.png")
    print(f"\nwrote {args.out / 'models_cpu.json'} and {args.out / 'models_cpu.png'}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - start:.0f}s", file=sys.stderr)
