"""Host-side logic of the CUDA ScaledDotProductAttention: the launch plan (dispatch, tiles, splits, grid,
shared memory, scratch), the key ranges the kernels visit, and the registration (ONNXATTN_DISABLE_CUDA opt-out). Runs without a
GPU: the plan is pure host code exported for tests (csrc/sdpa/cuda_capi.cc)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "gpu"))
import sdpa_cuda_lib as lib  # noqa: E402

FP16, BF16, FP32 = lib.FLOAT16, lib.BFLOAT16, lib.FLOAT32


def spec(**kw) -> lib.Spec:
    return lib.Spec(**kw)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@pytest.fixture(autouse=True)
def _no_forcing(monkeypatch):
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PATH", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_KERNEL", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PREFILL", raising=False)
    monkeypatch.delenv("ONNXATTN_CUDA_PDL", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_COMBINE", raising=False)
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_RESCALE", raising=False)


# ---- the tile geometry the kernels are compiled with (sdpa/cuda_tiles.h), restated as the contract
def prefill_rows(tile: int) -> int:
    return 128 if tile <= 128 else 64


def smem_prefill(tile: int) -> int:
    # Q, K, V tiles (rows padded by 8 elements) and 16 bytes of row facts per query row
    return (prefill_rows(tile) + 2 * 64) * (tile + 8) * 2 + prefill_rows(tile) * 16


def smem_decode(tile: int) -> int:
    stages = 4 if tile <= 64 else 3 if tile <= 128 else 2
    pipe = 4 * stages * 16 * (tile + 8) * 2 * 2
    return 16 * (tile + 8) * 2 + max(pipe, 4 * 16 * tile * 4)


def smem_simt(d: int, dv: int) -> int:
    return (32 * d + 32 * (d + 1) + 32 * dv) * 4


@pytest.mark.parametrize("dtype", [FP16, BF16])
@pytest.mark.parametrize("d,tile", [(32, 64), (64, 64), (80, 128), (128, 128), (192, 256), (256, 256)])
def test_prefill_mma_geometry(monkeypatch, dtype, d, tile):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")  # mma.sync's geometry on the H100 (wgmma by default)
    p = lib.plan(spec(batch=2, q_heads=8, kv_heads=2, q_len=1000, kv_len=1000, head_dim=d, causal=True, dtype=dtype))
    assert (p["schedule"], p["kernel"], p["head_dim_tile"]) == ("prefill", "mma", tile)
    assert p["rows_per_cta"] == prefill_rows(tile) and p["keys_per_tile"] == 64 and p["threads"] == 128
    assert p["rows_per_head"] == 1000 * 4  # rows are (query, head of the GQA group) pairs
    assert p["row_tiles"] == ceil_div(4000, p["rows_per_cta"])
    assert p["grid"] == p["row_tiles"] * 2 * 2 and p["splits"] == 1
    assert p["smem_bytes"] == smem_prefill(tile) and p["scratch_bytes"] == 0 and p["combine_grid"] == 0


def test_dv_differs_from_d_pads_to_the_larger():
    p = lib.plan(spec(q_len=100, kv_len=100, head_dim=64, v_head_dim=200))
    assert p["head_dim_tile"] == 256 and p["kernel"] == "mma"
    p = lib.plan(spec(q_len=100, kv_len=100, head_dim=192, v_head_dim=128))
    assert p["head_dim_tile"] == 256


@pytest.mark.parametrize(
    "kw,reason",
    [
        (dict(dtype=FP32), "float32 has no tensor-core path"),
        (dict(head_dim=33), "not a positive multiple of 8"),
        (dict(head_dim=64, v_head_dim=20), "not a positive multiple of 8"),
    ],
)
def test_simt_fallback_says_why(kw, reason):
    p = lib.plan(spec(q_len=64, kv_len=64, **kw))
    assert p["kernel"] == "simt" and reason in p["reason"]
    assert p["rows_per_cta"] == 32 and p["keys_per_tile"] == 32
    d = kw.get("head_dim", 64)
    assert p["smem_bytes"] == smem_simt(d, kw.get("v_head_dim") or d)


def test_unaligned_pointers_fall_back_to_simt():
    p = lib.plan(spec(q_len=64, kv_len=64), aligned=False)
    assert p["kernel"] == "simt" and "16-byte aligned" in p["reason"]


def test_forcing_mma_on_an_ineligible_problem_is_an_error():
    with pytest.raises(lib.SdpaCudaError, match="ONNXATTN_SDPA_CUDA_KERNEL=mma.*float32 has no tensor-core path"):
        lib.plan(spec(dtype=FP32), kernel="mma")


@pytest.mark.parametrize("d,dv", [(257, 64), (64, 512)])
def test_head_dims_above_256_are_refused_with_the_reason(d, dv):
    with pytest.raises(lib.SdpaCudaError, match=r"head sizes up to 256, got D = %d .* Dv = %d" % (d, dv)):
        lib.plan(spec(head_dim=d, v_head_dim=dv))


def test_shared_memory_over_the_device_limit_is_refused():
    small = dict(sm_count=10, max_smem_per_block=48 * 1024, smem_per_sm=64 * 1024)
    with pytest.raises(lib.SdpaCudaError, match="shared memory"):
        lib.plan(spec(q_len=100, kv_len=100, head_dim=256), device=small)
    assert lib.plan(spec(q_len=100, kv_len=100, head_dim=32), device=small)["smem_bytes"] <= 48 * 1024


def test_invalid_shapes_use_the_shared_validation():
    with pytest.raises(lib.SdpaCudaError, match="must be a multiple of key/value heads"):
        lib.plan(spec(q_heads=6, kv_heads=4))
    with pytest.raises(lib.SdpaCudaError, match="does not broadcast"):
        lib.plan(spec(q_len=3, kv_len=5, mask_kind=1, mask_shape=(3, 4)))


@pytest.mark.parametrize("q_len,expected", [(1, "decode"), (16, "decode"), (17, "prefill"), (4096, "prefill")])
def test_auto_schedule_by_query_length(q_len, expected):
    assert lib.plan(spec(q_len=q_len, kv_len=4096))["schedule"] == expected


def test_environment_forces_the_path(monkeypatch):
    s = spec(q_heads=8, kv_heads=2, q_len=4096, kv_len=4096)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PATH", "decode")
    p = lib.plan(s, path="env")
    assert p["schedule"] == "decode" and "forced by ONNXATTN_SDPA_CUDA_PATH" in p["reason"]
    assert p["rows_per_cta"] == 16 and p["row_tiles"] == ceil_div(4096 * 4, 16)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PATH", "prefill")
    assert lib.plan(spec(q_len=1, kv_len=4096), path="env")["schedule"] == "prefill"
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_KERNEL", "simt")
    assert lib.plan(s, path="env", kernel="env")["kernel"] == "simt"
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PATH", "")
    assert lib.plan(s, path="env", kernel="env")["schedule"] == "prefill"


@pytest.mark.parametrize("name,value", [("ONNXATTN_SDPA_CUDA_PATH", "fast"), ("ONNXATTN_SDPA_CUDA_KERNEL", "wgmma"),
                                        ("ONNXATTN_SDPA_CUDA_PREFILL", "fa3"), ("ONNXATTN_CUDA_PDL", "yes"),
                                        ("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "fast"),
                                        ("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "3"),
                                        ("ONNXATTN_SDPA_CUDA_COMBINE", "1"),
                                        ("ONNXATTN_SDPA_CUDA_DECODE_RESCALE", "always")])  # fmt: skip
def test_unknown_environment_values_are_errors(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(lib.SdpaCudaError, match=f"^ScaledDotProductAttention: environment variable {name} must be "
                                                f".*got '{value}'"):  # fmt: skip
        lib.plan(spec(), path="env", kernel="env")


@pytest.mark.parametrize("name,value", [("ONNXATTN_SDPA_CUDA_PATH", "fast"), ("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "3"),
                                        ("ONNXATTN_SDPA_CUDA_SPLITS", "0")])  # fmt: skip
def test_the_attention_cores_switches_name_the_op_that_read_them(monkeypatch, name, value):
    # GroupQueryAttention and PagedAttention plan their attention core with the same switches
    import gqa_cases
    import gqa_cuda_lib
    import paged_cases
    import paged_cuda_lib

    monkeypatch.setenv(name, value)
    with pytest.raises(gqa_cuda_lib.GqaCudaError, match=f"^GroupQueryAttention: environment variable {name} must be"):
        gqa_cuda_lib.plan(gqa_cases.spec(gqa_cases.CASES_BY_ID["decode-p1000"], "float16"))
    with pytest.raises(paged_cuda_lib.PagedCudaError, match=f"^PagedAttention: environment variable {name} must be"):
        paged_cuda_lib.plan(paged_cases.spec(paged_cases.CASES[0], "float16"))


# ---- the Hopper prefill kernel (ONNXATTN_SDPA_CUDA_PREFILL=wgmma, sdpa/cuda_prefill_wgmma.cuh)
def smem_wgmma(tile: int) -> int:
    # 1024 bytes to align the swizzled tiles, Q + 2 K stages + 2 V stages of 128 x tile 16-bit, row facts
    return 1024 + 5 * 128 * tile * 2 + 128 * 16


@pytest.mark.parametrize("dtype", [FP16, BF16])
@pytest.mark.parametrize("d,dv,tile", [(128, 128, 128), (72, 128, 128), (128, 64, 128), (80, 80, 128), (96, 96, 128),
                                       (128, None, 128), (64, 64, 64), (32, 48, 64), (16, None, 64)])  # fmt: skip
def test_wgmma_prefill_geometry(monkeypatch, dtype, d, dv, tile):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")
    p = lib.plan(spec(batch=2, q_heads=8, kv_heads=2, q_len=1000, kv_len=1000, head_dim=d, v_head_dim=dv, causal=True,
                      dtype=dtype))  # fmt: skip
    assert (p["schedule"], p["kernel"], p["head_dim_tile"]) == ("prefill", "wgmma", tile), p["reason"]
    assert p["rows_per_cta"] == 128 and p["keys_per_tile"] == 128 and p["threads"] == 256
    assert p["row_tiles"] == ceil_div(4000, 128) and p["grid"] == p["row_tiles"] * 2 * 2 and p["splits"] == 1
    assert p["smem_bytes"] == smem_wgmma(tile) <= lib.H100["max_smem_per_block"] and p["scratch_bytes"] == 0
    assert "wgmma (ONNXATTN_SDPA_CUDA_PREFILL)" in p["reason"]


def test_wgmma_is_the_hopper_default(monkeypatch):
    # It passed the H100 run at 93587a9 (tests, memcheck) at 1.3-1.4x mma.sync's TFLOP/s: auto takes it on
    # devices with sm_90a code; ONNXATTN_SDPA_CUDA_PREFILL=mma keeps mma.sync; an A100 has only mma.sync.
    s = spec(q_heads=16, kv_heads=16, q_len=4096, kv_len=4096, head_dim=128, causal=True)
    assert lib.plan(s)["kernel"] == "wgmma"
    assert lib.plan(s, lib.A100)["kernel"] == "mma"
    for value in ("auto", "", "wgmma"):
        monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", value)
        assert lib.plan(s)["kernel"] == "wgmma"
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "mma")
    p = lib.plan(s)
    assert p["kernel"] == "mma" and "mma.sync forced by ONNXATTN_SDPA_CUDA_PREFILL" in p["reason"]
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_PREFILL")
    softcap = lib.plan(spec(q_heads=16, kv_heads=16, q_len=4096, kv_len=4096, head_dim=128, softcap=30.0))
    assert softcap["kernel"] == "mma" and "(not wgmma: softcap, mask or scale <= 0)" in softcap["reason"]


@pytest.mark.parametrize("why,kw,device", [
    ("no sm_90a device and code", {}, lib.A100),
    ("no sm_90a device and code", {}, {**lib.H100, "wgmma": 0}),
    ("max(D, Dv) > 128", dict(head_dim=192), lib.H100),
    ("max(D, Dv) > 128", dict(head_dim=128, v_head_dim=192), lib.H100),
    ("max(D, Dv) > 128", dict(head_dim=256, v_head_dim=64), lib.H100),
    ("softcap, mask or scale <= 0", dict(softcap=30.0), lib.H100),
    ("softcap, mask or scale <= 0", dict(mask_kind=1, mask_shape=(1, 1, 1, 500)), lib.H100),
    ("softcap, mask or scale <= 0", dict(mask_kind=2, mask_shape=(300, 500)), lib.H100),
])  # fmt: skip
def test_wgmma_refusals_fall_back_to_mma_and_say_why(monkeypatch, why, kw, device):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")
    p = lib.plan(spec(q_heads=8, kv_heads=2, q_len=300, kv_len=500, **{"head_dim": 128, **kw}), device)
    assert p["kernel"] == "mma" and p["threads"] == 128, p["reason"]
    assert f"wgmma requested, not eligible: {why}" in p["reason"]
    assert p["smem_bytes"] == smem_prefill(p["head_dim_tile"])


def test_wgmma_serves_tensor_core_prefill_only(monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_PREFILL", "wgmma")
    decode = lib.plan(spec(q_heads=32, kv_heads=8, q_len=1, kv_len=4096, head_dim=128))
    assert (decode["schedule"], decode["kernel"]) == ("decode", "mma")
    assert lib.plan(spec(q_len=300, kv_len=300, head_dim=128, dtype=FP32))["kernel"] == "simt"
    assert lib.plan(spec(q_len=300, kv_len=300, head_dim=128), kernel="simt")["kernel"] == "simt"
    assert lib.plan(spec(q_len=300, kv_len=300, head_dim=128), aligned=False)["kernel"] == "simt"
    # A forced prefill of a short query block still takes it (rows past Sq * G are masked off).
    assert lib.plan(spec(q_len=1, kv_len=4096, head_dim=128), path="prefill")["kernel"] == "wgmma"


# ---- the wgmma kernel's shared-memory layout, read back through its descriptors (sdpa/cuda_wgmma_layout.h)
def swizzle128(addr: int) -> int:
    """The hardware's 128-byte swizzle of a shared-memory byte address: bits 4..6 ^= bits 7..9."""
    return addr ^ (((addr >> 7) & 7) << 4)


def stored_tile(base: int) -> dict:
    """Byte address -> (row, column) of every 16-bit element the kernel's loads store into a tile at `base`."""
    out = {}
    for row in range(128):
        for chunk in range(16):
            at = base + lib.wgmma_layout("offset", 0, row * 16 + chunk)
            for e in range(8):
                out[at + 2 * e] = (row, 8 * chunk + e)
    return out


def decode(desc: int) -> tuple[int, int, int, int]:
    # bits 14-15, 30-31, 46-48, 52-61 are reserved; 49-51 is the base offset, 0 for 1024-aligned atoms
    assert desc & ~((0x3FFF) | (0x3FFF << 16) | (0x3FFF << 32) | (3 << 62)) == 0, hex(desc)
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    layout = desc >> 62
    return start, lbo, sbo, layout


def test_wgmma_tile_layout_is_a_permutation_within_each_swizzle_atom():
    seen = set()
    for row in range(128):
        for chunk in range(16):
            off = lib.wgmma_layout("offset", 0, row * 16 + chunk)
            assert off % 16 == 0 and 0 <= off < 32768 and off not in seen
            # the chunk stays in its row and 64-column half: only its position inside the row is permuted
            assert off // 16384 == chunk // 8 and (off % 16384) // 128 == row
            seen.add(off)
    assert len(seen) == 128 * 16


@pytest.mark.parametrize("base", [0, 5 * 32768 + 1024])
def test_wgmma_descriptors_address_the_stored_elements(base):
    """Each descriptor, decoded by the PTX ISA's canonical 128-byte-swizzled layouts (CUTLASS's GMMA layout
    atoms), must read element (m or n, k) of its operand from where the loads stored it."""
    tile = stored_tile(base)
    # Q as A (K-major, M = 64 rows of warpgroup g) and K as B (K-major, N = 128 keys) of S = Q K^T:
    # element (r, k) at start + (r // 8) * SBO + (r % 8) * 128 + 2 k, swizzled.
    for operand, rows, indices in (("q", 64, [(g, ks) for g in (0, 1) for ks in range(8)]),
                                   ("k", 128, [(0, ks) for ks in range(8)])):  # fmt: skip
        for g, ks in indices:
            start, _, sbo, layout = decode(lib.wgmma_layout(operand, base, g * 8 + ks if operand == "q" else ks))
            assert layout == 1 and sbo == 1024 and start % 16 == 0
            for r in range(rows):
                for k in range(16):
                    addr = swizzle128(start + (r // 8) * sbo + (r % 8) * 128 + 2 * k)
                    assert tile[addr] == (64 * g + r, 16 * ks + k), (operand, g, ks, r, k)
    # V as B of O += P V (MN-major, transposed): element (k, n) of keys 16 kk.. at
    # start + (n // 64) * LBO + (k // 8) * SBO + (k % 8) * 128 + 2 (n % 64), swizzled.
    for kk in range(8):
        start, lbo, sbo, layout = decode(lib.wgmma_layout("v", base, kk))
        assert layout == 1 and (lbo, sbo) == (16384, 1024)
        for k in range(16):
            for n in range(128):
                addr = swizzle128(start + (n // 64) * lbo + (k // 8) * sbo + (k % 8) * 128 + 2 * (n % 64))
                assert tile[addr] == (16 * kk + k, n), (kk, k, n)


# ---- programmatic dependent launches (ONNXATTN_CUDA_PDL=1, cuda_plan.cc rule 8)
def test_programmatic_dependent_launch_is_opt_in_for_tensor_core_decode_on_sm90(monkeypatch):
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    assert lib.plan(decode)["pdl"] == 0
    monkeypatch.setenv("ONNXATTN_CUDA_PDL", "1")
    p = lib.plan(decode)
    assert p["pdl"] == 1 and p["splits"] > 1 and "programmatic dependent launches" in p["reason"]
    assert lib.plan(decode, lib.A100)["pdl"] == 0  # no sm_90a code there
    assert lib.plan(decode, {**lib.H100, "wgmma": 0})["pdl"] == 0
    assert lib.plan(decode, kernel="simt")["pdl"] == 0  # the SIMT kernel has no wait for its predecessor
    assert lib.plan(spec(q_len=1, kv_len=4096, head_dim=128, dtype=FP32))["pdl"] == 0
    assert lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048, head_dim=128))["pdl"] == 0  # prefill
    monkeypatch.setenv("ONNXATTN_CUDA_PDL", "0")
    assert lib.plan(decode)["pdl"] == 0


# ---- split-KV decode
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("kv_len", [4096, 32768, 131072])
def test_decode_plan_llama3_8b(batch, kv_len):
    # Llama-3-8B decode: 32 query heads over 8 KV heads, D = 128; one CTA per (batch, KV head) reads the
    # group's K/V once for its 4 query heads.
    p = lib.plan(spec(batch=batch, q_heads=32, kv_heads=8, q_len=1, kv_len=kv_len, head_dim=128))
    assert (p["schedule"], p["kernel"], p["rows_per_cta"], p["row_tiles"]) == ("decode", "mma", 16, 1)
    ctas = batch * 8
    key_tiles = ceil_div(kv_len, 64)
    assert p["splits"] == lib.choose_splits(ctas, key_tiles, 2 * 132, 4, 256)
    assert p["grid"] == ctas * p["splits"]
    assert 1 <= p["splits"] <= key_tiles // 4
    # Enough CTAs for most of the device, without a cap on Skv: each split just covers more keys.
    assert p["grid"] >= min(0.8 * 264, ctas * (key_tiles // 4))
    assert p["smem_bytes"] == smem_decode(128) and p["stages"] == 3
    out_rows = batch * 32
    if p["splits"] > 1:
        lse_at = ceil_div(p["splits"] * out_rows * 128 * 4, 256) * 256
        assert p["partial_lse_offset"] == lse_at
        assert p["scratch_bytes"] == lse_at + ceil_div(p["splits"] * out_rows * 4, 256) * 256
        assert p["combine_grid"] == ceil_div(out_rows, 4)


def test_decode_splits_follow_the_window_not_the_cache():
    full = lib.plan(spec(q_heads=8, kv_heads=8, q_len=1, kv_len=1 << 20, head_dim=128))
    windowed = lib.plan(spec(q_heads=8, kv_heads=8, q_len=1, kv_len=1 << 20, head_dim=128, window=512))
    assert windowed["splits"] <= 512 // 256 < full["splits"]


def test_the_environment_can_force_the_split_count(monkeypatch):
    # For benchmarks that sweep the rule: B=1, 32k keys plans 32 splits (33 fill the 264 slots, evened to 16 key
    # tiles each); the sweep forces others.
    llama = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    assert lib.plan(llama)["splits"] == 32
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", "33")
    p = lib.plan(llama)
    assert p["splits"] == 33 and p["grid"] == 8 * 33 and "ONNXATTN_SDPA_CUDA_SPLITS" in p["reason"]
    assert lib.plan(spec(q_len=1, kv_len=100))["splits"] == 2  # at most one split per key tile
    for bad in ("0", "257", "many", "4 ", "1e2", "-3", "99999999999999999999"):
        monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", bad)
        with pytest.raises(lib.SdpaCudaError, match=rf"ONNXATTN_SDPA_CUDA_SPLITS must be an integer in \[1, 256\], got '{bad}'"):
            lib.plan(llama)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", "")  # empty is unset: the plan's choice
    assert lib.plan(llama)["splits"] == 32


def test_decode_of_an_empty_cache_uses_one_split():
    p = lib.plan(spec(q_len=1, kv_len=0))
    assert p["splits"] == 1 and p["scratch_bytes"] == 0


def test_large_cache_plans_without_overflow():
    # 64-bit sizes: 2^26 keys x 128 dims per head is far past 2^31 elements.
    p = lib.plan(spec(batch=2, q_heads=64, kv_heads=8, q_len=1, kv_len=1 << 26, head_dim=128))
    assert p["schedule"] == "decode" and p["splits"] >= 1 and p["grid"] == 16 * p["splits"]


def test_key_counts_past_32_bits_are_refused():
    # Key indices are 32-bit inside the kernels (element offsets are 64-bit); 2^31 keys of one head would
    # need 512 GiB of K at D = 128 fp16, so this only guards the arithmetic.
    with pytest.raises(lib.SdpaCudaError, match="index keys with 32 bits"):
        lib.plan(spec(q_len=1, kv_len=1 << 31))
    assert lib.plan(spec(q_len=1, kv_len=(1 << 31) - 2048))["splits"] > 1


def test_no_rows_means_an_empty_grid():
    assert lib.plan(spec(batch=0, q_len=5, kv_len=5))["grid"] == 0
    assert lib.plan(spec(q_len=0, kv_len=5))["grid"] == 0


def efficiency(ctas: int, splits: int, slots: int) -> float:
    waves = ctas * splits / slots
    return waves / math.ceil(waves)


@pytest.mark.parametrize("ctas", [1, 3, 8, 33, 100, 128, 200, 263, 264, 500, 4096])
@pytest.mark.parametrize("key_tiles", [0, 1, 2, 7, 64, 512, 1 << 20])
@pytest.mark.parametrize("slots", [108, 264])
def test_choose_splits_properties(ctas, key_tiles, slots):
    s = lib.choose_splits(ctas, key_tiles, slots, 4, 256)
    limit = max(1, min(256, key_tiles // 4))
    assert 1 <= s <= limit
    if key_tiles > 1:
        # No split is left empty: the tiles per split, spread evenly, give back this count.
        assert ceil_div(key_tiles, ceil_div(key_tiles, s)) == s
        evened = lambda n: ceil_div(key_tiles, ceil_div(key_tiles, n))  # noqa: E731
        if ctas * limit <= slots:  # below one wave: every split adds bandwidth
            assert s == evened(limit)
            return
        fill = min(limit, slots // ctas)
        if fill > 1 and ctas * fill >= 0.85 * slots:  # one wave with room: the most splits it holds
            assert s == evened(fill)
            return
        best = max(efficiency(ctas, n, slots) for n in range(1, limit + 1))
        # Evening out only ever lowers the count, so the chosen count's efficiency is judged before it.
        first_good = min(n for n in range(1, limit + 1) if efficiency(ctas, n, slots) >= 0.85 * best)
        assert s == evened(first_good)
    if ctas >= slots:
        assert s == 1 or efficiency(ctas, 1, slots) < 0.85


def test_choose_splits_degenerate_inputs():
    assert lib.choose_splits(0, 100, 264, 4, 256) == 1
    assert lib.choose_splits(8, 100, 0, 4, 256) == 1
    assert lib.choose_splits(8, 1000, 264, 4, 3) == 3


# ---- the key ranges the kernels visit (sdpa/cuda_ranges.h) against brute force
def visible(causal, window, band, q_len, kv_len, i, chunk=0):
    p = i + kv_len - q_len  # Python's // floors, as the chunk rule does for p < 0 (more queries than keys)
    return {j for j in range(kv_len) if (not causal or j <= p) and (window <= 0 or j > p - window)
            and (band <= 0 or abs(p - j) <= band) and (chunk <= 0 or j // chunk == p // chunk)}


CONFIGS = [
    (causal, window, band, chunk, q_len, kv_len)
    for causal, window, band, chunk in [(0, 0, 0, 0), (1, 0, 0, 0), (1, 5, 0, 0), (0, 7, 0, 0), (0, 0, 3, 0),
                                        (1, 0, 4, 0), (1, 3, 2, 0), (1, 0, 0, 4), (0, 0, 0, 5), (1, 3, 0, 8),
                                        (1, 0, 0, 1), (1, 0, 0, 2**62)]
    for q_len, kv_len in [(1, 1), (1, 37), (9, 9), (9, 40), (20, 6), (33, 33)]
]


@pytest.mark.parametrize("causal,window,band,chunk,q_len,kv_len", CONFIGS)
@pytest.mark.parametrize("group", [1, 3])
def test_tile_keys_bound_every_row(causal, window, band, chunk, q_len, kv_len, group):
    rows = q_len * group
    for tile in (1, 4, 16):
        for begin in range(0, rows, tile):
            end = min(begin + tile, rows)
            (a0, a1), (l0, l1) = lib.tile_keys(causal, window, band, q_len, kv_len, begin, end, group, chunk=chunk)
            sets = [visible(causal, window, band, q_len, kv_len, r // group, chunk) for r in range(begin, end)]
            union = set().union(*sets)
            inter = set.intersection(*sets)
            # `any` is exactly the union when it is contiguous (it always is: bounds are monotone).
            assert union == set(range(a0, a1)) or (not union and a0 >= a1)
            assert set(range(l0, l1)) == inter or (not inter and l0 >= l1)


@pytest.mark.parametrize("begin,end", [(0, 0), (0, 1), (5, 5), (3, 1000), (100, 131172)])
@pytest.mark.parametrize("splits", [1, 2, 7, 64])
@pytest.mark.parametrize("granule", [16, 32])
def test_split_keys_partition_the_range(begin, end, splits, granule):
    parts = [lib.split_keys(begin, end, s, splits, granule) for s in range(splits)]
    covered = []
    for b, e in parts:
        assert begin <= b <= e <= max(begin, end)
        assert (b - begin) % granule == 0 or b == end
        covered.extend(range(b, e))
    assert covered == list(range(begin, end))


def test_library_reports_cuda_consistently():
    import ctypes

    cdll = lib.load()
    cdll.OnnxAttnBuildInfo.restype = ctypes.c_char_p
    built_with_cuda = "cuda=" in cdll.OnnxAttnBuildInfo().decode()
    assert lib.has_cuda() == built_with_cuda


# ---- registration: the ONNXATTN_DISABLE_CUDA opt-out must not disturb CPU sessions either way
MODEL_SCRIPT = textwrap.dedent(
    """
    import numpy as np, onnx, onnxruntime as ort
    from onnx import TensorProto, helper
    node = helper.make_node("ScaledDotProductAttention", ["Q", "K", "V"], ["Y"], domain="onnxattn",
                            causal=1, window=0, band=0, scale=0.0, softcap=0.0)
    t = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
    graph = helper.make_graph([node], "g", [t("Q", [1, 2, 3, 8]), t("K", [1, 1, 5, 8]), t("V", [1, 1, 5, 8])],
                              [t("Y", [1, 2, 3, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxattn", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.register_custom_ops_library(LIBRARY)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ([1, 2, 3, 8], [1, 1, 5, 8], [1, 1, 5, 8]))
    y = sess.run(None, {"Q": q, "K": k, "V": v})[0]
    s = np.einsum("bhid,bjd->bhij", q, k[:, 0]) / np.sqrt(8)
    s = np.where(np.arange(5)[None, :] <= np.arange(3)[:, None] + 2, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(y, np.einsum("bhij,bjd->bhid", p, v[:, 0]), rtol=1e-5, atol=1e-5)
    print("ok")
    """
)


@pytest.mark.parametrize("flag", [None, "1"])
def test_cpu_session_works_with_and_without_the_cuda_opt_out(flag):
    pytest.importorskip("onnxruntime")
    env = {k: v for k, v in os.environ.items() if k != "ONNXATTN_DISABLE_CUDA"}
    if flag is not None:
        env["ONNXATTN_DISABLE_CUDA"] = flag
    script = f"LIBRARY = {lib.library_path()!r}\n" + MODEL_SCRIPT
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_every_config_combination_plans():
    # Every dtype x path x kernel request either plans consistently or is refused with a message.
    for dtype, path, kernel, (q_len, kv_len) in itertools.product(
        (FP16, BF16, FP32), ("auto", "prefill", "decode"), ("auto", "mma", "simt"), ((1, 1), (7, 300), (300, 7))
    ):
        s = spec(batch=2, q_heads=6, kv_heads=2, q_len=q_len, kv_len=kv_len, head_dim=64, dtype=dtype)
        try:
            p = lib.plan(s, path=path, kernel=kernel)
        except lib.SdpaCudaError as e:
            assert kernel == "mma" and dtype == FP32, str(e)
            continue
        assert p["grid"] == p["row_tiles"] * 2 * 2 * p["splits"]
        assert p["row_tiles"] == ceil_div(q_len * 3, p["rows_per_cta"])
        if path != "auto":
            assert p["schedule"] == path
        if p["schedule"] == "prefill":
            assert p["splits"] == 1


# ---- layouts of fused ops: strided views and per-batch lengths (sdpa/cuda_plan.cc rule 5)
def test_strided_views_plan_like_contiguous_ones():
    # [B, S, H*D] activations seen as [B, H, S, D]: same kernels and geometry as the contiguous layout.
    s = spec(batch=2, q_heads=8, kv_heads=2, q_len=300, kv_len=300, head_dim=128, causal=True)
    layout = lib.Layout.of(q=(300 * 8 * 128, 128, 8 * 128), y=(300 * 8 * 128, 128, 8 * 128))
    assert lib.plan(s, layout=layout) == lib.plan(s)


def test_negative_strides_are_refused():
    with pytest.raises(lib.SdpaCudaError, match=r"non-negative strides; K has strides \(batch -1"):
        lib.plan(spec(q_len=4, kv_len=4), layout=lib.Layout.of(k=(-1, 64, 64)))


@pytest.mark.parametrize("kv_len", [4096, 32768, 65536])
def test_per_batch_lengths_split_for_the_whole_view(kv_len):
    # A shared KV-cache buffer: the valid lengths are on the device, so the split count is chosen for the
    # whole buffer (an upper bound) and each sequence splits its own keys, >= 256 per split.
    s = spec(batch=1, q_heads=32, kv_heads=8, q_len=1, kv_len=kv_len, head_dim=128)
    uniform = lib.plan(s)
    per_batch = lib.plan(s, layout=lib.Layout.of(per_batch_lengths=True))
    assert uniform["min_split_keys"] == 0 and per_batch["min_split_keys"] == 256
    assert per_batch["splits"] == lib.choose_splits(8, ceil_div(kv_len, 64), 264, 4, 256) == uniform["splits"]
    assert "per-batch lengths" in per_batch["reason"]


def test_per_batch_lengths_bound_splits_by_a_causal_window():
    # Unknown query offsets: any window + Sq - 1 consecutive keys may be the visible ones.
    s = spec(batch=1, q_heads=8, kv_heads=8, q_len=1, kv_len=1 << 20, head_dim=128, causal=True, window=512)
    p = lib.plan(s, layout=lib.Layout.of(per_batch_lengths=True))
    assert p["splits"] <= 512 // 256
    bidirectional = lib.plan(dataclasses.replace(s, causal=False), layout=lib.Layout.of(per_batch_lengths=True))
    assert bidirectional["splits"] > p["splits"]  # without causality the window bounds nothing above


@pytest.mark.parametrize("length", [0, 1, 100, 256, 257, 1000, 4096, 100_000])
@pytest.mark.parametrize("splits", [1, 8, 33])
def test_split_floor_uses_fewer_splits_for_short_sequences(length, splits):
    # What a decode CTA computes on the device for its sequence's keys [begin, begin + length).
    begin, granule, floor = 7, 16, 256
    parts = [lib.split_keys(begin, begin + length, s, splits, granule, floor) for s in range(splits)]
    covered = [j for b, e in parts for j in range(b, e)]
    assert covered == list(range(begin, begin + length))
    used = [e > b for b, e in parts]
    assert used == sorted(used, reverse=True)  # the empty splits are the trailing ones
    assert sum(used) <= max(1, ceil_div(length, floor))
    if length > 0:
        assert all(e - b >= min(floor, length) for b, e in parts[: sum(used) - 1])
    # Without a floor: the plain split of the SDPA path, unchanged.
    assert [lib.split_keys(begin, begin + length, s, splits, granule) for s in range(splits)] == [
        lib.split_keys(begin, begin + length, s, splits, granule, 0) for s in range(splits)
    ]


# ---- direct K/V loads in the tensor-core decode (the default; ONNXATTN_SDPA_CUDA_DECODE_LOADS=lookup, rule 9)
LOOKUP = ", K/V loads by slot lookup (ONNXATTN_SDPA_CUDA_DECODE_LOADS)"


def test_direct_decode_loads_are_the_default_for_contiguous_tensor_core_decode(monkeypatch):
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    base = lib.plan(decode)
    assert base["reason"].endswith(", direct K/V loads"), base["reason"]
    for head_dim in (32, 64, 256):  # every head tile
        assert "direct K/V loads" in lib.plan(spec(q_len=1, kv_len=4096, head_dim=head_dim))["reason"]
    # not where it does not apply: the SIMT kernel (float32 too), prefill (nor paged K/V: Params::block_size > 0)
    assert "direct K/V loads" not in lib.plan(decode, kernel="simt")["reason"]
    assert "direct K/V loads" not in lib.plan(spec(q_len=1, kv_len=4096, head_dim=128, dtype=FP32))["reason"]
    assert "K/V loads" not in lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048,
                                            head_dim=128))["reason"]  # fmt: skip
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "direct")
    assert lib.plan(decode) == base
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "auto")
    assert lib.plan(decode) == base
    # the slot lookup (the paged kernel's loads) on request: the same launch, told why
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup")
    p = lib.plan(decode)
    assert p["reason"] == base["reason"].removesuffix(", direct K/V loads") + LOOKUP
    assert {k: v for k, v in p.items() if k != "reason"} == {k: v for k, v in base.items() if k != "reason"}
    assert "K/V loads" not in lib.plan(decode, kernel="simt")["reason"]


# ---- devices with 99 KiB of shared memory per block (sm_86 / sm_89: A10, L4, RTX 30 and 40; cuda_plan.cc rule 11)
SM86 = lib.SM86


@pytest.mark.parametrize("loads", ["lookup", "direct"])
def test_decode_of_head_tiles_of_128_takes_two_stages_where_three_do_not_fit(monkeypatch, loads):
    """Three stages a warp need 108,800 bytes, two 73,984 (rule 10's kernel): with either loads, the same steps."""
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", loads)
    for head_dim, v_head_dim in ((128, 128), (80, 80), (64, 128)):
        decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=head_dim, v_head_dim=v_head_dim)
        p = lib.plan(decode, SM86)
        assert (p["kernel"], p["head_dim_tile"], p["stages"]) == ("mma", 128, 2), p["reason"]
        assert p["smem_bytes"] == 73984 < SM86["max_smem_per_block"] < smem_decode(128)
        assert p["reason"].endswith(", two stages a warp (three need 108800 bytes of shared memory; this device "
                                    "allows 101376 per block)")
        # one CTA an SM (102,400 bytes): the splits of 58 slots
        assert p["splits"] == lib.choose_splits(8, ceil_div(32768, 64), 58, 4, 256)
        assert lib.plan(decode)["stages"] == 3  # the H100 keeps three
    # head tiles of 64 fit with their four stages; Sq = 16 rows too
    assert lib.plan(spec(q_len=1, kv_len=4096, head_dim=64), SM86)["stages"] == 4
    assert lib.plan(spec(q_heads=16, q_len=1, kv_len=4096, head_dim=128), SM86)["stages"] == 2


@pytest.mark.parametrize("q_len,needs", [(1, 143616), (100, 102400)])
def test_mma_launches_that_do_not_fit_the_device_fall_back_to_simt(monkeypatch, q_len, needs):
    """D = 256: the mma decode (143,616 bytes) and prefill (102,400) exceed 101,376 bytes; the simt kernel (98,432)
    runs the problem and the plan says why; with ONNXATTN_SDPA_CUDA_KERNEL=mma it is an error naming the op."""
    problem = spec(q_heads=8, kv_heads=2, q_len=q_len, kv_len=4096, head_dim=256)
    p = lib.plan(problem, SM86)
    assert p["kernel"] == "simt" and p["smem_bytes"] == smem_simt(256, 256) == 98432
    assert (p["rows_per_cta"], p["keys_per_tile"], p["head_dim_tile"], p["stages"]) == (32, 32, 0, 1)
    assert (f" -> simt (the mma kernel needs {needs} bytes of shared memory; this device allows 101376 per "
            "block)") in p["reason"]
    assert lib.plan(problem)["kernel"] == "mma"  # the H100 runs it on tensor cores
    with pytest.raises(lib.SdpaCudaError, match=f"ScaledDotProductAttention: the mma .* kernel needs {needs} bytes"):
        lib.plan(problem, SM86, kernel="mma")
    # a device too small for the simt kernel as well: refused, naming what it needs
    tiny = dict(SM86, max_smem_per_block=64 * 1024)
    with pytest.raises(lib.SdpaCudaError, match="the simt .* kernel needs 98432 bytes of shared memory for D = 256"):
        lib.plan(problem, tiny)


# ---- the lean decode (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 with direct loads, cuda_plan.cc rule 10)
LEAN = ", two stages a warp, up to 3 CTAs an SM (ONNXATTN_SDPA_CUDA_DECODE_STAGES)"
NOT_LEAN = (", not two stages (ONNXATTN_SDPA_CUDA_DECODE_STAGES=2 needs direct loads over contiguous K/V and a head "
            "tile of 128)")


def test_lean_decode_keeps_two_stages_so_three_ctas_fit_an_sm(monkeypatch):
    """Head tiles of 128: two stages a warp (16 rows of Q, then 4 warps x 2 stages x K and V of 16 keys, rows padded
    to 136 elements), so three CTAs (with the 1 KiB the plan reserves each) fit the H100's 228 KiB an SM, and the
    split rule counts 3 x 132 slots."""
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    direct = lib.plan(decode)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")
    lean = lib.plan(decode)
    assert direct["stages"] == 3 and direct["smem_bytes"] == smem_decode(128) == 16 * 136 * 2 + 4 * 3 * 16 * 136 * 4
    assert lean["stages"] == 2 and lean["smem_bytes"] == 16 * 136 * 2 + 4 * 2 * 16 * 136 * 4 == 73984
    assert 3 * (lean["smem_bytes"] + 1024) <= lib.H100["smem_per_sm"] < 3 * (direct["smem_bytes"] + 1024)
    key_tiles = ceil_div(32768, 64)
    assert lean["splits"] == lib.choose_splits(8, key_tiles, 3 * 132, 4, 256) > direct["splits"]
    assert direct["splits"] == lib.choose_splits(8, key_tiles, 2 * 132, 4, 256)
    assert lean["grid"] == 8 * lean["splits"] and lean["reason"].endswith(", direct K/V loads" + LEAN)
    # the A100's 164 KiB an SM hold two: the splits of two slots an SM, still two stages
    a100 = lib.plan(decode, lib.A100)
    assert a100["stages"] == 2 and a100["splits"] == lib.choose_splits(8, key_tiles, 2 * 108, 4, 256)
    # a forced split count is kept: then every warp takes the same steps as with three stages (the same bits)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_SPLITS", "24")
    assert lib.plan(decode)["splits"] == 24


def test_lean_decode_needs_direct_loads_and_a_head_tile_of_128(monkeypatch):
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup")
    base = lib.plan(decode)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")
    alone = lib.plan(decode)  # with the slot lookup: the default kernel, told why
    assert alone["reason"] == base["reason"] + NOT_LEAN
    assert {k: v for k, v in alone.items() if k != "reason"} == {k: v for k, v in base.items() if k != "reason"}
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS")
    for head_dim in (64, 256):  # other head tiles keep their stages
        p = lib.plan(spec(q_len=1, kv_len=4096, head_dim=head_dim))
        assert p["stages"] == (4 if head_dim == 64 else 2) and p["reason"].endswith(NOT_LEAN)
    # not where there is no tensor-core decode: the SIMT kernel, prefill
    assert "stages" not in lib.plan(decode, kernel="simt")["reason"]
    prefill = lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048, head_dim=128))
    assert "ONNXATTN_SDPA_CUDA_DECODE_STAGES" not in prefill["reason"]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "auto")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup")
    assert lib.plan(decode) == base


# ---- the fused merge (ONNXATTN_SDPA_CUDA_COMBINE=fused, cuda_plan.cc rule 12)
FUSED = ", splits merged by each row tile's last CTA (ONNXATTN_SDPA_CUDA_COMBINE)"
NOT_FUSED = (", splits merged by the combine kernel (ONNXATTN_SDPA_CUDA_COMBINE=fused needs the tensor-core decode at "
             "its default stages)")


def without(plan: dict, *names: str) -> dict:
    return {k: v for k, v in plan.items() if k not in names}


@pytest.mark.parametrize("batch,q_len,kv_len", [(1, 1, 32768), (16, 1, 4096), (3, 1, 131072), (2, 16, 20000)])
def test_fused_merge_has_a_counter_per_row_tile_after_the_partials(monkeypatch, batch, q_len, kv_len):
    """The same launch as the combine kernel's; scratch grows by one uint32 counter per row tile (grid / splits),
    256-aligned after the partial LSE, and no combine kernel runs."""
    decode = spec(batch=batch, q_heads=32, kv_heads=8, q_len=q_len, kv_len=kv_len, head_dim=128)
    kernel = lib.plan(decode)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    fused = lib.plan(decode)
    tiles = batch * 8 * ceil_div(q_len * 4, 16)
    assert kernel["splits"] > 1 and kernel["combine_grid"] > 0 and kernel["split_counters"] == 0
    assert fused["reason"] == kernel["reason"] + FUSED
    assert fused["split_counters"] == fused["grid"] // fused["splits"] == tiles
    assert fused["split_counters_offset"] == kernel["scratch_bytes"] and kernel["scratch_bytes"] % 256 == 0
    assert fused["scratch_bytes"] == kernel["scratch_bytes"] + ceil_div(4 * tiles, 256) * 256
    assert fused["combine_grid"] == 0
    changed = ("reason", "combine_grid", "split_counters", "split_counters_offset", "scratch_bytes")
    assert without(fused, *changed) == without(kernel, *changed)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "kernel")
    assert lib.plan(decode) == kernel


def test_fused_merge_only_where_the_tensor_core_decode_splits(monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    simt = lib.plan(decode, kernel="simt")  # the SIMT decode keeps the combine kernel, and says so
    assert simt["splits"] > 1 and simt["split_counters"] == 0 and simt["combine_grid"] > 0
    assert simt["reason"].endswith(NOT_FUSED)
    fp32 = lib.plan(dataclasses.replace(decode, dtype=FP32))
    assert fp32["kernel"] == "simt" and fp32["split_counters"] == 0 and fp32["reason"].endswith(NOT_FUSED)
    # the two-stage decode (rule 10 by request, rule 11 on a device with 99 KiB a block) has no fused kernel
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")
    lean = lib.plan(decode)
    assert lean["stages"] == 2 and lean["split_counters"] == 0 and NOT_FUSED in lean["reason"], lean["reason"]
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES")
    small = lib.plan(decode, dict(lib.H100, max_smem_per_block=101376))
    assert small["stages"] == 2 and small["split_counters"] == 0 and NOT_FUSED in small["reason"], small["reason"]
    for head_dim in (64, 256):  # the other head tiles at their default stages
        assert lib.plan(spec(q_len=1, kv_len=32768, head_dim=head_dim))["reason"].endswith(FUSED)
    one = lib.plan(spec(q_heads=32, kv_heads=8, q_len=1, kv_len=256, head_dim=128))  # one split: nothing to merge
    assert one["splits"] == 1 and one["split_counters"] == one["scratch_bytes"] == 0 and "COMBINE" not in one["reason"]
    prefill = lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048, head_dim=128))
    assert prefill["split_counters"] == 0 and "COMBINE" not in prefill["reason"]


def test_fused_merge_counts_per_batch_decodes_by_the_bound(monkeypatch):
    # a shared KV-cache buffer (rule 5): the split count is an upper bound; CTAs without keys count themselves in too
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "fused")
    p = lib.plan(spec(batch=4, q_heads=32, kv_heads=8, q_len=1, kv_len=65536, head_dim=128),
                 layout=lib.Layout.of(per_batch_lengths=True))
    assert p["min_split_keys"] == 256 and p["split_counters"] == 4 * 8 and p["reason"].endswith(FUSED), p["reason"]



# ---- the combine kernel by columns (ONNXATTN_SDPA_CUDA_COMBINE=columns, cuda_plan.cc rule 13)
COLUMNS = ", splits merged by the combine kernel by columns (ONNXATTN_SDPA_CUDA_COMBINE)"


@pytest.mark.parametrize("batch,q_len,kv_len,head_dim,v_head_dim,kernel",
                         [(1, 1, 32768, 128, 128, "auto"), (16, 1, 4096, 128, 128, "auto"),
                          (2, 16, 20000, 64, 64, "auto"), (1, 1, 32768, 256, 256, "auto"),
                          (1, 1, 65536, 40, 40, "simt"), (1, 3, 9000, 24, 0, "simt"),
                          (1, 1, 32768, 128, 128, "simt")])  # fmt: skip
def test_columns_combine_takes_a_warp_per_32_columns_of_a_row(monkeypatch, batch, q_len, kv_len, head_dim,
                                                              v_head_dim, kernel):
    """The same decode launch and scratch as the row combine; only the combine grid grows, to one warp per 32
    columns of each partial row (Dv = 0: one a row, for its log-sum-exp), 4 warps a CTA. Any decode kernel."""
    decode = spec(batch=batch, q_heads=32, kv_heads=8, q_len=q_len, kv_len=kv_len, head_dim=head_dim,
                  v_head_dim=v_head_dim)
    rows = lib.plan(decode, kernel=kernel)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "columns")
    columns = lib.plan(decode, kernel=kernel)
    out_rows = batch * 32 * q_len
    assert rows["splits"] > 1 and rows["combine_grid"] == ceil_div(out_rows, 4), rows["reason"]
    assert columns["reason"] == rows["reason"] + COLUMNS
    assert columns["combine_grid"] == ceil_div(out_rows * max(1, ceil_div(v_head_dim, 32)), 4)
    assert without(columns, "reason", "combine_grid") == without(rows, "reason", "combine_grid")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "kernel")
    assert lib.plan(decode, kernel=kernel) == rows


def test_columns_combine_only_where_splits_are_merged(monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "columns")
    one = lib.plan(spec(q_heads=32, kv_heads=8, q_len=1, kv_len=256, head_dim=128))  # one split: nothing to merge
    assert one["splits"] == 1 and one["combine_grid"] == 0 and "COMBINE" not in one["reason"]
    prefill = lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048, head_dim=128))
    assert prefill["combine_grid"] == 0 and "COMBINE" not in prefill["reason"]


# ---- the lazy rescale (ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy, cuda_plan.cc rule 14)
LAZY = ", O rescaled only where a row's max moved (ONNXATTN_SDPA_CUDA_DECODE_RESCALE)"
NOT_LAZY = (", O rescaled every step (ONNXATTN_SDPA_CUDA_DECODE_RESCALE=lazy needs the tensor-core decode at its "
            "default stages)")


@pytest.mark.parametrize("batch,q_len,kv_len,head_dim", [(1, 1, 32768, 128), (16, 1, 4096, 128), (2, 16, 20000, 64),
                                                         (1, 1, 32768, 256), (3, 1, 200, 128)])  # fmt: skip
def test_lazy_rescale_is_the_same_launch_with_the_lean_step_kernels(monkeypatch, batch, q_len, kv_len, head_dim):
    """Only the kernel changes (the fused merge's, without the merge): the same grid, splits, shared memory, scratch
    and combine, with or without several splits; the plan says so."""
    decode = spec(batch=batch, q_heads=32, kv_heads=8, q_len=q_len, kv_len=kv_len, head_dim=head_dim)
    every = lib.plan(decode)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_RESCALE", "lazy")
    lazy = lib.plan(decode)
    assert every["schedule"] == "decode" and every["kernel"] == "mma", every["reason"]
    assert lazy["reason"] == every["reason"].replace(", direct K/V loads", ", direct K/V loads" + LAZY)
    assert without(lazy, "reason") == without(every, "reason")
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_COMBINE", "columns")  # beside the combine by columns: both say so
    both = lib.plan(decode)
    assert LAZY in both["reason"] and (COLUMNS in both["reason"]) == (every["splits"] > 1), both["reason"]


def test_lazy_rescale_only_on_the_tensor_core_decode_at_its_default_stages(monkeypatch):
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_RESCALE", "lazy")
    decode = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    simt = lib.plan(decode, kernel="simt")
    assert simt["reason"].endswith(NOT_LAZY), simt["reason"]
    fp32 = lib.plan(dataclasses.replace(decode, dtype=FP32))
    assert fp32["kernel"] == "simt" and fp32["reason"].endswith(NOT_LAZY), fp32["reason"]
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES", "2")  # the two-stage decode has no lean-step kernel
    assert NOT_LAZY in lib.plan(decode)["reason"]
    monkeypatch.delenv("ONNXATTN_SDPA_CUDA_DECODE_STAGES")
    small = lib.plan(decode, dict(lib.H100, max_smem_per_block=101376))  # rule 11's two stages
    assert small["stages"] == 2 and NOT_LAZY in small["reason"], small["reason"]
    lookup = spec(q_heads=32, kv_heads=8, q_len=1, kv_len=32768, head_dim=128)
    monkeypatch.setenv("ONNXATTN_SDPA_CUDA_DECODE_LOADS", "lookup")  # either loads
    assert lib.plan(lookup)["reason"].endswith(LAZY)
    prefill = lib.plan(spec(q_heads=8, kv_heads=2, q_len=2048, kv_len=2048, head_dim=128))
    assert "RESCALE" not in prefill["reason"]
