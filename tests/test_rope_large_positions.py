"""Rotary embeddings at long-context positions: the ops' reference functions against their CPU kernels. An ulp of a
rotary frequency moves the angle by ~5e-4 rad at position 65536, so the functions must form each frequency as the
kernels do (float32 log(base) and products, a correctly rounded exp): onnxruntime's float32 Exp is not always
correctly rounded (exp(-2.3025851) gives 0.1, not 0.099999994), and PagedAttention's function was 1e-3 off its
kernel at position 65536 and 0.3 at 2^24 before the frequencies went through float64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import function_session, gqa_model, kernel_session
from paged_helpers import paged_model


POSITIONS = [65536, 1_000_000, 2**24 + 1]


def assert_paths_agree(model: onnx.ModelProto, feeds: dict, what: str) -> None:
    kernel = kernel_session(model).run(None, feeds)
    function = function_session(model).run(None, feeds)
    for name, k, f in zip(("output", "present key", "present value"), kernel, function):
        np.testing.assert_allclose(f, k, rtol=0, atol=2e-6, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("position", POSITIONS)
def test_paged_attention_function_rotates_as_the_kernel(position):
    rng = np.random.default_rng(3)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    feeds = dict(query=n(5, 4 * 8), key=n(5, 2 * 8), value=n(5, 2 * 8), key_cache=n(6, 4, 2, 8), value_cache=n(6, 4, 2, 8),
                 block_table=np.array([[0, 1, 2], [3, 4, 5]], np.int32), cu_seqlens_q=np.array([0, 2, 5], np.int32),
                 seq_lens=np.array([6, 3], np.int32), position_ids=np.arange(position, position + 5, dtype=np.int64))
    model = paged_model(["position_ids"], attrs=dict(num_heads=4, kv_num_heads=2, rope=1), with_present=True)
    assert_paths_agree(model, feeds, f"PagedAttention at position {position}")


@pytest.mark.parametrize("position", POSITIONS)
def test_group_query_attention_function_rotates_as_the_kernel(position):
    rng = np.random.default_rng(4)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    feeds = dict(query=n(1, 3, 4 * 16), key=n(1, 3, 2 * 16), value=n(1, 3, 2 * 16),
                 position_ids=np.arange(position, position + 3, dtype=np.int64)[None])
    model = gqa_model(["position_ids"], attrs=dict(num_heads=4, kv_num_heads=2, rope=1))
    assert_paths_agree(model, feeds, f"GroupQueryAttention at position {position}")
