"""``onnxattn validate``: checks a model's onnxattn nodes against their specs.

Per model: onnx.checker and strict shape inference (with our schemas). Per onnxattn node: known op,
attributes (types and values), input/output count, types and shapes (the spec's shape inference on the
model's inferred values), the overload tag matching the node's signature, the attached reference function
present and identical to the one this package builds, and optionally (``numerics=True``) the kernel of
our library against the node's function on random inputs of the node's inferred shapes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from onnxattn import ops
from onnxattn.ops._spec import OpError, TensorInfo

# Numerics tolerance of kernel vs function by dtype: both accumulate in float32, so the difference is
# summation order (fp32) plus one rounding of the output to the 16-bit type.
TOLERANCE = {TensorProto.FLOAT: 2e-4, TensorProto.FLOAT16: 4e-3, TensorProto.BFLOAT16: 3e-2}
DEFAULT_DIM = 4  # value for symbolic or unknown dims when no size is given for them


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    message: str = ""


@dataclasses.dataclass
class NodeReport:
    name: str
    op_type: str
    overload: str
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


@dataclasses.dataclass
class Report:
    source: str
    model_checks: list[Check] = dataclasses.field(default_factory=list)
    nodes: list[NodeReport] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.model_checks) and all(n.ok for n in self.nodes)

    def failures(self) -> list[str]:
        out = [f"model: {c.name}: {c.message}" for c in self.model_checks if not c.ok]
        for n in self.nodes:
            out += [f"node {n.name} ({n.op_type}): {c.name}: {c.message}" for c in n.checks if not c.ok]
        return out

    def __str__(self) -> str:
        lines = [f"onnxattn validate: {self.source}"]
        for c in self.model_checks:
            lines.append(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}{': ' + c.message if c.message else ''}")
        if self.nodes:
            names = [c.name for c in self.nodes[0].checks]
            width = max(len(n.name) for n in self.nodes)
            lines.append(f"  {'node':<{width}}  {'op':<26} {'overload':<20} " + " ".join(f"{x:<9}" for x in names))
            for n in self.nodes:
                cells = " ".join(f"{'ok' if c.ok else 'FAIL':<9}" for c in n.checks)
                lines.append(f"  {n.name:<{width}}  {n.op_type:<26} {n.overload or '(default)':<20} {cells}")
            notes = [(n, c) for n in self.nodes for c in n.checks if c.message]
            for n, c in notes:
                lines.append(f"  {'FAIL' if not c.ok else 'note'} {n.name} {c.name}: {c.message}")
        else:
            lines.append("  no onnxattn nodes")
        lines.append("result: " + ("OK" if self.ok else f"FAILED ({len(self.failures())} problems)"))
        return "\n".join(lines)


def _load(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<ModelProto>"
    # No check reads weights: leave external data (models over 2 GB) on disk
    path = os.fspath(model)
    try:
        return onnx.load(path, load_external_data=False), path
    except FileNotFoundError:
        raise
    except (OSError, DecodeError) as e:  # a directory, a text file, a truncated download
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from e


def _run_check(checks: list[Check], name: str, fn) -> bool:
    try:
        message = fn() or ""
        checks.append(Check(name, True, message))
        return True
    except Exception as e:  # noqa: BLE001 - every failure becomes a report line
        checks.append(Check(name, False, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__))
        return False


def validate(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    numerics: bool = False,
    dims: Mapping[str, int] | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    seed: int = 0,
) -> Report:
    """Validates `model` (a ModelProto or a path). `dims` sizes symbolic dims for the numerics check."""
    proto, source = _load(model)
    report = Report(source)
    # by path, the checker follows external data and accepts models over protobuf's 2 GB limit
    checked = proto if isinstance(model, onnx.ModelProto) else os.fspath(model)
    _run_check(report.model_checks, "onnx checker", lambda: onnx.checker.check_model(checked))
    _run_check(report.model_checks, "shape inference", lambda: onnx.shape_inference.infer_shapes(proto, strict_mode=True) and None)
    types = ops.value_types(proto)
    opset = None
    try:
        opset = ops.model_opset(proto)
    except OpError as e:
        report.model_checks.append(Check("opset", False, str(e)))
    # onnx and onnxruntime accept any version of a custom domain; this package's schemas are one version
    for entry in proto.opset_import:
        if entry.domain == ops.DOMAIN and entry.version != ops.OPSET_VERSION:
            report.model_checks.append(Check("opset", False, f"the model imports domain {ops.DOMAIN!r} at version "
                                                             f"{entry.version}; this package defines version "
                                                             f"{ops.OPSET_VERSION}"))
    functions = {(f.domain, f.name, f.overload): f for f in proto.functions}

    for index, node in enumerate(ops.onnxattn_nodes(proto)):
        nr = NodeReport(node.name or f"#{index}", node.op_type, node.overload)
        report.nodes.append(nr)
        spec = None

        def known():
            nonlocal spec
            spec = ops.get_spec(node.op_type)

        if not _run_check(nr.checks, "schema", known):
            continue
        inputs = ops.node_inputs(node, types)
        _run_check(nr.checks, "attrs", lambda: spec.resolve_attributes(list(node.attribute)) and None)
        _run_check(nr.checks, "shapes", lambda: spec.infer_node(inputs, list(node.attribute)) and None)

        def function_matches():
            want = spec.signature(inputs, [bool(o) for o in node.output])
            if node.overload != want:
                raise OpError(f"node overload is {node.overload!r}, its inputs/outputs need {want!r} "
                              f"(fix with onnxattn.ops.attach_functions)")
            attached = functions.get((ops.DOMAIN, node.op_type, node.overload))
            if attached is None:
                raise OpError(f"no function {ops.DOMAIN}::{node.op_type} (overload {node.overload!r}) attached: "
                              f"onnxruntime without the library cannot run this node")
            expected = spec.build_function(node.overload, opset)
            if attached.SerializeToString() != expected.SerializeToString():
                raise OpError("the attached function differs from this package's reference function "
                              "(re-attach with onnxattn.ops.attach_functions)")

        _run_check(nr.checks, "function", function_matches)
        if numerics:
            if nr.ok:
                _run_check(nr.checks, "numerics",
                           lambda: _compare_kernel_and_function(proto, node, spec, types, dims or {}, providers, seed))
            else:
                nr.checks.append(Check("numerics", False, "skipped: the node failed earlier checks"))
    return report


def _dim_value(dim: str, dims: Mapping[str, int]) -> int:
    """A symbolic dim's size: given by name, or an arithmetic expression of given names as torch's exporter
    writes them (e.g. "past_sequence + sequence", "((past_sequence + sequence)//4)"), names not given counting
    DEFAULT_DIM, so inputs that the graph relates (a cache and the keys compressed from it) stay consistent."""
    if dim in dims:
        return dims[dim]
    import ast
    import operator

    binary = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}

    def value(node):
        if isinstance(node, ast.BinOp) and type(node.op) in binary:
            return binary[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):  # a name not given is DEFAULT_DIM in expressions too, so that
            return dims.get(node.id, DEFAULT_DIM)  # "past + seq" and "(past + seq)//4" stay consistent
        raise ValueError(dim)

    try:
        return max(int(value(ast.parse(dim, mode="eval").body)), 0)
    except (ValueError, SyntaxError, ZeroDivisionError):
        return DEFAULT_DIM


def _dim_size(dim, dims: Mapping[str, int]) -> int:
    """A dim's size for random inputs: known, symbolic (_dim_value), or DEFAULT_DIM when unknown."""
    return dim if isinstance(dim, int) else _dim_value(dim, dims) if isinstance(dim, str) else DEFAULT_DIM


def _concrete_shape(info: TensorInfo, dims: Mapping[str, int]) -> list[int]:
    if info.shape is None:
        raise OpError("an input of unknown rank; cannot make random inputs")
    return [_dim_size(d, dims) for d in info.shape]


def _random_input(info: TensorInfo, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if info.elem_type == TensorProto.BOOL:
        return rng.random(shape) < 0.8
    if info.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16):
        return rng.standard_normal(shape).astype(np.float32)
    if info.elem_type == TensorProto.INT64:
        return rng.integers(0, 4, shape).astype(np.int64)
    if info.elem_type == TensorProto.INT32:
        return rng.integers(0, 4, shape).astype(np.int32)
    raise OpError(f"cannot make random inputs of {info.type_name()}")


def single_node_model(node: onnx.NodeProto, inputs: Sequence[TensorInfo | None], opset: int) -> onnx.ModelProto:
    """A model holding just `node` (with its function): float inputs are fed as float32 and cast to the
    node's type inside, so bfloat16 works through onnxruntime's Python API too."""
    spec = ops.get_spec(node.op_type)
    graph_nodes, graph_inputs, node_inputs = [], [], []
    for position, (name, info) in enumerate(zip(node.input, inputs)):
        if info is None:
            node_inputs.append("")
            continue
        feed = f"in{position}"
        if info.elem_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            graph_inputs.append(helper.make_tensor_value_info(feed, TensorProto.FLOAT, None))
            graph_nodes.append(helper.make_node("Cast", [feed], [feed + "_cast"], to=info.elem_type))
            node_inputs.append(feed + "_cast")
        else:
            graph_inputs.append(helper.make_tensor_value_info(feed, info.elem_type, None))
            node_inputs.append(feed)
    outputs = [f"out{i}" if name else "" for i, name in enumerate(node.output)]
    graph_nodes.append(helper.make_node(node.op_type, node_inputs, outputs, domain=ops.DOMAIN))
    graph_nodes[-1].attribute.extend(node.attribute)
    graph_outputs = []
    for i, name in enumerate(outputs):
        if not name:
            continue
        graph_nodes.append(helper.make_node("Cast", [name], [name + "_f32"], to=TensorProto.FLOAT))
        graph_outputs.append(helper.make_tensor_value_info(name + "_f32", TensorProto.FLOAT, None))
    model = helper.make_model(
        helper.make_graph(graph_nodes, f"single_{spec.name}", graph_inputs, graph_outputs),
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)],
        ir_version=ops.IR_VERSION,
    )
    ops.attach_functions(model)
    return model


def _index_dims(spec, inputs: Sequence[TensorInfo | None], dims: Mapping[str, int]) -> dict[str, int]:
    """`dims`, plus sizes for the symbolic dims (not given) that index inputs must fit: a shared buffer (the spec's
    `shared_buffer` input) of S + DEFAULT_DIM, so that random past_lengths can be non-zero; a paged pool (the
    inputs named block_table, key_cache, value_cache) of B * max_blocks blocks, so that every sequence can own
    distinct blocks."""
    names = [i.name for i in spec.inputs]
    info = {n: inputs[k] if k < len(inputs) else None for k, n in enumerate(names)}
    out = dict(dims)

    def free(dim) -> bool:
        return isinstance(dim, str) and dim not in out

    buffer = info.get(spec.shared_buffer)
    query = info.get(names[0])
    if info.get("past_lengths") is not None and buffer is not None and buffer.shape and query.shape:
        if free(buffer.shape[-2]) and len(query.shape) > 1:
            out[buffer.shape[-2]] = _dim_size(query.shape[1], out) + DEFAULT_DIM
    table, pools = info.get("block_table"), [info.get(n) for n in ("key_cache", "value_cache")]
    if table is not None and table.shape and all(p is not None and p.shape for p in pools):
        for pool in pools:
            if free(pool.shape[0]):
                out[pool.shape[0]] = _dim_size(table.shape[0], out) * _dim_size(table.shape[1], out)
    return out


def random_past_lengths(rng: np.random.Generator, like: np.ndarray, buffer: int, new_tokens: int) -> np.ndarray:
    """Random past_lengths (shape and dtype of `like`) of a shared buffer of `buffer` slots that `new_tokens` more
    must fit: in [0, buffer - new_tokens] (0 where the buffer has no room)."""
    room = max(buffer - new_tokens, 0)
    return rng.integers(0, room + 1, like.shape).astype(like.dtype)


def _valid_index_inputs(spec, feeds: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Random index inputs that satisfy their contracts, in place: past_lengths within [0, M - S] (0 where M <
    S); a paged batch's cu_seqlens_q (the T tokens split among the B sequences), seq_lens (new tokens plus a
    random past that the table holds) and a block table of distinct blocks (where the pool has enough)."""
    names = [i.name for i in spec.inputs]
    feed = {n: f"in{k}" for k, n in enumerate(names) if f"in{k}" in feeds}
    buffer = feed.get(spec.shared_buffer)
    if "past_lengths" in feed and buffer is not None:
        feeds[feed["past_lengths"]] = random_past_lengths(rng, feeds[feed["past_lengths"]], feeds[buffer].shape[-2],
                                                          feeds["in0"].shape[1])
    if "key_indices" in feed and "latent" in feed:  # MultiHeadLatentAttention: cache slots, or -1 (no key)
        new_tokens = feeds[feed["latent"]].shape[1]
        total = new_tokens  # the caches' tokens, as check_mla_key_indices counts them
        if "past_latent" in feed:
            total = feeds[feed["past_latent"]].shape[-2] + (0 if "past_lengths" in feed else new_tokens)
        indices = feeds[feed["key_indices"]]
        feeds[feed["key_indices"]] = rng.integers(-1, total, indices.shape).astype(indices.dtype)
    if all(n in feed for n in ("block_table", "cu_seqlens_q", "seq_lens", "key_cache")):
        table = feeds[feed["block_table"]]
        batch, width = table.shape
        tokens, (blocks, block_size) = feeds["in0"].shape[0], feeds[feed["key_cache"]].shape[:2]
        cuts = np.sort(rng.integers(0, tokens + 1, max(batch - 1, 0)))
        cu = np.concatenate([[0], cuts, [tokens]]) if batch else np.array([tokens])
        new = np.diff(cu)
        capacity = width * block_size
        lengths = new + rng.integers(0, np.maximum(capacity - new, 0) + 1)
        order = rng.permutation(max(blocks, batch * width)) % max(blocks, 1)
        feeds[feed["cu_seqlens_q"]] = cu.astype(feeds[feed["cu_seqlens_q"]].dtype)
        feeds[feed["seq_lens"]] = lengths.astype(feeds[feed["seq_lens"]].dtype)
        feeds[feed["block_table"]] = order[:batch * width].reshape(batch, width).astype(table.dtype)


def _compare_kernel_and_function(proto, node, spec, types, dims, providers, seed) -> str:
    from onnxattn.cuda_ep import make_session

    inputs = ops.node_inputs(node, types)
    model = single_node_model(node, inputs, ops.model_opset(proto))
    rng = np.random.default_rng(seed)
    dims = _index_dims(spec, inputs, dims)
    feeds = {}
    for position, info in enumerate(inputs):
        if info is not None:
            feeds[f"in{position}"] = _random_input(info, _concrete_shape(info, dims), rng)
    _valid_index_inputs(spec, feeds, rng)
    kernel = make_session(model, providers=list(providers), use_library=True).run(None, feeds)
    function = make_session(model, providers=list(providers), use_library=False).run(None, feeds)
    tolerance = TOLERANCE.get(inputs[0].elem_type, 2e-4)
    worst = 0.0
    for got, want in zip(kernel, function):
        if got.shape != want.shape:
            raise OpError(f"kernel output shape {got.shape} != function output shape {want.shape}")
        same_inf = np.array_equal(np.isneginf(got), np.isneginf(want)) and np.array_equal(np.isnan(got), np.isnan(want))
        if not same_inf:
            raise OpError("kernel and function disagree on which entries are -inf/NaN")
        finite = np.isfinite(want)
        if finite.any():
            err = float(np.max(np.abs(got[finite] - want[finite]) / (1.0 + np.abs(want[finite]))))
            worst = max(worst, err)
    if worst > tolerance:
        raise OpError(f"kernel vs function max error {worst:.2e} > {tolerance:.0e}")
    shape = {k: list(v.shape) for k, v in feeds.items()}
    return f"max error {worst:.1e} at {shape}"
