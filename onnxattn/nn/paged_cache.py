"""A block-paged KV cache for serving many sequences at once (vLLM-style), feeding onnxattn::PagedAttention.

Every layer has one pair of block pools, key/value ``[num_blocks, block_size, Hkv, D]``; one allocator hands
out block indices for all layers (a sequence's block i is the same index in every layer's pool). A sequence
is a list of blocks plus a length. Blocks are reference-counted, so sequences can share their prompt's blocks
(``fork``); a shared block is copied before it receives new tokens (copy-on-write), so writing one sequence
never changes another.

A serving step: ``step = cache.step(seq_ids, new_tokens)`` reserves room for each sequence's new tokens
(allocating and copying blocks as needed), advances the lengths, and returns a PagedStep: the index inputs
of every PagedAttention node (block_table, cu_seqlens_q, seq_lens) and the layers' pools. The attention
layers write the new tokens' K/V into the pools themselves (the op does).

The pools are ordinary tensors: onnxruntime can update them in place through I/O binding (on CPU an OrtValue
over ``pool.numpy()`` shares its memory), while the cache keeps the bookkeeping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Sequence

import torch


class PoolExhausted(RuntimeError):
    """The block pool has too few free blocks for a request; nothing was changed."""


class BlockAllocator:
    """Block indices [0, num_blocks) with reference counts. Freed blocks are reused first (last in, first
    out), so a long run hands out non-contiguous blocks; the kernels do not care."""

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"BlockAllocator: num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives 0, 1, 2, ... at first
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def refcount(self, block: int) -> int:
        return self._refs[self._check(block)]

    def allocate(self, count: int = 1) -> list[int]:
        """`count` fresh blocks (reference count 1), all or none."""
        self.check_available(count)
        blocks = [self._free.pop() for _ in range(count)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def check_available(self, count: int) -> None:
        if count > len(self._free):
            raise PoolExhausted(f"PagedKVCache: the block pool is exhausted: {count} blocks needed, {len(self._free)} "
                                f"of {self.num_blocks} free; free or truncate finished sequences, or create the "
                                f"cache with more blocks")

    def share(self, block: int) -> None:
        if self._refs[self._check(block)] < 1:
            raise ValueError(f"BlockAllocator: block {block} is free, it cannot be shared")
        self._refs[block] += 1

    def release(self, block: int) -> None:
        if self._refs[self._check(block)] < 1:
            raise ValueError(f"BlockAllocator: block {block} is already free")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)

    def _check(self, block: int) -> int:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"BlockAllocator: block {block} is out of range [0, {self.num_blocks})")
        return block


@dataclasses.dataclass
class PagedStep:
    """The inputs of one PagedAttention step over B sequences with T new tokens in all, packed in order:
    `block_table` [B, max_blocks] int32, `cu_seqlens_q` [B + 1] int32, `seq_lens` [B] int32 (keys per
    sequence, its new tokens included), optional RoPE `position_ids` [T] int64 (None: each token's key
    position), and each layer's pools (indexed by GroupedQueryAttention.layer_idx; a layer replaces its
    entries with the updated pools). `seq_ids` names the sequences, in row order."""

    block_table: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seq_lens: torch.Tensor
    key_caches: list[torch.Tensor]
    value_caches: list[torch.Tensor]
    position_ids: torch.Tensor | None = None
    seq_ids: tuple = ()

    def pools(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= layer_idx < len(self.key_caches):
            raise IndexError(f"PagedStep: no pools for layer {layer_idx} (the step carries {len(self.key_caches)} "
                             f"layers); give each attention layer its own layer_idx")
        return self.key_caches[layer_idx], self.value_caches[layer_idx]

    def update(self, layer_idx: int, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
        self.key_caches[layer_idx], self.value_caches[layer_idx] = key_cache, value_cache

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens_q[-1])

    def token_positions(self, num_tokens) -> torch.Tensor:
        """[T] int64: each new token's key position (for learned position embeddings), with tensor ops only
        so it exports (`num_tokens`: T, e.g. input_ids.shape[0]): token t of sequence b sits at
        seq_lens[b] - cu_seqlens_q[b + 1] + t."""
        cu = self.cu_seqlens_q.to(torch.int64)
        t = torch.arange(num_tokens, device=cu.device)
        seq_of = (cu[None, 1:] <= t[:, None]).sum(dim=1)  # [T]
        return self.seq_lens.to(torch.int64)[seq_of] - cu[1:][seq_of] + t

    def last_rows(self) -> torch.Tensor:
        """[B] int64: the row of each sequence's last new token (its next-token logits)."""
        return self.cu_seqlens_q[1:].to(torch.int64) - 1


@dataclasses.dataclass
class _Sequence:
    blocks: list[int]
    length: int = 0


class PagedKVCache:
    """Block pools for every layer (`kv_shapes`: (Hkv, D, Dv) per layer, e.g. CausalLM.kv_shapes()) and the
    sequences living in them. `fill` initializes the pools (NaN shows any read of an unwritten slot)."""

    def __init__(self, kv_shapes: Sequence[tuple[int, int, int]], num_blocks: int, block_size: int, *,
                 dtype: torch.dtype = torch.float32, device=None, fill: float = 0.0):
        if block_size < 1:
            raise ValueError(f"PagedKVCache: block_size must be >= 1, got {block_size}")
        if not kv_shapes:
            raise ValueError("PagedKVCache: needs the (Hkv, D, Dv) of at least one layer")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.kv_shapes = [tuple(s) for s in kv_shapes]
        self.key_caches = [torch.full((num_blocks, block_size, h, d), fill, dtype=dtype, device=device)
                           for h, d, _ in self.kv_shapes]
        self.value_caches = [torch.full((num_blocks, block_size, h, dv), fill, dtype=dtype, device=device)
                             for h, _, dv in self.kv_shapes]
        self._sequences: dict[Hashable, _Sequence] = {}

    @classmethod
    def for_model(cls, model, num_blocks: int, block_size: int, **kwargs) -> PagedKVCache:
        """A cache shaped for a decoder with `kv_shapes()` (the reference models), in its dtype by default."""
        kwargs.setdefault("dtype", next(model.parameters()).dtype)
        return cls(model.kv_shapes(), num_blocks, block_size, **kwargs)

    # ---- sequences ----
    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def sequences(self) -> list:
        return list(self._sequences)

    def __contains__(self, seq_id) -> bool:
        return seq_id in self._sequences

    def length(self, seq_id) -> int:
        return self._get(seq_id).length

    def blocks(self, seq_id) -> list[int]:
        """The sequence's blocks, in order (a copy)."""
        return list(self._get(seq_id).blocks)

    def add(self, seq_id) -> None:
        """A new empty sequence (its blocks come with its first step)."""
        if seq_id in self._sequences:
            raise ValueError(f"PagedKVCache: sequence {seq_id!r} already exists")
        self._sequences[seq_id] = _Sequence([])

    def fork(self, source, seq_id, length: int | None = None) -> None:
        """A new sequence sharing the first `length` tokens (default: all) of `source` by reference, e.g. a
        common prompt: no copy now; a shared block is copied when either sequence writes into it."""
        src = self._get(source)
        length = src.length if length is None else length
        if not 0 <= length <= src.length:
            raise ValueError(f"PagedKVCache: cannot fork {length} tokens of sequence {source!r}, which holds "
                             f"{src.length}")
        if seq_id in self._sequences:
            raise ValueError(f"PagedKVCache: sequence {seq_id!r} already exists")
        blocks = src.blocks[: self._blocks_for(length)]
        for b in blocks:
            self.allocator.share(b)
        self._sequences[seq_id] = _Sequence(list(blocks), length)

    def free(self, seq_id) -> None:
        """Removes the sequence; blocks no other sequence holds return to the pool."""
        seq = self._get(seq_id)
        for b in seq.blocks:
            self.allocator.release(b)
        del self._sequences[seq_id]

    def truncate(self, seq_id, length: int) -> None:
        """Keeps the first `length` tokens (e.g. rolls back rejected draft tokens); whole blocks past them
        return to the pool. Slots past `length` in the last kept block hold stale data, overwritten later."""
        seq = self._get(seq_id)
        if not 0 <= length <= seq.length:
            raise ValueError(f"PagedKVCache: cannot truncate sequence {seq_id!r} of {seq.length} tokens to {length}")
        keep = self._blocks_for(length)
        for b in seq.blocks[keep:]:
            self.allocator.release(b)
        del seq.blocks[keep:]
        seq.length = length

    # ---- steps ----
    def reserve(self, seq_id, new_tokens: int) -> None:
        """Makes room for `new_tokens` more tokens and advances the length: allocates missing blocks and
        copies every shared block that will receive one of them (copy-on-write). All or nothing."""
        self._reserve_all([(seq_id, new_tokens)])

    def step(self, seq_ids: Iterable, new_tokens: Sequence[int], *, table_width: int | None = None,
             position_ids: torch.Tensor | None = None) -> PagedStep:
        """Reserves room for each sequence's new tokens (see reserve; all or nothing over the step) and
        returns the step's PagedAttention inputs, rows packed in the order of `seq_ids`. `table_width`
        fixes max_blocks (default: the most blocks any of these sequences holds)."""
        seq_ids = list(seq_ids)
        if len(new_tokens) != len(seq_ids):
            raise ValueError(f"PagedKVCache.step: {len(seq_ids)} sequences but {len(new_tokens)} token counts")
        if len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"PagedKVCache.step: a sequence appears twice in {seq_ids}")
        self._reserve_all(list(zip(seq_ids, new_tokens)))
        seqs = [self._sequences[s] for s in seq_ids]
        width = max([len(s.blocks) for s in seqs], default=0)
        if table_width is not None:
            if table_width < width:
                raise ValueError(f"PagedKVCache.step: table_width {table_width} is below the {width} blocks a "
                                 f"sequence of this step holds")
            width = table_width
        device = self.key_caches[0].device
        table = torch.zeros((len(seqs), width), dtype=torch.int32)
        for row, s in enumerate(seqs):
            table[row, : len(s.blocks)] = torch.tensor(s.blocks, dtype=torch.int32)
        cu = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(list(new_tokens), dtype=torch.int32), 0)
        lengths = torch.tensor([s.length for s in seqs], dtype=torch.int32)
        return PagedStep(table.to(device), cu.to(device), lengths.to(device), self.key_caches, self.value_caches,
                         position_ids, tuple(seq_ids))

    def _reserve_all(self, requests: list[tuple[Hashable, int]]) -> None:
        plans = []  # (sequence, blocks to add, indices of shared blocks to copy)
        needed = 0
        for seq_id, new in requests:
            seq = self._get(seq_id)
            if new < 0:
                raise ValueError(f"PagedKVCache: sequence {seq_id!r} cannot take {new} new tokens")
            total = seq.length + new
            first, last = seq.length // self.block_size, self._blocks_for(total)  # blocks written: [first, last)
            shared = [i for i in range(first, min(last, len(seq.blocks)))
                      if new and self.allocator.refcount(seq.blocks[i]) > 1]
            missing = max(0, last - len(seq.blocks))
            plans.append((seq, missing, shared, total))
            needed += missing + len(shared)
        self.allocator.check_available(needed)  # before changing anything
        for seq, missing, shared, total in plans:
            for i in shared:
                (copy,) = self.allocator.allocate(1)
                self.copy_block(seq.blocks[i], copy)
                self.allocator.release(seq.blocks[i])
                seq.blocks[i] = copy
            seq.blocks += self.allocator.allocate(missing)
            seq.length = total

    def copy_block(self, source: int, target: int) -> None:
        """Copies one block's slots in every layer's pools (in place: tensors bound elsewhere see it)."""
        with torch.no_grad():
            for pool in (*self.key_caches, *self.value_caches):
                pool[target].copy_(pool[source])

    def _blocks_for(self, length: int) -> int:
        return (length + self.block_size - 1) // self.block_size

    def _get(self, seq_id) -> _Sequence:
        try:
            return self._sequences[seq_id]
        except KeyError:
            active = ", ".join(map(repr, self._sequences)) or "none"
            raise KeyError(f"PagedKVCache: unknown sequence {seq_id!r} (active: {active})") from None

    def __len__(self) -> int:
        return len(self._sequences)
