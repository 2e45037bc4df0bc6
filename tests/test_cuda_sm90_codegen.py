"""The sm_90a code of the Hopper prefill kernel (sdpa/cuda_prefill_wgmma.cuh), as ptxas compiles it: no
spills, no stack, and no serialized warpgroup MMAs. ptxas serializes every wgmma of a kernel (and says so
only as an "info" line, which -Werror does not catch) when one might run in a divergent path or when other
instructions write a register of a wgmma in flight: the kernel still runs, at a fraction of its speed. CI
builds sm_80 only, so this compiles the two instantiations for sm_90a itself (about a second each); skipped
where nvcc is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "onnxattn" / "cuda_ep" / "csrc"
NVCC = shutil.which("nvcc") or next((str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.exists()), None)
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


@pytest.mark.parametrize("unit", ["cuda_prefill_wgmma_f16.cu", "cuda_prefill_wgmma_bf16.cu"])
def test_wgmma_kernel_compiles_to_pipelined_hgmma_without_spills(unit, tmp_path):
    done = subprocess.run(
        [NVCC, "-I", str(CSRC), "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-arch=sm_90a", "-cubin",
         "-Xptxas", "-v", "-DONNXATTN_WITH_CUDA", str(CSRC / "sdpa" / unit), "-o", str(tmp_path / "k.cubin")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "Potential Performance Loss" not in log, log[-3000:]
    kernel = [line for line in log.splitlines() if "prefill_wgmma_kernel" in line]
    assert kernel, log[-3000:]
    props = re.findall(r"Function properties for \S*prefill_wgmma_kernel\S*\s+(\d+) bytes stack frame, (\d+) bytes "
                       r"spill stores, (\d+) bytes spill loads", log)  # fmt: skip
    assert len(props) == 2 and all(p == ("0", "0", "0") for p in props), log[-3000:]  # head tiles 64 and 128


CUOBJDUMP = shutil.which("cuobjdump") or os.environ.get("ONNXATTN_CUOBJDUMP")


@pytest.mark.skipif(CUOBJDUMP is None, reason="cuobjdump not found (set ONNXATTN_CUOBJDUMP to check the SASS order)")
def test_wgmma_softmax_runs_beside_the_value_product(tmp_path):
    """In the main loop, every exponential of the next step's softmax (64 probabilities + 2 rescale factors per
    thread) is issued between the wait for the scores (DEPBAR 0x1) and the wait for P V (DEPBAR 0x0): ptxas
    hoisted that wait above two thirds of them until wgmma::wait_after pinned it."""
    cubin = tmp_path / "k.cubin"
    done = subprocess.run(
        [NVCC, "-I", str(CSRC), "-O3", "-std=c++17", "--expt-relaxed-constexpr", "-arch=sm_90a", "-cubin",
         "-DONNXATTN_WITH_CUDA", str(CSRC / "sdpa" / "cuda_prefill_wgmma_bf16.cu"), "-o", str(cubin)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    sass = subprocess.run([CUOBJDUMP, "-sass", str(cubin)], capture_output=True, text=True, timeout=120).stdout
    loops = sass.split("WARPGROUP.DEPBAR.LE gsb0, 0x1")[1:]
    assert len(loops) == 2, "one main loop per head tile (64, 128)"
    for loop in loops:
        between = loop[: loop.index("WARPGROUP.DEPBAR.LE gsb0, 0x0")]
        assert between.count("MUFU.EX2") >= 66, f"only {between.count('MUFU.EX2')} exponentials overlap P V"
