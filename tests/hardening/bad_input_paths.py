"""Runs one bad-input case on one path and says what happened (the worker side of test_bad_input_paths.py,
run in a child process by isolate.py, so a crash is a result). A job is "op|case id|path"."""

from __future__ import annotations

import re

import numpy as np
import onnx

from bad_input_cases import case as find_case
from helpers import function_session, kernel_session, run_kernel
from onnxattn import ops
from onnxattn.validation import validate


def execute(job: str) -> dict:
    """path: one of bad_input_cases.PATHS, or "kernel-cuda" (the kernel path with onnxruntime's CUDA execution
    provider first: tests/gpu/hardening_cuda.py; the node's provider is reported)."""
    op, case_id, path = job.split("|")
    c = find_case(op, case_id)
    if path == "kernel-cuda":
        if c.fault == "index values" and c.expect["kernel"] == "rejects":
            return _kernel_cuda_index_values(c)
        return _kernel(c, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return {"infer": _infer, "validate": _validate, "function": _function, "kernel": _kernel}[path](c)


def classify(c, error: BaseException | str, stage: str, pattern: str | None = None) -> dict:
    """'rejects' when the message names the op and matches the case's pattern, else 'fails'."""
    message = str(error)
    pattern = pattern or c.match
    names = c.op in message and bool(pattern) and re.search(pattern, message) is not None
    return {"outcome": "rejects" if names else "fails", "stage": stage, "message": _first_line(message)}


def _first_line(message: str) -> str:
    lines = [x for x in message.strip().splitlines() if x.strip()]
    return (lines[0] if lines else "")[:400]


def _expects_values(c) -> bool:
    return "defined" in c.expect.values()


def with_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its node's reference function attached without validating the node (a bad node must
    reach the path under test): the overload its signature names, or the plain one when it has none."""
    node = next(ops.onnxattn_nodes(model))
    spec = ops.get_spec(node.op_type)
    try:
        node.overload = spec.signature(ops.node_inputs(node, ops.value_types(model)), [bool(o) for o in node.output])
        function = spec.build_function(node.overload, ops.model_opset(model))
    except Exception:  # noqa: BLE001 - a signature the op rejects (or has no body for): the plain overload
        node.overload = ""
        function = spec.build_function("", ops.model_opset(model))
    model.functions.append(function)
    return model


def compare(c, outputs, feeds) -> dict:
    """'defined' when every output matches the case's oracle (NaN exactly where it is NaN), else 'wrong'."""
    want = c.oracle(feeds)
    for index, (got, ref) in enumerate(zip(outputs, want)):
        got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
        if got.shape != ref.shape:
            return {"outcome": "wrong", "message": f"output {index} has shape {got.shape}, expected {ref.shape}"}
        if not np.array_equal(np.isnan(got), np.isnan(ref)):
            return {"outcome": "wrong", "message": f"output {index}: NaN at {int(np.isnan(got).sum())} entries, "
                                                   f"expected {int(np.isnan(ref).sum())}"}
        ok = ~np.isnan(ref)
        if not np.array_equal(np.isinf(got[ok]) * np.sign(got[ok]), np.isinf(ref[ok]) * np.sign(ref[ok])):
            return {"outcome": "wrong", "message": f"output {index}: infinities differ"}
        finite = np.isfinite(ref)
        err = np.abs(got[finite] - ref[finite]) - c.tolerance * (1 + np.abs(ref[finite]))
        if err.size and err.max() > 0:
            worst = float(np.abs(got[finite] - ref[finite]).max())
            return {"outcome": "wrong", "message": f"output {index}: max error {worst:.3g} > tolerance"}
    size = sum(np.asarray(o).size for o in outputs)
    return {"outcome": "defined", "message": f"{len(outputs)} outputs, {size} elements match the oracle"}


def _infer(c) -> dict:
    try:
        onnx.shape_inference.infer_shapes(c.static_model(), strict_mode=True)
    except Exception as e:  # noqa: BLE001 - classified
        return classify(c, e, "inference")
    return {"outcome": "accepts", "message": ""}


def _validate(c) -> dict:
    model = c.static_model()
    numerics = _expects_values(c) and c.validate_numerics
    if _expects_values(c):
        ops.attach_functions(model)  # a valid node: attached as export would
    else:
        with_function(model)
    report = validate(model, numerics=numerics)
    if report.ok:
        return {"outcome": "defined" if numerics else "accepts", "message": "; ".join(
            ch.message for n in report.nodes for ch in n.checks if ch.message)[:400]}
    failures = report.failures()
    for line in failures:
        result = classify(c, line, "validate")
        if result["outcome"] == "rejects":
            return result
    return {"outcome": "fails", "stage": "validate", "message": " | ".join(failures)[:400]}


def _function(c) -> dict:
    model = with_function(c.dynamic_model())
    feeds = c.feeds()
    try:
        session = function_session(model)
    except Exception as e:  # noqa: BLE001
        return classify(c, e, "session")
    try:
        with np.errstate(all="ignore"):
            outputs = session.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return classify(c, e, "run")
    return compare(c, outputs, feeds) if _expects_values(c) else {"outcome": "runs", "message": ""}


def _kernel(c, providers=None) -> dict:
    model = c.dynamic_model()
    feeds = c.feeds()
    pattern = c.kernel_match or c.match
    if _expects_values(c) and providers is None:
        try:
            outputs = run_kernel(model, feeds)  # proves the kernel ran; NaN-filled output buffers
        except Exception as e:  # noqa: BLE001
            return classify(c, e, "run", pattern)
        return compare(c, outputs, feeds)
    try:
        session = kernel_session(model) if providers is None else _session_on(model, providers)
    except Exception as e:  # noqa: BLE001
        return classify(c, e, "session", pattern)
    if _expects_values(c):
        try:
            outputs = session.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            return classify(c, e, "run", pattern)
        return dict(compare(c, outputs, feeds), provider=sorted(_providers_of(session, c.op)))
    try:
        session.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        return classify(c, e, "run", pattern)
    return {"outcome": "runs", "message": ""}


def _kernel_cuda_index_values(c) -> dict:
    """Bad index values (lengths, block indices, cu_seqlens) on the CUDA kernels, which cannot raise without
    synchronising the host: their contract (gqa/cuda_kernel.h, paged/cuda_plan.h, mla/cuda_kernel.h) is NaN
    output rows for the failing sequences, every other row computed. "nan-rows" when output 0 has at least
    one row all NaN and no row partly NaN; a clear error (the CPU kernel's) counts as "rejects" still."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        session = _session_on(c.dynamic_model(), providers)
        outputs = session.run(None, c.feeds())
    except Exception as e:  # noqa: BLE001
        return classify(c, e, "run", c.kernel_match or c.match)
    provider = sorted(_providers_of(session, c.op))
    y = np.asarray(outputs[0], dtype=np.float64)
    rows = np.isnan(y.reshape(-1, y.shape[-1])) if y.size else np.zeros((0, 1), bool)
    all_nan, some_nan = rows.all(axis=1), rows.any(axis=1)
    message = f"{int(all_nan.sum())} of {len(rows)} output rows NaN, {int((some_nan & ~all_nan).sum())} partly"
    outcome = "nan-rows" if all_nan.any() and not (some_nan & ~all_nan).any() else "runs"
    return {"outcome": outcome, "message": message, "provider": provider}


def _session_on(model, providers):
    """onnxruntime with our library on `providers`, profiling on (see _providers_of)."""
    import os
    import tempfile

    from helpers import session_options
    from onnxattn.cuda_ep import make_session

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"onnxattn_profile_{os.getpid()}")
    return make_session(model, providers=providers, session_options=options)


def _providers_of(session, op: str) -> set[str]:
    """Execution providers that ran `op`'s nodes, from the profile (ends profiling)."""
    import json
    import os

    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    return {e["args"]["provider"] for e in events
            if e.get("cat") == "Node" and e.get("args", {}).get("op_name") == op and "provider" in e.get("args", {})}
