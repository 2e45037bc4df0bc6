"""Helpers of the whole-model tests (test_models*.py, test_hf_*.py): one torch thread while they
run (pytest -n 2 on two shared cores: torch's default pool spins against onnxruntime's), exported models
cached per test module, prefill/decode logits through onnxruntime, and proof that our kernels ran."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxattn import ops
from onnxattn.cuda_ep import make_session

CPU = ["CPUExecutionProvider"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """pytest -n 2 on two shared cores: torch's intra-op threads would only contend (80x slower gradchecks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def session(path, use_library: bool = True, profile: bool = False):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = profile
    return make_session(path, use_library=use_library, providers=CPU, session_options=options)


def empty_past(sess, batch: int) -> dict[str, np.ndarray]:
    """Zero-length pasts for a prefill (float32 models)."""
    return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32) for i in sess.get_inputs()
            if i.name.startswith("past_key_values.")}


def run_steps(sess, ids: np.ndarray, prefill: int) -> list[np.ndarray]:
    """Logits of a prefill of ids[:, :prefill], then one decode step per remaining token (concat cache)."""
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"input_ids": ids[:, :prefill], **empty_past(sess, ids.shape[0])})))
    logits = [outs["logits"]]
    for t in range(prefill, ids.shape[1]):
        feeds = {"input_ids": ids[:, t:t + 1]}
        feeds.update({n.replace("present.", "past_key_values."): v for n, v in outs.items() if n.startswith("present.")})
        outs = dict(zip(names, sess.run(None, feeds)))
        logits.append(outs["logits"])
    return logits


def kernel_ops_ran(sess) -> set[str]:
    """onnxattn op types that onnxruntime ran as our kernels (a function-expanded node does not show
    under its op name in the profile). Ends the session's profiling."""
    path = sess.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    kernels = set(ops.SPECS)
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e.get("args", {}).get("op_name") in kernels}


def relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
