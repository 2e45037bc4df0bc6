"""onnxruntime-gpu helpers for the GPU checks and the benchmark: availability (with the reason when not),
sessions with our library, I/O binding of torch CUDA tensors (every dtype, bf16 included, no host
copies), and which execution provider ran a node (from onnxruntime's profile)."""

from __future__ import annotations

import json
import os

DISABLE_FLAG = "ONNXATTN_DISABLE_CUDA"  # leaves our CUDA kernels unregistered (register.cc)
CUDA_EP = "CUDAExecutionProvider"


def onnxruntime_cuda():
    """(onnxruntime module, None) when its CUDA execution provider can run here, else (None, reason)."""
    try:
        import torch  # noqa: F401  (loads the CUDA libraries onnxruntime-gpu links against)
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - depends on the machine
        return None, f"onnxruntime not importable: {e}"
    if CUDA_EP not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - best effort, the session creation reports the real failure
            return ort, f"preload_dlls failed: {e}"
    return ort, None


def require_cuda_kernels(ort, missing) -> None:
    """Skips the calling test unless onnxruntime-gpu can run here (`ort`, `missing` from onnxruntime_cuda())
    and our CUDA kernels are registered."""
    import pytest

    if ort is None or missing:
        pytest.skip(missing or "onnxruntime-gpu unavailable")
    if os.environ.get(DISABLE_FLAG) == "1":
        pytest.skip(f"{DISABLE_FLAG}=1 leaves our CUDA kernels unregistered")


def benchmark_runtime(tool: str):
    """(onnxruntime module, None) when a CUDA benchmark whose rows need our CUDA kernels in onnxruntime can run,
    else (None, the line `tool` prints before it exits 2)."""
    import torch

    if not torch.cuda.is_available():
        return None, f"{tool}: no CUDA GPU"
    ort, missing = onnxruntime_cuda()
    if missing:
        return None, f"{tool}: needs onnxruntime-gpu ({missing})"
    if os.environ.get(DISABLE_FLAG) == "1":
        return None, f"{tool}: unset {DISABLE_FLAG} (it leaves our CUDA kernels out)"
    return ort, None


def onnx_type(dtype) -> int:
    import torch
    from onnx import TensorProto

    return {
        torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16, torch.bfloat16: TensorProto.BFLOAT16,
        torch.bool: TensorProto.BOOL, torch.int32: TensorProto.INT32, torch.int64: TensorProto.INT64,
    }[dtype]  # fmt: skip


def session(ort, model_bytes: bytes, *, library: str | None, profile_prefix: str | None = None,
            providers=(CUDA_EP, "CPUExecutionProvider")):  # fmt: skip
    so = ort.SessionOptions()
    if library:
        so.register_custom_ops_library(library)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(model_bytes, so, providers=list(providers))
    if CUDA_EP in providers and CUDA_EP not in sess.get_providers():
        raise RuntimeError(f"onnxruntime did not load its CUDA execution provider (got {sess.get_providers()})")
    return sess


def run_bound(sess, inputs: dict, outputs: dict) -> None:
    """Runs `sess` with inputs and outputs bound to torch CUDA tensors (outputs preallocated)."""
    binding = sess.io_binding()
    for name, t in inputs.items():
        t = t.contiguous()
        binding.bind_input(name, "cuda", t.device.index or 0, onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
    for name, t in outputs.items():
        binding.bind_output(name, "cuda", t.device.index or 0, onnx_type(t.dtype), tuple(t.shape), t.data_ptr())
    sess.run_with_iobinding(binding)


def node_providers(sess, op_type: str) -> set[str]:
    """Execution providers that ran nodes of `op_type`, read from the profile (ends profiling)."""
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    return {
        e["args"]["provider"]
        for e in events
        if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == op_type and "provider" in e.get("args", {})
    }
