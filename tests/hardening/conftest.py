"""tests/hardening: bad input on every path, fuzzing, sanitizers, load, determinism, large shapes (issue 9).

The shared test helpers live one level up (tests/helpers.py, the per-op bad-input tables); the hypothesis
profiles are registered here: "ci" (derandomized, small budget, the default) and "long" (select it with
`--hypothesis-profile long`, or run scripts/fuzz.sh).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)
# CI: the same examples on every run (derandomize), 50 per op (tiny shapes, 3 paths each): ~40 s in all on the 2-core
# development machine (at 100 per op: 4-25 s per op, NativeSparseAttention the longest, 84 s in all, pytest -n 2
# --durations, 2026-11-29, when the whole CI run took 1155 s of its 1200). The long run (scripts/fuzz.sh) goes deeper.
settings.register_profile("ci", max_examples=int(os.environ.get("ONNXATTN_FUZZ_EXAMPLES", "50")), derandomize=True,
                          database=None, **_COMMON)
# The long run: random seeds, many more examples, failures kept in hypothesis's example database.
settings.register_profile("long", max_examples=int(os.environ.get("ONNXATTN_FUZZ_EXAMPLES", "400")), **_COMMON)
# Unless one was chosen (`--hypothesis-profile long` when this conftest loads before pytest_configure, or
# HYPOTHESIS_PROFILE=long), CI's profile.
if settings.get_current_profile_name() == "default":
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
