"""The PagedKVCache bookkeeping: the block allocator (allocate, share, release, exhaustion), sequences
(add, fork, free, truncate, unknown ids), steps (on-demand blocks, the index tensors, all-or-nothing
reservation) and copy-on-write of shared blocks."""

from __future__ import annotations

import pytest
import torch

from onnxattn.nn.paged_cache import BlockAllocator, PagedKVCache, PoolExhausted

SHAPES = [(2, 4, 4), (1, 8, 6)]  # two layers: (Hkv, D, Dv)


def cache(num_blocks: int = 8, block_size: int = 4) -> PagedKVCache:
    return PagedKVCache(SHAPES, num_blocks, block_size)


# ---------------------------------------------------------------------------------------------------------
# The allocator


def test_allocator_hands_out_blocks_in_order_then_reuses_freed_ones_first():
    a = BlockAllocator(5)
    assert a.allocate(3) == [0, 1, 2] and a.num_free == 2
    a.release(1)
    a.release(0)
    assert a.allocate(2) == [0, 1]  # last freed, first reused
    assert [a.refcount(b) for b in range(5)] == [1, 1, 1, 0, 0]


def test_allocator_reference_counts():
    a = BlockAllocator(3)
    (b,) = a.allocate()
    a.share(b)
    a.release(b)
    assert a.refcount(b) == 1 and a.num_free == 2
    a.release(b)
    assert a.refcount(b) == 0 and a.num_free == 3


@pytest.mark.parametrize("misuse, message", [
    (lambda a: a.allocate(4), r"the block pool is exhausted: 4 blocks needed, 3 of 3 free"),
    (lambda a: a.release(0), r"block 0 is already free"),
    (lambda a: a.share(1), r"block 1 is free, it cannot be shared"),
    (lambda a: a.refcount(3), r"block 3 is out of range \[0, 3\)"),
    (lambda a: a.release(-1), r"block -1 is out of range"),
], ids=["exhausted", "double-free", "share-free", "refcount-out-of-range", "release-negative"])
def test_allocator_misuse(misuse, message):
    a = BlockAllocator(3)
    with pytest.raises((PoolExhausted, ValueError), match=message):
        misuse(a)
    assert a.num_free == 3


def test_exhaustion_allocates_nothing():
    a = BlockAllocator(3)
    a.allocate(2)
    with pytest.raises(PoolExhausted):
        a.allocate(2)
    assert a.num_free == 1


# ---------------------------------------------------------------------------------------------------------
# Sequences and steps


def test_pools_have_the_layers_shapes():
    c = PagedKVCache(SHAPES, 8, 4, dtype=torch.float16, fill=float("nan"))
    assert [tuple(p.shape) for p in c.key_caches] == [(8, 4, 2, 4), (8, 4, 1, 8)]
    assert [tuple(p.shape) for p in c.value_caches] == [(8, 4, 2, 4), (8, 4, 1, 6)]
    assert all(p.dtype == torch.float16 and p.isnan().all() for p in c.key_caches + c.value_caches)


def test_step_allocates_on_demand_and_builds_the_index_inputs():
    c = cache(num_blocks=8, block_size=4)
    for s in ("a", "b", "c"):
        c.add(s)
    step = c.step(["a", "b", "c"], [6, 1, 0])  # a prefill chunk, one token, nothing
    assert [c.length(s) for s in "abc"] == [6, 1, 0]
    assert [len(c.blocks(s)) for s in "abc"] == [2, 1, 0]
    assert step.block_table.dtype == step.cu_seqlens_q.dtype == step.seq_lens.dtype == torch.int32
    assert step.block_table.tolist() == [[0, 1], [2, 0], [0, 0]]  # unused entries are never read
    assert step.cu_seqlens_q.tolist() == [0, 6, 7, 7]
    assert step.seq_lens.tolist() == [6, 1, 0]
    assert step.key_caches is c.key_caches and step.seq_ids == ("a", "b", "c")
    step = c.step(["a", "b"], [2, 1])  # a fills its second block exactly: no new block
    assert [len(c.blocks(s)) for s in "ab"] == [2, 1] and step.seq_lens.tolist() == [8, 2]
    c.step(["a"], [1])
    assert c.blocks("a") == [0, 1, 3]
    assert step.token_positions(3).tolist() == [6, 7, 1]
    assert step.last_rows().tolist() == [1, 2]


def test_table_width():
    c = cache()
    c.add("a")
    assert c.step(["a"], [5], table_width=6).block_table.shape == (1, 6)
    with pytest.raises(ValueError, match=r"table_width 1 is below the 2 blocks"):
        c.step(["a"], [0], table_width=1)


def test_step_is_all_or_nothing_when_the_pool_runs_out():
    c = cache(num_blocks=3, block_size=4)
    c.add("a")
    c.add("b")
    c.step(["a"], [5])  # 2 blocks
    with pytest.raises(PoolExhausted, match=r"2 blocks needed, 1 of 3 free; free or truncate finished sequences"):
        c.step(["a", "b"], [4, 1])  # a needs 1 more, b needs 1
    assert c.length("a") == 5 and c.length("b") == 0 and c.allocator.num_free == 1
    c.free("a")
    c.step(["b"], [12])
    assert c.allocator.num_free == 0


def test_free_and_truncate_return_blocks():
    c = cache(num_blocks=8, block_size=4)
    c.add("a")
    c.step(["a"], [10])  # 3 blocks
    c.truncate("a", 5)
    assert c.length("a") == 5 and c.blocks("a") == [0, 1] and c.allocator.num_free == 6
    c.truncate("a", 0)
    assert c.blocks("a") == [] and c.allocator.num_free == 8
    c.step(["a"], [3])
    c.free("a")
    assert "a" not in c and c.allocator.num_free == 8 and len(c) == 0


@pytest.mark.parametrize("misuse, error, message", [
    (lambda c: c.step(["x"], [1]), KeyError, r"unknown sequence 'x' \(active: 'a', 'b'\)"),
    (lambda c: c.free("x"), KeyError, r"unknown sequence 'x'"),
    (lambda c: c.length("x"), KeyError, r"unknown sequence 'x'"),
    (lambda c: c.fork("x", "y"), KeyError, r"unknown sequence 'x'"),
    (lambda c: c.add("a"), ValueError, r"sequence 'a' already exists"),
    (lambda c: c.fork("a", "b"), ValueError, r"sequence 'b' already exists"),
    (lambda c: c.fork("a", "y", 4), ValueError, r"cannot fork 4 tokens of sequence 'a', which holds 3"),
    (lambda c: c.truncate("a", 4), ValueError, r"cannot truncate sequence 'a' of 3 tokens to 4"),
    (lambda c: c.truncate("a", -1), ValueError, r"cannot truncate sequence 'a' of 3 tokens to -1"),
    (lambda c: c.step(["a", "a"], [1, 1]), ValueError, r"a sequence appears twice"),
    (lambda c: c.step(["a", "b"], [1]), ValueError, r"2 sequences but 1 token counts"),
    (lambda c: c.step(["a"], [-1]), ValueError, r"sequence 'a' cannot take -1 new tokens"),
], ids=["step-unknown", "free-unknown", "length-unknown", "fork-unknown", "add-twice", "fork-onto-existing",
        "fork-too-long", "truncate-too-long", "truncate-negative", "step-twice", "step-counts", "step-negative"])
def test_sequence_misuse(misuse, error, message):
    c = cache()
    c.add("a")
    c.add("b")
    c.step(["a"], [3])
    with pytest.raises(error, match=message):
        misuse(c)
    assert c.length("a") == 3 and c.length("b") == 0 and c.allocator.num_free == 7


@pytest.mark.parametrize("bad, message", [
    (dict(block_size=0), r"block_size must be >= 1"),
    (dict(num_blocks=0), r"num_blocks must be >= 1"),
    (dict(kv_shapes=[]), r"at least one layer"),
])
def test_construction_errors(bad, message):
    args = dict(kv_shapes=SHAPES, num_blocks=4, block_size=4) | bad
    with pytest.raises(ValueError, match=message):
        PagedKVCache(**args)


# ---------------------------------------------------------------------------------------------------------
# Prefix sharing and copy-on-write


def _fill(c: PagedKVCache, seq, values: float) -> None:
    """Writes `values` into every slot the sequence's blocks hold, in every pool (as a step's op would)."""
    for pool in c.key_caches + c.value_caches:
        pool[c.blocks(seq)] = values


def test_fork_shares_whole_blocks_by_reference():
    c = cache(num_blocks=8, block_size=4)
    c.add("a")
    c.step(["a"], [8])  # 2 full blocks
    c.fork("a", "b")
    assert c.blocks("b") == c.blocks("a") == [0, 1] and c.length("b") == 8
    assert [c.allocator.refcount(b) for b in (0, 1)] == [2, 2] and c.allocator.num_free == 6
    c.step(["b"], [1])  # appends in a fresh block: nothing copied
    assert c.blocks("b") == [0, 1, 2] and c.blocks("a") == [0, 1]
    c.free("a")
    assert [c.allocator.refcount(b) for b in (0, 1, 2)] == [1, 1, 1]
    c.free("b")
    assert c.allocator.num_free == 8


def test_copy_on_write_of_a_shared_partly_filled_block():
    """b shares a's first 6 tokens (block 1 half used); the first write into that block copies it, in every
    layer's pools, and leaves a's block untouched."""
    c = cache(num_blocks=8, block_size=4)
    c.add("a")
    c.step(["a"], [7])
    _fill(c, "a", 1.0)
    c.fork("a", "b", 6)
    assert c.blocks("b") == [0, 1] and c.allocator.refcount(1) == 2
    before = [p.clone() for p in c.key_caches + c.value_caches]
    step = c.step(["b"], [3])  # positions 6, 7 (block 1: shared, copied) and 8 (a fresh block)
    copy = c.blocks("b")[1]
    assert c.blocks("b") == [0, copy, 3] and copy not in c.blocks("a")
    assert c.allocator.refcount(1) == 1 and c.allocator.refcount(0) == 2
    assert step.block_table.tolist() == [[0, copy, 3]]
    for pool, old in zip(c.key_caches + c.value_caches, before):
        assert torch.equal(pool[copy], old[1])  # the copy holds the shared slots
        assert torch.equal(pool[1], old[1])  # a's block is as it was
    # a writing into its own (no longer shared) block copies nothing
    c.step(["a"], [1])
    assert c.blocks("a") == [0, 1] and c.allocator.num_free == 8 - 4


def test_copy_on_write_when_the_source_writes_first():
    c = cache(num_blocks=8, block_size=4)
    c.add("a")
    c.step(["a"], [6])
    c.fork("a", "b")
    c.step(["a"], [1])  # a writes position 6 into the shared block 1: a gets the copy, b keeps block 1
    assert c.blocks("b") == [0, 1] and c.blocks("a")[1] != 1
    assert c.allocator.refcount(1) == 1


def test_copy_on_write_counts_against_the_pool():
    c = cache(num_blocks=3, block_size=4)
    c.add("a")
    c.step(["a"], [6])
    c.fork("a", "b")
    c.step(["b"], [1])  # the copy takes the last free block
    with pytest.raises(PoolExhausted, match=r"1 blocks needed, 0 of 3 free"):
        c.step(["a"], [3])  # a needs a block for position 8
    assert c.length("a") == 6
