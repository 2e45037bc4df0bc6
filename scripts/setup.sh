#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with the CPU build of torch, then this package
# (which compiles the onnxattn custom-op library) and its test dependencies. Safe to re-run: later runs
# rebuild incrementally. Environment knobs: ONNXATTN_CUDA=OFF skips the CUDA kernels; ONNXATTN_CUDA_ARCHS
# (default "80;90a"); ONNXATTN_ORT_INCLUDE_DIR points at your own onnxruntime headers.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,bench]"
.venv/bin/onnxattn info
