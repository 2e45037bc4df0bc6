"""The PagedAttention GPU test matrix as data, its inputs (random paged problems from tests/paged_problems.py:
shuffled blocks, NaN in every slot no sequence owns, garbage table entries past each sequence's blocks),
the contiguous float64 oracle (the GroupQueryAttention numpy oracle per sequence) and the tolerance rule.
Needs numpy and ml_dtypes, not torch or a GPU, so the rule itself is checked on the CPU kernel too
(tests/test_paged_cuda_host.py runs cases through onnxruntime's CPU EP).

Tolerance (STYLE.md #10), as in tests/test_paged_numerics.py: float32 1e-5 absolute + 1e-5 relative + 4x
the error of the oracle run in float32; float16/bfloat16 2x the error of the oracle run in that type plus
one unit in the last place of max(1, max|Y|); new pool entries within 1e-5 + 4x the plain float32 error
(plus one ulp of themselves for 16-bit types); every other pool element, NaN included, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared numpy problems and oracle
from paged_problems import add_optional_inputs, contiguous_oracle, make_problem, round_to  # noqa: E402

DTYPES = ("float16", "bfloat16", "float32")
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
INPUTS = ("query", "key", "value", "key_cache", "value_cache", "block_table", "cu_seqlens_q", "seq_lens",
          "position_ids", "q_norm_weight", "k_norm_weight", "rope_inv_freq", "sinks")
T_INPUTS = ("query", "key", "value", "key_cache", "value_cache", "q_norm_weight", "k_norm_weight", "sinks")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    past: tuple[int, ...] = (5, 12, 0)  # per sequence: keys already cached
    new: tuple[int, ...] = (1, 1, 4)  # per sequence: new tokens (packed in this order)
    block_size: int = 16
    layout: str = "shuffled"  # "in-order", "shuffled", "shared-prefix" (paged_problems.make_problem)
    spare_blocks: int = 2
    table_extra: int = 1
    q_heads: int = 8
    kv_heads: int = 2
    head_dim: int = 128
    v_head_dim: int | None = None
    positions: str | None = None  # None or "shifted"
    q_norm: bool = False
    k_norm: bool = False
    qk_norm_epsilon: float = 1e-6
    inv_freq: str | None = None  # None, "linear4", "custom"
    causal: int = 1
    window: int = 0
    attention_chunk: int = 0  # > 0: Llama 4's chunked attention
    softcap: float = 0.0
    scale: float = 0.0
    rope: int = 1
    rope_base: float = 10000.0
    rotary_dim: int = 0
    rope_interleaved: int = 0
    rope_attention_scaling: float = 1.0
    sinks: bool = False  # attention-sink logits per query head (GPT-OSS): the ragged core's LSE by packed row
    with_present: bool = True

    def __str__(self) -> str:
        return self.id

    @property
    def dv(self) -> int:
        return self.head_dim if self.v_head_dim is None else self.v_head_dim

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(num_heads=self.q_heads, kv_num_heads=self.kv_heads, causal=self.causal, window=self.window,
                    attention_chunk=self.attention_chunk, softcap=self.softcap, scale=self.scale, rope=self.rope,
                    rope_base=self.rope_base,
                    rotary_dim=self.rotary_dim, rope_interleaved=self.rope_interleaved,
                    rope_attention_scaling=self.rope_attention_scaling, qk_norm_epsilon=self.qk_norm_epsilon)

    @property
    def tokens(self) -> int:
        return sum(self.new)


CASES = [
    # decode batches (the split-KV launch), block sizes 1 / 16 / 64, partially filled last blocks
    Case("decode-b4-bs16", past=(100, 37, 300, 5), new=(1, 1, 1, 1)),
    Case("decode-bs1", past=(40, 3, 77), new=(1, 1, 1), block_size=1, head_dim=64),
    Case("decode-bs64", past=(130, 63, 0), new=(1, 1, 1), block_size=64),
    Case("decode-in-order", past=(33, 70), new=(1, 1), layout="in-order"),
    Case("decode-gqa-mqa", past=(90, 17), new=(1, 1), q_heads=8, kv_heads=1),
    Case("decode-long-splits", past=(5000, 1200), new=(1, 1), q_heads=8, kv_heads=1, head_dim=64),
    # speculative / short chunks: still the decode class (<= 16 new tokens)
    Case("decode-class-chunks", past=(50, 0, 9), new=(16, 3, 2)),
    # prefill chunks mixed with decodes in one call (both launches), sequences without new tokens
    Case("mixed-chunks-decodes", past=(0, 50, 200, 7, 0), new=(40, 1, 1, 17, 1)),
    Case("mixed-empty-sequences", past=(0, 3, 25, 0), new=(0, 20, 0, 1)),
    Case("prefill-long-chunk", past=(300,), new=(130,), block_size=16),
    Case("prefill-two-prompts", past=(0, 0), new=(70, 33), block_size=64),
    Case("chunk-bs1", past=(20, 3), new=(18, 1), block_size=1, head_dim=64),
    # windows: decode and chunks
    Case("window-decode", past=(500, 40), new=(1, 1), window=64),
    Case("window-mixed", past=(60, 300), new=(30, 1), window=33),
    # structure and scores
    Case("bidirectional", past=(20, 0), new=(3, 25), causal=0, rope=0),
    Case("softcap-scale", past=(40, 9), new=(1, 20), scale=0.05, softcap=3.0),
    # RoPE and QK-norm (K in the new-token kernel, Q in the core's Q load)
    Case("rope-qk-norm-positions", past=(30, 4), new=(1, 19), q_norm=True, k_norm=True, positions="shifted"),
    Case("rope-partial-interleaved", past=(12, 0), new=(2, 21), rotary_dim=64, rope_interleaved=1,
         inv_freq="custom"),
    Case("rope-scaled", past=(700,), new=(1,), inv_freq="linear4", rope_attention_scaling=1.25),
    # head sizes: Dv != D, D = 256, D = 12 (rows not 16-byte: the simple kernel)
    Case("dv-ne-d", past=(20, 5), new=(1, 18), head_dim=128, v_head_dim=64),
    Case("d256", past=(40, 3), new=(1, 17), q_heads=4, kv_heads=2, head_dim=256),
    Case("d12-simt", past=(9, 30), new=(1, 20), q_heads=4, kv_heads=2, head_dim=12, block_size=4),
    # prefix sharing: the first blocks belong to two sequences (read-only for both)
    Case("shared-prefix", past=(48, 48, 48), new=(1, 2, 20), layout="shared-prefix"),
    # without the pool outputs: the node writes into scratch copies
    Case("no-present", past=(40, 9), new=(1, 18), with_present=False),
    Case("everything", past=(35, 0, 9), new=(1, 24, 2), q_heads=6, kv_heads=2, head_dim=64, positions="shifted",
         q_norm=True, k_norm=True, inv_freq="custom", rotary_dim=40, window=20, softcap=3.0, block_size=8),
    # attention sinks: decode rows (split-KV: the combine writes the LSE) and prefill chunks in one batch
    Case("sinks-mixed", past=(3000, 0, 40), new=(1, 40, 3), head_dim=64, window=128, sinks=True),
    Case("sinks-decode-split-b4", past=(2000, 5, 700, 1), new=(1, 1, 1, 1), sinks=True),
    Case("sinks-simt-d12", past=(9, 30), new=(1, 20), q_heads=4, kv_heads=2, head_dim=12, block_size=4, sinks=True),
    # chunked attention (Llama 4) on a mixed batch: a split decode row, a prefill crossing a chunk boundary
    Case("attn-chunk-mixed", past=(3000, 0, 40), new=(1, 70, 3), head_dim=64, attention_chunk=64),
]
CASES_BY_ID = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "case ids must be unique"


def _seed(text: str) -> int:
    return zlib.crc32(text.encode())


@functools.lru_cache(maxsize=None)
def problem(case_id: str, dtype: str):
    case = CASES_BY_ID[case_id]
    rng = np.random.default_rng(_seed(f"{case_id}/{dtype}"))
    p = make_problem(rng, past=case.past, new=case.new, block_size=case.block_size, q_heads=case.q_heads,
                     kv_heads=case.kv_heads, head_dim=case.head_dim, v_head_dim=case.dv, dtype=dtype,
                     layout=case.layout, spare_blocks=case.spare_blocks, table_extra=case.table_extra)
    add_optional_inputs(rng, p, positions=case.positions, q_norm=case.q_norm, k_norm=case.k_norm,
                        inv_freq=case.inv_freq, head_dim=case.head_dim, rotary_dim=case.rotary_dim,
                        rope_base=case.rope_base, dtype=dtype, sinks=case.q_heads if case.sinks else 0)
    return p


def feeds(case_id: str, dtype: str) -> dict[str, np.ndarray]:
    """The op's inputs (16-bit floats as float16 / float32 holding bfloat16 values, as the CPU tests)."""
    return problem(case_id, dtype).feeds


def _low_precision(dtype: str):
    if dtype == "float16":
        return np.float16
    import ml_dtypes

    return ml_dtypes.bfloat16


@functools.lru_cache(maxsize=None)
def expected(case_id: str, dtype: str):
    """(oracle outputs (Y, key pool, value pool) in float64, output tolerance, new-entry tolerance)."""
    case = CASES_BY_ID[case_id]
    p = problem(case_id, dtype)
    store = None if dtype == "float32" else (lambda x: round_to(x, dtype).astype(np.float64))
    ref = contiguous_oracle(p, case.attrs, store=store)
    compute = np.float32 if dtype == "float32" else _low_precision(dtype)
    low = contiguous_oracle(p, case.attrs, store=store, compute=compute)
    err = lambda got, want: float(np.nanmax(np.abs(np.asarray(got, np.float64) - want), initial=0.0))  # noqa: E731
    y_max = float(np.abs(ref[0]).max(initial=0.0))
    if dtype == "float32":
        y_tol = 1e-5 + 1e-5 * y_max + 4 * err(low[0], ref[0])
        pool_tol = 1e-5 + 4 * max(err(low[1], ref[1]), err(low[2], ref[2]))
    else:
        exact, f32 = contiguous_oracle(p, case.attrs), contiguous_oracle(p, case.attrs, compute=np.float32)
        y_tol = max(2 * err(low[0], ref[0]) + EPS[dtype] * max(1.0, y_max), 1e-5 + 1e-5 * y_max)
        pool_tol = 1e-6 + 4 * max(err(f32[1], exact[1]), err(f32[2], exact[2]))
    return ref, y_tol, pool_tol


def new_slot_mask(case_id: str, dtype: str, skip=()) -> np.ndarray:
    """[num_blocks, block_size, Hkv] True at the slots the call writes (sequences in `skip` write none)."""
    p = problem(case_id, dtype)
    shape = p.feeds["key_cache"].shape[:3]
    new = np.zeros(shape, dtype=bool)
    for b, (pk, _) in enumerate(p.pasts):
        if b not in skip:
            new.reshape(-1, shape[2])[p.slots[b][pk.shape[2]:]] = True
    return new


def check(case: Case, dtype: str, output, key_pool=None, value_pool=None, *, context: str = "") -> None:
    """Output (and, when given, the pools) against the contiguous oracle; arrays as float64 numpy."""
    (y_ref, k_ref, v_ref), y_tol, pool_tol = expected(case.id, dtype)
    y = np.asarray(output, dtype=np.float64)
    assert y.shape == y_ref.shape, f"{context}: output shape {y.shape}, expected {y_ref.shape}"
    assert not np.isnan(y).any(), f"{context}: NaN in the output (an unowned slot or garbage block was read)"
    err = float(np.abs(y - y_ref).max(initial=0.0))
    assert err <= y_tol, f"{context}: max |output - contiguous oracle| = {err:.3g} > {y_tol:.3g}"
    if key_pool is None:
        return
    new = new_slot_mask(case.id, dtype)
    rtol = 1e-5 if dtype == "float32" else EPS[dtype]
    for name, got, ref in (("key pool", key_pool, k_ref), ("value pool", value_pool, v_ref)):
        got = np.asarray(got, dtype=np.float64)
        assert got.shape == ref.shape, f"{context}: {name} shape {got.shape}, expected {ref.shape}"
        np.testing.assert_array_equal(got[~new], ref[~new], err_msg=f"{context}: {name}: a slot besides the new ones changed")
        np.testing.assert_allclose(got[new], ref[new], atol=pool_tol, rtol=rtol, err_msg=f"{context}: {name}")


# ---- bad index inputs (the CUDA kernel's contract: paged/cuda_plan.h). Per sequence: (the failing
# sequence, the change to the feeds of FAULT_BASE); per call: a cu_seqlens_q that is not a partition.
FAULT_BASE = "mixed-chunks-decodes"  # past (0, 50, 200, 7, 0), new (40, 1, 1, 17, 1)
SEQUENCE_FAULTS = {
    "block-past-the-pool": (1, lambda f: f["block_table"].__setitem__((1, 0), f["key_cache"].shape[0] + 3)),
    "block-huge": (2, lambda f: f["block_table"].__setitem__((2, 12), 1 << 30)),
    "block-negative": (0, lambda f: f["block_table"].__setitem__((0, 2), -1)),
    "length-past-capacity": (4, lambda f: f["seq_lens"].__setitem__(4, f["block_table"].shape[1] * 16 + 1)),
    "length-below-new-tokens": (3, lambda f: f["seq_lens"].__setitem__(3, 16)),
    "negative-length": (2, lambda f: f["seq_lens"].__setitem__(2, -5)),
}
CALL_FAULTS = {
    "cu-decreasing": lambda f: f["cu_seqlens_q"].__setitem__(2, 45),
    "cu-not-from-0": lambda f: f["cu_seqlens_q"].__setitem__(0, 1),
    "cu-past-the-rows": lambda f: f["cu_seqlens_q"].__setitem__(5, 61),
    "cu-short-of-the-rows": lambda f: f["cu_seqlens_q"].__setitem__(5, 59),
}


def faulty(fault) -> dict:
    f = {n: np.array(x, copy=True) for n, x in feeds(FAULT_BASE, "float16").items()}
    fault(f)
    return f


def spec(case: Case, dtype: str):
    """The paged_cuda_lib.Spec of a case (imported lazily: the ctypes binding needs the library)."""
    import paged_cuda_lib as lib

    f = feeds(case.id, dtype)
    kc = f["key_cache"]
    return lib.Spec(tokens=case.tokens, batch=len(case.new), q_heads=case.q_heads, kv_heads=case.kv_heads,
                    head_dim=case.head_dim, v_head_dim=case.dv, num_blocks=kc.shape[0], block_size=kc.shape[1],
                    max_blocks=f["block_table"].shape[1], position_ids="position_ids" in f,
                    q_norm="q_norm_weight" in f, k_norm="k_norm_weight" in f, inv_freq="rope_inv_freq" in f,
                    sinks="sinks" in f,
                    causal=case.causal, window=case.window, attention_chunk=case.attention_chunk,
                    softcap=case.softcap, scale=case.scale, rope=case.rope,
                    rope_base=case.rope_base, rotary_dim=case.rotary_dim, rope_interleaved=case.rope_interleaved,
                    rope_attention_scaling=case.rope_attention_scaling, qk_norm_epsilon=case.qk_norm_epsilon,
                    dtype={"float16": lib.FLOAT16, "bfloat16": lib.BFLOAT16, "float32": lib.FLOAT32}[dtype])


def model(case: Case, dtype: str) -> bytes:
    """A one-node model of the case (tests/paged_helpers.paged_model: bfloat16 through Cast nodes)."""
    from paged_helpers import paged_model

    present = [n for n in INPUTS[8:] if n in feeds(case.id, dtype)]
    return paged_model(present, dtype=dtype, with_present=case.with_present, attrs=case.attrs).SerializeToString()
