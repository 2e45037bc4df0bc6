"""onnxattn::PagedAttention equals contiguous-cache attention on every path: each sequence of a paged problem
must give what the numpy GroupQueryAttention oracle gives for that sequence alone over a contiguous cache
(tests/oracle_gqa.py), and the output pools must be the input pools with exactly the new tokens' K/V written.

Paths: the reference function in onnxruntime without the library and in onnx.reference (inlined), the torch
functional, and our CPU kernel under each ISA variant (run_kernel proves from onnxruntime's profile that the
kernel ran). The matrix is data (CASES). Every problem hides NaN in every slot no sequence owns and garbage
(out-of-range) block indices past each sequence's last block: neither may change anything.

Tolerances as in test_gqa_numerics.py (STYLE.md #10): float32 1e-5 absolute + 1e-5 relative + 4x the error
of the oracle run in float32; float16/bfloat16 2x the error of the oracle run in that type plus one ulp of
the largest output; new pool entries within 1e-5 (float32) or one ulp of themselves (16-bit); every other
pool element bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import (
    IO_NUMPY,
    ISAS,
    cpu_isa,
    function_session,
    kernel_ops_run,
    kernel_session,
    round_to,
    run_function,
    run_kernel,
    run_onnx_reference,
)
from paged_helpers import (
    INPUTS,
    PAGED,
    add_optional_inputs,
    contiguous_oracle,
    make_problem,
    paged_model,
    run_paged_torch,
)
from onnxattn import ops
from onnxattn.ops import paged

FP32_ATOL = 1e-5
FP32_RTOL = 1e-5
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
COMPUTE = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    past: tuple[int, ...] = (5, 12, 0)  # per sequence: keys already cached
    new: tuple[int, ...] = (1, 1, 4)  # per sequence: new tokens (packed in this order)
    block_size: int = 4
    layout: str = "shuffled"  # "in-order", "shuffled", "shared-prefix" (see paged_helpers.make_problem)
    spare_blocks: int = 2  # NaN-filled blocks no sequence owns
    table_extra: int = 1  # garbage columns past the longest sequence's blocks
    q_heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    v_head_dim: int | None = None
    positions: str | None = None  # None (the op's default) or "shifted"
    q_norm: bool = False
    k_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    inv_freq: str | None = None  # None, "linear4", "custom"
    causal: int = 1
    window: int = 0
    attention_chunk: int = 0
    softcap: float = 0.0
    scale: float = 0.0
    rope: int = 1
    rope_base: float = 10000.0
    rotary_dim: int = 0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    sinks: bool = False
    dtype: str = "float32"
    with_present: bool = True

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(num_heads=self.q_heads, kv_num_heads=self.kv_heads, causal=self.causal, window=self.window,
                    attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=self.rope,
                    rope_base=self.rope_base,
                    rotary_dim=self.rotary_dim, rope_interleaved=self.rope_interleaved,
                    rope_attention_scaling=self.rope_attention_scaling, qk_norm_epsilon=self.qk_norm_epsilon)

    @property
    def dv(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim


CASES = [
    # phases: decode, prefill, ragged mixes (a sequence with no new tokens, an empty sequence)
    Case("decode-b3", past=(5, 12, 7), new=(1, 1, 1)),
    Case("prefill-b2", past=(0, 0), new=(7, 3)),
    Case("ragged-mixed-b4", past=(9, 0, 20, 6), new=(1, 5, 0, 3)),
    Case("ragged-empty-sequence", past=(0, 4, 3), new=(0, 2, 0)),
    Case("chunk-b2", past=(10, 3), new=(6, 9)),
    Case("no-rope", past=(6, 2), new=(1, 4), rope=0),
    Case("bidirectional", past=(4, 0), new=(3, 5), causal=0, rope=0),
    # block sizes and layouts: partially filled last blocks, full last blocks, blocks in order
    Case("block-size-1", past=(3, 6, 0), new=(2, 1, 3), block_size=1),
    Case("block-size-16", past=(20, 33, 0), new=(1, 4, 17), block_size=16),
    Case("block-size-64", past=(70, 10), new=(1, 60), block_size=64),
    Case("block-exactly-full", past=(7, 4), new=(1, 4), block_size=4),
    Case("in-order-blocks", past=(9, 14), new=(2, 1), layout="in-order"),
    Case("no-spare-no-extra", past=(5, 2), new=(1, 2), spare_blocks=0, table_extra=0),
    Case("wide-table", past=(1, 2), new=(1, 1), table_extra=6),
    Case("shared-prefix-blocks", past=(12, 17, 12), new=(1, 3, 2), layout="shared-prefix"),
    # windows: the W most recent keys, the current one included
    Case("window-decode", past=(20, 3), new=(1, 1), window=6),
    Case("window-chunk-bs16", past=(30, 0), new=(9, 12), window=7, block_size=16),
    Case("window-1", past=(4,), new=(3,), window=1),
    Case("window-wider-than-cache", past=(3, 1), new=(2, 1), window=50),
    # positions, RoPE variants
    Case("positions-shifted", past=(7, 2), new=(1, 3), positions="shifted"),
    Case("rope-partial", past=(5, 0), new=(2, 3), rotary_dim=8),
    Case("rope-interleaved", past=(3, 6), new=(2, 1), rope_interleaved=1),
    Case("rope-inv-freq-custom", past=(5, 2), new=(1, 2), rotary_dim=8, inv_freq="custom"),
    Case("rope-scaled", past=(30, 1), new=(1, 1), inv_freq="linear4", rope_attention_scaling=1.25),
    Case("rope-base-500000", past=(40,), new=(2,), rope_base=500000.0),
    # QK-norm
    Case("qk-norm", past=(4, 8), new=(1, 3), q_norm=True, k_norm=True),
    Case("k-norm-only-no-rope", past=(9,), new=(1,), k_norm=True, rope=0),
    # heads and sizes
    Case("mqa-8-over-1", past=(6, 11), new=(1, 2), q_heads=8, kv_heads=1),
    Case("mha-3-heads", past=(2, 5), new=(3, 1), q_heads=3, kv_heads=3),
    # decode of 8 sequences: the kernel runs a sequence's KV heads together in groups (here 2 + 1 heads)
    Case("decode-b8-3-kv-heads", past=(17, 3, 40, 0, 9, 16, 33, 5), new=(1,) * 8, q_heads=6, kv_heads=3,
         block_size=8),
    Case("dv-ne-d", past=(3, 8), new=(2, 1), head_dim=16, v_head_dim=8),
    # scores
    Case("scale-softcap", past=(6, 3), new=(1, 2), scale=0.5, softcap=2.0),
    # without the cache outputs (the node still writes into scratch pools)
    Case("no-present", past=(5, 9), new=(1, 2), with_present=False),
    # larger: past the kernel's row and key tiles, odd remainders
    Case("large-decode-bs16-b3", past=(300, 45, 129), new=(1, 1, 1), q_heads=8, kv_heads=2, head_dim=128,
         block_size=16, q_norm=True, k_norm=True),
    Case("large-mixed-bs16", past=(200, 0), new=(33, 70), q_heads=4, kv_heads=2, head_dim=64, block_size=16,
         window=50),
    # everything at once
    Case("everything", past=(5, 9, 0), new=(3, 1, 2), q_heads=6, kv_heads=2, positions="shifted", q_norm=True,
         k_norm=True, inv_freq="custom", rotary_dim=10, window=7, softcap=3.0, block_size=3),
    # attention sinks (GPT-OSS), the sequences' LSE from the ragged core
    Case("sinks-decode-b3", past=(5, 12, 7), new=(1, 1, 1), sinks=True),
    Case("sinks-ragged-mixed-b4", past=(9, 0, 20, 6), new=(1, 5, 0, 3), sinks=True),
    Case("sinks-window-chunk-bs16", past=(30, 0), new=(9, 12), window=7, block_size=16, sinks=True),
    Case("sinks-large-decode-bs16-b3", past=(300, 45, 129), new=(1, 1, 1), q_heads=8, kv_heads=2, head_dim=128,
         block_size=16, sinks=True),
    # chunked attention (Llama 4): each token sees its own chunk's keys only
    Case("attn-chunk-ragged-mixed-b3", past=(9, 0, 21), new=(1, 13, 3), attention_chunk=4),
    Case("attn-chunk-decode-bs16", past=(300, 45, 129), new=(1, 1, 1), q_heads=8, kv_heads=2, head_dim=128,
         block_size=16, attention_chunk=64),
    Case("attn-chunk-window-sinks", past=(30, 0), new=(9, 12), window=7, attention_chunk=10, block_size=16,
         sinks=True),
]
_LOW_PRECISION_OF = ("decode-b3", "ragged-mixed-b4", "block-size-16", "qk-norm", "window-chunk-bs16", "dv-ne-d",
                     "everything", "large-decode-bs16-b3", "sinks-ragged-mixed-b4", "attn-chunk-ragged-mixed-b3")
CASES += [dataclasses.replace(c, id=f"{c.id}-{dtype}", dtype=dtype)
          for dtype in ("float16", "bfloat16") for c in CASES if c.id in _LOW_PRECISION_OF]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def _case_of_overload(overload: str) -> Case:
    features = set(overload.split("+")) if overload else set()
    return Case(f"overload-{overload or 'plain'}", past=(3, 6), new=(2, 1), head_dim=8,
                with_present="present" in features,
                positions="shifted" if "pos" in features else None, q_norm="qnorm" in features,
                k_norm="knorm" in features, inv_freq="custom" if "inv_freq" in features else None,
                sinks="sinks" in features)


OVERLOAD_CASES = {overload: _case_of_overload(overload) for overload in paged.SPEC.overloads}
CASES_BY_ID.update({c.id: c for c in OVERLOAD_CASES.values()})


@functools.lru_cache(maxsize=None)
def problem_of(case_id: str):
    case = CASES_BY_ID[case_id]
    rng = np.random.default_rng(zlib.crc32(case_id.encode()))
    problem = make_problem(rng, past=case.past, new=case.new, block_size=case.block_size, q_heads=case.q_heads,
                           kv_heads=case.kv_heads, head_dim=case.head_dim, v_head_dim=case.dv, dtype=case.dtype,
                           layout=case.layout, spare_blocks=case.spare_blocks, table_extra=case.table_extra)
    add_optional_inputs(rng, problem, positions=case.positions, q_norm=case.q_norm, k_norm=case.k_norm,
                        inv_freq=case.inv_freq, head_dim=case.head_dim, rotary_dim=case.rotary_dim,
                        rope_base=case.rope_base, dtype=case.dtype, sinks=case.q_heads if case.sinks else 0)
    return problem


def feeds_of(case_id: str) -> dict[str, np.ndarray]:
    return problem_of(case_id).feeds


def model_of(case: Case) -> onnx.ModelProto:
    present = [n for n in INPUTS[8:] if n in feeds_of(case.id)]
    return paged_model(present, dtype=case.dtype, with_present=case.with_present, attrs=case.attrs)


@functools.lru_cache(maxsize=None)
def expected(case_id: str):
    """(oracle outputs in float64, output tolerance, absolute tolerance of the new pool entries)."""
    case = CASES_BY_ID[case_id]
    problem = problem_of(case_id)
    store = None if case.dtype == "float32" else (lambda x: round_to(x, case.dtype).astype(np.float64))
    ref = contiguous_oracle(problem, case.attrs, store=store)
    low = contiguous_oracle(problem, case.attrs, store=store, compute=COMPUTE[case.dtype])
    baseline = [float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0)) for x, r in zip(low, ref)]
    y_max = float(np.abs(ref[0]).max(initial=0.0))
    if case.dtype == "float32":
        y_tol = FP32_ATOL + FP32_RTOL * y_max + 4 * baseline[0]
        pool_tol = FP32_ATOL + 4 * max(baseline[1:])
    else:
        # new 16-bit entries: one ulp of themselves (rounding picks a neighbour), plus the float32 error before
        # the rounding (RoPE angles at large positions), measured by the oracle without rounding
        exact, f32 = contiguous_oracle(problem, case.attrs), contiguous_oracle(problem, case.attrs, compute=np.float32)
        y_tol = 2 * baseline[0] + EPS[case.dtype] * max(1.0, y_max)
        pool_tol = 1e-6 + 4 * max(float(np.nanmax(np.abs(np.asarray(x, np.float64) - r), initial=0.0))
                                  for x, r in zip(f32[1:], exact[1:]))
    return ref, y_tol, pool_tol


def check(case: Case, outputs, *, pools_checked: bool) -> None:
    (y_ref, k_ref, v_ref), y_tol, pool_tol = expected(case.id)
    for output in outputs:
        assert np.asarray(output).dtype == IO_NUMPY[case.dtype]
    y = np.asarray(outputs[0], dtype=np.float64)
    assert y.shape == y_ref.shape, f"output shape {y.shape}, expected {y_ref.shape}"
    assert not np.isnan(y).any(), "NaN in the output (an unowned slot or garbage block was read)"
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= y_tol, f"max |output - contiguous oracle| = {err:.3g} > {y_tol:.3g}"
    if not pools_checked:
        return
    assert len(outputs) == 3
    problem = problem_of(case.id)
    new = np.zeros(k_ref.shape[:3], dtype=bool)  # [num_blocks, block_size, Hkv]: the slots written
    for b, (pk, _) in enumerate(problem.pasts):
        slots = problem.slots[b][pk.shape[2]:]
        new.reshape(-1, new.shape[2])[slots] = True
    for name, got, ref in (("key_cache_out", outputs[1], k_ref), ("value_cache_out", outputs[2], v_ref)):
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == ref.shape, f"{name} shape {got.shape}, expected {ref.shape}"
        # everything else, NaN included, bit for bit
        np.testing.assert_array_equal(got[~new], ref[~new], err_msg=f"{name}: a slot besides the new ones changed")
        if case.dtype == "float32":
            np.testing.assert_allclose(got[new], ref[new], atol=pool_tol, rtol=FP32_RTOL, err_msg=name)
        else:
            np.testing.assert_allclose(got[new], ref[new], atol=pool_tol, rtol=EPS[case.dtype], err_msg=name)


PATHS = ["function-ort", "function-onnx-reference", "torch", "kernel"]
MATRIX_PATHS = PATHS[:3] + [f"kernel-{isa}" for isa in ISAS]


def run_path(case: Case, path: str):
    feeds = feeds_of(case.id)
    if path == "torch":
        return run_paged_torch(feeds, dtype=case.dtype, attrs=case.attrs)
    if path.startswith("kernel-"):
        with cpu_isa(path.removeprefix("kernel-")):
            return run_kernel(model_of(case), feeds)
    runner = {"function-ort": run_function, "function-onnx-reference": run_onnx_reference, "kernel": run_kernel}
    return runner[path](model_of(case), feeds)


@pytest.mark.parametrize("path", MATRIX_PATHS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_matches_contiguous(case: Case, path: str):
    outputs = run_path(case, path)
    if path != "torch":
        assert len(outputs) == (3 if case.with_present else 1)
    check(case, outputs, pools_checked=case.with_present or path == "torch")


@pytest.mark.parametrize("rows", [1, 3], ids=["one-token-chunks", "three-token-chunks"])
@pytest.mark.parametrize("path", ["function-ort", "function-onnx-reference"])
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.dtype == "float32"])
def test_the_function_in_token_chunks_matches_contiguous(case: Case, path: str, rows: int, monkeypatch):
    """The reference function's chunked form (a Loop over the packed tokens, for calls whose per-token keys,
    values and scores, L (Hkv (D + Dv) + Hq) floats a token, pass ops._bodies.CHUNK_ELEMENTS: long prompt
    chunks), forced by a budget of `rows` tokens."""
    from onnxattn.ops import _bodies

    feeds = feeds_of(case.id)
    length = feeds["block_table"].shape[1] * feeds["key_cache"].shape[1]
    width = feeds["key_cache"].shape[-1] + feeds["value_cache"].shape[-1]
    monkeypatch.setattr(_bodies, "CHUNK_ELEMENTS", rows * length * (case.kv_heads * width + case.q_heads))
    assert any(n.op_type == "If" for fn in model_of(case).functions for n in fn.node)
    check(case, run_path(case, path), pools_checked=case.with_present)


OVERLOAD_PARAMS = [pytest.param(o, id=o or "plain") for o in paged.SPEC.overloads]


@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_is_tagged_and_checked(overload: str):
    model = model_of(OVERLOAD_CASES[overload])
    (node,) = ops.onnxattn_nodes(model)
    assert node.overload == overload
    assert [(f.name, f.overload) for f in model.functions] == [(PAGED, overload)]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("overload", OVERLOAD_PARAMS)
def test_every_signature_matches_contiguous(overload: str, path: str):
    case = OVERLOAD_CASES[overload]
    check(case, run_path(case, path), pools_checked=case.with_present or path == "torch")


# ---------------------------------------------------------------------------------------------------------
# Metamorphic: block placement changes nothing, prefix sharing equals separate copies


def _relayout(case_id: str, layout: str, seed: int):
    """The same sequences (same values) placed in the pool another way."""
    case = CASES_BY_ID[case_id]
    problem = problem_of(case_id)
    rng = np.random.default_rng(seed)
    other = make_problem(rng, past=case.past, new=case.new, block_size=case.block_size, q_heads=case.q_heads,
                         kv_heads=case.kv_heads, head_dim=case.head_dim, v_head_dim=case.dv, dtype=case.dtype,
                         layout=layout, spare_blocks=case.spare_blocks + 3, table_extra=case.table_extra + 2)
    feeds = dict(problem.feeds)
    for name in ("key_cache", "value_cache"):
        pool = other.feeds[name]
        flat, src = pool.reshape(-1, *pool.shape[2:]), problem.feeds[name].reshape(-1, *pool.shape[2:])
        for b, (pk, _) in enumerate(problem.pasts):
            p = pk.shape[2]
            flat[other.slots[b][:p]] = src[problem.slots[b][:p]]
        feeds[name] = pool
    feeds["block_table"] = other.feeds["block_table"]
    return feeds, other


@pytest.mark.parametrize("case_id", ["ragged-mixed-b4", "block-size-16", "window-chunk-bs16-float16"])
def test_block_placement_changes_nothing_bitwise(case_id: str):
    """Shuffling the blocks (and the pool's size, the table's width) gives the kernel's output bit for bit."""
    case = CASES_BY_ID[case_id]
    reference = run_kernel(model_of(case), feeds_of(case_id))[0]
    for layout, seed in (("shuffled", 1), ("in-order", 2), ("shuffled", 3)):
        feeds, _ = _relayout(case_id, layout, seed)
        np.testing.assert_array_equal(run_kernel(model_of(case), feeds)[0], reference)


@pytest.mark.parametrize("path", ["kernel", "function-ort", "torch"])
def test_shared_prompt_blocks_equal_separate_copies(path: str):
    """Sequences whose first blocks are the same blocks of the pool give what they give with private copies
    of those blocks, and only their new slots change."""
    case = CASES_BY_ID["shared-prefix-blocks"]
    shared = run_path(case, path)
    check(case, shared, pools_checked=True)
    feeds, _ = _relayout(case.id, "shuffled", 7)  # private copies of everything
    table = feeds["block_table"]
    assert len(set(table[0, :3]) & set(table[1, :3])) == 0
    private = run_paged_torch(feeds, dtype=case.dtype, attrs=case.attrs) if path == "torch" else (
        run_kernel if path == "kernel" else run_function)(model_of(case), feeds)
    np.testing.assert_allclose(shared[0], private[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# In place through I/O binding


@pytest.mark.parametrize("path", ["kernel", "function-ort"])
@pytest.mark.parametrize("case_id", ["ragged-mixed-b4", "block-size-16-float16", "large-decode-bs16-b3"])
def test_pools_updated_in_place_through_io_binding(case_id: str, path: str):
    """The serving setup: each cache output bound to the OrtValue fed as its input. The pool's buffer stays
    the same, only the new tokens' slots change (every other element bit for bit, NaN included), and the
    output is the contiguous one."""
    case = CASES_BY_ID[case_id]
    feeds = feeds_of(case_id)
    model = model_of(case)
    session = kernel_session(model, profile=True) if path == "kernel" else function_session(model)
    pools = {name: ort.OrtValue.ortvalue_from_numpy(feeds[name].copy()) for name in ("key_cache", "value_cache")}
    pointers = {name: value.data_ptr() for name, value in pools.items()}
    binding = session.io_binding()
    for name, value in feeds.items():
        if name in pools:
            binding.bind_ortvalue_input(name, pools[name])
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    binding.bind_output("output")
    binding.bind_ortvalue_output("key_cache_out", pools["key_cache"])
    binding.bind_ortvalue_output("value_cache_out", pools["value_cache"])
    session.run_with_iobinding(binding)
    output = binding.copy_outputs_to_cpu()[0]
    if path == "kernel":
        assert PAGED in kernel_ops_run(session), "the kernel did not run"
    assert {name: value.data_ptr() for name, value in pools.items()} == pointers
    check(case, [output, pools["key_cache"].numpy(), pools["value_cache"].numpy()], pools_checked=True)


@pytest.mark.parametrize("case_id", ["ragged-mixed-b4", "large-mixed-bs16"])
def test_garbage_in_unused_slots_changes_nothing(case_id: str):
    """Whatever unowned slots hold (NaN in the matrix; here huge values, then zeros) the kernel's output is
    the same bit for bit."""
    case = CASES_BY_ID[case_id]
    feeds, problem = dict(feeds_of(case_id)), problem_of(case_id)
    reference = run_kernel(model_of(case), feeds)[0]
    for fill in (1e30, 0.0, -np.inf):
        for name in ("key_cache", "value_cache"):
            pool = np.full_like(feeds_of(case_id)[name], fill)
            flat, src = pool.reshape(-1, *pool.shape[2:]), feeds_of(case_id)[name].reshape(-1, *pool.shape[2:])
            for b, (pk, _) in enumerate(problem.pasts):
                flat[problem.slots[b][: pk.shape[2]]] = src[problem.slots[b][: pk.shape[2]]]
            feeds[name] = pool
        np.testing.assert_array_equal(run_kernel(model_of(case), feeds)[0], reference)


@pytest.mark.parametrize("case_id", ["large-mixed-bs16", "everything"])
def test_kernel_is_bitwise_deterministic_across_runs_and_threads(case_id: str):
    model, feeds = model_of(CASES_BY_ID[case_id]), feeds_of(case_id)
    one, two = kernel_session(model, threads=1, profile=True), kernel_session(model, threads=2)
    reference = one.run(None, feeds)
    assert PAGED in kernel_ops_run(one), "the kernel did not run"
    for outputs in (one.run(None, feeds), two.run(None, feeds), two.run(None, feeds)):
        for x, y in zip(reference, outputs):
            np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------------------
# The kernel's paged decode is the contiguous decode, bit for bit


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("q_heads, kv_heads, head_dim, block_size, dtype, new", [
    (8, 2, 128, 16, "float32", 1), (4, 4, 64, 1, "float32", 1), (8, 1, 64, 64, "bfloat16", 1),
    (8, 2, 128, 3, "float16", 1), (8, 2, 64, 16, "float32", 7), (4, 1, 32, 5, "bfloat16", 11)],
    ids=["decode-bs16", "decode-bs1", "decode-bs64-bf16", "decode-bs3-f16", "chunk-bs16", "chunk-bs5-bf16"])
def test_paged_is_bitwise_the_contiguous_attention(q_heads, kv_heads, head_dim, block_size, dtype, new, isa):
    """GroupQueryAttention's shared-buffer mode over the same keys gives the same bits, for decodes (the
    kernel's narrow tiles) and prefill chunks (wide tiles): the paged kernel cuts its key tiles where the
    contiguous one does (spanning blocks), whatever the block layout."""
    from helpers import gqa_model

    past = (300, 45, 129, 0, 7)
    rng = np.random.default_rng(head_dim + block_size)
    problem = make_problem(rng, past=past, new=(new,) * len(past), block_size=block_size, q_heads=q_heads,
                           kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim, dtype=dtype)
    f = problem.feeds
    attrs = dict(num_heads=q_heads, kv_num_heads=kv_heads, rope=1)
    buffer = max(past) + new
    past_key = np.full((len(past), kv_heads, buffer, head_dim), np.nan, np.float32)
    past_value = past_key.copy()
    for b, (pk, pv) in enumerate(problem.pasts):
        past_key[b, :, : past[b]], past_value[b, :, : past[b]] = pk[0], pv[0]
    rows = lambda x: x.reshape(len(past), new, -1)  # noqa: E731  (packed tokens -> [B, S, .])
    gqa_feeds = dict(query=rows(f["query"]), key=rows(f["key"]), value=rows(f["value"]),
                     past_key=round_to(past_key, dtype), past_value=round_to(past_value, dtype),
                     past_lengths=np.array(past, np.int64))
    with cpu_isa(isa):
        contiguous = run_kernel(gqa_model(["past_key", "past_value", "past_lengths"], dtype=dtype, with_present=True,
                                          attrs=attrs), gqa_feeds)
        paged_out = run_kernel(paged_model(dtype=dtype, with_present=True, attrs=attrs), f)
    np.testing.assert_array_equal(paged_out[0], contiguous[0].reshape(len(past) * new, -1))
    for pool, present in zip(paged_out[1:], contiguous[1:]):
        flat = pool.reshape(-1, kv_heads, head_dim)
        for b in range(len(past)):
            written = slice(past[b], past[b] + new)
            np.testing.assert_array_equal(flat[problem.slots[b][written]], present[b, :, written].transpose(1, 0, 2))
