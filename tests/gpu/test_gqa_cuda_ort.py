"""GroupQueryAttention through onnxruntime-gpu's CUDA execution provider with our library registered: the
node must run on CUDA (read from onnxruntime's profile) and match the float64 oracle, with inputs and
outputs bound to torch CUDA tensors (every dtype, bfloat16 included); the shared-buffer cache updated in
place through I/O binding (present bound to the past's buffer: same pointer, stale slots untouched, two
decode steps); the GQA suite's own numerics matrix (tests/test_gqa_numerics.py) on the CUDA EP; and a
session with onnxruntime's CUDA graphs replaying a decode step with new lengths.

Needs a GPU and onnxruntime-gpu."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import gqa_cases as gc  # noqa: E402
import gqa_torch as gt  # noqa: E402
import ort_cuda  # noqa: E402
import sdpa_cuda_lib  # noqa: E402

ORT, ORT_MISSING = ort_cuda.onnxruntime_cuda() if CUDA else (None, "no GPU")
OP = "GroupQueryAttention"
MATRIX_BUDGET_S = float(os.environ.get("GQA_MATRIX_BUDGET_S", "30"))
ORT_CASES = ["prefill-b2-s77-d64", "decode-b2-g4-p1500", "chunk-s40-p300", "shared-decode-b4", "shared-chunk-b2",
             "window-shared-b2", "bidirectional-right-pad-b3", "left-pad-prefill-b3", "rope-partial-interleaved",
             "qk-norm", "mqa-hkv1-b2", "softcap", "d12-simt", "no-present-shared", "everything-shared",
             "everything-concat"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)


def session(case, dtype, tmp_path, **provider_options):
    providers = [(ort_cuda.CUDA_EP, provider_options) if provider_options else ort_cuda.CUDA_EP, "CPUExecutionProvider"]
    return ort_cuda.session(ORT, gc.model(case, dtype), library=sdpa_cuda_lib.library_path(),
                            profile_prefix=str(tmp_path / "ort") if tmp_path else None, providers=providers)  # fmt: skip


def run_bound(sess, case, dtype, *, in_place=False, inputs=None):
    t = inputs if inputs is not None else gt.to_device(case, dtype)
    out = gt.outputs(case, dtype)
    if in_place:
        out["present_key"], out["present_value"] = t["past_key"], t["past_value"]
    binding = sess.io_binding()
    for name, x in t.items():
        binding.bind_input(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
    for name, x in out.items():
        binding.bind_output(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
    sess.run_with_iobinding(binding)
    torch.cuda.synchronize()
    return binding, t, out


def numpy(out, name):
    return out[name].double().cpu().numpy() if name in out else None


# float16 on every case above; bfloat16 and float32 on the ones with distinct conversions
ORT_PARAMS = [(c, "float16") for c in ORT_CASES] + [
    (c, dtype) for dtype in ("bfloat16", "float32")
    for c in ("decode-b2-g4-p1500", "shared-chunk-b2", "qk-norm", "d12-simt", "everything-shared", "everything-concat")
]  # fmt: skip


@pytest.mark.parametrize("case_id,dtype", ORT_PARAMS, ids=[f"{c}-{d}" for c, d in ORT_PARAMS])
def test_runs_on_the_cuda_execution_provider(case_id, dtype, tmp_path):
    case = gc.CASES_BY_ID[case_id]
    sess = session(case, dtype, tmp_path)
    _, _, out = run_bound(sess, case, dtype)
    assert ort_cuda.node_providers(sess, OP) == {ort_cuda.CUDA_EP}
    gc.check(case, dtype, numpy(out, "output"), numpy(out, "present_key"), numpy(out, "present_value"),
             context=f"ORT CUDA EP {case} {dtype}")


@pytest.mark.parametrize("dtype", gc.DTYPES)
def test_in_place_decode_steps_through_io_binding(dtype, tmp_path):
    # present_key/present_value bound to the past's buffers: the kernel gets the same pointers (no copy
    # of the cache), writes only the new token at past_lengths[b], and leaves the stale slots (NaN) alone.
    case = gc.CASES_BY_ID["shared-decode-b4"]
    sess = session(case, dtype, None)
    t = gt.to_device(case, dtype)
    for step in range(2):
        # the next token: fresh inputs, lengths one longer (the full sequence rewrites its last slot)
        lengths = tuple(min(int(n) + step, case.buffer - 1) for n in case.past_lengths)
        if step:
            step_case = gc.Case(f"{case.id}-step{step}", batch=case.batch, buffer=case.buffer, past_lengths=lengths)
            gc.CASES_BY_ID.setdefault(step_case.id, step_case)
            nxt = gt.to_device(step_case, dtype)
            for name in ("query", "key", "value", "past_lengths"):
                t[name] = nxt[name]
            # the oracle sees the buffer as the previous step left it
            gc.feeds(step_case.id, dtype)["past_key"][...] = t["past_key"].double().cpu().numpy()
            gc.feeds(step_case.id, dtype)["past_value"][...] = t["past_value"].double().cpu().numpy()
            check_case = step_case
        else:
            check_case = case
        key_ptr, value_ptr = t["past_key"].data_ptr(), t["past_value"].data_ptr()
        binding, t, out = run_bound(sess, check_case, dtype, in_place=True, inputs=t)
        got = binding.get_outputs()
        assert (got[1].data_ptr(), got[2].data_ptr()) == (key_ptr, value_ptr), "present must be the past buffer"
        gc.check(check_case, dtype, numpy(out, "output"), numpy(out, "present_key"), numpy(out, "present_value"),
                 context=f"in place step {step} {dtype}")


def test_the_gqa_suite_numerics_matrix_on_the_cuda_ep(tmp_path):
    # The same cases and tolerance rule as the CPU kernel and the reference function (small shapes,
    # every optional input), here with numpy feeds copied by onnxruntime. Skipped if the suite's helpers
    # cannot be imported on this machine.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        import test_gqa_numerics as numerics
    except Exception as e:  # noqa: BLE001 - the suite's dependencies (onnxscript, ml_dtypes) may be missing
        pytest.skip(f"tests/test_gqa_numerics.py not importable here: {type(e).__name__}: {e}")
    failures, ran, start = [], 0, time.monotonic()
    for case in numerics.CASES:
        if time.monotonic() - start > MATRIX_BUDGET_S:  # the one GPU call is capped; report what ran
            break
        ran += 1
        try:
            sess = ort_cuda.session(ORT, numerics.model_of(case).SerializeToString(), library=sdpa_cuda_lib.library_path(),
                                    profile_prefix=str(tmp_path / case.id))  # fmt: skip
            outputs = sess.run(None, numerics.feeds_of(case.id))
            providers = ort_cuda.node_providers(sess, OP)
            assert providers == {ort_cuda.CUDA_EP}, f"ran on {providers}"
            numerics.check(case, outputs, present_checked=case.with_present)
        except Exception as e:  # noqa: BLE001 - report every case
            failures.append(f"{case.id}: {type(e).__name__}: {str(e)[:300]}")
    assert not failures, f"{len(failures)} of {ran} cases failed:\n" + "\n".join(failures)
    print(f"{ran} of {len(numerics.CASES)} cases of the GQA suite ran on the CUDA EP in {MATRIX_BUDGET_S} s")


def test_cuda_graph_capture_through_onnxruntime():
    # onnxruntime's CUDA graphs need every node on CUDA, fixed buffers (I/O binding) and kernels that
    # never synchronise or allocate outside onnxruntime's allocator: replays with new lengths and inputs
    # written into the bound buffers must stay right.
    case = gc.CASES_BY_ID["shared-decode-b4"]
    dtype = "float16"
    try:
        sess = session(case, dtype, None, enable_cuda_graph="1")
        t = gt.to_device(case, dtype)
        binding, t, out = run_bound(sess, case, dtype, in_place=True, inputs=t)  # first runs: warm-up, capture
    except Exception as e:  # noqa: BLE001 - an onnxruntime limitation; our side is checked by the kernel test
        pytest.skip(f"onnxruntime could not run the node under CUDA graphs: {type(e).__name__}: {str(e)[:300]} "
                    "(test_gqa_cuda_kernels.py captures the kernels in a CUDA graph directly)")
    gc.check(case, dtype, numpy(out, "output"), None, None, context="cuda graph, first run")
    for step in range(1, 3):
        lengths = tuple(n + step for n in case.past_lengths[:3]) + (case.past_lengths[3] - 10 * step,)
        step_case = gc.Case(f"graph-step{step}", batch=case.batch, buffer=case.buffer, past_lengths=lengths)
        gc.CASES_BY_ID.setdefault(step_case.id, step_case)
        nxt = gt.to_device(step_case, dtype)
        for name in ("query", "key", "value", "past_lengths"):
            t[name].copy_(nxt[name])
        gc.feeds(step_case.id, dtype)["past_key"][...] = t["past_key"].double().cpu().numpy()
        gc.feeds(step_case.id, dtype)["past_value"][...] = t["past_value"].double().cpu().numpy()
        sess.run_with_iobinding(binding)  # a replay: the same buffers, new contents
        torch.cuda.synchronize()
        gc.check(step_case, dtype, numpy(out, "output"), None, None, context=f"cuda graph replay {step}")
