"""Issue 9 on the GPU: the CPU hardening suite's cases through onnxruntime's CUDA execution provider. Run by
scripts/gpu_hardening.sh (a device call of its own); not collected by `pytest tests/gpu` (no test_ prefix), so
scripts/gpu_check.sh's budget is untouched.

- the bad-input table of every op (tests/hardening/bad_input_cases.py), kernel path with the CUDA EP first:
  each case in a child process (a CUDA fault is that case's failure); the expected outcome is the CPU kernel's
  (a clear error naming the op, the defined result within tolerance, or the recorded limitation); the node's
  provider is reported (ops without a CUDA kernel, or dtypes it lacks, run on our CPU kernel);
- 8 threads sharing one CUDA session equal serial runs, and repeated runs are bitwise identical (every op);
- `python tests/gpu/hardening_cuda.py memcheck [OP ...]` runs the same cases in one process for compute-sanitizer.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS / "hardening"), str(TESTS)]

from bad_input_cases import all_ops, cases  # noqa: E402
from ort_cuda import CUDA_EP, onnxruntime_cuda  # noqa: E402

pytestmark = pytest.mark.gpu
ORT, WHY = onnxruntime_cuda()


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if WHY is None and not _gpu():
    WHY = "no CUDA device (onnxruntime would run everything on the CPU)"
needs_cuda = pytest.mark.skipif(ORT is None or WHY is not None, reason=str(WHY))
PROVIDERS = [CUDA_EP, "CPUExecutionProvider"]
# GPU kernels accumulate in float32 but in other orders (tensor-core tiles, split-KV): a looser bound than the
# CPU table's 1e-4 for its float32 defined cases.
CUDA_TOLERANCE = 2e-3
# The sparse ops' other CUDA path (simple; fast is the default) gets the same table. The table is float32, which
# the 16-bit tensor-core paths (the wgmma prefill, MultiHeadLatentAttention's mma kernel, PDL launches) never
# take: they are checked by their own GPU tests and the `wgmma` / `mla` memcheck families of sanitize_cases.py.
VARIANTS = {"NativeSparseAttention": {"ONNXATTN_SPARSE_CUDA": "simple"},
            "SparseRoutedAttention": {"ONNXATTN_SPARSE_CUDA": "simple"}}  # fmt: skip
TABLE = [(op, "default") for op in all_ops()] + [(op, "simple") for op in all_ops() if op in VARIANTS]


def cuda_expectation(c, got: dict) -> str:
    """The CPU kernel's outcome, except for bad index values on a node the CUDA kernel ran: NaN rows for the
    failing sequences instead of an error (bad_input_paths._kernel_cuda_index_values)."""
    want = c.expect["kernel"]
    if c.fault == "index values" and want == "rejects" and "CUDAExecutionProvider" in (got.get("provider") or []):
        return "nan-rows"
    return want


@needs_cuda
@pytest.mark.parametrize("op, variant", TABLE, ids=[f"{op}-{v}" for op, v in TABLE])
def test_bad_input_table_on_cuda(op, variant, monkeypatch):
    import dataclasses

    from isolate import run_jobs

    extra = VARIANTS[op] if variant != "default" else {}
    for name, value in extra.items():
        monkeypatch.setenv(name, value)  # the children's environment, and this process's for the retry below
    jobs = [f"{op}|{c.id}|kernel-cuda" for c in cases(op)]
    results = run_jobs("bad_input_paths", jobs, timeout=120, env={"CUDA_LAUNCH_BLOCKING": "1", **extra})
    problems, placed = [], {}
    for c in cases(op):
        got = results[f"{op}|{c.id}|kernel-cuda"]
        placed[c.id] = got.get("provider")
        want = cuda_expectation(c, got)
        if got["outcome"] == "wrong" and want == "defined":  # retry the comparison with the GPU bound
            import bad_input_paths

            loose = dataclasses.replace(c, tolerance=CUDA_TOLERANCE)
            got = bad_input_paths._kernel(loose, providers=PROVIDERS)
        if got["outcome"] != want:
            problems.append(f"{c.id}: expected {want}, got {got['outcome']}: {got.get('message', '')} "
                            f"{got.get('stderr', '')[-1500:]}")
    print(f"{op}: node providers of the defined cases: {placed}")
    assert not problems, "\n".join(problems)


@needs_cuda
@pytest.mark.parametrize("op", all_ops())
def test_cuda_session_shared_by_eight_threads_and_bitwise_repeatable(op):
    from representative import call

    from onnxattn.cuda_ep import make_session

    c = call(op)
    session = make_session(c.model, providers=PROVIDERS)
    inputs = [c.perturbed(k) for k in range(8)]
    serial = [session.run(None, f) for f in inputs]
    again = [session.run(None, f) for f in inputs]
    for a, b in zip(serial, again):
        assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)), "a repeated run differs"
    results, errors = {}, []

    def worker(t):
        try:
            for r in range(4):
                results[(t, r)] = session.run(None, inputs[(t + r) % 8])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for (t, r), outputs in results.items():
        assert all(x.tobytes() == y.tobytes() for x, y in zip(outputs, serial[(t + r) % 8])), (t, r)


def memcheck(ops: list[str]) -> int:
    """Every case of `ops` (all when empty), kernel path on CUDA, in this process (for compute-sanitizer); the
    variant paths too."""
    import os

    import bad_input_paths

    failed = 0
    for op, variant in TABLE:
        if ops and op not in ops:
            continue
        extra = VARIANTS[op] if variant != "default" else {}
        os.environ.update(extra)
        try:
            for c in cases(op):
                got = bad_input_paths.execute(f"{op}|{c.id}|kernel-cuda")
                want = cuda_expectation(c, got)
                ok = got["outcome"] == want or (got["outcome"] == "wrong" and want == "defined")
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {op} ({variant}) {c.id}: {got['outcome']} {got.get('provider', '')}",
                      flush=True)
        finally:
            for name in extra:
                os.environ.pop(name, None)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(memcheck(sys.argv[2:]) if sys.argv[1:2] == ["memcheck"] else 2)
