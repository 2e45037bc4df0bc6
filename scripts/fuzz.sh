#!/usr/bin/env bash
# The long fuzz run of every op (tests/hardening/test_fuzz.py): random seeds, N examples per op (default 400,
# 70-110 s for all six ops on 2 cores), failures kept in hypothesis's example database
# (.hypothesis/) so a rerun tries them first. CI runs the derandomized 50-example profile instead.
#   scripts/fuzz.sh [N] [pytest args...]        e.g. scripts/fuzz.sh 1000 -k GroupQueryAttention
set -euo pipefail
cd "$(dirname "$0")/.."
examples=${1:-400}
shift || true
export ONNXATTN_FUZZ_EXAMPLES=$examples HYPOTHESIS_PROFILE=long
exec .venv/bin/python -m pytest tests/hardening/test_fuzz.py -p no:randomly -q --hypothesis-show-statistics "$@"
