"""onnxattn: modern attention mechanisms as ONNX custom ops.

- ``onnxattn.ops``: the ONNX op specs (schemas registered with onnx on import, reference functions);
- ``onnxattn.nn``: torch modules (the numerical reference), exportable with one node per mechanism;
- ``onnxattn.export(model, args, path)``: torch -> ONNX with our functions attached;
- ``onnxattn.cuda_ep``: the custom-op library (CPU and CUDA kernels) and onnxruntime sessions;
- ``onnxattn.validate(model)`` (onnxattn.validation): schema, shape, function and numerics checks.
"""

from __future__ import annotations

import importlib

from onnxattn import ops
from onnxattn.ops import DOMAIN, OPSET_VERSION
from onnxattn.validation import validate

__version__ = "0.1.0"
__all__ = ["DOMAIN", "OPSET_VERSION", "cuda_ep", "export", "nn", "ops", "validate"]

_LAZY = {"export": "onnxattn.export", "nn": "onnxattn.nn", "cuda_ep": "onnxattn.cuda_ep", "models": "onnxattn.models"}


def __getattr__(name: str):
    # torch loads only when a torch-facing part is used
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'onnxattn' has no attribute {name!r}")
