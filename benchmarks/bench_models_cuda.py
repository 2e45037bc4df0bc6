"""CUDA benchmark of whole-model generation in float16 through onnxruntime's CUDA execution provider
(issue 8): benchmarks/bench_models_cpu.py's comparison on the GPU, batch 1, greedy, plus a larger config.

Configs (Llama-style decoders from onnxattn.models):
  - base: bench_models_cpu.py's model (4 layers, hidden 512, 8/2 heads, head dim 64, SwiGLU 1536, vocabulary
    32000), prompt 1024, 128 new tokens;
  - large: 8 layers, hidden 2048, 32/8 heads, head dim 128, SwiGLU 5632, vocabulary 32000 (tied embeddings),
    prompt 2048, 64 new tokens. Its 8 layers share one layer's weights (each has its own attention module, KV
    cache and compute; the ONNX files hold the weights once, 220 MB): building and exporting 8 distinct layers
    (~1 GB of fp16 weights) took over 40 s for our export alone on a development machine's CPU, more than this
    benchmark's minute allows. Every path runs the same weights.
Paths, all with the same weights and a KV cache:
  - ORT CUDA + onnxattn kernels: our export (GroupQueryAttention nodes), concatenation cache;
  - ORT CUDA + onnxattn kernels, shared buffer (base only): the shared-buffer export;
  - ORT CUDA, reference functions (no library): the same graph, onnxruntime inlines the functions;
  - ORT CUDA, stock ops: the model exported by plain torch.onnx.export, attention in plain torch math;
  - eager torch CUDA, F.scaled_dot_product_attention: that stock model eagerly;
  - eager torch CUDA, onnxattn reference modules: our modules eagerly.
The onnxruntime paths run onnxattn.generate as it is: its I/O-binding loop keeps the KV cache on the GPU
(presents are OrtValues fed back as the next pasts) and copies the last position's logits to the host every
step, where the sampler runs; the eager paths copy their logits to the host too. With the shared buffer, generate
keeps one buffer per cache on the device and binds each present to it, so each step writes only the new tokens
(in place since 2026-11-27; the 93587a9 run predates it and wrote a fresh present buffer each step).
Where our library runs, the GroupQueryAttention nodes must have run on CUDAExecutionProvider (onnxruntime's
profile of a short generation on the same session, tests/gpu/ort_cuda.node_providers): otherwise the path
is an error and the exit status 1. Time to first token (prefill + first sample) and decode tokens/s, best
of --repeat runs after a warm-up; every path's tokens are compared with the first path's (float16 paths
may part at near ties: `matching` counts the new tokens equal before the first difference).
The exports (ours, shared-buffer, stock; both configs) run first, in parallel worker processes, so nothing
else loads the host while paths are timed. No path starts once --budget-s is spent (recorded per row); the
JSON is written after each config. Sized for gpu_check.sh's 60 s cap: the budget plus imports and a last path.

    python benchmarks/bench_models_cuda.py [--out FILE_OR_DIR] [--quick] [--configs base,large] [--repeat 2]
        [--budget-s 45]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import ort_cuda  # noqa: E402
from stock_attention import stock_attention  # noqa: E402

from onnxattn.export import export_model  # noqa: E402
from onnxattn.generate import generate, generate_torch  # noqa: E402

OP = "GroupQueryAttention"
CONFIGS = {
    "base": {"model": dict(num_layers=4, hidden=512, num_heads=8, num_kv_heads=2, intermediate=1536, vocab_size=32000),
             "prompt": 1024, "new_tokens": 128, "shared_layers": False, "expected_s": 5},
    "large": {"model": dict(num_layers=8, hidden=2048, num_heads=32, num_kv_heads=8, intermediate=5632, vocab_size=32000,
                            tie_embeddings=True),
              "prompt": 2048, "new_tokens": 64, "shared_layers": True, "expected_s": 8},
}  # fmt: skip
QUICK = {"base": (256, 32), "large": (512, 16)}  # --quick: (prompt, new tokens)
# expected_s: about what a config's first paths take on an H100 (its exports ran before); it does not start with
# less of the budget left
LABELS = {
    "onnxattn": "ORT + onnxattn kernels",
    "onnxattn_shared": "ORT + onnxattn kernels, shared buffer",
    "functions": "ORT, reference functions (no library)",
    "stock": "ORT, stock ops (plain torch.onnx.export)",
    "torch_sdpa": "eager torch, F.scaled_dot_product_attention",
    "torch_onnxattn": "eager torch, onnxattn reference modules",
}
SHARED_NOTE = ("onnxattn.generate binds each shared buffer in place on the device: each step writes only the new "
               "tokens")
IO_NOTE = ("ORT paths: onnxattn.generate's I/O-binding loop, KV cache on the device as OrtValues, last-position "
           "logits copied to the host every step (host sampler); eager torch paths copy their logits to the host too")


def models_package():
    """onnxattn.models (the repo's models/ directory): installed with the package, or reached from the source
    tree as on the GPU machine (PYTHONPATH=repo root, no install)."""
    try:
        from onnxattn import models
    except ImportError:
        import onnxattn

        onnxattn.__path__.append(str(ROOT))  # onnxattn.models -> <root>/models
        from onnxattn import models
    return models


# ---- the stock model: GroupedQueryAttention in plain torch ops (stock_attention.py)
def with_layers(model, blocks, config=None):
    """A shallow copy of the decoder `model` whose layers are shallow copies of `blocks` (weights shared), each
    with its own attention module (layer_idx = its position, so its own cache slot)."""
    out = copy.copy(model)
    out._modules = dict(model._modules)
    copies = []
    for i, block in enumerate(blocks):
        b = copy.copy(block)
        b._modules = dict(block._modules)
        attn = copy.copy(block.attn)
        attn.layer_idx = i
        b._modules["attn"] = attn
        copies.append(b)
    out._modules["layers"] = nn.ModuleList(copies)
    if config is not None:
        out.config = config
    return out


class StockLlama(nn.Module):
    """`model` with stock attention (a copy sharing its weights; `model` keeps its own attention)."""

    def __init__(self, model):
        super().__init__()
        self.model = with_layers(model, list(model.layers))
        for attn in self.model.attention_layers():
            attn.forward = stock_attention.__get__(attn)
        self.kind, self.max_positions = "decoder", getattr(model, "max_positions", None)

    def forward(self, input_ids, past_key_values=None, *, cache=None, logits_to_keep=1):
        if cache is not None:  # eager generation (generate_torch)
            return self.model(input_ids, cache=cache, logits_to_keep=logits_to_keep)
        return self.model(input_ids, past_key_values, logits_to_keep=1)


def export_stock(stock: StockLlama, path: Path) -> None:
    """Plain torch.onnx.export (dynamo) of the stock model, no onnxattn translation table."""
    layers = len(stock.model.layers)
    ids, past = stock.model.example_inputs(2, 5, 3)
    kv = {0: "batch", 2: "past_sequence"}
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            stock.eval(), (ids, past), dynamo=True,
            dynamic_shapes=({0: "batch", 1: "sequence"}, [(kv, kv)] * layers),
            input_names=["input_ids"] + [f"past_key_values.{i}.{t}" for i in range(layers) for t in ("key", "value")],
            output_names=["logits"] + [f"present.{i}.{t}" for i in range(layers) for t in ("key", "value")],
            verbose=False)
    program.save(str(path))


class OnDevice(nn.Module):
    """A decoder for generate_torch on `device`: host token ids in, float32 host logits out (what the sampler
    reads), so the eager paths pay the same per-step logits copy as the onnxruntime ones."""

    kind = "decoder"

    def __init__(self, model, device):
        super().__init__()
        self.model, self.device = model, torch.device(device)
        self.max_positions = getattr(model, "max_positions", None)

    def forward(self, input_ids, **kwargs):
        return self.model(input_ids.to(self.device), **kwargs).float().cpu()


# ---- one config
def build(spec: dict, dtype: torch.dtype):
    """(our reference model in `dtype`, config) for a config spec; with shared_layers, every layer shares
    layer 0's weights (built and exported once)."""
    models = models_package()
    config = models.config_for("llama", **spec["model"])
    if not spec.get("shared_layers"):
        model = models.build(config)
    else:
        one = models.build(config, num_layers=1)
        model = with_layers(one, [one.layers[0]] * config.num_layers, config)
    from onnxattn.models._base import cast_model

    return cast_model(model, dtype).eval(), config


def best(run, repeat: int):
    """Best time to first token and best decode rate over `repeat` runs (after one warm-up run)."""
    run()
    results = [run() for _ in range(repeat)]
    return min(results, key=lambda r: r.time_to_first_token), max(results, key=lambda r: r.tokens_per_second)


def placement(sess, ids: np.ndarray) -> list[str]:
    """Execution providers that ran our attention nodes during a short generation on `sess` (ends its
    profiling; the timed runs that follow are not profiled)."""
    generate(sess, ids[:, : min(16, ids.shape[1])], 2, progress=False)
    return sorted(ort_cuda.node_providers(sess, OP))


def export_kinds(spec: dict) -> list[str]:
    """The ONNX files a config's paths need: our export (concatenation cache), the shared-buffer one (configs
    with distinct layers) and the stock one."""
    return ["concat"] + ([] if spec.get("shared_layers") else ["shared"]) + ["stock"]


def export_one(model, kind: str, path: Path, dtype: torch.dtype) -> None:
    if kind == "stock":
        export_stock(StockLlama(model), path)
    else:
        export_model(model, path, dtype=dtype, cache=kind, logits="last", validate=False, progress=False)


def export_job(spec: dict, kind: str, dtype_name: str, path: str, threads: int) -> float:
    """One export in a worker process (the exports run in parallel before anything is timed: they are
    CPU-bound Python, tens of seconds together for the two configs). Same seeds, so the same weights as the
    benchmarking process builds. Returns its seconds."""
    start = time.perf_counter()
    torch.set_num_threads(threads)  # the workers share the host
    dtype = getattr(torch, dtype_name)
    model, _ = build(spec, dtype)
    export_one(model, kind, Path(path), dtype)
    return time.perf_counter() - start


def export_all(specs: dict, work: Path, dtype: torch.dtype, timeout_s: float, log=print) -> dict:
    """Every config's exports on a pool of spawned processes: {(config, kind): (path, seconds) or an
    exception}."""
    import concurrent.futures
    import multiprocessing

    jobs = [(name, kind) for name, spec in specs.items() for kind in export_kinds(spec)]
    out = {}
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    log(f"exporting {len(jobs)} models on {workers} processes ...")
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        threads = max(1, (os.cpu_count() or 1) // workers)
        futures = {(name, kind): pool.submit(export_job, specs[name], kind, str(dtype).removeprefix("torch."),
                                             str(work / f"{name}_{kind}.onnx"), threads)
                   for name, kind in jobs}  # fmt: skip
        deadline = time.perf_counter() + timeout_s
        for (name, kind), future in futures.items():
            try:
                out[name, kind] = (work / f"{name}_{kind}.onnx", future.result(max(0.0, deadline - time.perf_counter())))
            except Exception as e:  # noqa: BLE001 - an export failing (or running out of time) fails its paths
                out[name, kind] = e
    finally:
        if len(out) < len(jobs) or any(isinstance(v, BaseException) for v in out.values()):
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # an export past its time would run on while the paths are timed
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def run_config(name: str, spec: dict, *, ort, library: str, work: Path, repeat: int, deadline: float,
               exports: dict | None = None, device: str = "cuda", dtype: torch.dtype = torch.float16,
               log=print) -> tuple[dict, list[dict]]:  # fmt: skip
    """Runs every path of one config; returns (config record, rows). `exports` ({kind: (path, seconds) or
    an exception}, from export_all) are used where given, the rest exported here. `device` "cpu" (with the
    CPU execution provider) is for host-side tests of this function only."""
    ep = ort_cuda.CUDA_EP if device == "cuda" else "CPUExecutionProvider"
    providers = [ep, "CPUExecutionProvider"] if ep != "CPUExecutionProvider" else [ep]
    prompt, new = spec["prompt"], spec["new_tokens"]
    record = {"model": spec["model"], "prompt": prompt, "new_tokens": new, "dtype": str(dtype).removeprefix("torch."),
              "shared_layers": bool(spec.get("shared_layers")), "export_s": {}, "notes": [IO_NOTE]}  # fmt: skip
    paths = ["onnxattn", "functions", "stock", "torch_sdpa", "torch_onnxattn"]
    if "shared" in export_kinds(spec):
        paths.insert(1, "onnxattn_shared")
        record["notes"].append(f"shared buffer: {SHARED_NOTE}")
    start = time.perf_counter()
    if deadline - start < spec.get("expected_s", 0):
        skipped = f"skipped: time budget spent (--budget-s; {name} needs ~{spec.get('expected_s', 0)} s)"
        log(f"  {name}: {skipped}")
        return record, [{"config": name, "path": key, "label": LABELS[key], "error": skipped} for key in paths]
    model, config = build(spec, dtype)
    record["build_s"] = time.perf_counter() - start
    exports = dict(exports or {})

    def exported(kind: str) -> Path:
        if kind not in exports:
            t = time.perf_counter()
            export_one(model, kind, work / f"{name}_{kind}.onnx", dtype)
            exports[kind] = (work / f"{name}_{kind}.onnx", time.perf_counter() - t)
        if isinstance(exports[kind], BaseException):
            raise RuntimeError(f"export ({kind}) failed: {type(exports[kind]).__name__}: {exports[kind]}")
        path, seconds = exports[kind]
        record["export_s"][kind] = seconds
        return path

    ids = np.random.default_rng(0).integers(0, config.vocab_size, (1, prompt))
    rows, first_tokens, eager = [], None, None
    for key in paths:
        row = {"config": name, "path": key, "label": LABELS[key]}
        rows.append(row)
        remaining = deadline - time.perf_counter()
        predicted = max((r.get("seconds", 0) for r in rows[:-1]), default=0)
        if remaining <= 0 or remaining < predicted:
            row["error"] = "skipped: time budget spent (--budget-s)"
            log(f"  {name} {key}: {row['error']}")
            continue
        log(f"running {name}: {LABELS[key]} ...")
        t0 = time.perf_counter()
        sess = run = None
        try:
            if key.startswith("torch_"):
                if eager is None:
                    if "stock" not in exports:
                        exported("stock")  # before the move: the export traces on the host
                    eager = {"torch_onnxattn": OnDevice(model.to(device), device)}
                    eager["torch_sdpa"] = OnDevice(StockLlama(model), device)
                run = (lambda m=eager[key]: generate_torch(m, ids, new))
            else:
                kind = {"onnxattn": "concat", "onnxattn_shared": "shared", "functions": "concat", "stock": "stock"}[key]
                path = exported(kind)
                with_library = key.startswith("onnxattn")
                sess = ort_cuda.session(ort, str(path), library=library if with_library else None,
                                        profile_prefix=str(work / f"profile_{name}_{key}") if with_library else None,
                                        providers=providers)  # fmt: skip
                row["session_providers"] = sess.get_providers()
                if with_library:
                    row["placement"] = placement(sess, ids)
                    if row["placement"] != [ep]:
                        raise RuntimeError(f"placement: {OP} ran on {row['placement']}, not {ep}")
                if key == "onnxattn_shared":
                    row["note"] = SHARED_NOTE
                run = (lambda s=sess: generate(s, ids, new, progress=False))
            with torch.no_grad():
                fastest_first, fastest_decode = best(run, repeat)
            first_tokens = fastest_first.tokens if first_tokens is None else first_tokens
            new_ours, new_first = fastest_first.tokens[0, prompt:], first_tokens[0, prompt:]
            differ = np.flatnonzero(new_ours != new_first)
            row.update(ttft_ms=fastest_first.time_to_first_token * 1e3, tokens_per_s=fastest_decode.tokens_per_second,
                       same_tokens=bool(np.array_equal(fastest_first.tokens, first_tokens)),
                       matching=int(differ[0]) if differ.size else int(new_first.size))  # fmt: skip
        except Exception as e:  # noqa: BLE001 - one path failing (export, OOM, placement) is recorded, not fatal
            text = str(e).strip()
            row["error"] = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
            log(f"  {name} {key} failed: {row['error']}")
        finally:
            sess = run = None  # the session's device memory goes before the next path
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        row["seconds"] = time.perf_counter() - t0
    record["seconds"] = time.perf_counter() - start
    return record, rows


def format_table(env: dict, configs: dict, rows: list[dict]) -> str:
    dtypes = "/".join(sorted({c["dtype"] for c in configs.values()}))
    lines = [f"\nModels benchmark ({dtypes} generation, batch 1, greedy) on {env.get('device')} (driver "
             f"{env.get('driver')}, commit {str(env.get('commit'))[:12]}, onnxruntime {env.get('onnxruntime')})"]  # fmt: skip
    for name, c in configs.items():
        m = c["model"]
        lines.append(f"{name}: Llama-style {m['num_layers']} layers, hidden {m['hidden']}, heads {m['num_heads']}/"
                     f"{m['num_kv_heads']}, vocab {m['vocab_size']}{', layers share weights' if c['shared_layers'] else ''}; "
                     f"prompt {c['prompt']}, {c['new_tokens']} new tokens; exports "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in c["export_s"].items()))  # fmt: skip
        lines.append(f"  {'path':<46} {'first token':>12} {'decode':>14}  same tokens (matching)")
        for r in (r for r in rows if r["config"] == name):
            if "error" in r:
                lines.append(f"  {r['label']:<46} {r['error'][:120]}")
                continue
            lines.append(f"  {r['label']:<46} {r['ttft_ms']:9.1f} ms {r['tokens_per_s']:9.1f} tok/s  {r['same_tokens']} "
                         f"({r['matching']})")  # fmt: skip
        for note in c["notes"]:
            lines.append(f"  note: {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="shorter prompts and generations (a smoke run)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per path after one warm-up")
    parser.add_argument("--budget-s", type=float, default=45.0, help="no path starts after this many seconds")
    args = parser.parse_args(argv)
    specs = {}
    for name in args.configs.split(","):
        if name not in CONFIGS:
            parser.error(f"--configs: unknown config {name!r} (known: {', '.join(CONFIGS)})")
        specs[name] = dict(CONFIGS[name], **(dict(zip(("prompt", "new_tokens"), QUICK[name])) if args.quick else {}))
    start = time.perf_counter()
    ort, why_not = ort_cuda.benchmark_runtime("bench_models_cuda")
    if ort is None:
        print(why_not, file=sys.stderr)
        return 2
    from bench_sdpa_cuda import environment

    from onnxattn.cuda_ep import library_path

    env = environment()
    env["onnxruntime"] = ort.__version__
    out = Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / "models_cuda.json"
    configs, rows = {}, []
    deadline = start + args.budget_s
    work = Path(tempfile.mkdtemp(prefix="bench-models-cuda-"))

    def save():
        out.write_text(json.dumps({"environment": env, "configs": configs, "results": rows, "quick": args.quick},
                                  indent=1))

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    try:
        # every export first, in parallel, so nothing else runs on the host while paths are timed
        exports = export_all(specs, work, torch.float16, timeout_s=0.75 * args.budget_s, log=log)
        log(f"exports done at {time.perf_counter() - start:.0f} s")
        for name, spec in specs.items():
            mine = {kind: value for (config, kind), value in exports.items() if config == name}
            configs[name], config_rows = run_config(name, spec, ort=ort, library=library_path(), work=work,
                                                    repeat=args.repeat, deadline=deadline, exports=mine, log=log)
            rows.extend(config_rows)
            save()
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the exported models (hundreds of MB)
    print(format_table(env, configs, rows))
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s)")
    failed = [r for r in rows if r.get("error", "").startswith("RuntimeError: placement")
              or (r["path"] == "onnxattn" and "error" in r and not r["error"].startswith("skipped"))]  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
