#!/usr/bin/env bash
# Prints the path of the faster of two library builds on this GPU (geometric mean over the rows of our SDPA
# benchmark of B's TFLOP/s or GB/s over A's, each the mean of two runs in A B A B order; GPU_PICK_KINDS picks
# the rows: prefill (default), decode, or both), after a table on stderr; the kernel tests and
# scripts/gpu_check.sh then run on that one. For a device call that must settle between two candidate kernels in one go:
#   ONNXATTN_LIBRARY=$(bash scripts/gpu_pick.sh LIB_A LIB_B) bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD:$PWD/tests/gpu:${PYTHONPATH:-}
a=$(realpath "$1") b=$(realpath "$2")
for run in A1 B1 A2 B2; do
  lib=$a; [ "${run:0:1}" = B ] && lib=$b
  ONNXATTN_LIBRARY=$lib timeout 60 python3 benchmarks/bench_sdpa_cuda.py --only-ours --kinds "${GPU_PICK_KINDS:-prefill}" \
    --dtypes float16,bfloat16 --out "/tmp/pick_$run.json" >/dev/null 2>&1
done
python3 - "$a" "$b" <<'PY'
import json, math, sys
def rows(run):
    try:
        return json.load(open(f"/tmp/pick_{run}.json"))["results"]
    except Exception:
        return []
def metric(r):
    return (r["tflops"] if r["kind"] == "prefill" else r["gbs"]).get("onnxattn") or 0.0
runs = {k: rows(k) for k in ("A1", "A2", "B1", "B2")}
logs = []
for i, r in enumerate(runs["B1"]):
    a = [metric(runs[k][i]) for k in ("A1", "A2") if i < len(runs[k])]
    b = [metric(runs[k][i]) for k in ("B1", "B2") if i < len(runs[k])]
    ma, mb = sum(a) / max(len(a), 1), sum(b) / max(len(b), 1)
    print(f"gpu_pick: {r['kind']:8} {r['dtype']:9} {r['shape']:32} A {ma:8.1f}  B {mb:8.1f}  B/A {mb / ma if ma else float('nan'):5.2f}",
          file=sys.stderr)
    if ma > 0 and mb > 0:
        logs.append(math.log(mb / ma))
gm = math.exp(sum(logs) / len(logs)) if logs else 0.0
print(f"gpu_pick: B/A geometric mean {gm:.3f}: {'B' if gm > 1 else 'A'} ({sys.argv[2] if gm > 1 else sys.argv[1]})", file=sys.stderr)
print(sys.argv[2] if gm > 1 else sys.argv[1])
PY
