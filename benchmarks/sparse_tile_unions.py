"""How alike neighbouring queries' sparse selections are, in the benchmark's configuration (bench_sparse_cpu.py:
B=1, 16 query / 2 KV heads, D=128, blocks of 64, top 16; random normal inputs): what the CUDA attention by query
tiles (ONNXATTN_SPARSE_CUDA_BLOCKS=queries, sparse/cuda_blocks_mma.cu) stages and scores depends on it.

A query tile takes 64 rows of whole lists: for NativeSparseAttention's lists shared by a GQA group of 8 heads, 8
consecutive queries (a warp's 16 rows: 2 of them); for SparseRoutedAttention's per-head lists, 64 consecutive
queries of one head (a warp: 16). The tile stages the union of its lists, one block after another; a warp scores
the blocks its own rows' lists hold. Reported per op, from our CPU kernel's selection output at --seq: the mean
list length; the mean, median and largest union of a tile's lists, over the whole sequence and over its second half
(the first queries have fewer blocks to choose from); blocks staged per query (union / queries per tile; a
query-by-query kernel stages its own list); the mean union of a warp's lists; and the share of a staged block's
rows whose list holds it.

    python benchmarks/sparse_tile_unions.py [--seq 16384] [--threads 2] [--out benchmarks/results]
Writes sparse_tile_unions_<S>.json there (S in thousands: 16k, 64k).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_sparse_cpu as cpu  # noqa: E402

ROWS_PER_TILE, ROWS_PER_WARP = 64, 16  # the query-tile kernel's (sparse/cuda_sizes.h kMmaRows, a warp's mma rows)
SELECTION = {"nsa": ("selected_blocks", cpu.HQ // cpu.HKV), "routed": ("selected_segments", 1)}  # output, heads


def tile_unions(lists: np.ndarray, queries: int) -> np.ndarray:
    """Union sizes of the lists [heads, S, top] (-1: none) of each run of `queries` consecutive queries, [heads,
    tiles]."""
    heads, seq, _ = lists.shape
    out = np.zeros((heads, -(-seq // queries)), np.int64)
    for h in range(heads):
        for t in range(out.shape[1]):
            chosen = lists[h, t * queries : (t + 1) * queries]
            out[h, t] = np.unique(chosen[chosen >= 0]).size
    return out


def stats(lists: np.ndarray, heads_per_list: int) -> dict:
    """The report's numbers for one op's lists [heads, S, top]."""
    per_tile, per_warp = ROWS_PER_TILE // heads_per_list, max(1, ROWS_PER_WARP // heads_per_list)
    lengths = (lists >= 0).sum(-1)  # [heads, S]
    tiles, warps = tile_unions(lists, per_tile), tile_unions(lists, per_warp)
    late = tiles[:, tiles.shape[1] // 2 :]
    # rows of a staged block whose list holds it: the tile's (list, block) pairs over union x lists
    held = np.add.reduceat(lengths, np.arange(0, lengths.shape[1], per_tile), axis=1)
    queries = np.minimum(per_tile, lengths.shape[1] - np.arange(0, lengths.shape[1], per_tile))
    return {"queries_per_tile": per_tile, "queries_per_warp": per_warp, "list_length": float(lengths.mean()),
            "tile_union_mean": float(tiles.mean()), "tile_union_median": float(np.median(tiles)),
            "tile_union_max": int(tiles.max()), "tile_union_mean_second_half": float(late.mean()),
            "staged_blocks_per_query": float((tiles / queries).mean()),
            "staged_blocks_per_query_second_half": float((late / queries[tiles.shape[1] // 2 :]).mean()),
            "warp_union_mean": float(warps.mean()),
            "rows_holding_a_staged_block": float((held / np.maximum(tiles * queries, 1)).mean())}


def short(seq: int) -> str:
    return f"{seq // 1024}k" if seq % 1024 == 0 else str(seq)


def selections(name: str, seq: int, threads: int) -> np.ndarray:
    """Our CPU kernel's lists for the benchmark's case `name` at `seq`: [heads, S, top]."""
    from onnxattn.cuda_ep import make_session

    op, inputs, attrs = cpu.CASES[name]
    output = SELECTION[name][0]
    session = make_session(cpu.model(op, inputs, attrs, selection=output), providers=["CPUExecutionProvider"],
                           session_options=cpu.options(threads))  # fmt: skip
    feeds = {n: a for n, a in cpu.feeds(seq).items() if n in inputs}
    return session.run([output], feeds)[0][0]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    result = {"config": dict(B=1, Hq=cpu.HQ, Hkv=cpu.HKV, D=cpu.D, block=cpu.BLOCK, top=cpu.TOP, seq=args.seq,
                             inputs="random normal (bench_sparse_cpu.feeds, seed 0)"), "ops": {}}  # fmt: skip
    for name, (_, heads_per_list) in SELECTION.items():
        r = result["ops"][name] = stats(selections(name, args.seq, args.threads), heads_per_list)
        print(f"{name} S={args.seq}: lists of {r['list_length']:.2f}; a tile of {r['queries_per_tile']} queries "
              f"stages {r['tile_union_mean']:.1f} blocks (median {r['tile_union_median']:.0f}, max "
              f"{r['tile_union_max']}; second half {r['tile_union_mean_second_half']:.1f}), "
              f"{r['staged_blocks_per_query']:.1f} per query ({r['staged_blocks_per_query_second_half']:.1f}); "
              f"a warp's "
              f"{r['queries_per_warp']} queries {r['warp_union_mean']:.1f}; rows holding a staged block "
              f"{r['rows_holding_a_staged_block']:.0%}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"sparse_tile_unions_{short(args.seq)}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
