"""Bad-input builders of NativeSparseAttention and SparseRoutedAttention (see bad_input_cases.py): the table
of tests/test_sparse_bad_input.py plus zero-size dims, empty sequences, attributes at the int64 limits
(windows, top-k counts, block and segment sizes), out-of-range positions, NaN inputs and a wrong dtype."""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto

from bad_input_cases import INT64_MAX, Case, builder, defined, expect, fault_of, poke
from bad_input_tables import EMPTY_NOTE, FAILS_NOTE, FUNCTION_NOTE, KERNEL

NSA, ROUTED = "NativeSparseAttention", "SparseRoutedAttention"
HERE = "tests/hardening/bad_input_sparse.py"
# Function path of the imported cases (the spec checks these; the body cannot)
FUNCTION_SPARSE = dict.fromkeys(("nsa-all-branches-off", "nsa-forced-exceed-top", "nsa-sink-without-blocks",
                                  "nsa-fine-and-compression", "nsa-negative-scale", "routed-top-k-0",
                                  "routed-cosine-2", "routed-rope-sq-gt-skv"), "runs")
HUGE_TOP_NOTE = ("a top count whose selection lists could never be allocated (> 2^40 entries): the kernel rejects "
                 "it naming the attribute; the function clamps k to the candidates and computes the result of "
                 "'all of them' (the kernel could do the same; noted for the op's owner)")
NAN_SELECTION_NOTE = ("a NaN selection score is never chosen (kernel and function agree; not yet in the op's docs): "
                      "a NaN query row selects nothing and outputs zeros")


def _model(op, shapes, attrs, static, types=None):
    from sparse_helpers import one_node_model

    declared = {n: (s if static else None) for n, s in shapes.items()}
    return one_node_model(op, list(shapes), ["Y"], attrs=attrs, shapes=declared, elem_types=types, attach=False)


def _oracle(op, attrs):
    from oracle_sparse import nsa_oracle, routed_oracle

    def run(f):
        g = {n: (np.asarray(v, np.float64) if n != "position_ids" else v) for n, v in f.items()}
        with np.errstate(all="ignore"):
            if op == NSA:
                y = nsa_oracle(g["Q"], g["K"], g["V"], g.get("gates"), g.get("compressed_key"),
                               g.get("compressed_value"), **attrs)[0]
            else:
                y = routed_oracle(g["Q"], g["K"], g["V"], g.get("position_ids"), **attrs)[0]
        return [y]
    return run


def _nan_row_selects_nothing(op, attrs, row):
    """The oracle with the NaN query row's output zero (it selects nothing: see NAN_SELECTION_NOTE)."""
    def run(f):
        clean = dict(f, Q=np.where(np.isnan(f["Q"]), 0.0, f["Q"]))
        y = _oracle(op, attrs)(clean)[0]
        y[row] = 0.0
        return [y]
    return run


def _cases(op: str) -> list[Case]:
    import test_sparse_bad_input as t
    from sparse_helpers import grid, nsa_attrs, routed_attrs

    out = []
    for c in (c for c in t.CASES if c.op == op):
        function = FUNCTION_SPARSE.get(c.id, "fails")
        out.append(Case(op, c.id, "tests/test_sparse_bad_input.py", fault_of(c.id.split("-", 1)[1]),
                        expect("rejects", "rejects", function, KERNEL[c.kernel]), match=c.match,
                        static_model=functools.partial(t._model, c, True),
                        dynamic_model=functools.partial(t._model, c, False), feeds=functools.partial(t._feeds, c),
                        note=FUNCTION_NOTE if function == "runs" else FAILS_NOTE))
    attrs_of = (lambda **kw: nsa_attrs(**{"block_size": 4, "top_blocks": 1, **kw})) if op == NSA else \
        (lambda **kw: routed_attrs(**{"segment_size": 4, "top_k": 1, **kw}))
    prefix = "nsa" if op == NSA else "routed"
    qkv = dict(t.QKV)

    def new(id, fault, outcomes, shapes=qkv, attrs=None, change=None, ints=None, types=None, match="", note="",
            oracle_attrs=None, kernel_match=None, oracle=None):
        attrs = attrs_of(**(attrs or {}))

        def feeds():
            rng = np.random.default_rng(5)
            f = {n: (np.asarray(ints[n], np.int64).reshape(s) if ints and n in ints else
                     grid(rng, s).astype({TensorProto.DOUBLE: np.float64}.get((types or {}).get(n), np.float32)))
                 for n, s in shapes.items()}
            return change(f) if change else f
        if note == "" and outcomes["function"] == "fails":
            note = EMPTY_NOTE if "defined" in outcomes.values() else FAILS_NOTE
        if oracle is None and "defined" in outcomes.values():
            oracle = _oracle(op, attrs_of(**oracle_attrs) if oracle_attrs else attrs)
        return Case(op, f"{prefix}-{id}", HERE, fault, outcomes, match=match, kernel_match=kernel_match,
                    static_model=functools.partial(_model, op, shapes, attrs, True, types),
                    dynamic_model=functools.partial(_model, op, shapes, attrs, False, types), feeds=feeds,
                    oracle=oracle, note=note)

    q0 = dict(Q=(0, 4, 8, 8), K=(0, 2, 8, 8), V=(0, 2, 8, 8))
    huge_top = expect("accepts", "rejects", "defined", "rejects")
    out += [
        new("zero-batch", "zero-size", defined(), q0),
        new("empty-query", "empty sequence", defined(), dict(qkv, Q=(1, 4, 0, 8))),
        new("nan-query", "non-finite", defined(), change=lambda f: poke(f, "Q", (0, 1, 3), np.nan),
            oracle=_nan_row_selects_nothing(op, attrs_of(), (0, 1, 3)), note=NAN_SELECTION_NOTE),
        new("q-double", "dtype", expect("rejects", "rejects", "fails", "rejects"),
            types=dict(Q=TensorProto.DOUBLE, K=TensorProto.DOUBLE, V=TensorProto.DOUBLE),
            match=r"input 'Q' must be one of tensor\(float\), tensor\(float16\), tensor\(bfloat16\)",
            kernel_match=r"tensor\(double\)' of input parameter \(Q\)"),
    ]
    if op == NSA:
        out += [
            new("huge-window", "window", defined(), attrs=dict(window=INT64_MAX, causal=1)),
            new("huge-top-blocks", "attribute", huge_top, attrs=dict(top_blocks=INT64_MAX),
                oracle_attrs=dict(top_blocks=2), note=HUGE_TOP_NOTE,  # 8 keys: 2 blocks of 4
                match=r"attribute 'top_blocks' = 9223372036854775807 is too large"),
            new("huge-top-tokens", "attribute", huge_top, attrs=dict(top_blocks=0, top_tokens=INT64_MAX),
                oracle_attrs=dict(top_blocks=0, top_tokens=8), note=HUGE_TOP_NOTE,
                match=r"attribute 'top_tokens' = 9223372036854775807 is too large"),
            new("huge-block-size", "attribute", defined(), attrs=dict(block_size=INT64_MAX, window=3)),
            new("huge-block-size-causal", "attribute", defined(),
                attrs=dict(block_size=INT64_MAX, window=3, causal=1)),
        ]
    else:
        out += [
            new("huge-top-k", "attribute", huge_top, attrs=dict(top_k=INT64_MAX), oracle_attrs=dict(top_k=2),
                note=HUGE_TOP_NOTE, match=r"attribute 'top_k' = 9223372036854775807 is too large"),
            new("huge-segment-size", "attribute", defined(), attrs=dict(segment_size=INT64_MAX)),
            new("q-rank-3", "rank", expect("rejects", "rejects", "fails", "rejects"), dict(qkv, Q=(4, 8, 8)),
                match=r"input 'Q' must have rank 4"),
            new("positions-negative", "positions", defined(), dict(qkv, position_ids=(1, 8)), attrs=dict(rope=1),
                ints=dict(position_ids=[-9, -8, -7, -6, -5, -4, -3, -2])),
        ]
    return out


builder(NSA)(functools.partial(_cases, NSA))
builder(ROUTED)(functools.partial(_cases, ROUTED))
