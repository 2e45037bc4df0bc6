"""The host-side arithmetic of the sparse ops' CUDA fast path (sparse/params.h, list_sequence_keys): each
block-sparse selection list becomes one sequence of the attention core's paged path whose keys are the
listed blocks back to back, so its length must count exactly the keys the list's blocks hold inside the row's
structural range — what the CPU kernel's block-sparse core attends to. Checked on the lists our CPU kernel
selects (its `selected_blocks` output) over random configurations, and on hand-made edge cases. Runs without a
GPU through the library's C entry (built in every configuration)."""

from __future__ import annotations

import ctypes
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
import sdpa_cuda_lib  # noqa: E402
import sparse_helpers as sh  # noqa: E402
from helpers import run_kernel  # noqa: E402


@pytest.fixture(scope="module")
def list_keys():
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    fn = lib.OnnxAttnSparseListKeys
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_int64, ctypes.c_int64, ctypes.c_int32, ctypes.c_int64,
                   ctypes.c_int64]  # fmt: skip

    def call(blocks, position, causal, kv_len, block_size):
        arr = (ctypes.c_int32 * max(len(blocks), 1))(*blocks)
        return fn(arr, len(blocks), position, int(causal), kv_len, min(block_size, kv_len))

    return call


def attended(blocks, position, causal, kv_len, block_size) -> int:
    """Keys of the listed blocks inside the row's structural range, as the CPU core's block-sparse tiles see them."""
    bs = min(block_size, kv_len)
    end = min(position + 1, kv_len) if causal else kv_len
    return sum(max(0, min((c + 1) * bs, end) - c * bs) for c in blocks if c >= 0)


@pytest.mark.parametrize("seed", range(40))
def test_lengths_count_the_keys_of_the_cpu_kernels_lists(seed, list_keys):
    rng = np.random.default_rng(seed)
    causal = int(rng.integers(0, 2))
    bs = int(rng.choice([1, 3, 4, 8, 16]))
    skv = int(rng.integers(1, 90))
    sq = int(rng.integers(1, skv + 1)) if causal else int(rng.integers(1, 40))
    hkv = int(rng.choice([1, 2]))
    hq = hkv * int(rng.choice([1, 2, 4]))
    sink, local = int(rng.integers(0, 2)), int(rng.integers(0, 2)) if causal else 0
    attrs = sh.nsa_attrs(block_size=bs, top_blocks=causal + sink + local + int(rng.integers(1, 4)), causal=causal,
                         shared_selection=int(rng.integers(0, 2)), sink_blocks=sink, local_blocks=local)  # fmt: skip
    arrays = dict(Q=rng.standard_normal((1, hq, sq, 8)).astype(np.float32),
                  K=rng.standard_normal((1, hkv, skv, 8)).astype(np.float32),
                  V=rng.standard_normal((1, hkv, skv, 8)).astype(np.float32))  # fmt: skip
    model = sh.one_node_model(sh.NSA, list(arrays), ["Y", "selected_blocks"], attrs=attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lists = run_kernel(model, sh.feeds_in("float32", **arrays))[1]
    checked = 0
    for b, h, i in np.ndindex(*lists.shape[:3]):
        blocks = [int(c) for c in lists[b, h, i]]
        position = i + skv - sq
        got = list_keys(blocks, position, causal, skv, bs)
        assert got == attended(blocks, position, causal, skv, bs), (blocks, position, causal, skv, bs, attrs)
        checked += 1
    assert checked == lists.shape[0] * lists.shape[1] * lists.shape[2]


def test_edge_cases(list_keys):
    assert list_keys([-1, -1], 5, True, 10, 4) == 0  # an empty list
    assert list_keys([0, 1, 2], 9, True, 10, 4) == 10  # the own block ends at the position: 8 + 2 keys
    assert list_keys([2], 8, True, 10, 4) == 1  # only the own block, its first key
    assert list_keys([0, 2], 100, False, 10, 4) == 4 + 2  # non-causal: the partial last block's 2 keys
    assert list_keys([0], 3, True, 3, 8) == 3  # a block longer than the keys holds them all (block size -> Skv)
    assert list_keys([0, 1], -1, True, 10, 4) == 4  # more queries than keys: nothing visible in the last block
