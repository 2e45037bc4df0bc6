"""CPU benchmark: paged decode (onnxattn::PagedAttention) against contiguous decode (onnxattn::GroupQueryAttention
in shared-buffer mode) of the same data, in one run.

Shapes: B sequences of P cached tokens each (default B=8, P=4096), one new token per sequence, Hq=32 over
Hkv=8, D=128 (Llama-3-8B), RoPE, fp32. Both update their caches in place through I/O binding:
  - contiguous: past/present buffers [B, Hkv, M, D] (M = P + 16), present bound to the past's OrtValue;
  - paged: pools [num_blocks, 16, Hkv, D] holding the same K/V, each sequence's blocks in order ("in-order")
    or scattered over the pool ("shuffled"), cache outputs bound to the input pools.
The outputs must agree before anything is timed. GB/s counts the K+V bytes read, 2*B*Hkv*(P+1)*D*4, and the
ratio is paged time / contiguous time (target: <= 1.15). Medians over --repeat rounds of bursts
(cpu_timing.py, as every CPU benchmark: in each round each implementation a pause of --settle seconds, one
untimed call, then timed calls for at least --burst seconds); with one thread also the ratio of CPU times,
which other load on the machine disturbs less than wall time.

    python benchmarks/bench_paged_cpu.py [--batch 8] [--past 4096] [--block-size 16] [--threads 1 2]
                                         [--repeat 30] [--settle 0.1] [--burst 0.02]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.cuda_ep import make_session

if str(Path(__file__).parent) not in sys.path:  # cpu_timing next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
import cpu_timing  # noqa: E402

HQ, HKV, D = 32, 8, 128
F32, I64, I32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
ATTRS = dict(num_heads=HQ, kv_num_heads=HKV, rope=1)


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(node, inputs, outputs):
    model = helper.make_model(helper.make_graph([node], node.op_type, inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(ops.DOMAIN, 1)],
                              ir_version=ops.IR_VERSION)
    return ops.attach_functions(model)


def contiguous_model():
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "past_key", "past_value", "past_lengths"],
                            ["y", "present_key", "present_value"], domain=ops.DOMAIN, **ATTRS)
    buffer = ["B", HKV, "M", D]
    return _model(node, [_vi("q", F32, ["B", "S", HQ * D]), _vi("k", F32, ["B", "S", HKV * D]),
                         _vi("v", F32, ["B", "S", HKV * D]), _vi("past_key", F32, buffer),
                         _vi("past_value", F32, buffer), _vi("past_lengths", I64, ["B"])],
                  [_vi("y", F32, ["B", "S", HQ * D]), _vi("present_key", F32, buffer),
                   _vi("present_value", F32, buffer)])


def paged_model():
    node = helper.make_node("PagedAttention", ["q", "k", "v", "key_cache", "value_cache", "block_table",
                                               "cu_seqlens_q", "seq_lens"],
                            ["y", "key_cache_out", "value_cache_out"], domain=ops.DOMAIN, **ATTRS)
    pool = ["N", "bs", HKV, D]
    return _model(node, [_vi("q", F32, ["T", HQ * D]), _vi("k", F32, ["T", HKV * D]), _vi("v", F32, ["T", HKV * D]),
                         _vi("key_cache", F32, pool), _vi("value_cache", F32, pool),
                         _vi("block_table", I32, ["B", "W"]), _vi("cu_seqlens_q", I32, ["B1"]),
                         _vi("seq_lens", I32, ["B"])],
                  [_vi("y", F32, ["T", HQ * D]), _vi("key_cache_out", F32, pool), _vi("value_cache_out", F32, pool)])


class Runner:
    """One session with its inputs bound (caches bound in place); run() is one decode step. Each run writes
    the same new token into the same slot, so every run sees the same data."""

    def __init__(self, model, feeds: dict, caches: dict[str, str], threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = make_session(model, providers=["CPUExecutionProvider"], session_options=options)
        self.binding = self.session.io_binding()
        self.caches = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name]) for name in caches}
        for name, value in feeds.items():
            if name in self.caches:
                self.binding.bind_ortvalue_input(name, self.caches[name])
            else:
                self.binding.bind_cpu_input(name, value)
        self.y = ort.OrtValue.ortvalue_from_numpy(np.zeros_like(feeds["q"]))
        self.binding.bind_ortvalue_output("y", self.y)
        for name, output in caches.items():
            self.binding.bind_ortvalue_output(output, self.caches[name])

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def in_place(self) -> bool:
        return all(out.data_ptr() == self.caches[name].data_ptr()
                   for name, out in zip(self.caches, self.binding.get_outputs()[1:]))


def problem(batch: int, past: int, block_size: int, layout: str, seed: int = 0):
    """(contiguous feeds, paged feeds) of the same data."""
    rng = np.random.default_rng(seed)
    capacity = past + 16
    keys = rng.standard_normal((batch, HKV, capacity, D), np.float32)
    values = rng.standard_normal((batch, HKV, capacity, D), np.float32)
    q = rng.standard_normal((batch, 1, HQ * D), np.float32)
    k = rng.standard_normal((batch, 1, HKV * D), np.float32)
    v = rng.standard_normal((batch, 1, HKV * D), np.float32)
    contiguous = dict(q=q, k=k, v=v, past_key=keys, past_value=values,
                      past_lengths=np.full(batch, past, np.int64))
    per_seq = -(-(past + 1) // block_size)
    num_blocks = batch * per_seq
    order = rng.permutation(num_blocks) if layout == "shuffled" else np.arange(num_blocks)
    table = order.reshape(batch, per_seq).astype(np.int32)
    pools = []
    for cache in (keys, values):
        pool = np.zeros((num_blocks, block_size, HKV, D), np.float32)
        for b in range(batch):
            tokens = cache[b, :, :past].transpose(1, 0, 2)  # [P, Hkv, D]
            padded = np.zeros((per_seq * block_size, HKV, D), np.float32)
            padded[:past] = tokens
            pool[table[b]] = padded.reshape(per_seq, block_size, HKV, D)
        pools.append(pool)
    paged = dict(q=q.reshape(batch, HQ * D), k=k.reshape(batch, HKV * D), v=v.reshape(batch, HKV * D),
                 key_cache=pools[0], value_cache=pools[1], block_table=table,
                 cu_seqlens_q=np.arange(batch + 1, dtype=np.int32), seq_lens=np.full(batch, past + 1, np.int32))
    return contiguous, paged


def bench(batch: int, past: int, block_size: int, layout: str, threads: int, repeat: int,
          settle: float = cpu_timing.SETTLE, burst: float = cpu_timing.BURST) -> dict:
    contiguous_feeds, paged_feeds = problem(batch, past, block_size, layout)
    runners = {
        "contiguous": Runner(contiguous_model(), contiguous_feeds,
                             {"past_key": "present_key", "past_value": "present_value"}, threads),
        "paged": Runner(paged_model(), paged_feeds, {"key_cache": "key_cache_out", "value_cache": "value_cache_out"},
                        threads),
    }
    for r in runners.values():
        r.run()
    y_contiguous, y_paged = (runners[n].y.numpy().reshape(batch, -1) for n in ("contiguous", "paged"))
    err = float(np.abs(y_contiguous - y_paged).max())
    if err > 1e-4:
        raise SystemExit(f"paged and contiguous decode disagree (max error {err:.2e})")
    cpu_times: dict[str, list[float]] = {}  # with one thread: robust to other load on the machine
    times = cpu_timing.time_rounds({name: r.run for name, r in runners.items()}, repeat, settle, burst,
                                   cpu_times=cpu_times)
    read = 2 * batch * HKV * (past + 1) * D * 4
    row = dict(B=batch, P=past, block_size=block_size, layout=layout, threads=threads, max_error=err)
    for name, ts in times.items():
        seconds = statistics.median(ts)
        row[f"{name}_ms"] = seconds * 1e3
        row[f"{name}_gbps"] = read / seconds / 1e9
        row[f"{name}_in_place"] = runners[name].in_place()
        if threads == 1:
            row[f"{name}_cpu_ms"] = statistics.median(cpu_times[name]) * 1e3
    row["ratio"] = row["paged_ms"] / row["contiguous_ms"]
    if threads == 1:
        row["cpu_ratio"] = row["paged_cpu_ms"] / row["contiguous_cpu_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--past", type=int, default=4096)
    parser.add_argument("--block-size", type=int, nargs="+", default=[16])
    parser.add_argument("--layout", nargs="+", default=["in-order", "shuffled"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=30, help="rounds of bursts")
    cpu_timing.add_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    load_before = cpu_timing.load_average()  # other work on the machine slows both sides; recorded with the rows
    rows = [bench(args.batch, args.past, bs, layout, threads, args.repeat, args.settle, args.burst)
            for threads in args.threads for bs in args.block_size for layout in args.layout]
    load = [load_before, cpu_timing.load_average()]
    print(f"\nPaged vs contiguous decode, fp32, B={args.batch}, P={args.past}, Hq={HQ}, Hkv={HKV}, D={D}, RoPE; "
          f"onnxruntime {ort.__version__}; caches updated in place (I/O binding); load average {load[0]} -> {load[1]}")
    print(f"  {'threads':>7} {'block':>5} {'layout':<9} {'contig ms':>9} {'GB/s':>6} {'paged ms':>9} {'GB/s':>6} "
          f"{'paged/contig':>12} {'(CPU time)':>10}  in place")
    for r in rows:
        cpu = f"{r['cpu_ratio']:10.3f}" if "cpu_ratio" in r else f"{'':>10}"
        print(f"  {r['threads']:>7} {r['block_size']:>5} {r['layout']:<9} {r['contiguous_ms']:9.2f} "
              f"{r['contiguous_gbps']:6.1f} {r['paged_ms']:9.2f} {r['paged_gbps']:6.1f} {r['ratio']:12.3f} {cpu}  "
              f"{r['contiguous_in_place'] and r['paged_in_place']}")
    print("Outputs: paged and contiguous agree to max error "
          f"{max(r['max_error'] for r in rows):.1e} (decode tiles are the same: 0 expected).")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "paged_cpu.json"
    from bench_sdpa_cpu import machine  # the same machine description as the other CPU benchmarks

    timing = {"repeat": args.repeat, "settle": args.settle, "burst": args.burst}
    path.write_text(json.dumps({"machine": machine(), "load_average": load, "timing": timing, "rows": rows},
                               indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
