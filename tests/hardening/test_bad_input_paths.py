"""Every bad-input case of every op on every path (bad_input_cases.py: the table; bad_input_paths.py: how
each path is run), each in a child process so that a crash or a hang is a failure of the case that caused it.

One test per op runs its cases on all four paths in one child (one start-up per op) and reports every case
whose outcome differs from the table: a crash, a hang, a wrong number or an error that does not name the op
where the table expects a clear one are never expected outcomes.
"""

from __future__ import annotations

import os

import pytest

from bad_input_cases import FAULTS, OUTCOMES, PATHS, PENDING, all_ops, cases
from isolate import run_jobs
from onnxattn import ops

# A hang is a failure: no single case needs more than a few seconds (sanitized builds ~10x).
TIMEOUT = float(os.environ.get("ONNXATTN_CASE_TIMEOUT", "60"))


def run_table(op: str) -> dict[tuple[str, str], dict]:
    jobs = [f"{op}|{c.id}|{path}" for c in cases(op) for path in PATHS]
    results = run_jobs("bad_input_paths", jobs, timeout=TIMEOUT)
    return {tuple(job.split("|")[1:]): result for job, result in results.items()}


def mismatches(op: str, results: dict[tuple[str, str], dict]) -> list[str]:
    out = []
    for c in cases(op):
        for path in PATHS:
            got = results[(c.id, path)]
            if got["outcome"] != c.expect[path]:
                detail = got.get("message", "")
                if got["outcome"] in ("crash", "hang", "harness-error"):
                    detail += "\n" + (got.get("stderr") or got.get("traceback") or "")[-2000:]
                out.append(f"{c.id} on {path}: expected {c.expect[path]}, got {got['outcome']} "
                           f"({got.get('stage', '')}) {detail}")
    return out


@pytest.mark.parametrize("op", all_ops())
def test_bad_input_table(op):
    problems = mismatches(op, run_table(op))
    assert not problems, f"{len(problems)} case/path outcomes differ from the table:\n" + "\n".join(problems)


def test_every_op_has_a_table():
    """An op in the registry is covered here or listed as pending with a reason (the extension point)."""
    missing = set(ops.SPECS) - set(all_ops()) - set(PENDING)
    assert not missing, f"no bad-input table for {sorted(missing)}: add a builder in bad_input_tables.py"
    assert not set(PENDING) & set(all_ops()), "an op both pending and covered: drop it from PENDING"


@pytest.mark.parametrize("op", all_ops())
def test_table_covers_the_issue_faults(op):
    """Each op's table has cases of every fault kind issue 9 lists that applies to the op."""
    not_applicable = {"ScaledDotProductAttention": {"positions", "index values"},  # no such inputs
                      "PagedAttention": {"mask"}, "MultiHeadLatentAttention": {"mask"},
                      "NativeSparseAttention": {"mask", "positions"},
                      "SparseRoutedAttention": {"mask", "window", "index values"},
                      "LightningIndexer": {"mask", "window", "positions"}}.get(op, set())
    covered = {c.fault for c in cases(op)}
    missing = set(FAULTS) - covered - not_applicable - {"shape"}
    assert not missing, f"{op}: no case of {sorted(missing)}"


def test_limitations_say_why():
    """A path that runs or fails on a case must be a recorded limitation with a reason."""
    for op in all_ops():
        for c in cases(op):
            for path in ("function",):
                if c.expect[path] == "runs" and not c.note:
                    pytest.fail(f"{c.key}: the function runs on it; say why in `note`")
            if c.expect["kernel"] == "runs" and not c.note:
                pytest.fail(f"{c.key}: the kernel runs on it; say why in `note`")
    assert set(OUTCOMES) >= {"rejects", "defined"}
