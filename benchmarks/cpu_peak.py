"""What this CPU can do at most, the yardstick of the CPU benchmarks' targets: float32 FMA throughput and read
bandwidth, with the threads the benchmarks use (2 on the development machine).

- FMA peak: a C loop (compiled here with the system's cc, -O2 -march=native) of independent fused multiply-add
  chains in the widest vectors the compiler targets (AVX-512: 16 floats, 12 chains; else 32-byte vectors, 10
  chains), one chain set per thread, 2 FLOPs per lane per FMA. Enough chains to cover the FMA latency on every
  port, so the loop is bound by FMA issue alone: no kernel doing anything besides FMAs can beat it.
- Read bandwidth: torch.sum over a 1 GiB float32 tensor (the figure docs/performance.md quotes).

Best of `--repeats` each (the cores are shared: the best run is the one least disturbed).

    python benchmarks/cpu_peak.py                # writes benchmarks/results/cpu_peak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

# FLOPs = threads * iterations * chains * lanes * 2; every chain depends only on itself.
FMA_SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
enum { kBytes = 64, kChains = 12 };
#else
enum { kBytes = 32, kChains = 10 };
#endif
typedef float vec __attribute__((vector_size(kBytes)));
enum { kLanes = kBytes / 4 };
static long iterations;
static float sinks[64];

static void* chains(void* arg) {
  const long id = (long)arg;
  vec acc[kChains], mul, add;
  for (int l = 0; l < kLanes; ++l) { mul[l] = 1.0000001f; add[l] = 1e-7f; }
  for (int c = 0; c < kChains; ++c)
    for (int l = 0; l < kLanes; ++l) acc[c][l] = (float)(c + l + id);
  for (long i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * mul + add;  /* contracted to one FMA */
  }
  float s = 0.0f;
  for (int c = 0; c < kChains; ++c)
    for (int l = 0; l < kLanes; ++l) s += acc[c][l];
  sinks[id % 64] = s;  /* keeps the loop */
  return NULL;
}

int main(int argc, char** argv) {
  const int threads = atoi(argv[1]);
  iterations = atol(argv[2]);
  pthread_t t[256];
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < threads; ++i) pthread_create(&t[i], NULL, chains, (void*)i);
  for (int i = 0; i < threads; ++i) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &b);
  const double seconds = (b.tv_sec - a.tv_sec) + 1e-9 * (b.tv_nsec - a.tv_nsec);
  printf("%d %d %.9f %g\n", kLanes, kChains, seconds, (double)sinks[0]);
  return 0;
}
"""


def compile_fma_loop(workdir: Path) -> Path:
    """The FMA loop's binary, built with the system's C compiler for this CPU."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("cpu_peak: no C compiler found (set CC)")
    source, binary = workdir / "fma_peak.c", workdir / "fma_peak"
    source.write_text(FMA_SOURCE)
    subprocess.run([cc, "-O2", "-march=native", "-ffp-contract=fast", "-pthread", str(source), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def fma_peak(threads: int, iterations: int, repeats: int) -> dict:
    """Best-of-`repeats` float32 FMA throughput of `threads` threads, GFLOP/s."""
    with tempfile.TemporaryDirectory() as tmp:
        binary = compile_fma_loop(Path(tmp))
        runs = []
        for _ in range(repeats):
            out = subprocess.run([str(binary), str(threads), str(iterations)], check=True, capture_output=True,
                                 text=True).stdout.split()
            lanes, chains, seconds = int(out[0]), int(out[1]), float(out[2])
            runs.append(2.0 * threads * iterations * chains * lanes / seconds / 1e9)
    return dict(threads=threads, vector_floats=lanes, chains=chains, iterations=iterations,
                gflops_best=max(runs), gflops_runs=runs)


def read_bandwidth(threads: int, gib: float, repeats: int) -> dict:
    """Best-of-`repeats` GB/s of torch.sum over `gib` GiB of float32 with `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(x.sum())
        runs.append(x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return dict(threads=threads, gib=gib, gbs_best=max(runs), gbs_runs=runs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=200_000_000,
                    help="FMA loop trips per thread (~0.45 s a run at 2 threads here)")
    ap.add_argument("--gib", type=float, default=1.0, help="size of the tensor torch.sum reads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu_peak.json"))
    args = ap.parse_args(argv)
    fma = fma_peak(args.threads, args.iterations, args.repeats)
    read = read_bandwidth(args.threads, args.gib, args.repeats)
    result = dict(cpu=cpu_model(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%d"),
                  load_avg_1min=os.getloadavg()[0], fma=fma, read=read)
    print(f"{result['cpu']}, {args.threads} threads: FMA peak {fma['gflops_best']:.1f} GFLOP/s float32 "
          f"({fma['vector_floats']}-float vectors, {fma['chains']} chains), read {read['gbs_best']:.1f} GB/s "
          f"(torch.sum over {args.gib:g} GiB)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
