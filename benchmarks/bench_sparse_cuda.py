"""CUDA benchmark of the sparse attention ops (issue 7): onnxattn::NativeSparseAttention and
onnxattn::SparseRoutedAttention through onnxruntime's CUDA EP with our library, against our dense causal
ScaledDotProductAttention and torch SDPA (flash and cuDNN backends), same process, same device.

Shape (issue 7's GPU benchmark, in bench_sparse_cpu.py's configuration): B=1, Hq=16, Hkv=2, D=128, bfloat16,
causal prefill, S in {16k, 64k} (--quick: {4k, 16k}):
  - nsa:       NativeSparseAttention, the paper's decoder form: causal, GQA-shared selection driven by the
               compression branch (compressed tokens = block means, given as inputs), blocks of 64, top 16
               (1 sink + 1 local + the own block among them), sliding window 512, gates [B,Hq,S,3];
  - nsa_dot:   the same without the compression branch: blocks scored by the group's queries . mean keys;
  - nsa_simple: nsa on the first, simple CUDA kernels (ONNXATTN_SPARSE_CUDA=simple: a CTA per selection
               list, a warp per row): what the fast path (ONNXATTN_SPARSE_CUDA=fast, asked for by nsa, nsa_dot
               and routed: tiled selection, NSA's branches on the attention core) gains;
  - routed:    SparseRoutedAttention, the MoBA form: segments of 64, top 16 incl. the own, dot-product routing
               after RoPE (fast: its attention by segment, each chosen segment read once per slot);
  - routed_simple: routed on the simple kernels (a warp per row reading its own segments);
  - nsa_mma, nsa_dot_mma, routed_mma: nsa, nsa_dot and routed with ONNXATTN_SPARSE_CUDA=mma (the default since
               stop 23; nsa, nsa_dot and routed ask for fast explicitly): the block
               branch / the routed attention on the tensor-core kernel by block (each chosen block staged once per
               slot for up to 64 rows, mma.sync) and NSA's selection on tensor cores, the rest as fast; with the
               kernels that load in turn and the shuffle argmax, pinned (ONNXATTN_SPARSE_CUDA_LOADS=sync,
               ONNXATTN_SPARSE_CUDA_ARGMAX=shuffle): the old kernels, as these columns recorded them before 82087dc;
  - nsa_mma_async, routed_mma_async: nsa_mma and routed_mma with the latency work (the same bits), the default
               since the H200 run at 82087dc (NSA 9.49 -> 4.58 ms at 16k, 40.49 -> 23.66 at 64k; routed 13.59 ->
               7.93, 111.0 -> 70.44): ONNXATTN_SPARSE_CUDA_LOADS=async (the tensor-core kernels, by block and
               selection, with their loads overlapped) and ONNXATTN_SPARSE_CUDA_ARGMAX=redux (the selection's
               argmax by warp reductions; nsa, nsa_dot and routed take it too);
  - nsa_mma_tiles, routed_mma_tiles: nsa_mma_async and routed_mma_async by query tiles (opt-in, slower on that
               run, not the same bits): ONNXATTN_SPARSE_CUDA_BLOCKS=queries, a CTA per run of consecutive queries
               walking the union of their lists, outputs in registers, instead of the inverted lists and their
               per-slot merges;
  - dense:     our ScaledDotProductAttention CUDA kernel (causal, GQA) through the library's C test entry
               (tests/gpu/sdpa_cuda_lib.py, as bench_sdpa_cuda.py);
  - dense_ort: the same op through onnxruntime's CUDA EP: the sparse ops' path, so sparse/dense compares like
               with like;
  - torch_flash, torch_cudnn: torch SDPA, is_causal, enable_gqa (K/V expanded to 16 heads when a backend
               refuses enable_gqa; the row's notes say so).
Each onnxruntime node is checked to run on CUDAExecutionProvider (from onnxruntime's profile of a first run
at S=1024) before it is timed; a node placed elsewhere is an error in every row (and exit status 1).

Reported per S: ms; TFLOP/s over the keys each one attends to (4*D per query head, row and key: the causal
triangle for the dense ones, the selected blocks (+ window + compressed tokens for nsa) for the sparse ones,
as bench_sparse_cpu.attended_keys; selection and compression work comes on top); and time ratios
nsa/dense, routed/dense (dense = dense_ort, else the C entry) and nsa/torch, routed/torch (torch = the faster
backend), nsa/nsa_simple and routed/routed_simple, nsa_mma/nsa, nsa_dot_mma/nsa_dot, routed_mma/routed,
nsa_mma_async/nsa_mma, routed_mma_async/routed_mma, nsa_mma_tiles/nsa_mma_async and
routed_mma_tiles/routed_mma_async: below 1,
the first is faster. Anchors (issue 7, FlashMoBA on H100): NSA kernels ~6-9x faster than
FA2 at 64k (ratio ~0.11-0.17), MoBA ~6x (~0.17).

Timers: onnxruntime by wall clock around run_with_iobinding (which synchronises; its per-run overhead of tens
of microseconds is noise at these sizes); torch and the C entry by CUDA events around one call, or a CUDA
graph of back-to-back calls when a call is under 5 ms. Per implementation: a warm-up call, a call that
estimates the time, then as many repeats (up to --repeats) as its share of the time budget allows; median.
--budget-s (from start) keeps the run inside gpu_check.sh's cap: a call predicted (from the smaller S,
quadratically) to take over half its share runs once without warm-up, one predicted past the budget is
recorded as skipped. An error (an allocation failure included) is recorded in its row and the run goes on;
the exit status is 1 when one of ours failed otherwise (a node off the CUDA EP included).

Usage: python benchmarks/bench_sparse_cuda.py [--out FILE_OR_DIR] [--quick] [--seqs 16384,65536]
Prints one table and writes JSON with date, device, driver and commit (after every measurement).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the time budget counts imports too (gpu_check.sh caps the whole process)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import ort_cuda  # noqa: E402
import sdpa_cuda_lib as lib  # noqa: E402
from bench_sdpa_cuda import env_vars, environment, time_cuda, time_graph, time_wall  # noqa: E402
from bench_sparse_cpu import BLOCK, CASES, D, HKV, HQ, TOP, WINDOW, attended_keys  # noqa: E402
from sparse_columns import COLUMNS, PATHS  # noqa: E402

DTYPE = torch.bfloat16
IMPLS = tuple(c.name for c in sorted(COLUMNS, key=lambda c: c.run))  # run and table order: Column.run
NSA_DOT = ("NativeSparseAttention", ["Q", "K", "V", "gates"], CASES["nsa"][2])
# implementation -> (op, inputs, attributes) and the environment its runs see (grouped by path: the recorded config)
ORT_CASES = {c.name: NSA_DOT if c.case == "nsa_dot" else CASES[c.case] for c in COLUMNS if c.case}
ORT_ENV = {c.name: env for path, env in PATHS.items() for c in COLUMNS if c.path == path}
TORCH_BACKENDS = {c.name: c.backend for c in COLUMNS if c.backend}
SPARSE = tuple(c.name for c in COLUMNS if c.kind == "sparse")
# the dense reference: the one through onnxruntime (the sparse ops' path) when measured, else the C entry
DENSE = tuple(c.name for c in sorted((c for c in COLUMNS if c.kind == "dense"), key=lambda c: not c.case))
TORCH = tuple(c.name for c in COLUMNS if c.kind == "torch")
FAST_VS_SIMPLE = tuple((c.name, c.baseline) for c in COLUMNS if c.baseline)
PROBE_SEQ = 1024  # the placement check's run
SKIPPED = "skipped: "
CAP_MARGIN_S = 4.0  # past --budget-s, before gpu_check.sh's cap (40 s) ends the process


# ---- problem and onnxruntime sessions
def ort_model(case: tuple) -> bytes:
    """One node (op, inputs, attributes) with bfloat16 inputs and output (fed by I/O binding), functions attached."""
    from onnx import TensorProto, helper

    from onnxattn import ops

    op, inputs, attrs = case
    shapes = {"Q": [1, HQ, "S", D], "K": [1, HKV, "S", D], "V": [1, HKV, "S", D], "gates": [1, HQ, "S", 3],
              "compressed_key": [1, HKV, "N", D], "compressed_value": [1, HKV, "N", D], "position_ids": [1, "S"]}  # fmt: skip
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["Y"], domain=ops.DOMAIN, **attrs)], op,
        [vi(n, TensorProto.INT64 if n == "position_ids" else TensorProto.BFLOAT16, shapes[n]) for n in inputs],
        [vi("Y", TensorProto.BFLOAT16, [1, HQ, "S", D])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)  # fmt: skip
    return ops.attach_functions(model).SerializeToString()


def problem(s: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every input of the three ops at sequence length s (random normal Q/K/V, as bench_sparse_cpu)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, h, s, D, generator=gen, device="cuda", dtype=DTYPE) for h in (HQ, HKV, HKV))
    n = s // BLOCK
    mean = lambda x: x[:, :, : n * BLOCK].float().reshape(1, HKV, n, BLOCK, D).mean(3).to(DTYPE)  # noqa: E731
    t = {"Q": q, "K": k, "V": v, "compressed_key": mean(k), "compressed_value": mean(v),
         "gates": torch.empty(1, HQ, s, 3, device="cuda", dtype=DTYPE).uniform_(0.2, 0.8, generator=gen),
         "position_ids": torch.arange(s, device="cuda", dtype=torch.int64)[None]}  # fmt: skip
    torch.cuda.synchronize()  # onnxruntime reads them on its own stream
    return t


class OrtOp:
    """One onnxattn node in an onnxruntime CUDA EP session with our library, inputs and Y bound to torch
    CUDA tensors. Creating it runs the node once at S=PROBE_SEQ with profiling and raises unless the node ran
    on CUDAExecutionProvider (profiling ends with that check)."""

    def __init__(self, ort, case: tuple, env: dict | None = None):
        self.op, self.inputs, _ = case
        self.env = env or {}
        with tempfile.TemporaryDirectory() as tmp:
            self.sess = ort_cuda.session(ort, ort_model(case), library=lib.library_path(),
                                         profile_prefix=str(Path(tmp) / "ort"))  # fmt: skip
            self.bind(problem(PROBE_SEQ))
            self()
            self.providers = sorted(ort_cuda.node_providers(self.sess, self.op))
        self.release()
        if self.providers != [ort_cuda.CUDA_EP]:
            raise RuntimeError(f"placement: {self.op} ran on {self.providers or 'no provider'}, "
                               f"not {ort_cuda.CUDA_EP}")  # fmt: skip

    def bind(self, t: dict[str, torch.Tensor]) -> None:
        s = t["Q"].shape[2]
        y = torch.empty(1, HQ, s, D, device="cuda", dtype=DTYPE)
        binding = self.sess.io_binding()
        for name in self.inputs:
            x = t[name]
            binding.bind_input(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
        binding.bind_output("Y", "cuda", 0, ort_cuda.onnx_type(y.dtype), tuple(y.shape), y.data_ptr())
        self.binding, self.keep = binding, (t, y)

    def release(self) -> None:
        self.binding = self.keep = None

    def __call__(self) -> None:
        with env_vars(self.env):  # read by the kernels on every run
            self.sess.run_with_iobinding(self.binding)


def torch_call(name: str, t: dict[str, torch.Tensor], notes: dict):
    """torch SDPA on one backend, enable_gqa; K/V expanded to Hq heads when the backend refuses GQA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, TORCH_BACKENDS[name])
    q = t["Q"]

    def call(k=t["K"], v=t["V"], gqa=True):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    try:
        call()
        torch.cuda.synchronize()
        return call
    except torch.cuda.OutOfMemoryError:
        raise
    except RuntimeError as e:
        refusal = str(e).splitlines()[0][:160]
    k, v = (t[n].repeat_interleave(HQ // HKV, dim=1) for n in ("K", "V"))
    notes[name] = f"K/V expanded to {HQ} heads (enable_gqa refused: {refusal})"
    return lambda: call(k, v, False)


# ---- timing
class Budget:
    def __init__(self, seconds: float):
        self.deadline = START + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def measure(fn, timer: str, share_s: float, max_repeats: int, predicted_s: float = 0.0) -> dict:
    """{'ms', 'timer', 'repeats', 'estimate_s'}: a warm-up call (one-time costs), a call that estimates the
    time, then as many repeats as the rest of share_s allows (at most max_repeats); when none fits, the
    estimating call (wall clock) is the result. When the predicted time of a call is over half the share,
    one call without warm-up is all (wall clock)."""
    t0 = time.perf_counter()
    if 2 * predicted_s > share_s:
        fn()
        torch.cuda.synchronize()
        est = time.perf_counter() - t0
        return {"ms": est * 1e3, "timer": "wall, one call (no warm-up: the time budget)", "repeats": 1,
                "estimate_s": est}  # fmt: skip
    fn()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est = time.perf_counter() - t1
    rest = share_s - (time.perf_counter() - t0)
    out = {"ms": est * 1e3, "timer": "wall, one call", "repeats": 1, "estimate_s": est}
    if rest < est:
        return out
    repeats = out["repeats"] = max(1, min(max_repeats, int(rest / max(est, 1e-6))))
    if timer == "wall":
        out.update(ms=time_wall(fn, warmup=0, repeats=repeats), timer="wall")
    elif est < 5e-3:  # short calls: host launch overhead would count; replay back-to-back calls from a graph
        calls = max(2, min(20, int(0.02 / max(est, 1e-6))))
        out.update(ms=time_graph(fn, calls=calls, repeats=repeats), timer=f"graph x{calls}")
    else:
        out.update(ms=time_cuda(fn, warmup=0, repeats=repeats), timer="cuda events")
    return out


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def is_oom(text: str) -> bool:
    return any(s in text for s in ("OutOfMemoryError", "out of memory", "Failed to allocate", "CUDNN_STATUS_ALLOC"))


# ---- derived numbers and the table (pure: tests/test_bench_sparse_cuda.py feeds them fake rows)
def derive(row: dict) -> dict:
    """Adds tflops, the reference names and the time ratios to a row with 'seq' and 'ms'."""
    ms, s = row["ms"], row["seq"]
    blocks_and_window = attended_keys("routed", s) + float(sum(min(p + 1, WINDOW) for p in range(s)))
    keys = {"nsa": attended_keys("nsa", s), "nsa_simple": attended_keys("nsa", s), "nsa_dot": blocks_and_window,
            "routed": attended_keys("routed", s), "routed_simple": attended_keys("routed", s)}  # fmt: skip
    keys.update({f"{n}_mma": keys[n] for n in ("nsa", "nsa_dot", "routed")})
    keys.update({f"{n}_mma_{switch}": keys[n] for n in ("nsa", "routed") for switch in ("async", "tiles")})
    row["attended_keys"] = {**keys, "dense": attended_keys("dense", s)}
    row["tflops"] = {n: (4 * D * HQ * keys.get(n, row["attended_keys"]["dense"]) / (t * 1e-3) / 1e12 if t else None)
                     for n, t in ms.items()}  # fmt: skip
    dense = next((n for n in DENSE if ms.get(n)), None)
    best_torch = min((n for n in TORCH if ms.get(n)), key=lambda n: ms[n], default=None)
    row["dense_ref"], row["torch_ref"] = dense, best_torch
    row["ratio"] = {}
    for sparse in SPARSE:
        for label, ref in (("dense", dense), ("torch", best_torch)):
            t, base = ms.get(sparse), ms.get(ref) if ref else None
            row["ratio"][f"{sparse}/{label}"] = t / base if t and base else None
    for fast, simple in FAST_VS_SIMPLE:
        t, base = ms.get(fast), ms.get(simple)
        row["ratio"][f"{fast}/{simple}"] = t / base if t and base else None
    return row


def fmt(x, spec="8.2f", width=8) -> str:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return format(x, spec) if ok else "n/a".rjust(width)


def short_len(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def format_table(env: dict, rows: list[dict]) -> str:
    cfg = f"B1 {HQ}q/{HKV}kv D{D} bf16 causal, blocks of {BLOCK}, top {TOP}, window {WINDOW}"
    lines = [f"\nSparse attention CUDA benchmark on {env.get('device')} (driver {env.get('driver')}, commit "
             f"{str(env.get('commit'))[:12]}): {cfg}",
             f"{'S':>5} " + " ".join(f"{n:>11}" for n in IMPLS) + "   (ms)"]  # fmt: skip
    for r in rows:
        lines.append(f"{short_len(r['seq']):>5} " + " ".join(fmt(r["ms"].get(n), "11.2f", 11) for n in IMPLS))
    lines.append(f"{'S':>5} " + " ".join(f"{n:>11}" for n in IMPLS) + "   (TFLOP/s over the keys attended)")
    for r in rows:
        lines.append(f"{short_len(r['seq']):>5} " + " ".join(fmt(r.get("tflops", {}).get(n), "11.1f", 11) for n in IMPLS))
    heads = ("nsa_mma/dense", "routed_mma/dense", "nsa_mma_tiles/dense", "routed_mma_tiles/dense", "nsa_mma/torch",
             "routed_mma/torch", "nsa/dense", "routed/dense")
    lines.append(f"{'S':>5} " + " ".join(f"{h:>12}" for h in heads) + "   time ratios (< 1: sparse faster)  dense, torch =")
    for r in rows:
        refs = f"{r.get('dense_ref') or '-'}, {r.get('torch_ref') or '-'}"
        lines.append(f"{short_len(r['seq']):>5} " + " ".join(fmt(r.get("ratio", {}).get(h), "12.3f", 12) for h in heads)
                     + f"   {refs}")  # fmt: skip
    for r in rows:
        for name, text in r.get("errors", {}).items():
            lines.append(f"  S={short_len(r['seq'])} {name}: {text}")
        for name, text in r.get("notes", {}).items():
            lines.append(f"  S={short_len(r['seq'])} {name}: note: {text}")
    return "\n".join(lines)


# ---- one row
def bench_row(s: int, ort_ops: dict, ort_errors: dict, budget: Budget, rows_left: int, max_repeats: int,
              save, seen: dict) -> dict:  # fmt: skip
    """One sequence length, every implementation. seen: implementation -> (S, seconds per call) of an earlier
    row, for the prediction (quadratic in S, an upper bound for the sparse ones) that picks a single call or
    a skip when the budget is short."""
    row = {"kind": "prefill", "dtype": "bfloat16", "batch": 1, "q_heads": HQ, "kv_heads": HKV, "seq": s,
           "head_dim": D, "block": BLOCK, "top": TOP, "window": WINDOW,
           "shape": f"B1 {HQ}q/{HKV}kv S{short_len(s)} D{D} causal", "ms": {}, "timing": {}, "errors": {}, "notes": {}}  # fmt: skip
    save(row)
    try:
        t = problem(s)
    except Exception as e:  # noqa: BLE001 - an allocation failure is reported in the row
        row["errors"]["inputs"] = error_text(e)
        torch.cuda.empty_cache()
        return derive(row)
    for i, name in enumerate(IMPLS):
        if name in ort_errors:
            row["errors"][name] = ort_errors[name]
            continue
        left = budget.left()
        if left < 1.0:
            row["errors"][name] = f"{SKIPPED}time budget spent (--budget-s)"
            continue
        share = left / ((len(IMPLS) - i) + len(IMPLS) * (rows_left - 1))
        predicted = seen[name][1] * (s / seen[name][0]) ** 2 if name in seen else 0.0
        if predicted > left + CAP_MARGIN_S:
            row["errors"][name] = f"{SKIPPED}a call predicted at {predicted:.0f} s, {left:.0f} s of budget left"
            continue
        try:
            if name in ort_ops:
                ort_ops[name].bind(t)
                fn, timer = ort_ops[name], "wall"
            elif name == "dense":
                y = torch.empty_like(t["Q"])
                row["dense_plan"] = lib.run(t["Q"], t["K"], t["V"], causal=True, out=y)[2]["reason"]
                fn, timer = (lambda y=y: lib.run(t["Q"], t["K"], t["V"], causal=True, out=y)), "cuda"
            else:
                fn, timer = torch_call(name, t, row["notes"]), "cuda"
            m = measure(fn, timer, share, max_repeats, predicted)
            seen[name] = (s, m["estimate_s"])
            row["ms"][name] = m.pop("ms")
            row["timing"][name] = m
            print(f"  S={short_len(s)} {name}: {row['ms'][name]:.2f} ms ({m['timer']}, {m['repeats']} runs)", flush=True)
        except Exception as e:  # noqa: BLE001 - one implementation failing (out of memory too) is reported
            row["errors"][name] = error_text(e)
            print(f"  S={short_len(s)} {name} failed: {row['errors'][name]}", file=sys.stderr, flush=True)
        finally:
            if name in ort_ops:
                ort_ops[name].release()
            fn = None  # frees what the call holds (torch's expanded K/V) before the next one
            torch.cuda.empty_cache()
        save(derive(row))
    return derive(row)


def failures_of(rows: list[dict]) -> list[str]:
    """Errors of our implementations that fail the run: not a skip for time, not an allocation failure."""
    return [f"S={r['seq']} {n}: {e}" for r in rows for n, e in r.get("errors", {}).items()
            if n in SPARSE + DENSE and not e.startswith(SKIPPED) and not is_oom(e)]  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="S in {4k, 16k}, fewer repeats (a smoke run)")
    parser.add_argument("--seqs", default=None, help="comma-separated sequence lengths (default 16384,65536)")
    parser.add_argument("--repeats", type=int, default=None, help="most timed repeats per implementation")
    parser.add_argument("--budget-s", type=float, default=32.0, help="seconds from start, imports included")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_sparse_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    if not lib.has_cuda():
        print("bench_sparse_cuda: the library was built without CUDA", file=sys.stderr)
        return 2
    budget = Budget(args.budget_s)
    seqs = [int(x) for x in args.seqs.split(",")] if args.seqs else [4096, 16384] if args.quick else [16384, 65536]
    max_repeats = args.repeats or (3 if args.quick else 10)
    env = environment()
    ort, missing = ort_cuda.onnxruntime_cuda()
    if not missing and os.environ.get(ort_cuda.DISABLE_FLAG) == "1":
        missing = f"{ort_cuda.DISABLE_FLAG}=1 leaves our CUDA kernels unregistered"
    env["onnxruntime"] = ort.__version__ if ort is not None and not missing else f"unavailable: {missing}"
    out = Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"bench_sparse_cuda_{env['date'][:10]}_{env['device'].replace(' ', '_')}.json"
    rows: list[dict] = []
    # each column's switches, but the fast path's columns: the op's attributes
    config = {**ORT_ENV, "nsa": CASES["nsa"][2], "nsa_dot": "nsa without compressed_key/compressed_value",
              "routed": CASES["routed"][2], "dense": CASES["dense"][2],
              "timers": "onnxruntime: wall clock around run_with_iobinding; torch and dense: CUDA events "
                        "(a graph of back-to-back calls under 5 ms); medians"}  # fmt: skip

    def save(row=None):  # after every measurement, so a run cut short by its cap still leaves its numbers
        if row is not None and not any(r is row for r in rows):
            rows.append(row)
        out.write_text(json.dumps({"environment": env, "config": config, "results": rows}, indent=1))

    ort_ops, ort_errors = {}, {}
    for name, case in ORT_CASES.items():
        if missing:
            ort_errors[name] = f"{SKIPPED}onnxruntime CUDA EP unavailable ({missing})"
            continue
        try:
            ort_ops[name] = OrtOp(ort, case, ORT_ENV.get(name))
        except Exception as e:  # noqa: BLE001 - reported in every row; a wrong placement fails the run
            ort_errors[name] = error_text(e)
            print(f"bench_sparse_cuda: {name}: {ort_errors[name]}", file=sys.stderr)
    env["placement"] = {n: op.providers for n, op in ort_ops.items()}
    if missing:
        print(f"bench_sparse_cuda: onnxruntime rows skipped ({missing})", file=sys.stderr)
    seen: dict = {}
    for i, s in enumerate(seqs):
        bench_row(s, ort_ops, ort_errors, budget, len(seqs) - i, max_repeats, save, seen)
        save()
    print(format_table(env, rows))
    print(f"wrote {out} ({time.perf_counter() - START:.0f} s)")
    bad = failures_of(rows)
    for line in bad:
        print(f"bench_sparse_cuda: FAILED {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
