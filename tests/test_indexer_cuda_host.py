"""Host-side plan of the CUDA LightningIndexer (csrc/indexer/cuda_plan.h): query tiles of 16 rows that never span
two sequences, waves of tiles whose float32 score rows fit the 256 MiB scratch budget (so a long prompt never needs
its [S, T] scores at once), the score kernel's instance (D padded to 32, 64 or 128) and shared memory, and clear
errors for shapes the kernel cannot run. Runs without a GPU through the library's C test entry."""

from __future__ import annotations

import ctypes

import pytest

from onnxattn.cuda_ep import library_path

FIELDS = ("tiles_per_row", "tiles", "tiles_per_wave", "key_tiles", "width", "score_smem", "scratch_bytes")
BUDGET = 256 << 20


def plan(batch=1, seq=1, total=4096, heads=64, head_dim=128, top_k=2048):
    lib = ctypes.CDLL(library_path())
    entry = lib.OnnxAttnIndexerCudaPlan
    entry.restype = ctypes.c_char_p
    entry.argtypes = [ctypes.c_int64] * 6 + [ctypes.POINTER(ctypes.c_int64)]
    out = (ctypes.c_int64 * len(FIELDS))()
    error = entry(batch, seq, total, heads, head_dim, top_k, out)
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
