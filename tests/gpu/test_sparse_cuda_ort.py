"""NativeSparseAttention and SparseRoutedAttention through onnxruntime-gpu's CUDA execution provider with our
library registered, on both CUDA paths of sparse/cuda_kernel.cu (ONNXATTN_SPARSE_CUDA=simple: the first
kernels; fast, the default: tiled selection and NSA's branches on the attention core; both passed on an H100,
2026-11-27): the sparse suite's own numerics matrix (tests/test_sparse_numerics.py: oracle outputs and exact selections, every dtype) with each node
proven to run on CUDA from onnxruntime's profile; the semantic checks that need no oracle (causality, ties);
a long-context case (S = 4096) against our CPU kernel; and bad input rejected with the kernel's message.

Needs a GPU and onnxruntime-gpu."""

from __future__ import annotations

import os
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import ort_cuda  # noqa: E402
import sdpa_cuda_lib  # noqa: E402

ORT, ORT_MISSING = ort_cuda.onnxruntime_cuda() if CUDA else (None, "no GPU")
MATRIX_BUDGET_S = float(os.environ.get("SPARSE_MATRIX_BUDGET_S", "20"))  # per path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the CPU suite's cases and oracles


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)


def numerics():
    try:
        import test_sparse_numerics as module
    except Exception as e:  # noqa: BLE001 - report why instead of failing the whole GPU run
        pytest.skip(f"tests/test_sparse_numerics.py not importable here: {type(e).__name__}: {e}")
    return module


def cuda_session(model, profile_dir=None):
    return ort_cuda.session(ORT, model.SerializeToString(), library=sdpa_cuda_lib.library_path(),
                            profile_prefix=str(profile_dir / "ort") if profile_dir else None)


PATHS = ("simple", "fast")  # ONNXATTN_SPARSE_CUDA


@pytest.mark.parametrize("path", PATHS)
def test_the_sparse_suite_numerics_matrix_on_the_cuda_ep(tmp_path, path, monkeypatch):
    """Every case of the CPU suite (float32, float16, bfloat16) on CUDA, checked by the suite's own rule
    (oracle tolerance on Y, exact selections), the node placed on the CUDA EP."""
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", path)
    n = numerics()
    start, ran = time.perf_counter(), 0
    for case in n.CASES:
        if time.perf_counter() - start > MATRIX_BUDGET_S:
            break
        sess = cuda_session(n.model_of(case), tmp_path)
        outputs = sess.run(None, n.feeds_in(case.dtype, **n.arrays_of(case.id)))
        assert ort_cuda.node_providers(sess, case.op) == {ort_cuda.CUDA_EP}, case.id
        try:
            n.check(case, outputs)
        except AssertionError as e:
            raise AssertionError(f"{case.id}: {e}") from None
        ran += 1
    print(f"{ran} of {len(n.CASES)} sparse cases ran on the CUDA EP in {time.perf_counter() - start:.0f} s")
    assert ran >= min(10, len(n.CASES))


@pytest.mark.parametrize("path", PATHS)
def test_causal_rows_ignore_the_future_on_cuda(path, monkeypatch):
    import sparse_helpers as sh

    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", path)
    rng = np.random.default_rng(7)
    s, i0 = 40, 21
    for op, attrs, compressed in ((sh.NSA, sh.nsa_attrs(block_size=4, top_blocks=3, window=5, causal=1,
                                                         shared_selection=1, sink_blocks=1, local_blocks=1), True),
                                  (sh.ROUTED, sh.routed_attrs(segment_size=4, top_k=2, causal=1, cosine=0, rope=1,
                                                              rope_before_routing=1), False)):
        arrays = dict(Q=sh.grid(rng, (1, 4, s, 16)), K=sh.grid(rng, (1, 2, s, 16)), V=sh.grid(rng, (1, 2, s, 16)))
        if compressed:
            arrays["compressed_key"], arrays["compressed_value"] = (sh.grid(rng, (1, 2, s // 4, 16)) for _ in range(2))
        sess = cuda_session(sh.one_node_model(op, list(arrays), ["Y"], attrs=attrs))
        before = sess.run(None, sh.feeds_in("float32", **arrays))[0]
        arrays["K"][:, :, i0 + 1:] *= -3
        arrays["V"][:, :, i0 + 1:] = 50.0
        if compressed:
            future = np.arange(s // 4) * 4 + 3 > i0
            arrays["compressed_key"][:, :, future] = 9.0
        after = sess.run(None, sh.feeds_in("float32", **arrays))[0]
        np.testing.assert_array_equal(after[:, :, : i0 + 1], before[:, :, : i0 + 1], err_msg=op)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("op", ["NativeSparseAttention", "SparseRoutedAttention"])
def test_long_context_matches_the_cpu_kernel(op, path, monkeypatch):
    """S = 4096, 16/2 heads, D = 128, blocks of 64, 16 chosen (window 256): CUDA vs our CPU kernel."""
    import sparse_helpers as sh
    from helpers import run_kernel

    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", path)
    rng = np.random.default_rng(3)
    s = 4096
    arrays = dict(Q=sh.grid(rng, (1, 16, s, 128)), K=sh.grid(rng, (1, 2, s, 128)), V=sh.grid(rng, (1, 2, s, 128)))
    if op == sh.NSA:
        attrs = sh.nsa_attrs(block_size=64, top_blocks=16, window=256, causal=1, shared_selection=1, sink_blocks=1,
                             local_blocks=2)
        arrays["compressed_key"] = arrays["K"].reshape(1, 2, s // 64, 64, 128).mean(3)
        arrays["compressed_value"] = arrays["V"].reshape(1, 2, s // 64, 64, 128).mean(3)
        outputs = ["Y", "selected_blocks"]
    else:
        attrs = sh.routed_attrs(segment_size=64, top_k=16, causal=1, cosine=0, rope=1, rope_before_routing=1)
        outputs = ["Y", "selected_segments"]
    model = sh.one_node_model(op, list(arrays), outputs, attrs=attrs)
    feeds = sh.feeds_in("float32", **arrays)
    got = cuda_session(model).run(None, feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run_kernel(model, feeds, threads=8)
    # probabilities/centroids differ in the last bits between devices: near-ties may pick another block
    agree = float(np.mean(got[1] == want[1]))
    assert agree > 0.999, f"selections agree on {agree:.4%} of the entries"
    same = np.all(got[1] == want[1], axis=-1)  # [B, Hs, S]: rows whose selection agrees
    if op == sh.NSA:
        same = np.repeat(same, 8, axis=1)  # shared by the 8 query heads of each KV head
    rows = np.broadcast_to(same[..., None], got[0].shape)
    np.testing.assert_allclose(got[0][rows], want[0][rows], atol=2e-4, rtol=2e-4)


def test_bad_input_is_an_error_from_the_cuda_kernel():
    import sparse_helpers as sh

    model = sh.one_node_model(sh.NSA, ["Q", "K", "V", "gates"], ["Y"], attrs=sh.nsa_attrs(block_size=4, top_blocks=1),
                              shapes={n: None for n in ("Q", "K", "V", "gates")}, attach=False)
    sess = cuda_session(model)
    rng = np.random.default_rng(0)
    feeds = {"Q": rng.standard_normal((1, 4, 8, 8), dtype=np.float32), "K": rng.standard_normal((1, 2, 8, 8), dtype=np.float32),
             "V": rng.standard_normal((1, 2, 8, 8), dtype=np.float32), "gates": np.ones((3, 1, 3), np.float32)}
    with pytest.raises(Exception, match=r"NativeSparseAttention: input 'gates' of shape \[3, 1, 3\] does not broadcast"):
        sess.run(None, feeds)


# NativeSparseAttention's block and window branches on the attention core (each selection list a sequence of
# the paged decode path; the window a causal sliding-window attention) and the dot-product selection with a
# CTA per 16 queries, against our CPU kernel and against the simple CUDA kernels
# (ONNXATTN_SPARSE_CUDA=fast vs simple: one CTA per list and a warp per row). Grid inputs and power-of-two blocks keep the scores exact, so the
# selections must agree entry for entry; the odd block size (24) may round centroids, so there only the rows
# whose selections agree are compared (ties broken differently are not errors).
CORE_CASES = {
    # name: (B, Hq, Hkv, Sq, Skv, D, attributes)
    "paper-shared-causal": (2, 8, 2, 300, 300, 64, dict(block_size=16, top_blocks=6, window=40, causal=1,
                                                          shared_selection=1, sink_blocks=1, local_blocks=1)),
    "seed-per-head-fine": (1, 4, 2, 50, 77, 32, dict(block_size=8, top_blocks=3, top_tokens=5, window=7)),
    "decode-mqa": (3, 8, 1, 1, 1001, 128, dict(block_size=64, top_blocks=4, window=128, causal=1,
                                               shared_selection=1)),
    "odd-block-group-1": (1, 4, 4, 37, 100, 16, dict(block_size=24, top_blocks=3, window=10, causal=1,
                                                     shared_selection=1)),
    "chunk-over-past": (1, 6, 3, 20, 333, 64, dict(block_size=32, top_blocks=5, window=64, causal=1,
                                                   shared_selection=1, sink_blocks=2)),
    # the compression branch (selection by its probabilities, exp rounded per device: near-ties may differ)
    "paper-compressed": (2, 8, 2, 200, 200, 32, dict(block_size=8, top_blocks=4, window=24, causal=1,
                                                     shared_selection=1, sink_blocks=1, local_blocks=1)),
    "compressed-per-head": (1, 4, 2, 45, 90, 16, dict(block_size=4, top_blocks=3, window=5, causal=1)),
    # split-KV inside the core (several splits per list and for the window: the combine's float32 output)
    "decode-long-splits": (1, 8, 2, 1, 4096, 64, dict(block_size=64, top_blocks=16, window=1024, causal=1,
                                                      shared_selection=1)),
    "more-queries-than-keys": (1, 4, 2, 20, 12, 32, dict(block_size=4, top_blocks=2, window=3, causal=1,
                                                         shared_selection=1)),
    "mqa-g32": (1, 32, 1, 40, 100, 64, dict(block_size=16, top_blocks=3, window=20, causal=1, shared_selection=1)),
    "d12-simt-core": (2, 4, 2, 9, 30, 12, dict(block_size=4, top_blocks=3, window=5, causal=1, shared_selection=1)),
    "fine-many-cuts": (1, 2, 1, 30, 600, 32, dict(block_size=16, top_blocks=2, top_tokens=24, window=8)),
    # 12 heads share a list: 5 lists (60 rows) a tensor-core chunk or query tile, not 64
    "shared-g12": (1, 12, 1, 70, 200, 64, dict(block_size=16, top_blocks=4, window=32, causal=1, shared_selection=1)),
}
COMPRESSED = {"paper-compressed", "compressed-per-head"}
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def core_case(name: str, dtype: str):
    import sparse_helpers as sh

    b, hq, hkv, sq, skv, d, attrs = CORE_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = dict(Q=sh.grid(rng, (b, hq, sq, d)), K=sh.grid(rng, (b, hkv, skv, d)), V=sh.grid(rng, (b, hkv, skv, d)),
                  gates=np.round(rng.uniform(0, 1, (b, hq, sq, 3)) * 8) / 8)
    if name in COMPRESSED:  # block means, as the paper's compressor would give at initialisation
        n, bs = skv // attrs["block_size"], attrs["block_size"]
        for x, src in (("compressed_key", "K"), ("compressed_value", "V")):
            arrays[x] = arrays[src][:, :, : n * bs].reshape(b, hkv, n, bs, d).mean(3)
    outputs = ["Y", "selected_blocks"] + (["selected_tokens"] if attrs.get("top_tokens") else [])
    model = sh.one_node_model(sh.NSA, list(arrays), outputs, dtype=dtype, attrs=sh.nsa_attrs(**attrs))
    return model, sh.feeds_in(dtype, **arrays), attrs


def agreeing_rows(got, want, attrs, heads, exact_scores=True):
    """Rows [B, Hq, Sq] whose selections (every list output) agree; asserts they are >= 99.9% of the entries,
    and all of them when the scores are exact (dot products of grid values, power-of-two block sizes)."""
    exact = exact_scores and attrs["block_size"] & (attrs["block_size"] - 1) == 0
    same = np.ones(got[0].shape[:3], bool)
    for g, w in zip(got[1:], want[1:]):
        agree = float(np.mean(g == w))
        assert agree == 1.0 if exact else agree > 0.999, f"selections agree on {agree:.4%} of the entries"
        rows = np.all(g == w, axis=-1)
        same &= np.repeat(rows, heads // rows.shape[1], axis=1)
    return same


def fast_simple_and_cpu(model, feeds, monkeypatch, *, fast_twice: bool = False):
    """The model's outputs on the CUDA EP with ONNXATTN_SPARSE_CUDA=fast, then =simple, and on our CPU kernel.
    fast_twice: the fast path runs twice and must give the same bits both times."""
    from helpers import run_kernel

    sess = cuda_session(model)
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", "fast")
    fast = sess.run(None, feeds)
    if fast_twice:
        np.testing.assert_array_equal(sess.run(None, feeds)[0], fast[0], err_msg="fast path: not deterministic")
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", "simple")
    simple = sess.run(None, feeds)
    monkeypatch.delenv("ONNXATTN_SPARSE_CUDA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run_kernel(model, feeds, threads=8)
    return fast, simple, want


def assert_close_on(rows, y, y_want, tol: float, context: str) -> None:
    """|Y - Y_want| <= tol on the (batch, head, query) rows `rows`; no NaN anywhere in Y."""
    y, y_want = np.asarray(y, np.float64), np.asarray(y_want, np.float64)
    assert not np.isnan(y).any(), f"{context}: NaN in the output"
    err = float(np.abs(y - y_want)[np.broadcast_to(rows[..., None], y.shape)].max(initial=0.0))
    assert err <= tol, f"{context}: max |Y - CPU kernel| = {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("name", list(CORE_CASES))
def test_nsa_fast_path_matches_the_cpu_kernel_and_the_simple_kernels(name, dtype, monkeypatch):
    model, feeds, attrs = core_case(name, dtype)
    core, simple, want = fast_simple_and_cpu(model, feeds, monkeypatch)
    # Both sides round the output once from float32; the core's P.V product takes P in the input dtype
    # (relative error u per weight: |dY| <= u * max|V| per branch, three gated branches) -> 4 u max(1, max|V|).
    v_max = max(1.0, float(np.abs(feeds["V"].astype(np.float32)).max()))
    tol = 2e-4 if dtype == "float32" else 4 * UNIT_ROUNDOFF[dtype] * v_max
    heads = feeds["Q"].shape[1]
    for label, got in (("fast", core), ("simple", simple)):
        rows = agreeing_rows(got, want, attrs, heads, exact_scores=name not in COMPRESSED)
        assert_close_on(rows, got[0], want[0], tol, f"{label}, {name}, {dtype}")


# SparseRoutedAttention's attention by segment (ONNXATTN_SPARSE_CUDA=fast: the routing lists inverted, each chosen
# segment staged once per slot for all the rows that chose it) against our CPU kernel and the row kernel
# (simple). Segments longer than the 64-key tile (several tiles, a partial last one), odd segment sizes, rows
# choosing fewer than top_k segments (early causal rows), GQA, B > 1, Sq < Skv, Dv != D. The routing itself
# is the same tiled selection on both CUDA paths; only rows whose selections agree with the CPU kernel's are
# compared (RoPE'd float32 scores may round differently between devices).
ROUTED_CASES = {
    # name: (B, Hq, Hkv, Sq, Skv, D, Dv, attributes)
    "long-segments-causal": (2, 8, 2, 400, 400, 64, 64, dict(segment_size=100, top_k=3, causal=1, cosine=0, rope=1,
                                                             rope_before_routing=1)),
    "odd-segments-bidirectional": (1, 4, 4, 77, 300, 32, 48, dict(segment_size=65, top_k=2, causal=0, cosine=1,
                                                                  rope=0)),
    "moba-64-top-8": (1, 16, 2, 1024, 1024, 128, 128, dict(segment_size=64, top_k=8, causal=1, cosine=0, rope=1,
                                                           rope_before_routing=1)),
    "chunk-over-past-mqa": (2, 6, 1, 30, 500, 16, 16, dict(segment_size=16, top_k=4, causal=1, cosine=0, rope=1,
                                                           rope_before_routing=0)),
    # Dv = 256: the tensor-core kernels' widest output registers (kMaxDv = 256)
    "dv256": (1, 4, 2, 100, 260, 64, 256, dict(segment_size=64, top_k=3, causal=1, cosine=0, rope=1,
                                               rope_before_routing=1)),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(ROUTED_CASES))
def test_routed_by_segment_matches_the_cpu_kernel_and_the_row_kernel(name, dtype, monkeypatch):
    import sparse_helpers as sh

    b, hq, hkv, sq, skv, d, dv, attrs = ROUTED_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = dict(Q=sh.grid(rng, (b, hq, sq, d)), K=sh.grid(rng, (b, hkv, skv, d)), V=sh.grid(rng, (b, hkv, skv, dv)))
    model = sh.one_node_model(sh.ROUTED, list(arrays), ["Y", "selected_segments"], dtype=dtype,
                              attrs=sh.routed_attrs(**attrs))  # fmt: skip
    feeds = sh.feeds_in(dtype, **arrays)
    fast, rows_kernel, want = fast_simple_and_cpu(model, feeds, monkeypatch, fast_twice=True)
    # float32 math throughout (RoPE'd Q and K, V); the sums run in another order: float32 rounding, then one
    # rounding to the output dtype.
    tol = 2e-4 if dtype == "float32" else 2 * UNIT_ROUNDOFF[dtype] * max(1.0, float(np.abs(arrays["V"]).max()))
    for label, got in (("by segment", fast), ("row kernel", rows_kernel)):
        agree = float(np.mean(got[1] == want[1]))
        assert agree > 0.999, f"{label}: selections agree on {agree:.4%} of the entries"
        rows = np.all(got[1] == want[1], axis=-1)  # [B, Hq, Sq]
        assert_close_on(rows, got[0], want[0], tol, f"{label}, {name}, {dtype}")


def test_routed_by_segment_propagates_nan_as_the_row_kernel(monkeypatch):
    """A NaN in one query row turns that row's output NaN on both CUDA paths, as in the CPU kernel (whatever its
    routing picked from NaN scores); every other row stays finite and the paths agree there within float32."""
    import sparse_helpers as sh

    rng = np.random.default_rng(11)
    arrays = dict(Q=sh.grid(rng, (1, 4, 90, 32)), K=sh.grid(rng, (1, 2, 90, 32)), V=sh.grid(rng, (1, 2, 90, 32)))
    arrays["Q"][0, 1, 40, 5] = np.nan
    attrs = sh.routed_attrs(segment_size=16, top_k=3, causal=1, cosine=0, rope=0)
    model = sh.one_node_model(sh.ROUTED, list(arrays), ["Y", "selected_segments"], attrs=attrs)
    fast, simple, want = fast_simple_and_cpu(model, sh.feeds_in("float32", **arrays), monkeypatch)
    for label, got in (("by segment", fast), ("row kernel", simple), ("CPU kernel", want)):
        nan_rows = np.isnan(got[0]).any(axis=-1)
        assert nan_rows[0, 1, 40] and nan_rows.sum() == 1, f"{label}: NaN rows {np.argwhere(nan_rows).tolist()}"
    finite = ~np.isnan(want[0])
    np.testing.assert_allclose(fast[0][finite], simple[0][finite], atol=2e-4, rtol=2e-4)


def test_a_bad_sparse_attention_setting_is_an_error(monkeypatch):
    model, feeds, _ = core_case("decode-mqa", "float32")
    sess = cuda_session(model)
    monkeypatch.setenv("ONNXATTN_SPARSE_CUDA", "core")
    with pytest.raises(Exception, match=r"NativeSparseAttention: .*ONNXATTN_SPARSE_CUDA must be auto, simple, fast "
                                        r"or mma, got 'core'"):  # fmt: skip
        sess.run(None, feeds)


# The tensor-core paths (ONNXATTN_SPARSE_CUDA=mma, the default since stop 23; asked for explicitly here): NSA's block
# branch and SparseRoutedAttention's attention for 16-bit inputs by block (sparse/cuda_blocks_mma.cuh: the inverted
# lists, a chosen block staged once per slot for up to 64 rows, whole lists: G rows for shared lists, S and P.V on
# mma.sync), and NSA's selection on tensor cores (select_mma_kernel: dot scores against float32 centroids split into two
# 16-bit tiles; the compression branch as a flash pass plus a probability pass; one row per list: the routing and NSA's
# per-head lists, with float32 inputs as float16 hi + lo pairs). Grid inputs with power-of-two blocks keep every dot
# score exact, so those selections must agree with the CPU kernel's entry for entry; elsewhere (blocks of 24, the
# compression branch's exp) near-ties may go the other way, and the rows whose lists agree are compared. Cases: shared
# lists with G = 4, 8, 32 (16, 8, 2 lists per chunk), G = 1 (64), per-head lists without causality, blocks of 24
# (partial tiles), Sq = 1, Sq > Skv (rows before any key), segments of 100 and 65 keys (two tiles, a partial one), Dv =
# 48 != D, MQA; D = 12 is not a multiple of 16 and stays on the fast path.
MMA_SANITIZE_NSA = ("paper-shared-causal", "odd-block-group-1", "more-queries-than-keys", "seed-per-head-fine")
MMA_SANITIZE_ROUTED = ("long-segments-causal", "odd-segments-bidirectional")


def kernels_of(fn):
    """(fn(), the names of the CUDA kernels it ran): torch.profiler's CUPTI sees every kernel of the process,
    onnxruntime's included (benchmarks/profile_cuda.py)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return out, {e.name for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")}


def with_sparse_path(path: str, fn, **more: str | None):
    """fn() with ONNXATTN_SPARSE_CUDA=path and ONNXATTN_SPARSE_CUDA_<NAME>=value for each NAME=value of `more`
    (read by the kernels on every call; None: unset, the default), then the old values back."""
    switches = {"ONNXATTN_SPARSE_CUDA": path} | {f"ONNXATTN_SPARSE_CUDA_{k}": v for k, v in more.items()}
    old = {name: os.environ.get(name) for name in switches}
    for name, value in switches.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        return fn()
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def nsa_mma_tolerance(feeds, dtype: str) -> float:
    """From the exact result: P rounded to the input dtype before P.V (relative u per weight, |dY| <= u max|V|
    per branch, three gated branches) and one rounding of Y -> 4 u max(1, max|V|), as the fast path's core."""
    return 4 * UNIT_ROUNDOFF[dtype] * max(1.0, float(np.abs(feeds["V"].astype(np.float32)).max()))


def routed_mma_tolerance(arrays, dtype: str, scale: float) -> float:
    """Also Q and K rounded to the input dtype after RoPE (the float32 paths keep them): each score moves by at
    most 2 u scale |q| |k| (RoPE keeps norms), each weight by a factor within exp(+-2 ds)."""
    u = UNIT_ROUNDOFF[dtype]
    norm = lambda x: float(np.sqrt((x.astype(np.float64) ** 2).sum(-1)).max())  # noqa: E731
    ds = 2 * u * scale * norm(arrays["Q"]) * norm(arrays["K"])
    return (np.expm1(2 * ds) + 4 * u) * max(1.0, float(np.abs(arrays["V"]).max()))


def routed_case(name: str, dtype: str):
    import sparse_helpers as sh

    b, hq, hkv, sq, skv, d, dv, attrs = ROUTED_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    arrays = dict(Q=sh.grid(rng, (b, hq, sq, d)), K=sh.grid(rng, (b, hkv, skv, d)), V=sh.grid(rng, (b, hkv, skv, dv)))
    model = sh.one_node_model(sh.ROUTED, list(arrays), ["Y", "selected_segments"], dtype=dtype,
                              attrs=sh.routed_attrs(**attrs))  # fmt: skip
    return model, arrays, sh.feeds_in(dtype, **arrays), routed_mma_tolerance(arrays, dtype, d**-0.5)


def model_and_feeds(kind: str, name: str, dtype: str):
    """The (model, feeds) of NSA case `name` (kind "nsa") or routed case `name` (kind "routed")."""
    return core_case(name, dtype)[:2] if kind == "nsa" else routed_case(name, dtype)[0:3:2]


def exact_selection(name: str) -> bool:
    """Whether the case's dot scores are exact on every path (power-of-two blocks, no compression branch)."""
    bs = CORE_CASES[name][-1]["block_size"]
    return name not in COMPRESSED and bs & (bs - 1) == 0


def mma_agreeing_rows(got, want, heads: int, exact: bool):
    """Rows [B, Hq, Sq] whose lists agree: all of them when the scores are exact, else at least 98% of the
    entries (near-ties broken the other way are not errors)."""
    same = np.ones(got[0].shape[:3], bool)
    for g, w in zip(got[1:], want[1:]):
        agree = float(np.mean(g == w))
        assert agree == 1.0 if exact else agree >= 0.98, f"selections agree on {agree:.4%} of the entries"
        same &= np.repeat(np.all(g == w, axis=-1), heads // g.shape[1], axis=1)
    return same


def nsa_mma_and_fast(name: str, dtype: str):
    """Y on the mma path and on the fast path (0 on the rows whose lists differ), and the tolerance between them
    (twice each one's from the exact result). For sanitize_cases.py's `sparse_mma` family too."""
    model, feeds, _ = core_case(name, dtype)
    sess = cuda_session(model)
    mma = with_sparse_path("mma", lambda: sess.run(None, feeds))
    fast = with_sparse_path("fast", lambda: sess.run(None, feeds))
    rows = mma_agreeing_rows(mma, fast, feeds["Q"].shape[1], exact_selection(name))[..., None]
    return np.where(rows, mma[0], 0), np.where(rows, fast[0], 0), 2 * nsa_mma_tolerance(feeds, dtype)


def routed_mma_and_fast(name: str, dtype: str):
    """As nsa_mma_and_fast. The routing runs on tensor cores too (float32 RoPE'd scores as float16 hi + lo pairs,
    ~21 bits): near-ties may go the other way, so the rows whose lists agree are compared."""
    model, arrays, feeds, tol = routed_case(name, dtype)
    sess = cuda_session(model)
    mma = with_sparse_path("mma", lambda: sess.run(None, feeds))
    fast = with_sparse_path("fast", lambda: sess.run(None, feeds))
    rows = mma_agreeing_rows(mma, fast, feeds["Q"].shape[1], exact=False)[..., None]
    tol += 2 * UNIT_ROUNDOFF[dtype] * max(1.0, float(np.abs(arrays["V"]).max()))
    return np.where(rows, mma[0], 0), np.where(rows, fast[0], 0), tol


def mma_and_cpu(model, feeds):
    """Y etc. on the mma path (run twice: the same bits both times) and on our CPU kernel."""
    from helpers import run_kernel

    sess = cuda_session(model)
    got = with_sparse_path("mma", lambda: sess.run(None, feeds))
    again = with_sparse_path("mma", lambda: sess.run(None, feeds))
    np.testing.assert_array_equal(again[0], got[0], err_msg="mma path: not deterministic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run_kernel(model, feeds, threads=8)
    return got, want


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(CORE_CASES))
def test_nsa_tensor_core_blocks_match_the_cpu_kernel(name, dtype):
    model, feeds, _ = core_case(name, dtype)
    got, want = mma_and_cpu(model, feeds)
    rows = mma_agreeing_rows(got, want, feeds["Q"].shape[1], exact_selection(name))
    # the compression branch's P.V also takes P in 16 bits now: still within 4 u max|V| (one u per branch)
    assert_close_on(rows, got[0], want[0], nsa_mma_tolerance(feeds, dtype), f"mma, {name}, {dtype}")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(ROUTED_CASES))
def test_routed_tensor_core_blocks_match_the_cpu_kernel(name, dtype):
    model, arrays, feeds, tol = routed_case(name, dtype)
    got, want = mma_and_cpu(model, feeds)
    rows = mma_agreeing_rows(got, want, feeds["Q"].shape[1], exact=False)  # the routing's near-ties (see above)
    assert_close_on(rows, got[0], want[0], tol, f"mma, {name}, {dtype}")


@pytest.mark.parametrize("kind, name", [("nsa", n) for n in ("paper-shared-causal", "mqa-g32", "decode-long-splits")]
                         + [("routed", "moba-64-top-8")])  # fmt: skip
def test_tensor_core_blocks_match_the_fast_path(kind, name):
    got, fast, tol = (nsa_mma_and_fast if kind == "nsa" else routed_mma_and_fast)(name, "bfloat16")
    err = float(np.abs(got.astype(np.float64) - fast.astype(np.float64)).max(initial=0.0))
    assert err <= tol, f"{kind} {name}: max |mma - fast| = {err:.3g} > {tol:.3g}"


def test_tensor_core_blocks_leave_float32_on_the_fast_path():
    """float32 never takes the 16-bit kernel: ONNXATTN_SPARSE_CUDA=mma gives the fast path's bits."""
    model, feeds, _ = core_case("paper-shared-causal", "float32")
    sess = cuda_session(model)
    mma = with_sparse_path("mma", lambda: sess.run(None, feeds))
    fast = with_sparse_path("fast", lambda: sess.run(None, feeds))
    for m, f in zip(mma, fast):
        np.testing.assert_array_equal(m, f)


# The latency work, the default since the H200 run at 82087dc passed this test and timed it (NSA 9.49 -> 4.58 ms at
# 16k, routed 13.59 -> 7.93); LOADS=sync and ARGMAX=shuffle keep the old kernels, compared with here.
# ONNXATTN_SPARSE_CUDA_LOADS=async: the tensor-core kernels with their memory latencies overlapped; by block: cp.async
# staging, the chunk's key found by a warp, each row's state read early and its output row read whole before it is
# written; the selection (select_mma_kernel, select_split_kernel): cp.async for 16-bit tiles, float32 ones loaded four
# chunks a thread at a time; the routed attention reads 16-bit copies of its RoPE'd Q and K (rounded as the kernel
# rounds float32 rows) and V as it is. ONNXATTN_SPARSE_CUDA_ARGMAX=redux: every path's selection picks by two warp
# reductions instead of five shuffle rounds. The same arithmetic in the same order: the same bits, selections
# included, on every case, each switch alone and both, the default (both unset) (cases the tensor-core kernels do not
# take run the fast path every time). If only routed long-segments-causal (segments of 100 keys, causal) fails here,
# compare sync with sync first: the inverted lists' fill order (atomics) decides which rows share a chunk, and a
# chunk's last row decides how many tiles it scores; a tile hidden from a row still rescales it by ex2(m s - m s) ~ 1
# (cuda_mma_tiles.cuh).
OLD_KERNELS = {"LOADS": "sync", "ARGMAX": "shuffle"}
LATENCY_SWITCHES = ({"LOADS": "async", "ARGMAX": "shuffle"}, {"LOADS": "sync", "ARGMAX": "redux"},
                    {"LOADS": None, "ARGMAX": None})  # each alone, then the default: both  # fmt: skip


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind, name", [("nsa", n) for n in CORE_CASES] + [("routed", n) for n in ROUTED_CASES])
def test_the_latency_switches_give_the_same_bits(kind, name, dtype):
    model, feeds = model_and_feeds(kind, name, dtype)
    sess = cuda_session(model)
    runs = [("mma", OLD_KERNELS, s) for s in LATENCY_SWITCHES]
    runs.append(("fast", {"ARGMAX": "shuffle"}, {"ARGMAX": None}))  # the fast path's selections take redux too
    for path, base, switches in runs:
        profiled = path == "mma" and switches["LOADS"] != "sync"  # (the profiler only where its kernels are checked)
        run = (lambda: kernels_of(lambda: sess.run(None, feeds))) if profiled else (lambda: (sess.run(None, feeds), ()))
        want, want_kernels = with_sparse_path(path, run, **base)
        got, got_kernels = with_sparse_path(path, run, **switches)
        if profiled and want_kernels and got_kernels:  # the overlapped kernel really ran, and the old one did not
            synced = any("blocks_mma_kernel" in k for k in want_kernels)
            assert any("blocks_mma_overlapped_kernel" in k for k in got_kernels) == synced, sorted(got_kernels)
            assert not any("blocks_mma_kernel" in k for k in got_kernels), sorted(got_kernels)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w, err_msg=f"{kind} {name} {dtype}: {path} with {switches}")


@pytest.mark.parametrize("degenerate", ["zero-queries", "nan-key"])
@pytest.mark.parametrize("kind, name", [("nsa", "paper-shared-causal"), ("routed", "moba-64-top-8")])
def test_redux_argmax_breaks_ties_and_passes_over_nan_as_the_shuffles(kind, name, degenerate):
    """The redux argmax on the scores random inputs never give: all tied at zero (zero queries: the lowest block
    wins each pick) and NaN for the blocks holding a NaN key (never picked): the shuffle argmax's lists and Y.
    (tests/test_sparse_cuda_host.py checks the lane loop on such lists through a host copy of it.)"""
    model, feeds = model_and_feeds(kind, name, "bfloat16")
    feeds = dict(feeds)
    if degenerate == "zero-queries":
        feeds["Q"] = np.zeros_like(feeds["Q"])
    else:
        feeds["K"] = feeds["K"].copy()
        feeds["K"][:, :, 37, 5] = np.nan  # block or segment 0's mean, hence its scores
    sess = cuda_session(model)
    for path in ("mma", "fast"):
        want = with_sparse_path(path, lambda: sess.run(None, feeds), ARGMAX="shuffle")
        got = with_sparse_path(path, lambda: sess.run(None, feeds), ARGMAX="redux")
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w, err_msg=f"{kind} {name} {degenerate}: {path}, redux vs shuffle")


# ONNXATTN_SPARSE_CUDA_ROUTE=groups, the default since the H200 run at 2c9a48e passed these: SparseRoutedAttention's
# tensor-core routing (select_split_kernel) picks each list by group maxima (cuda_select.cu warp_select_groups: a lane
# keeps the best of its groups of 32 keys, a pick rescans the winner's group) instead of rescanning every key per
# pick, and its warps score tiles of 16 centroids instead of 32 (two CTAs an SM at D = 128, Nb = 1024). The same
# scores (each sums over D in the same order) and the same pick rule: the same lists and Y bits as ROUTE=split, under
# either load mode, on every routed case, on all-tied scores (zero queries: the lowest blocks win) and on NaN scores
# (never picked).
def split_routing_kernels(kernels) -> list[str]:
    """The select_split_kernel instances among the profiled kernel names, by their template arguments."""
    return sorted(k.split(">(")[0].split("select_split_kernel<")[1] for k in kernels if "select_split_kernel<" in k)


@pytest.mark.parametrize("loads", [None, "sync"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(ROUTED_CASES))
def test_the_grouped_routing_gives_the_same_bits(name, dtype, loads):
    model, feeds = model_and_feeds("routed", name, dtype)
    sess = cuda_session(model)
    run = lambda: kernels_of(lambda: sess.run(None, feeds))  # noqa: E731
    want, want_kernels = with_sparse_path("mma", run, LOADS=loads, ROUTE="split")
    got, got_kernels = with_sparse_path("mma", run, LOADS=loads, ROUTE=None)  # the default: groups
    if want_kernels and got_kernels:  # (the profiler saw the kernels) the switch took the grouped instance, once
        assert [k.endswith("false") for k in split_routing_kernels(want_kernels)] == [True], sorted(want_kernels)
        assert [k.endswith("true") for k in split_routing_kernels(got_kernels)] == [True], sorted(got_kernels)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w, err_msg=f"routed {name} {dtype} LOADS={loads}: ROUTE=groups vs split")


@pytest.mark.parametrize("degenerate", ["zero-queries", "nan-key"])
def test_the_grouped_routing_breaks_ties_and_passes_over_nan_as_the_split_one(degenerate):
    model, feeds = model_and_feeds("routed", "moba-64-top-8", "bfloat16")
    feeds = dict(feeds)
    if degenerate == "zero-queries":
        feeds["Q"] = np.zeros_like(feeds["Q"])
    else:
        feeds["K"] = feeds["K"].copy()
        feeds["K"][:, :, 37, 5] = np.nan  # segment 0's mean, hence its scores
    sess = cuda_session(model)
    want = with_sparse_path("mma", lambda: sess.run(None, feeds), ROUTE="split")
    got = with_sparse_path("mma", lambda: sess.run(None, feeds), ROUTE="groups")
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w, err_msg=f"routed {degenerate}: ROUTE=groups vs split")


@pytest.mark.parametrize("kind, switch, values",
                         [(kind, *sv) for kind in ("nsa", "routed") for sv in (("LOADS", "async or sync"),
                          ("ARGMAX", "redux or shuffle"), ("BLOCKS", "lists, queries or auto"))]
                         + [("routed", "ROUTE", "groups or split")])  # (ROUTE: the routed op's only)  # fmt: skip
def test_a_bad_latency_switch_is_an_error(kind, switch, values):
    model, feeds = model_and_feeds(kind, "paper-shared-causal" if kind == "nsa" else "moba-64-top-8", "bfloat16")
    sess = cuda_session(model)
    op = "NativeSparseAttention" if kind == "nsa" else "SparseRoutedAttention"
    with pytest.raises(Exception, match=rf"{op}: environment variable ONNXATTN_SPARSE_CUDA_{switch} must be {values}, "
                                        r"got 'later'"):  # fmt: skip
        with_sparse_path("mma", lambda: sess.run(None, feeds), **{switch: "later"})


# ONNXATTN_SPARSE_CUDA_BLOCKS=queries, opt-in until a GPU run has checked and timed it: the attention by block by query
# tiles (cuda_blocks_mma.cu blocks_query_tiles_kernel: a CTA per run of consecutive queries walks the union of their
# lists in ascending block order, each staged tile scored for the rows whose list holds its block, outputs kept in
# registers) instead of the inverted lists. Each row sums its blocks in another order, so not the lists' bits: the
# same selections (the selection kernels are the same), Y within the mma tolerance of the CPU kernel and within twice
# it of the inverted lists, the same bits on a second run; and under LOADS=async the routed attention reads 16-bit
# copies of its RoPE'd Q and K rounded as the float32 staging rounds them: the same bits as under LOADS=sync. The
# cases cover shared lists of 4, 12 (5 queries, 60 rows a tile), 32 (2 queries a tile) and 1 heads, per-head lists,
# Sq = 1, Sq > Skv, partial blocks and segments of 100 and 65 keys (two tiles, one partial), bidirectional routing,
# Dv = 48 and 256, D = 16 and MQA.
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind, name", [("nsa", n) for n in CORE_CASES] + [("routed", n) for n in ROUTED_CASES])
def test_query_tiles_match_the_cpu_kernel_and_the_inverted_lists(kind, name, dtype):
    from helpers import run_kernel

    if kind == "nsa":
        model, feeds, _ = core_case(name, dtype)
        tol, exact = nsa_mma_tolerance(feeds, dtype), exact_selection(name)
    else:
        model, _, feeds, tol = routed_case(name, dtype)
        exact = False  # the routing's near-ties (see above)
    sess = cuda_session(model)
    lists, lists_kernels = with_sparse_path("mma", lambda: kernels_of(lambda: sess.run(None, feeds)), BLOCKS="lists",
                                            LOADS="sync")  # fmt: skip
    tiles, tiles_kernels = with_sparse_path("mma", lambda: kernels_of(lambda: sess.run(None, feeds)),
                                            BLOCKS="queries", LOADS="sync")  # fmt: skip
    if lists_kernels and tiles_kernels:  # (where the profiler sees kernels: it saw onnxruntime's on the H200)
        # the query tiles ran wherever the inverted lists' tensor-core kernel had (not d12-simt-core's D = 12)
        ran = [any(name in k for k in ks) for name, ks in (("blocks_mma", lists_kernels),
                                                           ("blocks_query_tiles_kernel", lists_kernels),
                                                           ("blocks_query_tiles_kernel", tiles_kernels))]  # fmt: skip
        assert ran[1:] == [False, ran[0]], (sorted(lists_kernels), sorted(tiles_kernels))
    overlapped = with_sparse_path("mma", lambda: sess.run(None, feeds), BLOCKS="queries", LOADS="async")
    for t, a in zip(tiles, overlapped):
        np.testing.assert_array_equal(a, t, err_msg=f"{kind} {name} {dtype}: query tiles, LOADS=async vs sync")
    for t, w in zip(tiles[1:], lists[1:]):
        np.testing.assert_array_equal(t, w, err_msg=f"{kind} {name} {dtype}: the selections")
    assert_close_on(np.ones(tiles[0].shape[:3], bool), tiles[0], lists[0], 2 * tol, f"tiles vs lists, {name}, {dtype}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = run_kernel(model, feeds, threads=8)
    rows = mma_agreeing_rows(tiles, want, feeds["Q"].shape[1], exact)
    assert_close_on(rows, tiles[0], want[0], tol, f"query tiles, {name}, {dtype}")


def test_auto_takes_query_tiles_where_their_ctas_fill_the_device():
    """ONNXATTN_SPARSE_CUDA_BLOCKS=auto: query tiles where their CTAs number at least the SMs (the routed MoBA case:
    16 heads x 16 tiles of 64 queries = 256), the inverted lists elsewhere (an NSA decode step: 3 x 1 CTAs); the
    same bits as the path it picks."""
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count
    for kind, name, tiles in (("routed", "moba-64-top-8", 256), ("nsa", "decode-mqa", 3)):
        model, feeds = model_and_feeds(kind, name, "bfloat16")
        sess = cuda_session(model)
        auto = with_sparse_path("mma", lambda: sess.run(None, feeds), BLOCKS="auto")
        picked = "queries" if tiles >= sm_count else "lists"
        want = with_sparse_path("mma", lambda: sess.run(None, feeds), BLOCKS=picked)
        for a, w in zip(auto, want):
            np.testing.assert_array_equal(a, w, err_msg=f"{kind} {name}: auto should pick {picked}")
