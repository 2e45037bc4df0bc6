"""Property-based fuzzing of valid configurations of every op (hypothesis): random shapes, dtypes, attribute
combinations and optional-input presence; per example our CPU kernel (under a drawn ISA, proved to have run
by onnxruntime's profile), the reference function in onnxruntime and the torch functional must each match the
float64 oracle within the tolerance rule of the op's numerics suite.

The suites' machinery is reused, not copied: a strategy draws a `Case` of the op's numerics module
(tests/test_*_numerics.py), registers it under a unique id in that module's CASES_BY_ID, and the module's own
`run_path` builds the inputs and runs each path and its `check` applies the oracle and tolerances.

Budget: the "ci" hypothesis profile (tests/hardening/conftest.py) is derandomized with 50 examples per op;
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
        attention_chunk=draw(st.sampled_from([0, 0, 0, 1, 3, 8, 64])), softcap=draw(st.sampled_from([0.0, 0.0, 5.0])), scale=draw(st.sampled_from([0.0, 0.0, 0.4])), rope=rope,
        rope_base=draw(st.sampled_from([10000.0, 500000.0])), rotary_dim=rotary,
        rope_interleaved=draw(st.integers(0, 1)), rope_attention_scaling=draw(st.sampled_from([1.0, 1.2])),
        sinks=draw(st.sampled_from([None, None, "random", "large"])), dtype=draw(DTYPES),
        with_present=draw(st.booleans()))


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
        attention_chunk=draw(st.sampled_from([0, 0, 0, 1, 4, 16])), softcap=draw(st.sampled_from([0.0, 0.0, 3.0])), scale=draw(st.sampled_from([0.0, 0.5])), rope=rope,
        rope_interleaved=draw(st.integers(0, 1)), sinks=draw(st.booleans()), dtype=draw(DTYPES),
        with_present=draw(st.booleans()))


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
        rope_interleaved=draw(st.integers(0, 1)), dtype=draw(DTYPES), with_present=draw(st.booleans()),
        index_count=draw(st.sampled_from([None, None, 0, 1, 3, 600])))  # key_indices (600: split ranges)


def _mla_kernel_path(isa, _case):
    forms = importlib.import_module("test_mla_numerics").FORMS
    return st.sampled_from([f"kernel-{form}-{isa}" for form in forms])


@st.composite
def sparse_cases(draw, op):
    m = importlib.import_module("test_sparse_numerics")
    kv_heads, kv_len = draw(st.integers(1, 2)), draw(st.integers(1, 40))
    q_len = draw(st.sampled_from([1, kv_len, max(1, kv_len // 3), kv_len + 3]))  # Sq > Skv: rows at p < 0
    common = dict(batch=draw(st.integers(1, 2)), q_heads=kv_heads * draw(st.integers(1, 4)), kv_heads=kv_heads,
                  q_len=q_len, kv_len=kv_len, head_dim=draw(st.sampled_from([8, 16, 32])),
                  v_head_dim=draw(st.sampled_from([None, 8])), dtype=draw(DTYPES))
    causal, scale = draw(st.integers(0, 1)), draw(st.sampled_from([0.0, 0.0, 0.5]))
    # Odd block and segment sizes, and any kv_len (partial last blocks and segments; a partial segment's centroid
    # averages its own keys). A mean over 3 keys rounds (in float32, in each implementation's own order, and in
    # the float64 oracle), so blocks or segments that tie in exact arithmetic may be chosen either way, by each
    # path: selection_tie accepts exactly that.
    if op == m.NSA:
        block = draw(st.sampled_from([1, 2, 3, 4, 5, 8]))
        top_blocks, top_tokens, window = draw(st.integers(0, 4)), draw(st.integers(0, 6)), draw(st.integers(0, 6))
        compressed = draw(st.booleans()) and kv_len >= block and top_tokens == 0  # they share gate 1
        if not (top_blocks or top_tokens or window or compressed):
            window = 2
        shared = draw(st.integers(0, 1)) if top_tokens == 0 else 0
        gates = draw(st.sampled_from([None, (3,), (common["q_heads"], 1, 3),
                                      (common["batch"], common["q_heads"], q_len, 3)]))
        # forced blocks (the own one when causal, sinks, local ones) must fit in top_blocks
        sink = draw(st.integers(0, max(0, min(2, top_blocks - causal))))
        local = draw(st.integers(0, max(0, min(2, top_blocks - causal - sink))))
        return m.nsa("", gates=gates, compressed=compressed, block_size=block, top_blocks=top_blocks,
                     top_tokens=top_tokens, window=window, causal=causal, shared_selection=shared, sink_blocks=sink,
                     local_blocks=local, scale=scale, **common)
    segment = draw(st.sampled_from([2, 3, 4, 5, 8]))
    rope = draw(st.integers(0, 1)) if q_len <= kv_len else 0  # rope=1 needs Sq <= Skv
    rope_attrs = dict(rope_before_routing=draw(st.integers(0, 1)), rope_interleaved=draw(st.integers(0, 1)),
                      rotary_dim=draw(st.sampled_from([0, 0, common["head_dim"] // 2]))) if rope else {}
    return m.routed("", segment_size=segment, top_k=draw(st.integers(1, 4)), causal=causal,
                    cosine=draw(st.integers(0, 1)), rope=rope, **rope_attrs, scale=scale,
                    positions=draw(st.sampled_from([None, "batch", "docs"])) if rope else None, **common)


@st.composite
def indexer_cases(draw):
    """Grid inputs (exact scores: picks equal the oracle's, ties included) or unit-normal ones (a top-k within the
    float32 bound); the default scale only where 1/sqrt(D) is a power of two (D = 1, 4, 16, 64), so grid scores
    stay exact."""
    m = importlib.import_module("test_indexer_numerics")
    batch, q_len = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    head_dim = draw(st.sampled_from([1, 4, 5, 16, 24, 64]))
    scale = draw(st.sampled_from([0.0, 0.0, 0.5, 2.0])) if head_dim in (1, 4, 16, 64) else \
        draw(st.sampled_from([0.25, 0.5, 1.0]))
    if draw(st.booleans()):  # shared buffer: per-row past lengths, NaN in the hidden slots
        past = tuple(draw(st.lists(st.integers(0, 30), min_size=batch, max_size=batch)))
        kv_len = max(past) + q_len + draw(st.integers(0, 6))
    else:
        past, kv_len = None, q_len + draw(st.integers(0, 60))
    return m.Case("", batch=batch, q_len=q_len, kv_len=kv_len, heads=draw(st.integers(1, 6)), head_dim=head_dim,
                  top_k=draw(st.integers(1, kv_len + 4)), scale=scale, key_rank=draw(st.sampled_from([3, 4])),
                  past=past, values=draw(st.sampled_from(["grid", "grid", "grid", "dup-keys", "zero-query", "normal"])),
                  weights=draw(st.sampled_from(["grid", "grid", "negative"])), dtype=draw(DTYPES))


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
    # exact picks on grid inputs, a top-k within the float32 bound on unit-normal ones (the module's check)
    "LightningIndexer": Target("test_indexer_numerics", indexer_cases, _plain_check("check")),
}


def selection_tie(module, case, results) -> bool:
    """A top-k selection over scores that tie in exact arithmetic but not after rounding (a mean over 3 keys, a
    unit-length centroid, a probability from exp) can go either way: each implementation rounds its own way
    (float32, its own summation order), and the float64 oracle may take another candidate. Accepted only when,
    for every path, its selection is a top-k of the oracle's float64 scores up to module.SCORE_TIE_TOL (an exact
    float64 tie between scores that every implementation computes exactly still goes to the lower index: see
    tests/oracle_sparse.py) and its outputs pass the suite's check against the oracle run with that path's
    selection (Y within the usual tolerance, selections equal). Paths may differ from each other only at such
    near ties."""
    outs = [list(o) for o in results.values()]
    if len({len(o) for o in outs}) != 1 or len(outs[0]) < 2:
        return False
    oracles = {}  # the oracle preferring a selection, per distinct selection (the oracle is slow)
    for outputs in outs:
        selections = [np.asarray(a) for a in outputs[1:]]
        key = tuple((a.shape, a.tobytes()) for a in selections)
        if key not in oracles:
            oracles[key] = module.expected_preferring(case.id, selections)
        try:
            module.check(case, outputs, ref=oracles[key])
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
    """selection_tie's acceptance, on doctored outputs: a selection the float64 scores do not tie (on every path
    or on one path alone), a Y off the oracle, or an exact tie between exactly computed scores broken toward the
    higher index are all rejected."""
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
    # an exact float64 tie with a score that rounds in the implementations (rounded) is a near tie
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[1, 3], tie_tol=1e-5, rounded={3}) == [1, 3]
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[1, 3], tie_tol=1e-5, rounded={2}) == [0, 1]
    assert _choose(scores, [0, 1, 2, 3], set(), 2, prefer=[0, 2], tie_tol=1e-5, rounded={0, 1, 2, 3}) == [0, 1]
    # a -inf (or NaN) score is never chosen, tied or not: the kernels' and functions' rule
    assert _choose({0: -np.inf, 1: -np.inf}, [0, 1], set(), 1, prefer=[1], tie_tol=1e3, rounded={0, 1}) == []
    assert _choose({0: np.nan, 1: 2.0, 2: 1.0}, [0, 1, 2], set(), 2) == [1, 2]

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


def test_oracle_rounded_scores():
    """Which exact float64 ties the oracles let go either way: only those with a score that every implementation
    rounds (a mean over a count of keys that is not a power of two, a unit-length or rotated centroid); a tie
    between exactly computed scores (power-of-two counts, a partial last segment of 1 key) goes to the lower
    index, and a score beyond the tolerance is never taken."""
    from oracle_sparse import nsa_oracle, routed_oracle

    def routed_choice(keys, q, prefer, **attrs):
        k = np.asarray(keys, np.float64)[None, None]
        qq = np.asarray(q, np.float64)[None, None, None]
        attrs = dict(dict(top_k=1, cosine=0), **attrs)
        ref = routed_oracle(qq, k, k, **attrs)[1]
        got = routed_oracle(qq, k, k, **attrs, prefer=(np.full_like(ref, prefer),), tie_tol=1e-5)[1]
        return int(ref.ravel()[0]), int(got.ravel()[0])

    # segments of 2, 2 and a partial 1, all scoring 1 exactly: a tie every implementation keeps
    assert routed_choice([[1, 0], [1, 0], [0.5, 0], [1.5, 0], [1, 0]], [1, 0], 2, segment_size=2) == (0, 0)
    # a segment of 3 (mean 1, exact in float64, not in general) and a partial 1 tie: either way
    assert routed_choice([[1.5, 0], [1, 0], [0.5, 0], [1, 0]], [1, 0], 1, segment_size=3) == (0, 1)
    assert routed_choice([[1, 0], [1, 0], [2, 0], [1, 0]], [1, 0], 1, segment_size=2, cosine=1) == (0, 1)
    # beyond the tolerance (1 against 0.5): never
    assert routed_choice([[1.5, 0], [1, 0], [0.5, 0], [0.5, 0]], [1, 0], 1, segment_size=3) == (0, 0)

    def nsa_choice(keys, q, prefer, **attrs):
        k = np.asarray(keys, np.float64)[None, None]
        qq = np.asarray(q, np.float64)[None, None, None]
        ref = nsa_oracle(qq, k, k, top_blocks=1, **attrs)[1]
        got = nsa_oracle(qq, k, k, top_blocks=1, **attrs, prefer=(np.full_like(ref, prefer),), tie_tol=1e-5)[1]
        return int(ref.ravel()[0]), int(got.ravel()[0])

    assert nsa_choice([[1, 0], [1, 0], [0.5, 0], [1.5, 0]], [1, 0], 1, block_size=2) == (0, 0)
    assert nsa_choice([[1.5, 0], [1, 0], [0.5, 0], [0.5, 0], [1, 0], [1.5, 0]], [1, 0], 1, block_size=3) == (0, 1)
    assert nsa_choice([[1.5, 0], [1, 0], [0.5, 0], [0.5, 0], [1, 0], [1, 0]], [1, 0], 1, block_size=3) == (0, 0)


# Found by the long fuzz run once odd segments, odd blocks and partial last segments were drawn (not bugs: exact
# ties that rounding breaks). The cases' inputs come from their ids (the fuzz's crc32 of the drawn case).
ROUTED_TIE = dict(segment_size=3, top_k=1, causal=0, cosine=0, rope=0, rope_before_routing=0, batch=2, q_heads=1,
                  kv_heads=1, q_len=34, kv_len=34, head_dim=32, dtype="float32")
NSA_TIE = dict(gates=(3,), compressed=False, block_size=3, top_blocks=1, top_tokens=1, window=0, causal=0,
               shared_selection=0, batch=2, q_heads=1, kv_heads=1, q_len=19, kv_len=19, head_dim=8, v_head_dim=None,
               dtype="float32")


def test_selection_tie_on_found_ties():
    """SparseRoutedAttention: at one row a full segment of 3 keys and the partial last segment (1 key) tie in
    exact arithmetic and in float64 (the oracle takes the lower index), while every implementation rounds the
    mean over 3 keys down and takes the partial segment. NativeSparseAttention (blocks of 3): two blocks tie in
    exact arithmetic, float64 rounds one down by an ulp, and the kernel and the function take one, torch the
    other. Both are accepted, per path, against the oracle run with that path's selection; a wrong selection or
    a Y off the oracle on one path is not."""
    from oracle_sparse import nsa_oracle, routed_oracle

    m = importlib.import_module("test_sparse_numerics")
    case = register(m, m.routed("", **ROUTED_TIE))
    y, segments = m.expected(case.id)
    row = (1, 0, 18)
    assert int(segments[row][0]) == 6, f"{case.id}: the inputs changed (was the Case's repr changed?)"
    arrays = {n: np.asarray(v, np.float64) for n, v in m.feeds_in(case.dtype, **m.arrays_of(case.id)).items()}
    partial, far = segments.copy(), segments.copy()
    partial[row], far[row] = 11, 1  # the partial last segment (a tie); segment 1 (2.1875 against 3.375)
    y_partial, taken = routed_oracle(arrays["Q"], arrays["K"], arrays["V"], **case.attributes, prefer=(partial,),
                                     tie_tol=m.SCORE_TIE_TOL)
    np.testing.assert_array_equal(taken, partial)
    y_far = routed_oracle(arrays["Q"], arrays["K"], arrays["V"], **case.attributes, prefer=(far,), tie_tol=1e9)[0]
    assert np.abs(y_partial - y).max() > 1e-3 and np.abs(y_far - y).max() > 1e-3
    paths = ("kernel", "function-ort", "torch")
    assert selection_tie(m, case, {p: [y_partial, partial] for p in paths})
    assert selection_tie(m, case, {"kernel": [y_partial, partial], "function-ort": [y, segments],
                                   "torch": [y, segments]})  # paths may differ at a tie
    assert not selection_tie(m, case, {p: [y_far, far] for p in paths})
    assert not selection_tie(m, case, {"kernel": [y_far, far], "function-ort": [y, segments], "torch": [y, segments]})
    assert not selection_tie(m, case, {p: [y_partial + 1e-3, partial] for p in paths})
    assert not selection_tie(m, case, {p: [y, partial] for p in paths})  # the Y of the other selection
    real = {p: m.run_path(case, p) for p in ("kernel-generic", "function-ort", "torch")}
    assert selection_tie(m, case, real)

    case = register(m, m.nsa("", **NSA_TIE))
    y, blocks, tokens = m.expected(case.id)
    row = (1, 0, 4)
    assert int(blocks[row][0]) == 0, f"{case.id}: the inputs changed (was the Case's repr changed?)"
    arrays = {n: np.asarray(v, np.float64) for n, v in m.feeds_in(case.dtype, **m.arrays_of(case.id)).items()}
    other = blocks.copy()
    other[row] = 2
    y_other, taken, _ = nsa_oracle(arrays["Q"], arrays["K"], arrays["V"], arrays["gates"], **case.attributes,
                                   prefer=(other, tokens), tie_tol=m.SCORE_TIE_TOL)
    np.testing.assert_array_equal(taken, other)
    assert np.abs(y_other - y).max() > 1e-3
    assert selection_tie(m, case, {"kernel": [y_other, other, tokens], "function-ort": [y_other, other, tokens],
                                   "torch": [y, blocks, tokens]})
    assert not selection_tie(m, case, {"kernel": [y_other, other, tokens], "function-ort": [y, other, tokens],
                                       "torch": [y, blocks, tokens]})
    real = {p: m.run_path(case, p) for p in ("kernel-generic", "function-ort", "torch")}
    assert selection_tie(m, case, real)
