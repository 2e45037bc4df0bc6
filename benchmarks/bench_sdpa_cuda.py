"""CUDA ScaledDotProductAttention benchmark: our kernels vs torch SDPA (flash and cuDNN backends) vs
onnxruntime's com.microsoft.GroupQueryAttention on the CUDA EP, same process, same device.

Prefill: causal, B*S = 16k tokens, 16 heads of D = 128 (FlashAttention's benchmark shape, hidden 2048),
S in {1k, 4k, 16k}; TFLOP/s with FLOPs = 4 * B * H * S^2 * D / 2 (the causal half).
Decode: Sq = 1, 32 query / 8 KV heads of D = 128 (Llama-3-8B), B in {1, 16}, Skv in {4k, 32k, 128k};
bandwidth = bytes of K + V read / time, also as a fraction of the device's measured copy bandwidth
(bytes read + written by a large device-to-device copy).

Timing: CUDA events around a CUDA graph of 20 back-to-back calls (so host launch overhead does not
count), median of the timed repeats after warm-up, per call.
onnxruntime is timed by wall clock around run_with_iobinding (it synchronises its own stream), so its
numbers include the session's per-run overhead, which matters only for the smallest decode cases.

Usage: python benchmarks/bench_sdpa_cuda.py [--out FILE_OR_DIR] [--quick]
Prints one table and writes JSON with date, device, driver and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
import ort_cuda  # noqa: E402
import sdpa_cuda_lib as lib  # noqa: E402


def time_cuda(fn, *, warmup=3, repeats=10) -> float:
    """Median milliseconds of fn() on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_graph(fn, *, calls=20, repeats=10) -> float:
    """Median milliseconds per call of `calls` back-to-back calls replayed from a CUDA graph, so host-side
    launch overhead (ctypes, Python) does not count; falls back to time_cuda when capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # noqa: BLE001 - not capturable: time eagerly
        torch.cuda.synchronize()
        return time_cuda(fn, repeats=repeats)
    return time_cuda(graph.replay, warmup=1, repeats=repeats) / calls


def time_wall(fn, *, warmup=3, repeats=10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB, counting bytes read and written."""
    n = 1 << 29  # 2-byte elements
    src = torch.empty(n, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = time_cuda(lambda: dst.copy_(src), warmup=3, repeats=20)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


# ---- baselines
def torch_sdpa(backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def call(q, k, v, *, causal):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1]
            )

    return call


def gqa_model(dtype, q_heads, kv_heads, head_dim, *, with_past: bool) -> bytes:
    from onnx import TensorProto, helper

    t = ort_cuda.onnx_type(dtype)
    inputs = [
        helper.make_tensor_value_info("query", t, ["B", "S", q_heads * head_dim]),
        helper.make_tensor_value_info("key", t, ["B", "S", kv_heads * head_dim]),
        helper.make_tensor_value_info("value", t, ["B", "S", kv_heads * head_dim]),
    ]
    names = ["query", "key", "value"]
    if with_past:
        inputs += [
            helper.make_tensor_value_info("past_key", t, ["B", kv_heads, "M", head_dim]),
            helper.make_tensor_value_info("past_value", t, ["B", kv_heads, "M", head_dim]),
        ]
        names += ["past_key", "past_value"]
    else:
        names += ["", ""]
    inputs += [
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["B"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    names += ["seqlens_k", "total_sequence_length"]
    outputs = [
        helper.make_tensor_value_info("output", t, ["B", "S", q_heads * head_dim]),
        helper.make_tensor_value_info("present_key", t, ["B", kv_heads, "P", head_dim]),
        helper.make_tensor_value_info("present_value", t, ["B", kv_heads, "P", head_dim]),
    ]
    node = helper.make_node(
        "GroupQueryAttention", names, [o.name for o in outputs], domain="com.microsoft",
        num_heads=q_heads, kv_num_heads=kv_heads,
    )  # fmt: skip
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model.SerializeToString()


class OrtGqa:
    """onnxruntime's GroupQueryAttention (always causal, BSNH inputs). Decode uses a shared past/present
    buffer of Skv slots (the new token written into the last), so the run reads the cache once."""

    def __init__(self, ort, dtype, q_heads, kv_heads, head_dim, *, with_past):
        self.sess = ort_cuda.session(ort, gqa_model(dtype, q_heads, kv_heads, head_dim, with_past=with_past),
                                     library=None)  # fmt: skip
        self.with_past = with_past

    def prepare(self, q, k, v):
        """q [B,Hq,Sq,D]; prefill: k, v [B,Hkv,S,D]; decode: k, v are the cache [B,Hkv,Skv,D]."""
        b, hq, sq, d = q.shape
        skv = k.shape[2]
        bsnh = lambda t: t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1).contiguous()  # noqa: E731
        self.out = torch.empty(b, sq, hq * d, dtype=q.dtype, device="cuda")
        inputs = {"query": bsnh(q)}
        if self.with_past:
            inputs["key"], inputs["value"] = bsnh(k[:, :, -1:]), bsnh(v[:, :, -1:])
            inputs["past_key"], inputs["past_value"] = k, v
            outputs = {"output": self.out, "present_key": k, "present_value": v}  # shared buffers
        else:
            inputs["key"], inputs["value"] = bsnh(k), bsnh(v)
            self.present = [torch.empty_like(k), torch.empty_like(v)]
            outputs = {"output": self.out, "present_key": self.present[0], "present_value": self.present[1]}
        inputs["seqlens_k"] = torch.full((b,), skv - 1, dtype=torch.int32, device="cuda")
        inputs["total_sequence_length"] = torch.tensor(skv, dtype=torch.int32)  # a CPU scalar input
        self.binding = self.sess.io_binding()
        for name, t in inputs.items():
            dev = "cuda" if t.is_cuda else "cpu"
            self.binding.bind_input(name, dev, 0, ort_cuda.onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            self.binding.bind_output(name, "cuda", 0, ort_cuda.onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
        self.keep = (inputs, outputs)

    def __call__(self):
        self.sess.run_with_iobinding(self.binding)


# torch SDPA backends measured beside ours (--only-ours: none, for comparing builds of our library).
BASELINES = (("torch_flash", "FLASH_ATTENTION"), ("torch_cudnn", "CUDNN_ATTENTION"))


def measure(label, fn, timer, results, row, key):
    try:
        results[key] = timer(fn)
    except Exception as e:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
        results[key] = None
        row.setdefault("errors", {})[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"  {label}: {key} failed: {row['errors'][key]}", file=sys.stderr)


def bench_prefill(dtype, seq, ort, repeats):
    b, h, d = 16384 // seq, 16, 128
    q, k, v = (torch.randn(b, h, seq, d, dtype=dtype, device="cuda") for _ in range(3))
    y = torch.empty_like(q)
    row = {"kind": "prefill", "dtype": str(dtype)[6:], "batch": b, "heads": h, "q_len": seq, "kv_len": seq,
           "head_dim": d, "shape": f"B{b} H{h} S{seq} D{d} causal"}  # fmt: skip
    flops = 4 * b * h * seq * seq * d / 2
    ms = {}
    row["plan"] = lib.run(q, k, v, causal=True, out=y)[2]["reason"]
    measure(row["shape"], lambda: lib.run(q, k, v, causal=True, out=y), lambda f: time_graph(f, repeats=repeats), ms, row, "onnxattn")
    # The Hopper kernel asked for explicitly, beside the default (on sm_90 the default takes it where eligible).
    with env_vars({"ONNXATTN_SDPA_CUDA_PREFILL": "wgmma"}):
        try:
            row["plan_wgmma"] = lib.run(q, k, v, causal=True, out=y)[2]["reason"]
        except Exception as e:  # noqa: BLE001 - reported by measure below as well
            row["plan_wgmma"] = f"{type(e).__name__}: {e}"
        if "-> wgmma" in row["plan_wgmma"]:
            measure(row["shape"], lambda: lib.run(q, k, v, causal=True, out=y), lambda f: time_graph(f, repeats=repeats), ms, row, "wgmma")
    for name, backend in BASELINES:
        fn = torch_sdpa(backend)
        measure(row["shape"], lambda fn=fn: fn(q, k, v, causal=True), lambda f: time_graph(f, repeats=repeats), ms, row, name)
    if ort is not None:
        try:
            gqa = OrtGqa(ort, dtype, h, h, d, with_past=False)
            gqa.prepare(q, k, v)
            measure(row["shape"], gqa, lambda f: time_wall(f, repeats=repeats), ms, row, "ort_gqa")
        except Exception as e:  # noqa: BLE001
            ms["ort_gqa"] = None
            row.setdefault("errors", {})["ort_gqa"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    row["ms"] = ms
    row["tflops"] = {n: (flops / (t * 1e-3) / 1e12 if t else None) for n, t in ms.items()}
    return row


# The other decode paths each decode row also times beside the default (bench_gqa_cuda.py too): column -> (label,
# library switches). PDL: decode and combine as programmatic dependent launches (opt-in: no gain measured on the H100
# nor the H200); lookup: the decode's K/V copies through the paged path's slot lookup (the default before direct
# loads, cuda_plan.cc rule 9, won on the H200 at 82087dc); lean: two stages a warp, three CTAs an SM (rule 10, opt-in:
# no gain there); fused: the splits merged by each row tile's last CTA, no combine kernel (rule 12, opt-in until timed);
# columns: the combine kernel with a warp per 32 columns of a row, all of a lane's splits in flight (rule 13, opt-in);
# lazy: the decode's O rescaled only where a row's max moved (the fused merge's kernels, rule 14, opt-in); columns_lazy:
# both, so that the profile's kernel times tell the two apart.
OPT_IN_DECODE = {"pdl": ("PDL", {"ONNXATTN_CUDA_PDL": "1"}),
                 "lookup": ("slot-lookup loads", {"ONNXATTN_SDPA_CUDA_DECODE_LOADS": "lookup"}),
                 "lean": ("3 CTAs an SM", {"ONNXATTN_SDPA_CUDA_DECODE_STAGES": "2"}),
                 "fused": ("fused merge", {"ONNXATTN_SDPA_CUDA_COMBINE": "fused"}),
                 "columns": ("combine by columns", {"ONNXATTN_SDPA_CUDA_COMBINE": "columns"}),
                 "lazy": ("lazy rescale", {"ONNXATTN_SDPA_CUDA_DECODE_RESCALE": "lazy"}),
                 "columns_lazy": ("combine by columns, lazy rescale", {"ONNXATTN_SDPA_CUDA_COMBINE": "columns",
                                                                       "ONNXATTN_SDPA_CUDA_DECODE_RESCALE": "lazy"})}


def bench_decode(dtype, batch, kv_len, ort, copy_gbs, repeats):
    hq, hkv, d = 32, 8, 128
    q = torch.randn(batch, hq, 1, d, dtype=dtype, device="cuda")
    k, v = (torch.randn(batch, hkv, kv_len, d, dtype=dtype, device="cuda") for _ in range(2))
    y = torch.empty(batch, hq, 1, d, dtype=dtype, device="cuda")
    row = {"kind": "decode", "dtype": str(dtype)[6:], "batch": batch, "heads": f"{hq}/{hkv}", "q_len": 1,
           "kv_len": kv_len, "head_dim": d, "shape": f"B{batch} {hq}q/{hkv}kv Skv{kv_len // 1024}k D{d}"}  # fmt: skip
    nbytes = 2 * k.numel() * k.element_size()
    ms = {}
    row["plan"] = lib.run(q, k, v, out=y)[2]["reason"]
    measure(row["shape"], lambda: lib.run(q, k, v, out=y), lambda f: time_graph(f, repeats=repeats), ms, row, "onnxattn")
    for name, (_, switch) in OPT_IN_DECODE.items():  # beside the default, each with the plan it ran
        with env_vars(switch):
            row.setdefault("plans", {})[name] = lib.run(q, k, v, out=y)[2]["reason"]
            measure(row["shape"], lambda: lib.run(q, k, v, out=y), lambda f: time_graph(f, repeats=repeats), ms, row,
                    name)  # fmt: skip
    for name, backend in BASELINES:
        fn = torch_sdpa(backend)
        measure(row["shape"], lambda fn=fn: fn(q, k, v, causal=False), lambda f: time_graph(f, repeats=repeats), ms, row, name)
    if ort is not None:
        try:
            gqa = OrtGqa(ort, dtype, hq, hkv, d, with_past=True)
            gqa.prepare(q, k.clone(), v.clone())
            measure(row["shape"], gqa, lambda f: time_wall(f, repeats=repeats), ms, row, "ort_gqa")
        except Exception as e:  # noqa: BLE001
            ms["ort_gqa"] = None
            row.setdefault("errors", {})["ort_gqa"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    row["ms"] = ms
    row["gbs"] = {n: (nbytes / (t * 1e-3) / 1e9 if t else None) for n, t in ms.items()}
    row["fraction_of_copy"] = {n: (g / copy_gbs if g else None) for n, g in row["gbs"].items()}
    if batch == 1:
        row["split_sweep"] = split_sweep(q, k, v, y, nbytes, copy_gbs, repeats)
    return row


@contextlib.contextmanager
def env_vars(values: dict):
    """The environment variables `values` set for the block (the library reads its switches on every call), and
    each restored afterwards to what it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def split_sweep(q, k, v, y, nbytes, copy_gbs, repeats) -> dict:
    """Our decode with the key splits forced (ONNXATTN_SDPA_CUDA_SPLITS) to fill half, one, one and a half, two
    and three waves of 2 CTAs per SM: where a single sequence's bandwidth peaks, for the split rule
    (choose_splits fills one wave where one holds the row tiles, else takes the first count within 85% of the best
    last-wave occupancy). Fraction of copy per count."""
    ctas = k.shape[0] * k.shape[1]
    slots = 2 * torch.cuda.get_device_properties(0).multi_processor_count
    counts = sorted({max(1, min(256, round(w * slots / ctas))) for w in (0.5, 1.0, 1.5, 2.0, 3.0)})
    out = {}
    try:
        for n in counts:
            with env_vars({"ONNXATTN_SDPA_CUDA_SPLITS": str(n)}):
                ms = time_graph(lambda: lib.run(q, k, v, out=y), repeats=repeats)
            out[str(n)] = nbytes / (ms * 1e-3) / 1e9 / copy_gbs if ms else None
    except Exception as e:  # noqa: BLE001 - a diagnosis, not fatal
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return out


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    driver = "unknown"
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]  # fmt: skip
    except Exception:  # noqa: BLE001
        pass
    commit = os.environ.get("ONNXATTN_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=30).stdout.strip()  # fmt: skip
        except Exception:  # noqa: BLE001
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": props.name, "sm_count": props.multi_processor_count, "driver": driver,
        "cuda": torch.version.cuda, "torch": torch.__version__, "commit": commit or "unknown",
        "library": lib.library_path(),
    }  # fmt: skip


IMPLS = ("onnxattn", "wgmma", "torch_flash", "torch_cudnn", "ort_gqa")
BASELINE_IMPLS = ("torch_flash", "torch_cudnn", "ort_gqa")


def fmt(x, spec="7.1f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else "    n/a"


def print_table(env, copy_gbs, rows):
    print(f"\nSDPA CUDA benchmark on {env['device']} (driver {env['driver']}, commit {env['commit'][:12]}); "
          f"measured copy bandwidth {copy_gbs:.0f} GB/s")  # fmt: skip
    print(f"{'kind':8} {'dtype':9} {'shape':32} " + " ".join(f"{n:>12}" for n in IMPLS) + "   ours/best-baseline")
    for r in rows:
        metric = r["tflops"] if r["kind"] == "prefill" else r["gbs"]
        unit = "TFLOP/s" if r["kind"] == "prefill" else "GB/s"
        base = [metric[n] for n in BASELINE_IMPLS if metric.get(n)]
        ratio = metric["onnxattn"] / max(base) if metric.get("onnxattn") and base else None
        cells = " ".join(f"{fmt(metric.get(n)):>12}" for n in IMPLS)
        extra = f"   {fmt(ratio, '5.2f')}x ({unit})"
        if metric.get("wgmma") and base:
            extra += f", wgmma/best-baseline {fmt(metric['wgmma'] / max(base), '5.2f')}x"
        if r["kind"] == "decode" and r["fraction_of_copy"].get("onnxattn"):
            extra += f", ours {100 * r['fraction_of_copy']['onnxattn']:.0f}% of copy bw"
            for name, (label, _) in OPT_IN_DECODE.items():
                if r["fraction_of_copy"].get(name):
                    extra += f" ({100 * r['fraction_of_copy'][name]:.0f}% with {label})"
        print(f"{r['kind']:8} {r['dtype']:9} {r['shape']:32} {cells}{extra}")
        sweep = {n: f for n, f in r.get("split_sweep", {}).items() if n != "error" and f}
        if sweep:
            print(f"{'':8} splits forced: " + ", ".join(f"{n}: {100 * f:.0f}%" for n, f in sweep.items()) + " of copy bw")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (a smoke run)")
    parser.add_argument("--kinds", default="prefill,decode", help="comma-separated: prefill, decode")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated: float16, bfloat16")
    parser.add_argument("--only-ours", action="store_true", help="no baselines (compare builds of the library)")
    args = parser.parse_args(argv)
    global BASELINES
    if args.only_ours:
        BASELINES = ()
    if not torch.cuda.is_available():
        print("bench_sdpa_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    env = environment()
    ort, missing = ort_cuda.onnxruntime_cuda() if not args.only_ours else (None, "--only-ours")
    if missing:
        print(f"bench_sdpa_cuda: onnxruntime GroupQueryAttention baseline skipped: {missing}", file=sys.stderr)
        ort = None
    env["onnxruntime"] = getattr(ort, "__version__", None) if ort else f"unavailable: {missing}"
    copy_gbs = copy_bandwidth_gbs()
    repeats = 3 if args.quick else 10
    out = Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"bench_sdpa_cuda_{env['date'][:10]}_{env['device'].replace(' ', '_')}.json"
    rows = []

    def save():  # after every row, so a run cut short by a time limit still leaves its numbers
        out.write_text(json.dumps({"environment": env, "copy_bandwidth_gbs": copy_gbs, "results": rows}, indent=1))

    seqs = (1024, 4096) if args.quick else (1024, 4096, 16384)
    kv_lens = (4096, 32768) if args.quick else (4096, 32768, 131072)
    kinds = set(args.kinds.split(","))
    for dtype in (getattr(torch, name) for name in args.dtypes.split(",")):
        for seq in seqs if "prefill" in kinds else ():
            rows.append(bench_prefill(dtype, seq, ort, repeats))
            save()
            torch.cuda.empty_cache()
        for batch in (1, 16) if "decode" in kinds else ():
            for kv_len in kv_lens:
                rows.append(bench_decode(dtype, batch, kv_len, ort, copy_gbs, repeats))
                save()
                torch.cuda.empty_cache()
    print_table(env, copy_gbs, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
