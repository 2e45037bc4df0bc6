"""``export_model``: a reference model (by name, config or module) -> one validated .onnx.

Decoders get one graph for prefill and decode: ``input_ids [batch, sequence]`` plus, per layer i,
``past_key_values.{i}.key/.value [batch, Hkv, past_sequence, D]`` in, ``logits`` (float32) and
``present.{i}.key/.value`` out (the optimum / onnxruntime-genai naming). Prefill feeds empty pasts
(past_sequence = 0). A model whose layers cache more (CausalLM.cache_layout: DeepSeek-V3.2's indexer keys) adds
``past_key_values.{i}.<name>`` / ``present.{i}.<name>`` after a layer's key and value, in both modes. Two cache modes:

- ``cache="concat"`` (default): present = concat(past, new); plain onnxruntime loops feed presents back.
- ``cache="shared"``: preallocated buffers ``[batch, Hkv, max_sequence, D]`` plus ``past_lengths [batch]``;
  presents are the updated buffers. With our library and I/O binding (present bound to the past's
  OrtValue), the kernel writes the new tokens in place: a decode step does not copy the cache.

Encoders take ``input_ids``, ``attention_mask`` and, when their example inputs have them (BERT, RoBERTa),
``token_type_ids`` (ModernBERT has none); stateless models their own example inputs.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
CACHE_MODES = ("concat", "shared")


@dataclasses.dataclass
class ExportResult:
    path: Path
    model: nn.Module  # the torch model that was exported (in the export dtype)
    kind: str  # "decoder", "encoder" or "stateless"
    cache: str | None
    input_names: list[str]
    output_names: list[str]
    seconds: float
    external_data: bool
    report: object | None = None  # onnxattn.validation.Report


def io_names(kind: str, num_layers: int = 0, cache: str = "concat", outputs: int = 1,
             inputs: int = 3, cache_names: list | None = None) -> tuple[list[str], list[str]]:
    """`cache_names`: per layer its cache tensors' names (default: key and value; CausalLM.cache_layout)."""
    if kind == "decoder":
        cache_names = cache_names or [("key", "value")] * num_layers
        past = [f"past_key_values.{i}.{t}" for i, names in enumerate(cache_names) for t in names]
        present = [f"present.{i}.{t}" for i, names in enumerate(cache_names) for t in names]
        return ["input_ids", *past] + (["past_lengths"] if cache == "shared" else []), ["logits", *present]
    if kind == "encoder":
        names = ["input_ids", "attention_mask", "token_type_ids"][:inputs]
        return names, ["last_hidden_state", "pooler_output"][:outputs]
    return ["input_ids"], ["logits"]


class _DecoderGraph(nn.Module):
    """The exported signature: float32 logits (sampling wants them; a no-op for float32 models)."""

    def __init__(self, model: nn.Module, logits_to_keep: int):
        super().__init__()
        self.model, self.logits_to_keep = model, logits_to_keep

    def forward(self, input_ids, past_key_values, past_lengths=None):
        logits, presents = self.model(input_ids, past_key_values, past_lengths, logits_to_keep=self.logits_to_keep)
        return logits.float(), presents


def _resolve(model, overrides) -> tuple[nn.Module, bool]:
    """The module, and whether it was built here (so it may be cast in place)."""
    from onnxattn import models

    if isinstance(model, nn.Module):
        if overrides:
            raise ValueError("export_model: config overrides apply to a model name or config, not a module")
        return model, False
    return models.build(model, **(overrides or {})), True


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"export_model: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _set_metadata(proto, module: nn.Module, kind: str, cache: str | None, dtype: torch.dtype) -> None:
    """What generation needs to know (and users like to see) about the graph, in metadata_props."""
    import onnx

    from onnxattn.generate import METADATA_PREFIX

    props = {"family": type(module).__name__, "kind": kind, "dtype": str(dtype).removeprefix("torch.")}
    if cache:
        props["cache"] = cache
    if getattr(module, "max_positions", None):
        props["max_positions"] = str(module.max_positions)
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in props.items()})


def export_model(
    model,
    path: str | os.PathLike,
    *,
    dtype="float32",
    cache: str = "concat",
    logits: str = "all",
    overrides: dict | None = None,
    validate: bool = True,
    numerics: bool = True,
    external_data_threshold: int | None = None,
    progress: bool = True,
    _owned: bool = False,  # the module is the caller's own conversion (from_transformers, the CLI): cast in place
) -> ExportResult:
    """Exports a reference model (a name from onnxattn.models, a config, or a model module) to `path`.

    `dtype`: float32 / float16 / bfloat16. `cache`: "concat" or "shared" (decoders, see the module doc).
    `logits`: "all" positions or only the "last" (what generation needs; saves the vocabulary projection
    of the prompt). `overrides`: config fields for a name or config. `validate` runs onnxattn.validate
    (with kernel-vs-function `numerics`) and raises if it fails. Models over `external_data_threshold`
    bytes (default: protobuf's 2 GB limit) are saved with their weights in ``<path>.data``."""
    import onnxattn.export as ox
    from onnxattn._progress import Progress
    from onnxattn.validation import validate as run_validation

    if cache not in CACHE_MODES:
        raise ValueError(f"export_model: cache must be one of {CACHE_MODES}, got {cache!r}")
    if logits not in ("all", "last"):
        raise ValueError(f"export_model: logits must be 'all' or 'last', got {logits!r}")
    torch_dtype = _dtype(dtype)
    start = time.perf_counter()
    path = Path(path)
    with Progress(5 if validate else 4, f"export {path.name}", enabled=progress) as bar:
        module, owned = _resolve(model, overrides)
        owned = owned or _owned
        kind = getattr(module, "kind", "stateless")
        modes = getattr(module, "cache_modes", CACHE_MODES) if kind == "decoder" else ("concat",)
        if cache not in modes:  # before tracing, whose error would bury this one
            supports = f"it supports {' or '.join(map(repr, modes))}" if kind == "decoder" else "it has no KV cache"
            raise ValueError(f"export_model: {type(module).__name__} ({kind}) cannot export cache={cache!r}; "
                             f"{supports}")
        if logits == "last" and kind != "decoder":  # only the KV-cache decoders' graph keeps the last position
            raise ValueError(f"export_model: {type(module).__name__} ({kind}) cannot export logits='last'; it outputs "
                             "every position")
        if torch_dtype != next(module.parameters()).dtype:
            from onnxattn.models._base import cast_model

            # a caller's module is left as it was; one built for this export is cast in place (no second copy)
            module = cast_model(module if owned else copy.deepcopy(module), torch_dtype)
        bar.step(f"built {type(module).__name__} ({sum(p.numel() for p in module.parameters()) / 1e6:.2f}M parameters)")

        dims = {"batch": 2, "sequence": 5}
        if kind == "decoder":
            cache_names = [tuple(layer) for layer in module.cache_layout()]  # key, value (and more, per model)
            num_layers = len(cache_names)
            inputs, outputs = io_names(kind, num_layers, cache, cache_names=cache_names)
            graph = _DecoderGraph(module, 1 if logits == "last" else 0).eval()
            ids, past = module.example_inputs(2, 5, 3)
            past = [tuple(t.to(torch_dtype) for t in layer) for layer in past]
            seq = {0: "batch", 1: "sequence"}
            if cache == "shared":
                pad = lambda t: torch.cat([t, t.new_zeros(*t.shape[:2], 9, t.shape[3])], 2)  # noqa: E731  (M = 12)
                buffers = [tuple(pad(t) for t in layer) for layer in past]
                lengths = torch.tensor([3, 1])
                kv = {0: "batch", 2: "max_sequence"}
                args = (ids, buffers, lengths)
                dynamic = (seq, [(kv,) * len(names) for names in cache_names], {0: "batch"})
                dims.update(max_sequence=12, past_sequence=3)
            else:
                kv = {0: "batch", 2: "past_sequence"}
                args, dynamic = (ids, past), (seq, [(kv,) * len(names) for names in cache_names])
                dims["past_sequence"] = 3
        elif kind == "encoder":
            graph, args = module, module.example_inputs(2, 5)
            outputs_count = 2 if getattr(module, "pooler", None) is not None else 1
            inputs, outputs = io_names(kind, outputs=outputs_count, inputs=len(args))
            seq = {0: "batch", 1: "sequence"}
            dynamic, cache = (seq,) * len(args), None
        else:
            graph, args = module, module.example_inputs(2, 5)
            inputs, outputs = io_names(kind)
            dynamic, cache = module.dynamic_shapes(), None
        bar.step("tracing and translating (torch.onnx.export)")
        path.parent.mkdir(parents=True, exist_ok=True)
        proto = ox.export(graph, args, None, dynamic_shapes=dynamic, input_names=inputs, output_names=outputs,
                          check=False, external_data=str(path) + ".data",
                          external_data_threshold=external_data_threshold)
        bar.step("functions attached; saving")
        _set_metadata(proto, module, kind, cache, torch_dtype)
        external = ox.save(proto, path, external_data_threshold=external_data_threshold)
        del proto
        ox.check_model(path)  # from the file: no copies of the weights in memory, any size
        bar.step(f"saved{' with external data' if external else ''} and checked")
        report = None
        if validate:
            report = run_validation(path, numerics=numerics, dims=dims)
            bar.step("validated")
            if not report.ok:
                raise ValueError(f"export_model: {path} failed validation:\n{report}")
    return ExportResult(path, module, kind, cache, inputs, outputs, time.perf_counter() - start, external, report)
