"""Indexing past 2^31 elements (issue 9, item 6).

Through onnxruntime, on the CPU kernels: ScaledDotProductAttention, GroupQueryAttention (shared buffer, in
place), PagedAttention (pools, in place) and MultiHeadLatentAttention (shared latent cache, in place) over
caches of 2^32+ float16 elements whose element offsets for
the reads and the new token's write lie past 2^32 (large_shapes.py explains why that costs 8 GiB of address
space per cache but only a few MiB of memory). Float32 caches of that size are the same index arithmetic
(offsets are element counts; the byte address is formed from the typed pointer) and would need 16 GiB of
address space per tensor, more than this machine's overcommit heuristic grants next to others.

Host-side: the CUDA launch plan and key ranges for a 2^27-key cache and windows up to INT64_MAX (plain C++
exported for tests, so this runs without a GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from isolate import run_jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
import sdpa_cuda_lib as cuda_lib  # noqa: E402

INT64_MAX = 2**63 - 1
SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")


@pytest.mark.skipif(SANITIZED, reason="AddressSanitizer's allocator would back the 8 GiB caches")
@pytest.mark.parametrize("job", ["sdpa", "gqa", "paged", "mla"])
def test_cache_offsets_past_2_to_the_32(job):
    result = run_jobs("large_shapes", [job], timeout=300)[job]
    if result["outcome"] == "no-memory":
        pytest.skip(result["message"])
    assert result["outcome"] == "ok", result
    assert result["elements"] > 2**32 and result["max_offset"] > 2**32
    assert result["error_ok"], result
    assert result.get("written_in_place", True), "the new token's K/V is not at its slot"


def test_cuda_plan_of_a_2_to_the_27_key_cache():
    spec = cuda_lib.Spec(batch=2, q_heads=32, kv_heads=8, q_len=1, kv_len=2**27, head_dim=128, causal=True)
    plan = cuda_lib.plan(spec)
    assert plan["schedule"] == "decode" and 1 <= plan["splits"] and plan["grid"] > 0
    assert 0 <= plan["scratch_bytes"] < 2**40 and plan["partial_lse_offset"] >= 0
    # per-batch lengths with a huge window: the bound on visible keys is the cache, not window + Sq - 1
    layout = cuda_lib.Layout.of(per_batch_lengths=True)
    huge = cuda_lib.plan(cuda_lib.Spec(**{**spec.__dict__, "window": INT64_MAX}), layout=layout)
    plain = cuda_lib.plan(spec, layout=layout)
    assert huge["splits"] == plain["splits"] and huge["scratch_bytes"] == plain["scratch_bytes"]


@pytest.mark.parametrize("window, band", [(INT64_MAX, 0), (0, INT64_MAX), (INT64_MAX, INT64_MAX - 1)])
def test_key_ranges_with_windows_up_to_int64_max(window, band):
    """More queries than keys put rows at negative key positions: p - window used to wrap."""
    for causal in (0, 1):
        for rows in ((0, 9), (3, 7)):
            got = cuda_lib.tile_keys(causal, window, band, 9, 3, *rows, 1)
            want = cuda_lib.tile_keys(causal, 0, 0, 9, 3, *rows, 1)
            assert got == want, (causal, rows)


@pytest.mark.parametrize("chunk", [INT64_MAX, INT64_MAX - 1, 2**62])
def test_key_ranges_with_chunks_up_to_int64_max(chunk):
    """A chunk end p + (chunk - r) would wrap for a huge chunk; rows at negative key positions sit in the chunk
    before key 0 (floor(p / chunk) = -1), so they see nothing."""
    for causal in (0, 1):
        for rows in ((0, 9), (3, 7), (6, 9)):
            got = cuda_lib.tile_keys(causal, 0, 0, 9, 3, *rows, 1, chunk=chunk)
            first, last = rows[0] - 6, rows[1] - 1 - 6  # key positions of the tile's first and last rows
            # a row at p >= 0 sees [0, p + 1) (causal) or all 3 keys; one at p < 0 none
            ends = [(p + 1 if causal else 3) if p >= 0 else 0 for p in (first, last)]
            begins = [0 if p >= 0 else e for p, e in zip((first, last), ends)]
            any_end = ends[1] if ends[1] > begins[0] else begins[0]
            assert got == ((begins[0], any_end), (begins[1], ends[0])), (causal, rows, got)
