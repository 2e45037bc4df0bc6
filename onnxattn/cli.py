"""The ``onnxattn`` command: demo, export, validate, run, bench, info."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _parse_dims(items: list[str] | None) -> dict[str, int]:
    dims = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"onnxattn: --dim expects NAME=SIZE, got {item!r}")
        dims[name] = int(value)
    return dims


def _timed(fn, repeat: int = 5) -> tuple[object, float]:
    result = fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def cmd_info(args) -> int:
    import onnxruntime as ort

    from onnxattn import cuda_ep, ops

    print(f"onnxattn {__import__('onnxattn').__version__}")
    try:
        for key, value in cuda_ep.build_info().items():
            print(f"  {key:<12} {value}")
    except (FileNotFoundError, OSError) as e:
        print(f"  library      NOT FOUND: {e}")
    print(f"  onnxruntime  {ort.__version__} (providers: {', '.join(ort.get_available_providers())})")
    print(f"  ops          {', '.join(f'{ops.DOMAIN}::{n}' for n in sorted(ops.SPECS))}")
    try:
        import torch

        print(f"  torch        {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    except ImportError:
        print("  torch        not installed")
    return 0


def cmd_validate(args) -> int:
    from onnxattn.validation import validate

    report = validate(args.model, numerics=args.numerics, dims=_parse_dims(args.dim), providers=[args.provider])
    print(report)
    return 0 if report.ok else 1


def _random_feeds(session, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else dims.get(d, 4) for d in inp.shape]
        if "int64" in inp.type:
            feeds[inp.name] = rng.integers(0, 16, shape).astype(np.int64)
        elif "bool" in inp.type:
            feeds[inp.name] = rng.random(shape) < 0.8
        elif "float16" in inp.type:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float16)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def cmd_run(args) -> int:
    from onnxattn.cuda_ep import make_session

    session = make_session(args.model, use_library=not args.no_library,
                           providers=[args.provider] if args.provider else None)
    feeds = _random_feeds(session, _parse_dims(args.dim))
    outputs, seconds = _timed(lambda: session.run(None, feeds), args.repeat)
    print(f"{args.model}: {'function (no library)' if args.no_library else 'onnxattn kernels'} on "
          f"{session.get_providers()[0]}, best of {args.repeat}: {seconds * 1e3:.2f} ms")
    for meta, value in zip(session.get_outputs(), outputs):
        print(f"  {meta.name}: {list(value.shape)} {value.dtype} mean {float(np.mean(value)):.4g}")
    return 0


def cmd_bench(args) -> int:
    from onnxattn.cuda_ep import make_session

    dims = _parse_dims(args.dim)
    providers = [args.provider] if args.provider else None
    with_lib = make_session(args.model, use_library=True, providers=providers)
    without = make_session(args.model, use_library=False, providers=providers)
    feeds = _random_feeds(with_lib, dims)
    out_lib, t_lib = _timed(lambda: with_lib.run(None, feeds), args.repeat)
    out_fn, t_fn = _timed(lambda: without.run(None, feeds), args.repeat)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(out_lib, out_fn))
    print(f"{args.model} ({with_lib.get_providers()[0]}, inputs {[list(v.shape) for v in feeds.values()]})")
    print(f"  onnxattn kernels   {t_lib * 1e3:9.2f} ms")
    print(f"  reference function {t_fn * 1e3:9.2f} ms   ({t_fn / t_lib:.1f}x slower)")
    print(f"  max |difference|   {diff:.2e}")
    return 0


def cmd_export(args) -> int:
    import onnxattn
    from onnxattn import models

    model = models.build(args.model_name)
    batch, seq = args.batch, args.seq
    path = Path(args.output or f"{args.model_name}.onnx")
    onnxattn.export(model, model.example_inputs(batch, seq), path, dynamic_shapes=model.dynamic_shapes())
    print(f"exported {args.model_name} to {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_demo(args) -> int:
    """Export the built-in model, validate it, run it in onnxruntime with and without our kernels, and
    compare with eager torch."""
    import torch

    import onnxattn
    from onnxattn import models
    from onnxattn.cuda_ep import make_session
    from onnxattn.validation import validate

    out_dir = Path(args.out or tempfile.mkdtemp(prefix="onnxattn-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = models.DEFAULT_MODEL
    model = models.build(name)
    cfg = model.config
    print(f"[1/4] model {name}: {cfg.num_layers} layers, hidden {cfg.hidden}, heads {cfg.num_query_heads}/"
          f"{cfg.num_kv_heads} (GQA), head dim {cfg.head_dim}, sliding window {cfg.window} on odd layers")
    path = out_dir / f"{name}.onnx"
    start = time.perf_counter()
    proto = onnxattn.export(model, model.example_inputs(2, 16), path, dynamic_shapes=model.dynamic_shapes())
    attn_nodes = sum(1 for n in proto.graph.node if n.domain == onnxattn.DOMAIN)
    print(f"[2/4] exported to {path} in {time.perf_counter() - start:.1f}s: {len(proto.graph.node)} nodes, "
          f"{attn_nodes} onnxattn::ScaledDotProductAttention, {len(proto.functions)} reference function(s)")
    report = validate(path, numerics=True, dims={"batch": 2, "sequence": 24})
    print("[3/4] " + str(report).replace("\n", "\n      "))
    batch, seq = args.batch, args.seq  # a shape other than the traced one: dynamic axes at work
    (ids,) = model.example_inputs(batch, seq)
    with torch.no_grad():
        expected = model(ids).numpy()
    rows = []
    ok = report.ok
    for label, use_library in (("onnxruntime + onnxattn kernels", True), ("onnxruntime, reference function", False)):
        session = make_session(path, use_library=use_library, providers=["CPUExecutionProvider"])
        (logits,), seconds = _timed(lambda: session.run(None, {session.get_inputs()[0].name: ids.numpy()}))
        err = float(np.max(np.abs(logits - expected)))
        ok = ok and err < 1e-3
        rows.append((label, seconds, err))
    _, torch_seconds = _timed(lambda: model(ids))
    print(f"[4/4] logits for batch {batch}, sequence {seq} (traced at 2 x 16):")
    print(f"      {'path':<34} {'time':>10}   max |diff| vs torch")
    print(f"      {'eager torch':<34} {torch_seconds * 1e3:8.2f}ms   -")
    for label, seconds, err in rows:
        print(f"      {label:<34} {seconds * 1e3:8.2f}ms   {err:.1e}")
    print("demo: " + ("OK" if ok else "FAILED"))
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": ok, "model": str(path), "rows": rows}, indent=2))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxattn", description="Attention mechanisms as ONNX custom ops.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="export, validate and run the built-in model; compare with torch")
    p.add_argument("--out", help="directory for the exported model (default: a temporary directory)")
    p.add_argument("--batch", type=int, default=3)
    p.add_argument("--seq", type=int, default=37)
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a built-in model to ONNX")
    p.add_argument("model_name", help="a model from onnxattn.models (e.g. tiny-decoder)")
    p.add_argument("-o", "--output")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=16)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("validate", help="check a model's onnxattn nodes (schema, shapes, functions, numerics)")
    p.add_argument("model")
    p.add_argument("--numerics", action="store_true", help="also compare each node's kernel with its function")
    p.add_argument("--dim", action="append", metavar="NAME=SIZE", help="size of a symbolic dim for --numerics")
    p.add_argument("--provider", default="CPUExecutionProvider")
    p.set_defaults(func=cmd_validate)

    for name, func, help_text in (("run", cmd_run, "run a model on random inputs"),
                                  ("bench", cmd_bench, "time a model with our kernels vs its reference functions")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model")
        p.add_argument("--dim", action="append", metavar="NAME=SIZE", help="size of a symbolic input dim")
        p.add_argument("--provider", help="onnxruntime execution provider (default: CUDA if available, else CPU)")
        p.add_argument("--repeat", type=int, default=5)
        if name == "run":
            p.add_argument("--no-library", action="store_true", help="run the reference functions instead")
        p.set_defaults(func=func)

    p = sub.add_parser("info", help="library path, build flags, onnxruntime version and providers")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"onnxattn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
