"""The onnxattn ONNX ops: one spec per op (schema, shape inference, reference function, docs).

Importing this package registers every schema with ``onnx.defs``, so ``onnx.checker`` and
``onnx.shape_inference`` understand onnxattn nodes even without their functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
import onnx.defs

from onnxattn.ops import gqa, indexer, mla, nsa, paged, routed, sdpa
from onnxattn.ops._spec import DOMAIN, IR_VERSION, MIN_MODEL_OPSET, OPSET_VERSION, OpError, OpSpec, TensorInfo

SPECS: dict[str, OpSpec] = {
    spec.name: spec for spec in (sdpa.SPEC, gqa.SPEC, paged.SPEC, mla.SPEC, indexer.SPEC, nsa.SPEC, routed.SPEC)
}

__all__ = [
    "DOMAIN",
    "IR_VERSION",
    "OPSET_VERSION",
    "SPECS",
    "OpError",
    "OpSpec",
    "TensorInfo",
    "attach_functions",
    "get_spec",
    "model_opset",
    "onnxattn_nodes",
    "register_schemas",
    "value_types",
]


def get_spec(op_type: str) -> OpSpec:
    try:
        return SPECS[op_type]
    except KeyError:
        raise OpError(f"unknown op {DOMAIN}::{op_type} (known: {', '.join(sorted(SPECS))})") from None


def register_schemas() -> None:
    """Registers every op's schema with onnx.defs (idempotent)."""
    for spec in SPECS.values():
        if not onnx.defs.has(spec.name, OPSET_VERSION, DOMAIN):
            onnx.defs.register_schema(spec.onnx_schema())


register_schemas()


def model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise OpError("model has no default-domain opset import")


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def onnxattn_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every onnxattn node of the model, in subgraphs too."""
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain == DOMAIN:
                yield node


# Initializers above this many bytes go to shape inference without their data: weights, never the small
# shape and index constants whose values inference propagates (a Reshape's target shape).
_INFERENCE_DATA_LIMIT = 4096


def _for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the data of its large main-graph initializers (names, types and dims kept). Inference
    serializes the model to C++ and back: with the weights that is four transient copies of them (a 1B
    model's export peaked at 3x its size there)."""
    large = {t.name for t in model.graph.initializer if t.ByteSize() > _INFERENCE_DATA_LIMIT}
    if not large:
        return model
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.name in large:
            light.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        else:
            light.graph.initializer.append(tensor)
    return light


def _copy_fields(src, dst, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # repeated
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def value_types(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Type and shape of every value name, after onnx shape inference (with our schemas). When inference
    fails (our checks raise on bad nodes), only the model's declared types are returned."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_for_inference(model), strict_mode=False)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        inferred = model
    types: dict[str, TensorInfo] = {}
    for graph in _graphs(inferred.graph):
        for init in graph.initializer:
            types[init.name] = TensorInfo(init.data_type, tuple(init.dims))
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            types[vi.name] = TensorInfo.from_type_proto(vi.type)
    return types


def node_inputs(node: onnx.NodeProto, types: dict[str, TensorInfo]) -> list[TensorInfo | None]:
    """The node's inputs as TensorInfo, None for omitted optional inputs."""
    return [types.get(name, TensorInfo()) if name else None for name in node.input]


def _consumed_names(model: onnx.ModelProto) -> set[str]:
    """Every value name read by a node (in any graph) or returned by a graph. Names inside model-local
    functions are a scope of their own (an attached function's formals are often named like graph values,
    e.g. present_key), so they do not count."""
    names: set[str] = set()
    for graph in _graphs(model.graph):
        names.update(o.name for o in graph.output)
        for node in graph.node:
            names.update(node.input)
    return names


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Makes a model with onnxattn nodes portable, in place: every attribute written explicitly, each node
    tagged with the overload of its input signature (present optional inputs, mask kind), and the
    matching reference functions attached, built for the model's opset. Raises OpError on bad nodes."""
    opset = model_opset(model)
    if opset < MIN_MODEL_OPSET:
        raise OpError(f"onnxattn reference functions need opset >= {MIN_MODEL_OPSET}, the model has {opset}")
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    model.ir_version = max(model.ir_version, IR_VERSION)
    types = value_types(model)
    consumed = _consumed_names(model)
    needed: dict[tuple[str, str], OpSpec] = {}
    for node in onnxattn_nodes(model):
        spec = get_spec(node.op_type)
        inputs = node_inputs(node, types)
        # Trailing optional outputs nobody reads are dropped, so neither kernel nor function computes them,
        # but never into a combination the op rejects (e.g. present_key without present_value).
        keep = len(node.output)
        while keep > 1 and (not node.output[keep - 1] or node.output[keep - 1] not in consumed):
            if not spec.outputs[min(keep, len(spec.outputs)) - 1].optional:
                break
            keep -= 1
        while keep < len(node.output):
            try:
                spec.signature(inputs, [bool(name) for name in node.output[:keep]])
                break
            except OpError:
                keep += 1
        del node.output[keep:]
        spec.infer_node(inputs, list(node.attribute))
        values = spec.resolve_attributes(list(node.attribute))
        del node.attribute[:]
        node.attribute.extend(spec.node_attributes(values))
        node.overload = spec.signature(inputs, [bool(name) for name in node.output])
        needed[(spec.name, node.overload)] = spec
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    for (_, overload), spec in sorted(needed.items()):
        model.functions.append(spec.build_function(overload, opset))
    return model
