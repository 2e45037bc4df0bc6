"""Property-based fuzzing of valid configurations of every op (hypothesis): random shapes, dtypes, attribute
combinations and optional-input presence; per example our CPU kernel (under a drawn ISA, proved to have run
by onnxruntime's profile), the reference function in onnxruntime and the torch functional must each match the
float64 oracle within the tolerance rule of the op's numerics suite.

The suites' machinery is reused, not copied: a strategy draws a `Case` of the op's numerics module
(tests/test_*_numerics.py), registers it under a unique id in that module's CASES_BY_ID, and the module's own
`run_path` builds the inputs and runs each path and its `check` applies the oracle and tolerances.

Budget: the "ci" hypothesis profile (tests/hardening/conftest.py) is derandomized with 100 examples per op;
`scripts/fuzz.sh` (or `--hypothesis-profile long`, ONNXATTN_FUZZ_EXAMPLES=N) runs the long version.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import warnings
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from helpers import ISAS

DTYPES = st.sampled_from(["float32"] * 4 + ["float16", "bfloat16"])  # mostly float32: the tightest bound
# The kernel ISAs used (scripts/sanitize.sh leaves out avx512: see its header)
FUZZ_ISAS = [i for i in os.environ.get("ONNXATTN_HARDENING_ISAS", ",".join(ISAS)).split(",") if i]


@dataclasses.dataclass(frozen=True)
class Target:
    module: str  # the op's numerics test module
    cases: Callable[[], st.SearchStrategy]  # draws that module's Case (id filled in later)
    check: Callable  # (module, case, outputs, path) -> None, raises on a mismatch
    kernel_path: Callable[[str, object], st.SearchStrategy] = lambda isa, _: st.just(f"kernel-{isa}")
    selects: bool = False  # top-k selection: see selection_tie


def _with_present_check(name):
    def check(m, case, outputs, path):
        if path != "torch":
            assert len(outputs) == (3 if case.with_present else 1)
        getattr(m, "check")(case, outputs, **{name: case.with_present or path == "torch"})
    return check


@st.composite
def sdpa_cases(draw):
    m = importlib.import_module("test_sdpa_numerics")
    kv_heads = draw(st.integers(1, 3))
    mask = draw(st.sampled_from([None, None, "bool", "additive", "additive_inf"]))
    shapes = [("Sq", "Skv"), ("Skv",), (1, "Skv"), ("B", 1, 1, "Skv"), (1, "Hq", "Sq", "Skv"), ("B", "Hq", "Sq", "Skv")]
    return m.Case(
        id="", batch=draw(st.integers(1, 3)), q_heads=kv_heads * draw(st.integers(1, 4)), kv_heads=kv_heads,
        q_len=draw(st.integers(1, 40)), kv_len=draw(st.integers(1, 70)),
        head_dim=draw(st.sampled_from([5, 8, 13, 16, 32, 64, 80])),
        v_head_dim=draw(st.sampled_from([None, None, 7, 16, 48])), causal=draw(st.integers(0, 1)),
        window=draw(st.sampled_from([0, 0, 1, 3, 17, 500])), band=draw(st.sampled_from([0, 0, 0, 2, 9])),
        scale=draw(st.sampled_from([0.0, 0.0, 0.3, 2.0])), softcap=draw(st.sampled_from([0.0, 0.0, 1.5, 30.0])),
        mask=mask, mask_shape=draw(st.sampled_from(shapes)) if mask else ("Sq", "Skv"),
        empty_mask_rows=bool(mask) and draw(st.booleans()), dtype=draw(DTYPES), with_lse=draw(st.booleans()))


@st.composite
def gqa_cases(draw):
    m = importlib.import_module("test_gqa_numerics")
    kv_heads, batch, seq = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 12))
    head_dim = draw(st.sampled_from([4, 8, 16, 32, 64]))
    mode = draw(st.sampled_from(["none", "concat", "shared"]))
    past = buffer = lengths = None
    if mode == "concat":
        past = draw(st.integers(0, 40))
    elif mode == "shared":
        buffer = seq + draw(st.integers(0, 40))
        lengths = tuple(draw(st.lists(st.integers(0, buffer - seq), min_size=batch, max_size=batch)))
    rope = draw(st.integers(0, 1))
    rotary = draw(st.sampled_from([0, 0, head_dim // 2 - head_dim // 2 % 2])) if rope else 0
    mask = draw(st.sampled_from([None, None, "left-pad", "right-pad", "random"]))
    positions = draw(st.sampled_from([None, None, "docs", "shifted"] + (["from-mask"] if mask == "left-pad" else [])))
    return m.Case(
        id="", batch=batch, q_heads=kv_heads * draw(st.integers(1, 4)), kv_heads=kv_heads, seq=seq, head_dim=head_dim,
        v_head_dim=draw(st.sampled_from([None, None, 8, 12])), past=past, buffer=buffer, past_lengths=lengths,
        positions=positions if rope else None, doc_starts=(0, min(3, seq - 1)), mask=mask,
        q_norm=draw(st.booleans()), k_norm=draw(st.booleans()),
        inv_freq=draw(st.sampled_from([None, "linear4", "custom"])) if rope and rotary % 2 == 0 else None,
        causal=draw(st.sampled_from([1, 1, 0])), window=draw(st.sampled_from([0, 0, 1, 4, 100])),
        softcap=draw(st.sampled_from([0.0, 0.0, 5.0])), scale=draw(st.sampled_from([0.0, 0.0, 0.4])), rope=rope,
        rope_base=draw(st.sampled_from([10000.0, 500000.0])), rotary_dim=rotary,
        rope_interleaved=draw(st.integers(0, 1)), rope_attention_scaling=draw(st.sampled_from([1.0, 1.2])),
        dtype=draw(DTYPES), with_present=draw(st.booleans()))


@st.composite
def paged_cases(draw):
    m = importlib.import_module("test_paged_numerics")
    batch = draw(st.integers(1, 4))
    past = tuple(draw(st.lists(st.integers(0, 40), min_size=batch, max_size=batch)))
    new = tuple(draw(st.lists(st.integers(0, 9), min_size=batch, max_size=batch)))
    # T = 0 is the kernel's defined empty result, but the reference function stops on the empty tensors (a
    # recorded limitation: bad_input_tables.py, case zero-tokens), so valid steps here carry >= 1 token
    assume(sum(new) > 0)
    kv_heads, head_dim = draw(st.integers(1, 3)), draw(st.sampled_from([4, 8, 16, 32]))
    rope = draw(st.integers(0, 1))
    return m.Case(
        id="", past=past, new=new, block_size=draw(st.sampled_from([1, 3, 4, 16])),
        layout=draw(st.sampled_from(["in-order", "shuffled"])), spare_blocks=draw(st.integers(0, 3)),
        table_extra=draw(st.integers(0, 3)), q_heads=kv_heads * draw(st.integers(1, 4)), kv_heads=kv_heads,
        head_dim=head_dim, v_head_dim=draw(st.sampled_from([None, None, 8])),
        positions=draw(st.sampled_from([None, "shifted"])) if rope else None, q_norm=draw(st.booleans()),
        k_norm=draw(st.booleans()), inv_freq=draw(st.sampled_from([None, "linear4", "custom"])) if rope else None,
        causal=draw(st.sampled_from([1, 1, 0])), window=draw(st.sampled_from([0, 0, 1, 5, 60])),
        softcap=draw(st.sampled_from([0.0, 0.0, 3.0])), scale=draw(st.sampled_from([0.0, 0.5])), rope=rope,
        rope_interleaved=draw(st.integers(0, 1)), dtype=draw(DTYPES), with_present=draw(st.booleans()))


@st.composite
def mla_cases(draw):
    m = importlib.import_module("test_mla_numerics")
    batch, seq = draw(st.integers(1, 3)), draw(st.integers(1, 9))
    mode = draw(st.sampled_from(["none", "concat", "shared"]))
    past = buffer = lengths = None
    if mode == "concat":
        past = draw(st.integers(0, 40))
    elif mode == "shared":
        buffer = seq + draw(st.integers(0, 40))
        lengths = tuple(draw(st.lists(st.integers(0, buffer - seq), min_size=batch, max_size=batch)))
    return m.Case(
        id="", batch=batch, heads=draw(st.sampled_from([1, 2, 4, 8, 16])), seq=seq,
        rank=draw(st.sampled_from([7, 16, 24, 64])), nope=draw(st.sampled_from([4, 5, 8, 16, 32])),
        rope_dim=draw(st.sampled_from([2, 6, 8, 16])), v_dim=draw(st.sampled_from([4, 7, 12, 32])), past=past,
        buffer=buffer, past_lengths=lengths, cache_rank=draw(st.sampled_from([3, 4])) if mode != "none" else 3,
        positions=draw(st.sampled_from([None, "shifted"])), inv_freq=draw(st.sampled_from([None, "yarn"])),
        causal=draw(st.sampled_from([1, 1, 0])), window=draw(st.sampled_from([0, 0, 2, 30])),
        softcap=draw(st.sampled_from([0.0, 0.0, 2.0])), scale=draw(st.sampled_from([0.0, 0.3])),
        rope_interleaved=draw(st.integers(0, 1)), dtype=draw(DTYPES), with_present=draw(st.booleans()))


def _mla_kernel_path(isa, _case):
    forms = importlib.import_module("test_mla_numerics").FORMS
    return st.sampled_from([f"kernel-{form}-{isa}" for form in forms])


@st.composite
def sparse_cases(draw, op):
    m = importlib.import_module("test_sparse_numerics")
    kv_heads, kv_len = draw(st.integers(1, 2)), draw(st.integers(1, 40))
    q_len = draw(st.sampled_from([1, kv_len, max(1, kv_len // 3)]))
    common = dict(batch=draw(st.integers(1, 2)), q_heads=kv_heads * draw(st.integers(1, 4)), kv_heads=kv_heads,
                  q_len=q_len, kv_len=kv_len, head_dim=draw(st.sampled_from([8, 16, 32])),
                  v_head_dim=draw(st.sampled_from([None, 8])), dtype=draw(DTYPES))
    causal = draw(st.integers(0, 1))
    if op == m.NSA:
        block = draw(st.sampled_from([1, 2, 4, 8]))
        top_blocks, top_tokens, window = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
        compressed = draw(st.booleans()) and kv_len >= block and top_tokens == 0  # they share gate 1
        if not (top_blocks or top_tokens or window or compressed):
            window = 2
        shared = draw(st.integers(0, 1)) if top_tokens == 0 else 0
        gates = draw(st.sampled_from([None, (3,), (common["q_heads"], 1, 3),
                                      (common["batch"], common["q_heads"], q_len, 3)]))
        return m.nsa("", gates=gates, compressed=compressed, block_size=block, top_blocks=top_blocks,
                     top_tokens=top_tokens, window=window, causal=causal, shared_selection=shared, **common)
    # Segment means over a power-of-two count of grid values are exact, so scores that tie in exact arithmetic
    # tie in every implementation (a mean over 3 keys rounds differently in float32 and in the float64 oracle
    # and flips such a tie: all implementations agree with each other there, the oracle does not).
    segment = draw(st.sampled_from([2, 4, 8]))
    kv_len = segment * max(1, kv_len // segment)
    common.update(kv_len=kv_len, q_len=min(q_len, kv_len))
    rope = draw(st.integers(0, 1))
    return m.routed("", segment_size=segment, top_k=draw(st.integers(1, 4)), causal=causal,
                    cosine=draw(st.integers(0, 1)), rope=rope,
                    rope_before_routing=draw(st.integers(0, 1)) if rope else 0,
                    positions=draw(st.sampled_from([None, "batch"])) if rope else None, **common)


def _plain_check(name):
    return lambda m, case, outputs, path: getattr(m, name)(case, outputs)


TARGETS = {
    "ScaledDotProductAttention": Target("test_sdpa_numerics", sdpa_cases, _plain_check("check_against_oracle")),
    "GroupQueryAttention": Target("test_gqa_numerics", gqa_cases, _with_present_check("present_checked")),
    "PagedAttention": Target("test_paged_numerics", paged_cases, _with_present_check("pools_checked")),
    "MultiHeadLatentAttention": Target("test_mla_numerics", mla_cases, _with_present_check("present_checked"),
                                       kernel_path=_mla_kernel_path),
    "NativeSparseAttention": Target("test_sparse_numerics", lambda: sparse_cases("NativeSparseAttention"),
                                    _plain_check("check"), selects=True),
    "SparseRoutedAttention": Target("test_sparse_numerics", lambda: sparse_cases("SparseRoutedAttention"),
                                    _plain_check("check"), selects=True),
}


def selection_tie(module, case, results) -> bool:
    """A top-k selection over scores that tie in exact arithmetic but not after rounding (a unit-length
    centroid, a probability from exp) can go either way: float32 implementations agree with each other and the
    float64 oracle may take the other candidate. Accepted only when every path made the same selection, that
    selection is also a top-k of the oracle's float64 scores up to module.SCORE_TIE_TOL (an exact float64 tie
    still goes to the lower index), and every path's outputs pass the suite's check against the oracle run
    with that selection (Y within the usual tolerance, selections equal)."""
    outs = [list(o) for o in results.values()]
    if len({len(o) for o in outs}) != 1 or len(outs[0]) < 2:
        return False
    selections = [np.asarray(a) for a in outs[0][1:]]
    if not all(np.array_equal(np.asarray(o[i]), selections[i - 1]) for o in outs[1:] for i in range(1, len(o))):
        return False
    ref = module.expected_preferring(case.id, selections)
    try:
        for outputs in outs:
            module.check(case, outputs, ref=ref)
    except AssertionError:
        return False
    return True


def register(module, case):
    """The case under an id unique to its fields, in the module's table (its caches are keyed by id)."""
    case = dataclasses.replace(case, id=f"fuzz-{zlib.crc32(repr(case).encode()):08x}")  # not hash(): salted
    module.CASES_BY_ID[case.id] = case
    return case


def test_every_op_is_fuzzed():
    from onnxattn import ops

    assert set(ops.SPECS) <= set(TARGETS), f"no fuzz target for {sorted(set(ops.SPECS) - set(TARGETS))}"


@pytest.mark.parametrize("op", list(TARGETS))
def test_kernel_function_torch_agree(op):
    target = TARGETS[op]
    module = importlib.import_module(target.module)

    @given(case=target.cases(), data=st.data())
    def example(case, data):
        case = register(module, case)
        isa = data.draw(st.sampled_from(FUZZ_ISAS), label="isa")
        kernel = data.draw(target.kernel_path(isa, case), label="kernel path")
        results = {}
        for path in (kernel, "function-ort", "torch"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                results[path] = module.run_path(case, path)
        for path, outputs in results.items():
            try:
                target.check(module, case, outputs, path)
            except AssertionError as e:
                if target.selects and selection_tie(module, case, results):
                    event("selection tie accepted")  # counted in --hypothesis-show-statistics
                    break  # every path passed the check against the oracle with the tied selection
                raise AssertionError(f"{path} on {case}: {e}") from None

    example()


def test_selection_tie_accepts_only_near_ties():
    """selection_tie's acceptance, on doctored outputs: a selection the float64 scores do not tie, one path
    alone, a Y off the oracle, or an exact tie broken toward the higher index are all rejected."""
    from oracle_sparse import _choose

    scores = {0: 1.0, 1: 1.0 + 1e-9, 2: 0.5, 3: 1.0}
    assert _choose(scores, [0, 1, 2, 3], set(), 2) == [0, 1]
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[0, 3]) == [0, 1]  # no tie_tol: the oracle's own
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[0, 3], tie_tol=1e-5) == [0, 3]  # 1 vs 3: near tie
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[1, 3], tie_tol=1e-5) == [0, 1]  # exact tie: lower index
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[0, 2, -1], tie_tol=1e-5) == [0, 1]  # 0.5 is no tie
    assert _choose(scores, [0, 1, 2, 3], {2}, 2, prefer=[0, 1], tie_tol=1e-5) == [1, 2]  # forced 2 left out
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[1, 1], tie_tol=1e-5) == [0, 1]  # not distinct
    assert _choose({0: -np.inf, 1: 0.0}, [0, 1], set(), 1, prefer=[0], tie_tol=1e3) == [1]

    m = importlib.import_module("test_sparse_numerics")
    case = m.CASES_BY_ID["nsa-seed"]  # float32, per-head blocks (2 of 3) and fine tokens
    y, blocks, tokens = m.expected(case.id)
    paths = ("kernel", "function-ort", "torch")
    assert selection_tie(m, case, {p: [y, blocks, tokens] for p in paths})  # agrees with the oracle
    # another block at one position, and the Y that goes with it (the oracle told to take any selection)
    other = blocks.copy()
    other[0, 0, 0] = sorted(set(range(3)) - {int(blocks[0, 0, 0, 0])})
    arrays = m.feeds_in(case.dtype, **m.arrays_of(case.id))
    from oracle_sparse import nsa_oracle
    y_other = nsa_oracle(*(np.asarray(arrays[n], np.float64) for n in ("Q", "K", "V", "gates")), **case.attributes,
                         prefer=(other, tokens), tie_tol=1e9)[0]
    assert np.abs(y_other - y).max() > 1e-3, "the doctored selection must change Y"
    assert not selection_tie(m, case, {p: [y_other, other, tokens] for p in paths})
    assert not selection_tie(m, case, {"kernel": [y_other, other, tokens], "function-ort": [y, blocks, tokens],
                                       "torch": [y, blocks, tokens]})
    assert not selection_tie(m, case, {p: [y + 1e-3, blocks, tokens] for p in paths})
