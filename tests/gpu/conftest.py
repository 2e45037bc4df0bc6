"""GPU test session hooks. Under pytest-xdist (scripts/gpu_check.sh), a worker whose CUDA context a kernel fault
has poisoned (an illegal address is sticky: every later CUDA call of that process fails) exits after reporting
the test that caused it, so xdist starts a fresh worker for the remaining tests instead of failing them all."""

from __future__ import annotations

import os
import sys

import pytest


def _context_poisoned() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1).item()  # a sticky error fails every new launch too
    except Exception as e:  # noqa: BLE001 - any CUDA failure here means the context is gone
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    if report.when != "call" or report.passed or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    reason = _context_poisoned()
    if reason:
        sys.stderr.write(f"\n[{os.environ['PYTEST_XDIST_WORKER']}] CUDA context lost after {report.nodeid}: "
                         f"{reason}; this worker exits, a fresh one takes the remaining tests\n")
        sys.stderr.flush()
        os._exit(3)
