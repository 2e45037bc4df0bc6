"""Host-side plan of the CUDA LightningIndexer (csrc/indexer/cuda_plan.h): query tiles of 16 rows that never span
two sequences, waves of tiles whose float32 score rows fit the 256 MiB scratch budget (so a long prompt never needs
its [S, T] scores at once), the score kernel (tensor cores for 16-bit inputs with D % 8 == 0 whose tiles fit the
shared memory, CUDA cores otherwise or when asked), its instance (D padded to 32, 64 or 128) and shared memory, and
clear errors for shapes the kernels cannot run. Runs without a GPU through the library's C test entry."""

from __future__ import annotations

import ctypes

import pytest

from onnxattn.cuda_ep import library_path

FIELDS = ("tiles_per_row", "tiles", "tiles_per_wave", "key_tiles", "width", "score_smem", "scratch_bytes",
          "score_kernel", "mma_heads")
CUDA_CORES, TENSOR_CORES = 0, 1
BUDGET = 256 << 20


def plan(batch=1, seq=1, total=4096, heads=64, head_dim=128, top_k=2048, element_bytes=4, tensor_cores=True):
    lib = ctypes.CDLL(library_path())
    entry = lib.OnnxAttnIndexerCudaPlan
    entry.restype = ctypes.c_char_p
    entry.argtypes = [ctypes.c_int64] * 8 + [ctypes.POINTER(ctypes.c_int64)]
    out = (ctypes.c_int64 * len(FIELDS))()
    error = entry(batch, seq, total, heads, head_dim, top_k, element_bytes, int(tensor_cores), out)
    if error:
        raise ValueError(error.decode())
    return dict(zip(FIELDS, out))


def test_decode_is_one_wave_of_one_tile_per_sequence():
    # DeepSeek-V3.2 decode: 64 heads of 128 over a 128k cache; one key tile of 128 keys per block
    p = plan(batch=4, seq=1, total=131072)
    assert p["tiles_per_row"] == 1 and p["tiles"] == 4 and p["tiles_per_wave"] == 4
    assert p["key_tiles"] == 1024 and p["width"] == 128
    assert p["score_smem"] == 4 * 64 * 129  # one query's heads [H][128] and its weights [H]
    assert p["scratch_bytes"] == 4 * 16 * 131072 * 4  # the wave's tiles' score rows


def test_long_prompt_runs_in_waves_within_the_budget():
    p = plan(batch=1, seq=131072, total=131072)
    tile_bytes = 16 * 131072 * 4
    assert p["tiles"] == 8192 and p["tiles_per_wave"] == BUDGET // tile_bytes == 32
    assert p["scratch_bytes"] == 32 * tile_bytes <= BUDGET
    # a 4k prompt fits in one wave
    q = plan(batch=2, seq=4096, total=4096)
    assert q["tiles"] == 512 and q["tiles_per_wave"] == 512 and q["scratch_bytes"] == 512 * 16 * 4096 * 4


def test_tiles_never_span_two_sequences():
    # S = 17: two tiles per sequence (16 + 1 rows); the tile count rounds up per sequence, not over B * S
    p = plan(batch=3, seq=17, total=40)
    assert p["tiles_per_row"] == 2 and p["tiles"] == 6


def test_waves_fit_the_launch_grid():
    # tiny rows would fit 2^20 tiles in the budget; a wave is at most 65535 tiles (the grid's y limit)
    p = plan(batch=70000, seq=16, total=16, heads=1, head_dim=8, top_k=4)
    assert p["tiles"] == 70000 and p["tiles_per_wave"] == 65535


@pytest.mark.parametrize("head_dim,width", [(1, 32), (8, 32), (32, 32), (33, 64), (64, 64), (96, 128), (128, 128)])
def test_head_dim_picks_the_kernel_width(head_dim, width):
    assert plan(head_dim=head_dim, heads=4)["width"] == width


def test_unsupported_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"LightningIndexer: input 'key' has D = 192; the CUDA kernel takes D <= 128"):
        plan(head_dim=192)
    with pytest.raises(ValueError, match=r"LightningIndexer: attribute 'num_heads' \(256\) times D \(128\)"):
        plan(heads=256)
    assert plan(heads=128)["score_smem"] == 4 * 128 * 129  # DeepSeek-size heads x 2 still fits


def mma_smem(mma_heads, width):
    row = (width + 8) * 2  # 16-bit rows padded by 8 elements
    return 128 * row + 2 * mma_heads * row + 2 * mma_heads * 4  # key tile, two query buffers, their weights


def test_sixteen_bit_inputs_score_on_tensor_cores():
    # DeepSeek-V3.2 decode in bf16: the key tile [128][136], two queries' heads [64][136] and weights
    p = plan(total=131072, element_bytes=2)
    assert p["score_kernel"] == TENSOR_CORES and p["mma_heads"] == 64 and p["width"] == 128
    assert p["score_smem"] == mma_smem(64, 128) == 70144
    # the waves and the scratch do not depend on the score kernel
    q = plan(total=131072, element_bytes=4)
    assert q["score_kernel"] == CUDA_CORES and q["mma_heads"] == 0
    assert {k: p[k] for k in FIELDS[:4]} == {k: q[k] for k in FIELDS[:4]} and p["scratch_bytes"] == q["scratch_bytes"]


@pytest.mark.parametrize("heads, head_dim, mma_heads, width", [(1, 8, 16, 32), (5, 40, 16, 64), (16, 64, 16, 64),
                                                               (17, 96, 32, 128), (112, 128, 112, 128)])
def test_tensor_core_heads_pad_to_16(heads, head_dim, mma_heads, width):
    p = plan(heads=heads, head_dim=head_dim, element_bytes=2)
    assert p["score_kernel"] == TENSOR_CORES and p["mma_heads"] == mma_heads and p["width"] == width
    assert p["score_smem"] == mma_smem(mma_heads, width)


def test_cuda_cores_where_tensor_cores_do_not_apply():
    assert plan(element_bytes=2, tensor_cores=False)["score_kernel"] == CUDA_CORES  # ONNXATTN_INDEXER_CUDA=simt
    assert plan(element_bytes=4)["score_kernel"] == CUDA_CORES  # float32 keeps float32 products
    p = plan(head_dim=12, heads=4, element_bytes=2)  # rows not whole 16-byte chunks
    assert p["score_kernel"] == CUDA_CORES and p["score_smem"] == 4 * 4 * 33
    # 128 heads of 128: the tensor-core tiles (103 KiB) pass the 96 KiB cap (sm_86/89 allow 99), the CUDA-core
    # kernel's 64.5 KiB fit
    p = plan(heads=128, element_bytes=2)
    assert mma_smem(128, 128) > 96 << 10
    assert p["score_kernel"] == CUDA_CORES and p["score_smem"] == 4 * 128 * 129
    with pytest.raises(ValueError, match=r"attribute 'num_heads' \(256\) times D \(128\)"):
        plan(heads=256, element_bytes=2)


@pytest.mark.parametrize("value, kernel", [(None, TENSOR_CORES), ("mma", TENSOR_CORES), ("simt", CUDA_CORES)])
def test_the_environment_picks_the_score_kernel(value, kernel, monkeypatch):
    if value is None:
        monkeypatch.delenv("ONNXATTN_INDEXER_CUDA", raising=False)
    else:
        monkeypatch.setenv("ONNXATTN_INDEXER_CUDA", value)
    assert plan(element_bytes=2, tensor_cores=-1)["score_kernel"] == kernel


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ONNXATTN_INDEXER_CUDA", "wgmma")
    with pytest.raises(ValueError, match=r"LightningIndexer: environment variable ONNXATTN_INDEXER_CUDA must be mma "
                       r"or simt, got 'wgmma'"):
        plan(element_bytes=2, tensor_cores=-1)
