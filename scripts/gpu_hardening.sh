#!/usr/bin/env bash
# Issue 9 on the GPU machine, one device call of its own (scripts/gpu_check.sh's budget is full): the hardening
# suite's bad-input table of every op through onnxruntime's CUDA EP, the 8-thread/repeat determinism checks on
# CUDA (tests/gpu/hardening_cuda.py), then compute-sanitizer memcheck over the same cases. Prints a summary and
# writes $OUT/gpu_hardening.json (out/gpu_hardening elsewhere) for docs/reliability.md (section 8).
#
# Here first: the CUDA build as for gpu_check.sh (build/gpu), and the onnxruntime-gpu parts on a warm machine
# (../shared/device/ort-gpu-parts; if gpu_check.sh ran on this machine, they are installed already). Then:
#   command: bash scripts/gpu_hardening.sh
#   carry:   ["build/gpu/onnxattn/cuda_ep/libonnxattn_ops.so"]      timeout_s: 300
# (caps: 150 s tests + 120 s memcheck = 270 s; CAP_HARD_TESTS and CAP_HARD_MEMCHECK set them, e.g. to fit what is left
# of a gpu_check.sh call: OUT=$OUT/hardening CAP_HARD_TESTS=.. CAP_HARD_MEMCHECK=.. bash scripts/gpu_hardening.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/out/gpu_hardening}
mkdir -p "$OUT"
export ONNXATTN_LIBRARY=${ONNXATTN_LIBRARY:-$root/build/gpu/onnxattn/cuda_ep/libonnxattn_ops.so}
export PYTHONUNBUFFERED=1
if [ ! -d /tmp/ortsite/onnxruntime ] && ls /tmp/ortparts/*.part-* >/dev/null 2>&1; then
  wheel=$(ls /tmp/ortparts | head -1 | sed 's/\.part-[0-9]*$//')
  cat /tmp/ortparts/"$wheel".part-* > /tmp/"$wheel" &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/ortsite /tmp/"$wheel"
fi
if [ -d /tmp/ortsite/onnxruntime ]; then export PYTHONPATH=/tmp/ortsite:${PYTHONPATH:-}; fi
if [ -d /tmp/pysite/xdist ]; then export PYTHONPATH=/tmp/pysite:${PYTHONPATH:-}; fi  # installed by gpu_check.sh
export PYTHONPATH=$root:$root/tests:$root/tests/gpu:$root/tests/hardening:${PYTHONPATH:-}

echo "== hardening on CUDA: bad-input table per op, 8 threads, repeats (tests/gpu/hardening_cuda.py)"
# One pytest case per op (and opt-in variant), each running its bad-input cases in a child process: with
# pytest-xdist, the ops on several processes at once.
parallel=()
if python3 -c 'import xdist' 2>/dev/null; then parallel=(-n "${GPU_HARDENING_WORKERS:-8}"); fi
timeout -s INT -k 10 "${CAP_HARD_TESTS:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/hardening_cuda.py \
  -rfEs -s "${parallel[@]}" --junitxml="$OUT/gpu_hardening.xml" 2>&1 | tee "$OUT/tests.log"
tests_rc=${PIPESTATUS[0]}
echo "== compute-sanitizer memcheck over the bad-input cases, one process per op at once"
ops=$(python3 -c 'import sys; sys.path[:0] = ["tests/hardening", "tests"]; from bad_input_cases import all_ops; print(*all_ops())')
memcheck_rc=0 pids=()
for op in $ops; do
  timeout "${CAP_HARD_MEMCHECK:-120}" compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 20 \
    python3 tests/gpu/hardening_cuda.py memcheck "$op" > "/tmp/memcheck_$op.log" 2>&1 &
  pids+=($!)
done
i=0
for op in $ops; do
  wait "${pids[$i]}"; rc=$?; i=$((i + 1))
  echo "== $op: exit $rc" >> "$OUT/memcheck.log"; cat "/tmp/memcheck_$op.log" >> "$OUT/memcheck.log"
  echo "memcheck $op: exit $rc ($(grep -c '^ok ' "/tmp/memcheck_$op.log") cases ok, $(grep -c '^FAIL' "/tmp/memcheck_$op.log") failed)"
  if [ "$rc" != 0 ] && [ "$memcheck_rc" = 0 ]; then memcheck_rc=$rc; fi
done
errors=$(grep -c "========= Invalid\|========= Program hit" "$OUT/memcheck.log" || true)
python3 - "$OUT" "$tests_rc" "$memcheck_rc" "$errors" <<'PY'
import json, sys
out, tests_rc, memcheck_rc, errors = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
summary = {"tests_rc": tests_rc, "memcheck_rc": memcheck_rc, "memcheck_errors": errors,
           "clean": tests_rc == 0 and memcheck_rc == 0 and errors == 0}
open(f"{out}/gpu_hardening.json", "w").write(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
PY
exit $(( tests_rc != 0 || memcheck_rc != 0 ))
