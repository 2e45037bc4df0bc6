"""CUDA benchmark of onnxattn::PagedAttention decode: bandwidth as a fraction of the device's measured copy
bandwidth (issue 5's target: >= 70%; anchors: FlashInfer paged decode ~88%, vLLM v2 ~85% on H100), and
against our contiguous GroupQueryAttention decode of the same data (same process, same device).

Shape (issue 5): a Llama-3-8B layer (Hq=32, Hkv=8, D=128, RoPE), float16, B=64 sequences of 4096 keys each
(4095 cached + the new token), blocks of 16 slots, one decode step in place (the output pools bound to the
input pools). Rows: blocks shuffled across the pool (the serving case), blocks in order, and (full runs) a
chunked-prefill step mixing 63 decodes with one 512-token chunk. Bandwidth = bytes of K+V read
(2*B*Hkv*4096*D*2) / time; the whole op is timed (layout, new-token, schedule, attention kernels).

Timers:
  - graph: our kernels through the library's C test entry, `calls` back-to-back calls replayed from a CUDA
    graph (no host overhead): the headline number;
  - gpu: summed device time of every kernel one call launches (torch.profiler), through the C entry and,
    when onnxruntime-gpu is present, through the CUDA EP with I/O binding;
  - wall (onnxruntime): wall clock around run_with_iobinding.
Baseline: GroupQueryAttention's CUDA kernel (ours) in shared-buffer mode on the same keys stored
contiguously ([B, Hkv, 4096, D]), graph-timed the same way; since the contiguous decode took direct K/V loads
(H200, 82087dc) it reads ~1.5x faster than the paged one's slot lookup, so each row also times the opt-in direct
loads over paged blocks (ONNXATTN_SDPA_CUDA_DECODE_LOADS=direct: one lookup a 16-key step), graph-timed.

Usage: python benchmarks/bench_paged_cuda.py [--out FILE_OR_DIR] [--quick]
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
import gqa_cuda_lib  # noqa: E402
import ort_cuda  # noqa: E402
import paged_cuda_lib as lib  # noqa: E402
from bench_gqa_cuda import device_ms  # noqa: E402
from bench_sdpa_cuda import copy_bandwidth_gbs, env_vars, environment, time_graph, time_wall  # noqa: E402

HQ, HKV, D, BASE = 32, 8, 128, 10000.0
BATCH, KEYS, BLOCK = 64, 4096, 16


def problem(batch: int, new: list[int], keys: int, shuffled: bool, seed: int = 0) -> dict:
    """Inputs of one step: sequence b has keys[b] - new[b] cached keys and new[b] new tokens."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, device="cuda").half()  # noqa: E731
    per_seq = -(-keys // BLOCK)
    num_blocks = batch * per_seq + 8
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed)) if shuffled else torch.arange(num_blocks)
    table = order[: batch * per_seq].reshape(batch, per_seq).to(torch.int32)
    tokens = sum(new)
    cu = torch.tensor([0] + list(torch.tensor(new).cumsum(0)), dtype=torch.int32)
    return dict(query=randn(tokens, HQ * D), key=randn(tokens, HKV * D), value=randn(tokens, HKV * D),
                key_cache=randn(num_blocks, BLOCK, HKV, D), value_cache=randn(num_blocks, BLOCK, HKV, D),
                block_table=table.cuda(), cu_seqlens_q=cu.cuda(),
                seq_lens=torch.full((batch,), keys, dtype=torch.int32, device="cuda"))  # fmt: skip


def spec(t: dict) -> lib.Spec:
    return lib.Spec(tokens=t["query"].shape[0], batch=t["block_table"].shape[0], q_heads=HQ, kv_heads=HKV, head_dim=D,
                    num_blocks=t["key_cache"].shape[0], block_size=BLOCK, max_blocks=t["block_table"].shape[1],
                    rope=1, rope_base=BASE, dtype=lib.FLOAT16)  # fmt: skip


def contiguous(t: dict, new: int) -> dict:
    """The same keys in a GroupQueryAttention shared buffer [B, Hkv, KEYS, D] (decode rows only)."""
    b = t["block_table"].shape[0]
    out = {}
    for name, pool in (("past_key", t["key_cache"]), ("past_value", t["value_cache"])):
        blocks = pool[t["block_table"].long()]  # [B, blocks, BLOCK, Hkv, D]
        out[name] = blocks.reshape(b, -1, HKV, D)[:, :KEYS].permute(0, 2, 1, 3).contiguous()
    out.update(query=t["query"][:b].reshape(b, 1, -1), key=t["key"][:b].reshape(b, 1, -1),
               value=t["value"][:b].reshape(b, 1, -1),
               past_lengths=torch.full((b,), KEYS - new, dtype=torch.int64, device="cuda"),
               output=torch.empty(b, 1, HQ * D, dtype=torch.half, device="cuda"))  # fmt: skip
    out["present_key"], out["present_value"] = out["past_key"], out["past_value"]
    return out


def paged_model(batch: int, tokens: int, num_blocks: int, max_blocks: int) -> bytes:
    from onnx import TensorProto, helper

    f16, i32 = TensorProto.FLOAT16, TensorProto.INT32
    vi = helper.make_tensor_value_info
    pools = [num_blocks, BLOCK, HKV, D]
    inputs = [vi("query", f16, [tokens, HQ * D]), vi("key", f16, [tokens, HKV * D]), vi("value", f16, [tokens, HKV * D]),
              vi("key_cache", f16, pools), vi("value_cache", f16, pools), vi("block_table", i32, [batch, max_blocks]),
              vi("cu_seqlens_q", i32, [batch + 1]), vi("seq_lens", i32, [batch])]  # fmt: skip
    outputs = [vi("output", f16, [tokens, HQ * D]), vi("key_cache_out", f16, pools), vi("value_cache_out", f16, pools)]
    node = helper.make_node("PagedAttention", [i.name for i in inputs], [o.name for o in outputs], domain="onnxattn",
                            num_heads=HQ, kv_num_heads=HKV, causal=1, rope=1, rope_base=BASE)  # fmt: skip
    graph = helper.make_graph([node], "paged", inputs, outputs)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxattn", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def rate(nbytes, ms):
    return nbytes / (ms * 1e-3) / 1e9 if isinstance(ms, float) and ms else None


def bench(label: str, new: list[int], shuffled: bool, copy_gbs: float, repeats: int, ort) -> dict:
    batch = len(new)
    t = problem(batch, new, KEYS, shuffled)
    s = spec(t)
    tensors = {**t, "output": torch.empty_like(t["query"]), "key_cache_out": t["key_cache"],
               "value_cache_out": t["value_cache"]}  # in place  # fmt: skip
    row = {"kind": label, "dtype": "float16", "batch": batch, "keys": KEYS, "block_size": BLOCK,
           "new_tokens": sum(new), "shuffled": shuffled,
           "shape": f"B{batch} {HQ}q/{HKV}kv P{KEYS // 1024}k bs{BLOCK} D{D}{' shuffled' if shuffled else ''}"}  # fmt: skip
    nbytes = 2 * batch * HKV * KEYS * D * 2
    row["kv_bytes"] = nbytes
    call = lambda: lib.run(s, tensors)  # noqa: E731
    row["plan"] = call()["reason"]
    ms = {"onnxattn": {"graph": time_graph(call, repeats=repeats), "gpu": device_ms(call)}}
    # opt-in: the decode's direct loads over paged blocks, one lookup a 16-key step (ONNXATTN_SDPA_CUDA_DECODE_LOADS)
    with env_vars({"ONNXATTN_SDPA_CUDA_DECODE_LOADS": "direct"}):
        row["plan_direct"] = call()["reason"]
        ms["onnxattn_direct"] = {"graph": time_graph(call, repeats=repeats), "gpu": device_ms(call)}
    # baseline: the same keys contiguous, our GroupQueryAttention decode (decode rows only)
    decodes = [b for b, n in enumerate(new) if n == 1]
    if len(decodes) == batch:
        c = contiguous(t, 1)
        gspec = gqa_cuda_lib.Spec(batch=batch, seq=1, q_heads=HQ, kv_heads=HKV, head_dim=D, mode="shared", past=KEYS,
                                  rope=1, rope_base=BASE)  # fmt: skip
        # copied after the paged runs wrote the new tokens in place: both see the same keys and new rows
        gcall = lambda: gqa_cuda_lib.run(gspec, c)  # noqa: E731
        row["baseline_plan"] = gcall()["attention"]["reason"]
        call()
        torch.cuda.synchronize()
        row["max_abs_diff_vs_contiguous"] = (tensors["output"].float() - c["output"].reshape(batch, -1).float()).abs().max().item()
        ms["gqa_contiguous"] = {"graph": time_graph(gcall, repeats=repeats), "gpu": device_ms(gcall)}
        del c
    if ort is not None:
        try:
            model = paged_model(batch, sum(new), t["key_cache"].shape[0], t["block_table"].shape[1])
            sess = ort_cuda.session(ort, model, library=lib.sdpa.library_path())
            binding = sess.io_binding()
            for name in ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens"):
                x = t[name]
                binding.bind_input(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
            for name, x in (("output", tensors["output"]), ("key_cache_out", t["key_cache"]),
                            ("value_cache_out", t["value_cache"])):  # fmt: skip
                binding.bind_output(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
            run = lambda: sess.run_with_iobinding(binding)  # noqa: E731
            run()
            row["ort_in_place"] = binding.get_outputs()[1].data_ptr() == t["key_cache"].data_ptr()
            ms["onnxattn_ort"] = {"wall": time_wall(run, repeats=repeats), "gpu": device_ms(run)}
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            ms["onnxattn_ort"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    row["ms"] = ms
    row["gbs"] = {impl: {k: rate(nbytes, v) for k, v in tt.items() if k != "error"} for impl, tt in ms.items()}
    row["fraction_of_copy"] = {impl: {k: (g / copy_gbs if g else None) for k, g in gg.items()}
                               for impl, gg in row["gbs"].items()}  # fmt: skip
    return row


def fmt(x, spec="8.1f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and math.isfinite(x) else "     n/a"


def print_table(env, copy_gbs, rows):
    print(f"\nPagedAttention CUDA benchmark on {env['device']} (driver {env['driver']}, commit {env['commit'][:12]}); "
          f"measured copy bandwidth {copy_gbs:.0f} GB/s")  # fmt: skip
    print(f"{'kind':8} {'shape':36} {'ours graph':>10} {'% copy':>7} {'ours gpu':>9} {'ORT gpu':>9} {'contig graph':>12}"
          f" {'paged/contig':>12} {'direct graph':>12} {'direct/contig':>13}   (GB/s of K+V read)")  # fmt: skip
    for r in rows:
        g = r["gbs"]
        ours, contig = g.get("onnxattn", {}), g.get("gqa_contiguous", {})
        frac = r["fraction_of_copy"]["onnxattn"].get("graph")
        ratio = ours["graph"] / contig["graph"] if ours.get("graph") and contig.get("graph") else None
        direct = g.get("onnxattn_direct", {}).get("graph")
        direct_ratio = direct / contig["graph"] if direct and contig.get("graph") else None
        print(f"{r['kind']:8} {r['shape']:36} {fmt(ours.get('graph'), '10.0f')} {fmt(100 * frac if frac else None, '6.0f')}%"
              f" {fmt(ours.get('gpu'), '9.0f')} {fmt(g.get('onnxattn_ort', {}).get('gpu'), '9.0f')}"
              f" {fmt(contig.get('graph'), '12.0f')} {fmt(ratio, '12.2f')} {fmt(direct, '12.0f')}"
              f" {fmt(direct_ratio, '13.2f')}")  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="the shuffled row only, fewer repeats (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_paged_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    if not lib.sdpa.has_cuda():
        print("bench_paged_cuda: the library was built without CUDA", file=sys.stderr)
        return 2
    ort, missing = ort_cuda.onnxruntime_cuda()
    if missing or os.environ.get(ort_cuda.DISABLE_FLAG) == "1":
        print(f"bench_paged_cuda: onnxruntime rows skipped ({missing or ort_cuda.DISABLE_FLAG + ' is set'})",
              file=sys.stderr)  # fmt: skip
        ort = None
    env = environment()
    env["onnxruntime"] = ort.__version__ if ort is not None else None
    copy_gbs = copy_bandwidth_gbs()
    repeats = 5 if args.quick else 10
    out = Path(args.out)
    if out.suffix != ".json":
        out.mkdir(parents=True, exist_ok=True)
        out = out / f"bench_paged_cuda_{env['date'][:10]}_{env['device'].replace(' ', '_')}.json"
    rows = []

    def save():
        out.write_text(json.dumps({"environment": env, "copy_bandwidth_gbs": copy_gbs, "results": rows}, indent=1))

    shapes = [("decode", [1] * BATCH, True)]
    if not args.quick:
        shapes += [("decode", [1] * BATCH, False), ("mixed", [1] * (BATCH - 1) + [512], True)]
    for label, new, shuffled in shapes:
        rows.append(bench(label, new, shuffled, copy_gbs, repeats, ort))
        save()
        torch.cuda.empty_cache()
    print_table(env, copy_gbs, rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
