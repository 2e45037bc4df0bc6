"""MultiHeadLatentAttention's CUDA kernel (absorbed form; the SIMT attention and the tensor-core attention,
ONNXATTN_MLA_CUDA_KERNEL=mma, the 16-bit default since it passed on an H100, 2026-11-27) against the eager torch
reference, through the library's ctypes entry on torch CUDA tensors, then through onnxruntime-gpu's
CUDA execution provider; each 16-bit case with both attention kernels.

Reference: onnxattn.nn.mla_reference on the CPU from the same inputs — in float64 for float32 inputs; for
16-bit inputs in the input type, which computes in float32 and stores the rope keys in the cache in the
input type as the kernel does. Tolerance (STYLE.md #10): float32: 1e-5 + 1e-5 * max|y| plus 4x the error
of the reference run in plain float32, plus the angle slack: the device computes the default inverse
frequencies and sin/cos with its own float32 functions, one ulp away from torch's at times, and a RoPE
angle position * inv_freq then errs by ~position * 2^-23 rad (~1e-4 relative at position 1500); 16-bit
types: two ulps of the largest output (its own rounding plus a last bit of the float32 accumulation
order). Caches: the latent bit for bit, rope keys within the same float32 rule or one ulp (16-bit).

Cases cover DeepSeek-V3 sizes (R=512, Dr=64, Dn=Dv=128) at decode with 16 and 128 heads (split-KV), a
causal chunk with a window, a prompt without a past and odd sizes, shared buffers with per-sequence lengths
and NaN stale slots ([B, 1, M, .] caches, YaRN frequencies, explicit positions, softcap, scale),
bidirectional attention, caches in scratch, in place, and an out-of-range past_lengths entry (NaN rows
for that sequence only, its cache untouched: the device cannot raise). key_indices (DeepSeek-V3.2 sparse
attention): DeepSeek sizes at decode with 2048 listed keys of a 3000-token cache, shared buffers whose lists
name stale (NaN) slots, a windowed chunk with an odd K, a prompt, empty lists; entries past the caches are
ignored on the device (the CPU kernel raises)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda unavailable)")]

import mla_cuda_lib as lib  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
INPUTS = lib.INPUTS


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    problem: lib.Problem
    lengths: tuple[int, ...] | None = None  # shared mode: past_lengths
    present: str = "outputs"  # "outputs", "scratch" (none requested) or "in-place"


DS = dict(rank=512, nope=128, rope=64, v_dim=128)
CASES = [
    Case("decode-h16-b2", lib.Problem(batch=2, heads=16, past=1500, **DS)),
    Case("decode-h128-shared-b3", lib.Problem(batch=3, heads=128, past=700, mode="shared", **DS), (600, 0, 699)),
    Case("chunk-s37-window", lib.Problem(seq=37, heads=4, rank=64, nope=32, rope=16, v_dim=32, past=300, window=50)),
    Case("prompt-odd-b2", lib.Problem(batch=2, seq=9, heads=3, rank=40, nope=24, rope=8, v_dim=20, mode="none",
                                      interleaved=0)),
    Case("shared-bnsh-yarn", lib.Problem(batch=2, seq=3, heads=8, rank=96, nope=32, rope=16, v_dim=48, past=40,
                                         mode="shared", cache_rank=4, position_ids=True, inv_freq=True, softcap=2.0,
                                         scale=0.2, rope_attention_scaling=1.1), (5, 30)),
    Case("bidirectional", lib.Problem(seq=5, heads=4, rank=64, nope=16, rope=16, v_dim=16, past=20, causal=0)),
    Case("caches-in-scratch", lib.Problem(batch=2, heads=16, past=900, **DS), present="scratch"),
    Case("in-place-decode", lib.Problem(batch=2, heads=16, past=2048, mode="shared", **DS), (2000, 77), "in-place"),
    # key_indices: random lists with padding (-1), repeats, future keys and (shared) stale slots
    Case("indexed-decode-h128-b2", lib.Problem(batch=2, heads=128, past=3000, index_count=2048, **DS)),
    Case("indexed-shared-b3", lib.Problem(batch=3, seq=2, heads=16, past=600, mode="shared", index_count=64, **DS),
         (500, 0, 598)),
    Case("indexed-chunk-s9-window", lib.Problem(seq=9, heads=4, rank=64, nope=32, rope=16, v_dim=32, past=300,
                                                window=40, index_count=33)),
    Case("indexed-prompt-odd-b2", lib.Problem(batch=2, seq=17, heads=3, rank=40, nope=24, rope=8, v_dim=20,
                                              mode="none", index_count=5)),
    Case("indexed-empty", lib.Problem(seq=3, heads=4, rank=64, nope=32, rope=16, v_dim=32, past=50, index_count=0)),
]
CASES_BY_ID = {c.id: c for c in CASES}


def make_inputs(case: Case, dtype: str, seed: int = 0) -> dict:
    p = case.problem
    g = torch.Generator().manual_seed(seed)
    t = lambda *shape, scale=1.0: (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DTYPES[dtype])  # noqa: E731
    x = {"query": t(p.batch, p.seq, p.heads * (p.nope + p.rope)), "latent": t(p.batch, p.seq, p.rank),
         "k_rope": t(p.batch, p.seq, p.rope), "w_uk": t(p.heads, p.rank, p.nope, scale=p.rank**-0.5),
         "w_uv": t(p.heads, p.rank, p.v_dim, scale=p.rank**-0.5)}
    lead = (p.batch, 1) if p.cache_rank == 4 else (p.batch,)
    if p.mode != "none":
        x["past_latent"], x["past_k_rope"] = t(*lead, p.past, p.rank), t(*lead, p.past, p.rope)
    if p.mode == "shared":
        x["past_lengths"] = torch.tensor(case.lengths, dtype=torch.int64)
        for b, n in enumerate(case.lengths):  # stale slots must not matter
            x["past_latent"][b, ..., max(n, 0) + p.seq:, :] = float("nan")
            x["past_k_rope"][b, ..., max(n, 0) + p.seq:, :] = float("nan")
    offsets = torch.tensor(case.lengths) if case.lengths else torch.full((p.batch,), p.past if p.mode == "concat" else 0)
    if p.position_ids:
        x["position_ids"] = (offsets[:, None] + torch.arange(p.seq)[None] * 2 + 3).to(torch.int64)
    if p.inv_freq:
        base = 10000.0 ** (-torch.arange(0, p.rope, 2, dtype=torch.float32) / p.rope)
        x["rope_inv_freq"] = base * torch.linspace(1.0, 0.25, p.rope // 2)
    if p.index_count >= 0:
        total = p.past + p.seq if p.mode == "concat" else p.past if p.mode == "shared" else p.seq
        indices = torch.randint(0, total, (p.batch, p.seq, p.index_count), generator=g)
        indices[torch.rand(indices.shape, generator=g) < 0.2] = -1
        if p.index_count > 1:
            indices[..., -1] = indices[..., 0]  # a repeat
        x["key_indices"] = indices
    return x


def attrs(p: lib.Problem) -> dict:
    return dict(num_heads=p.heads, causal=bool(p.causal), window=p.window, softcap=p.softcap, scale=p.scale,
                rope_base=p.rope_base, rope_interleaved=bool(p.interleaved), rope_attention_scaling=p.rope_attention_scaling)


def reference(case: Case, x: dict, dtype: str):
    """(output, present_latent, present_k_rope) in float64 and, for float32 inputs, the error of the same
    computation in plain float32 per output (the baseline the tolerance scales; zeros for 16-bit types)."""
    from onnxattn.nn import mla_reference

    def call(cast):
        inputs = {k: (cast(v) if v.is_floating_point() and k != "rope_inv_freq" else v) for k, v in x.items()}
        return [o.double() for o in mla_reference(**inputs, **attrs(case.problem))]

    if dtype != "float32":
        return call(lambda v: v), [0.0, 0.0, 0.0]
    exact, plain = call(lambda v: v.double()), call(lambda v: v.float())
    baseline = [float(torch.nan_to_num((a - b).abs(), nan=0.0).max()) for a, b in zip(plain, exact)]
    return exact, baseline


def run_cuda(case: Case, x: dict, dtype: str):
    p = case.problem
    dev = {k: v.cuda() for k, v in x.items()}
    out = torch.full((p.batch, p.seq, p.heads * p.v_dim), float("nan"), dtype=DTYPES[dtype], device="cuda")
    presents = (None, None)
    if case.present == "outputs" and p.mode != "none":
        total = p.past + p.seq if p.mode == "concat" else p.past
        lead = (p.batch, 1) if p.cache_rank == 4 else (p.batch,)
        presents = tuple(torch.full((*lead, total, w), float("nan"), dtype=DTYPES[dtype], device="cuda")
                         for w in (p.rank, p.rope))
    elif case.present == "outputs":
        presents = tuple(torch.full((p.batch, p.seq, w), float("nan"), dtype=DTYPES[dtype], device="cuda")
                         for w in (p.rank, p.rope))
    elif case.present == "in-place":
        presents = (dev["past_latent"], dev["past_k_rope"])
    lib.run(p, dev, dtype, output=out, present_latent=presents[0], present_k_rope=presents[1])
    return out, presents


def max_position(case: Case) -> int:
    p = case.problem
    return (p.past + p.seq if p.mode != "none" else p.seq) + (2 * p.seq + 3 if p.position_ids else 0)


def check(case: Case, dtype: str, y, presents, reference_and_baseline, *, invalid=()):
    ref, baseline = reference_and_baseline
    y = y.double().cpu()
    ymax = float(ref[0].abs().max())
    slack = 4 * 2.0**-24 * max_position(case)  # relative error of the rotated values, see the module doc
    if dtype == "float32":
        tol = 1e-5 + 1e-5 * ymax + 4 * baseline[0] + slack * ymax
    else:
        tol = 2 * ULP[dtype] * max(1.0, ymax)
    valid = [b for b in range(y.shape[0]) if b not in invalid]
    err = float((y[valid] - ref[0][valid]).abs().max())
    assert err <= tol, f"{case.id} {dtype}: max |y - reference| = {err:.3g} > {tol:.3g}"
    for b in invalid:
        assert torch.isnan(y[b]).all(), "an out-of-range past_lengths entry gives NaN rows"
    if presents[0] is None:
        return
    for name, got, want in (("latent", presents[0], ref[1]), ("rope", presents[1], ref[2])):
        got = got.double().cpu()
        assert got.shape == want.shape, f"{name}: {got.shape} != {want.shape}"
        got, want = got[valid], want[valid]
        if name == "latent":
            assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0)), "latent bit for bit"
        elif dtype == "float32":
            kmax = float(torch.nan_to_num(want, nan=0.0).abs().max())
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 + 4 * baseline[2] + slack * kmax, equal_nan=True)
        else:
            torch.testing.assert_close(got, want, rtol=ULP[dtype], atol=1e-6, equal_nan=True)


PARAMS = [(c.id, d) for c in CASES for d in DTYPES if d == "bfloat16" or c.id in
          ("decode-h16-b2", "shared-bnsh-yarn", "prompt-odd-b2", "chunk-s37-window", "indexed-shared-b3",
           "indexed-chunk-s9-window")]


KERNELS = ("simt", "mma")  # ONNXATTN_MLA_CUDA_KERNEL: the attention step's SIMT and tensor-core kernels


def use_kernel(monkeypatch, kernel: str, dtype: str, problem: lib.Problem) -> None:
    """Runs the attention step on `kernel` (read on every call); the mma kernel is 16-bit only."""
    if kernel == "mma" and dtype == "float32":
        pytest.skip("the mma kernel is float16/bfloat16 only")
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", kernel)
    assert lib.plan(problem).kernel == kernel


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case_id, dtype", PARAMS, ids=[f"{c}-{d}" for c, d in PARAMS])
def test_kernel_matches_reference(case_id, dtype, kernel, monkeypatch):
    case = CASES_BY_ID[case_id]
    use_kernel(monkeypatch, kernel, dtype, case.problem)
    x = make_inputs(case, dtype)
    y, presents = run_cuda(case, x, dtype)
    check(case, dtype, y, presents, reference(case, x, dtype))


@pytest.mark.parametrize("kernel", KERNELS)
def test_out_of_range_past_lengths_give_nan_rows_only_there(kernel, monkeypatch):
    case = dataclasses.replace(CASES_BY_ID["decode-h128-shared-b3"], lengths=(600, 700, 5))  # 700 + 1 > M
    use_kernel(monkeypatch, kernel, "bfloat16", case.problem)
    x = make_inputs(case, "bfloat16")
    before = x["past_latent"][1].clone()
    y, presents = run_cuda(case, {**x, "past_lengths": x["past_lengths"]}, "bfloat16")
    fixed = dict(x, past_lengths=torch.tensor([600, 0, 5]))  # the reference for the valid sequences
    check(case, "bfloat16", y, presents, reference(case, fixed, "bfloat16"), invalid=(1,))
    assert torch.equal(torch.nan_to_num(presents[0][1].cpu().float(), nan=7.0), torch.nan_to_num(before.float(), nan=7.0))


def test_decode_steps_equal_one_pass():
    """Token-by-token decode into a shared buffer (in place) gives the rows of one causal pass."""
    p = lib.Problem(batch=2, seq=6, heads=16, mode="none", **DS)
    x = make_inputs(Case("one-pass", p), "float32")
    full = torch.empty(2, 6, 16 * 128, device="cuda")
    lib.run(p, {k: v.cuda() for k, v in x.items()}, "float32", output=full)
    buffers = [torch.full((2, 8, w), float("nan"), device="cuda") for w in (512, 64)]
    step_p = lib.Problem(batch=2, seq=1, heads=16, past=8, mode="shared", **DS)
    rows = []
    for i in range(6):
        step = {k: x[k][:, i:i + 1].cuda() for k in ("query", "latent", "k_rope")}
        step.update(w_uk=x["w_uk"].cuda(), w_uv=x["w_uv"].cuda(), past_latent=buffers[0], past_k_rope=buffers[1],
                    past_lengths=torch.full((2,), i, dtype=torch.int64, device="cuda"))
        y = torch.empty(2, 1, 16 * 128, device="cuda")
        lib.run(step_p, step, "float32", output=y, present_latent=buffers[0], present_k_rope=buffers[1])
        rows.append(y)
    torch.testing.assert_close(torch.cat(rows, 1), full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_key_indices_past_the_caches_are_ignored_on_the_device(kernel, monkeypatch):
    """The device cannot raise: an entry >= the cache length lists nothing (the CPU kernel rejects it)."""
    case = CASES_BY_ID["indexed-shared-b3"]
    use_kernel(monkeypatch, kernel, "bfloat16", case.problem)
    x = make_inputs(case, "bfloat16")
    bad = x["key_indices"].clone()
    bad[0, 0, :5] = torch.tensor([600, 601, 10**9, 2**31, 2**40])
    y, presents = run_cuda(case, dict(x, key_indices=bad), "bfloat16")
    fixed = dict(x, key_indices=torch.where(bad >= 600, -1, bad))
    check(case, "bfloat16", y, presents, reference(case, fixed, "bfloat16"))


# ---------------------------------------------------------------------------------------------------------
# Through onnxruntime's CUDA execution provider

ORT_CASES = ["decode-h16-b2", "shared-bnsh-yarn", "caches-in-scratch", "in-place-decode", "indexed-decode-h128-b2"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case_id", ORT_CASES)
def test_runs_on_the_cuda_execution_provider(case_id, kernel, tmp_path, monkeypatch):
    import ort_cuda

    use_kernel(monkeypatch, kernel, "float16", CASES_BY_ID[case_id].problem)
    ort, missing = ort_cuda.onnxruntime_cuda()
    ort_cuda.require_cuda_kernels(ort, missing)
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from mla_helpers import mla_model

    case, dtype = CASES_BY_ID[case_id], "float16"
    p = case.problem
    x = make_inputs(case, dtype)
    present = [n for n in (*INPUTS[5:], "key_indices") if n in x]
    with_present = case.present != "scratch"
    model = mla_model(present, dtype=dtype, with_present=with_present, attrs=attrs(p) | dict(
        causal=p.causal, rope_interleaved=p.interleaved), cache_rank=p.cache_rank)
    sess = ort_cuda.session(ort, model.SerializeToString(), library=lib.library_path(),
                            profile_prefix=str(tmp_path / "ort"))
    dev = {k: v.cuda() for k, v in x.items()}
    ref = reference(case, x, dtype)
    expected = ref[0]  # (output, present_latent, present_k_rope); ref[1] is the float32 baseline
    out = {"output": torch.empty(expected[0].shape, dtype=torch.float16, device="cuda")}
    if with_present:
        if case.present == "in-place":
            out["present_latent"], out["present_k_rope"] = dev["past_latent"], dev["past_k_rope"]
        else:
            out["present_latent"] = torch.empty(expected[1].shape, dtype=torch.float16, device="cuda")
            out["present_k_rope"] = torch.empty(expected[2].shape, dtype=torch.float16, device="cuda")
    ort_cuda.run_bound(sess, dev, out)
    torch.cuda.synchronize()
    assert ort_cuda.node_providers(sess, "MultiHeadLatentAttention") == {ort_cuda.CUDA_EP}
    presents = (out.get("present_latent"), out.get("present_k_rope"))
    check(case, dtype, out["output"], presents, ref)
    if case.present == "in-place":
        assert out["present_latent"].data_ptr() == dev["past_latent"].data_ptr()

