"""ScaledDotProductAttention through onnxruntime-gpu's CUDA execution provider with our library
registered: the node must run on CUDA (read from onnxruntime's profile) and match the float64 oracle;
with ONNXATTN_DISABLE_CUDA=1 the same session must place it on our CPU kernel and still be right.

Needs a GPU and onnxruntime-gpu."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import ort_cuda  # noqa: E402
import sdpa_cuda_lib as lib  # noqa: E402
from sdpa_oracle import CASES, Case, check, make_inputs  # noqa: E402

ORT, ORT_MISSING = ort_cuda.onnxruntime_cuda() if CUDA else (None, "no GPU")
OP = "ScaledDotProductAttention"
CASES_BY_NAME = {c.name: c for c in CASES}
ORT_CASES = [
    CASES_BY_NAME[n]
    for n in (
        "mha_odd", "gqa4_causal_sq_lt_skv", "causal_sq_gt_skv_empty_rows", "decode_gqa_odd", "decode_sq5",
        "window_decode", "softcap", "bool_mask_keys_padding", "additive_mask_full", "additive_mask_rows",
        "dv64_d128", "d80", "d256", "d33_simt_fallback", "no_lse", "mask_decode",
    )
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _requirements():
    ort_cuda.require_cuda_kernels(ORT, ORT_MISSING)
    torch.backends.cuda.matmul.allow_tf32 = False


def sdpa_model(case: Case, dtype: torch.dtype, mask_dtype=None) -> bytes:
    from onnx import TensorProto, helper

    t = ort_cuda.onnx_type(dtype)
    inputs = [
        helper.make_tensor_value_info("Q", t, [case.b, case.hq, case.sq, case.d]),
        helper.make_tensor_value_info("K", t, [case.b, case.hkv, case.skv, case.d]),
        helper.make_tensor_value_info("V", t, [case.b, case.hkv, case.skv, case.v_dim]),
    ]
    names = ["Q", "K", "V"]
    if mask_dtype is not None:
        from sdpa_oracle import mask_dims

        inputs.append(helper.make_tensor_value_info("M", ort_cuda.onnx_type(mask_dtype), list(mask_dims(case))))
        names.append("M")
    outputs = [helper.make_tensor_value_info("Y", t, [case.b, case.hq, case.sq, case.v_dim])]
    if case.lse:
        outputs.append(helper.make_tensor_value_info("LSE", TensorProto.FLOAT, [case.b, case.hq, case.sq]))
    node = helper.make_node(
        OP, names, [o.name for o in outputs], domain="onnxattn", causal=int(case.causal), window=case.window,
        band=case.band, scale=float(case.scale), softcap=float(case.softcap),
    )  # fmt: skip
    graph = helper.make_graph([node], "sdpa", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxattn", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def run_case(case: Case, dtype, tmp_path, *, forced_path: str | None = None):
    q, k, v, mask = make_inputs(case, dtype)
    sess = ort_cuda.session(ORT, sdpa_model(case, dtype, None if mask is None else mask.dtype),
                            library=lib.library_path(), profile_prefix=str(tmp_path / "ort"))  # fmt: skip
    y = torch.full((case.b, case.hq, case.sq, case.v_dim), float("nan"), dtype=dtype, device="cuda")
    lse = torch.full((case.b, case.hq, case.sq), float("nan"), device="cuda") if case.lse else None
    inputs = {"Q": q, "K": k, "V": v, **({"M": mask} if mask is not None else {})}
    outputs = {"Y": y, **({"LSE": lse} if lse is not None else {})}
    old = os.environ.get("ONNXATTN_SDPA_CUDA_PATH")
    try:
        if forced_path:
            os.environ["ONNXATTN_SDPA_CUDA_PATH"] = forced_path  # read on every call
        ort_cuda.run_bound(sess, inputs, outputs)
    finally:
        if old is None:
            os.environ.pop("ONNXATTN_SDPA_CUDA_PATH", None)
        else:
            os.environ["ONNXATTN_SDPA_CUDA_PATH"] = old
    torch.cuda.synchronize()
    return (q, k, v, mask), y, lse, ort_cuda.node_providers(sess, OP)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", ORT_CASES, ids=str)
def test_runs_on_the_cuda_execution_provider(case, dtype, tmp_path):
    (q, k, v, mask), y, lse, providers = run_case(case, dtype, tmp_path)
    assert providers == {ort_cuda.CUDA_EP}, f"{OP} ran on {providers}"
    check(case, q, k, v, mask, y, lse, context=f"ORT CUDA EP {case}")


@pytest.mark.parametrize("forced", ["prefill", "decode"])
def test_forced_paths_through_onnxruntime(forced, tmp_path):
    case = CASES_BY_NAME["gqa4_causal_sq_lt_skv"]
    (q, k, v, mask), y, lse, providers = run_case(case, torch.float16, tmp_path, forced_path=forced)
    assert providers == {ort_cuda.CUDA_EP}
    check(case, q, k, v, mask, y, lse, context=f"ORT forced {forced}")


def test_without_the_opt_in_the_node_falls_back_to_the_cpu_kernel(tmp_path):
    # A fresh process without the flag: the CUDA kernels are not registered, onnxruntime places the node on
    # our CPU kernel (copying tensors) and the result is still right.
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import ort_cuda, sdpa_cuda_lib as lib
        from sdpa_oracle import CASES, check, make_inputs
        from test_sdpa_cuda_ort import sdpa_model
        ort, missing = ort_cuda.onnxruntime_cuda()
        case = {{c.name: c for c in CASES}}["decode_gqa_odd"]
        q, k, v, _ = make_inputs(case, torch.float16)
        sess = ort_cuda.session(ort, sdpa_model(case, torch.float16), library=lib.library_path(),
                                profile_prefix={str(tmp_path / "cpu")!r})
        y = torch.empty(case.b, case.hq, case.sq, case.v_dim, dtype=torch.float16, device="cuda")
        lse = torch.empty(case.b, case.hq, case.sq, device="cuda")
        ort_cuda.run_bound(sess, {{"Q": q, "K": k, "V": v}}, {{"Y": y, "LSE": lse}})
        torch.cuda.synchronize()
        check(case, q, k, v, None, y, lse, context="CPU fallback")
        print(sorted(ort_cuda.node_providers(sess, "{OP}")))
        """
    )
    env = dict(os.environ, **{ort_cuda.DISABLE_FLAG: "1"})
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "['CPUExecutionProvider']", done.stdout
