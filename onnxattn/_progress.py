"""A progress bar for long steps: tqdm when it is installed, else one plain line per step."""

from __future__ import annotations

import sys
import time


class Progress:
    """``with Progress(total, "export") as p: p.step("tracing")``; `enabled=False` prints nothing."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True, unit: str = "step"):
        self.total, self.desc, self.enabled, self.done = total, desc, enabled, 0
        self._bar = None
        self._start = time.perf_counter()
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def step(self, label: str = "", n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            if label:
                self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(n)
        elif label or self.done == self.total:
            print(f"{self.desc}: [{self.done}/{self.total}] {label} ({time.perf_counter() - self._start:.1f}s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
