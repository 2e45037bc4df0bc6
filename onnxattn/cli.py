"""The ``onnxattn`` command: demo, export, generate, validate, run, bench, info."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# The registered reference models (onnxattn.models.MODELS), named here so `--help` need not import torch;
# tests/test_cli.py keeps the two equal.
MODEL_NAMES = {"decoders": ("llama", "llama4", "gemma3", "gemma4", "gpt2", "gpt-oss", "deepseek-v3", "deepseek-v3.2",
                            "nsa", "moba"),
               "others": ("bert", "modernbert", "tiny-decoder")}  # encoders, a decoder without a KV cache


PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _providers(args) -> list[str] | None:
    """--provider as onnxruntime's providers list: a full name, or cpu / cuda (None: unset or auto, the default)."""
    if not args.provider or args.provider == "auto":
        return None
    name = PROVIDER_ALIASES.get(args.provider.lower(), args.provider)
    return [name, "CPUExecutionProvider"] if name == "CUDAExecutionProvider" else [name]


def _parse_dims(items: list[str] | None) -> dict[str, int]:
    dims = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise SystemExit(f"onnxattn: --dim expects NAME=SIZE, got {item!r}")
        dims[name] = int(value)
    return dims


def _timed(fn, repeat: int = 5) -> tuple[object, float]:
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {repeat}")
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

    report = validate(args.model, numerics=args.numerics, dims=_parse_dims(args.dim), providers=_providers(args))
    print(report)
    return 0 if report.ok else 1


def _gather_rows(model_path: str) -> dict[str, int]:
    """Graph input -> rows of the initializer table it indexes in a Gather (token, position and token-type ids)."""
    import onnx

    graph = onnx.load(model_path, load_external_data=False).graph
    tables = {t.name: t.dims[0] for t in graph.initializer if t.dims}
    inputs = {i.name for i in graph.input}
    rows = {}
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if node.op_type == "Gather" and axis == 0 and node.input[1] in inputs and node.input[0] in tables:
            rows[node.input[1]] = min(rows.get(node.input[1], tables[node.input[0]]), tables[node.input[0]])
    return rows


def _random_feeds(session, model_path: str, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that keep the model's contracts: ids below the rows of the table they index, an attention mask
    that hides nothing, shared-buffer past_lengths within the room the buffers leave for the new tokens (buffers of
    sequence + DEFAULT_DIM unless --dim max_sequence says otherwise); other integers in [0, 16), floats standard
    normal."""
    from onnxattn.validation import DEFAULT_DIM, random_past_lengths

    rng = np.random.default_rng(seed)
    rows = _gather_rows(model_path)
    names = {inp.name for inp in session.get_inputs()}
    symbolic = {d for inp in session.get_inputs() for d in inp.shape if isinstance(d, str)}
    unknown = sorted(set(dims) - symbolic)
    if unknown:  # a typo would otherwise leave the default size in place, silently
        raise ValueError(f"--dim {', '.join(unknown)}: the inputs have no dim of that name (theirs: "
                         f"{', '.join(sorted(symbolic)) or 'none'})")
    if "past_lengths" in names:
        dims = {"max_sequence": dims.get("sequence", DEFAULT_DIM) + DEFAULT_DIM, **dims}
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else dims.get(d, DEFAULT_DIM) for d in inp.shape]
        if inp.name == "attention_mask":
            feeds[inp.name] = np.ones(shape, dtype=bool if "bool" in inp.type else np.int64)
        elif inp.type in ("tensor(int64)", "tensor(int32)"):
            dtype = np.int64 if inp.type == "tensor(int64)" else np.int32
            feeds[inp.name] = rng.integers(0, rows.get(inp.name, 16), shape).astype(dtype)
        elif "bool" in inp.type:
            feeds[inp.name] = rng.random(shape) < 0.8
        elif inp.type == "tensor(float16)":
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float16)
        elif inp.type == "tensor(bfloat16)":
            feeds[inp.name] = _bfloat16_value(rng.standard_normal(shape).astype(np.float32))
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    if "past_lengths" in feeds and "input_ids" in feeds:
        buffer = next(v for k, v in feeds.items() if k.startswith("past_key_values."))
        feeds["past_lengths"] = random_past_lengths(rng, feeds["past_lengths"], buffer.shape[2],
                                                    feeds["input_ids"].shape[1])
    return feeds


def _bfloat16_value(x: np.ndarray):
    """float32 `x` as an onnxruntime bfloat16 tensor (numpy has no bfloat16): the upper 16 bits, rounded to even."""
    import onnxruntime as ort

    bits = x.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, 16)  # TensorProto.BFLOAT16


def _run(session, feeds: dict) -> list[np.ndarray]:
    """The session's outputs on `feeds`, as numpy arrays; bfloat16 ones as float32. Where a feed or an output is
    bfloat16 (onnxruntime's numpy conversion has none), through an I/O binding with the outputs on the host."""
    import ctypes

    import onnxruntime as ort

    if not (any(isinstance(v, ort.OrtValue) for v in feeds.values())
            or any(o.type == "tensor(bfloat16)" for o in session.get_outputs())):
        return session.run(None, feeds)
    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    session.run_with_iobinding(binding)
    arrays = []
    for value in binding.get_outputs():
        if value.data_type() != "tensor(bfloat16)":
            arrays.append(value.numpy())
            continue
        count = int(np.prod(value.shape()))
        bits = np.ctypeslib.as_array((ctypes.c_uint16 * count).from_address(value.data_ptr())) if count else []
        arrays.append((np.asarray(bits, np.uint32) << 16).view(np.float32).reshape(value.shape()))
    return arrays


def _shape(value) -> list[int]:
    return list(value.shape() if callable(value.shape) else value.shape)  # an OrtValue's shape is a method


def cmd_run(args) -> int:
    from onnxattn.cuda_ep import make_session

    session = make_session(args.model, use_library=not args.no_library,
                           providers=_providers(args))
    feeds = _random_feeds(session, args.model, _parse_dims(args.dim))
    outputs, seconds = _timed(lambda: _run(session, feeds), args.repeat)
    print(f"{args.model}: {'function (no library)' if args.no_library else 'onnxattn kernels'} on "
          f"{session.get_providers()[0]}, best of {args.repeat}: {seconds * 1e3:.2f} ms")
    for meta, value in zip(session.get_outputs(), outputs):
        print(f"  {meta.name}: {list(value.shape)} {value.dtype} mean {float(np.mean(value)):.4g}")
    return 0


def cmd_bench(args) -> int:
    from onnxattn.cuda_ep import make_session

    dims = _parse_dims(args.dim)
    providers = _providers(args)
    with_lib = make_session(args.model, use_library=True, providers=providers)
    without = make_session(args.model, use_library=False, providers=providers)
    feeds = _random_feeds(with_lib, args.model, dims)
    out_lib, t_lib = _timed(lambda: _run(with_lib, feeds), args.repeat)
    out_fn, t_fn = _timed(lambda: _run(without, feeds), args.repeat)
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in zip(out_lib, out_fn))
    print(f"{args.model} ({with_lib.get_providers()[0]}, inputs {[_shape(v) for v in feeds.values()]})")
    print(f"  onnxattn kernels   {t_lib * 1e3:9.2f} ms")
    print(f"  reference function {t_fn * 1e3:9.2f} ms   ({t_fn / t_lib:.1f}x slower)")
    print(f"  max |difference|   {diff:.2e}")
    return 0


def _parse_overrides(items: list[str] | None) -> dict:
    """--set NAME=VALUE config overrides; values are Python literals (512, 1e-6, True, None) or strings."""
    import ast

    overrides = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"onnxattn: --set expects NAME=VALUE, got {item!r}")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return overrides


def _model_source(spec: str, overrides: list[str] | None):
    """(what export_model takes, a name for files, the transformers model or None): a reference model's name,
    or a directory holding a transformers checkpoint (config.json + weights), converted with its weights."""
    if not Path(spec).is_dir():
        if spec.endswith(".onnx"):  # meant as an exported model
            if not Path(spec).exists():
                raise FileNotFoundError(f"{spec}: no such file")
            raise ValueError(f"{spec} is an exported model: this command takes a model name or a transformers "
                             "checkpoint directory")
        if "/" in spec or "\\" in spec:  # meant as a path (model names have no slashes)
            raise FileNotFoundError(f"{spec}: no such directory (a transformers checkpoint) or model name")
        return spec, spec, None
    from onnxattn.models import hf

    if overrides:
        raise ValueError("--set changes a reference model's config; a transformers checkpoint brings its own")
    hf_model = hf.load_local(spec)
    return hf.from_transformers(hf_model), Path(spec).resolve().name, hf_model


def cmd_export(args) -> int:
    from onnxattn.export import export_model

    model, name, hf_model = _model_source(args.model_name, args.set)
    del hf_model  # our conversion holds the weights: free the transformers model's copy before exporting
    path = Path(args.output or f"{name}.onnx")
    result = export_model(model, path, dtype=args.dtype, cache=args.cache, logits=args.logits, _owned=True,
                          overrides=_parse_overrides(args.set), validate=not args.no_validate,
                          external_data_threshold=args.external_data_threshold, progress=not args.quiet)
    size = path.stat().st_size + (Path(str(path) + ".data").stat().st_size if result.external_data else 0)
    print(f"exported {name} ({result.kind}, {args.dtype}"
          f"{', cache ' + result.cache if result.cache else ''}) to {path} in {result.seconds:.1f}s "
          f"({size / 1e6:.2f} MB{', weights in ' + path.name + '.data' if result.external_data else ''})")
    print(f"  inputs  {', '.join(_abbreviate(result.input_names))}")
    print(f"  outputs {', '.join(_abbreviate(result.output_names))}")
    if result.report is not None:
        print(f"  validation: {'OK' if result.report.ok else 'FAILED'} ({len(result.report.nodes)} onnxattn nodes)")
    return 0


def _abbreviate(names: list[str]) -> list[str]:
    if len(names) <= 6:
        return names
    return [*names[:4], f"... ({len(names) - 6} more)", *names[-2:]]


def _tokenizer(args):
    """The tokenizer for --prompt and for printing text: --tokenizer's directory, else the checkpoint's (None
    when neither is given, or the checkpoint has none and no --prompt needs it). Local files only."""
    where = args.tokenizer or (args.model if Path(args.model).is_dir() else None)
    if where is None:
        if args.prompt:
            raise ValueError("generate: --prompt needs a tokenizer: a transformers checkpoint directory as the model, "
                             "or --tokenizer DIR")
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
        # from a config alone (a checkpoint saved without its tokenizer) transformers builds an empty one
        if len(tokenizer) <= 1:
            raise ValueError("it holds no tokenizer files (the tokenizer built from its config has no vocabulary)")
        return tokenizer
    except (OSError, ValueError) as e:
        if args.prompt or args.tokenizer:
            raise ValueError(f"generate: no tokenizer could be loaded from {where}: {e}") from e
        return None


def _given_prompt(args, tokenizer=None) -> np.ndarray | None:
    """The prompt rows given by --prompt (through the tokenizer) or --ids; None when neither is given."""
    if args.prompt:
        if args.ids:
            raise ValueError("generate: give --prompt or --ids, not both")
        rows = [tokenizer(text)["input_ids"] for text in args.prompt]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"generate: the prompts tokenize to {[len(r) for r in rows]} tokens; batched rows need "
                             "the same length (there is no padding)")
        return np.array(rows, dtype=np.int64)
    if args.ids:
        rows = [[int(t) for t in row.split(",") if t.strip()] for row in args.ids.split(";")]
        if len({len(r) for r in rows}) != 1:
            raise ValueError("--ids: every row (separated by ';') needs the same length")
        return np.array(rows, dtype=np.int64)
    return None


def cmd_generate(args) -> int:
    from onnxattn.generate import generate, generate_torch

    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    providers = _providers(args)
    model = hf_model = None
    # the prompt first: a missing tokenizer or unequal rows are refused before an export (minutes for a large model)
    tokenizer = _tokenizer(args)
    ids = _given_prompt(args, tokenizer)
    if Path(args.model).is_file():
        if args.compare_torch:  # before generating, not after
            raise ValueError("generate: --compare-torch needs a model name or a transformers checkpoint (the eager "
                             f"model to compare with), not an exported file ({args.model})")
        path = Path(args.model)
        vocab = args.vocab_size or _gather_rows(str(path)).get("input_ids", 256)
    else:  # a model name or a transformers checkpoint: export it first
        from onnxattn.cuda_ep import default_providers
        from onnxattn.export import export_model

        # before exporting (make_session would refuse it after)
        if args.dtype == "bfloat16" and "CUDAExecutionProvider" not in (providers or default_providers()):
            raise ValueError("generate: --dtype bfloat16 needs the CUDA provider: onnxruntime's CPU kernels for "
                             "standard ops (MatMul, Mul, ...) have no bfloat16; use float32 or float16 on the CPU")

        source, name, hf_model = _model_source(args.model, args.set)
        # before exporting (export refuses logits='last' without a KV cache); unknown names are export's to refuse
        if source in MODEL_NAMES["others"] or getattr(source, "kind", "decoder") != "decoder":
            raise ValueError(f"generate: {args.model} is not a decoder with a KV cache (decoders: "
                             f"{', '.join(MODEL_NAMES['decoders'])}, or a transformers checkpoint of one)")
        if not args.compare_torch:
            hf_model = None  # only the comparison needs it: free its copy of the weights before exporting
        if hf_model is not None and args.temperature > 0:  # hf_model is kept for --compare-torch only
            raise ValueError("generate: --compare-torch with a transformers checkpoint compares greedy tokens "
                             "with transformers'; drop --temperature")
        out_dir = Path(args.out or tempfile.mkdtemp(prefix="onnxattn-generate-"))
        result = export_model(source, out_dir / f"{name}.onnx", dtype=args.dtype, _owned=True,
                              overrides=_parse_overrides(args.set), logits="last", progress=not args.quiet,
                              numerics=False)
        path, model, vocab = result.path, result.model, result.model.config.vocab_size
    if ids is None:  # a random prompt, from the model's vocabulary
        ids = np.random.default_rng(args.seed).integers(0, vocab, (args.batch, args.prompt_length)).astype(np.int64)
    out = generate(path, ids, args.max_new_tokens, use_library=not args.no_library, providers=providers,
                   progress=not args.quiet, **sampling)
    print(out.summary())
    for row in out.new_tokens:
        print("  " + " ".join(str(int(t)) for t in row))
        if tokenizer is not None:
            print(f"  text: {tokenizer.decode(row.tolist())!r}")
    if args.compare_torch:
        if hf_model is not None:
            tokens = _transformers_greedy(hf_model, ids, args.max_new_tokens)
            same = np.array_equal(tokens, out.tokens)
            print(f"tokens equal to transformers (greedy, KV-cached forward steps): {'yes' if same else 'NO'}")
            return 0 if same else 1
        ref = generate_torch(model, ids, args.max_new_tokens, **sampling)
        same = np.array_equal(ref.tokens, out.tokens)
        print(ref.summary())
        print(f"tokens equal to eager torch: {'yes' if same else 'NO'}")
        return 0 if same else 1
    return 0


def _transformers_greedy(hf_model, ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy tokens from the transformers model, one cached forward per token as our graph runs them (its
    generate() may differ: Phi-3's re-encodes the sequence when LongRoPE switches to the long factors)."""
    import inspect

    import torch

    # transformers 5 names the cache argument `cache` in some models, `past_key_values` in others
    key = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
    tokens = torch.from_numpy(ids)
    with torch.no_grad():
        out = hf_model(tokens, use_cache=True)
        for i in range(new_tokens):
            step = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, step], dim=1)
            if i + 1 < new_tokens:
                out = hf_model(step, use_cache=True, **{key: getattr(out, key)})
    return tokens.numpy()


def _demo_generation(path, model, ids, new_tokens: int) -> tuple[list[dict], bool]:
    """Each path three times (one session for the onnxruntime ones): the tokens of every run must equal
    eager torch's; the best time of the three is shown (tiny models time in microseconds)."""
    from onnxattn.cuda_ep import make_session
    from onnxattn.generate import generate, generate_torch

    runs = {"eager torch": lambda: generate_torch(model, ids, new_tokens)}
    for label, use_library in (("onnxruntime + onnxattn kernels", True), ("onnxruntime, reference functions", False)):
        session = make_session(path, use_library=use_library, providers=["CPUExecutionProvider"])
        runs[label] = lambda s=session: generate(s, ids, new_tokens, progress=False)
    rows, ok, want = [], True, None
    for label, run in runs.items():
        results = [run() for _ in range(3)]
        want = results[0].tokens if want is None else want
        same = all(np.array_equal(r.tokens, want) for r in results)
        ok = ok and same
        rows.append(dict(path=label, ttft_ms=min(r.time_to_first_token for r in results) * 1e3,
                         tokens_per_s=max(r.tokens_per_second for r in results), same_tokens=same))
    return rows, ok


def _demo_logits(path, model, batch: int, seq: int) -> list[dict]:
    """Prefill logits at a shape other than the traced one (dynamic axes at work), vs eager torch."""
    import torch

    from onnxattn.cuda_ep import make_session

    ids = torch.from_numpy(np.random.default_rng(7).integers(0, model.config.vocab_size, (batch, seq)))
    with torch.no_grad():
        expected = model(ids).numpy()
    rows = []
    for label, use_library in (("onnxruntime + onnxattn kernels", True), ("onnxruntime, reference functions", False)):
        session = make_session(path, use_library=use_library, providers=["CPUExecutionProvider"])
        feeds = {"input_ids": ids.numpy()}
        for inp in session.get_inputs()[1:]:
            feeds[inp.name] = np.zeros((batch, inp.shape[1], 0, inp.shape[3]), np.float32)
        (logits, *_), seconds = _timed(lambda: session.run(None, feeds), 2)
        rows.append(dict(path=label, ms=seconds * 1e3, max_abs_diff=float(np.max(np.abs(logits - expected)))))
    return rows


def cmd_demo(args) -> int:
    """Export a reference model (default: the Llama-style one), validate it, generate with it in
    onnxruntime with and without our kernels, and compare with eager torch."""
    import onnx

    from onnxattn import models
    from onnxattn.export import export_model

    for option, value in (("--batch", args.batch), ("--seq", args.seq), ("--new-tokens", args.new_tokens)):
        if value < 1:  # before the export, not after
            raise ValueError(f"demo: {option} must be at least 1, got {value}")
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="onnxattn-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.model or models.DEFAULT_MODEL
    model = models.build(name)
    if getattr(model, "kind", None) != "decoder":
        raise ValueError(f"demo: {name} is not a decoder with a KV cache; pick one of "
                         f"{', '.join(MODEL_NAMES['decoders'])}")
    cfg = model.config
    fields = ", ".join(f"{k} {getattr(cfg, k)}" for k in ("num_layers", "hidden", "num_heads", "num_kv_heads")
                       if hasattr(cfg, k))
    print(f"[1/5] model {name}: {type(cfg).__name__}({fields}), random weights (seed {cfg.seed})")
    result = export_model(model, out_dir / f"{name}.onnx", progress=False)
    proto = onnx.load(result.path)
    counts = collections.Counter(n.op_type for n in proto.graph.node if n.domain == "onnxattn")
    attn = ", ".join(f"{count} onnxattn::{op}" for op, count in sorted(counts.items()))
    print(f"[2/5] exported to {result.path} in {result.seconds:.1f}s: {len(proto.graph.node)} nodes, {attn}, "
          f"{len(proto.functions)} reference function(s); inputs input_ids + "
          f"past_key_values.*, outputs logits + present.* (dynamic batch, sequence, past)")
    report = result.report
    print("[3/5] " + str(report).replace("\n", "\n      "))
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 12))
    gen_rows, same = _demo_generation(result.path, result.model, ids, args.new_tokens)
    print(f"[4/5] greedy generation, batch 2, prompt 12, {args.new_tokens} new tokens (KV cache in onnxruntime):")
    print(f"      {'path':<34} {'first token':>12} {'decode':>14}   tokens == torch")
    for r in gen_rows:
        print(f"      {r['path']:<34} {r['ttft_ms']:10.1f}ms {r['tokens_per_s']:10.0f} tok/s   "
              f"{'yes' if r['same_tokens'] else 'NO'}")
    logit_rows = _demo_logits(result.path, result.model, args.batch, args.seq)
    print(f"[5/5] prefill logits for batch {args.batch}, sequence {args.seq} (traced at 2 x 5, past 3):")
    for r in logit_rows:
        print(f"      {r['path']:<34} {r['ms']:8.2f}ms   max |diff| vs torch {r['max_abs_diff']:.1e}")
    ok = report.ok and same and all(r["max_abs_diff"] < 1e-3 for r in logit_rows)
    print("demo: " + ("OK" if ok else "FAILED"))
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": ok, "model": name, "path": str(result.path),
                                               "generation": gen_rows, "logits": logit_rows}, indent=2))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxattn", description="Attention mechanisms as ONNX custom ops.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="export, validate and generate with a reference model; compare with torch")
    p.add_argument("--model", help=f"a decoder from onnxattn.models: {', '.join(MODEL_NAMES['decoders'])} "
                                   "(default: llama)")
    p.add_argument("--out", help="directory for the exported model (default: a temporary directory)")
    p.add_argument("--batch", type=int, default=3, help="batch of the prefill logits comparison")
    p.add_argument("--seq", type=int, default=37, help="sequence length of the prefill logits comparison")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--json", help="also write the report as JSON here")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a reference model to ONNX (past/present KV cache for decoders)")
    p.add_argument("model_name", help="a model from onnxattn.models ("
                   + ", ".join(MODEL_NAMES["decoders"] + MODEL_NAMES["others"])
                   + "), or a directory holding a transformers checkpoint of a supported architecture "
                     "(config.json + weights; see onnxattn.export.from_transformers)")
    p.add_argument("-o", "--output")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--cache", default="concat", choices=["concat", "shared"],
                   help="KV cache: concatenation (default) or shared preallocated buffers + past_lengths")
    p.add_argument("--logits", default="all", choices=["all", "last"], help="logits of every position or the last")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="config override, e.g. --set hidden=512")
    p.add_argument("--no-validate", action="store_true")
    p.add_argument("--external-data-threshold", type=int, metavar="BYTES",
                   help="save weights as external data above this size (default: 2 GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate tokens in onnxruntime with the KV cache (greedy or sampled)")
    p.add_argument("model", help="an exported decoder (.onnx), or a model name or transformers checkpoint "
                                 "directory (exported first)")
    p.add_argument("--ids", help="prompt token ids: '1,2,3' or rows '1,2;3,4' (default: random)")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="prompt text, tokenized by the checkpoint's tokenizer (or --tokenizer); repeat for a batch "
                        "of prompts of equal token length. The continuation is printed as text too")
    p.add_argument("--tokenizer", metavar="DIR", help="a transformers tokenizer directory (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=1, help="rows of the random prompt")
    p.add_argument("--prompt-length", type=int, default=8, help="length of the random prompt")
    p.add_argument("--vocab-size", type=int, help="vocabulary of the random prompt for a .onnx file (default: the rows "
                   "of the table input_ids index, else 256)")
    p.add_argument("-n", "--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-library", action="store_true", help="run the reference functions (plain onnxruntime)")
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compare-torch", action="store_true", help="also generate eagerly in torch and compare")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="config override for a model name")
    p.add_argument("--out", help="directory for the export of a model name (default: a temporary directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate", help="check a model's onnxattn nodes (schema, shapes, functions, numerics)")
    p.add_argument("model")
    p.add_argument("--numerics", action="store_true", help="also compare each node's kernel with its function")
    p.add_argument("--dim", action="append", metavar="NAME=SIZE", help="size of a symbolic dim for --numerics")
    p.add_argument("--provider", default="CPUExecutionProvider", help="onnxruntime execution provider: a full name, or "
                   "cpu / cuda")
    p.set_defaults(func=cmd_validate)

    for name, func, help_text in (("run", cmd_run, "run a model on random inputs"),
                                  ("bench", cmd_bench, "time a model with our kernels vs its reference functions")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("model")
        p.add_argument("--dim", action="append", metavar="NAME=SIZE",
                       help="size of a symbolic input dim (default 4; a shared cache's max_sequence: sequence + 4)")
        p.add_argument("--provider", help="onnxruntime execution provider: a full name, or cpu / cuda (default: CUDA "
                       "if available, else CPU)")
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
    except Exception as e:
        # bad requests, and onnxruntime's errors (a kernel's or shape inference's message about a bad model),
        # are the user's answer, not a bug of this command: their message without the traceback
        if not (isinstance(e, (FileNotFoundError, ValueError, KeyError)) or _from_onnxruntime(e)):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) quotes its message
        print(f"onnxattn {args.command}: error: {message}", file=sys.stderr)
        return 2


def _from_onnxruntime(e: Exception) -> bool:
    """An error onnxruntime raised: its own exception types, or a builtin one (RuntimeError from an I/O-bound run)
    raised in its Python package."""
    if type(e).__module__.startswith("onnxruntime."):
        return True
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).parts[-3:-1] == ("onnxruntime", "capi")


if __name__ == "__main__":
    sys.exit(main())
