"""Host-side plan of the CUDA MultiHeadLatentAttention (csrc/mla/cuda_plan.h): key splits that fill the GPU
without splits of fewer than 256 keys, query chunks that bound the scratch, the scratch layout, caches in
scratch when the node does not ask for them, and clear errors for shapes the kernel cannot run. Runs
without a GPU through the library's C test entry (built in every configuration)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
import mla_cuda_lib as lib  # noqa: E402

H100_SMS = 132


def align(n: int) -> int:
    return -(-n // 256) * 256


def test_decode_splits_fill_the_gpu():
    # DeepSeek-V3 sizes, 16 heads, one token over 4096 cached ones: 16 rows, so the keys are split so that
    # 16 * splits blocks fill 132 SMs twice (17), but no split sees fewer than 256 keys (4097 // 256 = 16)
    p = lib.plan(lib.Problem(batch=1, heads=16, past=4096), sm_count=H100_SMS)
    assert p.splits == 16 and p.chunk_tokens == 1 and not p.present_in_scratch
    assert p.attention_smem == 4 * ((512 + 64) + 4 * 512 + 8)
    rows = 16
    want = align(8 * 2) + align(4 * rows * 576) + align(4 * 16 * rows * 512) + align(4 * 16 * rows)
    assert p.scratch_bytes == want
    # B = 64, H = 128: 8192 rows already fill the GPU
    assert lib.plan(lib.Problem(batch=64, heads=128, past=4096), sm_count=H100_SMS).splits == 1
    # a short cache is not split below 256 keys
    assert lib.plan(lib.Problem(batch=1, heads=16, past=300), sm_count=H100_SMS).splits == 1
    assert lib.plan(lib.Problem(batch=1, heads=1, past=1 << 20), sm_count=H100_SMS).splits == 64  # the cap


def test_long_prefill_is_chunked_to_bound_the_scratch():
    p = lib.plan(lib.Problem(batch=1, seq=32768, heads=128, past=0), sm_count=H100_SMS)
    per_token = 4 * 128 * (576 + p.splits * 513)
    assert p.splits == 1 and p.chunk_tokens == (256 << 20) // per_token < 32768
    assert p.scratch_bytes < (256 << 20) + 4096


def test_caches_in_scratch_without_present_outputs():
    with_out = lib.plan(lib.Problem(batch=2, seq=1, past=100), present_outputs=True)
    without = lib.plan(lib.Problem(batch=2, seq=1, past=100), present_outputs=False, element_bytes=2)
    assert without.present_in_scratch and not with_out.present_in_scratch
    assert without.scratch_bytes == with_out.scratch_bytes + align(2 * 2 * 101 * 512) + align(2 * 2 * 101 * 64)


def test_shared_buffer_plans_for_the_buffer_length(monkeypatch):
    shared = lib.Problem(batch=2, seq=1, heads=16, past=8192, mode="shared", cache_rank=4)
    assert lib.plan(shared, sm_count=H100_SMS).splits == 32  # mma: 2 rows of 16 heads; 8192 // 256 allows 32
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", "simt")
    assert lib.plan(shared, sm_count=H100_SMS).splits == 9  # simt: by occupancy, ceil(264 / 32)


def test_key_indices_split_the_lists_and_take_scratch_for_them(monkeypatch):
    """With key_indices a row walks its K listed entries, not the cache: splits by K (a 128k cache with
    DeepSeek-V3.2's 2048 picks splits like a 2048-key cache), each token's list sorted at K's power of two,
    and the chunk's lists ([chunk, K] int32, then [chunk] counts) after the LSE in scratch."""
    monkeypatch.delenv("ONNXATTN_MLA_CUDA_KERNEL", raising=False)
    dense = lib.plan(lib.Problem(batch=1, heads=16, past=131072), sm_count=H100_SMS)
    listed = lib.plan(lib.Problem(batch=1, heads=16, past=131072, index_count=2048), sm_count=H100_SMS)
    like = lib.plan(lib.Problem(batch=1, heads=16, past=2047), sm_count=H100_SMS)
    assert dense.splits == 64 and listed.splits == like.splits == 8 and listed.list_padded == 2048
    assert dense.list_padded == 0
    assert listed.scratch_bytes == like.scratch_bytes + align(4 * 1 * (2048 + 1))
    odd = lib.plan(lib.Problem(batch=2, seq=5, heads=4, past=50, index_count=3), sm_count=H100_SMS)
    assert odd.list_padded == 4 and odd.splits == 1
    empty = lib.plan(lib.Problem(batch=2, seq=5, heads=4, past=50, index_count=0), sm_count=H100_SMS)
    assert empty.list_padded == 1 and empty.splits == 1
    # a long prefill: the lists count in the chunk's scratch budget
    prefill = lib.plan(lib.Problem(batch=1, seq=32768, heads=128, past=0, index_count=2048), sm_count=H100_SMS)
    per_token = 4 * 128 * (576 + prefill.splits * 513) + 4 * (2048 + 1)
    assert prefill.chunk_tokens == (256 << 20) // per_token
    with pytest.raises(ValueError, match=r"MultiHeadLatentAttention: the CUDA kernel sorts each token's key_indices "
                       r"in shared memory, which allows K <= 8192 entries per query; got K = 8193"):
        lib.plan(lib.Problem(batch=1, heads=16, past=9000, index_count=8193))
    with pytest.raises(ValueError, match=r"MultiHeadLatentAttention: the CUDA kernel keeps each token's key_indices "
                       r"as int32 positions, so the caches may hold at most 2147483647 tokens; got 2147483648"):
        lib.plan(lib.Problem(batch=1, heads=16, past=2**31 - 1, index_count=64))
    lib.plan(lib.Problem(batch=1, heads=16, past=2**31 - 2, index_count=64))  # the longest it takes


@pytest.mark.parametrize("problem, message", [
    (lib.Problem(rank=4096), r"allows R \+ Dr \+ 4R <= 12280 floats; got R = 4096, Dr = 64"),
    (lib.Problem(rope=5), r"rope head dim Dr \(k_rope dim 2\) must be even"),
    (lib.Problem(nope=16384, rank=64), r"allows Dn and R up to 12288; got Dn = 16384"),
], ids=["latent-too-wide", "odd-rope", "nope-too-wide"])
def test_plan_errors(problem, message):
    with pytest.raises(ValueError, match="MultiHeadLatentAttention: .*" + message):
        lib.plan(problem)


def test_the_attention_kernel_is_mma_where_it_can_run(monkeypatch):
    ds = lib.Problem(batch=64, heads=16, past=4096)
    monkeypatch.delenv("ONNXATTN_MLA_CUDA_KERNEL", raising=False)
    assert lib.plan(ds, sm_count=H100_SMS).kernel == "mma"  # passed on the H100 at 93587a9, 6.7-11x simt's speed
    assert lib.plan(ds, sm_count=H100_SMS, element_bytes=4).kernel == "simt"  # float32: no tensor-core path
    assert lib.plan(lib.Problem(rank=40, rope=12), element_bytes=2).kernel == "simt"  # rows not 16-byte multiples
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", "mma")
    p = lib.plan(ds, sm_count=H100_SMS)
    # one CTA per (token, 16 heads): 64 of them, so 5 splits fill 264 slots (ceil(264 / 64)); 4097 // 256 allows 16
    assert p.kernel == "mma" and p.head_blocks == 1 and p.splits == 5
    p = lib.plan(lib.Problem(batch=64, heads=128, past=4096), sm_count=H100_SMS)
    assert p.head_blocks == 8 and p.splits == 1
    assert lib.plan(lib.Problem(heads=20, rank=64, nope=32, rope=16, v_dim=32, past=50)).head_blocks == 2
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", "simt")
    assert lib.plan(ds, sm_count=H100_SMS).kernel == "simt"


@pytest.mark.parametrize("problem, element_bytes, message", [
    (lib.Problem(), 4, "float32 has no tensor-core path"),
    (lib.Problem(rank=40, rope=12), 2, "R and Dr must be multiples of 8"),
    (lib.Problem(rank=1024), 2, "it allows R <= 512 and R \\+ Dr <= 576"),
    (lib.Problem(rank=512, rope=128), 2, "it allows R <= 512 and R \\+ Dr <= 576"),
], ids=["float32", "unaligned-rows", "rank", "width"])
def test_asking_for_mma_where_it_cannot_run_is_an_error(problem, element_bytes, message, monkeypatch):
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", "mma")
    with pytest.raises(ValueError, match="MultiHeadLatentAttention: ONNXATTN_MLA_CUDA_KERNEL=mma, but the tensor-core "
                                         "kernel cannot run this problem: " + message):
        lib.plan(problem, element_bytes=element_bytes)


def test_an_unknown_kernel_setting_is_an_error(monkeypatch):
    monkeypatch.setenv("ONNXATTN_MLA_CUDA_KERNEL", "tensor")
    with pytest.raises(ValueError, match="ONNXATTN_MLA_CUDA_KERNEL must be auto, simt or mma, got 'tensor'"):
        lib.plan(lib.Problem())
