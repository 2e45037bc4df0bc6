"""Per-op builders of the bad-input suite (see bad_input_cases.py): each imports its op's existing table
from tests/test_*_bad_input.py, adds the outcome of the paths that table does not check, and appends the
cases it lacks. Function-path outcomes of imported cases are recorded in FUNCTION_* dicts by case id: the
reference function checks nothing, so a malformed input either fails in some op of its body ("fails") or
runs ("runs", a recorded limitation; the op's docs say the function does not validate its inputs).
"""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto

from bad_input_cases import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    Case,
    builder,
    defined,
    expect,
    fault_of,
    poke,
    random_feeds,
)

NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
      TensorProto.BOOL: np.bool_, TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
KERNEL = {"run": "rejects", "session": "rejects", "graph": "rejects", "silent": "runs"}
FUNCTION_ATTR = {"silent": "runs", "session": "fails", "run": "fails"}
UNKNOWN_ATTRIBUTE_NOTE = ("onnx's inference context hands our inference function only the attributes it asks for "
                          "and onnxruntime's custom-op API cannot list a node's attributes, so neither runtime nor "
                          "shape inference sees it; onnx.checker and onnxattn validate reject it")
FUNCTION_NOTE = ("the reference function does not validate its inputs (standard ONNX ops cannot raise the op's "
                 "errors): it computes something from what it is given; shape inference, validate and the kernel "
                 "reject it")
FAILS_NOTE = ("the reference function does not validate its inputs: an op of its body stops with onnxruntime's "
              "message, which does not name the op")
# Zero-size dims and empty sequences: the kernels return the defined (empty or zero) result, and so do the reference
# functions (heads split with spelled-out shapes; the softmax, and products with weights, take the defined result of
# an empty tensor directly, since onnxruntime 1.31's reductions return an empty tensor unchanged and its MatMul will
# not broadcast an empty batch). A defined case whose function still fails gets EMPTY_NOTE.
EMPTY_NOTE = ("kernel: the defined result; the reference function fails in onnxruntime on these inputs, so validate "
              "--numerics reports it too")


def _note(outcomes, note: str) -> str:
    """The note of a new case: given, or EMPTY_NOTE for defined cases whose function fails."""
    if note:
        return note
    if outcomes["function"] == "fails":
        return EMPTY_NOTE if "defined" in outcomes.values() else FAILS_NOTE
    return FUNCTION_NOTE if outcomes["function"] == "runs" else ""


def _imported(op, origin, table_case, *, static_model, dynamic_model, feeds, function, kernel, infer="rejects",
              kernel_match=None, note=""):
    return Case(op=op, id=table_case.id, origin=origin, fault=fault_of(table_case.id),
                expect=expect(infer, "rejects", function, kernel), match=table_case.match,
                kernel_match=kernel_match, static_model=static_model, dynamic_model=dynamic_model, feeds=feeds,
                note=note or {"runs": FUNCTION_NOTE, "fails": FAILS_NOTE}.get(function, ""))


# ---------------------------------------------------------------------------------------------------------
# ScaledDotProductAttention

SDPA = "ScaledDotProductAttention"
# Function path of the shape cases of tests/test_sdpa_bad_input.py (attribute cases say it themselves).
FUNCTION_SDPA = dict.fromkeys(("v-heads-mismatch", "batch-mismatch", "mask-not-broadcastable-batch", "mask-int32",
                                "mask-float16-with-float-q"), "runs")


def _sdpa_model(q, k, v, *, mask=None, mask_type=TensorProto.BOOL, attrs=None, static=True, types=None,
                lse=False):
    from helpers import sdpa_model

    # static: declared input shapes and symbolic outputs (what export writes); else nothing declared
    shapes = dict(Q=q, K=k, V=v, attn_mask=mask) if static else dict(Q=None, K=None, V=None, attn_mask=None,
                                                                      Y=None, LSE=None)
    model = sdpa_model(attrs=attrs or {}, shapes=shapes, mask=None if mask is None else "bool",
                       mask_elem_type=mask_type, attach=False, with_lse=lse)
    for value in model.graph.input:  # other element types for Q, K, V (dtype cases)
        if types and value.name in types:
            value.type.tensor_type.elem_type = types[value.name]
    return model


def ieee_sdpa(q, k, v, mask=None, *, causal=0, window=0, band=0, scale=0.0, softcap=0.0):
    """Y of ScaledDotProductAttention in float64 with IEEE arithmetic on the visible keys: unlike
    tests/oracle.py (which skips NaN scores as if masked), a NaN or +inf score makes its row NaN, as the
    reference function's softmax does; a row with no visible key is zeros."""
    from oracle import structural_visibility

    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = scale or 1.0 / np.sqrt(q.shape[-1])
    with np.errstate(all="ignore"):
        s = np.einsum("bhid,bhjd->bhij", q, k) * scale
        if softcap > 0:
            s = softcap * np.tanh(s / softcap)
        visible = np.broadcast_to(structural_visibility(q.shape[2], k.shape[2], causal=causal, window=window,
                                                        band=band), s.shape)
        if mask is not None and mask.dtype == np.bool_:
            visible = visible & np.broadcast_to(mask, s.shape)
        elif mask is not None:
            s = s + mask
        s = np.where(visible, s, -np.inf)
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)
        w = np.exp(s - np.where(m == -np.inf, 0.0, m))
        total = w.sum(axis=-1, keepdims=True)
        # only visible keys' values take part (0 * NaN would be NaN): sum over them explicitly
        terms = np.where(visible[..., None], w[..., None] * v[:, :, None], 0.0)  # [B, H, Sq, Skv, Dv]
        y = terms.sum(axis=3) / total
        lse = (m + np.log(total))[..., 0]
    empty = ~visible.any(axis=-1)
    return np.where(empty[..., None], 0.0, y), np.where(empty, -np.inf, lse)


def _sdpa_oracle(attrs, lse):
    def run(f):
        return list(ieee_sdpa(f["Q"], f["K"], f["V"], f.get("attn_mask"), **attrs))[: 2 if lse else 1]
    return run


@builder(SDPA)
def sdpa_cases() -> list[Case]:
    import test_sdpa_bad_input as t

    origin = "tests/test_sdpa_bad_input.py"
    out = []
    for c in t.CASES:
        function = FUNCTION_SDPA.get(c.id) or FUNCTION_ATTR.get(c.function or "", "fails")
        note = UNKNOWN_ATTRIBUTE_NOTE if c.id == "unknown-attribute" else ""
        out.append(_imported(SDPA, origin, c, static_model=functools.partial(t.model, c, static=True),
                             dynamic_model=functools.partial(t.model, c, static=False),
                             feeds=functools.partial(t.feeds, c), function=function, kernel=KERNEL[c.kernel],
                             infer="rejects" if c.shape_inference else "accepts", note=note))

    Q, K, V = t.Q, t.K, t.V
    here = "tests/hardening/bad_input_tables.py"

    def new(id, fault, outcomes, *, q=Q, k=K, v=V, attrs=None, mask=None, types=None, change=None,
            oracle_attrs=None, match="", kernel_match=None, note="", validate_numerics=True, lse=False):
        attrs = attrs or {}
        shapes = dict(Q=q, K=k, V=v, **({"attn_mask": mask} if mask else {}))
        np_types = {n: NP[types[n]] for n in (types or {})}
        np_types.setdefault("attn_mask", np.bool_)

        def feeds():
            f = random_feeds(shapes, np_types, seed=1)
            return change(f) if change else f
        oracle = _sdpa_oracle(attrs if oracle_attrs is None else oracle_attrs, lse) \
            if "defined" in outcomes.values() else None
        model = functools.partial(_sdpa_model, q, k, v, mask=mask, attrs=attrs, types=types, lse=lse)
        return Case(SDPA, id, here, fault, outcomes, match=match, kernel_match=kernel_match,
                    static_model=model, dynamic_model=functools.partial(model, static=False),
                    feeds=feeds, oracle=oracle, note=_note(outcomes, note), validate_numerics=validate_numerics)

    rejects = expect("rejects", "rejects", "fails", "rejects")
    out += [
        new("zero-batch", "zero-size", defined(), q=(0, 4, 5, 8), k=(0, 2, 7, 8), v=(0, 2, 7, 8)),
        new("zero-value-dim", "zero-size", defined(), v=(1, 2, 7, 0)),
        new("zero-head-dim", "zero-size", expect("rejects", "rejects", "runs", "rejects"), q=(1, 4, 5, 0),
            k=(1, 2, 7, 0), note=FUNCTION_NOTE,
            match=r"input 'Q' must have head size D >= 1"),
        new("empty-query", "empty sequence", defined(), q=(1, 4, 0, 8)),
        new("empty-keys", "empty sequence", defined(), k=(1, 2, 0, 8), v=(1, 2, 0, 8)),
        new("empty-keys-causal", "empty sequence", defined(), k=(1, 2, 0, 8), v=(1, 2, 0, 8),
            attrs=dict(causal=1)),
        new("huge-window", "window", defined(), attrs=dict(causal=1, window=INT64_MAX),
            oracle_attrs=dict(causal=1)),
        new("huge-band", "window", defined(), attrs=dict(band=INT64_MAX), oracle_attrs={}),
        # more queries than keys: query rows sit at negative key positions, the worst case for p - window
        new("huge-window-more-queries-than-keys", "window", defined(), q=(1, 4, 9, 8), k=(1, 2, 3, 8),
            v=(1, 2, 3, 8), attrs=dict(causal=1, window=INT64_MAX), oracle_attrs=dict(causal=1)),
        new("huge-band-more-queries-than-keys", "window", defined(), q=(1, 4, 9, 8), k=(1, 2, 3, 8),
            v=(1, 2, 3, 8), attrs=dict(band=INT64_MAX - 1), oracle_attrs={}),
        new("window-1", "window", defined(), attrs=dict(causal=1, window=1)),
        new("mask-row-all-false", "mask", defined(), mask=(5, 7),
            change=lambda f: poke(f, "attn_mask", 2, False)),
        new("mask-all-false", "mask", defined(), mask=(1, 1, 1, 7),
            change=lambda f: poke(f, "attn_mask", ..., False)),
        new("nan-query-row", "non-finite", defined(), change=lambda f: poke(f, "Q", (0, 1, 2), np.nan)),
        new("inf-key", "non-finite", defined(), change=lambda f: poke(f, "K", (0, 0, 3, 0), np.inf)),
        new("nan-query-row-with-lse", "non-finite", defined(), lse=True,
            change=lambda f: poke(f, "Q", (0, 3, 4), np.nan)),
        new("empty-keys-with-lse", "empty sequence", defined(), k=(1, 2, 0, 8), v=(1, 2, 0, 8), lse=True),
        # A NaN key that a row cannot see never reaches it (its score is masked before the softmax)...
        new("nan-key-masked-by-causal", "non-finite", defined(), attrs=dict(causal=1), q=(1, 4, 7, 8),
            change=lambda f: poke(f, "K", (0, 1, 6), np.nan)),
        new("nan-key-beyond-window", "non-finite", defined(), attrs=dict(causal=1, window=2),
            change=lambda f: poke(poke(f, "K", (0, 0, 0), np.nan), "V", (0, 0, 0), np.nan)),
        # ...but a NaN/Inf *value* of a key that another row of the same key tile sees can: its weight is an
        # exact 0 and 0 * NaN is NaN (as in FlashAttention, and in the function's MatMul). Recorded limitation:
        # non-finite K/V inside the visible range of any row are not supported.
        new("nan-value-masked-by-causal", "non-finite", expect("accepts", "accepts", "runs", "runs"),
            attrs=dict(causal=1), q=(1, 4, 7, 8), change=lambda f: poke(f, "V", (0, 1, 6), np.nan),
            note="a non-finite value of a key some row sees reaches the rows of the same key tile that mask it "
                 "(0 x NaN); keys no row of the tile sees (outside every row's window, stale cache slots, blocks "
                 "not in a table) never do"),
        new("q-double", "dtype", expect("rejects", "rejects", "fails", "rejects"),
            types=dict(Q=TensorProto.DOUBLE, K=TensorProto.DOUBLE, V=TensorProto.DOUBLE),
            match=r"input 'Q' must be one of tensor\(float\), tensor\(float16\), tensor\(bfloat16\), got "
                  r"tensor\(double\)", kernel_match=r"tensor\(double\)' of input parameter \(Q\)",
            note="the reference function's output is declared float: onnxruntime rejects the node's types"),
        new("k-float16-with-float-q", "dtype", expect("rejects", "rejects", "runs", "rejects"), note=FUNCTION_NOTE,
            types=dict(K=TensorProto.FLOAT16),
            match=r"input 'K' must have the same type as the other 'T' inputs \(float\), got float16",
            kernel_match=r"(Type Error|type).*ScaledDotProductAttention"),
    ]
    return out


# ---------------------------------------------------------------------------------------------------------
# The fused decoder ops: shared helpers

def _fused_case(op, origin, id, fault, outcomes, *, model, shapes, types, attrs, change=None, oracle=None,
                match="", kernel_match=None, note="", validate_numerics=True, ints=None, tolerance=1e-4,
                required=("query", "key", "value")):
    """A new case of a fused op: `model(present, shapes, attrs)` builds its node; feeds are random (ints:
    the index inputs' values) and `change` pokes faults into them; `oracle(feeds)` gives defined outputs."""
    present = [n for n in shapes if n not in required]
    if not validate_numerics and outcomes["validate"] == "defined":  # validate cannot run it: checks only
        outcomes = dict(outcomes, validate="accepts")

    def feeds():
        f = random_feeds(shapes, types, seed=2, ints=ints)
        return change(f) if change else f
    return Case(op, id, origin, fault, outcomes, match=match, kernel_match=kernel_match,
                static_model=functools.partial(model, present, dict(shapes), attrs),
                dynamic_model=functools.partial(model, present, None, attrs), feeds=feeds,
                oracle=oracle if "defined" in outcomes.values() else None, note=_note(outcomes, note),
                validate_numerics=validate_numerics, tolerance=tolerance)


def _positions(batch, values):
    return np.array(values, dtype=np.int64).reshape(batch, -1)


# ---------------------------------------------------------------------------------------------------------
# GroupQueryAttention

GQA = "GroupQueryAttention"
FUNCTION_GQA = dict.fromkeys(("key-batch-mismatch", "inv-freq-partial-wrong-length",
                               "k-norm-weight-rank", "key-float16-with-float-query", "norm-weight-float16-with-float",
                               "query-double", "position-ids-int32", "mask-float", "inv-freq-float16",
                               "past-lengths-negative", "sinks-rank-2", "sinks-float16-with-float"), "runs")


def _gqa_model(present, shapes, attrs, *, with_present=False, types=None):
    from helpers import GQA_INPUTS, gqa_model

    declared = None if shapes is None else {n: shapes.get(n) for n in GQA_INPUTS if n in shapes}
    if shapes is None:
        declared = {n: None for n in GQA_INPUTS}
    return gqa_model(present, shapes=declared, attrs=attrs, with_present=with_present, elem_types=types,
                     attach=False)


@builder(GQA)
def gqa_cases() -> list[Case]:
    import test_gqa_bad_input as t
    from helpers import GQA_FIXED_TYPES, GQA_INPUTS, gqa_model
    from oracle_gqa import gqa_oracle

    origin = "tests/test_gqa_bad_input.py"
    out = []
    for c in t.CASES:
        function = FUNCTION_GQA.get(c.id) or FUNCTION_ATTR.get(c.function or "", "fails")
        out.append(_imported(GQA, origin, c, static_model=functools.partial(t.model, c, static=True),
                             dynamic_model=functools.partial(t.model, c, static=False),
                             feeds=functools.partial(t.feeds, c), function=function, kernel=KERNEL[c.kernel],
                             infer="rejects" if c.shape_inference else "accepts", kernel_match=c.kernel_match,
                             note=UNKNOWN_ATTRIBUTE_NOTE if c.id == "unknown-attribute" else ""))
    shared = ["past_key", "past_value", "past_lengths"]
    length_shapes = dict(query=(2, 5, 32), key=(2, 5, 16), value=(2, 5, 16), past_key=(2, 2, 10, 8),
                         past_value=(2, 2, 10, 8), past_lengths=(2,))
    for name, lengths in t.LENGTH_CASES + [("int64-max", [0, INT64_MAX]), ("int64-min", [INT64_MIN, 0])]:
        pattern = t._length_message(lengths)

        def static(lengths=lengths):
            return gqa_model(shared, shapes=length_shapes, attrs=t.HEADS, with_present=True, attach=False)

        def dynamic():
            return gqa_model(shared, shapes={n: None for n in GQA_INPUTS}, attrs=t.HEADS, with_present=True,
                             attach=False)
        out.append(Case(GQA, f"past-lengths-{name}", origin if name in dict(t.LENGTH_CASES) else
                        "tests/hardening/bad_input_tables.py", "index values",
                        expect("accepts", "accepts", FUNCTION_GQA.get(f"past-lengths-{name}", "fails"), "rejects"),
                        match=pattern, static_model=static, dynamic_model=dynamic,
                        feeds=functools.partial(t.length_feeds, lengths), note=FUNCTION_NOTE))

    here = "tests/hardening/bad_input_tables.py"
    heads = dict(t.HEADS)
    qkv = dict(query=(1, 5, 32), key=(1, 5, 16), value=(1, 5, 16))
    past = dict(past_key=(1, 2, 3, 8), past_value=(1, 2, 3, 8))
    types = {n: {TensorProto.INT64: np.int64, TensorProto.BOOL: np.bool_}.get(v, np.float32)
             for n, v in GQA_FIXED_TYPES.items()}

    def new(id, fault, outcomes, shapes=qkv, attrs=heads, with_present=False, oracle_attrs=None, **kw):
        def oracle(f):
            outs = gqa_oracle(**f, **(attrs if oracle_attrs is None else oracle_attrs))
            return list(outs) if with_present else [outs[0]]
        return _fused_case(GQA, here, id, fault, outcomes,
                           model=functools.partial(_gqa_model, with_present=with_present), shapes=shapes,
                           types=types, attrs=attrs, oracle=oracle, **kw)

    rejects_lengths = expect("accepts", "accepts", "fails", "rejects")
    out += [
        new("zero-batch", "zero-size", defined(), dict(query=(0, 5, 32), key=(0, 5, 16), value=(0, 5, 16))),
        new("zero-batch-with-past", "zero-size", defined(),
            dict(query=(0, 5, 32), key=(0, 5, 16), value=(0, 5, 16), past_key=(0, 2, 3, 8), past_value=(0, 2, 3, 8)),
            with_present=True),
        new("empty-sequence", "empty sequence", defined(),
            dict(query=(1, 0, 32), key=(1, 0, 16), value=(1, 0, 16))),
        new("empty-sequence-with-past", "empty sequence", defined(),
            dict(query=(1, 0, 32), key=(1, 0, 16), value=(1, 0, 16), **past), with_present=True),
        new("empty-past", "empty sequence", defined(), dict(qkv, past_key=(1, 2, 0, 8), past_value=(1, 2, 0, 8)),
            with_present=True),
        new("huge-window", "window", defined(), dict(qkv, **past), attrs=dict(heads, window=INT64_MAX),
            oracle_attrs=heads),
        new("huge-window-shared-buffer", "window", defined(),
            dict(qkv, past_key=(1, 2, 10, 8), past_value=(1, 2, 10, 8), past_lengths=(1,)),
            attrs=dict(heads, window=INT64_MAX), oracle_attrs=heads, ints=dict(past_lengths=[4]),
            validate_numerics=False),
        new("positions-negative", "positions", defined(), dict(qkv, position_ids=(1, 5)),
            attrs=dict(heads, rope=1), ints=dict(position_ids=[-7, -6, -5, -4, -3])),
        new("positions-beyond-any-cache", "positions", defined(), dict(qkv, position_ids=(1, 5)),
            attrs=dict(heads, rope=1), ints=dict(position_ids=[4096, 4097, 9000, 3, 65536]), tolerance=2e-3),
        new("positions-not-increasing", "positions", defined(), dict(qkv, **past, position_ids=(1, 5)),
            attrs=dict(heads, rope=1), ints=dict(position_ids=[9, 2, 2, 0, 5])),
        new("past-lengths-int64-max-single", "index values", rejects_lengths,
            dict(qkv, past_key=(1, 2, 10, 8), past_value=(1, 2, 10, 8), past_lengths=(1,)),
            ints=dict(past_lengths=[INT64_MAX]), with_present=True,
            match=r"past_lengths\[0\] = 9223372036854775807 is out of range"),
        new("mask-all-false", "mask", defined(), dict(qkv, attention_mask=(1, 5)),
            change=lambda f: poke(f, "attention_mask", ..., False)),
        new("mask-all-false-with-past", "mask", defined(), dict(qkv, **past, attention_mask=(1, 8)),
            change=lambda f: poke(f, "attention_mask", ..., False)),
        new("mask-all-false-with-sinks", "mask", defined(), dict(qkv, attention_mask=(1, 5), sinks=(4,)),
            change=lambda f: poke(f, "attention_mask", ..., False)),
        new("inf-sinks", "non-finite", defined(), dict(qkv, **past, sinks=(4,)),  # all weight on the sink: zeros
            change=lambda f: poke(f, "sinks", (1,), np.inf)),
        new("nan-sink", "non-finite", defined(), dict(qkv, **past, sinks=(4,)),  # that head's rows: NaN
            change=lambda f: poke(f, "sinks", (2,), np.nan)),
        new("nan-query", "non-finite", defined(), change=lambda f: poke(f, "query", (0, 2, slice(0, 8)), np.nan)),
        new("inf-key", "non-finite", defined(), change=lambda f: poke(f, "key", (0, 1, 0), np.inf)),
        new("nan-stale-buffer-slots", "non-finite", defined(),
            dict(qkv, past_key=(1, 2, 10, 8), past_value=(1, 2, 10, 8), past_lengths=(1,)), with_present=True,
            ints=dict(past_lengths=[2]), validate_numerics=False,
            change=lambda f: poke(poke(f, "past_key", (0, slice(None), slice(7, 10)), np.nan), "past_value",
                                  (0, slice(None), slice(7, 10)), np.nan)),
        new("nan-past-beyond-window", "non-finite", defined(), dict(qkv, **past), attrs=dict(heads, window=3),
            change=lambda f: poke(poke(f, "past_key", (0, 0, 0), np.nan), "past_value", (0, 0, 0), np.nan)),
    ]
    return out


def _defined_without_validate_numerics() -> dict[str, str]:
    """Defined, but validate's random index inputs would not be valid: validate checks the node only."""
    return dict(defined(), validate="accepts")


# ---------------------------------------------------------------------------------------------------------
# PagedAttention

PAGED = "PagedAttention"
FUNCTION_PAGED = dict.fromkeys(("value-cache-other-blocks", "seq-lens-length", "block-table-int64",
                                 "negative-window", "negative-attention-chunk", "block-index-negative",
                                 "length-negative",
                                 "fewer-keys-than-new-tokens", "cu-not-starting-at-0", "cu-decreasing-past-t",
                                 ), "runs")


@builder(PAGED)
def paged_cases() -> list[Case]:
    import test_paged_bad_input as t
    from paged_helpers import INPUTS, contiguous_oracle, make_problem, paged_model

    origin = "tests/test_paged_bad_input.py"
    out = []
    for c in t.SHAPE_CASES:
        out.append(_imported(PAGED, origin, c, static_model=functools.partial(t.shape_model, c, static=True),
                             dynamic_model=functools.partial(t.shape_model, c, static=False),
                             feeds=functools.partial(t.shape_feeds, c),
                             function=FUNCTION_PAGED.get(c.id, "fails"), kernel=KERNEL[c.kernel],
                             kernel_match=c.kernel_match))
    value_shapes = {n: v.shape for n, v in t.value_feeds(t.BadValues("shapes", "")).items()}

    def value_case(c, origin=origin, fault=None):
        return Case(PAGED, c.id, origin, fault or fault_of(c.id),
                    expect("accepts", "accepts", FUNCTION_PAGED.get(c.id, "fails"), "rejects"), match=c.match,
                    static_model=lambda: paged_model(shapes=value_shapes, attrs=t.HEADS, attach=False),
                    dynamic_model=lambda: paged_model(shapes={n: None for n in INPUTS}, attrs=t.HEADS, attach=False),
                    feeds=functools.partial(t.value_feeds, c), note=FUNCTION_NOTE)
    out += [value_case(c) for c in t.VALUE_CASES]
    here = "tests/hardening/bad_input_tables.py"
    out += [value_case(c, here, "index values") for c in [
        t.BadValues("seq-lens-int32-max", r"seq_lens\[0\] = 2147483647 is larger than its block table can hold",
                    seq_lens=(INT32_MAX, 3)),
        t.BadValues("seq-lens-int32-min", r"input 'seq_lens' must be >= 0, got seq_lens\[1\] = -2147483648",
                    seq_lens=(6, INT32_MIN)),
        t.BadValues("block-index-int32-min", r"block_table\[0, 1\] = -2147483648 is out of range \[0, 6\)",
                    block_table=((0, INT32_MIN, 2), (3, 4, 5))),
        t.BadValues("block-index-int32-max", r"block_table\[0, 1\] = 2147483647 is out of range \[0, 6\)",
                    block_table=((0, INT32_MAX, 2), (3, 4, 5))),
        t.BadValues("cu-int32-max", r"input 'cu_seqlens_q' must not decrease, got 2147483647 then 5 at 1",
                    cu_seqlens_q=(0, INT32_MAX, 5)),
    ]]

    heads = dict(t.HEADS)

    def new(id, fault, outcomes, *, past, new_tokens, attrs=heads, oracle_attrs=None, change=None, positions=None,
            match="", tolerance=1e-4, note=""):
        def feeds():
            problem = make_problem(np.random.default_rng(3), past=past, new=new_tokens, block_size=4, q_heads=4,
                                   kv_heads=2, head_dim=8, v_head_dim=8, dtype="float32")
            f = dict(problem.feeds)
            if positions is not None:
                f["position_ids"] = np.array(positions, np.int64)
            return change(f) if change else f

        def oracle(f):
            problem = make_problem(np.random.default_rng(3), past=past, new=new_tokens, block_size=4, q_heads=4,
                                   kv_heads=2, head_dim=8, v_head_dim=8, dtype="float32")
            problem.feeds.update(f)
            with np.errstate(all="ignore"):
                return [contiguous_oracle(problem, dict(attrs if oracle_attrs is None else oracle_attrs))[0]]
        present = [] if positions is None else ["position_ids"]
        shapes = {n: v.shape for n, v in feeds().items()}
        return Case(PAGED, id, here, fault, outcomes, match=match,
                    static_model=lambda: paged_model(present, shapes=shapes, attrs=attrs, attach=False),
                    dynamic_model=lambda: paged_model(present, shapes={n: None for n in INPUTS}, attrs=attrs,
                                                      attach=False),
                    feeds=feeds, oracle=oracle if "defined" in outcomes.values() else None,
                    # validate's random block tables would be out of range: it checks the node only
                    validate_numerics=False, tolerance=tolerance, note=_note(outcomes, note))

    rejects_attr = expect("rejects", "rejects", "fails", "rejects")
    defined = functools.partial(_defined_without_validate_numerics)
    out += [
        new("zero-tokens", "empty sequence", expect("accepts", "accepts", "defined", "defined"), past=[6, 3],
            new_tokens=[0, 0]),
        new("zero-batch", "zero-size", expect("accepts", "accepts", "defined", "defined"), past=[], new_tokens=[]),
        new("empty-sequence-in-batch", "empty sequence", defined(), past=[6, 0], new_tokens=[0, 3]),
        new("sequence-without-keys", "empty sequence", defined(), past=[0, 2], new_tokens=[0, 2]),
        new("huge-window", "window", defined(), past=[6, 3], new_tokens=[2, 3],
            attrs=dict(heads, window=INT64_MAX), oracle_attrs=heads),
        new("positions-negative", "positions", defined(), past=[6, 3], new_tokens=[2, 3],
            attrs=dict(heads, rope=1), positions=[-9, -8, -3, -2, -1]),
        new("nan-query", "non-finite", defined(), past=[6, 3], new_tokens=[2, 3],
            change=lambda f: poke(f, "query", (3, slice(8, 16)), np.nan)),
        new("missing-num-heads", "attribute", rejects_attr, past=[6, 3], new_tokens=[2, 3], attrs={},
            match=r"'num_heads'.* required and must be >= 1, got 0"),
        new("causal-float", "attribute", rejects_attr, past=[6, 3], new_tokens=[2, 3], attrs=dict(heads, causal=1.0),
            match=r"attribute 'causal' must be an int, got (a )?float"),
    ]
    return out


# ---------------------------------------------------------------------------------------------------------
# MultiHeadLatentAttention

MLA = "MultiHeadLatentAttention"
FUNCTION_MLA = dict.fromkeys(("latent-batch", "inv-freq-wrong-length", "latent-float16-with-float-query",
                               "position-ids-int32", "causal-2", "negative-window", "negative-softcap", "nan-scale",
                               "rope-base-zero", "rope-interleaved-2", "inf-rope-attention-scaling",
                               "kv-num-heads-attribute", "past-lengths-negative", "key-indices-int32",
                               "key-indices-the-cache-length", "zero-rope-dim"), "runs")


def _mla_model(present, shapes, attrs, *, with_present=False):
    from mla_helpers import MLA_INPUTS, mla_model

    declared = {n: None for n in MLA_INPUTS} if shapes is None else shapes
    return mla_model(present, shapes=declared, attrs=attrs, with_present=with_present, attach=False)


@builder(MLA)
def mla_cases() -> list[Case]:
    import test_mla_bad_input as t
    from mla_helpers import MLA_INPUTS, mla_model
    from oracle_mla import mla_oracle

    origin = "tests/test_mla_bad_input.py"
    out = []
    for c in t.CASES:
        out.append(_imported(MLA, origin, c, static_model=functools.partial(t.model, c, static=True),
                             dynamic_model=functools.partial(t.model, c, static=False),
                             feeds=functools.partial(t.feeds, c), function=FUNCTION_MLA.get(c.id, "fails"),
                             kernel=KERNEL[c.kernel], infer="rejects" if c.shape_inference else "accepts",
                             kernel_match=c.kernel_match,
                             note=UNKNOWN_ATTRIBUTE_NOTE if not c.shape_inference else ""))
    shared = ["past_latent", "past_k_rope", "past_lengths"]
    length_shapes = {n: v.shape for n, v in t.length_feeds([0, 0]).items()}
    for name, lengths in t.LENGTH_CASES + [("int64-max", [0, INT64_MAX]), ("int64-min", [INT64_MIN, 0])]:
        out.append(Case(
            MLA, f"past-lengths-{name}", origin if name in dict(t.LENGTH_CASES) else
            "tests/hardening/bad_input_tables.py", "index values",
            expect("accepts", "accepts", FUNCTION_MLA.get(f"past-lengths-{name}", "fails"), "rejects"),
            match=t._length_message(lengths), note=FUNCTION_NOTE,
            static_model=lambda: mla_model(shared, shapes=length_shapes, attrs=t.HEADS, with_present=True,
                                           attach=False),
            dynamic_model=lambda: mla_model(shared, shapes={n: None for n in MLA_INPUTS}, attrs=t.HEADS,
                                            with_present=True, attach=False),
            feeds=functools.partial(t.length_feeds, lengths)))

    # key_indices values: an entry must name a cache slot (8 of them: 3 past + 5 new); negative ones are padding
    index_feeds = functools.partial(t.index_feeds, None)
    listed = ["past_latent", "past_k_rope", "key_indices"]
    for name, bad in (("the-cache-length", 8), ("int64-max", INT64_MAX)):
        out.append(Case(
            MLA, f"key-indices-{name}", origin if name == "the-cache-length" else "tests/hardening/bad_input_tables.py",
            "index values", expect("accepts", "accepts", FUNCTION_MLA.get(f"key-indices-{name}", "fails"), "rejects"),
            match=rf"key_indices\[1, 2, 3\] = {bad} is out of range: the caches hold 8 tokens",
            note=FUNCTION_NOTE if name == "the-cache-length" else FAILS_NOTE,
            static_model=lambda: mla_model(listed, shapes={n: v.shape for n, v in index_feeds(0).items()},
                                           attrs=t.HEADS, with_present=True, attach=False),
            dynamic_model=lambda: mla_model(listed, shapes={n: None for n in MLA_INPUTS}, attrs=t.HEADS,
                                            with_present=True, attach=False),
            feeds=functools.partial(index_feeds, bad)))

    here = "tests/hardening/bad_input_tables.py"
    heads = dict(t.HEADS)
    ok = dict(t.OK)
    past = dict(t.PAST)
    types = dict(past_lengths=np.int64, position_ids=np.int64, rope_inv_freq=np.float32)

    def new(id, fault, outcomes, shapes=ok, attrs=heads, with_present=False, oracle_attrs=None, **kw):
        def oracle(f):
            outs = mla_oracle(**f, **(attrs if oracle_attrs is None else oracle_attrs))
            return list(outs) if with_present else [outs[0]]
        return _fused_case(MLA, here, id, fault, outcomes,
                           model=functools.partial(_mla_model, with_present=with_present), shapes=shapes,
                           types=types, attrs=attrs, oracle=oracle, required=MLA_INPUTS[:5], **kw)

    def sized(batch, seq, **extra):
        return dict(query=(batch, seq, 56), latent=(batch, seq, 12), k_rope=(batch, seq, 6), w_uk=(4, 12, 8),
                    w_uv=(4, 12, 10), **extra)

    out += [
        new("zero-batch", "zero-size", defined(), sized(0, 5)),
        new("empty-sequence", "empty sequence", defined(), sized(1, 0)),
        new("empty-sequence-with-past", "empty sequence", defined(), sized(1, 0, **past), with_present=True),
        new("empty-past", "empty sequence", defined(), sized(1, 5, past_latent=(1, 0, 12), past_k_rope=(1, 0, 6)),
            with_present=True),
        new("huge-window", "window", defined(), dict(ok, **past), attrs=dict(heads, window=INT64_MAX),
            oracle_attrs=heads),
        new("positions-negative", "positions", defined(), dict(ok, position_ids=(1, 5)),
            ints=dict(position_ids=[-7, -6, -5, -4, -3])),
        new("nan-query", "non-finite", defined(), change=lambda f: poke(f, "query", (0, 2, slice(0, 14)), np.nan)),
        new("nan-stale-buffer-slots", "non-finite", defined(),
            dict(ok, past_latent=(1, 10, 12), past_k_rope=(1, 10, 6), past_lengths=(1,)), with_present=True,
            ints=dict(past_lengths=[2]), validate_numerics=False,
            change=lambda f: poke(poke(f, "past_latent", (0, slice(7, 10)), np.nan), "past_k_rope",
                                  (0, slice(7, 10)), np.nan)),
        new("scale-int", "attribute", expect("rejects", "rejects", "fails", "rejects"),
            attrs=dict(heads, scale=1), match=r"attribute 'scale' must be an? float, got (a )?int"),
    ]
    return out
