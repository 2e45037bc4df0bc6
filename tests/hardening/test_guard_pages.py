"""Every op's kernel, on every ISA, with each input and output flush against an inaccessible page (after its
end, and before its start): no read or write outside the tensors (guard_pages.py), and the same bits as a
plain run. Cases: each op's representative call and a spread of its numerics suite's cases (decode and
prefill tiles, odd sizes, 16-bit types, caches, windows)."""

from __future__ import annotations

import pytest

import os

from helpers import ISAS
from isolate import run_jobs
from representative import SOURCES, case_ids

PER_OP = 8  # numerics cases per op besides the representative one, spread over the suite's table
# scripts/sanitize.sh narrows the ISAs (see its header)
TEST_ISAS = [i for i in os.environ.get("ONNXATTN_HARDENING_ISAS", ",".join(ISAS)).split(",") if i]


def jobs_of(op: str) -> list[str]:
    ids = case_ids(op)
    step = max(1, len(ids) // PER_OP)
    chosen = [""] + ids[::step][:PER_OP]
    return [f"{op}|{i}|{isa}|{where}" for i in chosen for isa in TEST_ISAS for where in ("end", "start")]


@pytest.mark.parametrize("op", list(SOURCES))
def test_no_access_outside_the_tensors(op):
    results = run_jobs("guard_pages", jobs_of(op), timeout=120)
    bad = {job: r for job, r in results.items() if r["outcome"] != "ok"}
    assert not bad, "\n".join(f"{job}: {r['outcome']} {r.get('message', '')} {r.get('stderr', '')[-800:]}"
                              for job, r in bad.items())
