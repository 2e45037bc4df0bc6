"""Whole-model generation through onnxruntime-gpu's CUDA execution provider with our library (issue 8): a
small Llama-style decoder (2 layers, 4/2 heads, head dim 64) exported with our ops, generated greedily by
onnxattn.generate (its I/O-binding loop: the KV cache stays on the device), with the GroupQueryAttention
nodes proved to run on CUDAExecutionProvider (onnxruntime's profile).

- float32 on both sides, TF32 off in onnxruntime (its matmuls then round as fp32 ones do): the tokens equal
  eager torch's (float32, CPU) token for token, concatenation and shared-buffer caches, batch 2;
- float16: logits of a prefill and decode steps along the float32 tokens (teacher forced) stay within a
  bound set by torch's own float16 error on the GPU against a float32 oracle with the same (float16) weights:
  |ORT - oracle| <= 3 |torch fp16 - oracle| + 8 ulp of the largest logit. float16 and float32 tokens may
  part at a near tie, so greedy float16 generation must equal the oracle's tokens up to the first step
  whose two candidates the oracle puts within that bound.

Needs a GPU and onnxruntime-gpu."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import ort_cuda  # noqa: E402

ORT, ORT_MISSING = ort_cuda.onnxruntime_cuda() if CUDA else (None, "no GPU")
OP = "GroupQueryAttention"
DEVICE, EP = "cuda", ort_cuda.CUDA_EP  # (a host-side run of these tests' logic swaps in the CPU)
CONFIG = dict(num_layers=2, hidden=256, num_heads=4, num_kv_heads=2, intermediate=512, vocab_size=512)
BATCH, PROMPT, NEW = 2, 24, 12
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)


def models_package():
    """onnxattn.models (the repo's models/): installed, or from the source tree as on the GPU machine."""
    try:
        from onnxattn import models
    except ImportError:
        import onnxattn

        onnxattn.__path__.append(str(ROOT))  # onnxattn.models -> <root>/models
        from onnxattn import models
    return models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """export_model results by (dtype, cache), of one float32 model."""
    from onnxattn.export import export_model

    model = models_package().build("llama", **CONFIG)
    done = {}

    def get(dtype: str, cache: str = "concat"):
        if (dtype, cache) not in done:
            path = tmp_path_factory.mktemp("models") / f"llama_{dtype}_{cache}.onnx"
            done[dtype, cache] = export_model(model, path, dtype=dtype, cache=cache, logits="last", validate=False,
                                              progress=False)  # fmt: skip
        return done[dtype, cache]

    return get


def cuda_session(path, tmp_path, **cuda_options):
    from onnxattn.cuda_ep import library_path

    first = (EP, cuda_options) if cuda_options and EP == ort_cuda.CUDA_EP else EP
    sess = ort_cuda.session(ORT, str(path), library=library_path(), profile_prefix=str(tmp_path / "ort"),
                            providers=[first] + (["CPUExecutionProvider"] if EP != "CPUExecutionProvider" else []))
    assert sess.get_providers()[0] == EP, sess.get_providers()
    return sess


def prompt():
    return np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (BATCH, PROMPT))


def assert_ran_on_cuda(sess):
    assert ort_cuda.node_providers(sess, OP) == {EP}


@pytest.mark.parametrize("cache", ["concat", "shared"])
def test_greedy_float32_equals_eager_torch(exported, cache, tmp_path):
    from onnxattn.generate import generate, generate_torch

    result = exported("float32", cache)
    ids = prompt()
    sess = cuda_session(result.path, tmp_path, use_tf32="0")
    got = generate(sess, ids, NEW, progress=False)
    assert_ran_on_cuda(sess)
    assert got.backend.startswith(f"onnxruntime {DEVICE.upper()}")
    want = generate_torch(result.model, ids, NEW)  # float32 on the CPU
    assert len(set(want.new_tokens[0].tolist())) > 1  # not a degenerate model
    np.testing.assert_array_equal(got.tokens, want.tokens)


def test_generate_binds_the_shared_buffer_in_place_on_the_device(exported):
    """generate() making its own session (so the library is known to be registered) keeps each shared cache buffer
    on the session's device and binds it as past and present every step: the same tokens as eager torch."""
    from onnxattn.generate import generate, generate_torch

    result = exported("float32", "shared")
    ids = prompt()
    first = (EP, {"use_tf32": "0"}) if EP == ort_cuda.CUDA_EP else EP
    providers = [first] + (["CPUExecutionProvider"] if EP != "CPUExecutionProvider" else [])
    got = generate(result.path, ids, NEW, providers=providers, progress=False)
    assert got.backend.startswith(f"onnxruntime {DEVICE.upper()}")
    np.testing.assert_array_equal(got.tokens, generate_torch(result.model, ids, NEW).tokens)


def torch_steps(model, tokens: np.ndarray, prompt_len: int, device: str) -> np.ndarray:
    """Teacher-forced logits [B, N, V] (float64): a prefill of tokens[:, :prompt_len], then one step per
    following token; step i predicts tokens[:, prompt_len + i]."""
    from onnxattn.nn import KVCache

    cache, ids, out = KVCache(), torch.from_numpy(tokens).to(device), []
    with torch.no_grad():
        out.append(model(ids[:, :prompt_len], cache=cache, logits_to_keep=1)[:, -1])
        for t in range(prompt_len, tokens.shape[1] - 1):
            out.append(model(ids[:, t:t + 1], cache=cache, logits_to_keep=1)[:, -1])
    return torch.stack(out, 1).double().cpu().numpy()


def ort_steps(sess, tokens: np.ndarray, prompt_len: int) -> np.ndarray:
    """The same through onnxruntime (concatenation cache; pasts go through the host, a test needs no more)."""
    names = [o.name for o in sess.get_outputs()]
    pasts = {i.name: np.zeros((tokens.shape[0], i.shape[1], 0, i.shape[3]), np.float16) for i in sess.get_inputs()
             if i.name.startswith("past_key_values.")}  # fmt: skip
    feeds, out = {"input_ids": tokens[:, :prompt_len], **pasts}, []
    for t in range(prompt_len, tokens.shape[1]):
        outs = dict(zip(names, sess.run(None, feeds)))
        out.append(outs["logits"][:, -1])
        feeds = {"input_ids": tokens[:, t:t + 1]}
        feeds.update({n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")})
    return np.stack(out, 1).astype(np.float64)


def test_float16_logits_within_torch_float16_error_and_greedy_until_a_near_tie(exported, tmp_path):
    from onnxattn.generate import generate, generate_torch

    result = exported("float16")  # result.model: the float16 weights
    oracle = copy.deepcopy(result.model).float()  # the same weights, float32 arithmetic (CPU)
    ids = prompt()
    tokens = generate_torch(oracle, ids, NEW).tokens
    want = torch_steps(oracle, tokens, PROMPT, "cpu")
    torch16 = torch_steps(copy.deepcopy(result.model).to(DEVICE), tokens, PROMPT, DEVICE)
    sess = cuda_session(result.path, tmp_path)
    got = ort_steps(sess, tokens, PROMPT)
    assert got.shape == want.shape == (BATCH, NEW, CONFIG["vocab_size"])
    err, torch_err = np.abs(got - want).max(), np.abs(torch16 - want).max()
    bound = 3 * torch_err + 8 * 2.0**-10 * np.abs(want).max()
    assert err <= bound, f"float16 logits: max |ORT - oracle| {err:.3g} > {bound:.3g} (torch float16: {torch_err:.3g})"

    fast = generate(sess, ids, NEW, progress=False)  # the I/O-binding loop, float16 on the device
    assert_ran_on_cuda(sess)
    for b in range(BATCH):
        differ = np.flatnonzero(fast.tokens[b, PROMPT:] != tokens[b, PROMPT:])
        if differ.size:  # the same prefix so far: the oracle's logits at this step apply
            i = differ[0]
            ours, theirs = fast.tokens[b, PROMPT + i], tokens[b, PROMPT + i]
            margin = want[b, i, theirs] - want[b, i, ours]
            assert margin <= 2 * bound, (f"row {b}: float16 greedy left the oracle's tokens at step {i} ({ours} for "
                                         f"{theirs}), not a near tie: oracle margin {margin:.3g} > {2 * bound:.3g}")
