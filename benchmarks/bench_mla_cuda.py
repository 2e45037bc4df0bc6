"""GPU benchmark of onnxattn::MultiHeadLatentAttention's CUDA kernel (absorbed form) at decode, through the
library's C entry on torch CUDA tensors (no onnxruntime needed), with each attention kernel (the SIMT one and
the tensor-core one, ONNXATTN_MLA_CUDA_KERNEL=simt / mma) in the same run; the rest of the op (new tokens,
query absorption, merge and W_UV projection) is the same SIMT code in both.

The issue's shapes: DeepSeek-V3 attention sizes (R=512, Dr=64, Dn=Dv=128), B=64 sequences, one new token
over P=4096 cached ones, H=16 (memory-bound: the latent cache is read once per step, reported as GB/s of
cache bytes (P+1) * (R+Dr) * 2 per sequence; anchor: FlashMLA ~3000 GB/s on H800) and H=128 (compute-
bound: 2 * B * H * (P+1) * (2R+Dr) attention FLOPs plus the projections 2 * B * H * R * (Dn+Dv), as
TFLOP/s; anchor: FlashMLA 580-660 TFLOP/s on H800). bf16. Times are CUDA-event medians of --repeat runs
after a warm-up; the scratch is allocated once. Writes JSON to --out.

DeepSeek-V3.2's sparse attention (DSA) rows: B=1, H=128, one token over P = 32k and 128k cached ones, dense
(every key) and with key_indices listing K=2048 distinct random keys (its index_topk), tensor-core kernel:
the indexed step sorts the list and reads only the listed rows, so its time should follow K, not P.

    python benchmarks/bench_mla_cuda.py [--out bench_mla_cuda.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "gpu"))
import mla_cuda_lib as lib  # noqa: E402
from bench_sdpa_cuda import env_vars  # noqa: E402

R, DR, DN, DV = 512, 64, 128, 128


def bench(batch: int, heads: int, past: int, repeat: int, kernel: str, listed: int = -1) -> dict:
    """One shape with the attention step on `kernel` (ONNXATTN_MLA_CUDA_KERNEL, read by every call); `listed` >= 0:
    key_indices with that many distinct random keys per query."""
    p = lib.Problem(batch=batch, seq=1, heads=heads, past=past + 64, mode="shared", rank=R, nope=DN, rope=DR,
                    v_dim=DV, index_count=listed)
    g = torch.Generator(device="cuda").manual_seed(0)
    t = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, device="cuda") * scale).to(torch.bfloat16)  # noqa: E731
    x = {"query": t(batch, 1, heads * (DN + DR)), "latent": t(batch, 1, R), "k_rope": t(batch, 1, DR),
         "w_uk": t(heads, R, DN, scale=R**-0.5), "w_uv": t(heads, R, DV, scale=R**-0.5),
         "past_latent": t(batch, past + 64, R), "past_k_rope": t(batch, past + 64, DR),
         "past_lengths": torch.full((batch,), past, dtype=torch.int64, device="cuda")}
    if listed >= 0:
        keys = [torch.randperm(past + 1, device="cuda")[:listed] for _ in range(batch)]
        x["key_indices"] = torch.stack(keys)[:, None]
    out = torch.empty(batch, 1, heads * DV, dtype=torch.bfloat16, device="cuda")
    scratch = torch.empty(lib.scratch_bytes(p, "bfloat16"), dtype=torch.uint8, device="cuda")

    def step():  # in place: the new token's slot is rewritten every time
        lib.run(p, x, "bfloat16", output=out, present_latent=x["past_latent"], present_k_rope=x["past_k_rope"],
                scratch=scratch)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    seconds = statistics.median(times)
    cache_bytes = batch * (past + 1) * (R + DR) * 2
    flops = 2 * batch * heads * ((past + 1) * (2 * R + DR) + R * (DN + DV))
    return {"B": batch, "H": heads, "P": past, "K": listed, "dtype": "bfloat16", "kernel": kernel, "us": seconds * 1e6,
            "cache_gbps": cache_bytes / seconds / 1e9, "tflops": flops / seconds / 1e12,
            "splits": lib.plan(p, sm_count=torch.cuda.get_device_properties(0).multi_processor_count).splits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_mla_cuda.json"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_mla_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    repeat = 5 if args.quick else args.repeat
    device = torch.cuda.get_device_name(0)
    # (B, H, P, attention kernel, listed keys): the shapes on both kernels, then DSA (B=1, H=128) dense
    # and with K = 2048 listed keys
    shapes = [(batch, heads, 4096, kernel, -1) for batch, heads in ((64, 16), (64, 128), (1, 16))
              for kernel in ("simt", "mma")]
    shapes += [(1, 128, past, "mma", listed) for past in (32768, 131072) for listed in (-1, 2048)]
    rows = []
    for batch, heads, past, kernel, listed in shapes:
        try:
            with env_vars({"ONNXATTN_MLA_CUDA_KERNEL": kernel}):
                rows.append(bench(batch, heads, past, repeat, kernel, listed))
        except Exception as e:  # noqa: BLE001 - a failing shape is reported, the others still measured
            rows.append({"B": batch, "H": heads, "P": past, "K": listed, "dtype": "bfloat16", "kernel": kernel,
                         "error": f"{type(e).__name__}: {e}"})
            print(f"bench_mla_cuda: B{batch} H{heads} P{past} K{listed} {kernel}: {rows[-1]['error']}",
                  file=sys.stderr)
    print(f"\nMultiHeadLatentAttention CUDA (absorbed), decode, bf16, R={R} Dr={DR} Dn={DN} Dv={DV}, {device}")
    print(f"  {'B':>3} {'H':>4} {'P':>6} {'K':>5} {'kernel':>6} {'splits':>6} {'us':>9} {'cache GB/s':>11} "
          f"{'TFLOP/s':>8}")
    for r in rows:
        listed = "all" if r["K"] < 0 else r["K"]
        if "error" in r:
            print(f"  {r['B']:>3} {r['H']:>4} {r['P']:>6} {listed:>5} {r['kernel']:>6} failed: {r['error'][:100]}")
            continue
        print(f"  {r['B']:>3} {r['H']:>4} {r['P']:>6} {listed:>5} {r['kernel']:>6} {r['splits']:>6} {r['us']:9.1f} "
              f"{r['cache_gbps']:11.1f} {r['tflops']:8.2f}")
    print("  (rows with K listed keys: GB/s and TFLOP/s still count the whole cache, so they read as dense-equivalent)")
    print("  anchors (FlashMLA on H800): ~3000 GB/s memory-bound, 580-660 TFLOP/s compute-bound")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bench_sdpa_cuda import environment  # device, driver, torch, commit, date: as the other CUDA benchmarks

    args.out.write_text(json.dumps({"device": device, "environment": environment(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
