"""Burst timing shared by the CPU benchmarks (bench_sdpa_cpu, bench_gqa_cpu, bench_mla_cpu, bench_paged_cpu,
bench_sparse_cpu): one source of truth for how they time a call.

Why bursts: after a run, each onnxruntime session's pool threads spin (~33 ms of CPU on the 2-core machine)
and torch's OpenMP threads too (~10 ms). A call started right after another implementation's shares the
cores with them (measured with the SDPA benchmark at S=512 back to back: ours 0.8 -> 1.9 ms, ONNX Attention
1.4 -> 4-7 ms). So each implementation gets a burst per round: a pause of `settle` seconds (the previous
implementation's threads stop spinning), one untimed call (it wakes this implementation's own threads, which
slept through the pause), then timed calls for at least `burst` seconds (at least one). Rounds run every
implementation once, so drifts in the machine's load hit them alike; the figure is the median over all
timed calls of all rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

SETTLE = 0.1  # seconds of pause before a burst
BURST = 0.02  # least seconds of timed calls in a burst


def time_burst(fn: Callable[[], object], settle: float = SETTLE, burst: float = BURST, *,
               cpu_times: list[float] | None = None, clock: Callable[[], float] = time.perf_counter,
               cpu_clock: Callable[[], float] = time.process_time,
               sleep: Callable[[float], object] = time.sleep) -> list[float]:
    """One implementation's turn in a round: the pause, one untimed call, then timed calls for >= burst
    seconds (at least one). Returns the wall times of the timed calls; with `cpu_times`, appends each timed
    call's process CPU time to it too."""
    sleep(settle)  # the previous implementation's pool threads stop spinning
    fn()  # wakes this implementation's own threads
    times: list[float] = []
    while not times or sum(times) < burst:
        start, cpu_start = clock(), cpu_clock() if cpu_times is not None else 0.0
        fn()
        times.append(clock() - start)
        if cpu_times is not None:
            cpu_times.append(cpu_clock() - cpu_start)
    return times


def time_rounds(fns: dict[str, Callable[[], object]], rounds: int, settle: float = SETTLE, burst: float = BURST,
                *, cpu_times: dict[str, list[float]] | None = None, **clocks) -> dict[str, list[float]]:
    """`rounds` rounds; in each, every implementation of `fns` (in order) one burst. The timed calls' wall
    times per implementation (and their CPU times into `cpu_times[name]` when given)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            times[name] += time_burst(fn, settle, burst, cpu_times=None if cpu_times is None
                                      else cpu_times.setdefault(name, []), **clocks)
    return times


def median_rounds(fns: dict[str, Callable[[], object]], rounds: int, settle: float = SETTLE, burst: float = BURST,
                  **kwargs) -> dict[str, float]:
    """time_rounds' median seconds per implementation."""
    return {name: statistics.median(ts) for name, ts in time_rounds(fns, rounds, settle, burst, **kwargs).items()}


def add_arguments(parser: argparse.ArgumentParser, settle: float = SETTLE, burst: float = BURST) -> None:
    """The --settle and --burst options every CPU benchmark takes."""
    parser.add_argument("--settle", type=float, default=settle,
                        help="seconds of pause before each implementation's burst (other pools stop spinning)")
    parser.add_argument("--burst", type=float, default=burst, help="least seconds of timed calls per burst")


def load_average() -> float:
    """The 1-minute load average (/proc/loadavg), rounded: recorded before and after each run."""
    return round(os.getloadavg()[0], 2)
