"""A few representative kernel launches for compute-sanitizer (memcheck, racecheck), run by
scripts/gpu_check.sh when the GPU tests fail or GPU_CHECK_SANITIZE=1: every kernel family (prefill mma,
decode mma with splits + combine, simt), edge tiles, masks, D padding, Dv != D; then GroupQueryAttention
(new-token kernel, past copies, per-sequence lengths, the fused Q preparation, caches in scratch); then
PagedAttention (family `paged`, run on every gpu_check: layout and new-token kernels, the ragged schedule,
both launches over blocks, and bad index inputs, which must stay inside every buffer: run with
PYTORCH_NO_CUDA_MEMORY_CACHING=1 so each tensor is its own allocation and memcheck sees any stray access);
then MultiHeadLatentAttention's tensor-core attention (family `mla`, on every run); then the Hopper prefill
kernel (family `wgmma`, ONNXATTN_SDPA_CUDA_PREFILL=wgmma: partial row tiles, partial key steps, padded D/Dv, rows
without keys; on every run, skipped on other GPUs). Both passed memcheck on an H100 (93587a9, 8ec89a9). Then the
sparse ops' tensor-core attention by block (family `sparse_mma`, ONNXATTN_SPARSE_CUDA=mma, through onnxruntime's CUDA
EP: shared and per-head NSA lists, partial last blocks, rows before any key, routed segments longer than a tile, Dv !=
D; with the opt-in switches too, the query tiles included; on every run). Then LightningIndexer (family `indexer`, not
yet run on a GPU: both score kernels, the radix select, shared buffers with NaN in hidden slots; on every run). Then
the opt-in decode and new-token kernels not yet run on a GPU (family `optin`: the direct-loads decode with two stages
a warp, GroupQueryAttention's chunked query and new-token kernels, the decode's fused split merge; on every run).
Not a pytest module."""

from __future__ import annotations

import contextlib
import os
import sys

import torch

import sdpa_cuda_lib as lib
from sdpa_oracle import CASES, check, make_inputs

GQA_NAMES = ("shared-decode-b4", "everything-shared", "prefill-b2-s77-d64", "chunk-s5-p700", "d12-simt",
             "no-present-decode", "window-shared-b2")  # fmt: skip
NAMES = ("gqa4_causal_sq_lt_skv", "decode_gqa_odd", "d80", "dv128_d192", "bool_mask_keys_padding",
         "additive_mask_rows", "window_decode", "d33_simt_fallback")  # fmt: skip
PAGED_NAMES = ("decode-b4-bs16", "mixed-chunks-decodes", "decode-long-splits", "d12-simt", "chunk-bs1", "no-present")
PAGED_FAULTS = ("block-huge", "block-negative", "length-past-capacity", "negative-length")
PAGED_CALL_FAULTS = ("cu-decreasing", "cu-past-the-rows")
MLA_NAMES = ("decode-h16-b2", "decode-h128-shared-b3", "chunk-s37-window", "prompt-odd-b2", "shared-bnsh-yarn",
             "indexed-shared-b3", "indexed-chunk-s9-window")  # key_indices: gathered rows, sorted lists
WGMMA_NAMES = ("causal_sq_gt_skv_empty_rows", "mha_odd_bidirectional", "d72_dv128", "dv80_d128", "window_causal",
               "band", "sq17")  # fmt: skip


def checked(label: str, run) -> int:
    """Runs one case: prints `ok` (with what `run` returns, e.g. the plan's reason) or `FAIL` and the error, so
    every case is reported; returns the failures (0 or 1)."""
    try:
        detail = run()
    except Exception as e:  # noqa: BLE001 - report every case
        print(f"FAIL {label}: {type(e).__name__}: {e}")
        return 1
    print(f"ok   {label}" + (f": {detail}" if detail else ""))
    return 0


@contextlib.contextmanager
def library_switches(values: dict[str, str]):
    """The library's environment switches `values` (read on every call) set for the block."""
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)


def paged_cases() -> int:
    import numpy as np

    import paged_cases as pc
    import paged_torch as pt

    def run_case(case, dtype, path):
        y, kp, vp, plan, _ = pt.run(case, dtype, path=path)
        pc.check(case, dtype, y, kp, vp, context=plan["reason"])
        return plan["reason"]

    def run_fault(fault, path):
        y, _, _, _, _ = pt.run(case, "float16", feeds=pc.faulty(fault), path=path, in_place=True)
        assert np.isnan(y).any(), "a failing sequence must give NaN rows"

    failed = 0
    for name in PAGED_NAMES:
        for dtype, path in (("float16", "auto"), ("float16", "prefill"), ("float32", "auto")):
            failed += checked(f"paged {name} {dtype} {path}", lambda: run_case(pc.CASES_BY_ID[name], dtype, path))
    case = pc.CASES_BY_ID[pc.FAULT_BASE]
    faults = [(n, pc.SEQUENCE_FAULTS[n][1]) for n in PAGED_FAULTS] + [(n, pc.CALL_FAULTS[n]) for n in PAGED_CALL_FAULTS]
    for name, fault in faults:
        for path in ("decode", "prefill"):
            failed += checked(f"paged bad input {name} {path}", lambda: run_fault(fault, path))
    return failed


def mla_cases() -> int:
    """MultiHeadLatentAttention with the tensor-core attention (ONNXATTN_MLA_CUDA_KERNEL=mma): split tails, head
    blocks past H, NaN stale slots, widths that are not multiples of 16, against the suite's reference."""
    import test_mla_cuda as tm

    def run_case(case):
        x = tm.make_inputs(case, "bfloat16")
        y, presents = tm.run_cuda(case, x, "bfloat16")
        tm.check(case, "bfloat16", y, presents, tm.reference(case, x, "bfloat16"))

    with library_switches({"ONNXATTN_MLA_CUDA_KERNEL": "mma"}):
        return sum(checked(f"mla mma {name}", lambda: run_case(tm.CASES_BY_ID[name])) for name in MLA_NAMES)


def sdpa_run(case, dtype, path: str) -> str:
    """One ScaledDotProductAttention case of the oracle's table on `path`, checked; returns the plan's reason."""
    q, k, v, mask = make_inputs(case, dtype)
    y, lse, plan = lib.run(q, k, v, mask, causal=case.causal, window=case.window, band=case.band, scale=case.scale,
                           softcap=case.softcap, want_lse=case.lse, path=path)  # fmt: skip
    torch.cuda.synchronize()
    check(case, q, k, v, mask, y, lse if case.lse else None, context=plan["reason"])
    return plan["reason"]


def wgmma_cases() -> int:
    """The Hopper prefill kernel (ONNXATTN_SDPA_CUDA_PREFILL=wgmma) on shapes with partial tiles and padding,
    against the oracle; nothing on a GPU other than sm_90."""
    from test_sdpa_cuda_wgmma import WGMMA_CASES

    if torch.cuda.get_device_capability() != (9, 0):
        print("skip wgmma: not an sm_90 GPU")
        return 0
    by_name = {c.name: c for c in WGMMA_CASES}

    def run_case(case):
        reason = sdpa_run(case, torch.bfloat16, "prefill")
        assert "-> wgmma" in reason, reason

    with library_switches({"ONNXATTN_SDPA_CUDA_PREFILL": "wgmma"}):
        return sum(checked(f"wgmma {name}", lambda: run_case(by_name[name])) for name in WGMMA_NAMES)


def gqa_cases() -> int:
    import gqa_cases as gc
    import gqa_torch as gt

    def run_case(case, dtype):
        y, pk, pv, plan, _ = gt.run(case, dtype)
        gc.check(case, dtype, y, pk, pv, context=plan["attention"]["reason"])
        return plan["attention"]["reason"]

    return sum(checked(f"gqa {name} {dtype}", lambda: run_case(gc.CASES_BY_ID[name], dtype))
               for name in GQA_NAMES for dtype in ("float16", "float32"))  # fmt: skip


OPTIN_SDPA = ("decode_gqa_odd", "window_decode", "mask_decode")
# (everything-shared has K-norm, so its new keys take the per-row kernel; shared-docs-12-over-6 takes the chunked one
# over two groups of KV heads)
OPTIN_GQA = ("shared-decode-b4", "everything-shared", "chunk-s5-p700", "shared-docs-12-over-6")


def optin_cases() -> int:
    """The opt-in decode and new-token kernels, against the oracles: the (default) direct-loads decode with two stages
    a warp (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2; passed memcheck on the H200 at 82087dc) under ScaledDotProductAttention
    and GroupQueryAttention, the latter also with its query and new-token kernels by token (ONNXATTN_GQA_CUDA_ROTATION=
    chunks, queries prepared ahead: ONNXATTN_GQA_CUDA_QUERY=rotated); the fused split merge; the joint query and
    new-token kernel (ROTATION=joint)."""
    import gqa_cases as gc
    import gqa_torch as gt

    by_name = {c.name: c for c in CASES}

    def run_gqa(case):
        y, pk, pv, plan, _ = gt.run(case, "float16")
        gc.check(case, "float16", y, pk, pv, context=plan["attention"]["reason"])
        return plan["attention"]["reason"]

    switches = {"ONNXATTN_SDPA_CUDA_DECODE_STAGES": "2",
                "ONNXATTN_GQA_CUDA_ROTATION": "chunks", "ONNXATTN_GQA_CUDA_QUERY": "rotated"}  # fmt: skip
    with library_switches(switches):
        failed = sum(checked(f"optin sdpa {n}", lambda: sdpa_run(by_name[n], torch.float16, "decode"))
                     for n in OPTIN_SDPA)  # fmt: skip
        failed += sum(checked(f"optin gqa {n}", lambda: run_gqa(gc.CASES_BY_ID[n])) for n in OPTIN_GQA)
    # the fused split merge (ONNXATTN_SDPA_CUDA_COMBINE=fused, not yet run on a GPU): counters in scratch, the last
    # CTA's reads of the other splits' partials; a ragged paged batch with long splits too
    import paged_cases as pc
    import paged_torch as pt

    def run_paged(case):
        y, kp, vp, plan, _ = pt.run(case, "float16")
        pc.check(case, "float16", y, kp, vp, context=plan["reason"])
        return plan["reason"]

    with library_switches({"ONNXATTN_SDPA_CUDA_COMBINE": "fused"}):
        failed += sum(checked(f"optin fused merge sdpa {n}", lambda: sdpa_run(by_name[n], torch.float16, "decode"))
                      for n in OPTIN_SDPA + ("decode_sq16", "d256_decode"))  # fmt: skip
        failed += sum(checked(f"optin fused merge gqa {n}", lambda: run_gqa(gc.CASES_BY_ID[n])) for n in OPTIN_GQA)
        failed += checked("optin fused merge paged", lambda: run_paged(pc.CASES_BY_ID["decode-long-splits"]))
    # the combine kernel by columns (ONNXATTN_SDPA_CUDA_COMBINE=columns, not yet run on a GPU) after the lean-step
    # decode kernels without the fused merge (ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy): the ragged rows' targets
    # (paged); then one split per key tile: lanes past Dv (d40, dv16_d32), 65 splits (two batches of 32)
    with library_switches({"ONNXATTN_SDPA_CUDA_COMBINE": "columns", "ONNXATTN_SDPA_CUDA_DECODE_RESCALE": "lazy"}):
        failed += sum(checked(f"optin columns combine, lazy rescale sdpa {n}",
                              lambda: sdpa_run(by_name[n], torch.float16, "decode"))
                      for n in OPTIN_SDPA)  # fmt: skip
        failed += checked("optin columns combine, lazy rescale paged",
                          lambda: run_paged(pc.CASES_BY_ID["decode-long-splits"]))
    with library_switches({"ONNXATTN_SDPA_CUDA_COMBINE": "columns", "ONNXATTN_SDPA_CUDA_SPLITS": "256"}):
        failed += sum(checked(f"optin columns combine sdpa {n}, one split a key tile",
                              lambda: sdpa_run(by_name[n], torch.float16, "decode"))
                      for n in ("d40", "dv16_d32", "decode_gqa_odd"))  # fmt: skip
    # GroupQueryAttention's queries and new keys by one kernel (ONNXATTN_GQA_CUDA_ROTATION=joint, not yet run on a GPU)
    with library_switches({"ONNXATTN_GQA_CUDA_ROTATION": "joint", "ONNXATTN_GQA_CUDA_QUERY": "rotated"}):
        failed += sum(checked(f"optin joint new tokens gqa {n}", lambda: run_gqa(gc.CASES_BY_ID[n]))
                      for n in OPTIN_GQA + ("prefill-s96", "rope-partial-interleaved"))  # fmt: skip
    return failed


def sparse_mma_cases() -> int:
    """NSA's block branch and the routed attention on the tensor-core kernel by block against the fast path, as
    they are and with the latency work (loads overlapped, the redux argmax)."""
    import test_sparse_cuda_ort as t

    def run_case(kind, name, dtype):
        got, fast, tol = (t.nsa_mma_and_fast if kind == "nsa" else t.routed_mma_and_fast)(name, dtype)
        err = float(abs(got.astype("float64") - fast.astype("float64")).max(initial=0.0))
        if not err <= tol:
            raise AssertionError(f"max |mma - fast| = {err:.3g} > {tol:.3g}")
        return f"max |mma - fast| = {err:.2g}"

    failed = 0
    # ONNXATTN_SPARSE_CUDA_LOADS / _ARGMAX / _BLOCKS / _ROUTE: the routing by groups (the default; passed memcheck
    # on the H200 at 2c9a48e), by the inverted lists and by query tiles (its walk of the lists, two stages of tiles;
    # query tiles staging 16-bit copies by cp.async, then float32 ones by plain loads), and the routing's full rescan
    for loads, argmax, blocks, route in (("async", "redux", "lists", "groups"), ("async", "redux", "queries", "split"),
                                         ("sync", "shuffle", "queries", "split"), ("async", "redux", "lists", "split")):
        switches = {"LOADS": loads, "ARGMAX": argmax, "BLOCKS": blocks, "ROUTE": route}
        with library_switches({f"ONNXATTN_SPARSE_CUDA_{switch}": value for switch, value in switches.items()}):
            failed += sum(checked(f"sparse_mma {kind} {name} bfloat16 {switches}",
                                  lambda: run_case(kind, name, "bfloat16"))
                          for kind, names in (("nsa", t.MMA_SANITIZE_NSA), ("routed", t.MMA_SANITIZE_ROUTED))
                          for name in names)  # fmt: skip
    return failed


INDEXER_NAMES = ("shared-b3-nan-hidden", "decode-h64-t300-b2", "nan-visible-keys", "odd-h3-d5", "large")


def indexer_cases() -> int:
    """LightningIndexer through the library's C entry on torch tensors (tests/test_indexer_numerics.py's cases,
    checked against its oracle): the tensor-core score kernel (16-bit, D % 8 == 0), the CUDA-core one (float32,
    D = 5, or ONNXATTN_INDEXER_CUDA=simt), shared buffers with NaN in the hidden slots, the radix select."""
    import ctypes
    import dataclasses

    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # tests/
    import test_indexer_numerics as n

    dll = ctypes.CDLL(lib.library_path())
    dll.OnnxAttnIndexerCudaPlan.restype = dll.OnnxAttnIndexerCudaRun.restype = ctypes.c_char_p
    dll.OnnxAttnIndexerCudaPlan.argtypes = [ctypes.c_int64] * 8 + [ctypes.POINTER(ctypes.c_int64)]
    dll.OnnxAttnIndexerCudaRun.argtypes = [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.POINTER(ctypes.c_void_p),
                                                                ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                                                                ctypes.c_int64]
    types = {"float32": (torch.float32, 1, 4), "float16": (torch.float16, 10, 2)}

    def run_case(case_id: str, dtype: str, kernel: str) -> str:
        c = n.CASES_BY_ID[case_id]
        feeds = n.feeds_of(case_id)
        torch_type, onnx_type, size = types[dtype]
        q = torch.from_numpy(np.asarray(feeds["query"], np.float32)).to("cuda", torch_type)
        k = torch.from_numpy(np.asarray(feeds["key"], np.float32)).to("cuda", torch_type).contiguous()
        w = torch.from_numpy(feeds["weights"]).cuda()
        past = torch.from_numpy(feeds["past_lengths"]).cuda() if "past_lengths" in feeds else None
        out = torch.empty(c.batch, c.q_len, c.top_k, dtype=torch.int64, device="cuda")
        plan = (ctypes.c_int64 * 9)()
        with library_switches({"ONNXATTN_INDEXER_CUDA": kernel}):
            error = dll.OnnxAttnIndexerCudaPlan(c.batch, c.q_len, c.kv_len, c.heads, c.head_dim, c.top_k, size, -1,
                                                plan)
            if error:
                raise RuntimeError(error.decode())
            scratch = torch.empty(max(plan[6], 1), dtype=torch.uint8, device="cuda")
            ptrs = (ctypes.c_void_p * 5)(q.data_ptr(), k.data_ptr(), w.data_ptr(),
                                         past.data_ptr() if past is not None else None, out.data_ptr())
            error = dll.OnnxAttnIndexerCudaRun(c.batch, c.q_len, c.kv_len, c.heads, c.head_dim, c.top_k, c.scale, ptrs,
                                               onnx_type, torch.cuda.current_stream().cuda_stream, scratch.data_ptr(),
                                               scratch.numel())
            if error:
                raise RuntimeError(error.decode())
        torch.cuda.synchronize()
        n.check(dataclasses.replace(c, dtype=dtype), [out.cpu().numpy()])
        return "tensor cores" if plan[7] else "CUDA cores"

    return sum(checked(f"indexer {name} {dtype} {kernel}", lambda: run_case(name, dtype, kernel))
               for name in INDEXER_NAMES for dtype, kernel in (("float16", "mma"), ("float32", "simt")))


def main(argv=None) -> int:
    """Arguments: the families to run, `sdpa`, `gqa`, `paged`, `mla`, `wgmma`, `sparse_mma`, `optin` and/or
    `indexer` (default all)."""
    families = set(argv if argv is not None else sys.argv[1:]) or {"sdpa", "gqa", "paged", "mla", "wgmma",
                                                                   "sparse_mma", "optin", "indexer"}
    by_name = {c.name: c for c in CASES}
    failed = paged_cases() if "paged" in families else 0  # first: the one family checked on every run
    # then the newest kernels (not yet run on a GPU), before the cap can cut the run short
    failed += optin_cases() if "optin" in families else 0
    failed += sparse_mma_cases() if "sparse_mma" in families else 0
    failed += indexer_cases() if "indexer" in families else 0
    failed += mla_cases() if "mla" in families else 0
    failed += wgmma_cases() if "wgmma" in families else 0
    for name in NAMES if "sdpa" in families else ():
        for dtype in (torch.float16, torch.float32):
            for path in ("prefill", "decode"):
                failed += checked(f"{name} {dtype} {path}", lambda: sdpa_run(by_name[name], dtype, path))
    failed += gqa_cases() if "gqa" in families else 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
