"""CUDA benchmark of onnxattn::GroupQueryAttention against onnxruntime's com.microsoft.GroupQueryAttention on
the CUDA EP (with its rotary), same process, same device.

Shapes of a Llama-3-8B layer (Hq=32, Hkv=8, D=128, RoPE), float16, B=1:
  - prefill S=2048 (no past): TFLOP/s with causal FLOPs 4*Hq*S^2*D/2;
  - decode (S=1) over P cached tokens, P in {4k, 16k, 32k, 64k}, in shared-buffer mode: past and present
    are one preallocated buffer of M = P+1 tokens bound with I/O binding (present bound to the past's
    buffer) so only the new token is written; one more row keeps P = 4k in a 64k buffer (the time must
    follow P, not M). Bandwidth = bytes of K+V read (2*Hkv*(P+1)*D*2) / time, also as a fraction of the
    device's measured copy bandwidth (bytes read + written by a large device-to-device copy).
    onnxruntime's op runs the same way (past_present_share_buffer: seqlens_k = P, total length P+1).

Timers, per implementation:
  - gpu: the summed device time of every kernel and copy one run launches, from torch.profiler (CUPTI sees
    onnxruntime's kernels too); the headline number;
  - wall: wall clock around run_with_iobinding (includes onnxruntime's per-run overhead and the sync);
  - graph (ours only): our kernels through the library's C test entry, replayed from a CUDA graph.
Medians of the repeats after a warm-up.

Usage: python benchmarks/bench_gqa_cuda.py [--out FILE_OR_DIR] [--quick]
Prints one table and writes JSON with date, device, driver and commit (after every row).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import gqa_cuda_lib as lib  # noqa: E402
import ort_cuda  # noqa: E402
from bench_sdpa_cuda import (OPT_IN_DECODE, copy_bandwidth_gbs, env_vars, environment, time_graph,  # noqa: E402
                             time_wall)

# GroupQueryAttention's own decode column beside bench_sdpa_cuda's OPT_IN_DECODE ones: the fused split merge with the
# queries rotated ahead by the joint new-token kernel, so the decode kernel's Q load does no RoPE (its decode kernel
# took 44.3 us where the SDPA one took 42.4 at 32k on the H200 at 2c9a48e) and no extra launch prepares them.
DECODE_COLUMNS = {**OPT_IN_DECODE,
                  "fused_joint": ("fused merge, queries by the joint new-token kernel",
                                  {"ONNXATTN_SDPA_CUDA_COMBINE": "fused", "ONNXATTN_GQA_CUDA_QUERY": "rotated",
                                   "ONNXATTN_GQA_CUDA_ROTATION": "joint"})}  # fmt: skip

HQ, HKV, D, BASE = 32, 8, 128, 10000.0
IMPLS = ("onnxattn", "ort_gqa")


def _vi(name, elem, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, elem, shape)


def _model(node, inputs, outputs, domain) -> bytes:
    from onnx import helper

    graph = helper.make_graph([node], "gqa", inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(domain, 1)])
    m.ir_version = 10
    return m.SerializeToString()


def onnxattn_model(shared: bool, sinks: bool = False) -> bytes:
    from onnx import TensorProto, helper

    f16, i64 = TensorProto.FLOAT16, TensorProto.INT64
    names = ["query", "key", "value"] + (["past_key", "past_value", "past_lengths"] if shared else [])
    if sinks:  # input 11, the optional inputs in between absent
        names += [""] * (11 - len(names)) + ["sinks"]
    inputs = [_vi("query", f16, [1, "S", HQ * D]), _vi("key", f16, [1, "S", HKV * D]), _vi("value", f16, [1, "S", HKV * D])]
    total = "M" if shared else "S"
    if shared:
        inputs += [_vi("past_key", f16, [1, HKV, "M", D]), _vi("past_value", f16, [1, HKV, "M", D]),
                   _vi("past_lengths", i64, [1])]  # fmt: skip
    if sinks:
        inputs.append(_vi("sinks", f16, [HQ]))
    outputs = [_vi("output", f16, [1, "S", HQ * D]), _vi("present_key", f16, [1, HKV, total, D]),
               _vi("present_value", f16, [1, HKV, total, D])]  # fmt: skip
    node = helper.make_node("GroupQueryAttention", names, [o.name for o in outputs], domain="onnxattn",
                            num_heads=HQ, kv_num_heads=HKV, causal=1, rope=1, rope_base=BASE)  # fmt: skip
    return _model(node, inputs, outputs, "onnxattn")


def ort_gqa_model(sinks: bool = False) -> bytes:
    """onnxruntime's contrib op with its rotary (cos/sin caches) and a shared past/present buffer; with
    `sinks`, its head_sink input (11)."""
    from onnx import TensorProto, helper

    f16, i32 = TensorProto.FLOAT16, TensorProto.INT32
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
             "sin_cache"] + (["", "", "sinks"] if sinks else [])  # fmt: skip
    inputs = [_vi("query", f16, [1, "S", HQ * D]), _vi("key", f16, [1, "S", HKV * D]), _vi("value", f16, [1, "S", HKV * D]),
              _vi("past_key", f16, [1, HKV, "M", D]), _vi("past_value", f16, [1, HKV, "M", D]),
              _vi("seqlens_k", i32, [1]), _vi("total_sequence_length", i32, []),
              _vi("cos_cache", f16, ["T", D // 2]), _vi("sin_cache", f16, ["T", D // 2])]  # fmt: skip
    if sinks:
        inputs.append(_vi("sinks", f16, [HQ]))
    outputs = [_vi("output", f16, [1, "S", HQ * D]), _vi("present_key", f16, [1, HKV, "M", D]),
               _vi("present_value", f16, [1, HKV, "M", D])]  # fmt: skip
    node = helper.make_node("GroupQueryAttention", names, [o.name for o in outputs], domain="com.microsoft",
                            num_heads=HQ, kv_num_heads=HKV, do_rotary=1)  # fmt: skip
    return _model(node, inputs, outputs, "com.microsoft")


def sink_logits():
    """GPT-OSS-like attention-sink logits, one per query head, about the size of the largest scores."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    return (torch.rand(HQ, generator=gen, device="cuda") * 5 - 1).half()


def rope_caches(length: int):
    inv_freq = BASE ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
    return angles.cos().half().cuda(), angles.sin().half().cuda()


class Bound:
    """A session with every input and output bound to torch CUDA tensors (CPU tensors bound as CPU)."""

    def __init__(self, ort, model: bytes, inputs: dict, outputs: dict, library: str | None):
        self.sess = ort_cuda.session(ort, model, library=library)
        self.binding = self.sess.io_binding()
        for name, t in inputs.items():
            dev = "cuda" if t.is_cuda else "cpu"
            self.binding.bind_input(name, dev, 0, ort_cuda.onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
        for name, t in outputs.items():
            self.binding.bind_output(name, "cuda", 0, ort_cuda.onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
        self.keep = (inputs, outputs)

    def __call__(self):
        self.sess.run_with_iobinding(self.binding)


def device_ms(fn, *, runs=5) -> float | None:
    """Summed device time (ms) of the kernels, copies and memsets of one fn() call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(runs):
                fn()
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - no CUPTI: report no device time
        print(f"  torch.profiler unavailable: {e}", file=sys.stderr)
        return None
    total_us = 0.0
    for event in prof.events():  # kernels, copies and memsets are events on the CUDA device
        if str(getattr(event, "device_type", "")).endswith("CUDA") and not getattr(event, "is_user_annotation", False):
            total_us += event.time_range.elapsed_us()
    return total_us / runs / 1e3 if total_us > 0 else None


def timings(fn, repeats) -> dict:
    out = {}
    try:
        out["wall"] = time_wall(fn, repeats=repeats)
        out["gpu"] = device_ms(fn)
    except Exception as e:  # noqa: BLE001 - one implementation failing is reported, not fatal
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"  failed: {out['error']}", file=sys.stderr)
    return out


def bench_prefill(ort, seq: int, repeats: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    randn = lambda *s: torch.randn(*s, generator=gen, device="cuda").half()  # noqa: E731
    q, k, v = randn(1, seq, HQ * D), randn(1, seq, HKV * D), randn(1, seq, HKV * D)
    row = {"kind": "prefill", "dtype": "float16", "shape": f"B1 S{seq} {HQ}q/{HKV}kv D{D} rope causal", "seq": seq}
    flops = 4 * HQ * seq * seq * D / 2
    ours_out = {"output": torch.empty_like(q), "present_key": torch.empty(1, HKV, seq, D, dtype=torch.half, device="cuda"),
                "present_value": torch.empty(1, HKV, seq, D, dtype=torch.half, device="cuda")}  # fmt: skip
    t = {}
    ours = Bound(ort, onnxattn_model(False), {"query": q, "key": k, "value": v}, ours_out, ort_cuda_library())
    t["onnxattn"] = timings(ours, repeats)
    spec = lib.Spec(seq=seq, q_heads=HQ, kv_heads=HKV, head_dim=D, rope=1, rope_base=BASE)
    direct = dict(query=q, key=k, value=v, **ours_out)
    row["plan"] = lib.run(spec, direct)["attention"]["reason"]
    t["onnxattn"]["graph"] = time_graph(lambda: lib.run(spec, direct), repeats=repeats)
    # Diagnosis of ours vs the SDPA kernel's own prefill numbers: the op with its queries rotated by a kernel of
    # their own instead of in the core's Q load; the attention core alone on the same memory
    # (Q as the [S, Hq*D] rows viewed [1, Hq, S, D], the rotated caches as K/V: no new-token kernel, no RoPE
    # in the Q load), then on a contiguous Q. The gaps are what the fused RoPE and the Q layout cost.
    q_view = q.view(1, seq, HQ, D).transpose(1, 2)
    k_rot, v_rot = ours_out["present_key"], ours_out["present_value"]
    y_view = torch.empty_like(q).view(1, seq, HQ, D).transpose(1, 2)
    q_contiguous, y_contiguous = q_view.contiguous(), torch.empty(1, HQ, seq, D, dtype=torch.half, device="cuda")
    try:  # the op with its queries prepared by a kernel of their own (ONNXATTN_GQA_CUDA_QUERY=rotated)
        with env_vars({"ONNXATTN_GQA_CUDA_QUERY": "rotated"}):
            t["rotated_queries"] = {"graph": time_graph(lambda: lib.run(spec, direct), repeats=repeats)}
    except Exception as e:  # noqa: BLE001 - a diagnosis row, not fatal
        t["rotated_queries"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:  # the op on the Hopper prefill kernel (ONNXATTN_SDPA_CUDA_PREFILL=wgmma; queries rotated ahead for it)
        with env_vars({"ONNXATTN_SDPA_CUDA_PREFILL": "wgmma"}):
            row["plan_wgmma"] = lib.run(spec, direct)["attention"]["reason"]
            if "-> wgmma" in row["plan_wgmma"]:
                t["wgmma"] = timings(ours, repeats)
                t["wgmma"]["graph"] = time_graph(lambda: lib.run(spec, direct), repeats=repeats)
    except Exception as e:  # noqa: BLE001 - an opt-in kernel's row, not fatal
        t["wgmma"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:  # the queries and the new keys by one kernel (ONNXATTN_GQA_CUDA_ROTATION=joint, opt-in until timed here)
        with env_vars({"ONNXATTN_GQA_CUDA_ROTATION": "joint"}):
            row["joint_new_tokens"] = lib.run(spec, direct)["joint_new_tokens"]
            if row["joint_new_tokens"]:
                t["joint"] = timings(ours, repeats)
                t["joint"]["graph"] = time_graph(lambda: lib.run(spec, direct), repeats=repeats)
    except Exception as e:  # noqa: BLE001 - an opt-in kernel's row, not fatal
        t["joint"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    for name, qq, yy in (("core_same_layout", q_view, y_view), ("core_contiguous", q_contiguous, y_contiguous)):
        try:
            call = lambda qq=qq, yy=yy: lib.sdpa.run(qq, k_rot, v_rot, causal=True, out=yy)  # noqa: E731
            row.setdefault("core_plan", call()[2]["reason"])
            t[name] = {"graph": time_graph(call, repeats=repeats)}
        except Exception as e:  # noqa: BLE001 - a diagnosis row, not fatal
            t[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    cos, sin = rope_caches(seq)
    buffers = [torch.zeros(1, HKV, seq, D, dtype=torch.half, device="cuda") for _ in range(2)]
    theirs_out = {"output": torch.empty_like(q), "present_key": buffers[0], "present_value": buffers[1]}
    try:
        theirs = Bound(ort, ort_gqa_model(), {
            "query": q, "key": k, "value": v, "past_key": buffers[0], "past_value": buffers[1],
            "seqlens_k": torch.tensor([seq - 1], dtype=torch.int32, device="cuda"),
            "total_sequence_length": torch.tensor(seq, dtype=torch.int32), "cos_cache": cos, "sin_cache": sin,
        }, theirs_out, None)  # fmt: skip
        t["ort_gqa"] = timings(theirs, repeats)
        theirs()
        ours()
        torch.cuda.synchronize()
        row["max_abs_diff_vs_ort"] = (ours_out["output"].float() - theirs_out["output"].float()).abs().max().item()
    except Exception as e:  # noqa: BLE001
        t["ort_gqa"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:  # both ops with attention sinks (GPT-OSS): ours and onnxruntime's head_sink, checked to agree
        sinks = sink_logits()
        ours_sinks = Bound(ort, onnxattn_model(False, sinks=True), {"query": q, "key": k, "value": v, "sinks": sinks},
                           ours_out, ort_cuda_library())  # fmt: skip
        theirs_sinks = Bound(ort, ort_gqa_model(sinks=True), dict(theirs.keep[0], sinks=sinks), theirs_out, None)
        t["onnxattn+sinks"], t["ort_gqa+sinks"] = timings(ours_sinks, repeats), timings(theirs_sinks, repeats)
        ours_sinks()
        theirs_sinks()
        torch.cuda.synchronize()
        diff = ours_out["output"].float() - theirs_out["output"].float()
        row["max_abs_diff_vs_ort_sinks"] = diff.abs().max().item()
    except Exception as e:  # noqa: BLE001 - a sinks row, not fatal
        t["onnxattn+sinks"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row["ms"] = t
    row["tflops"] = {impl: {timer: (flops / (ms * 1e-3) / 1e12 if isinstance(ms, float) and ms else None)
                            for timer, ms in tt.items() if timer != "error"} for impl, tt in t.items()}  # fmt: skip
    return row


def bench_decode(ort, past: int, capacity: int, copy_gbs: float, repeats: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(1)
    randn = lambda *s: torch.randn(*s, generator=gen, device="cuda").half()  # noqa: E731
    q, k, v = randn(1, 1, HQ * D), randn(1, 1, HKV * D), randn(1, 1, HKV * D)
    row = {"kind": "decode", "dtype": "float16", "past": past, "capacity": capacity,
           "shape": f"B1 {HQ}q/{HKV}kv P{past // 1024}k M{capacity // 1024}k D{D}"}  # fmt: skip
    nbytes = 2 * HKV * (past + 1) * D * 2
    t = {}
    key_buffer, value_buffer = randn(1, HKV, capacity, D), randn(1, HKV, capacity, D)
    ours_out = {"output": torch.empty_like(q), "present_key": key_buffer, "present_value": value_buffer}
    ours_in = {"query": q, "key": k, "value": v, "past_key": key_buffer, "past_value": value_buffer,
               "past_lengths": torch.tensor([past], dtype=torch.int64, device="cuda")}  # fmt: skip
    ours = Bound(ort, onnxattn_model(True), ours_in, ours_out, ort_cuda_library())
    t["onnxattn"] = timings(ours, repeats)
    ours()
    row["in_place"] = ours.binding.get_outputs()[1].data_ptr() == key_buffer.data_ptr()
    spec = lib.Spec(seq=1, q_heads=HQ, kv_heads=HKV, head_dim=D, mode="shared", past=capacity, rope=1, rope_base=BASE)
    row["plan"] = lib.run(spec, {**ours_in, **ours_out})["attention"]["reason"]
    t["onnxattn"]["graph"] = time_graph(lambda: lib.run(spec, {**ours_in, **ours_out}), repeats=repeats)
    for name, (_, switch) in DECODE_COLUMNS.items():  # beside the default, each with the plan it ran
        try:
            with env_vars(switch):
                row.setdefault("plans", {})[name] = lib.run(spec, {**ours_in, **ours_out})["attention"]["reason"]
                t[name] = timings(ours, repeats)
                t[name]["graph"] = time_graph(lambda: lib.run(spec, {**ours_in, **ours_out}), repeats=repeats)
        except Exception as e:  # noqa: BLE001 - an opt-in path's row, not fatal
            t[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:
        cos, sin = rope_caches(capacity)
        theirs = Bound(ort, ort_gqa_model(), {
            "query": q, "key": k, "value": v, "past_key": key_buffer, "past_value": value_buffer,
            "seqlens_k": torch.tensor([past], dtype=torch.int32, device="cuda"),
            "total_sequence_length": torch.tensor(past + 1, dtype=torch.int32), "cos_cache": cos, "sin_cache": sin,
        }, {"output": torch.empty_like(q), "present_key": key_buffer, "present_value": value_buffer}, None)  # fmt: skip
        t["ort_gqa"] = timings(theirs, repeats)
    except Exception as e:  # noqa: BLE001
        t["ort_gqa"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:  # both ops with attention sinks (GPT-OSS)
        sinks = sink_logits()
        ours_sinks = Bound(ort, onnxattn_model(True, sinks=True), dict(ours_in, sinks=sinks), ours_out,
                           ort_cuda_library())  # fmt: skip
        theirs_sinks = Bound(ort, ort_gqa_model(sinks=True), dict(theirs.keep[0], sinks=sinks), theirs.keep[1], None)
        t["onnxattn+sinks"], t["ort_gqa+sinks"] = timings(ours_sinks, repeats), timings(theirs_sinks, repeats)
    except Exception as e:  # noqa: BLE001 - a sinks row, not fatal
        t["onnxattn+sinks"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row["ms"] = t
    row["gbs"] = {impl: {timer: (nbytes / (ms * 1e-3) / 1e9 if isinstance(ms, float) and ms else None)
                         for timer, ms in tt.items() if timer != "error"} for impl, tt in t.items()}  # fmt: skip
    row["fraction_of_copy"] = {impl: {timer: (g / copy_gbs if g else None) for timer, g in gg.items()}
                               for impl, gg in row["gbs"].items()}  # fmt: skip
    return row


def ort_cuda_library() -> str:
    return lib.sdpa.library_path()


def fmt(x, spec="8.1f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else "     n/a"


def print_table(env, copy_gbs, rows):
    print(f"\nGQA CUDA benchmark on {env['device']} (driver {env['driver']}, commit {env['commit'][:12]}); "
          f"measured copy bandwidth {copy_gbs:.0f} GB/s")  # fmt: skip
    print(f"{'kind':8} {'shape':34} {'ours gpu':>9} {'ort gpu':>9} {'ours wall':>9} {'ort wall':>9} "
          f"{'ours graph':>10}  unit; ours/ort (gpu)")  # fmt: skip
    for r in rows:
        metric, unit = (r["tflops"], "TFLOP/s") if r["kind"] == "prefill" else (r["gbs"], "GB/s")
        ours, theirs = metric.get("onnxattn", {}), metric.get("ort_gqa", {})
        ratio = ours.get("gpu") / theirs["gpu"] if ours.get("gpu") and theirs.get("gpu") else None
        extra = ""
        if r["kind"] == "decode":
            frac = r["fraction_of_copy"].get("onnxattn", {})
            extra = f", ours {100 * (frac.get('gpu') or 0):.0f}% of copy bw (graph {100 * (frac.get('graph') or 0):.0f}%)"
            for name, (label, _) in DECODE_COLUMNS.items():
                f = r["fraction_of_copy"].get(name, {})
                if f.get("gpu") or f.get("graph"):
                    gpu, graph = 100 * (f.get("gpu") or 0), 100 * (f.get("graph") or 0)
                    extra += f"; with {label} {gpu:.0f}% (graph {graph:.0f}%)"
        print(f"{r['kind']:8} {r['shape']:34} {fmt(ours.get('gpu'), '9.1f')} {fmt(theirs.get('gpu'), '9.1f')} "
              f"{fmt(ours.get('wall'), '9.1f')} {fmt(theirs.get('wall'), '9.1f')} {fmt(ours.get('graph'), '10.1f')}  "
              f"{unit}; {fmt(ratio, '5.2f')}x{extra}")  # fmt: skip
        if r["kind"] == "prefill":
            same, contiguous = metric.get("core_same_layout", {}), metric.get("core_contiguous", {})
            rotated = metric.get("rotated_queries", {})
            print(f"{'':8} attention core alone (graph): {fmt(same.get('graph'), '6.1f')} TFLOP/s on the same memory, "
                  f"{fmt(contiguous.get('graph'), '6.1f')} on a contiguous Q; the op's graph: {fmt(ours.get('graph'), '6.1f')}, "
                  f"with its queries rotated ahead: {fmt(rotated.get('graph'), '6.1f')}")
            for name, label in (("wgmma", "on the wgmma prefill kernel"),
                                ("joint", "queries and new keys by one kernel (ROTATION=joint)")):
                other = metric.get(name, {})
                other_ratio = other.get("gpu") / theirs["gpu"] if other.get("gpu") and theirs.get("gpu") else None
                print(f"{'':8} {label}: {fmt(other.get('gpu'), '6.1f')} TFLOP/s (gpu), graph "
                      f"{fmt(other.get('graph'), '6.1f')}; {fmt(other_ratio, '5.2f')}x ORT's")
        ours_sinks, theirs_sinks = metric.get("onnxattn+sinks", {}), metric.get("ort_gqa+sinks", {})
        sinks_ratio = (ours_sinks.get("gpu") / theirs_sinks["gpu"]
                       if ours_sinks.get("gpu") and theirs_sinks.get("gpu") else None)
        print(f"{'':8} with attention sinks (gpu): ours {fmt(ours_sinks.get('gpu'), '6.1f')}, ORT's head_sink "
              f"{fmt(theirs_sinks.get('gpu'), '6.1f')} {unit}; {fmt(sinks_ratio, '5.2f')}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats (a smoke run)")
    args = parser.parse_args(argv)
    ort, why_not = ort_cuda.benchmark_runtime("bench_gqa_cuda")
    if ort is None:
        print(why_not, file=sys.stderr)
        return 2
    env = environment()
    env["onnxruntime"] = ort.__version__
    copy_gbs = copy_bandwidth_gbs()
    repeats = 5 if args.quick else 20
    out = Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"bench_gqa_cuda_{env['date'][:10]}_{env['device'].replace(' ', '_')}.json"
    rows = []

    def save():
        out.write_text(json.dumps({"environment": env, "copy_bandwidth_gbs": copy_gbs, "results": rows}, indent=1))

    rows.append(bench_prefill(ort, 2048, repeats))
    save()
    decodes = [(4096, 4097), (32768, 32769)] if args.quick else [
        (4096, 4097), (16384, 16385), (32768, 32769), (65536, 65537), (4096, 65537)]  # fmt: skip
    for past, capacity in decodes:
        rows.append(bench_decode(ort, past, capacity, copy_gbs, repeats))
        save()
        torch.cuda.empty_cache()
    print_table(env, copy_gbs, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
