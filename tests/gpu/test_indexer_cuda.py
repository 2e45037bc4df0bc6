"""LightningIndexer through onnxruntime-gpu's CUDA execution provider with our library registered, against the
numpy oracle (tests/oracle_indexer.py), each node proven to run on the CUDA EP from onnxruntime's profile, with
both score kernels for 16-bit inputs (tensor cores, the default, and CUDA cores under ONNXATTN_INDEXER_CUDA=simt):
- the CPU suite's numerics matrix (tests/test_indexer_numerics.py: every dtype, shared buffers with NaN in the
  hidden slots, exact ties on grid inputs) by the suite's own check;
- DeepSeek-V3.2's shape (64 heads of 128, top_k = 2048) over long rows (T = 40000) in float32, float16 and
  bfloat16: grid inputs (exact scores: picks equal the oracle's, a k-th score shared by many keys, so the tie
  rule is tested where a selection over 40000 keys is split into passes) and unit-normal inputs (a top-k within
  the float32 bound; a kernel scoring float32 inputs in TF32 would fail it), decode and chunk, concatenated
  and shared-buffer mode with rows that see fewer than top_k keys (padding);
- causality (keys after a query's position perturbed: its picks stay), and bad shapes rejected with the
  kernel's message; past_lengths out of range is clamped by the CUDA kernel (its doc), so only "no crash and
  entries in range" is asserted there.

Needs a GPU and onnxruntime-gpu; skipped otherwise."""

from __future__ import annotations

import os
import sys
import time
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
MATRIX_BUDGET_S = float(os.environ.get("INDEXER_MATRIX_BUDGET_S", "30"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the CPU suite's cases and oracle
OP = "LightningIndexer"


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)


# (dtype, score kernel): float32 has the CUDA-core kernel only
DTYPE_KERNELS = [("float32", "simt"), ("float16", "mma"), ("float16", "simt"), ("bfloat16", "mma"),
                 ("bfloat16", "simt")]


@pytest.fixture(params=["mma", "simt"])
def score_kernel(request, monkeypatch):
    """ONNXATTN_INDEXER_CUDA for the test (the plan reads it per call)."""
    monkeypatch.setenv("ONNXATTN_INDEXER_CUDA", request.param)
    return request.param


def numerics():
    try:
        import test_indexer_numerics as module
    except Exception as e:  # noqa: BLE001 - report why instead of failing the whole GPU run
        pytest.skip(f"tests/test_indexer_numerics.py not importable here: {type(e).__name__}: {e}")
    return module


def run_cuda(model, feeds, tmp_path) -> np.ndarray:
    """key_indices from a CUDA EP session, asserting the node ran on the CUDA EP."""
    sess = ort_cuda.session(ORT, model.SerializeToString(), library=sdpa_cuda_lib.library_path(),
                            profile_prefix=str(tmp_path / "ort"))
    out = sess.run(None, dict(feeds))[0]
    assert ort_cuda.node_providers(sess, OP) == {ort_cuda.CUDA_EP}, "LightningIndexer did not run on the CUDA EP"
    return out


def test_the_indexer_suite_numerics_matrix_on_the_cuda_ep(score_kernel, tmp_path):
    n = numerics()
    start, ran = time.perf_counter(), 0
    # the CUDA-core kernel runs every case; the tensor-core one takes the 16-bit cases (float32 stays on CUDA cores)
    cases = n.CASES if score_kernel == "simt" else [c for c in n.CASES if c.dtype != "float32"]
    for case in cases:
        if time.perf_counter() - start > MATRIX_BUDGET_S:
            break
        got = run_cuda(n.model_of(case), n.feeds_of(case.id), tmp_path)
        try:
            n.check(case, [got])
        except AssertionError as e:
            raise AssertionError(f"{case.id}: {e}") from None
        ran += 1
    print(f"{ran} of {len(cases)} indexer cases ({score_kernel}) ran on the CUDA EP in "
          f"{time.perf_counter() - start:.0f} s")
    assert ran >= min(20, len(cases))


# name: (B, S, T, H, D, top_k, past_lengths or None, values)
LONG = {
    "decode-t40000": (2, 1, 40000, 64, 128, 2048, None, "grid"),
    "chunk-t40000": (1, 4, 40000, 64, 128, 2048, None, "normal"),
    "decode-t40000-normal": (2, 1, 40000, 64, 128, 2048, None, "normal"),
    # rows at 0 (sees 1..3 keys: padding), in the middle, and at the buffer's end
    "shared-t40000": (3, 3, 40000, 64, 128, 2048, (0, 20011, 39997), "grid"),
    "shared-t40000-normal": (3, 2, 40000, 32, 64, 2048, (1500, 0, 39998), "normal"),
    # odd sizes: T not a multiple of any tile, top_k not a power of two, D = 96
    "odd-t33333": (2, 3, 33333, 16, 96, 1000, None, "grid"),
    "prefill-t4099": (1, 37, 4099, 8, 64, 2048, None, "grid"),
}


def long_case(name: str, dtype: str):
    n = numerics()
    b, s, t, h, d, k, past, values = LONG[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if values == "grid":  # multiples of 1/4 in +-2, scale 1/8: every score is exact in float32
        def draw(shape):
            return np.clip(np.round(rng.standard_normal(shape) * 4) / 4, -2, 2).astype(np.float32)
        scale = 0.125
    else:
        def draw(shape):
            return rng.standard_normal(shape).astype(np.float32)
        scale = 0.0
    query, key = draw((b, s, h * d)), draw((b, 1, t, d))
    weights = draw((b, s, h)) if values == "grid" else (draw((b, s, h)) * h**-0.5).astype(np.float32)
    feeds = {"query": n.round_to(query, dtype), "key": n.round_to(key, dtype), "weights": weights}
    inputs = n.INPUTS[:3]
    if past is not None:
        feeds["past_lengths"] = np.asarray(past, np.int64)
        for row, length in enumerate(past):
            feeds["key"][row, :, length + s:] = np.nan
        inputs = n.INPUTS
    attrs = dict(num_heads=h, top_k=k, scale=scale)
    return n.indexer_model(inputs, dtype=dtype, attrs=attrs), feeds, attrs, values


@pytest.mark.parametrize("dtype, kernel", DTYPE_KERNELS)
@pytest.mark.parametrize("name", list(LONG))
def test_long_rows_match_the_oracle(name, dtype, kernel, tmp_path, monkeypatch):
    from oracle_indexer import assert_topk_within, indexer_oracle

    monkeypatch.setenv("ONNXATTN_INDEXER_CUDA", kernel)
    model, feeds, attrs, values = long_case(name, dtype)
    got = run_cuda(model, feeds, tmp_path)
    if values == "grid":
        want = indexer_oracle(**feeds, **attrs)
        assert got.shape == want.shape and got.dtype == np.int64
        bad = np.argwhere((got != want).any(-1))
        assert not bad.size, (f"{len(bad)} rows differ from the oracle, first {bad[0].tolist()}: got "
                              f"{got[tuple(bad[0])][:16].tolist()}..., want {want[tuple(bad[0])][:16].tolist()}...")
    else:
        assert_topk_within(got, **feeds, **attrs)


@pytest.mark.parametrize("dtype, kernel", DTYPE_KERNELS)
def test_causal_rows_ignore_the_future_on_cuda(dtype, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXATTN_INDEXER_CUDA", kernel)
    n = numerics()
    rng = np.random.default_rng(11)
    b, s, t, h, d = 2, 6, 3000, 8, 64
    query = n.round_to(rng.standard_normal((b, s, h * d)), dtype)
    key = n.round_to(rng.standard_normal((b, 1, t, d)), dtype)
    weights = np.abs(rng.standard_normal((b, s, h))).astype(np.float32)
    model = n.indexer_model(dtype=dtype, attrs=dict(num_heads=h, top_k=256))
    base = run_cuda(model, dict(query=query, key=key, weights=weights), tmp_path)
    for i in range(s):
        future = key.copy()
        # keys after row i's position made to score high for it (positive weights: aligned with every head)
        head_sum = np.asarray(query[:, i], np.float32).reshape(b, h, d).sum(1)
        future[:, 0, t - s + i + 1:] = n.round_to(np.sign(head_sum)[:, None, :] * 2, dtype)
        got = run_cuda(model, dict(query=query, key=future, weights=weights), tmp_path)
        np.testing.assert_array_equal(got[:, i], base[:, i], err_msg=f"row {i}")


def test_bad_shapes_are_errors_from_the_cuda_kernel(tmp_path):
    n = numerics()
    model = n.indexer_model(attrs=dict(num_heads=4, top_k=3), shapes={x: None for x in n.INPUTS[:3]}, attach=False)
    rng = np.random.default_rng(0)
    feeds = dict(query=rng.standard_normal((2, 5, 64)).astype(np.float32),
                 key=rng.standard_normal((2, 1, 9, 16)).astype(np.float32),
                 weights=rng.standard_normal((2, 5, 3)).astype(np.float32))
    sess = ort_cuda.session(ORT, model.SerializeToString(), library=sdpa_cuda_lib.library_path())
    with pytest.raises(Exception, match=r"LightningIndexer: .*'weights'"):
        sess.run(None, feeds)


@pytest.mark.parametrize("past", [[-1, 0], [0, 5], [2**62, 0]])
def test_past_lengths_out_of_range_do_not_crash_on_cuda(past, tmp_path):
    """The CUDA kernel cannot raise without synchronising: it clamps (the op's doc). Whatever it picks must be a
    valid key_indices list (entries in [-1, T), and the process and its CUDA context survive)."""
    n = numerics()
    model = n.indexer_model(n.INPUTS, attrs=dict(num_heads=4, top_k=3), shapes={x: None for x in n.INPUTS},
                            attach=False)
    rng = np.random.default_rng(0)
    feeds = dict(query=rng.standard_normal((2, 5, 64)).astype(np.float32),
                 key=rng.standard_normal((2, 1, 9, 16)).astype(np.float32),
                 weights=rng.standard_normal((2, 5, 4)).astype(np.float32), past_lengths=np.asarray(past, np.int64))
    sess = ort_cuda.session(ORT, model.SerializeToString(), library=sdpa_cuda_lib.library_path())
    try:
        got = sess.run(None, feeds)[0]
    except Exception as e:  # noqa: BLE001 - an error naming the input is fine too
        assert "LightningIndexer" in str(e) and "'past_lengths'" in str(e), str(e)
        return
    assert got.shape == (2, 5, 3) and ((got >= -1) & (got < 9)).all(), got
    torch.cuda.synchronize()
    torch.empty(1, device="cuda").add_(1).item()  # the context is alive
