"""Runs test jobs in a child process, so that a crash (segfault, abort, a sanitizer report) or a hang is a
recorded outcome of the job that caused it, not a dead pytest worker or a stuck CI run.

A job is a string; the child imports a worker module (a file next to this one) and calls its
`execute(job) -> dict` for each job read from stdin, printing one JSON line when a job starts and one with its
result. The parent enforces a per-job timeout; when the child dies or hangs, the job it was running is
recorded as {"outcome": "crash"} or {"outcome": "hang"} (with the signal or the time and the child's stderr
tail) and a fresh child takes the remaining jobs.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
_STDERR_TAIL = 4000


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(TESTS), str(HERE), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def run_jobs(worker: str, jobs: Sequence[str], *, timeout: float = 60.0, startup_timeout: float = 120.0,
             env: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Results of `jobs` by job, each the dict the worker's execute returned, or a crash/hang record."""
    results: dict[str, dict] = {}
    pending = list(jobs)
    while pending:
        results.update(_run_batch(worker, pending, timeout, startup_timeout, env))
        pending = [j for j in pending if j not in results]
    return results


def _run_batch(worker: str, jobs: Sequence[str], timeout: float, startup_timeout: float,
               env: Mapping[str, str] | None) -> dict[str, dict]:
    stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"onnxattn_isolate_{os.getpid()}_{time.monotonic_ns()}.err"
    results: dict[str, dict] = {}
    with open(stderr_path, "w+b") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(HERE / "worker_main.py"), worker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, env=_child_env(env), cwd=str(TESTS.parent), start_new_session=True)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("".join(j + "\n" for j in jobs).encode())
        child.stdin.close()
        current, started, deadline, buffer = None, False, time.monotonic() + startup_timeout, b""
        fd = child.stdout.fileno()
        try:
            while True:
                left = deadline - time.monotonic()
                ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
                if not ready:  # the running job (or the child's start-up) overran its time
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    job = current if current is not None else jobs[0]
                    results[job] = {"outcome": "hang", "message": f"no result after {timeout:.0f} s",
                                    "stderr": _tail(stderr)}
                    return results
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.startswith(b"@@"):
                        continue  # anything else a job printed
                    record = json.loads(line[2:])
                    if "start" in record:
                        current, started, deadline = record["start"], True, time.monotonic() + timeout
                    else:
                        results[record["job"]] = record["result"]
                        current = None
            code = child.wait()
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        if current is not None or len(results) < len(jobs):
            how = f"killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exit status {code}"
            record = {"outcome": "crash", "message": f"the process died running this job: {how}",
                      "stderr": _tail(stderr)}
            if not started:  # it died before its first job (e.g. an import error): every job fails alike
                return {j: dict(record, message=f"the worker died before its first job: {how}") for j in jobs}
            results[current if current is not None else next(j for j in jobs if j not in results)] = record
    stderr_path.unlink(missing_ok=True)
    return results


def _tail(stderr) -> str:
    stderr.flush()
    stderr.seek(0, os.SEEK_END)
    size = stderr.tell()
    stderr.seek(max(0, size - _STDERR_TAIL))
    return stderr.read().decode(errors="replace")
