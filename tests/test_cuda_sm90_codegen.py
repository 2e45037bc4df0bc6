"""The sm_90a code of the Hopper prefill kernel (sdpa/cuda_prefill_wgmma.cuh), as ptxas compiles it: no
spills, no stack, and no serialized warpgroup MMAs. ptxas serializes every wgmma of a kernel (and says so
only as an "info" line, which -Werror does not catch) when one might run in a divergent path or when other
instructions write a register of a wgmma in flight: the kernel still runs, at a fraction of its speed. CI
builds sm_80 only, so this compiles the two instantiations for sm_90a itself (about a second each); skipped
where nvcc is missing."""

from __future__ import annotations

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
    props = re.search(r"Function properties for \S*prefill_wgmma_kernel\S*\s+(\d+) bytes stack frame, (\d+) bytes spill "
                      r"stores, (\d+) bytes spill loads", log)  # fmt: skip
    assert props and props.groups() == ("0", "0", "0"), log[-3000:]
    registers = re.search(r"Used (\d+) registers", log[log.index("prefill_wgmma_kernel") :])
    assert registers and int(registers.group(1)) <= 255
