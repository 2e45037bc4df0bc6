"""Bad-input builder of LightningIndexer (see bad_input_cases.py): the table of tests/test_indexer_bad_input.py
plus its run-time value cases (T < S, past_lengths out of the buffer, at the int64 limits), zero-size dims and
empty sequences, NaN in hidden buffer slots, a top_k at the int64 limit and top_k > T."""

from __future__ import annotations

import functools

import numpy as np

from bad_input_cases import INT64_MAX, Case, builder, defined, expect
from bad_input_tables import EMPTY_NOTE, FAILS_NOTE, FUNCTION_NOTE, KERNEL

OP = "LightningIndexer"
HERE = "tests/hardening/bad_input_indexer.py"
ORIGIN = "tests/test_indexer_bad_input.py"
# Fault category of each imported case (by id)
FAULT = {"num-heads-0": "attribute", "missing-num-heads": "attribute", "top-k-0": "attribute",
         "top-k-negative": "attribute", "negative-scale": "attribute", "nan-scale": "attribute",
         "query-rank-4": "rank", "key-rank-2": "rank", "weights-rank-2": "rank", "past-lengths-rank-2": "rank",
         "key-heads-2": "heads", "key-batch": "shape", "width-not-multiple-of-heads": "heads",
         "width-d-mismatch": "head size", "head-dim-zero": "head size", "weights-heads": "heads",
         "weights-seq": "shape", "weights-batch": "shape", "fewer-keys-than-queries": "shape",
         "past-lengths-batch": "shape", "query-double": "dtype", "key-float16-with-float-query": "dtype",
         "weights-float16": "dtype", "past-lengths-int32": "dtype"}
# Function path of the imported cases: "runs" where the body computes something from the malformed input (the
# others stop in an op of the body: "fails")
FUNCTION_INDEXER = dict.fromkeys(("top-k-0", "negative-scale", "nan-scale",
                                  "query-rank-4", "head-dim-zero", "weights-batch",
                                  "fewer-keys-than-queries", "query-double", "key-float16-with-float-query",
                                  "weights-float16"), "runs")
HUGE_TOP_K_NOTE = ("a top_k past the kernels' 32-bit pick counts (and any allocatable [B, S, top_k]): the attribute "
                   "check rejects it naming 'top_k'; the function's body stops in its Expand")


def _model(shapes, attrs, static, types=None, key_rank=4):
    from test_indexer_numerics import INPUTS, indexer_model

    inputs = [n for n in INPUTS if n in shapes]
    return indexer_model(inputs, attrs=attrs, key_rank=key_rank, elem_types=types,
                         shapes={n: (tuple(shapes[n]) if static else None) for n in inputs}, attach=False)


def _oracle(attrs):
    from oracle_indexer import indexer_oracle

    def run(f):
        return [indexer_oracle(**f, **attrs)]
    return run


@builder(OP)
def indexer_cases() -> list[Case]:
    import test_indexer_bad_input as t

    out = []
    for c in t.CASES:
        function = FUNCTION_INDEXER.get(c.id, "fails")
        out.append(Case(OP, c.id, ORIGIN, FAULT[c.id], expect("rejects", "rejects", function, KERNEL[c.kernel]),
                        match=c.match, kernel_match=c.kernel_match,
                        static_model=functools.partial(t.model, c, static=True),
                        dynamic_model=functools.partial(t.model, c, static=False), feeds=functools.partial(t.feeds, c),
                        note=FUNCTION_NOTE if function == "runs" else FAILS_NOTE))
    for id, shared, total, past, name in t.VALUE_CASES:
        if id == "fewer-keys-than-queries":
            continue  # imported above (static shapes: shape inference sees it too)
        f = functools.partial(t._value_feeds, total, past)
        shapes = {n: v.shape for n, v in f().items()}
        function = "runs"  # the body hides what a bad past_lengths makes visible, or sees no key
        out.append(Case(OP, id, ORIGIN, "index values" if shared else "empty sequence",
                        expect("rejects" if id == "no-keys" else "accepts", "rejects" if id == "no-keys" else "accepts",
                               function, "rejects"),
                        match=r"input 'key' must hold the S = 5" if id == "no-keys" else "",
                        kernel_match=rf"{name}", note=FUNCTION_NOTE if function == "runs" else FAILS_NOTE,
                        static_model=functools.partial(_model, shapes, t.ATTRS, True),
                        dynamic_model=functools.partial(_model, shapes, t.ATTRS, False), feeds=f))

    def new(id, fault, outcomes, shapes, attrs=None, change=None, ints=None, match="", kernel_match=None, note="",
            oracle=True, validate_numerics=True):
        attrs = dict(t.ATTRS, **(attrs or {}))

        def feeds():
            rng = np.random.default_rng(3)
            f = {n: (np.asarray(ints[n], np.int64).reshape(s) if ints and n in ints else
                     rng.standard_normal(s).astype(np.float32)) for n, s in shapes.items()}
            return change(f) if change else f
        if not note and outcomes["function"] == "fails":
            note = EMPTY_NOTE if "defined" in outcomes.values() else FAILS_NOTE
        if not validate_numerics and outcomes["validate"] == "defined":
            outcomes = dict(outcomes, validate="accepts")
        return Case(OP, id, HERE, fault, outcomes, match=match, kernel_match=kernel_match,
                    static_model=functools.partial(_model, shapes, attrs, True),
                    dynamic_model=functools.partial(_model, shapes, attrs, False), feeds=feeds,
                    oracle=_oracle(attrs) if oracle and "defined" in outcomes.values() else None, note=note,
                    validate_numerics=validate_numerics)

    ok = dict(t.OK)

    def hide(f):  # NaN in every slot after each row's past_lengths[b] + S
        for b, length in enumerate(f["past_lengths"]):
            f["key"][b, :, int(length) + 5:] = np.nan
        return f

    out += [
        new("zero-batch", "zero-size", defined(),
            dict(query=(0, 5, 64), key=(0, 1, 9, 16), weights=(0, 5, 4))),
        new("empty-sequence", "empty sequence", defined(), dict(ok, query=(2, 0, 64), weights=(2, 0, 4))),
        new("empty-sequence-no-keys", "empty sequence", defined(),
            dict(query=(2, 0, 64), key=(2, 1, 0, 16), weights=(2, 0, 4))),
        new("top-k-more-than-keys", "attribute", defined(), ok, attrs=dict(top_k=40)),
        new("huge-top-k", "attribute", expect("rejects", "rejects", "fails", "rejects"), ok,
            attrs=dict(top_k=INT64_MAX), match=r"'top_k'", note=HUGE_TOP_K_NOTE),
        new("nan-hidden-buffer-slots", "non-finite", defined(), dict(ok, key=(2, 1, 12, 16), past_lengths=(2,)),
            ints=dict(past_lengths=[0, 7]), change=hide),
    ]
    return out
