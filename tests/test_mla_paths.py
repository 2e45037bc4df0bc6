"""The CPU kernel's two formulations of MultiHeadLatentAttention at DeepSeek-V3's head sizes (R=512,
Dr=64, Dn=Dv=128): absorbed and expanded agree (float32, <= 1e-4 relative), the cost model picks absorbed
for decode and expanded for long prefill (ONNXATTN_MLA_PATH overrides it), and a prefill followed by
decode steps through onnxruntime equals one pass over the whole sequence, in both cache modes."""

from __future__ import annotations

import ctypes

import numpy as np
import onnxruntime as ort
import pytest

from helpers import kernel_ops_run, kernel_session, run_function
from mla_helpers import MLA, PATHS, mla_model, mla_path
from onnxattn.cuda_ep import library_path

R, DR, DN, DV = 512, 64, 128, 128


def _feeds(rng, *, batch, seq, heads, past, dtype=np.float32):
    f = lambda *shape, scale=1.0: (rng.standard_normal(shape) * scale).astype(dtype)  # noqa: E731
    return {"query": f(batch, seq, heads * (DN + DR)), "latent": f(batch, seq, R), "k_rope": f(batch, seq, DR),
            "w_uk": f(heads, R, DN, scale=R**-0.5), "w_uv": f(heads, R, DV, scale=R**-0.5),
            "past_latent": f(batch, past, R), "past_k_rope": f(batch, past, DR)}


@pytest.mark.parametrize("batch, seq, heads, past", [(1, 1, 16, 300), (2, 1, 8, 97), (1, 19, 4, 40), (1, 1, 4, 5000)],
                         ids=["decode-h16", "decode-h8-b2", "chunk-s19", "decode-split-keys"])
def test_absorbed_and_expanded_agree(batch, seq, heads, past):
    feeds = _feeds(np.random.default_rng(seq * 100 + heads), batch=batch, seq=seq, heads=heads, past=past)
    model = mla_model(["past_latent", "past_k_rope"], with_present=True, attrs=dict(num_heads=heads, rope_interleaved=1))
    outputs = {}
    for path in PATHS:
        with mla_path(path):
            session = kernel_session(model, profile=True)
            outputs[path] = session.run(None, feeds)
            assert MLA in kernel_ops_run(session)
    absorbed, expanded = outputs["absorbed"], outputs["expanded"]
    scale = np.abs(expanded[0]).max()
    assert np.abs(absorbed[0] - expanded[0]).max() / scale <= 1e-4
    assert not np.array_equal(absorbed[0], expanded[0]), "the two forms round differently: both ran"
    for a, e in zip(absorbed[1:], expanded[1:]):
        np.testing.assert_array_equal(a, e)
    function = run_function(model, feeds)[0]
    assert np.abs(absorbed[0] - function).max() / scale <= 1e-4


@pytest.mark.parametrize("window", [0, 3000])
def test_split_key_decode_in_shared_buffers(window):
    """Decode over a long cache splits the keys across threads (>= 2048 keys per split) and merges the
    splits by log-sum-exp: per-sequence lengths (a long one, a short one whose later splits are empty), a
    window that empties the first splits, NaN in the stale slots; against the reference function."""
    rng = np.random.default_rng(window)
    heads, buffer, lengths = 4, 6400, np.array([6000, 37], np.int64)
    feeds = _feeds(rng, batch=2, seq=1, heads=heads, past=buffer)
    for b, n in enumerate(lengths):
        feeds["past_latent"][b, n + 1:] = np.nan
        feeds["past_k_rope"][b, n + 1:] = np.nan
    feeds["past_lengths"] = lengths
    model = mla_model(["past_latent", "past_k_rope", "past_lengths"], with_present=True,
                      attrs=dict(num_heads=heads, rope_interleaved=1, window=window))
    session = kernel_session(model, threads=2, profile=True)
    got = session.run(None, feeds)
    assert MLA in kernel_ops_run(session)
    want = run_function(model, feeds)
    scale = np.abs(want[0]).max()
    assert np.abs(got[0] - want[0]).max() / scale <= 1e-4
    np.testing.assert_array_equal(np.isnan(got[1]), np.isnan(want[1]))


def _choice(batch, seq, heads, past, causal=1, window=0, rank=R, nope=DN, rope=DR, value=DV):
    fn = ctypes.CDLL(library_path()).OnnxAttnMlaCpuPath
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_int64] * 10 + [ctypes.POINTER(ctypes.c_double)] * 2
    absorbed, expanded = ctypes.c_double(), ctypes.c_double()
    path = fn(batch, seq, heads, rank, nope, rope, value, past, causal, window, ctypes.byref(absorbed),
              ctypes.byref(expanded))
    return path.decode(), absorbed.value, expanded.value


def test_cost_model(monkeypatch):
    monkeypatch.delenv("ONNXATTN_MLA_PATH", raising=False)
    # decode: the absorbed form reads R + Dr per key instead of expanding every key for every head
    path, absorbed, expanded = _choice(1, 1, 16, 4096)
    assert path == "absorbed" and expanded > 50 * absorbed
    expected_absorbed = 16 * (R * (DN + DV) + 4097 * (2 * R + DR))  # multiply-adds, see mla/params.h
    assert absorbed == expected_absorbed
    # a prompt without a past: as many keys as queries, so the projections cost the same in both forms
    # (per query when absorbed, per key when expanded) and the expanded attention is narrower
    assert _choice(1, 64, 16, 0)[0] == "expanded" and _choice(1, 4096, 16, 0)[0] == "expanded"
    # a chunk over a long past: expanded once S (2R - Dn - Dv) outgrows R (Dn + Dv) per past key, S ~ 170
    assert _choice(1, 128, 16, 8192)[0] == "absorbed" and _choice(1, 256, 16, 8192)[0] == "expanded"
    assert _choice(2, 64, 16, 2048)[0] == "absorbed"
    # a sliding window bounds the keys that need expanding
    assert _choice(1, 4096, 16, 0, window=128)[1] > _choice(1, 4096, 16, 0, window=128)[2]
    monkeypatch.setenv("ONNXATTN_MLA_PATH", "expanded")
    assert _choice(1, 1, 16, 4096)[0] == "expanded"
    monkeypatch.setenv("ONNXATTN_MLA_PATH", "absorbed")
    assert _choice(1, 4096, 16, 0)[0] == "absorbed"


@pytest.mark.parametrize("cache", ["concat", "shared"])
@pytest.mark.parametrize("path", [None, *PATHS])
def test_prefill_then_decode_equals_one_pass(cache, path):
    """Prefill 6 tokens, decode 2, append a chunk of 3: the outputs equal one pass over the 11 tokens, and
    the final caches equal the one-pass caches (I/O binding in place for the shared buffers)."""
    rng = np.random.default_rng(7)
    heads, total, steps = 4, 11, ((0, 6), (6, 7), (7, 8), (8, 11))
    whole = _feeds(rng, batch=2, seq=total, heads=heads, past=0)
    attrs = dict(num_heads=heads, rope_interleaved=1)
    one_pass_model = mla_model(["past_latent", "past_k_rope"], with_present=True, attrs=attrs)
    with mla_path(path):
        full = kernel_session(one_pass_model).run(None, whole)
        if cache == "concat":
            session = kernel_session(one_pass_model)
            past = (whole["past_latent"], whole["past_k_rope"])
            outputs = []
            for start, end in steps:
                step = {**{k: whole[k][:, start:end] for k in ("query", "latent", "k_rope")}, "w_uk": whole["w_uk"],
                        "w_uv": whole["w_uv"], "past_latent": past[0], "past_k_rope": past[1]}
                y, *past = session.run(None, step)
                outputs.append(y)
            caches = past
        else:
            session = kernel_session(mla_model(["past_latent", "past_k_rope", "past_lengths"], with_present=True,
                                               attrs=attrs))
            buffers = [ort.OrtValue.ortvalue_from_numpy(np.full((2, 16, w), np.nan, np.float32)) for w in (R, DR)]
            outputs = []
            for start, end in steps:
                binding = session.io_binding()
                for k in ("query", "latent", "k_rope"):
                    binding.bind_cpu_input(k, np.ascontiguousarray(whole[k][:, start:end]))
                for k in ("w_uk", "w_uv"):
                    binding.bind_cpu_input(k, whole[k])
                binding.bind_cpu_input("past_lengths", np.array([start, start], np.int64))
                binding.bind_ortvalue_input("past_latent", buffers[0])
                binding.bind_ortvalue_input("past_k_rope", buffers[1])
                binding.bind_output("output")
                binding.bind_ortvalue_output("present_latent", buffers[0])
                binding.bind_ortvalue_output("present_k_rope", buffers[1])
                session.run_with_iobinding(binding)
                outputs.append(binding.copy_outputs_to_cpu()[0])
            caches = [b.numpy()[:, :total] for b in buffers]
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), full[0], atol=2e-5, rtol=1e-4)
    np.testing.assert_array_equal(caches[0], full[1])
    np.testing.assert_allclose(caches[1], full[2], atol=1e-6, rtol=1e-6)
