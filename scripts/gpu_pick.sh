#!/usr/bin/env bash
# Prints the path of the faster of two library builds on this GPU (mean TFLOP/s of our prefill benchmark,
# fp16 and bf16, A B A B order), after a table on stderr; the kernel tests and scripts/gpu_check.sh then run on
# that one. For a device call that must settle between two candidate kernels in one go:
#   ONNXATTN_LIBRARY=$(bash scripts/gpu_pick.sh LIB_A LIB_B) bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:$PWD/tests/gpu:${PYTHONPATH:-}
a=$(realpath "$1") b=$(realpath "$2")
for run in A1 B1 A2 B2; do
  lib=$a; [ "${run:0:1}" = B ] && lib=$b
  ONNXATTN_LIBRARY=$lib timeout 60 python3 benchmarks/bench_sdpa_cuda.py --only-ours --kinds prefill \
    --dtypes float16,bfloat16 --out "/tmp/pick_$run.json" >/dev/null 2>&1
done
python3 - "$a" "$b" <<'PY'
import json, statistics, sys
def tflops(run):
    try:
        return [r["tflops"]["onnxattn"] for r in json.load(open(f"/tmp/pick_{run}.json"))["results"]]
    except Exception:
        return []
a, b = tflops("A1") + tflops("A2"), tflops("B1") + tflops("B2")
ma, mb = (statistics.fmean(x) if x else 0.0 for x in (a, b))
print(f"gpu_pick: A {sys.argv[1]}: mean {ma:.1f} TFLOP/s {[round(x) for x in a]}", file=sys.stderr)
print(f"gpu_pick: B {sys.argv[2]}: mean {mb:.1f} TFLOP/s {[round(x) for x in b]}", file=sys.stderr)
print(sys.argv[2] if mb > ma else sys.argv[1])
PY
