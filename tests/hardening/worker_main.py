"""The child side of isolate.py: `python worker_main.py MODULE` runs MODULE.execute(job) for each job line on
stdin and reports on stdout as `@@{json}` lines (a start line, then a result line per job)."""

from __future__ import annotations

import importlib
import json
import sys
import traceback


def main() -> None:
    module = importlib.import_module(sys.argv[1])
    out = sys.stdout
    for line in sys.stdin.read().splitlines():
        job = line.strip()
        if not job:
            continue
        out.write("@@" + json.dumps({"start": job}) + "\n")
        out.flush()
        try:
            result = module.execute(job)
        except Exception as e:  # noqa: BLE001 - a harness error is a result too, reported by the test
            result = {"outcome": "harness-error", "message": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()}
        out.write("@@" + json.dumps({"job": job, "result": result}, default=str) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
