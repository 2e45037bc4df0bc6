"""The sparse ops' semantics on every path (the reference function in onnxruntime and onnx.reference, torch,
our CPU kernel): hand-computed cases, causality (perturbing the future changes nothing), GQA-shared
selection equal to per-head selection when the group has one head, ties to the lower index, and
"selecting everything equals dense attention" (STYLE.md #12)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import run_function, run_kernel, run_onnx_reference
from oracle import sdpa_oracle
from sparse_helpers import (  # noqa: F401  (one_torch_thread: an autouse fixture)
    NSA,
    ROUTED,
    feeds_in,
    grid,
    nsa_attrs,
    one_torch_thread,
    one_node_model,
    routed_attrs,
    run_nsa_torch,
    run_routed_torch,
)

PATHS = ("function-ort", "function-onnx-reference", "torch", "kernel")


def run_all(op: str, arrays: dict[str, np.ndarray], attrs: dict, outputs=("Y",)) -> dict[str, list[np.ndarray]]:
    """Every path's outputs for one op call (float32)."""
    shapes = {"gates": arrays["gates"].shape} if "gates" in arrays else None
    model = one_node_model(op, list(arrays), list(outputs), attrs=attrs, shapes=shapes)
    feeds = feeds_in("float32", **arrays)
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # run_kernel prefills int outputs with NaN
        results["kernel"] = run_kernel(model, feeds)
    results["function-ort"] = run_function(model, feeds)
    results["function-onnx-reference"] = run_onnx_reference(model, feeds)
    runner = run_nsa_torch if op == NSA else run_routed_torch
    results["torch"] = runner(feeds, attrs, outputs=len(outputs) if op == ROUTED else 3)
    return results


def assert_all(results, want_y=None, want_selection=None, atol=1e-6):
    for path, outputs in results.items():
        if want_y is not None:
            np.testing.assert_allclose(outputs[0], want_y, atol=atol, rtol=1e-6, err_msg=path)
        if want_selection is not None:
            np.testing.assert_array_equal(outputs[1], want_selection, err_msg=path)


# ---- hand-computed cases ----

def test_block_whose_mean_key_dominates_gets_all_the_weight():
    """Seed coarse path, top_blocks=1: block 1's mean key points along q, the others are orthogonal, so
    every query selects block 1 and, its keys being equal, averages its values uniformly."""
    d, bs = 4, 3
    q = np.zeros((1, 1, 2, d), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((1, 1, 9, d), np.float32)
    k[0, 0, 0:3, 1] = 1.0  # block 0: orthogonal
    k[0, 0, 3:6, 0] = 2.0  # block 1: along q
    k[0, 0, 6:9, 2] = 5.0  # block 2: orthogonal, larger
    v = np.arange(9 * d, dtype=np.float32).reshape(1, 1, 9, d)
    attrs = nsa_attrs(block_size=bs, top_blocks=1)
    results = run_all(NSA, dict(Q=q, K=k, V=v), attrs, ("Y", "selected_blocks"))
    assert_all(results, want_y=np.broadcast_to(v[0, 0, 3:6].mean(0), (1, 1, 2, d)),
               want_selection=np.ones((1, 1, 2, 1), np.int64))


def test_top_k_of_a_known_score_vector():
    """Fine path: q = e0 and keys whose first channel gives scores [3, 1, 4, 1, 5, 9, 2, 6]: the top 3 are the
    keys scoring 9, 6, 5 (indices 5, 7, 4) and the top 7 take the 1 at index 1, not the tied one at 3."""
    scores = np.array([3, 1, 4, 1, 5, 9, 2, 6], np.float32)
    q = np.zeros((1, 1, 1, 2), np.float32)
    q[..., 0] = 1.0
    k = np.zeros((1, 1, 8, 2), np.float32)
    k[0, 0, :, 0] = scores
    v = np.eye(8, dtype=np.float32)[None, None]
    for top, chosen in ((3, [4, 5, 7]), (7, [0, 1, 2, 4, 5, 6, 7])):
        attrs = nsa_attrs(block_size=4, top_blocks=0, top_tokens=top, scale=1.0)
        weights = np.zeros(8)
        weights[chosen] = np.exp(scores[chosen] - scores.max())
        results = run_all(NSA, dict(Q=q, K=k, V=v), attrs, ("Y", "selected_blocks", "selected_tokens"))
        for path, outputs in results.items():
            np.testing.assert_array_equal(outputs[2], np.array(chosen).reshape(1, 1, 1, top), err_msg=path)
            np.testing.assert_allclose(outputs[0][0, 0, 0], weights / weights.sum(), atol=1e-6, err_msg=path)


def test_window_mask_table_w3_over_5_positions():
    """Window branch, W=3: with equal keys and one-hot values, Y[i] is the uniform average over the keys row i
    sees, so Y spells out the mask table: p - 3 < j <= p."""
    table = np.array([[1, 0, 0, 0, 0],
                      [1, 1, 0, 0, 0],
                      [1, 1, 1, 0, 0],
                      [0, 1, 1, 1, 0],
                      [0, 0, 1, 1, 1]], np.float32)
    arrays = dict(Q=np.ones((1, 1, 5, 2), np.float32), K=np.zeros((1, 1, 5, 2), np.float32),
                  V=np.eye(5, dtype=np.float32)[None, None])
    results = run_all(NSA, arrays, nsa_attrs(top_blocks=0, window=3))
    assert_all(results, want_y=(table / table.sum(1, keepdims=True))[None, None])


def test_routed_partial_last_segment_averages_its_own_keys():
    """Segments of 4 over 6 keys: the last one holds 2 keys, its centroid is their mean (not divided by 4).
    With dot-product routing, q = e0 and keys whose centroids are 1 (segment 0) and 3 (segment 1, mean of 2
    and 4; a 4-wide average would give 1.5), top_k=1 picks segment 1."""
    k = np.zeros((1, 1, 6, 2), np.float32)
    k[0, 0, :4, 0] = 1.0
    k[0, 0, 4:, 0] = [2.0, 4.0]
    q = np.zeros((1, 1, 1, 2), np.float32)
    q[..., 0] = 1.0
    v = np.arange(12, dtype=np.float32).reshape(1, 1, 6, 2)
    attrs = routed_attrs(segment_size=4, top_k=1, cosine=0)
    results = run_all(ROUTED, dict(Q=q, K=k, V=v), attrs, ("Y", "selected_segments"))
    w = np.exp(np.array([2.0, 4.0]) / np.sqrt(2) - 4.0 / np.sqrt(2))
    assert_all(results, want_y=((w / w.sum()) @ v[0, 0, 4:])[None, None, None], want_selection=np.ones((1, 1, 1, 1)))


# ---- causality: the future is never read ----

CAUSAL = [
    (NSA, dict(block_size=4, top_blocks=3, window=4, causal=1, shared_selection=1, sink_blocks=1, local_blocks=1),
     True),
    (NSA, dict(block_size=4, top_blocks=3, top_tokens=4, causal=1), False),
    (ROUTED, dict(segment_size=4, top_k=2, causal=1, cosine=0, rope=1, rope_before_routing=1), False),
    (ROUTED, dict(segment_size=3, top_k=2, causal=1, rope=1), False),
]


@pytest.mark.parametrize("op, attrs, compressed", CAUSAL, ids=["nsa-paper", "nsa-fine", "moba", "routed-cosine"])
def test_causal_configurations_never_attend_to_the_future(op, attrs, compressed):
    """Rows up to query i0 are unchanged when every key after position i0 (and every compressed token whose
    block reaches past it) is replaced by other values."""
    rng = np.random.default_rng(7)
    s, i0, bs = 18, 9, attrs.get("block_size", 4)
    attributes = (nsa_attrs if op == NSA else routed_attrs)(**attrs)
    arrays = dict(Q=grid(rng, (1, 4, s, 8)), K=grid(rng, (1, 2, s, 8)), V=grid(rng, (1, 2, s, 8)))
    if compressed:
        arrays["compressed_key"] = grid(rng, (1, 2, s // bs, 8))
        arrays["compressed_value"] = grid(rng, (1, 2, s // bs, 8))
    before = run_all(op, arrays, attributes)
    changed = {n: a.copy() for n, a in arrays.items()}
    changed["K"][:, :, i0 + 1:] = grid(rng, changed["K"][:, :, i0 + 1:].shape) * 3
    changed["V"][:, :, i0 + 1:] = 100.0
    if compressed:
        future = np.arange(s // bs) * bs + bs - 1 > i0
        changed["compressed_key"][:, :, future] = 7.0
        changed["compressed_value"][:, :, future] = -100.0
    after = run_all(op, changed, attributes)
    for path in PATHS:
        np.testing.assert_allclose(after[path][0][:, :, : i0 + 1], before[path][0][:, :, : i0 + 1], atol=1e-6,
                                   err_msg=path)
        assert not np.allclose(after[path][0][:, :, i0 + 1:], before[path][0][:, :, i0 + 1:]), path
    np.testing.assert_array_equal(after["kernel"][0][:, :, : i0 + 1], before["kernel"][0][:, :, : i0 + 1])


# ---- selection invariants ----

@pytest.mark.parametrize("compressed", [False, True])
def test_shared_selection_equals_per_head_selection_with_group_size_1(compressed):
    rng = np.random.default_rng(3)
    arrays = dict(Q=grid(rng, (2, 3, 11, 8)), K=grid(rng, (2, 3, 11, 8)), V=grid(rng, (2, 3, 11, 8)))
    if compressed:
        arrays["compressed_key"], arrays["compressed_value"] = grid(rng, (2, 3, 2, 8)), grid(rng, (2, 3, 2, 8))
    base = dict(block_size=4, top_blocks=2, window=2, causal=1, sink_blocks=1)
    shared = run_all(NSA, arrays, nsa_attrs(shared_selection=1, **base), ("Y", "selected_blocks"))
    per_head = run_all(NSA, arrays, nsa_attrs(shared_selection=0, **base), ("Y", "selected_blocks"))
    for path in PATHS:
        np.testing.assert_array_equal(shared[path][1], per_head[path][1], err_msg=path)
        np.testing.assert_array_equal(shared[path][0], per_head[path][0], err_msg=path)


def test_ties_go_to_the_lower_index_on_every_path():
    """Equal keys everywhere: every block (segment, token) scores the same, so the lowest indices win."""
    q = np.ones((1, 2, 3, 4), np.float32)
    k = np.ones((1, 1, 16, 4), np.float32)
    v = np.arange(64, dtype=np.float32).reshape(1, 1, 16, 4)
    nsa_results = run_all(NSA, dict(Q=q, K=k, V=v), nsa_attrs(block_size=4, top_blocks=2, top_tokens=5),
                          ("Y", "selected_blocks", "selected_tokens"))
    for path, outputs in nsa_results.items():
        np.testing.assert_array_equal(outputs[1], np.broadcast_to([0, 1], (1, 2, 3, 2)), err_msg=path)
        np.testing.assert_array_equal(outputs[2], np.broadcast_to([0, 1, 2, 3, 4], (1, 2, 3, 5)), err_msg=path)
    causal = run_all(NSA, dict(Q=q, K=k, V=v), nsa_attrs(block_size=4, top_blocks=3, causal=1, local_blocks=1),
                     ("Y", "selected_blocks"))
    # query rows at positions 13, 14, 15: own block 3 and local block 2 forced, then the lowest: 0
    for path, outputs in causal.items():
        np.testing.assert_array_equal(outputs[1], np.broadcast_to([0, 2, 3], (1, 2, 3, 3)), err_msg=path)
    for cosine in (0, 1):
        routed = run_all(ROUTED, dict(Q=q, K=k, V=v), routed_attrs(segment_size=4, top_k=2, cosine=cosine),
                         ("Y", "selected_segments"))
        for path, outputs in routed.items():
            np.testing.assert_array_equal(outputs[1], np.broadcast_to([0, 1], (1, 2, 3, 2)), err_msg=path)


# ---- selecting everything is dense attention ----

@pytest.mark.parametrize("causal", [0, 1])
def test_selecting_all_blocks_equals_dense_attention(causal):
    rng = np.random.default_rng(11)
    s = 16 if not causal else 15  # non-causal drops a partial block: use whole blocks there
    arrays = dict(Q=grid(rng, (1, 4, s, 8)), K=grid(rng, (1, 2, s, 8)), V=grid(rng, (1, 2, s, 8)))
    dense = sdpa_oracle(arrays["Q"], arrays["K"], arrays["V"], None, causal=causal)[0]
    for attrs in (nsa_attrs(block_size=4, top_blocks=4, causal=causal),
                  nsa_attrs(block_size=4, top_blocks=0, top_tokens=s, causal=causal)):
        assert_all(run_all(NSA, arrays, attrs), want_y=dense, atol=1e-5)
    routed = run_all(ROUTED, arrays, routed_attrs(segment_size=4, top_k=4, causal=causal))
    assert_all(routed, want_y=dense, atol=1e-5)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("op", [NSA, ROUTED])
def test_a_block_scored_nan_or_minus_inf_is_never_chosen_on_any_path(op, value):
    """A non-finite key in a visible block (here block 0 of KV head 0) gives its selection score NaN or -inf
    (or +inf, then it ranks first as a forced block would): such a block is never chosen, and the next best fill
    the list, on the kernel, the function, the torch modules and the oracle alike. The function's TopK had put
    a NaN first and left a -1 hole in its place; torch's sort and the oracle had chosen it (NaN rows)."""
    from oracle_sparse import nsa_oracle, routed_oracle

    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((1, 2, 32, 8)).astype(np.float32) for n in "QKV"}
    feeds["K"][0, 0, 5, :] = value
    if op == NSA:
        attrs, outs, oracle, torch_run = nsa_attrs(block_size=8, top_blocks=2), ["Y", "selected_blocks"], nsa_oracle, \
            run_nsa_torch
        extra = [None] * 3
    else:
        attrs, outs, oracle, torch_run = routed_attrs(segment_size=8, top_k=2), ["Y", "selected_segments"], \
            routed_oracle, run_routed_torch
        extra = [None]
    model = one_node_model(op, list(feeds), outs, attrs=attrs)
    kernel, function = run_kernel(model, feeds), run_function(model, feeds)
    torch_y, torch_list = torch_run(feeds, attrs, outputs=2)
    with np.errstate(all="ignore"):
        want_y, want_list = oracle(*(feeds[n].astype(np.float64) for n in "QKV"), *extra, **attrs)[:2]
    want_list = np.asarray(want_list)
    assert (want_list[0, 0] >= 0).all(), "3 finite blocks are visible to every row of head 0: no -1 in its lists"
    for name, (y, listed) in (("kernel", kernel), ("function", function), ("torch", (torch_y, torch_list))):
        np.testing.assert_array_equal(listed, want_list, err_msg=f"{op} {value}: {name} lists")
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5, err_msg=f"{op} {value}: {name} Y")
