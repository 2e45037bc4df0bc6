"""PagedAttention through onnxruntime-gpu's CUDA execution provider with our library registered: the node
must run on CUDA (read from onnxruntime's profile) and match the contiguous float64 oracle, with inputs and
outputs bound to torch CUDA tensors (every dtype; bfloat16 through Cast nodes); the pools updated in place
through I/O binding (each output pool bound to its input's buffer: the same pointers, every block but the
new tokens' slots bit for bit unchanged, over two decode steps); and the adapter's contract on bad index
inputs (NaN rows, nothing written; no error, since raising would need a host synchronisation).

Needs a GPU and onnxruntime-gpu."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import ort_cuda  # noqa: E402
import paged_cases as pc  # noqa: E402
import paged_torch as pt  # noqa: E402
import sdpa_cuda_lib  # noqa: E402

ORT, ORT_MISSING = ort_cuda.onnxruntime_cuda() if CUDA else (None, "no GPU")
OP = "PagedAttention"
# The kernels' numerics are covered by test_paged_cuda_kernels.py: here each launch kind and adapter path once.
ORT_CASES = ["decode-b4-bs16", "mixed-chunks-decodes", "prefill-long-chunk", "rope-qk-norm-positions", "d12-simt",
             "no-present", "everything"]


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)


def session(case, dtype, tmp_path):
    return ort_cuda.session(ORT, pc.model(case, dtype), library=sdpa_cuda_lib.library_path(),
                            profile_prefix=str(tmp_path / "ort") if tmp_path else None)  # fmt: skip


def io_tensors(case, dtype, feeds=None, *, in_place=False):
    """Inputs and outputs as CUDA tensors in the model's I/O types (bfloat16 models take float32)."""
    io_dtype = "float32" if dtype == "bfloat16" else dtype
    t = pt.to_device(feeds if feeds is not None else pc.feeds(case.id, dtype), io_dtype)
    return t, pt.outputs(t, case, io_dtype, in_place=in_place)


def run_bound(sess, t, out):
    binding = sess.io_binding()
    for name, x in t.items():
        binding.bind_input(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
    for name, x in out.items():
        binding.bind_output(name, "cuda", 0, ort_cuda.onnx_type(x.dtype), tuple(x.shape), x.data_ptr())
    sess.run_with_iobinding(binding)
    torch.cuda.synchronize()
    return binding


ORT_PARAMS = [(c, "float16") for c in ORT_CASES] + [
    (c, d) for d in ("bfloat16", "float32") for c in ("decode-b4-bs16", "mixed-chunks-decodes")]


@pytest.mark.parametrize("case_id,dtype", ORT_PARAMS, ids=[f"{c}-{d}" for c, d in ORT_PARAMS])
def test_runs_on_the_cuda_execution_provider(case_id, dtype, tmp_path):
    case = pc.CASES_BY_ID[case_id]
    sess = session(case, dtype, tmp_path)
    t, out = io_tensors(case, dtype)
    run_bound(sess, t, out)
    assert ort_cuda.node_providers(sess, OP) == {ort_cuda.CUDA_EP}
    pc.check(case, dtype, pt.numpy(out["output"]), pt.numpy(out.get("key_cache_out")),
             pt.numpy(out.get("value_cache_out")), context=f"ORT CUDA EP {case} {dtype}")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_in_place_decode_steps_through_io_binding(dtype):
    # key_cache_out/value_cache_out bound to the input pools' buffers: the kernel gets the same pointers (no
    # copy of the pool), writes only the new tokens' slots and leaves every other block bit for bit.
    case = pc.CASES_BY_ID["decode-b4-bs16"]
    sess = session(case, dtype, None)
    t, out = io_tensors(case, dtype, in_place=True)
    key_ptr, value_ptr = t["key_cache"].data_ptr(), t["value_cache"].data_ptr()
    binding = run_bound(sess, t, out)
    got = binding.get_outputs()
    assert (got[1].data_ptr(), got[2].data_ptr()) == (key_ptr, value_ptr), "the output pools must be the inputs"
    pc.check(case, dtype, pt.numpy(out["output"]), pt.numpy(t["key_cache"]), pt.numpy(t["value_cache"]),
             context=f"in place {dtype}")
    # A second step: every sequence one token longer, fresh new tokens; only their slots may change.
    before_k, before_v = t["key_cache"].clone(), t["value_cache"].clone()
    t["seq_lens"] += 1
    for name in ("query", "key", "value"):
        t[name].copy_(torch.randn_like(t[name].float()).to(t[name].dtype))
    run_bound(sess, t, out)
    f = pc.feeds(case.id, dtype)
    table, lengths = f["block_table"], f["seq_lens"] + 1
    block_size = f["key_cache"].shape[1]
    written = torch.zeros(t["key_cache"].shape[:2], dtype=torch.bool)
    for b, n in enumerate(lengths):
        written[int(table[b, (n - 1) // block_size]), int((n - 1) % block_size)] = True
    for pool, before in (("key_cache", before_k), ("value_cache", before_v)):
        now = t[pool].cpu()
        same = torch.nan_to_num(now, nan=7.0) == torch.nan_to_num(before.cpu(), nan=7.0)
        assert same[~written].all(), f"{pool}: a slot besides the new tokens' changed"
        assert not torch.isnan(now[written]).any(), f"{pool}: a new token's slot was not written"
    assert not torch.isnan(out["output"]).any()


def test_bad_index_inputs_give_nan_rows_not_an_error():
    # The adapter's contract on CUDA (onnxattn/cuda_ep/csrc/paged/op_cuda.cc): a sequence whose block index
    # leaves the pool gets NaN rows and writes nothing; the call itself succeeds.
    case = pc.CASES_BY_ID["mixed-chunks-decodes"]
    f = {n: np.array(x, copy=True) for n, x in pc.feeds(case.id, "float16").items()}
    f["block_table"][1, 0] = 1 << 30
    sess = session(case, "float16", None)
    t, out = io_tensors(case, "float16", feeds=f, in_place=True)
    before = t["key_cache"].clone()
    run_bound(sess, t, out)
    y = pt.numpy(out["output"])
    cu = f["cu_seqlens_q"]
    assert np.isnan(y[cu[1]: cu[2]]).all() and not np.isnan(y[: cu[1]]).any() and not np.isnan(y[cu[2]:]).any()
    table, n = f["block_table"], f["key_cache"].shape[0]
    own = table[1][(table[1] >= 0) & (table[1] < n)]
    assert torch.equal(torch.nan_to_num(t["key_cache"][own], nan=7.0), torch.nan_to_num(before[own], nan=7.0))
