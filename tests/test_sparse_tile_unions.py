"""benchmarks/sparse_tile_unions.py: the union sizes of neighbouring queries' selection lists (what the CUDA attention
by query tiles stages), on hand-made lists, and one small run on our CPU kernel's lists."""

import json

import numpy as np
import pytest
from script_modules import load_script


@pytest.fixture(scope="module")
def unions():
    return load_script("benchmarks/sparse_tile_unions.py", "sparse_tile_unions")


def test_unions_of_hand_made_lists(unions):
    lists = np.array([[[0, 1, -1], [1, 2, -1], [5, -1, -1], [5, 6, 7], [3, -1, -1]]])  # [heads 1, S 5, top 3]
    assert unions.tile_unions(lists, 2).tolist() == [[3, 3, 1]]  # {0, 1, 2}, {5, 6, 7}, {3}
    assert unions.tile_unions(lists, 5).tolist() == [[7]]
    s = unions.stats(np.repeat(lists, 2, axis=1), 32)  # 2 queries a tile, each list twice in a row
    assert s["queries_per_tile"] == 2 and s["queries_per_warp"] == 1 and s["list_length"] == pytest.approx(1.8)
    assert s["tile_union_mean"] == pytest.approx(1.8) and s["rows_holding_a_staged_block"] == 1.0
    assert s["staged_blocks_per_query"] == pytest.approx(0.9) and s["warp_union_mean"] == pytest.approx(1.8)


def test_a_small_run_on_the_cpu_kernels_lists(unions, tmp_path):
    result = unions.main(["--seq", "512", "--threads", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "sparse_tile_unions_512.json").read_text()) == result
    for name, r in result["ops"].items():
        # causal lists of up to 16 blocks of 64 among the 8 there are at S = 512
        assert 1 <= r["list_length"] <= 8 and r["list_length"] <= r["tile_union_mean"] <= 8, name
        assert 0 < r["rows_holding_a_staged_block"] <= 1, name
