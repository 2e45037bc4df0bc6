"""The columns of the sparse CUDA benchmark, declared once: bench_sparse_cuda.py (which times them) and plot_cuda.py
(which draws what it recorded) derive their tables from COLUMNS. Plain data without torch, so that plot_cuda needs
neither torch nor CUDA."""

from __future__ import annotations

from typing import NamedTuple

# mma: the tensor-core path with its loads in turn, the shuffle argmax and the routing's full rescan (LOADS=sync,
# ARGMAX=shuffle, ROUTE=split), pinned: the old kernels, as nsa_mma etc. recorded them before 82087dc; mma_async: the
# default (LOADS=async, ARGMAX=redux since the H200 run at 82087dc, ROUTE=groups since 2c9a48e: the same bits), named
# too so that a stray switch in the environment cannot change what a column means.
_MMA_PATH = {"ONNXATTN_SPARSE_CUDA": "mma"}
_MMA = {**_MMA_PATH, "ONNXATTN_SPARSE_CUDA_LOADS": "sync", "ONNXATTN_SPARSE_CUDA_ARGMAX": "shuffle",
        "ONNXATTN_SPARSE_CUDA_ROUTE": "split"}
_MMA_ASYNC = {**_MMA_PATH, "ONNXATTN_SPARSE_CUDA_LOADS": "async", "ONNXATTN_SPARSE_CUDA_ARGMAX": "redux",
              "ONNXATTN_SPARSE_CUDA_ROUTE": "groups"}
# The sparse kernels' paths: the ONNXATTN_ switches their runs see. The order of this dict groups the columns by
# path in the recorded config and in plot_cuda's ratios.
PATHS = {"fast": {"ONNXATTN_SPARSE_CUDA": "fast"}, "simple": {"ONNXATTN_SPARSE_CUDA": "simple"}, "mma": _MMA,
         "mma_async": _MMA_ASYNC, "mma_tiles": {**_MMA_ASYNC, "ONNXATTN_SPARSE_CUDA_BLOCKS": "queries"}}  # fmt: skip


class Column(NamedTuple):
    """One implementation: its key in the recorded ms, timing, errors and ratios."""

    name: str
    kind: str  # "sparse", "dense" (our dense SDPA) or "torch" (torch SDPA)
    # position in the run and in bench_sparse_cuda's table: the mma paths (the old kernels, the default, query tiles)
    # and the dense references first, the slowest paths last (a short time budget skips the last columns first)
    run: int
    case: str | None = None  # its onnxruntime node: a bench_sparse_cpu.CASES name or "nsa_dot"; None: not through ORT
    path: str | None = None  # its PATHS entry; None: the op's default switches
    baseline: str | None = None  # the column it is also timed against (the ratio name/baseline)
    backend: str | None = None  # torch's SDPBackend
    heading: str | None = None  # plot_cuda's table heading (its ratios': less " ms"); None: not plotted there
    # plot_cuda's legend and colour; None: plot_cuda's own entry (torch's, shared with the SDPA plot)
    label: str | None = None
    color: str | None = None
    plot_ratios: tuple[str, ...] = ()  # the references ("dense", "torch") plot_cuda shows its time ratio to


# The order is that of the recorded JSON (placement, ratios) and of plot_cuda's bars and columns (the sparse ones,
# then the references).
COLUMNS = (
    Column("nsa", "sparse", 11, case="nsa", path="fast", baseline="nsa_simple", heading="NSA ms",
           label="NativeSparseAttention (ORT CUDA EP)", color="tab:purple", plot_ratios=("dense", "torch")),
    Column("nsa_dot", "sparse", 12, case="nsa_dot", path="fast", heading="NSA dot ms",
           label="NSA, dot-product selection", color="tab:pink"),
    Column("nsa_simple", "sparse", 14, case="nsa", path="simple"),
    Column("routed", "sparse", 13, case="routed", path="fast", baseline="routed_simple", heading="routed ms",
           label="SparseRoutedAttention (ORT CUDA EP)", color="tab:brown", plot_ratios=("dense", "torch")),
    Column("routed_simple", "sparse", 15, case="routed", path="simple"),
    Column("dense", "dense", 7, heading="dense ms (ours, C entry)", label="dense SDPA, ours (C entry)",
           color="tab:blue"),
    Column("dense_ort", "dense", 6, case="dense", heading="dense ms (ours, ORT)",
           label="dense SDPA, ours (ORT CUDA EP)", color="tab:cyan"),
    Column("torch_flash", "torch", 9, backend="FLASH_ATTENTION", heading="torch flash ms"),
    Column("torch_cudnn", "torch", 10, backend="CUDNN_ATTENTION", heading="torch cuDNN ms"),
    Column("nsa_mma", "sparse", 0, case="nsa", path="mma", baseline="nsa", heading="NSA mma ms",
           label="NSA, mma, loads in turn", color="indigo", plot_ratios=("dense",)),
    Column("nsa_dot_mma", "sparse", 8, case="nsa_dot", path="mma", baseline="nsa_dot", heading="NSA dot mma ms",
           label="NSA dot selection, mma, loads in turn", color="orchid", plot_ratios=("dense",)),
    Column("routed_mma", "sparse", 1, case="routed", path="mma", baseline="routed", heading="routed mma ms",
           label="SparseRoutedAttention, mma, loads in turn", color="saddlebrown", plot_ratios=("dense",)),
    Column("nsa_mma_async", "sparse", 4, case="nsa", path="mma_async", baseline="nsa_mma",
           heading="NSA mma async ms", label="NSA, mma, overlapped loads (default)", color="slateblue",
           plot_ratios=("dense",)),
    Column("routed_mma_async", "sparse", 5, case="routed", path="mma_async", baseline="routed_mma",
           heading="routed mma async ms", label="routed, mma, overlapped loads (default)", color="chocolate",
           plot_ratios=("dense",)),
    Column("nsa_mma_tiles", "sparse", 2, case="nsa", path="mma_tiles", baseline="nsa_mma_async",
           heading="NSA mma tiles ms", label="NSA, mma, query tiles", color="darkviolet", plot_ratios=("dense",)),
    Column("routed_mma_tiles", "sparse", 3, case="routed", path="mma_tiles", baseline="routed_mma_async",
           heading="routed mma tiles ms", label="routed, mma, query tiles", color="peru", plot_ratios=("dense",)),
)
