"""The bad-input suite as data: every case of every op, with the outcome expected on each path.

Paths (PATHS): onnx shape inference with our schemas on static shapes ("infer"), `onnxattn validate` on the
same model with its function attached ("validate"), onnxruntime without our library running the model's
reference function ("function"), onnxruntime with our library on the CPU running our kernel ("kernel").

Outcomes (OUTCOMES) are what the path must do; a case never may crash, hang or return a wrong number on any
path. The tables of the per-op suites (tests/test_*_bad_input.py) are imported, not copied: their fields
already say what shape inference and the kernel do; this module adds what they lack (the validate and
function paths of every case, zero-size dims and empty sequences, huge windows, out-of-range positions and
lengths near the integer limits, NaN/Inf inputs, more dtype and attribute faults).

An op gets its cases from one builder in BUILDERS; an op in ops.SPECS without one must be listed in PENDING
with the reason (see test_every_op_has_a_table).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

PATHS = ("infer", "validate", "function", "kernel")
OUTCOMES = {
    "rejects": "a clear error naming the op and the input or attribute",
    "fails": "an error that does not name the op (onnxruntime's own, or an op of the function body): "
             "recorded limitation of that path",
    "runs": "runs without an error on an invalid input: recorded limitation of that path (see the note)",
    "accepts": "passes the model: the fault lies in values this path never sees",
    "defined": "runs and returns the op's defined result (checked against the oracle)",
}
PATH_TITLES = {"infer": "shape inference", "validate": "onnxattn validate", "function": "ORT without the library",
               "kernel": "ORT + library (CPU)"}
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)

# Fault categories of issue 9, in report order.
FAULTS = ("rank", "zero-size", "heads", "head size", "mask", "window", "positions", "index values",
          "non-finite", "dtype", "attribute", "empty sequence", "shape")
# Ops the suite does not cover yet, with the reason; everything else in ops.SPECS must have a builder (a new op:
# a builder next to bad_input_tables.py / bad_input_sparse.py, imported in _register below).
PENDING: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    id: str
    origin: str  # the table it comes from
    fault: str  # one of FAULTS
    expect: Mapping[str, str]  # path -> outcome
    match: str = ""  # regex our message must contain where a path "rejects" (the op's name is required too)
    kernel_match: str | None = None  # the kernel's wording where it differs
    static_model: Callable[[], onnx.ModelProto] | None = None  # declared shapes, no function
    dynamic_model: Callable[[], onnx.ModelProto] | None = None  # unknown shapes, no function
    feeds: Callable[[], dict[str, np.ndarray]] | None = None
    # defined cases: the expected outputs (float64, NaN where the result is NaN) from the feeds
    oracle: Callable[[dict[str, np.ndarray]], list[np.ndarray]] | None = None
    tolerance: float = 1e-4  # abs + rel, for defined results (float32 cases)
    validate_numerics: bool = True  # defined cases: validate's random inputs are valid for this signature
    note: str = ""  # why a path runs or fails (recorded limitation)

    @property
    def key(self) -> str:
        return f"{self.op}|{self.id}"


def fault_of(case_id: str) -> str:
    """The fault category of an imported case, from its id."""
    rules = [("rank", "rank"), ("double", "dtype"), ("float16", "dtype"), ("int32", "dtype"), ("int64", "dtype"),
             ("mask-float", "dtype"), ("mask-int", "dtype"), ("mask", "mask"), ("window", "window"),
             ("chunk", "window"),
             ("position", "positions"), ("block-index", "index values"), ("length", "index values"),
             ("cu-", "index values"), ("fewer-keys", "index values"), ("heads", "heads"),
             ("num-heads", "attribute"), ("attribute", "attribute"), ("causal", "attribute"), ("scale", "attribute"),
             ("softcap", "attribute"), ("band", "attribute"), ("rope", "attribute"), ("epsilon", "attribute"),
             ("rotary", "head size"), ("head-dim", "head size"), ("head-size", "head size"), ("width", "head size"),
             ("d-mismatch", "head size"), ("inv-freq", "shape"), ("norm", "shape"), ("zero", "zero-size"),
             ("block-size", "zero-size")]
    for needle, fault in rules:
        if needle in case_id:
            return fault
    return "shape"


def expect(infer: str, validate: str, function: str, kernel: str) -> dict[str, str]:
    return dict(infer=infer, validate=validate, function=function, kernel=kernel)


def defined(function: str = "defined") -> dict[str, str]:
    """A valid edge case: every path accepts it and both runtimes compute the defined result."""
    return expect("accepts", "defined", function, "defined")


def random_feeds(shapes: Mapping[str, tuple[int, ...]], types: Mapping[str, type], seed: int = 0,
                 ints: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Unit-normal floats, random bools (70% True) and given integer arrays, by input name."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        t = types.get(name, np.float32)
        if ints and name in ints:
            out[name] = np.asarray(ints[name], dtype=t).reshape(shape)
        elif t == np.bool_:
            out[name] = rng.random(shape) < 0.7
        else:
            out[name] = rng.standard_normal(shape).astype(t)
    return out


def poke(feeds: dict[str, np.ndarray], name: str, index, value) -> dict[str, np.ndarray]:
    feeds[name][index] = value
    return feeds


# ---------------------------------------------------------------------------------------------------------
# Registry

BUILDERS: dict[str, Callable[[], list[Case]]] = {}


def builder(op: str):
    def register(fn):
        BUILDERS[op] = fn
        return fn
    return register


def _register() -> None:
    import bad_input_indexer  # noqa: F401 - each module registers its builders
    import bad_input_sparse  # noqa: F401
    import bad_input_tables  # noqa: F401


@functools.lru_cache(maxsize=None)
def cases(op: str) -> tuple[Case, ...]:
    _register()
    built = tuple(BUILDERS[op]())
    ids = [c.id for c in built]
    assert len(set(ids)) == len(ids), f"duplicate case ids in {op}'s table"
    for c in built:
        assert set(c.expect) == set(PATHS), f"{c.key}: expected outcomes for {PATHS}"
        assert set(c.expect.values()) <= set(OUTCOMES), f"{c.key}: unknown outcome in {c.expect}"
        assert c.fault in FAULTS, f"{c.key}: unknown fault {c.fault}"
        assert ("defined" in c.expect.values()) == (c.oracle is not None), f"{c.key}: defined cases need an oracle"
    return built


def all_ops() -> list[str]:
    _register()
    return list(BUILDERS)


def case(op: str, case_id: str) -> Case:
    return next(c for c in cases(op) if c.id == case_id)
