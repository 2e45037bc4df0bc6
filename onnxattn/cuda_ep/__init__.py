"""The onnxattn custom-op library: where it is, how to register it, and sessions that use it.

Registering the library on a SessionOptions makes onnxruntime run our CPU/CUDA kernels for onnxattn
nodes; without it, onnxruntime expands each node into the reference function attached to the model.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx

LIBRARY_ENV = "ONNXATTN_LIBRARY"
_LIBRARY_NAMES = {"linux": "libonnxattn_ops.so", "darwin": "libonnxattn_ops.dylib", "win32": "onnxattn_ops.dll"}


def library_name() -> str:
    return _LIBRARY_NAMES.get(sys.platform, "libonnxattn_ops.so")


def library_path() -> str:
    """Path of the custom-op library: $ONNXATTN_LIBRARY, else the one installed with this package."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"onnxattn: {LIBRARY_ENV}={override} is not a file")
        return override
    # __path__ spans the source tree and, for editable installs, the installed binary directory.
    for directory in __path__:
        candidate = Path(directory) / library_name()
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"onnxattn: {library_name()} was not found next to {__name__} ({', '.join(__path__)}). "
        f"Install the package (pip install .) so that the library is built, or point {LIBRARY_ENV} at it."
    )


def register(session_options=None):
    """Registers the library on `session_options` (a new one if None) and returns it."""
    import onnxruntime as ort

    options = session_options if session_options is not None else ort.SessionOptions()
    options.register_custom_ops_library(library_path())
    return options


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime has it and a GPU is visible, then CPU. onnxruntime-gpu lists its CUDA
    provider on machines without a GPU too (and logs errors when a session tries it), so the GPU is asked
    through torch, which knows without loading onnxruntime's CUDA libraries."""
    import onnxruntime as ort

    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    cuda = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]


def make_session(
    model: onnx.ModelProto | str | os.PathLike | bytes,
    *,
    providers: Sequence[str] | None = None,
    use_library: bool = True,
    session_options=None,
):
    """An onnxruntime InferenceSession for `model`; with `use_library`, onnxattn nodes run our kernels,
    otherwise their reference functions."""
    import onnxruntime as ort

    options = session_options if session_options is not None else ort.SessionOptions()
    if use_library:
        register(options)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, os.PathLike):
        model = os.fspath(model)
    providers = list(providers or default_providers())
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    try:
        return ort.InferenceSession(model, options, providers=providers)
    except OrtNotImplemented as e:
        if "CUDAExecutionProvider" in providers or not _has_bfloat16(model):
            raise
        raise ValueError(f"onnxruntime's CPU provider cannot run this bfloat16 model: its kernels for standard ops "
                         f"(Mul, MatMul, ...) have no bfloat16 ({e}). Run it with the CUDA provider, or export "
                         "float32 or float16 for the CPU") from e


def _has_bfloat16(model: str | bytes) -> bool:
    """Whether the graph's inputs, outputs or weights are bfloat16 (read without external data)."""
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
    values = [*proto.graph.input, *proto.graph.output]
    return (any(v.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16 for v in values)
            or any(t.data_type == onnx.TensorProto.BFLOAT16 for t in proto.graph.initializer))


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path())
    for name in ("OnnxAttnBuildInfo", "OnnxAttnCpuIsa"):
        getattr(lib, name).restype = ctypes.c_char_p
    return lib


def build_info() -> dict[str, str]:
    """How the library was built: providers, CUDA archs, compiler, ORT API version, CPU ISA in use."""
    raw = _library().OnnxAttnBuildInfo().decode()
    info = {"library": library_path()}
    for item in raw.split():
        key, _, value = item.partition("=")
        info[key] = value or "yes"
    info["cpu_isa"] = _library().OnnxAttnCpuIsa().decode()
    return info
