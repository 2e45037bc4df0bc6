"""The host-side arithmetic of the sparse ops' CUDA fast path. (1) sparse/params.h, list_sequence_keys: each
block-sparse selection list becomes one sequence of the attention core's paged path whose keys are the
listed blocks back to back, so its length must count exactly the keys the list's blocks hold inside the row's
structural range — what the CPU kernel's block-sparse core attends to. Checked on the lists our CPU kernel
selects (its `selected_blocks` output) over random configurations, and on hand-made edge cases. (2)
sparse/cuda_sizes.h: the tiled selection's and fine branch's shared memory within their budget, and the routed
by-segment path's shared memory, scratch and int32 limits. (3) The latency switches as the plans read them: async
loads and the redux argmax unless told otherwise. Runs without a GPU through the library's C entries (built in every
configuration)."""

from __future__ import annotations

import ctypes
import math
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


# ---- the CUDA kernels' sizing (sparse/cuda_sizes.h), restated as the contract
SELECT_BUDGET = 96 << 10
H100_SMEM, A100_SMEM = 232448, 166912


@pytest.fixture(scope="module")
def sizes():
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    out = (ctypes.c_int64 * 4)()
    lib.OnnxAttnSparseSelectTiling.argtypes = [ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_int64,
                                               ctypes.c_int64, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p]  # fmt: skip
    lib.OnnxAttnSparseFineTiling.argtypes = [ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p]
    lib.OnnxAttnSparseRoutedBlocks.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int32,
                                               ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]  # fmt: skip
    lib.OnnxAttnSparseBlocksMma.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_int32] * 3 + [ctypes.c_void_p]
    lib.OnnxAttnSparseSelectSplitTiling.argtypes = [ctypes.c_int32] + [ctypes.c_int64] * 3 + [ctypes.c_int32,
                                                                                              ctypes.c_void_p]
    lib.OnnxAttnSparseSelectMmaTiling.argtypes = [ctypes.c_int32, ctypes.c_int32] + [ctypes.c_int64] * 3 + [
        ctypes.c_int32, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p]  # fmt: skip
    lib.OnnxAttnSparseQueryTiles.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_int32] * 3 + [ctypes.c_void_p]

    class Sizes:
        @staticmethod
        def select(dim, v_dim, centroids, blocks, top, probabilities, heads):
            lib.OnnxAttnSparseSelectTiling(dim, v_dim, centroids, blocks, top, int(probabilities), heads, out)
            return tuple(out[:3])

        @staticmethod
        def fine(dim, top):
            lib.OnnxAttnSparseFineTiling(dim, top, out)
            return tuple(out[:2])

        @staticmethod
        def routed(rows, top_k, keys, dim, v_dim, max_smem=H100_SMEM):
            lib.OnnxAttnSparseRoutedBlocks(rows, top_k, keys, dim, v_dim, max_smem, out)
            return bool(out[0]), out[1], out[2]

        @staticmethod
        def select_split(dim, centroids, blocks, top, max_smem=H100_SMEM):
            lib.OnnxAttnSparseSelectSplitTiling(dim, centroids, blocks, top, max_smem, out)
            return tuple(out[:3])

        @staticmethod
        def select_mma(dim, v_dim, centroids, blocks, top, probabilities, heads, max_smem=H100_SMEM):
            lib.OnnxAttnSparseSelectMmaTiling(dim, v_dim, centroids, blocks, top, int(probabilities), heads, max_smem,
                                              out)  # fmt: skip
            return tuple(out[:3])

        @staticmethod
        def blocks_mma(lists, heads_per_list, out_rows, top_k, keys, dim, v_dim, max_smem=H100_SMEM):
            lib.OnnxAttnSparseBlocksMma(lists, heads_per_list, out_rows, top_k, keys, dim, v_dim, max_smem, out)
            return bool(out[0]), out[1], out[2], out[3]

        @staticmethod
        def query_tiles(batch, list_heads, q_len, heads_per_list, top_k, blocks, dim, v_dim, max_smem=H100_SMEM):
            lib.OnnxAttnSparseQueryTiles(batch, list_heads, q_len, heads_per_list, top_k, blocks, dim, v_dim, max_smem,
                                         out)  # fmt: skip
            return bool(out[0]), out[1], out[2], out[3]

    return Sizes


def test_tiled_selection_fits_its_budget_and_keeps_whole_queries(sizes):
    rng = np.random.default_rng(5)
    for _ in range(400):
        dim, v_dim = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        centroids, blocks = int(rng.integers(0, 5000)), int(rng.integers(0, 5000))
        top, probabilities, heads = int(rng.integers(0, 40)), bool(rng.integers(0, 2)), int(rng.integers(1, 20))
        queries, rows_per_query, smem = sizes.select(dim, v_dim, centroids, blocks, top, probabilities, heads)
        width = (max(dim, v_dim) + 1) | 1
        fixed = (dim * 16 + 32 * width) * 4 + 4 * max(top, 0) * 4
        if dim > 256 or v_dim > 256 or heads > 16 or (top < 1 and not probabilities) or fixed >= SELECT_BUDGET:
            assert queries == 0, (dim, v_dim, heads, top, probabilities)
            continue
        if queries == 0:  # not even one query's rows fit
            assert fixed + heads * max(centroids, blocks) * 4 > SELECT_BUDGET
            continue
        assert rows_per_query == heads and 1 <= queries * heads <= 16
        assert smem == fixed + queries * heads * max(centroids, blocks) * 4 <= SELECT_BUDGET
        # as many whole queries as fit (up to 16 rows)
        more = (queries + 1) * heads
        assert more > 16 or fixed + more * max(centroids, blocks) * 4 > SELECT_BUDGET


@pytest.mark.parametrize("top", [0, 1, 15, 16, 17, 100, 496, 497, 2000])
def test_fine_capacity_is_a_power_of_two_with_room_for_a_tile(sizes, top):
    capacity, smem = sizes.fine(128, top)
    if 2 * top + 32 > 1024:
        assert capacity == 0 and smem == 0
        return
    # the smallest power of two from 64 up that holds 2 top + 32 entries
    assert capacity & (capacity - 1) == 0 and capacity >= max(64, 2 * top + 32)
    assert capacity == 64 or capacity // 2 < 2 * top + 32
    assert smem == (128 * 16 + 32 * 129) * 4 + 16 * capacity * 8 + 16 * 8


def test_routed_by_segment_sizes_and_limits(sizes):
    def smem(d, dv):
        return (32 * d + 64 * (d + 1) + 64 * dv + 32 * dv + 64) * 4 + 64 * 4 + 32 * 8

    def a256(n):
        return -(-n // 256) * 256

    ok, shared, scratch = sizes.routed(rows=16 * 65536, top_k=16, keys=16 * 16 * 1024, dim=128, v_dim=128)
    assert ok and shared == smem(128, 128) == 99328
    keys, rows = 16 * 16 * 1024, 16 * 65536
    assert scratch == 2 * a256(keys * 4) + 2 * a256((keys + 1) * 4) + a256(rows * 16 * 4) + 2 * a256(rows * 4)
    assert sizes.routed(1, 1, 1, 256, 256)[0] and not sizes.routed(1, 1, 1, 257, 256)[0]
    assert not sizes.routed(1, 1, 1, 64, 257)[0] and not sizes.routed(1, 1, 1, 0, 64)[0]
    assert not sizes.routed(0, 1, 1, 64, 64)[0] and not sizes.routed(1, 0, 1, 64, 64)[0]
    assert sizes.routed(1, 1, 1, 256, 256, max_smem=H100_SMEM)[0]
    assert not sizes.routed(1, 1, 1, 256, 256, max_smem=A100_SMEM)[0]  # 197,632 bytes at D = Dv = 256
    # int32 list entries and keys
    # int32 scans: entries + min(keys, entries) chunks at most
    assert sizes.routed((2**31 - 1 - 1000) // 16 - 1, 16, 1000, 64, 64)[0]
    assert not sizes.routed((2**31 - 1 - 1000) // 16 + 1, 16, 1000, 64, 64)[0]
    assert not sizes.routed((2**31 - 1) // 16, 16, 1000, 64, 64)[0]
    assert not sizes.routed(1000, 4, 2**31 - 2, 64, 64)[0]
    assert not sizes.routed(2**62, 2**4, 10, 64, 64)[0]  # no overflow into a small product


def test_tensor_core_blocks_sizes_and_limits(sizes):
    """The tensor-core attention by block (ONNXATTN_SPARSE_CUDA=mma): 64 rows per CTA made of whole lists, 16-bit
    Q / K / V tiles with rows padded by 8 elements, head sizes multiples of 16 up to 256, int32 entries."""

    def smem(d, dv):
        return (64 * (d + 8) * 2 + 64 * (dv + 8)) * 2 + 64 * 16

    def a256(n):
        return -(-n // 256) * 256

    # NSA at S = 64k, 16 / 2 heads, shared lists (8 rows each): 8 lists per chunk
    lists, keys, rows = 2 * 65536, 16 * 2 * 1024, 16 * 65536
    ok, shared, per_chunk, scratch = sizes.blocks_mma(lists, 8, rows, 16, keys, 128, 128)
    assert ok and shared == smem(128, 128) == 53248 and per_chunk == 8
    assert scratch == 2 * a256(keys * 4) + 2 * a256((keys + 1) * 4) + a256(lists * 16 * 4) + 2 * a256(rows * 4)
    assert sizes.blocks_mma(1, 1, 1, 1, 1, 64, 64)[2] == 64 and sizes.blocks_mma(1, 3, 3, 1, 1, 64, 64)[2] == 21
    assert sizes.blocks_mma(1, 64, 64, 1, 1, 64, 64)[0] and not sizes.blocks_mma(1, 65, 65, 1, 1, 64, 64)[0]
    # the routed form sizes its scratch as the segment kernel does
    assert sizes.blocks_mma(4096, 1, 4096, 8, 9999, 64, 64)[3] == sizes.routed(4096, 8, 9999, 64, 64)[2]
    for d, dv, good in ((16, 16, True), (256, 256, True), (8, 16, False), (24, 16, False), (272, 64, False),
                        (64, 40, False), (64, 0, False)):
        assert sizes.blocks_mma(1, 1, 1, 1, 1, d, dv)[0] == good, (d, dv)
    assert sizes.blocks_mma(1, 1, 1, 1, 1, 256, 256, max_smem=A100_SMEM)[0]  # 102,400 bytes
    assert not sizes.blocks_mma(1, 1, 1, 1, 1, 256, 256, max_smem=99 << 10)[0]
    assert not sizes.blocks_mma(0, 1, 1, 1, 1, 64, 64)[0] and not sizes.blocks_mma(1, 1, 1, 0, 1, 64, 64)[0]
    assert sizes.blocks_mma((2**31 - 1 - 1000) // 16 - 1, 1, 1, 16, 1000, 64, 64)[0]
    assert not sizes.blocks_mma((2**31 - 1 - 1000) // 16 + 1, 1, 1, 16, 1000, 64, 64)[0]
    assert not sizes.blocks_mma((2**31 - 1) // 16, 1, 1, 16, 1000, 64, 64)[0]
    assert not sizes.blocks_mma(1000, 1, 1, 4, 2**31 - 2, 64, 64)[0]


def test_query_tile_sizes_and_limits(sizes):
    """The attention by query tiles (ONNXATTN_SPARSE_CUDA_BLOCKS=queries): whole lists of up to 64 rows per CTA, Q's
    16-bit rows and two stages of key and value tiles (rows padded by 8 elements), then the tile's lists (int32);
    the tensor-core kernel's head sizes, block indices within int32, the CTAs within one launch."""

    def smem(d, dv, per_list, top):
        return (64 * (d + 8) + 2 * 64 * (d + 8 + dv + 8)) * 2 + (64 // per_list) * top * 4

    # NSA at S = 64k, 16 / 2 heads, shared lists of 8 rows, 16 blocks of 1024: 8 lists per tile, two CTAs per SM
    ok, shared, per_tile, grid = sizes.query_tiles(1, 2, 65536, 8, 16, 1024, 128, 128)
    assert ok and per_tile == 8 and shared == smem(128, 128, 8, 16) == 87552 and 2 * shared <= H100_SMEM
    assert grid == 2 * 65536 // 8
    # routed: one row per list, 64 lists per tile
    assert sizes.query_tiles(1, 16, 65536, 1, 16, 1024, 128, 128)[1:] == (smem(128, 128, 1, 16), 64, 16 * 1024)
    # a decode step: one CTA per (batch, list head), too few to fill a GPU (the plan keeps the inverted lists then)
    assert sizes.query_tiles(3, 2, 1, 8, 16, 64, 128, 128)[3] == 6
    assert sizes.query_tiles(1, 2, 9, 8, 16, 64, 128, 128)[3] == 4  # 9 queries in tiles of 8: 2 a head
    assert sizes.query_tiles(1, 1, 1, 64, 1, 1, 64, 64)[0] and not sizes.query_tiles(1, 1, 1, 65, 1, 1, 64, 64)[0]
    for d, dv, good in ((16, 16, True), (256, 256, True), (8, 16, False), (24, 16, False), (272, 64, False),
                        (64, 40, False), (64, 0, False)):
        assert sizes.query_tiles(1, 1, 1, 1, 1, 1, d, dv)[0] == good, (d, dv)
    assert smem(256, 256, 8, 16) > A100_SMEM and not sizes.query_tiles(1, 1, 1, 8, 16, 1, 256, 256, A100_SMEM)[0]
    assert sizes.query_tiles(1, 1, 1, 8, 16, 1, 256, 256)[0]  # on the H100
    assert not sizes.query_tiles(1, 1, 1, 1, 1024, 1, 128, 128)[0]  # 64 lists of 1024 entries: 256 KiB
    # lists of at most 256 entries (each sorted by one thread): 64 heads share one list of 256, not of 257
    assert sizes.query_tiles(1, 1, 1, 64, 256, 1, 128, 128)[0]
    assert not sizes.query_tiles(1, 1, 1, 64, 257, 1, 128, 128)[0]
    for zero in range(6):  # an empty problem (or no list entries, no blocks) is not this kernel's
        args = [1, 1, 1, 1, 1, 1]
        args[zero] = 0
        assert not sizes.query_tiles(*args, 64, 64)[0], zero
    assert not sizes.query_tiles(1, 1, 1, 1, 4097, 1, 16, 16)[0]
    assert not sizes.query_tiles(1, 1, 1, 1, 1, 2**31 - 1, 64, 64)[0]
    assert sizes.query_tiles(1, 1, (2**31 - 1) * 64, 1, 1, 1, 64, 64)[0]  # 2^31 - 1 CTAs
    assert not sizes.query_tiles(1, 1, (2**31 - 1) * 64 + 1, 1, 1, 1, 64, 64)[0]
    assert not sizes.query_tiles(2**40, 2**40, 1, 1, 1, 1, 64, 64)[0]  # no overflow into a small product


def test_query_tiles_walk_each_list_in_ascending_order_once():
    """A query tile walks the union of its lists by merging them (cuda_blocks_mma.cu next_step), so each list must
    be ascending with each block once, then the end marker (kNoBlock): normalize_block_list on the selection's lists
    (-1 for none), and on anything else (out of range, repeats, any order)."""
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    fn = lib.OnnxAttnSparseNormalizeBlockList
    fn.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_int32, ctypes.c_int64]
    no_block = 2**31 - 1
    rng = np.random.default_rng(5)
    for trial in range(400):
        top, blocks = int(rng.integers(1, 40)), int(rng.integers(1, 70))
        entries = rng.integers(-3, blocks + 3, top).astype(np.int32)
        if trial % 3 == 0:  # as the selection writes them: distinct blocks, then -1
            valid = int(rng.integers(0, min(top, blocks) + 1))
            entries[:] = -1
            entries[:valid] = rng.permutation(blocks)[:valid]
        got = entries.copy()
        fn(got.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), top, blocks)
        want = sorted({int(x) for x in entries if 0 <= x < blocks})
        assert got.tolist() == want + [no_block] * (top - len(want)), (trial, entries.tolist())


def test_tensor_core_selection_sizes_and_limits(sizes):
    """The selection on tensor cores: kMmaRows = 64 rows of whole queries per CTA; 16-bit Q, key tiles (two for
    dot scores: hi and lo), a value tile for the compression branch, a [64][65] float score tile, each query's
    keys, each warp's chosen blocks."""

    def smem(d, dv, queries, stride, top, probabilities):
        halves = 64 * (d + 8) * (2 if probabilities else 3) + (64 * (dv + 8) if probabilities else 0)
        return halves * 2 + 64 * 65 * 4 + queries * stride * 4 + 4 * top * 4

    # NSA at S = 64k: 1024 blocks, G = 8 (8 queries per CTA), dot scores and the compression branch
    assert sizes.select_mma(128, 128, 1024, 1024, 16, False, 8) == (8, 8, smem(128, 0, 8, 1024, 16, False))
    assert sizes.select_mma(128, 128, 1024, 1025, 16, True, 8) == (8, 8, smem(128, 128, 8, 1025, 16, True))
    assert sizes.select_mma(64, 64, 100, 100, 4, False, 1)[:2] == (64, 1)  # one row per list: 64 queries
    assert sizes.select_mma(64, 64, 100, 100, 4, False, 64)[:2] == (1, 64)
    assert sizes.select_mma(64, 64, 100, 100, 4, False, 65)[0] == 0
    # the keys must fit: one row per list at 1024 blocks is 256 KiB of keys
    assert sizes.select_mma(128, 128, 1024, 1024, 16, False, 1)[0] == 0
    assert sizes.select_mma(128, 128, 4096, 4096, 16, False, 16, max_smem=A100_SMEM)[0] == 4
    assert sizes.select_mma(128, 128, 4096, 4096, 16, False, 8, max_smem=A100_SMEM)[0] == 0
    for d, dv, probabilities, good in ((16, 16, True, True), (256, 256, True, True), (24, 16, False, False),
                                       (64, 40, True, False), (64, 40, False, True), (272, 64, False, False)):
        assert (sizes.select_mma(d, dv, 10, 10, 2, probabilities, 4)[0] > 0) == good, (d, dv, probabilities)
    assert sizes.select_mma(64, 64, 10, 10, 0, False, 4)[0] == 0  # dot scores without a list to pick
    assert sizes.select_mma(64, 64, 10, 10, 0, True, 4)[0] == 16  # the compression branch alone


def test_one_row_per_list_selection_sizes_and_limits(sizes):
    """The routing on tensor cores (one row per list): 16 queries per CTA, Q's hi and lo tiles, two tiles of 32
    centroids per warp, the 16 queries' keys, each warp's chosen blocks."""

    def smem(d, stride, top):
        return (d + 8) * (2 * 16 + 2 * 32 * 4) * 2 + 16 * stride * 4 + 4 * top * 4

    # SparseRoutedAttention at S = 64k: 1024 segments, top 16 (A100 and H100); where 64 queries of keys do not fit
    assert sizes.select_split(128, 1024, 1024, 16) == (16, 1, smem(128, 1024, 16))
    assert sizes.select_split(128, 1024, 1024, 16, max_smem=A100_SMEM)[0] == 16
    assert sizes.select_mma(128, 128, 1024, 1024, 16, False, 1)[0] == 0
    assert sizes.select_split(128, 2048, 2048, 16)[0] == 16 and sizes.select_split(128, 2048, 2048, 16,
                                                                                   max_smem=A100_SMEM)[0] == 0
    for d, good in ((16, True), (256, True), (8, False), (24, False), (272, False)):
        assert (sizes.select_split(d, 10, 10, 2)[0] > 0) == good, d
    assert sizes.select_split(64, 10, 10, 0)[0] == 0  # dot scores need a list to pick


def test_the_overlapped_block_kernels_search_finds_the_binary_searchs_key():
    """blocks_mma_overlapped_kernel finds its CTA's key by a warp's 32 probes a round (sparse/cuda_sizes.h
    find_key_step, find_key_narrow; the C entry replays the probes one by one): it must land on the key the other
    kernel's binary search finds, the one whose chunk range holds the CTA's chunk, across runs of empty keys and in
    a slot's range [k0, k0 + n), in at most ceil(log32 n) rounds."""
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    fn = lib.OnnxAttnSparseFindKey
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.POINTER(ctypes.c_int32), ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.POINTER(ctypes.c_int32)]  # fmt: skip
    rng = np.random.default_rng(7)
    for n in (1, 2, 31, 32, 33, 100, 512, 1023, 1025, 4096, 70000):
        k0 = int(rng.integers(0, 50))
        counts = rng.integers(1, 4, k0 + n + 5) * (rng.random(k0 + n + 5) < 0.4)  # ~60% of the keys empty
        counts[k0 + int(rng.integers(0, n))] += 1  # the slot holds at least one chunk
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        ptr = offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        first, end = int(offsets[k0]), int(offsets[k0 + n])  # the slot's chunks
        chunks = range(first, end) if end - first <= 600 else rng.integers(first, end, 600)
        rounds = ctypes.c_int32()
        for chunk in chunks:
            key = fn(ptr, k0, k0 + n, int(chunk), ctypes.byref(rounds))
            # the binary search's answer: the last key of the slot whose chunks start at or before this one
            want = k0 + int(np.searchsorted(offsets[k0 : k0 + n], chunk, side="right")) - 1
            assert key == want, (n, k0, int(chunk))
            assert offsets[key] <= chunk < offsets[key + 1]  # a non-empty key holding the chunk
            assert rounds.value <= math.ceil(math.log(n, 32) - 1e-9) if n > 1 else rounds.value == 0


def test_the_redux_argmax_picks_as_the_shuffle_argmax():
    """ONNXATTN_SPARSE_CUDA_ARGMAX=redux (the default): the selection's warp argmax as two warp reductions over
    unsigned keys (sparse/cuda_sizes.h argmax_key; the C entry replays the warp lane by lane) must pick as better()
    does: larger value first, the lower index on ties (-0 ties with +0), NaN never, and no pick at -inf. Checked
    against that rule on scores full of ties, NaN, +-inf and signed zeros."""
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    fn = lib.OnnxAttnSparseArgmaxPicks
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_int32)]
    rng = np.random.default_rng(11)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-38, 1e-45, -3.0e38], np.float32)
    for trial in range(300):
        n, top = int(rng.integers(1, 1100)), int(rng.integers(1, 40))
        scores = rng.integers(-4, 5, n).astype(np.float32) * np.float32(0.5)  # many ties
        hit = rng.random(n) < 0.15
        scores[hit] = rng.choice(specials, int(hit.sum()))
        if trial % 7 == 0:
            scores[:] = np.nan if trial % 2 else -np.inf  # nothing to pick
        picks = np.full(top, -7, np.int32)
        work = scores.copy()
        count = fn(work.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), n, top,
                   picks.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))  # fmt: skip
        eligible = [j for j in range(n) if not np.isnan(scores[j]) and scores[j] != -np.inf]
        want = sorted(eligible, key=lambda j: (-float(scores[j]), j))[:top]  # -0.0 == 0.0: index order
        assert picks[:count].tolist() == want, (trial, n, top)


def all_latency_switches(op: str = "NativeSparseAttention") -> tuple[int, int, int]:
    """(overlap_loads, redux_argmax, grouped_routing) as plan_nsa and run_routed read them (sparse/params.cc); a bad
    value raises ValueError with the library's message."""
    lib = ctypes.CDLL(sdpa_cuda_lib.library_path())
    fn = lib.OnnxAttnSparseLatencySwitches
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32), ctypes.c_char_p, ctypes.c_int64]
    out, error = (ctypes.c_int32 * 3)(), ctypes.create_string_buffer(512)
    if fn(op.encode(), out, error, len(error)) != 0:
        raise ValueError(error.value.decode())
    return out[0], out[1], out[2]


def latency_switches(op: str = "NativeSparseAttention") -> tuple[int, int]:
    """(overlap_loads, redux_argmax): all_latency_switches' first two."""
    return all_latency_switches(op)[:2]


@pytest.mark.parametrize("op", ["NativeSparseAttention", "SparseRoutedAttention"])
def test_the_latency_work_is_the_default(op, monkeypatch):
    """ONNXATTN_SPARSE_CUDA_LOADS=async and _ARGMAX=redux are the default since the H200 run at 82087dc (the same
    bits, NSA 9.49 -> 4.58 ms at 16k): unset or empty means both; sync and shuffle keep the old kernels, each alone;
    any other value is refused, naming the op and the values it takes."""
    for name in ("ONNXATTN_SPARSE_CUDA_LOADS", "ONNXATTN_SPARSE_CUDA_ARGMAX"):
        monkeypatch.delenv(name, raising=False)
    assert latency_switches(op) == (1, 1)
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_LOADS", "")
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_ARGMAX", "")
    assert latency_switches(op) == (1, 1)
    for loads, argmax, want in (("sync", "", (0, 1)), ("", "shuffle", (1, 0)), ("sync", "shuffle", (0, 0)),
                                ("async", "redux", (1, 1))):  # fmt: skip
        monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_LOADS", loads)
        monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_ARGMAX", argmax)
        assert latency_switches(op) == want, (loads, argmax)
    for name, values in (("LOADS", "async or sync"), ("ARGMAX", "redux or shuffle")):
        monkeypatch.setenv(f"ONNXATTN_SPARSE_CUDA_{name}", "later")
        with pytest.raises(ValueError, match=rf"^{op}: environment variable ONNXATTN_SPARSE_CUDA_{name} must be "
                                             rf"{values}, got 'later'$"):  # fmt: skip
            latency_switches(op)
        monkeypatch.setenv(f"ONNXATTN_SPARSE_CUDA_{name}", "Async" if name == "LOADS" else "REDUX")  # exact values
        with pytest.raises(ValueError, match=f"ONNXATTN_SPARSE_CUDA_{name} must be"):
            latency_switches(op)
        monkeypatch.delenv(f"ONNXATTN_SPARSE_CUDA_{name}")


@pytest.mark.parametrize("op", ["NativeSparseAttention", "SparseRoutedAttention"])
def test_the_grouped_routing_is_the_default(op, monkeypatch):
    """ONNXATTN_SPARSE_CUDA_ROUTE = groups (unset or empty: the default, warp_select_groups, the routing's tensor-core
    selection only) | split (warp_select); any other value is refused, naming the op and the values; the other
    switches are left as they are."""
    for name in ("ONNXATTN_SPARSE_CUDA_LOADS", "ONNXATTN_SPARSE_CUDA_ARGMAX", "ONNXATTN_SPARSE_CUDA_ROUTE"):
        monkeypatch.delenv(name, raising=False)
    assert all_latency_switches(op) == (1, 1, 1)
    for value, want in (("", 1), ("split", 0), ("groups", 1)):
        monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_ROUTE", value)
        assert all_latency_switches(op) == (1, 1, want), value
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_LOADS", "sync")
    assert all_latency_switches(op) == (0, 1, 1)
    for bad in ("later", "Groups", "groups "):
        monkeypatch.setenv("ONNXATTN_SPARSE_CUDA_ROUTE", bad)
        with pytest.raises(ValueError, match=rf"^{op}: environment variable ONNXATTN_SPARSE_CUDA_ROUTE must be "
                                             rf"groups or split, got '{bad}'$"):  # fmt: skip
            all_latency_switches(op)


def argmax_keys(scores: np.ndarray) -> np.ndarray:
    """sparse/cuda_sizes.h argmax_key for each score: unsigned keys in the scores' order, -0 as +0, NaN as 0."""
    bits = np.where(scores == 0, np.float32(0), scores).astype(np.float32).view(np.uint32).astype(np.int64)
    keys = np.where(bits & 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return np.where(np.isnan(scores), 0, keys)


def group_picks(scores, limit: int, top: int, forced: set[int]) -> list[int]:
    """The pick order of warp_select_groups (cuda_select.cu), lane by lane: lane l keeps the best (key, lowest index)
    of groups j = l mod 32 of 32 keys below `limit`, read rotated by l; a pick is the lanes' largest key, then the
    lowest index holding it; the winner's groups are rescanned (per group: largest key, lowest index; groups in
    ascending order, a later one only with a larger key). Forced blocks and keys at or above `limit` are key 0."""
    keys = argmax_keys(np.asarray(scores, np.float32)).tolist()
    groups = (limit + 31) // 32

    def key_at(c):
        return keys[c] if c < limit and c not in forced else 0

    best, at = [0] * 32, [0xFFFFFFFF] * 32
    for lane in range(32):
        for j in range(lane, groups, 32):
            for i in range(32):
                c = 32 * j + ((i + lane) & 31)
                k = key_at(c)
                if k > best[lane] or (k == best[lane] and c < at[lane]):
                    best[lane], at[lane] = k, c
    picks = []
    while len(picks) < top:
        top_key = max(best)
        if top_key <= 0x007FFFFF:  # kNegInfArgmaxKey
            break
        index = min(at[lane] for lane in range(32) if best[lane] == top_key)
        picks.append(index)
        keys[index] = int(argmax_keys(np.array([-np.inf], np.float32))[0])
        owner = index // 32 % 32
        group_best, group_at = 0, 0xFFFFFFFF
        for j in range(owner, groups, 32):
            ks = [key_at(32 * j + lane) for lane in range(32)]
            k_max = max(ks)
            c_min = min(32 * j + lane for lane in range(32) if ks[lane] == k_max)
            if k_max > group_best:
                group_best, group_at = k_max, c_min
        best[owner], at[owner] = group_best, group_at
    return picks


def test_the_grouped_routing_picks_as_the_argmax():
    """ONNXATTN_SPARSE_CUDA_ROUTE=groups: the group maxima's picks (a replay of warp_select_groups' lane logic) are
    warp_select's: larger value first, the lower index on ties (-0 ties with +0), NaN and -inf never, forced blocks
    and blocks past the causal limit never, in order; on ties, NaN, +-inf and signed zeros, limits across group and
    lane boundaries and above 1024 (a lane's several groups)."""
    rng = np.random.default_rng(13)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1e-38, 1e-45, -3.0e38], np.float32)
    for trial in range(120):
        n = int(rng.choice([1, 31, 32, 33, 100, 1023, 1024, 1025, 2100]))
        limit, top = int(rng.integers(0, n + 1)), int(rng.integers(1, 40))
        scores = rng.integers(-4, 5, n).astype(np.float32) * np.float32(0.5)  # many ties
        hit = rng.random(n) < 0.15
        scores[hit] = rng.choice(specials, int(hit.sum()))
        if trial % 9 == 0:
            scores[:] = np.nan if trial % 2 else -np.inf  # nothing to pick
        forced = {int(c) for c in rng.integers(0, max(limit, 1), int(rng.integers(0, 3)))} if limit else set()
        eligible = [j for j in range(limit) if j not in forced and not np.isnan(scores[j]) and scores[j] != -np.inf]
        want = sorted(eligible, key=lambda j: (-float(scores[j]), j))[:top]
        assert group_picks(scores, limit, top, forced) == want, (trial, n, limit, top)
