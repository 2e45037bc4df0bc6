"""Resident memory under load, measured in a process of its own (so nothing else the test process does moves
the numbers): a GroupQueryAttention decode step run many times, and sessions with the library registered
created and destroyed many times. Prints one JSON object: the RSS curve and the growth after warm-up.

    python tests/hardening/soak.py decode --runs 10000 --every 500
    python tests/hardening/soak.py sessions --runs 1000 --every 100

The decode step is the serving shape: B = 4, 32 query / 8 KV heads of 64, a shared 1024-slot cache bound in
place (present = past, I/O binding), one new token per sequence, past_lengths advancing each step (wrapping
at the buffer end), RoPE and QK-norm on. Before each sample glibc returns freed heap to the system
(malloc_trim), so the curve shows what is still allocated, not the allocator's caching.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from helpers import gqa_model, session_options  # noqa: E402
from onnxattn.cuda_ep import make_session  # noqa: E402

B, HQ, HKV, D, M = 4, 32, 8, 64, 1024
ATTRS = dict(num_heads=HQ, kv_num_heads=HKV, rope=1)
_libc = ctypes.CDLL("libc.so.6")


def rss_kib() -> int:
    _libc.malloc_trim(0)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def decode_model():
    return gqa_model(["past_key", "past_value", "past_lengths", "q_norm_weight", "k_norm_weight"], attrs=ATTRS,
                     with_present=True)


def decode(runs: int, every: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(0)
    session = make_session(decode_model(), providers=["CPUExecutionProvider"], session_options=session_options(1))
    cache = {n: ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((B, HKV, M, D)).astype(np.float32))
             for n in ("past_key", "past_value")}
    feeds = dict(query=rng.standard_normal((B, 1, HQ * D)).astype(np.float32),
                 key=rng.standard_normal((B, 1, HKV * D)).astype(np.float32),
                 value=rng.standard_normal((B, 1, HKV * D)).astype(np.float32),
                 q_norm_weight=np.ones(D, np.float32), k_norm_weight=np.ones(D, np.float32))
    curve = []
    for step in range(runs + 1):
        if step % every == 0:
            curve.append((step, rss_kib()))
        if step == runs:
            break
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_cpu_input("past_lengths", (np.arange(B, dtype=np.int64) * 97 + step) % (M - 1))
        for name, value in cache.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output("present_key", cache["past_key"])
        binding.bind_ortvalue_output("present_value", cache["past_value"])
        binding.bind_output("output")
        session.run_with_iobinding(binding)
    return curve


def sessions(runs: int, every: int) -> list[tuple[int, int]]:
    model = decode_model().SerializeToString()
    curve = []
    for step in range(runs + 1):
        if step % every == 0:
            curve.append((step, rss_kib()))
        if step == runs:
            break
        session = make_session(model, providers=["CPUExecutionProvider"], session_options=session_options(1))
        del session
    return curve


def summarize(kind: str, curve: list[tuple[int, int]], warmup: float = 0.2) -> dict:
    """Growth after warm-up: from the first sample at or past `warmup` of the runs to the largest later one."""
    runs = curve[-1][0]
    start = next(i for i, (step, _) in enumerate(curve) if step >= warmup * runs)
    base = curve[start][1]
    return {"kind": kind, "runs": runs, "curve": curve, "warmup_runs": curve[start][0], "rss_at_warmup_kib": base,
            "growth_after_warmup_kib": max(r for _, r in curve[start:]) - base,
            "final_kib": curve[-1][1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["decode", "sessions"])
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    args = parser.parse_args()
    started = time.perf_counter()
    curve = {"decode": decode, "sessions": sessions}[args.kind](args.runs, args.every)
    result = summarize(args.kind, curve)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["library"] = os.environ.get("ONNXATTN_LIBRARY", "installed")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
