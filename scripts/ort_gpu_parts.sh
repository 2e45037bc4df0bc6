#!/usr/bin/env bash
# onnxruntime-gpu and pytest-xdist for one scripts/gpu_check.sh run on the GPU machine, in fewer device calls
# than ../shared/device/ort-gpu-parts (whose wheel parts scripts/gpu_check.sh also accepts).
# The wheel (~245 MiB) is more than one call carries (64 MiB with the working tree). Python needs only its
# onnxruntime/ folder, less libonnxruntime.so (for C API users; the Python module does not link it) and the
# TensorRT provider; as tar.xz that is ~187 MiB: three parts of 55 MiB, one per call, and a remainder of ~22 MiB
# that travels with the library (~15 MiB) in the call that runs the checks. A call carries 64 MiB with the working
# tree (~5 MiB), so parts of 60 MiB did not fit. Made here, under the git-ignored .devcarry/:
#   .devcarry/ort-1 .. ort-3   one call each:  mkdir -p /tmp/ortparts && cp .devcarry/ort-N/* /tmp/ortparts/
#   .devcarry/ort-4, .devcarry/pywheels   carried by the checks' call with the library, whose command starts
#                                         mkdir -p /tmp/ortparts && cp .devcarry/ort-4/* /tmp/ortparts/ && ...
# Run from the project's root:  scripts/ort_gpu_parts.sh [VERSION]   (~2 min on 2 cores)
set -euo pipefail
ver=${1:-1.31.1}
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
py=${PYTHON:-python3}
mkdir -p .devcarry/whl .devcarry/pywheels
download() {  # cp312 manylinux wheels for the GPU machine's python3.12
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d "$@"
}
whl=$(ls .devcarry/whl/onnxruntime_gpu-"$ver"-cp312-*.whl 2>/dev/null | head -1 || true)
if [ -z "$whl" ]; then
  download .devcarry/whl "onnxruntime-gpu==$ver"
  whl=$(ls .devcarry/whl/onnxruntime_gpu-"$ver"-cp312-*.whl | head -1)
fi
ls .devcarry/pywheels/pytest_xdist-*.whl >/dev/null 2>&1 || download .devcarry/pywheels pytest-xdist execnet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && unzip -q "$OLDPWD/$whl" 'onnxruntime/*' &&
  rm -f onnxruntime/capi/libonnxruntime.so.* onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
name=onnxruntime_gpu-$ver.tar.xz
tar -C "$work" -cf - onnxruntime | xz -T0 -6 > "$work/$name"
rm -rf .devcarry/ort-*
split -b 55M -d -a 1 "$work/$name" "$work/part-"
n=0
for p in "$work"/part-*; do
  n=$((n + 1)); mkdir -p ".devcarry/ort-$n"; mv "$p" ".devcarry/ort-$n/$name.$(basename "$p")"
done
echo "onnxruntime-gpu $ver: $n parts under .devcarry/ort-1..$n ($(du -sh "$work/$name" | cut -f1) in all), sha256 $(sha256sum "$work/$name" | cut -d' ' -f1)"
echo "calls 1..$((n - 1)), back to back: carry [\".devcarry/ort-N\"]  command: mkdir -p /tmp/ortparts && cp .devcarry/ort-N/* /tmp/ortparts/ && ls /tmp/ortparts"
echo "then: carry [\"build/gpu/onnxattn/cuda_ep/libonnxattn_ops.so\", \".devcarry/ort-$n\", \".devcarry/pywheels\"]"
echo "  command: mkdir -p /tmp/ortparts && cp .devcarry/ort-$n/* /tmp/ortparts/ && ONNXATTN_COMMIT=\$(git rev-parse HEAD) bash scripts/gpu_check.sh"
