"""GPU benchmark of onnxattn::LightningIndexer's CUDA kernel (DeepSeek-V3.2's DSA key selection) through the
library's C entry on torch CUDA tensors (no onnxruntime needed), against the unfused PyTorch form on the same GPU
in the same run (bf16 matmul of every index head against the keys, ReLU, the head-weighted sum, the causal mask and
torch.topk: what an eager or unfused-graph indexer runs, materialising [B, S, H, T] scores).

DeepSeek-V3.2 indexer sizes: H=64 heads of D=128, top_k=2048, bf16 queries and keys, float32 head weights. Ours
runs twice: the default score kernel (tensor cores for bf16) and the CUDA-core one (ONNXATTN_INDEXER_CUDA=simt).
Rows: decode (S=1) over T = 32k and 128k keys, B = 1 and 16; causal prefill S = T = 4k (and 16k, ours only: the
unfused form's scores would be 32 GiB). Reported: CUDA-event median us of --repeat runs after a warm-up, the
scoring rate in TFLOP/s (2 * H * D per visible (query, key) pair), ours / unfused, and how many picks agree with
the unfused form's and between our two score kernels (mean overlap of the sets; the summation orders differ and
bf16 scores tie often, so 1.0 is not expected).

    python benchmarks/bench_indexer_cuda.py [--out bench_indexer_cuda.json] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "gpu"))
import sdpa_cuda_lib  # noqa: E402
from bench_sdpa_cuda import time_cuda  # noqa: E402

H, D, TOP_K = 64, 128, 2048
PLAN_FIELDS = ("tiles_per_row", "tiles", "tiles_per_wave", "key_tiles", "width", "score_smem", "scratch_bytes",
               "score_kernel", "mma_heads")
KERNELS = ("cuda_cores", "tensor_cores")


def library() -> ctypes.CDLL:
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    lib.OnnxAttnIndexerCudaPlan.restype = ctypes.c_char_p
    lib.OnnxAttnIndexerCudaPlan.argtypes = [ctypes.c_int64] * 8 + [ctypes.POINTER(ctypes.c_int64)]
    lib.OnnxAttnIndexerCudaRun.restype = ctypes.c_char_p
    lib.OnnxAttnIndexerCudaRun.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.POINTER(ctypes.c_void_p),
                                                                    ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                                                    ctypes.c_int64]
    return lib


def plan(lib, batch: int, seq: int, total: int) -> dict:
    out = (ctypes.c_int64 * len(PLAN_FIELDS))()
    error = lib.OnnxAttnIndexerCudaPlan(batch, seq, total, H, D, TOP_K, 2, -1, out)  # bf16, ONNXATTN_INDEXER_CUDA
    if error:
        raise RuntimeError(error.decode())
    return dict(zip(PLAN_FIELDS, out))


def unfused(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The eager form: [B, S, H, T] bf16 products, ReLU, the head-weighted sum in float32, the causal mask, topk,
    then the picks sorted ascending with -1 padding (the op's layout)."""
    b, s, _ = q.shape
    total = k.shape[2]
    per_head = torch.relu(q.unflatten(-1, (H, D)) @ k.transpose(-1, -2) * D ** -0.5)  # [B, S, H, T]
    score = (w.unsqueeze(-2) @ per_head.float()).squeeze(-2)  # [B, S, T]
    positions = total - s + torch.arange(s, device=q.device)
    score = score.masked_fill(torch.arange(total, device=q.device) > positions[:, None], float("-inf"))
    values, picks = torch.topk(score, min(TOP_K, total), dim=-1)
    picks = torch.where(values > float("-inf"), picks, total).sort(dim=-1).values
    return torch.where(picks == total, -1, picks)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of |a & b| / |a| (padding -1 excluded)."""
    shares = []
    for x, y in zip(a.reshape(-1, a.shape[-1]).tolist(), b.reshape(-1, b.shape[-1]).tolist()):
        sx, sy = {v for v in x if v >= 0}, {v for v in y if v >= 0}
        shares.append(len(sx & sy) / max(len(sx), 1))
    return statistics.mean(shares)


@contextlib.contextmanager
def score_kernel(value: str):
    """ONNXATTN_INDEXER_CUDA=value for the calls inside (the plan reads it per call)."""
    old = os.environ.get("ONNXATTN_INDEXER_CUDA")
    os.environ["ONNXATTN_INDEXER_CUDA"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["ONNXATTN_INDEXER_CUDA"]
        else:
            os.environ["ONNXATTN_INDEXER_CUDA"] = old


def timed(fn, repeat: int) -> float:
    """Median seconds of fn() on the current stream (bench_sdpa_cuda's CUDA-event timer)."""
    return time_cuda(fn, warmup=2, repeats=repeat) / 1e3


def bench(lib, batch: int, seq: int, total: int, repeat: int, with_unfused: bool) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(batch, seq, H * D, generator=g, device="cuda").to(torch.bfloat16)
    k = torch.randn(batch, 1, total, D, generator=g, device="cuda").to(torch.bfloat16)
    w = torch.randn(batch, seq, H, generator=g, device="cuda") * H ** -0.5
    picks = torch.empty(batch, seq, TOP_K, dtype=torch.int64, device="cuda")
    p = plan(lib, batch, seq, total)
    scratch = torch.empty(max(p["scratch_bytes"], 1), dtype=torch.uint8, device="cuda")
    ptrs = (ctypes.c_void_p * 5)(q.data_ptr(), k.data_ptr(), w.data_ptr(), None, picks.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream

    def ours():
        error = lib.OnnxAttnIndexerCudaRun(batch, seq, total, H, D, TOP_K, 0.0, ptrs, 16, stream,
                                           scratch.data_ptr(), scratch.numel())
        if error:
            raise RuntimeError(error.decode())

    seconds = timed(ours, repeat)
    default_picks = picks.clone()
    with score_kernel("simt"):
        simt_seconds = timed(ours, repeat)
    pairs = batch * sum(total - seq + i + 1 for i in range(seq))
    row = {"B": batch, "S": seq, "T": total, "kernel": KERNELS[p["score_kernel"]], "us": seconds * 1e6,
           "tflops": 2 * H * D * pairs / seconds / 1e12, "simt_us": simt_seconds * 1e6,
           "simt_tflops": 2 * H * D * pairs / simt_seconds / 1e12, "kernel_overlap": overlap(default_picks, picks),
           "waves": -(-p["tiles"] // p["tiles_per_wave"]), "scratch_mb": p["scratch_bytes"] / 2**20}
    picks.copy_(default_picks)
    if with_unfused:
        reference = unfused(q, k, w)
        row["unfused_us"] = timed(lambda: unfused(q, k, w), repeat) * 1e6
        row["speedup"] = row["unfused_us"] / row["us"]
        row["overlap"] = overlap(picks, reference)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_indexer_cuda.json"))
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 16k prefill")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_indexer_cuda: no CUDA GPU", file=sys.stderr)
        return 2
    lib = library()
    repeat = 3 if args.quick else args.repeat
    device = torch.cuda.get_device_name(0)
    shapes = [(1, 1, 32768, True), (1, 1, 131072, True), (16, 1, 32768, True), (1, 4096, 4096, True)]
    shapes += [] if args.quick else [(1, 16384, 16384, False)]
    rows = []
    for batch, seq, total, with_unfused in shapes:
        try:
            rows.append(bench(lib, batch, seq, total, repeat, with_unfused))
        except Exception as e:  # noqa: BLE001 - a failing shape is reported, the others still measured
            rows.append({"B": batch, "S": seq, "T": total, "error": f"{type(e).__name__}: {e}"})
            print(f"bench_indexer_cuda: B{batch} S{seq} T{total}: {rows[-1]['error']}", file=sys.stderr)
    print(f"\nLightningIndexer CUDA, bf16, H={H} D={D} top_k={TOP_K}, {device}")
    print(f"  {'B':>3} {'S':>6} {'T':>7} {'kernel':>12} {'us':>10} {'TFLOP/s':>8} {'simt us':>9} {'simt/ours':>9} "
          f"{'waves':>5} {'unfused us':>11} {'speed-up':>9} {'overlap':>8} {'k-overlap':>9}")
    for r in rows:
        if "error" in r:
            print(f"  {r['B']:>3} {r['S']:>6} {r['T']:>7} failed: {r['error'][:100]}")
            continue
        unfused_part = (f"{r['unfused_us']:11.1f} {r['speedup']:8.2f}x {r['overlap']:8.3f}" if "unfused_us" in r
                        else f"{'-':>11} {'-':>9} {'-':>8}")
        print(f"  {r['B']:>3} {r['S']:>6} {r['T']:>7} {r['kernel']:>12} {r['us']:10.1f} {r['tflops']:8.2f} "
              f"{r['simt_us']:9.1f} {r['simt_us'] / r['us']:8.2f}x {r['waves']:>5} {unfused_part} "
              f"{r['kernel_overlap']:9.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from bench_sdpa_cuda import environment  # device, driver, torch, commit, date: as the other CUDA benchmarks

    args.out.write_text(json.dumps({"device": device, "environment": environment(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
