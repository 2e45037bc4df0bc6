#!/usr/bin/env bash
# Memory safety of the CPU kernels: builds the custom-op library with AddressSanitizer and UBSan into its own
# build directory and runs a representative subset of the CPU tests against it, then prints a summary and
# writes it as JSON (docs/reliability/sanitize.json with --record, for scripts/reliability_report.py).
#
#   scripts/sanitize.sh [--record] [--quick] [extra pytest args]
#
# The subset: every bad-input case of every op on every path (tests/hardening/test_bad_input_paths.py, each
# in a child process, and the per-op tables tests/test_*_bad_input.py), the kernel paths of every op's
# numerics matrix (tests/test_*_numerics.py -k kernel, generic and AVX2; --quick: AVX2 only), the fuzz tests
# (CI profile), guard pages, the 8-thread concurrency and determinism tests (tests/hardening).
#
# How: the library is instrumented, the Python interpreter is not, so the ASan runtime is LD_PRELOADed (it
# must come first) and inherited by every child process. halt_on_error makes the first report abort the
# process (a crash of that test; the bad-input harness records it as the case's outcome). Leak detection is
# off: the interpreter and onnxruntime keep allocations alive until exit by design, and any leak
# suppression broad enough for them would hide ours too; leaks of the library are measured by the RSS soaks
# (tests/hardening/test_load.py) instead. The 8 GiB-address-space caches of test_large_shapes.py are skipped
# (ASan's allocator would back them).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
record=0 quick=0
while [ $# -gt 0 ]; do
  case "$1" in
    --record) record=1; shift ;;
    --quick) quick=1; shift ;;
    *) break ;;
  esac
done
build=${SANITIZE_BUILD_DIR:-build/asan}
sanitizers=${SANITIZERS:-address,undefined}
out=${OUT:-$root/out/sanitize}
mkdir -p "$out"
start=$(date +%s)

# The committed sources (HEAD), not the work tree: others' half-done edits in a shared tree must not be what
# gets sanitized. SANITIZE_SOURCES=worktree builds the work tree instead.
src=.
if [ "${SANITIZE_SOURCES:-head}" = head ]; then
  # Only files that changed are rewritten (and dated now), so ninja rebuilds just what they affect.
  src=$build-src
  tmp=$(mktemp -d) && git archive HEAD | tar -x -C "$tmp"
  .venv/bin/python - "$tmp" "$src" <<'PY'
import filecmp, os, shutil, sys
new, dst = sys.argv[1:]
for root, _, files in os.walk(new):
    for name in files:
        a = os.path.join(root, name)
        b = os.path.join(dst, os.path.relpath(a, new))
        if not os.path.exists(b) or not filecmp.cmp(a, b, shallow=False):
            os.makedirs(os.path.dirname(b), exist_ok=True)
            shutil.copyfile(a, b)
PY
  rm -rf "$tmp"
fi
if [ -f "$build/CMakeCache.txt" ] && ! grep -q "CMAKE_HOME_DIRECTORY:INTERNAL=$(cd "$src" && pwd)$" "$build/CMakeCache.txt"; then
  rm -rf "$build"  # configured from the other source tree
fi
cmake -S "$src" -B "$build" -G Ninja -DONNXATTN_CUDA=OFF -DONNXATTN_SANITIZE="$sanitizers" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$out/cmake.log" 2>&1 || { tail -20 "$out/cmake.log"; exit 2; }
nice ninja -C "$build" -j"${JOBS:-2}" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 2; }
build_s=$(( $(date +%s) - start ))

export ONNXATTN_LIBRARY=$root/$build/onnxattn/cuda_ep/libonnxattn_ops.so
# libstdc++ too: ASan's __cxa_throw interceptor looks the real one up when it starts, and the interpreter is
# not C++; without it the first C++ exception of a wheel that links libstdc++ statically (onnx's shape
# inference raising our InferenceError) fails an ASan CHECK and aborts.
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export LD_PRELOAD
# Reports also go to files ($out/reports/asan.PID, ubsan.PID): pytest captures a test's stderr and an abort
# loses it, and the bad-input children's stderr is only a tail.
rm -rf "$out/reports" && mkdir -p "$out/reports"
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1:print_summary=1:log_path=$out/reports/asan
export UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:print_summary=1:log_path=$out/reports/ubsan
export ONNXATTN_CASE_TIMEOUT=300  # sanitized builds run ~3-10x slower

# AVX-512: GCC 12's instrumented AVX-512 kernels report 4-byte reads one element past Q/K (Q packing,
# cpu_flash_wide.inc and cpu_flash_narrow.inc) that the release library never makes: with every tensor flush
# against an inaccessible page no access faults (tests/hardening/test_guard_pages.py, all ISAs). So the
# sanitized run caps the kernels at AVX2 (the generic and AVX2 code is the same source) and leaves the
# AVX-512 paths to the guard pages; SANITIZE_ISAS=generic,avx2,avx512 includes them.
isas=${SANITIZE_ISAS:-generic,avx2}
export ONNXATTN_CPU_ISA=avx2 ONNXATTN_HARDENING_ISAS=$isas
kernel_filter="kernel"
for isa in generic avx2 avx512; do
  case ",$isas," in *",$isa,"*) ;; *) kernel_filter="$kernel_filter and not $isa" ;; esac
done
if [ "$quick" = 1 ]; then kernel_filter="$kernel_filter and not generic"; fi
# (not test_report.py: a recorded run of this script changes the document it checks)
tests=(tests/hardening tests/test_sdpa_bad_input.py tests/test_gqa_bad_input.py tests/test_paged_bad_input.py
       tests/test_mla_bad_input.py tests/test_sparse_bad_input.py --deselect tests/hardening/test_report.py)
numerics=(tests/test_sdpa_numerics.py tests/test_gqa_numerics.py tests/test_paged_numerics.py
          tests/test_mla_numerics.py tests/test_sparse_numerics.py)
echo "== sanitize: $sanitizers, library $ONNXATTN_LIBRARY (built in ${build_s}s)"
test_start=$(date +%s)
# shellcheck disable=SC2068
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" -q -p no:cacheprovider -rfE --junitxml="$out/hardening.xml" \
  ${tests[@]} "$@" 2>&1 | tee "$out/hardening.log"
rc1=${PIPESTATUS[0]}
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" -q -p no:cacheprovider -rfE --junitxml="$out/numerics.xml" \
  ${numerics[@]} -k "$kernel_filter" "$@" 2>&1 | tee "$out/numerics.log"
rc2=${PIPESTATUS[0]}
test_s=$(( $(date +%s) - test_start ))

# Sanitizer reports in any process (pytest's, xdist workers', the bad-input children's stderr tails)
reports=$(cat "$out"/reports/* 2>/dev/null | grep -cE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer")
for f in "$out"/reports/*; do [ -f "$f" ] && { echo "== $f"; grep -vE "^    #[1-9][0-9]" "$f" | head -40; }; done
unset LD_PRELOAD
.venv/bin/python - "$out" "$rc1" "$rc2" "$reports" "$sanitizers" "$build_s" "$test_s" "$record" <<'PY'
import json, subprocess, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
out, rc1, rc2, reports, sanitizers, build_s, test_s, record = sys.argv[1:]
counts = {}
for name in ("hardening", "numerics"):
    path = Path(out) / f"{name}.xml"
    if not path.exists():
        counts[name] = None
        continue
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts[name] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
summary = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "sanitizers": sanitizers, "sanitizer_reports": int(reports),
           "pytest_exit": {"hardening": int(rc1), "numerics": int(rc2)}, "tests": counts,
           "build_seconds": int(build_s), "test_seconds": int(test_s),
           "clean": int(rc1) == 0 and int(rc2) == 0 and int(reports) == 0}
Path(out, "sanitize.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary, indent=1))
if record == "1":
    dest = Path("docs/reliability/sanitize.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"recorded in {dest}")
sys.exit(0 if summary["clean"] else 1)
PY
