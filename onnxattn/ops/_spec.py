"""The op registry pattern: one ``OpSpec`` per ONNX op, the single source of truth that the ONNX schema,
shape inference, the reference function, validation, export and the docs are all derived from.

No torch here: schemas must load without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
import onnx.defs
from onnx import TensorProto, helper

DOMAIN = "onnxattn"
OPSET_VERSION = 1
# Reference functions use ReduceMax/ReduceSum with axes as an input and Shape with start/end.
MIN_MODEL_OPSET = 18
# Function overloads need IR version 10; onnxruntime 1.31 reads up to 13 while onnx 1.23 writes 14 by
# default, so models built here use 10.
IR_VERSION = 10

FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
ELEM_TYPE_NAMES = {
    TensorProto.FLOAT: "float",
    TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16",
    TensorProto.DOUBLE: "double",
    TensorProto.BOOL: "bool",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
}


class OpError(ValueError):
    """Bad input to an onnxattn op: the message names the op, the input or attribute, and what was expected."""


Dim = int | str | None  # known size, symbolic name, or unknown


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What is statically known of a tensor: element type (0 = unknown) and shape (None = unknown rank)."""

    elem_type: int = 0
    shape: tuple[Dim, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @classmethod
    def from_type_proto(cls, tp: onnx.TypeProto | None) -> TensorInfo:
        if tp is None or not tp.HasField("tensor_type"):
            return cls()
        tt = tp.tensor_type
        if not tt.HasField("shape"):
            return cls(tt.elem_type, None)
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return cls(tt.elem_type, tuple(dims))

    def to_type_proto(self) -> onnx.TypeProto:
        return helper.make_tensor_type_proto(self.elem_type, None if self.shape is None else list(self.shape))

    def type_name(self) -> str:
        return ELEM_TYPE_NAMES.get(self.elem_type, f"type {self.elem_type}")

    def shape_str(self) -> str:
        if self.shape is None:
            return "[?]"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


def dims_differ(a: Dim, b: Dim) -> bool:
    """True only when two dims are known to differ (unknown or different symbols may still agree)."""
    return isinstance(a, int) and isinstance(b, int) and a != b


@dataclasses.dataclass(frozen=True)
class Input:
    name: str
    type_str: str  # a type-constraint name ("T") or a concrete type ("tensor(float)")
    doc: str
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Output:
    name: str
    type_str: str
    doc: str
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class Attr:
    name: str
    kind: str  # "int" | "float"
    default: int | float
    doc: str
    # Returns an error message (without the op name) for a value outside the contract, else None.
    check: Callable[[Any], str | None] = lambda _: None

    _ONNX_TYPES = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT}

    @property
    def onnx_type(self) -> int:
        return self._ONNX_TYPES[self.kind]


@dataclasses.dataclass(frozen=True)
class TypeConstraint:
    name: str
    types: tuple[str, ...]
    doc: str


def non_negative(what: str) -> Callable[[Any], str | None]:
    return lambda v: None if v >= 0 else f"must be >= 0 ({what}), got {v}"


def zero_or_one(v: Any) -> str | None:
    return None if v in (0, 1) else f"must be 0 or 1, got {v}"


def finite(what: str) -> Callable[[Any], str | None]:
    return lambda v: None if math.isfinite(v) else f"must be finite ({what}), got {v}"


def finite_non_negative(what: str) -> Callable[[Any], str | None]:
    return lambda v: None if math.isfinite(v) and v >= 0 else f"must be finite and >= 0 ({what}), got {v}"


# infer(inputs, attrs) -> outputs. `inputs` has None for absent optional inputs; raise OpError on bad input.
InferFn = Callable[[Sequence[TensorInfo | None], Mapping[str, Any]], Sequence[TensorInfo]]
# signature(inputs, outputs_present) -> overload name of the reference function for this combination of
# present inputs (and their types) and requested outputs. ONNX functions cannot test for an absent input,
# and onnxruntime rejects a node with fewer outputs than its function, so each combination has its own body.
SignatureFn = Callable[[Sequence[TensorInfo | None], Sequence[bool]], str]
# build(overload, opset) -> FunctionProto
BuildFn = Callable[[str, int], onnx.FunctionProto]


@dataclasses.dataclass(frozen=True)
class OptionalParts:
    """The overloads of the fused cache ops (GroupQueryAttention, MultiHeadLatentAttention, PagedAttention): the
    optional parts a node has, joined by '+' in `names` order. A part is an optional input (its index; `past` is two
    inputs, the key and the value caches; `shared`, the past lengths, needs `past`) or `present`: the two cache
    outputs, which are asked for together."""

    op: str
    names: tuple[str, ...]
    input_index: Mapping[str, int]
    present_outputs: tuple[str, str]
    required_inputs: int  # the inputs every node has, before the optional ones

    def overloads(self) -> tuple[str, ...]:
        every = (tuple(n for n, on in zip(self.names, flags) if on)
                 for flags in itertools.product((False, True), repeat=len(self.names)))
        return tuple("+".join(chosen) for chosen in every if "past" in chosen or "shared" not in chosen)

    def signature(self, inputs: Sequence[TensorInfo | None], outputs_present: Sequence[bool]) -> str:
        present = [n for n, index in self.input_index.items() if index < len(inputs) and inputs[index] is not None]
        if any(outputs_present[1:3]):
            if len(outputs_present) < 3 or not all(outputs_present[1:3]):
                first, second = self.present_outputs
                raise OpError(f"{self.op}: outputs '{first}' and '{second}' must be requested together")
            present.append("present")
        return "+".join(n for n in self.names if n in present)

    def formals(self, spec: OpSpec, parts: set[str]) -> list[str]:
        """The function's inputs for a node with `parts`: positional, every input up to the last present one
        (absent ones in between are never read)."""
        last = max([self.required_inputs - 1] + [self.input_index[x] + (1 if x == "past" else 0)
                                                 for x in parts if x in self.input_index])
        return [spec_input.name for spec_input in spec.inputs[: last + 1]]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str  # first line of the docs: the signature
    doc: str  # markdown: semantics, torch equivalent
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    attrs: tuple[Attr, ...]
    type_constraints: tuple[TypeConstraint, ...]
    infer: InferFn
    signature: SignatureFn
    build_function: BuildFn
    overloads: tuple[str, ...]  # every overload signature() can return
    overload_doc: str = ""  # how overloads are named, for ops with too many to list
    examples: tuple[str, ...] = ()
    # Ops with a shared-buffer mode (a past_lengths input): the input whose dim -2 is the buffer length M, so that
    # past_lengths + S <= M can be kept by whoever draws inputs (validate --numerics)
    shared_buffer: str = ""

    # ---- attributes ----
    def attr(self, name: str) -> Attr:
        for a in self.attrs:
            if a.name == name:
                return a
        raise KeyError(name)

    def resolve_attributes(self, node_attrs: Sequence[onnx.AttributeProto]) -> dict[str, Any]:
        """Attribute values with defaults filled in; OpError on unknown, wrongly typed or invalid ones."""
        values = {a.name: a.default for a in self.attrs}
        known = {a.name: a for a in self.attrs}
        for proto in node_attrs:
            spec = known.get(proto.name)
            if spec is None:
                raise OpError(f"{self.name}: unknown attribute '{proto.name}' (known: {', '.join(known)})")
            if proto.type != spec.onnx_type:
                got = onnx.AttributeProto.AttributeType.Name(proto.type).lower()
                raise OpError(f"{self.name}: attribute '{proto.name}' must be an {spec.kind}, got {got}")
            values[proto.name] = helper.get_attribute_value(proto)
        for a in self.attrs:
            problem = a.check(values[a.name])
            if problem:
                raise OpError(f"{self.name}: attribute '{a.name}' {problem}")
        return values

    def node_attributes(self, values: Mapping[str, Any]) -> list[onnx.AttributeProto]:
        """Every attribute, explicitly (onnx.reference ignores function attribute defaults)."""
        out = []
        for a in self.attrs:
            v = values.get(a.name, a.default)
            out.append(helper.make_attribute(a.name, int(v) if a.kind == "int" else float(v)))
        return out

    # ---- shape inference ----
    def check_input_types(self, inputs: Sequence[TensorInfo | None]) -> None:
        """Element types against the type constraints (T bound consistently across inputs)."""
        bound: dict[str, int] = {}
        constraints = {tc.name: tc for tc in self.type_constraints}
        for spec, info in zip(self.inputs, inputs):
            if info is None or info.elem_type == 0:
                continue
            tstr = f"tensor({info.type_name()})"
            if spec.type_str in constraints:
                tc = constraints[spec.type_str]
                if tstr not in tc.types:
                    raise OpError(
                        f"{self.name}: input '{spec.name}' must be one of {', '.join(tc.types)}, got {tstr}"
                    )
                if tc.name in bound and bound[tc.name] != info.elem_type:
                    raise OpError(
                        f"{self.name}: input '{spec.name}' must have the same type as the other '{tc.name}' "
                        f"inputs ({ELEM_TYPE_NAMES.get(bound[tc.name])}), got {info.type_name()}"
                    )
                bound[tc.name] = info.elem_type
            elif tstr != spec.type_str:
                raise OpError(f"{self.name}: input '{spec.name}' must be {spec.type_str}, got {tstr}")

    def infer_node(self, inputs: Sequence[TensorInfo | None], attrs: Sequence[onnx.AttributeProto]):
        required = [i for i in self.inputs if not i.optional]
        if len(inputs) < len(required) or len(inputs) > len(self.inputs):
            raise OpError(
                f"{self.name}: expects {len(required)} to {len(self.inputs)} inputs "
                f"({', '.join(i.name for i in self.inputs)}), got {len(inputs)}"
            )
        for spec, info in zip(self.inputs, inputs):
            if info is None and not spec.optional:
                raise OpError(f"{self.name}: input '{spec.name}' is required")
        padded = list(inputs) + [None] * (len(self.inputs) - len(inputs))
        self.check_input_types(padded)
        return self.infer(padded, self.resolve_attributes(attrs))

    # ---- ONNX schema ----
    def onnx_schema(self, num_outputs: int | None = None) -> onnx.defs.OpSchema:
        """The OpSchema; `num_outputs` trims trailing optional outputs (for exporters that size nodes by it)."""
        P = onnx.defs.OpSchema.FormalParameter
        Opt = onnx.defs.OpSchema.FormalParameterOption
        outputs = self.outputs if num_outputs is None else self.outputs[:num_outputs]
        schema = onnx.defs.OpSchema(
            self.name,
            DOMAIN,
            OPSET_VERSION,
            self.summary + "\n\n" + self.doc,
            inputs=[
                P(i.name, i.type_str, i.doc, param_option=Opt.Optional if i.optional else Opt.Single)
                for i in self.inputs
            ],
            outputs=[
                P(o.name, o.type_str, o.doc, param_option=Opt.Optional if o.optional else Opt.Single)
                for o in outputs
            ],
            type_constraints=[(tc.name, list(tc.types), tc.doc) for tc in self.type_constraints],
            attributes=[
                onnx.defs.OpSchema.Attribute(a.name, helper.make_attribute(a.name, a.default), a.doc)
                for a in self.attrs
            ],
        )
        schema.set_type_and_shape_inference_function(self._onnx_inference)
        return schema

    def _onnx_inference(self, ctx) -> None:
        inputs: list[TensorInfo | None] = []
        for i in range(ctx.get_num_inputs()):
            inputs.append(TensorInfo.from_type_proto(ctx.get_input_type(i)) if ctx.has_input(i) else None)
        attrs = [a for a in (ctx.get_attribute(x.name) for x in self.attrs) if a is not None]
        try:
            outputs = self.infer_node(inputs, attrs)
            # the outputs the node asks for must make a signature (e.g. both caches or neither), as attach_functions
            # and the kernels require
            self.signature(inputs, [ctx.has_output(i) for i in range(ctx.get_num_outputs())])
        except OpError as e:
            raise onnx.shape_inference.InferenceError(str(e)) from None
        for index in range(min(ctx.get_num_outputs(), len(outputs))):
            if ctx.has_output(index):
                ctx.set_output_type(index, outputs[index].to_type_proto())


class FunctionBuilder:
    """Builds a FunctionProto body from standard ONNX ops with generated value names."""

    def __init__(self, spec: OpSpec, overload: str, opset: int):
        self.spec = spec
        self.overload = overload
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        """A value name not used before in this body (or its subgraphs)."""
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, outputs: int = 1, hint: str | None = None, out: str | None = None,
           **attrs):
        """One node; returns its output name(s), fresh ones, or `out` for a single output that must carry a given
        name (a function output produced in place rather than copied by an Identity)."""
        names = [out] if out is not None and outputs == 1 else [self.fresh(hint or op_type.lower()) for _ in
                                                                 range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value, dtype=TensorProto.FLOAT, hint: str = "c") -> str:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        dims = [len(values)] if isinstance(value, (list, tuple)) else []
        return self.op("Constant", hint=hint, value=helper.make_tensor(hint, dtype, dims, values))

    def attr(self, name: str) -> str:
        """The node attribute `name` as a scalar tensor (Constant with ref_attr_name)."""
        a = self.spec.attr(name)
        out = self.fresh(name)
        ref = onnx.AttributeProto()
        ref.name = "value_int" if a.kind == "int" else "value_float"
        ref.ref_attr_name = name
        ref.type = a.onnx_type
        node = helper.make_node("Constant", [], [out])
        node.attribute.append(ref)
        self.nodes.append(node)
        return out

    def subgraph(self) -> GraphBuilder:
        """A builder for a subgraph of this body (an If branch, a Loop body), its values named from this body's
        counter so that no name repeats; it may read this body's values (outer scope)."""
        return GraphBuilder(self)

    def build(self, inputs: Sequence[str], outputs: Sequence[str]) -> onnx.FunctionProto:
        fn = helper.make_function(
            DOMAIN,
            self.spec.name,
            list(inputs),
            list(outputs),
            self.nodes,
            [helper.make_opsetid("", self.opset)],
            attributes=[],
            doc_string=f"Reference implementation of {DOMAIN}::{self.spec.name} ({self.overload or 'default'})",
            overload=self.overload,
        )
        for a in self.spec.attrs:
            fn.attribute_proto.append(helper.make_attribute(a.name, a.default))
        return fn


class GraphBuilder(FunctionBuilder):
    """The nodes of a subgraph of a function body (FunctionBuilder.subgraph); attributes are read in the body."""

    def __init__(self, parent: FunctionBuilder):
        super().__init__(parent.spec, parent.overload, parent.opset)
        self._parent = parent

    def fresh(self, hint: str) -> str:
        return self._parent.fresh(hint)

    def attr(self, name: str) -> str:
        raise TypeError(f"{self.spec.name}: read attribute {name!r} in the function body, not in a subgraph")

    def graph(self, name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto]) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, name, list(inputs), list(outputs))
