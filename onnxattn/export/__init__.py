"""Export torch models that use onnxattn.nn to ONNX with one onnxattn node per mechanism.

``onnxattn.export(model, args, path)`` (this module is callable) wraps ``torch.onnx.export(dynamo=True)``
with our translation table, then makes the result portable: every node's attributes written out, the
matching reference functions attached (torch's exporter would inline them if attached earlier), and the
model checked with ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from onnxattn import ops

# Models over this size are saved with external data (protobuf's 2 GB limit).
_EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def export(
    model,
    args: Sequence[Any] | Any = (),
    path: str | os.PathLike | None = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    dynamic_shapes: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset_version: int | None = None,
    optimize: bool = True,
    check: bool = True,
    external_data: str | os.PathLike | None = None,
    external_data_threshold: int | None = None,
) -> onnx.ModelProto:
    """Exports `model(*args, **kwargs)` to ONNX and returns the ModelProto (also saved to `path` if given).

    `dynamic_shapes` is passed to torch.export (e.g. ``({0: "batch", 2: "seq"},)``). With `external_data` (the
    data file beside the model file it will be saved as), weights that total at least `external_data_threshold`
    bytes (default: just under protobuf's 2 GB) are written there straight from the exporter's tensors, and the
    returned ModelProto references them: it never holds a copy of the weights."""
    import torch

    from onnxattn.export._translations import TRANSLATIONS

    if not isinstance(args, tuple):
        args = (args,)
    if opset_version is None and any(getattr(m, "onnx_rope", False) for m in model.modules()):
        opset_version = 23  # ONNX RotaryEmbedding (the seed-form MLA's rope); torch's default opset predates it
    _reuse_torchlib_registry()
    # torch.onnx logs a warning per torchvision op it cannot register when torchvision is absent.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), _without_pairwise_rewrites():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # dims named alike in dynamic_shapes (batch, sequence) are one dim; torch says so once per input
        warnings.filterwarnings("ignore", message=".*The axis name: .* will not be used.*", category=UserWarning)
        try:
            program = torch.onnx.export(
                model,
                args,
                kwargs=dict(kwargs or {}),
                dynamo=True,
                custom_translation_table=TRANSLATIONS,
                dynamic_shapes=dynamic_shapes,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                opset_version=opset_version,
                optimize=optimize,
                verbose=False,
            )
        except Exception as e:
            ours = _our_value_error(e)
            if ours is None:
                raise
            raise ours from e  # our modules' refusal, not torch's pages of trace around it
    if external_data is not None:
        _weights_to_file(program.model, external_data, external_data_threshold)
    proto = program.model_proto
    ops.attach_functions(proto)
    if check:
        check_model(proto)
    if path is not None:
        save(proto, path)
    return proto


def _our_value_error(error: BaseException) -> ValueError | None:
    """The ValueError one of our modules raised while torch traced it, if that is what `error` wraps."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ValueError):
            tb = error.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None and f"{os.sep}onnxattn{os.sep}" in tb.tb_frame.f_code.co_filename:
                return error
        error = error.__cause__ or error.__context__
    return None


def _reuse_torchlib_registry() -> None:
    """torch.onnx.export rebuilds its registry of ATen translations from torchlib on every call: ~0.4 s on a 2-core
    machine, as long as exporting a small model's layers takes. From the first export on, the registry is built once
    per opset and each export gets a copy of it (it registers its custom translations into that copy). A torch whose
    exporter lacks the private names this relies on keeps its own behaviour."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry_class = getattr(_registration, "ONNXRegistry", None)
    build = getattr(registry_class, "from_torchlib", None)
    if build is None or getattr(build, "_onnxattn_cached", False):
        return
    pristine: dict[int, Any] = {}

    def from_torchlib(cls, *args, **kwargs):
        opset = kwargs.get("opset_version", args[0] if args else None)
        if opset not in pristine:
            built = build(*args, **kwargs)
            if not isinstance(getattr(built, "functions", None), dict):
                return built  # not the registry this copy knows how to make
            pristine[opset] = built
        copy = cls.__new__(cls)
        copy.__dict__.update(pristine[opset].__dict__)
        copy.functions = {target: list(overloads) for target, overloads in pristine[opset].functions.items()}
        return copy

    from_torchlib._onnxattn_cached = True
    registry_class.from_torchlib = classmethod(from_torchlib)


@contextlib.contextmanager
def _without_pairwise_rewrites():
    """While torch.onnx.export runs: its optimizer (onnxscript's default rewrite rules) without the rules whose
    pattern has several output nodes. onnxscript matches those by trying, for every node of the pattern's first op
    type, every pair of nodes of the graph, so their cost grows with the square of the graph. There is one such rule,
    SlicesSplit (two halves sliced off one tensor -> a Split, which onnxruntime does not need). Without it a
    transformers Dory of 4 layers exported in 14.1 s instead of 16.1 (the same graph: the rule had matched nothing),
    one of 12 layers in 42.7 s instead of 63.9 (2-core machine). An onnxscript without these private names keeps its
    rules; the rules are restored afterwards."""
    try:
        from onnxscript import rewriter
    except ImportError:
        rewriter = None
    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if not isinstance(rules, tuple):
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in rules if getattr(getattr(r, "_target_pattern", None), "has_single_output_node", True))
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def _weights_to_file(model, data_path: str | os.PathLike, threshold: int | None) -> None:
    """Moves a large exported model's initializers (onnx_ir) into `data_path`, in place."""
    import onnx_ir

    threshold = _EXTERNAL_DATA_THRESHOLD if threshold is None else threshold
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if weights >= threshold:
        data_path = os.path.abspath(os.fspath(data_path))
        onnx_ir.external_data.unload_from_model(model, os.path.dirname(data_path), os.path.basename(data_path),
                                                size_threshold_bytes=1024)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def serialized_size(model: onnx.ModelProto) -> int:
    """The model's protobuf size in bytes; at least 2 GiB for a model protobuf cannot serialize (ByteSize raises
    past its 2 GiB limit: a 750M-parameter float32 model in memory, before its weights go to external data)."""
    from google.protobuf.message import EncodeError

    try:
        return model.ByteSize()
    except EncodeError:
        return 2**31


def check_model(proto: onnx.ModelProto | str | os.PathLike) -> None:
    """The full onnx checker (with our schemas). A saved model's path is checked from the file: any size
    (external data too), without copies of the weights in Python. A ModelProto too large to serialize gets only
    shape inference."""
    if isinstance(proto, (str, os.PathLike)):
        onnx.checker.check_model(os.fspath(proto), full_check=True)
    elif serialized_size(proto) < _EXTERNAL_DATA_THRESHOLD:
        onnx.checker.check_model(proto, full_check=True)
    else:
        ops.value_types(proto)  # shape inference still runs our checks


def save(model: onnx.ModelProto, path: str | os.PathLike, *, external_data_threshold: int | None = None) -> bool:
    """Saves `model`, with its weights in ``<path>.data`` when it is larger than `external_data_threshold`
    bytes (default: just under protobuf's 2 GB limit). Returns whether external data was written."""
    if has_external_data(model):  # written at export (export(external_data=...)): the proto only refers to it
        onnx.save_model(model, os.fspath(path))
        return True
    threshold = _EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold
    large = serialized_size(model) >= threshold
    onnx.save_model(
        model,
        os.fspath(path),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=os.path.basename(os.fspath(path)) + ".data" if large else None,
        size_threshold=1024,
    )
    return large


def export_model(*args, **kwargs):
    """A reference model (name, config or module) -> one validated .onnx; see onnxattn.export._models."""
    from onnxattn.export._models import export_model as run

    return run(*args, **kwargs)


def from_transformers(*args, **kwargs):
    """A Hugging Face transformers model -> one validated .onnx with our ops; see onnxattn.export._hf."""
    from onnxattn.export._hf import from_transformers as run

    return run(*args, **kwargs)


class _CallableModule(types.ModuleType):
    """Lets ``onnxattn.export(...)`` call export() while ``onnxattn.export.<name>`` still reaches this module."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
