"""CPU benchmark of onnxattn::GroupQueryAttention against onnxruntime's com.microsoft.GroupQueryAttention and
our own reference function, side by side in one run.

Shapes of a Llama-3-8B layer (Hq=32, Hkv=8, D=128, RoPE), fp32 (--dtype float16: every input, output and cache in
fp16, for all three), B=1:
  - prefill S=2048: ms and GFLOP/s (causal FLOPs 4*Hq*S^2*D/2); onnxattn vs ort_gqa vs function (inlined: what runs
    without our library, its query rows in chunks once the [B, Hq, S, T] scores pass 2^25 values) vs
    function_whole (the same function with every row at once: the plain unfused decomposition);
  - decode (S=1) over P cached tokens in shared-buffer mode: past and present are one preallocated buffer
    of M >= P+1 tokens bound with onnxruntime I/O binding (present bound to the past's OrtValue), so the
    kernel writes only the new token. GB/s of K+V read = 2*Hkv*(P+1)*D*(4 or 2) bytes / time. Each P runs with
    M = P+64 and M = 32768: the time must follow P, not M (no O(M) copy). ORT's op runs the same way
    (its past_present_share_buffer mode), and so does the function (bound the same way: onnxruntime's
    ScatterElements skips its copy in place, and the function attends to the longest valid prefix).
With --sinks, the same rounds also time both ops with attention sinks (one logit per query head: our `sinks`
input, onnxruntime's `head_sink`), checked to agree, and the results go to gqa_cpu_sinks.json.
Timing (cpu_timing.py, as every CPU benchmark): rounds in which every implementation runs one burst, a pause
of --settle seconds (the previous implementation's pool threads stop spinning), one untimed call, then timed
calls for at least --burst seconds; the median over all timed calls. Decode runs --repeat rounds, prefill
max(3, --repeat // 2).

    python benchmarks/bench_gqa_cpu.py [--dtype float32] [--repeat 10] [--settle 0.1] [--burst 0.02] [--sinks]
                                       [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.ops import _bodies
from onnxattn.cuda_ep import make_session

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

HQ, HKV, D, BASE = 32, 8, 128, 10000.0
F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
DTYPES = {"float32": (TensorProto.FLOAT, np.float32), "float16": (TensorProto.FLOAT16, np.float16)}


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def onnxattn_model(shared: bool, sinks: bool = False, dtype: str = "float32"):
    elem = DTYPES[dtype][0]
    inputs = ["q", "k", "v"] + (["past_key", "past_value", "past_lengths"] if shared else [])
    if sinks:  # input 11; the optional inputs in between absent
        inputs += [""] * (11 - len(inputs)) + ["sinks"]
    outputs = ["y"] + (["present_key", "present_value"] if shared else [])
    node = helper.make_node("GroupQueryAttention", inputs, outputs, domain=ops.DOMAIN, num_heads=HQ,
                            kv_num_heads=HKV, rope=1, rope_base=BASE)
    graph_inputs = [_vi("q", elem, [1, "S", HQ * D]), _vi("k", elem, [1, "S", HKV * D]),
                    _vi("v", elem, [1, "S", HKV * D])]
    graph_outputs = [_vi("y", elem, [1, "S", HQ * D])]
    if shared:
        graph_inputs += [_vi("past_key", elem, [1, HKV, "M", D]), _vi("past_value", elem, [1, HKV, "M", D]),
                         _vi("past_lengths", I64, [1])]
        graph_outputs += [_vi("present_key", elem, [1, HKV, "M", D]), _vi("present_value", elem, [1, HKV, "M", D])]
    if sinks:
        graph_inputs.append(_vi("sinks", elem, [HQ]))
    model = helper.make_model(helper.make_graph([node], "gqa", graph_inputs, graph_outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def ort_gqa_model(sinks: bool = False, dtype: str = "float32"):
    """onnxruntime's contrib op with its rotary (cos/sin caches) and a shared past/present buffer."""
    elem = DTYPES[dtype][0]
    inputs = ["q", "k", "v", "past_key", "past_value", "seqlens_k", "total_len", "cos_cache", "sin_cache"]
    if sinks:  # head_sink is input 11 (position_ids and attention_bias absent)
        inputs += ["", "", "sinks"]
    node = helper.make_node("GroupQueryAttention", inputs, ["y", "present_key", "present_value"],
                            domain="com.microsoft", num_heads=HQ, kv_num_heads=HKV, do_rotary=1)
    graph_inputs = [_vi("q", elem, [1, "S", HQ * D]), _vi("k", elem, [1, "S", HKV * D]),
                    _vi("v", elem, [1, "S", HKV * D]),
                    _vi("past_key", elem, [1, HKV, "M", D]), _vi("past_value", elem, [1, HKV, "M", D]),
                    _vi("seqlens_k", I32, [1]), _vi("total_len", I32, []),
                    _vi("cos_cache", elem, ["T", D // 2]), _vi("sin_cache", elem, ["T", D // 2])]
    if sinks:
        graph_inputs.append(_vi("sinks", elem, [HQ]))
    graph_outputs = [_vi("y", elem, [1, "S", HQ * D]), _vi("present_key", elem, [1, HKV, "M", D]),
                     _vi("present_value", elem, [1, HKV, "M", D])]
    return helper.make_model(helper.make_graph([node], "ort_gqa", graph_inputs, graph_outputs),
                             opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=ops.IR_VERSION)


def rope_caches(length: int, dtype: str = "float32"):
    inv_freq = BASE ** (-np.arange(0, D, 2, dtype=np.float32) / D)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None]
    return np.cos(angles).astype(DTYPES[dtype][1]), np.sin(angles).astype(DTYPES[dtype][1])


# Sink logits about the size of the largest scores, so that the sink takes a real share of each row.
SINKS = np.random.default_rng(2).uniform(-1.0, 4.0, HQ).astype(np.float32)


@contextlib.contextmanager
def whole_rows():
    """Reference functions built inside score every query row at once (no chunks, whatever their size)."""
    saved = _bodies.CHUNK_ELEMENTS
    _bodies.CHUNK_ELEMENTS = 1 << 62
    try:
        yield
    finally:
        _bodies.CHUNK_ELEMENTS = saved


# Largest |ours - onnxruntime's| accepted before timing: float32 rounding, or one fp16 step of outputs of a few units
AGREE = {"float32": 1e-3, "float16": 1e-2}


def bench_prefill(s: int, repeat: int, with_function: bool, settle: float = cpu_timing.SETTLE,
                  burst: float = cpu_timing.BURST, sinks: bool = False, dtype: str = "float32") -> list[dict]:
    rng, npt = np.random.default_rng(0), DTYPES[dtype][1]
    q = rng.standard_normal((1, s, HQ * D), np.float32).astype(npt)
    k = rng.standard_normal((1, s, HKV * D), np.float32).astype(npt)
    v = rng.standard_normal((1, s, HKV * D), np.float32).astype(npt)
    cpu = ["CPUExecutionProvider"]
    ours = make_session(onnxattn_model(False, dtype=dtype), providers=cpu)
    theirs = make_session(ort_gqa_model(dtype=dtype), providers=cpu, use_library=False)
    cos, sin = rope_caches(s, dtype)
    empty = np.zeros((1, HKV, s, D), npt)  # shared buffer holding the prompt
    ort_feeds = {"q": q, "k": k, "v": v, "past_key": empty, "past_value": empty.copy(),
                 "seqlens_k": np.array([s - 1], np.int32), "total_len": np.array(s, np.int32),
                 "cos_cache": cos, "sin_cache": sin}
    y_ours = ours.run(None, {"q": q, "k": k, "v": v})[0]
    y_theirs = theirs.run(["y"], ort_feeds)[0]
    err = float(np.max(np.abs(y_ours.astype(np.float32) - y_theirs)))
    if err > AGREE[dtype]:
        raise SystemExit(f"prefill: onnxattn and onnxruntime's GroupQueryAttention disagree (max error {err:.2e})")
    runs = {"onnxattn": lambda: ours.run(None, {"q": q, "k": k, "v": v}),
            "ort_gqa": lambda: theirs.run(["y"], ort_feeds)}
    if with_function:
        function = make_session(onnxattn_model(False, dtype=dtype), providers=cpu, use_library=False)
        runs["function"] = lambda: function.run(None, {"q": q, "k": k, "v": v})
        with whole_rows():
            whole = make_session(onnxattn_model(False, dtype=dtype), providers=cpu, use_library=False)
        runs["function_whole"] = lambda: whole.run(None, {"q": q, "k": k, "v": v})
    if sinks:
        ours_sinks = make_session(onnxattn_model(False, sinks=True, dtype=dtype), providers=cpu)
        theirs_sinks = make_session(ort_gqa_model(sinks=True, dtype=dtype), providers=cpu, use_library=False)
        sinks_in = SINKS.astype(npt)
        ours_feeds, ort_sink_feeds = {"q": q, "k": k, "v": v, "sinks": sinks_in}, dict(ort_feeds, sinks=sinks_in)
        y_ours = ours_sinks.run(None, ours_feeds)[0].astype(np.float32)
        err = float(np.max(np.abs(y_ours - theirs_sinks.run(["y"], ort_sink_feeds)[0])))
        if err > AGREE[dtype]:
            raise SystemExit(f"prefill with sinks: onnxattn and onnxruntime disagree (max error {err:.2e})")
        runs["onnxattn+sinks"] = lambda: ours_sinks.run(None, ours_feeds)
        runs["ort_gqa+sinks"] = lambda: theirs_sinks.run(["y"], ort_sink_feeds)
    flops = 4 * HQ * s * s * D / 2
    rows = []
    for impl, seconds in cpu_timing.median_rounds(runs, repeat, settle, burst).items():
        rows.append({"phase": "prefill", "S": s, "impl": impl, "ms": seconds * 1e3, "gflops": flops / seconds / 1e9,
                     "dtype": dtype})
    return rows


def bench_decode(past: int, capacity: int, repeat: int, settle: float = cpu_timing.SETTLE,
                 burst: float = cpu_timing.BURST, sinks: bool = False, with_function: bool = False,
                 dtype: str = "float32") -> list[dict]:
    rng, npt = np.random.default_rng(1), DTYPES[dtype][1]
    cpu = ["CPUExecutionProvider"]
    q = rng.standard_normal((1, 1, HQ * D), np.float32).astype(npt)
    k = rng.standard_normal((1, 1, HKV * D), np.float32).astype(npt)
    v = rng.standard_normal((1, 1, HKV * D), np.float32).astype(npt)
    runs, bindings = {}, {}
    impls = ("onnxattn", "ort_gqa") + (("function",) if with_function else ()) + (
        ("onnxattn+sinks", "ort_gqa+sinks") if sinks else ())
    for impl in impls:
        with_sinks = impl.endswith("+sinks")
        key_buffer, value_buffer = (ort.OrtValue.ortvalue_from_numpy(
            rng.standard_normal((1, HKV, capacity, D), np.float32).astype(npt)) for _ in range(2))
        if impl.startswith("onnxattn") or impl == "function":
            session = make_session(onnxattn_model(True, with_sinks, dtype), providers=cpu,
                                   use_library=impl != "function")
            extra = {"past_lengths": np.array([past], np.int64)}
        else:
            session = make_session(ort_gqa_model(with_sinks, dtype), providers=cpu, use_library=False)
            cos, sin = rope_caches(capacity, dtype)
            extra = {"seqlens_k": np.array([past], np.int32), "total_len": np.array(past + 1, np.int32),
                     "cos_cache": cos, "sin_cache": sin}
        if with_sinks:
            extra["sinks"] = SINKS.astype(npt)
        binding = session.io_binding()
        for name, value in {"q": q, "k": k, "v": v, **extra}.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_input("past_key", key_buffer)
        binding.bind_ortvalue_input("past_value", value_buffer)
        binding.bind_output("y")
        binding.bind_ortvalue_output("present_key", key_buffer)  # the same buffer: updated in place
        binding.bind_ortvalue_output("present_value", value_buffer)
        runs[impl] = lambda session=session, binding=binding: session.run_with_iobinding(binding)
        bindings[impl] = (binding, key_buffer)
    rows = []
    read = 2 * HKV * (past + 1) * D * np.dtype(npt).itemsize
    for impl, seconds in cpu_timing.median_rounds(runs, repeat, settle, burst).items():
        binding, key_buffer = bindings[impl]
        in_place = binding.get_outputs()[1].data_ptr() == key_buffer.data_ptr()
        rows.append({"phase": "decode", "P": past, "M": capacity, "impl": impl, "ms": seconds * 1e3,
                     "gbps": read / seconds / 1e9, "in_place": in_place, "dtype": dtype})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=2048)
    parser.add_argument("--past", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--capacity", type=int, default=32768)
    parser.add_argument("--repeat", type=int, default=10, help="rounds of bursts (prefill: max(3, repeat // 2))")
    cpu_timing.add_arguments(parser)
    parser.add_argument("--no-function", action="store_true", help="skip the inlined reference function")
    parser.add_argument("--sinks", action="store_true", help="also time both ops with attention sinks")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="element type of every input, output and cache (results: gqa_cpu_float16.json)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = cpu_timing.load_average()  # other work on the machine: recorded with the rows
    rows = bench_prefill(args.prefill, max(3, args.repeat // 2), not args.no_function, args.settle, args.burst,
                         args.sinks, args.dtype)
    for past in args.past:
        for capacity in (past + 64, max(args.capacity, past + 64)):
            rows += bench_decode(past, capacity, args.repeat, args.settle, args.burst, args.sinks,
                                 not args.no_function, args.dtype)
    load = [load_before, cpu_timing.load_average()]

    print(f"\nGroupQueryAttention, {args.dtype}, B=1, Hq={HQ}, Hkv={HKV}, D={D}, RoPE, CPU execution provider, onnxruntime "
          f"{ort.__version__}; load average {load[0]} -> {load[1]}")
    prefill = {r["impl"]: r for r in rows if r["phase"] == "prefill"}
    print(f"prefill S={args.prefill}:")
    for impl, r in prefill.items():
        ratio = r["ms"] / prefill["onnxattn"]["ms"]
        print(f"  {impl:<14} {r['ms']:9.2f} ms {r['gflops']:8.1f} GFLOP/s   onnxattn is {ratio:.2f}x faster")
    print("decode S=1, shared buffer updated in place (I/O binding):")
    print(f"  {'impl':<14} {'P':>6} {'M':>6} {'ms':>8} {'GB/s':>7}  in place")
    for r in rows:
        if r["phase"] == "decode":
            print(f"  {r['impl']:<14} {r['P']:>6} {r['M']:>6} {r['ms']:8.2f} {r['gbps']:7.1f}  {r['in_place']}")
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("_sinks" if args.sinks else "") + ("" if args.dtype == "float32" else f"_{args.dtype}")
    path = args.out / f"gqa_cpu{suffix}.json"
    from bench_sdpa_cpu import machine  # same machine description as the SDPA benchmark

    timing = {"repeat": args.repeat, "settle": args.settle, "burst": args.burst}
    path.write_text(json.dumps({"machine": machine(), "dtype": args.dtype, "load_average": load, "timing": timing,
                                "rows": rows}, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
