#!/usr/bin/env bash
# A/B check of two builds of the library on the GPU machine, in one device call (for kernel work between full
# scripts/gpu_check.sh runs; needs no onnxruntime-gpu):
#   1. the SDPA benchmark of our kernels only (benchmarks/bench_sdpa_cuda.py --only-ours), A then B then A
#      again, so drift of the shared machine shows as A's two runs disagreeing
#   2. every kernel-level GPU test (ctypes, no onnxruntime) against B, on many processes
#   3. optionally (GPU_AB_NCU=1) Nsight Compute on B's first launch of each kernel named in GPU_AB_NCU_KERNELS
#      (a regex; default the prefill kernel), its details page and its per-SASS-line source counters as text
# Here, first: copy build A's library somewhere git ignores (e.g. .devcarry/libA/), rebuild build/gpu (B). Call:
#   command: GPU_AB_KINDS=prefill bash scripts/gpu_ab.sh .devcarry/libA/libonnxattn_ops.so build/gpu/onnxattn/cuda_ep/libonnxattn_ops.so
#   carry:   [".devcarry/libA", "build/gpu/onnxattn/cuda_ep/libonnxattn_ops.so"]   timeout_s: ~150
# Writes bench_A.json, bench_B.json, bench_A2.json, ab_tests.xml (and ncu_details.txt, ncu_source.csv) under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
OUT=${OUT:-$root/out/gpu_ab}
mkdir -p "$OUT"
lib_a=$(realpath "$1") lib_b=$(realpath "$2")
export PYTHONUNBUFFERED=1
export PYTHONPATH=$root:$root/tests/gpu:${PYTHONPATH:-}
if ls "$root"/.devcarry/pywheels/*.whl >/dev/null 2>&1 && [ ! -d /tmp/pysite/xdist ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pysite "$root"/.devcarry/pywheels/*.whl
fi
if [ -d /tmp/pysite/xdist ]; then export PYTHONPATH=/tmp/pysite:$PYTHONPATH; fi
kinds=${GPU_AB_KINDS:-prefill,decode}
dtypes=${GPU_AB_DTYPES:-float16,bfloat16}

for run in A B A2; do
  lib=$lib_b; [ "$run" != B ] && lib=$lib_a
  echo "== benchmark $run ($lib)"
  ONNXATTN_LIBRARY=$lib timeout 90 python3 benchmarks/bench_sdpa_cuda.py --only-ours --kinds "$kinds" --dtypes "$dtypes" \
    --out "$OUT/bench_$run.json" | grep -v '^$'
done
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {r: json.loads((out / f"bench_{r}.json").read_text())["results"] for r in ("A", "B", "A2") if (out / f"bench_{r}.json").is_file()}
print(f"{'kind':8} {'dtype':9} {'shape':32} {'A':>8} {'B':>8} {'A again':>8} {'B/A':>6}")
for i, row in enumerate(runs.get("B", [])):
    metric = "tflops" if row["kind"] == "prefill" else "gbs"
    vals = [runs[r][i][metric].get("onnxattn") if r in runs and i < len(runs[r]) else None for r in ("A", "B", "A2")]
    base = [v for v in (vals[0], vals[2]) if v]
    ratio = vals[1] / (sum(base) / len(base)) if vals[1] and base else float("nan")
    print(f"{row['kind']:8} {row['dtype']:9} {row['shape']:32} " + " ".join(f"{v:8.1f}" if v else "     n/a" for v in vals) + f" {ratio:6.2f}")
PY

echo "== kernel-level GPU tests against B"
workers=()
python3 -c 'import xdist' 2>/dev/null && workers=(-n 12)
ONNXATTN_LIBRARY=$lib_b CUDA_LAUNCH_BLOCKING=1 timeout -s INT -k 10 "${GPU_AB_TEST_CAP:-90}" python3 -m pytest -q -p no:cacheprovider \
  -m gpu tests/gpu --ignore-glob='*_ort.py' "${workers[@]}" -rfE --junitxml="$OUT/ab_tests.xml" 2>&1 | tail -25
tests_rc=${PIPESTATUS[0]}

if [ "${GPU_AB_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
  echo "== Nsight Compute on B: ${GPU_AB_NCU_KERNELS:-prefill_mma}"
  cat > /tmp/ab_launch.py <<'PY'
import torch, sdpa_cuda_lib as lib
b, h, s, d = 4, 16, 4096, 128
q, k, v = (torch.randn(b, h, s, d, dtype=torch.float16, device="cuda") for _ in range(3))
lib.run(q, k, v, causal=True)
torch.cuda.synchronize()
PY
  ONNXATTN_LIBRARY=$lib_b timeout 120 ncu --set full -k "regex:${GPU_AB_NCU_KERNELS:-prefill_mma}" -c 1 --import-source no \
    --page details python3 /tmp/ab_launch.py > "$OUT/ncu_details.txt" 2>&1
  echo "ncu details: exit $? ($(wc -l < "$OUT/ncu_details.txt") lines)"
  grep -E "Duration|Registers|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc Active|Warp Cycles Per Issued|No Eligible|Local Memory|Bank Conflicts|Stall" "$OUT/ncu_details.txt" | head -40
  ONNXATTN_LIBRARY=$lib_b timeout 120 ncu --section SourceCounters --section WarpStateStats -k "regex:${GPU_AB_NCU_KERNELS:-prefill_mma}" -c 1 \
    --page source --print-source sass --csv python3 /tmp/ab_launch.py > "$OUT/ncu_source.csv" 2>&1
  echo "ncu source: exit $? ($(wc -l < "$OUT/ncu_source.csv") lines)"
fi
exit "$tests_rc"
