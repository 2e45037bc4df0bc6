"""The attention modules' token_positions hook (onnxattn.nn.rope.TokenPositions): during forward, a subclass's
`project` sees the positions the node rotates the forward's tokens by (position_ids; else each sequence's cache
slots: past length, or past_lengths[b] for shared buffers, + index; packed documents; a paged step's positions),
with `slots` the cache slots whatever position_ids say; outside forward it is an error."""

from __future__ import annotations

import pytest
import torch

from onnxattn.nn import GroupedQueryAttention, MultiHeadLatentAttention
from onnxattn.nn.paged_cache import PagedKVCache
from onnxattn.nn.rope import Rope

torch.manual_seed(0)


class Recording:
    """Mixin: project records token_positions() and token_positions(slots=True)."""

    seen: list

    def project(self, x):
        self.seen.append((self.token_positions(), self.token_positions(slots=True)))
        return super().project(x)


class RecordingGQA(Recording, GroupedQueryAttention):
    pass


class RecordingMLA(Recording, MultiHeadLatentAttention):
    pass


def gqa() -> RecordingGQA:
    m = RecordingGQA(32, 4, 2, rope=Rope())
    m.seen = []
    return m


def test_outside_forward_is_an_error():
    with pytest.raises(RuntimeError, match=r"RecordingGQA.token_positions: only during forward"):
        gqa().token_positions()


def test_contiguous_positions_past_and_position_ids():
    m = gqa()
    x = torch.randn(2, 3, 32)
    _, (pk, pv) = m(x, return_present=True)
    m(torch.randn(2, 2, 32), past_key=pk, past_value=pv)
    ids = torch.tensor([[7, 8], [1, 2]])
    m(torch.randn(2, 2, 32), past_key=pk, past_value=pv, position_ids=ids)
    (first, first_slots), (second, second_slots), (third, third_slots) = m.seen
    assert first.tolist() == first_slots.tolist() == [[0, 1, 2]]
    assert second.tolist() == second_slots.tolist() == [[3, 4]]
    assert third.tolist() == ids.tolist() and third_slots.tolist() == [[3, 4]]
    with pytest.raises(RuntimeError):
        m.token_positions()  # cleared after forward


def test_shared_buffers_and_documents():
    m = gqa()
    buffer_k, buffer_v = torch.zeros(2, 2, 10, 8), torch.zeros(2, 2, 10, 8)
    m(torch.randn(2, 1, 32), past_key=buffer_k, past_value=buffer_v, past_lengths=torch.tensor([4, 6]))
    m(torch.randn(1, 5, 32), doc_boundaries=[2])
    (shared, shared_slots), (docs, docs_slots) = m.seen
    assert shared.tolist() == shared_slots.tolist() == [[4], [6]]  # each row's valid length, not the buffer's
    assert docs.tolist() == [[0, 1, 0, 1, 2]] and docs_slots.tolist() == [[0, 1, 2, 3, 4]]


def test_paged_step():
    m = gqa()
    cache = PagedKVCache([(2, 8, 8)], num_blocks=8, block_size=4)
    cache.add("a")
    cache.add("b")
    m(torch.randn(5, 32), paged=cache.step(["a", "b"], [3, 2]))
    m(torch.randn(2, 32), paged=cache.step(["a", "b"], [1, 1]))
    (prompt, prompt_slots), (decode, decode_slots) = m.seen
    assert prompt.tolist() == prompt_slots.tolist() == [0, 1, 2, 0, 1]
    assert decode.tolist() == decode_slots.tolist() == [3, 2]


def test_mla_positions():
    m = RecordingMLA(32, 4, kv_rank=16, q_rank=None, nope_head_dim=8, rope_head_dim=8, v_head_dim=8)
    m.seen = []
    _, (latent, k_rope) = m(torch.randn(2, 3, 32), return_present=True)
    m(torch.randn(2, 1, 32), past_latent=latent, past_k_rope=k_rope)
    (first, _), (second, second_slots) = m.seen
    assert first.tolist() == [[0, 1, 2]] and second.tolist() == second_slots.tolist() == [[3]]
