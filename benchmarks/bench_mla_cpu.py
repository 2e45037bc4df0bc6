"""CPU benchmark of onnxattn::MultiHeadLatentAttention at decode: the kernel's absorbed form, its expanded form
(forced with ONNXATTN_MLA_PATH), and the reference function inlined by onnxruntime, side by side in one run.

DeepSeek-V3 attention sizes (# DeepSeek-V3: R=512, Dr=64, Dn=128, Dv=128) with H=16 heads (a 1/8 tensor-
parallel slice of its 128), fp32, B=1, one new token over P cached tokens in shared-buffer mode: the latent
caches are preallocated buffers bound with I/O binding (present bound to the past's OrtValue), so the kernel
appends in place. Reported: ms (median over --repeat rounds of bursts, cpu_timing.py as every CPU benchmark:
in each round every implementation a pause of --settle seconds, one untimed call, then timed calls for at
least --burst seconds), the cache read in GB/s ((P+1) * (R+Dr) * 4 bytes: what the absorbed form must stream),
and GFLOP/s of the form's own multiply-adds (absorbed: H * (R*(Dn+Dv) + (P+1)*(2R+Dr)); expanded:
H * ((P+1)*R*(Dn+Dv) + (P+1)*(Dn+Dr+Dv)); the function: absorbed's, the form it picks at decode; 2 FLOPs each).
The kernel's cost model (mla/params.h) and the path it picks on its own are printed too.

A second table checks the cost model where the choice is close: causal chunks of S tokens over P cached
ones (concatenation mode), both forms forced (max(2, --repeat // 3) rounds of bursts), and the form the
kernel picks by itself.

A third table is the absorbed decode step with inputs, weights and caches in each of --dtypes (float32, float16,
bfloat16; the same draw rounded), in the same rounds: time as a ratio to float32's, cache read in GB/s at the
dtype's width, and the relative error against float32's output.

A fourth is batched decode (--batches, against B=1 in the same rounds): B sequences of --batch-past tokens each,
one new token per sequence, time per sequence as a ratio to B=1's.

A fifth table is DeepSeek-V3.2's sparse attention (DSA) at decode: the same step with key_indices listing K
of the P + 1 keys (--indexed K, DeepSeek-V3.2's index_topk is 2048; distinct random keys) against the dense
absorbed step over all of them, both in the kernel, same rounds: the indexed path gathers and scores only the
listed rows, so its time should follow K, not P.

    python benchmarks/bench_mla_cpu.py [--past 4096] [--heads 16] [--repeat 10] [--threads 0] [--settle 0.1]
                                       [--burst 0.02] [--indexed 2048] [--indexed-past 8192 32768]
                                       [--dtypes float32 float16 bfloat16] [--batches 16 64] [--batch-past 1024]
                                       [--out ...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cuda_ep import library_path, make_session

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

R, DR, DN, DV = 512, 64, 128, 128
F32, I64 = TensorProto.FLOAT, TensorProto.INT64


def mla_model(heads: int, indexed: bool = False, elem: int = F32):
    names = ["q", "latent", "k_rope", "w_uk", "w_uv", "past_latent", "past_k_rope", "past_lengths"]
    names += ["", "", "key_indices"] if indexed else []
    node = helper.make_node("MultiHeadLatentAttention", names, ["y", "present_latent", "present_k_rope"],
                            domain=ops.DOMAIN, num_heads=heads, rope_interleaved=1)
    vi = helper.make_tensor_value_info
    inputs = [vi("q", elem, ["B", 1, heads * (DN + DR)]), vi("latent", elem, ["B", 1, R]),
              vi("k_rope", elem, ["B", 1, DR]), vi("w_uk", elem, [heads, R, DN]), vi("w_uv", elem, [heads, R, DV]),
              vi("past_latent", elem, ["B", "M", R]), vi("past_k_rope", elem, ["B", "M", DR]),
              vi("past_lengths", I64, ["B"])]
    inputs += [vi("key_indices", I64, ["B", 1, "K"])] if indexed else []
    outputs = [vi("y", elem, ["B", 1, heads * DV]), vi("present_latent", elem, ["B", "M", R]),
               vi("present_k_rope", elem, ["B", "M", DR])]
    model = helper.make_model(helper.make_graph([node], "mla", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


@contextlib.contextmanager
def forced_path(path: str | None):
    old = os.environ.pop("ONNXATTN_MLA_PATH", None)
    if path:
        os.environ["ONNXATTN_MLA_PATH"] = path
    try:
        yield
    finally:
        os.environ.pop("ONNXATTN_MLA_PATH", None)
        if old is not None:
            os.environ["ONNXATTN_MLA_PATH"] = old


def kernel_choice(heads: int, past: int) -> tuple[str, float, float]:
    """The CPU kernel's own choice for this decode step and its cost estimates (multiply-adds)."""
    lib = ctypes.CDLL(str(library_path()))
    fn = lib.OnnxAttnMlaCpuPath
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_int64] * 10 + [ctypes.POINTER(ctypes.c_double)] * 2
    absorbed, expanded = ctypes.c_double(), ctypes.c_double()
    with forced_path(None):
        path = fn(1, 1, heads, R, DN, DR, DV, past, 1, 0, ctypes.byref(absorbed), ctypes.byref(expanded)).decode()
    return path, absorbed.value, expanded.value


def forced_run(path: str | None, run):
    """`run` with ONNXATTN_MLA_PATH forced to `path` (None: the kernel's own choice)."""

    def call():
        with forced_path(path):
            run()

    return call


def decode_inputs(heads: int, past: int, rng, batch: int = 1) -> tuple[dict, np.ndarray, np.ndarray]:
    """One new token's feeds per sequence, and latent / rope-key buffers of P + 64 slots with P valid."""
    feeds = {"q": rng.standard_normal((batch, 1, heads * (DN + DR)), np.float32),
             "latent": rng.standard_normal((batch, 1, R), np.float32),
             "k_rope": rng.standard_normal((batch, 1, DR), np.float32),
             "w_uk": (rng.standard_normal((heads, R, DN)) / np.sqrt(R)).astype(np.float32),
             "w_uv": (rng.standard_normal((heads, R, DV)) / np.sqrt(R)).astype(np.float32),
             "past_lengths": np.full(batch, past, np.int64)}
    return (feeds, rng.standard_normal((batch, past + 64, R), np.float32),
            rng.standard_normal((batch, past + 64, DR), np.float32))


def bound_session(model, feeds: dict, latent: np.ndarray, rope: np.ndarray, threads: int, library: bool = True):
    """A session with its inputs bound and copies of the buffers as the pasts; with the library the presents are
    bound to them too (the kernel appends in place; the function's presents are new buffers, ScatterElements)."""
    options = ort.SessionOptions()  # one per session: the library registers on it
    options.intra_op_num_threads = threads
    session = make_session(model, providers=["CPUExecutionProvider"], use_library=library, session_options=options)
    buffers = (ort.OrtValue.ortvalue_from_numpy(latent.copy()), ort.OrtValue.ortvalue_from_numpy(rope.copy()))
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    binding.bind_ortvalue_input("past_latent", buffers[0])
    binding.bind_ortvalue_input("past_k_rope", buffers[1])
    binding.bind_output("y")
    if library:
        binding.bind_ortvalue_output("present_latent", buffers[0])
        binding.bind_ortvalue_output("present_k_rope", buffers[1])
    else:
        binding.bind_output("present_latent")
        binding.bind_output("present_k_rope")
    return session, binding, buffers


def bench_decode(heads: int, past: int, repeat: int, threads: int, with_function: bool,
                 settle: float = cpu_timing.SETTLE, burst: float = cpu_timing.BURST) -> list[dict]:
    feeds, latent, rope = decode_inputs(heads, past, np.random.default_rng(0))
    model = mla_model(heads)
    impls = {"absorbed": ("absorbed", True), "expanded": ("expanded", True)}
    if with_function:
        impls["function"] = (None, False)
    sessions, outputs = {}, {}
    for impl, (path, library) in impls.items():
        session, binding, buffers = bound_session(model, feeds, latent, rope, threads, library)
        sessions[impl] = (session, binding, path, buffers)
        with forced_path(path):
            session.run_with_iobinding(binding)
        outputs[impl] = binding.copy_outputs_to_cpu()[0]
    for impl, y in outputs.items():
        err = float(np.max(np.abs(y - outputs["absorbed"])) / np.max(np.abs(outputs["absorbed"])))
        if err > 1e-4:
            raise SystemExit(f"decode P={past}: {impl} disagrees with the absorbed kernel (relative error {err:.2e})")

    flops = {"absorbed": 2 * heads * (R * (DN + DV) + (past + 1) * (2 * R + DR)),
             "expanded": 2 * heads * ((past + 1) * R * (DN + DV) + (past + 1) * (DN + DR + DV))}
    flops["function"] = flops["absorbed"]  # the function picks its form by the kernel's rule: absorbed at decode
    runs = {impl: forced_run(path, lambda session=session, binding=binding: session.run_with_iobinding(binding))
            for impl, (session, binding, path, _) in sessions.items()}
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    rows = []
    cache_bytes = (past + 1) * (R + DR) * 4
    for impl in impls:
        seconds = median[impl]
        rows.append({"phase": "decode", "H": heads, "P": past, "impl": impl, "ms": seconds * 1e3,
                     "cache_gbps": cache_bytes / seconds / 1e9, "gflops": flops[impl] / seconds / 1e9,
                     "max_rel_error_vs_absorbed": float(np.max(np.abs(outputs[impl] - outputs["absorbed"]))
                                                        / np.max(np.abs(outputs["absorbed"])))})
    return rows


def bench_indexed(heads: int, past: int, listed: int, repeat: int, threads: int, settle: float = cpu_timing.SETTLE,
                  burst: float = cpu_timing.BURST) -> dict:
    """One decode step over P cached tokens, dense (every key) and indexed (K distinct random keys), both the
    kernel in shared-buffer mode with the caches bound in place."""
    rng = np.random.default_rng(1)
    feeds, latent, rope = decode_inputs(heads, past, rng)
    indices = rng.choice(past + 1, size=min(listed, past + 1), replace=False).astype(np.int64)[None, None]
    runs = {}
    for impl, indexed in (("dense", False), ("indexed", True)):
        session, binding, _ = bound_session(mla_model(heads, indexed),
                                            dict(feeds, key_indices=indices) if indexed else feeds, latent, rope,
                                            threads)
        session.run_with_iobinding(binding)
        runs[impl] = lambda session=session, binding=binding: session.run_with_iobinding(binding)
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    return {"phase": "indexed", "H": heads, "P": past, "K": indices.shape[-1], "dense_ms": median["dense"] * 1e3,
            "indexed_ms": median["indexed"] * 1e3, "speedup": median["dense"] / median["indexed"]}


# The dtype table's element types: ONNX type and the numpy storage of its bits (bfloat16 as uint16, wrapped with
# ortvalue_from_numpy_with_onnx_type: onnxruntime's Python API has no bfloat16 arrays).
DTYPES = {"float32": (F32, np.float32), "float16": (TensorProto.FLOAT16, np.float16),
          "bfloat16": (TensorProto.BFLOAT16, ml_dtypes.bfloat16)}
# Against float32's output, relative to its largest value: ~10 ulps of the dtype (2^-10, 2^-7). The inputs' own
# rounding dominates (measured: 6e-4 and 5e-3 at P = 4096); a wrong conversion is off by O(1).
DTYPE_TOLERANCE = {"float32": 0.0, "float16": 1e-2, "bfloat16": 8e-2}


def bench_dtypes(heads: int, past: int, dtypes, repeat: int, threads: int, settle: float = cpu_timing.SETTLE,
                 burst: float = cpu_timing.BURST) -> list[dict]:
    """The absorbed kernel's decode step with every input and cache in each dtype (values rounded from the same
    float32 draw), in place through I/O binding, all dtypes in the same rounds. 16-bit caches halve the bytes
    the step streams; the weights W_UK / W_UV are 16-bit too."""
    feeds, latent, rope = decode_inputs(heads, past, np.random.default_rng(3))
    runs, outputs, keep = {}, {}, []
    for name in dtypes:
        elem, storage = DTYPES[name]

        def value(x, elem=elem, storage=storage):
            bits = np.ascontiguousarray(np.asarray(x).astype(storage))
            if storage is ml_dtypes.bfloat16:
                bits = bits.view(np.uint16)
            keep.append(bits)  # the OrtValue wraps these bytes
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, elem)

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = make_session(mla_model(heads, elem=elem), providers=["CPUExecutionProvider"],
                               session_options=options)
        binding = session.io_binding()
        for key, x in feeds.items():
            if key == "past_lengths":
                binding.bind_cpu_input(key, x)
            else:
                binding.bind_ortvalue_input(key, value(x))
        caches = value(latent), value(rope)
        binding.bind_ortvalue_input("past_latent", caches[0])
        binding.bind_ortvalue_input("past_k_rope", caches[1])
        binding.bind_ortvalue_output("present_latent", caches[0])
        binding.bind_ortvalue_output("present_k_rope", caches[1])
        binding.bind_ortvalue_output("y", value(np.zeros((1, 1, heads * DV), np.float32)))
        y = keep[-1]  # the output's bytes
        with forced_path("absorbed"):
            session.run_with_iobinding(binding)
        outputs[name] = (y.view(ml_dtypes.bfloat16) if storage is ml_dtypes.bfloat16 else y).astype(np.float32)
        runs[name] = forced_run("absorbed", lambda session=session, binding=binding:
                                session.run_with_iobinding(binding))
    reference = outputs.get("float32")
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    rows = []
    for name in dtypes:
        seconds, size = median[name], np.dtype(DTYPES[name][1]).itemsize
        err = (None if reference is None
               else float(np.max(np.abs(outputs[name] - reference)) / np.max(np.abs(reference))))
        if err is not None and err > DTYPE_TOLERANCE[name]:
            raise SystemExit(f"decode P={past}: {name} disagrees with float32 (relative error {err:.2e})")
        rows.append({"phase": "dtype", "H": heads, "P": past, "dtype": name, "ms": seconds * 1e3,
                     "cache_gbps": (past + 1) * (R + DR) * size / seconds / 1e9,
                     "vs_float32": seconds / median["float32"] if "float32" in median else None,
                     "max_rel_error_vs_float32": err})
    return rows


def bench_batches(heads: int, past: int, batches, repeat: int, threads: int, settle: float = cpu_timing.SETTLE,
                  burst: float = cpu_timing.BURST) -> list[dict]:
    """Batched decode: one new token for each of B sequences of P cached tokens (the absorbed kernel, fp32, shared
    buffers in place), every B in the same rounds with B = 1 as the reference. The B sequences repeat one drawn
    sequence, so every row of the output must be B = 1's; per sequence the attention work is the same at every B,
    what batching can share is the pass over the weights W_UK / W_UV."""
    model, runs = mla_model(heads), {}
    feeds, latent, rope = decode_inputs(heads, past, np.random.default_rng(4))
    reference = None
    for batch in sorted({1, *batches}):
        tiled = {k: v if k.startswith("w_") else np.repeat(v, batch, axis=0) for k, v in feeds.items()}
        session, binding, _ = bound_session(model, tiled, np.repeat(latent, batch, axis=0),
                                            np.repeat(rope, batch, axis=0), threads)
        with forced_path("absorbed"):
            session.run_with_iobinding(binding)
        y = binding.copy_outputs_to_cpu()[0]
        reference = y if reference is None else reference
        if not np.allclose(y, reference, rtol=1e-5, atol=1e-6):
            raise SystemExit(f"batched decode B={batch} P={past}: a sequence differs from the B=1 step")
        runs[batch] = forced_run("absorbed", lambda session=session, binding=binding:
                                 session.run_with_iobinding(binding))
    median = cpu_timing.median_rounds(runs, repeat, settle, burst)
    return [{"phase": "batch", "H": heads, "P": past, "B": batch, "ms": median[batch] * 1e3,
             "ms_per_sequence": median[batch] / batch * 1e3, "per_sequence_vs_b1": median[batch] / batch / median[1]}
            for batch in sorted(median)]


def chunk_model(heads: int):
    names = ["q", "latent", "k_rope", "w_uk", "w_uv", "past_latent", "past_k_rope"]
    node = helper.make_node("MultiHeadLatentAttention", names, ["y"], domain=ops.DOMAIN, num_heads=heads,
                            rope_interleaved=1)
    vi = helper.make_tensor_value_info
    inputs = [vi("q", F32, [1, "S", heads * (DN + DR)]), vi("latent", F32, [1, "S", R]),
              vi("k_rope", F32, [1, "S", DR]), vi("w_uk", F32, [heads, R, DN]), vi("w_uv", F32, [heads, R, DV]),
              vi("past_latent", F32, [1, "P", R]), vi("past_k_rope", F32, [1, "P", DR])]
    model = helper.make_model(helper.make_graph([node], "mla", inputs, [vi("y", F32, [1, "S", heads * DV])]),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def bench_chunks(heads: int, shapes, repeat: int, threads: int, settle: float = cpu_timing.SETTLE,
                 burst: float = cpu_timing.BURST) -> list[dict]:
    """Causal chunks: both forms forced, and the kernel's own choice (cost model check)."""
    rng = np.random.default_rng(2)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = make_session(chunk_model(heads), providers=["CPUExecutionProvider"], session_options=options)
    rows = []
    for seq, past in shapes:
        f = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(np.float32)  # noqa: E731
        feeds = {"q": f(1, seq, heads * (DN + DR)), "latent": f(1, seq, R), "k_rope": f(1, seq, DR),
                 "w_uk": f(heads, R, DN, scale=R**-0.5), "w_uv": f(heads, R, DV, scale=R**-0.5),
                 "past_latent": f(1, past, R), "past_k_rope": f(1, past, DR)}
        runs = {path: forced_run(path, lambda: session.run(None, feeds)) for path in ("absorbed", "expanded")}
        times = cpu_timing.median_rounds(runs, max(2, repeat // 3), settle, burst)
        fn = ctypes.CDLL(str(library_path())).OnnxAttnMlaCpuPath
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_int64] * 10 + [ctypes.POINTER(ctypes.c_double)] * 2
        with forced_path(None):
            chosen = fn(1, seq, heads, R, DN, DR, DV, past, 1, 0, None, None).decode()
        faster = min(times, key=times.get)
        rows.append({"phase": "chunk", "H": heads, "S": seq, "P": past, "absorbed_ms": times["absorbed"] * 1e3,
                     "expanded_ms": times["expanded"] * 1e3, "chosen": chosen, "faster": faster})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--past", type=int, nargs="+", default=[4096])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=10, help="rounds of bursts (chunks: max(2, repeat // 3))")
    cpu_timing.add_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    parser.add_argument("--no-function", action="store_true", help="skip the inlined reference function")
    parser.add_argument("--chunks", nargs="*", default=["16x0", "256x0", "64x2048", "256x2048"],
                        help="SxP causal chunks for the cost-model table (none: skip it)")
    parser.add_argument("--indexed", type=int, default=2048, help="DSA table: K listed keys (0: skip the table)")
    parser.add_argument("--indexed-past", type=int, nargs="*", default=[8192, 32768], help="DSA table: cache lengths")
    parser.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES),
                        help="dtype table: the absorbed decode step in each (none: skip it)")
    parser.add_argument("--batches", type=int, nargs="*", default=[16, 64],
                        help="batched decode table: B sequences in one step, against B=1 (none: skip it)")
    parser.add_argument("--batch-past", type=int, default=1024, help="batched decode table: P per sequence")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    rows, choices = [], {}
    load_before = cpu_timing.load_average()  # other work on the machine: recorded with the rows
    for past in args.past:
        rows += bench_decode(args.heads, past, args.repeat, args.threads, not args.no_function, args.settle,
                             args.burst)
        choices[past] = kernel_choice(args.heads, past)

    print(f"\nMultiHeadLatentAttention decode, fp32, B=1, H={args.heads}, R={R}, Dr={DR}, Dn={DN}, Dv={DV}, "
          f"shared buffer in place; onnxruntime {ort.__version__}, threads={args.threads or 'default'}")
    print(f"  {'impl':<10} {'P':>6} {'ms':>9} {'cache GB/s':>11} {'GFLOP/s':>9} {'vs absorbed':>12}  rel err")
    for r in rows:
        base = next(x for x in rows if x["P"] == r["P"] and x["impl"] == "absorbed")
        print(f"  {r['impl']:<10} {r['P']:>6} {r['ms']:9.2f} {r['cache_gbps']:11.2f} {r['gflops']:9.1f} "
              f"{r['ms'] / base['ms']:11.1f}x  {r['max_rel_error_vs_absorbed']:.1e}")
    for past, (path, absorbed, expanded) in choices.items():
        print(f"  kernel's own choice at P={past}: {path} (cost model: absorbed {absorbed / 1e6:.1f}M, "
              f"expanded {expanded / 1e6:.1f}M multiply-adds)")
    if args.dtypes:
        dtype_rows = [row for past in args.past for row in bench_dtypes(args.heads, past, args.dtypes, args.repeat,
                                                                          args.threads, args.settle, args.burst)]
        rows += dtype_rows
        print("the absorbed kernel's decode step by dtype (inputs, weights and caches), same rounds:")
        print(f"  {'dtype':<9} {'P':>6} {'ms':>9} {'cache GB/s':>11} {'vs float32':>11}  rel err vs float32")
        for r in dtype_rows:
            ratio = "" if r["vs_float32"] is None else f"{r['vs_float32']:10.2f}x"
            err = "" if r["max_rel_error_vs_float32"] is None else f"{r['max_rel_error_vs_float32']:.1e}"
            print(f"  {r['dtype']:<9} {r['P']:>6} {r['ms']:9.2f} {r['cache_gbps']:11.2f} {ratio:>11}  {err}")
    if args.batches:
        batch_rows = bench_batches(args.heads, args.batch_past, args.batches, args.repeat, args.threads, args.settle,
                                   args.burst)
        rows += batch_rows
        print(f"batched decode, absorbed, fp32, P={args.batch_past} per sequence, same rounds:")
        print(f"  {'B':>4} {'ms':>9} {'ms / sequence':>14} {'vs B=1':>7}")
        for r in batch_rows:
            print(f"  {r['B']:>4} {r['ms']:9.2f} {r['ms_per_sequence']:14.3f} {r['per_sequence_vs_b1']:6.2f}x")
    shapes = [tuple(int(x) for x in c.split("x")) for c in args.chunks]
    if shapes:
        chunk_rows = bench_chunks(args.heads, shapes, args.repeat, args.threads, args.settle, args.burst)
        rows += chunk_rows
        print("causal chunks of S tokens over P cached ones (concatenation mode):")
        print(f"  {'S':>5} {'P':>6} {'absorbed ms':>12} {'expanded ms':>12}  chosen    faster")
        for r in chunk_rows:
            print(f"  {r['S']:>5} {r['P']:>6} {r['absorbed_ms']:12.2f} {r['expanded_ms']:12.2f}  {r['chosen']:<9} "
                  f"{r['faster']}")
    if args.indexed > 0 and args.indexed_past:
        indexed_rows = [bench_indexed(args.heads, past, args.indexed, args.repeat, args.threads, args.settle,
                                      args.burst) for past in args.indexed_past]
        rows += indexed_rows
        print("DeepSeek sparse attention (key_indices), decode: K listed keys of P + 1, both the kernel:")
        print(f"  {'P':>6} {'K':>5} {'dense ms':>9} {'indexed ms':>11} {'dense / indexed':>16}")
        for r in indexed_rows:
            print(f"  {r['P']:>6} {r['K']:>5} {r['dense_ms']:9.2f} {r['indexed_ms']:11.2f} {r['speedup']:15.1f}x")
    load = [load_before, cpu_timing.load_average()]
    print(f"load average {load[0]} -> {load[1]}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "mla_cpu.json"
    from bench_sdpa_cpu import machine  # same machine description as the other CPU benchmarks

    timing = {"repeat": args.repeat, "settle": args.settle, "burst": args.burst}
    path.write_text(json.dumps({"machine": machine(), "onnxruntime": ort.__version__, "threads": args.threads,
                                "load_average": load, "timing": timing,
                                "choices": {str(p): c[0] for p, c in choices.items()}, "rows": rows}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
