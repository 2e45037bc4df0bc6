"""Plots and markdown tables of the recorded CUDA benchmark runs (benchmarks/results/*_cuda_*.json).

Reads the JSON written by bench_sdpa_cuda.py, bench_gqa_cuda.py, bench_paged_cuda.py, bench_mla_cuda.py and
bench_sparse_cuda.py (which one a file is: its name, `sdpa_...`, `gqa_...`, `paged_...`, `mla_...`,
`sparse_...`, optionally `bench_`-prefixed, else its rows) and writes one PNG per file, next to it (or into
--out-dir), with the same name:
  - sdpa:  prefill TFLOP/s per shape and dtype for each implementation (onnxattn, torch flash, torch cuDNN,
           onnxruntime GroupQueryAttention), and decode as a fraction of the measured copy bandwidth per shape;
  - gqa:   onnxattn::GroupQueryAttention vs onnxruntime's com.microsoft.GroupQueryAttention, prefill TFLOP/s and
           decode fraction of copy bandwidth, per timer (gpu = summed device time, graph, wall);
  - paged: paged decode / chunked-prefill step vs our contiguous decode of the same keys, fraction of copy
           bandwidth, with the paged/contiguous time ratio;
  - mla:   cache GB/s and TFLOP/s per row;
  - sparse: NativeSparseAttention and SparseRoutedAttention (CUDA EP) vs our dense SDPA and torch SDPA, ms per
           sequence length (log scale) and the sparse/dense, sparse/torch time ratios.
Each plot is titled with the device, commit and date of the run; a markdown table of each file goes to stdout.
The indexer, whole-model and profile runs (and gpu_check's summary) are named on stderr and skipped: their
benchmarks print their own tables.
Computes nothing the benchmarks did not record (ratios of recorded times aside).

    python benchmarks/plot_cuda.py [FILE.json ...] [--out-dir DIR]

Without files: those of benchmarks/results/{sdpa,gqa,paged,mla,sparse}_cuda_h100.json that exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if str(Path(__file__).parent) not in sys.path:  # sparse_columns next to this file, also when imported by path
    sys.path.insert(0, str(Path(__file__).parent))
from sparse_columns import COLUMNS, PATHS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULTS = [RESULTS / f"{name}_cuda_h100.json" for name in ("sdpa", "gqa", "paged", "mla", "sparse")]

SDPA_IMPLS = ("onnxattn", "torch_flash", "torch_cudnn", "ort_gqa")
PREFILL_IMPLS = ("onnxattn", "wgmma", "torch_flash", "torch_cudnn", "ort_gqa")  # wgmma: the opt-in Hopper kernel
LABELS = {
    "onnxattn": "onnxattn",
    "wgmma": "onnxattn, wgmma kernel",
    "torch_flash": "torch SDPA flash",
    "torch_cudnn": "torch SDPA cuDNN",
    "ort_gqa": "ORT GroupQueryAttention",
    "gqa_contiguous": "contiguous (our GQA decode)",
    "onnxattn_ort": "paged via ORT CUDA EP",
    **{c.name: c.label for c in COLUMNS if c.label},  # the sparse benchmark's (torch's: the entries above)
}
COLORS = {
    "onnxattn": "tab:blue",
    "wgmma": "tab:olive",
    "torch_flash": "tab:orange",
    "torch_cudnn": "tab:green",
    "ort_gqa": "tab:red",
    "gqa_contiguous": "tab:gray",
    "onnxattn_ort": "tab:cyan",
    **{c.name: c.color for c in COLUMNS if c.color},
}
DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
PREFILL_TARGET_TFLOPS = 300.0  # the SDPA issue's first prefill target (FA2 class) at S=4k
COPY_FRACTION_TARGET = 0.70  # decode target at Skv >= 32k (SDPA) / paged decode (issue 5)
PAGED_RATIO_TARGET = 1.15  # paged within 15% of contiguous


# ----------------------------------------------------------------------------------------------- helpers


# Runs this script does not draw: their benchmarks print their own tables (bench_indexer_cuda.py,
# bench_models_cuda.py, profile_cuda.py), and gpu_check.sh's summary is no benchmark.
UNPLOTTED = ("indexer", "models", "profile", "gpu_check")


def kind_of(path: Path, data: dict) -> str:
    stem = path.stem.removeprefix("bench_")
    for kind in UNPLOTTED + ("sdpa", "gqa", "paged", "mla", "sparse"):
        if stem.startswith(kind):
            return kind
    if "rows" in data:
        return "mla"
    rows = data.get("results", [])
    if any("ratio" in r and "seq" in r for r in rows):
        return "sparse"
    if any("gqa_contiguous" in r.get("ms", {}) for r in rows):
        return "paged"
    if any(isinstance(v, dict) for r in rows for v in r.get("ms", {}).values()):
        return "gqa"
    return "sdpa"


def environment(data: dict) -> dict:
    env = dict(data.get("environment") or {})
    env.setdefault("device", data.get("device", "unknown device"))
    return env


def title_of(env: dict, what: str) -> str:
    commit = env["commit"][:10] if env.get("commit") else "not recorded"
    bits = [env.get("device", "unknown device"), f"commit {commit}"]
    if env.get("date"):
        bits.append(env["date"][:10])
    if env.get("torch"):
        bits.append(f"torch {env['torch']}")
    if env.get("onnxruntime"):
        bits.append(f"onnxruntime {env['onnxruntime']}")
    return f"{what}\n" + ", ".join(bits)


def num(x, spec=".1f") -> str:
    return "—" if x is None else format(x, spec)


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def ratio(num_, den) -> float | None:
    return num_ / den if num_ and den else None


def short_len(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def grouped_bars(ax, groups: list[str], series: dict[str, list], colors: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, fmt: str = "{:.0f}") -> None:
    """Bars per group, one per series (None values leave a gap), each labelled with its value."""
    names = [s for s in series if any(v is not None for v in series[s])]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        vals = series[name]
        bars = ax.bar([x for x, v in zip(xs, vals) if v is not None], [v for v in vals if v is not None], width,
                      label=(labels or {}).get(name, name), color=(colors or {}).get(name))
        ax.bar_label(bars, labels=[fmt.format(v) for v in vals if v is not None], fontsize=6, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.3)


def new_figure(ncols: int, width: float = 14, height: float = 5.5, ratios: list[float] | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), squeeze=False,
                             gridspec_kw={"width_ratios": ratios} if ratios else None)
    return plt, fig, list(axes[0])


def save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------- SDPA


def sdpa_group(r: dict) -> str:
    dt = DTYPE.get(r["dtype"], r["dtype"])
    if r["kind"] == "prefill":
        return f"{dt}\nB{r['batch']} S{short_len(r['q_len'])}"
    return f"{dt}\nB{r['batch']}\nSkv{short_len(r['kv_len'])}"


def plot_sdpa(data: dict, png: Path) -> None:
    rows = data["results"]
    prefill = [r for r in rows if r["kind"] == "prefill"]
    decode = [r for r in rows if r["kind"] == "decode"]
    plt, fig, (ax1, ax2) = new_figure(2, width=17, height=6, ratios=[1, 1.8])
    if prefill:
        grouped_bars(ax1, [sdpa_group(r) for r in prefill],
                     {i: [r["tflops"].get(i) for r in prefill] for i in PREFILL_IMPLS
                      if any(r["tflops"].get(i) for r in prefill)}, COLORS, LABELS)  # fmt: skip
        ax1.axhline(PREFILL_TARGET_TFLOPS, color="k", ls="--", lw=0.8, label=f"target {PREFILL_TARGET_TFLOPS:.0f}")
        ax1.set_ylabel("TFLOP/s (causal FLOPs 4·B·H·S²·D/2)")
        ax1.set_title("prefill: causal, B·S = 16k, H=16, D=128", fontsize=9)
        ax1.legend(fontsize=7, loc="upper left", ncol=2)
    if decode:
        grouped_bars(ax2, [sdpa_group(r) for r in decode],
                     {i: [r["fraction_of_copy"].get(i) for r in decode] for i in SDPA_IMPLS}, COLORS, LABELS,
                     fmt="{:.2f}")
        ax2.axhline(COPY_FRACTION_TARGET, color="k", ls="--", lw=0.8, label="target 0.70 (Skv ≥ 32k)")
        ax2.axhline(1.0, color="k", lw=0.5)
        ax2.set_ylabel(f"K+V bytes read / time ÷ copy bandwidth ({data.get('copy_bandwidth_gbs', 0):.0f} GB/s)")
        ax2.set_title("decode: Sq=1, 32q/8kv heads, D=128", fontsize=9)
        ax2.legend(fontsize=7, loc="upper left", ncol=3)
    fig.suptitle(title_of(environment(data), "onnxattn::ScaledDotProductAttention (CUDA)"), fontsize=10)
    save(plt, fig, png)


def table_sdpa(data: dict) -> str:
    prefill = [r for r in data["results"] if r["kind"] == "prefill"]
    wgmma = any(r["tflops"].get("wgmma") for r in prefill)  # the opt-in Hopper kernel's column, when it ran
    out = ["| dtype | prefill shape | onnxattn TFLOP/s | " + ("wgmma kernel | " if wgmma else "") +
           "torch flash | torch cuDNN | ORT GQA | ours / flash | ours / cuDNN | ours / ORT |" +
           (" wgmma / cuDNN |" if wgmma else ""),
           "|---|---|" + "---:|" * (9 if wgmma else 7)]  # fmt: skip
    for r in prefill:
        t = r["tflops"]
        out.append(f"| {DTYPE.get(r['dtype'], r['dtype'])} | {r['shape']} | {num(t.get('onnxattn'))} | " +
                   (f"{num(t.get('wgmma'))} | " if wgmma else "") +
                   f"{num(t.get('torch_flash'))} | {num(t.get('torch_cudnn'))} | {num(t.get('ort_gqa'))} | "
                   f"{num(ratio(t.get('onnxattn'), t.get('torch_flash')), '.2f')}× | "
                   f"{num(ratio(t.get('onnxattn'), t.get('torch_cudnn')), '.2f')}× | "
                   f"{num(ratio(t.get('onnxattn'), t.get('ort_gqa')), '.2f')}× |" +
                   (f" {num(ratio(t.get('wgmma'), t.get('torch_cudnn')), '.2f')}× |" if wgmma else ""))  # fmt: skip
    out += ["", f"Decode, fraction of the measured copy bandwidth ({data.get('copy_bandwidth_gbs', 0):.0f} GB/s):", "",
            "| dtype | decode shape | onnxattn GB/s | onnxattn | torch flash | torch cuDNN | ORT GQA | ours / cuDNN |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        if r["kind"] != "decode":
            continue
        f = r["fraction_of_copy"]
        out.append(f"| {DTYPE.get(r['dtype'], r['dtype'])} | {r['shape']} | {num(r['gbs'].get('onnxattn'), '.0f')} | "
                   f"{pct(f.get('onnxattn'))} | {pct(f.get('torch_flash'))} | {pct(f.get('torch_cudnn'))} | "
                   f"{pct(f.get('ort_gqa'))} | {num(ratio(f.get('onnxattn'), f.get('torch_cudnn')), '.2f')}× |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- GQA

GQA_SERIES = (("onnxattn", "gpu"), ("onnxattn", "graph"), ("ort_gqa", "gpu"), ("onnxattn", "wall"), ("ort_gqa", "wall"))


def gqa_series(rows: list[dict], metric: str) -> dict[str, list]:
    return {f"{impl} ({timer})": [r[metric].get(impl, {}).get(timer) for r in rows] for impl, timer in GQA_SERIES}


def gqa_colors() -> dict[str, str]:
    import matplotlib.colors as mc

    colors = {}
    for impl, timer in GQA_SERIES:
        base = mc.to_rgb(COLORS[impl])
        shade = {"gpu": 1.0, "graph": 0.75, "wall": 0.45}[timer]
        colors[f"{impl} ({timer})"] = tuple(1 - (1 - c) * shade for c in base)
    return colors


def gqa_labels() -> dict[str, str]:
    return {f"{i} ({t})": f"{LABELS[i]} ({t})" for i, t in GQA_SERIES}


def gqa_group(r: dict) -> str:
    return r["shape"].replace(" 32q/8kv", "\n32q/8kv").replace(" D128", "\nD128", 1)


def plot_gqa(data: dict, png: Path) -> None:
    rows = data["results"]
    prefill = [r for r in rows if r["kind"] == "prefill"]
    decode = [r for r in rows if r["kind"] == "decode"]
    plt, fig, (ax1, ax2) = new_figure(2, width=16, height=6, ratios=[1, 3.2])
    if prefill:
        grouped_bars(ax1, [gqa_group(r) for r in prefill], gqa_series(prefill, "tflops"), gqa_colors(), gqa_labels())
        ax1.set_ylabel("TFLOP/s (causal FLOPs)")
        ax1.set_title("prefill (no past), fp16", fontsize=9)
    if decode:
        grouped_bars(ax2, [gqa_group(r) for r in decode], gqa_series(decode, "fraction_of_copy"), gqa_colors(),
                     gqa_labels(), fmt="{:.2f}")
        ax2.axhline(COPY_FRACTION_TARGET, color="k", ls="--", lw=0.8, label="0.70")
        ax2.set_ylabel(f"fraction of copy bandwidth ({data.get('copy_bandwidth_gbs', 0):.0f} GB/s)")
        ax2.set_title("decode in a shared buffer (P cached, buffer of M), fp16", fontsize=9)
        ax2.legend(fontsize=7, loc="upper left", ncol=3)
    fig.suptitle(title_of(environment(data), "onnxattn::GroupQueryAttention vs com.microsoft.GroupQueryAttention (CUDA EP)"),
                 fontsize=10)
    save(plt, fig, png)


def table_gqa(data: dict) -> str:
    out = ["| kind | shape | onnxattn (gpu) | onnxattn (graph) | ORT GQA (gpu) | onnxattn (wall) | ORT GQA (wall) "
           "| ours / ORT (gpu) |",
           "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        metric, fmt = ("tflops", lambda x: num(x) + " TFLOP/s") if r["kind"] == "prefill" else \
            ("fraction_of_copy", lambda x: pct(x) + " of copy" if x is not None else "—")
        m = r[metric]
        ours, ort = m.get("onnxattn", {}), m.get("ort_gqa", {})
        out.append(f"| {r['kind']} | {r['shape']} | {fmt(ours.get('gpu'))} | {fmt(ours.get('graph'))} | "
                   f"{fmt(ort.get('gpu'))} | {fmt(ours.get('wall'))} | {fmt(ort.get('wall'))} | "
                   f"{num(ratio(ours.get('gpu'), ort.get('gpu')), '.2f')}× |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- paged

PAGED_SERIES = (("onnxattn", "graph"), ("gqa_contiguous", "graph"), ("onnxattn", "gpu"), ("gqa_contiguous", "gpu"),
                ("onnxattn_ort", "gpu"))


def paged_group(r: dict) -> str:
    layout = "shuffled" if r.get("shuffled") else "in order"
    return f"{r['kind']}, {layout}\nB{r['batch']} P{short_len(r['keys'])} bs{r['block_size']}\n{r['new_tokens']} new tokens"


def paged_time_ratio(r: dict, timer: str) -> float | None:
    ms = r["ms"]
    return ratio(ms.get("onnxattn", {}).get(timer), ms.get("gqa_contiguous", {}).get(timer))


def plot_paged(data: dict, png: Path) -> None:
    import matplotlib.colors as mc

    rows = data["results"]
    plt, fig, (ax,) = new_figure(1, width=12, height=6)
    colors, labels = {}, {}
    for impl, timer in PAGED_SERIES:
        key = f"{impl} ({timer})"
        base = mc.to_rgb(COLORS[impl])
        colors[key] = tuple(1 - (1 - c) * (1.0 if timer == "graph" else 0.55) for c in base)
        labels[key] = f"{LABELS[impl] if impl != 'onnxattn' else 'paged, onnxattn'} ({timer})"
    series = {f"{i} ({t})": [r["fraction_of_copy"].get(i, {}).get(t) for r in rows] for i, t in PAGED_SERIES}
    groups = []
    for r in rows:
        g = paged_group(r)
        q = paged_time_ratio(r, "graph")
        groups.append(g + (f"\npaged/contig. time {q:.3f}" if q else ""))
    grouped_bars(ax, groups, series, colors, labels, fmt="{:.2f}")
    ax.axhline(COPY_FRACTION_TARGET, color="k", ls="--", lw=0.8, label="0.70")
    ax.set_ylabel(f"K+V bytes read / time ÷ copy bandwidth ({data.get('copy_bandwidth_gbs', 0):.0f} GB/s)")
    ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title_of(environment(data), "onnxattn::PagedAttention vs contiguous decode, 32q/8kv D=128 fp16"),
                 fontsize=10)
    save(plt, fig, png)


def table_paged(data: dict) -> str:
    out = ["| kind | shape | new tokens | paged GB/s (graph) | paged, of copy | contiguous GB/s (graph) "
           "| contiguous, of copy | paged / contiguous time (graph) | (gpu) | paged via ORT (gpu), of copy |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        g, f = r["gbs"], r["fraction_of_copy"]
        q_graph, q_gpu = paged_time_ratio(r, "graph"), paged_time_ratio(r, "gpu")
        out.append(f"| {r['kind']} | {r['shape']} | {r['new_tokens']} | {num(g.get('onnxattn', {}).get('graph'), '.0f')} | "
                   f"{pct(f.get('onnxattn', {}).get('graph'))} | {num(g.get('gqa_contiguous', {}).get('graph'), '.0f')} | "
                   f"{pct(f.get('gqa_contiguous', {}).get('graph'))} | {num(q_graph, '.3f')} | {num(q_gpu, '.3f')} | "
                   f"{pct(f.get('onnxattn_ort', {}).get('gpu'))} |")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- MLA


def plot_mla(data: dict, png: Path) -> None:
    rows = [r for r in data["rows"] if "error" not in r]
    groups = [f"B{r['B']} H{r['H']} {r.get('kernel', 'simt')}\nP{short_len(r['P'])} {DTYPE.get(r['dtype'], r['dtype'])}"
              f"{'' if r.get('K', -1) < 0 else ' K' + str(r['K'])}\n{r['splits']} split(s)" for r in rows]
    plt, fig, (ax1, ax2) = new_figure(2, width=11, height=5)
    grouped_bars(ax1, groups, {"onnxattn": [r["cache_gbps"] for r in rows]}, COLORS, LABELS)
    ax1.set_ylabel("latent cache GB/s")
    ax1.set_title("memory-bound view (anchor: FlashMLA ~3000 GB/s on H800)", fontsize=9)
    grouped_bars(ax2, groups, {"onnxattn": [r["tflops"] for r in rows]}, COLORS, LABELS, fmt="{:.2f}")
    ax2.set_ylabel("TFLOP/s")
    ax2.set_title("compute-bound view (anchor: FlashMLA 580-660 TFLOP/s on H800)", fontsize=9)
    fig.suptitle(title_of(environment(data), "onnxattn::MultiHeadLatentAttention decode (CUDA, absorbed)"),
                 fontsize=10)
    save(plt, fig, png)


def table_mla(data: dict) -> str:
    out = ["| B | H | P | listed keys | dtype | attention | µs | cache GB/s | TFLOP/s | splits |",
           "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in data["rows"]:
        listed = "all" if r.get("K", -1) < 0 else r["K"]
        head = (f"| {r['B']} | {r['H']} | {r['P']} | {listed} | {DTYPE.get(r['dtype'], r['dtype'])} | "
                f"{r.get('kernel', 'simt')} |")
        if "error" in r:
            out.append(f"{head} failed: {r['error'][:80]} | | | |")
            continue
        out.append(f"{head} {r['us']:.0f} | {r['cache_gbps']:.1f} | {r['tflops']:.2f} | {r['splits']} |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ sparse

# the columns drawn and tabulated: the sparse ones, then the references
SPARSE_IMPLS = tuple(c.name for sparse in (True, False) for c in COLUMNS
                     if c.heading and (c.kind == "sparse") == sparse)  # fmt: skip
# per path, its time ratios to dense, then to torch
SPARSE_RATIOS = tuple(f"{c.name}/{ref}" for path in PATHS for ref in ("dense", "torch") for c in COLUMNS
                      if c.path == path and ref in c.plot_ratios)  # fmt: skip
SPARSE_HEADS = {**{c.name: c.heading for c in COLUMNS if c.heading},
                **{f"{c.name}/{ref}": f"{c.heading.removesuffix(' ms')} / {ref}"
                   for c in COLUMNS for ref in c.plot_ratios}}  # fmt: skip


def plot_sparse(data: dict, png: Path) -> None:
    rows = data["results"]
    groups = [f"S={short_len(r['seq'])}" for r in rows]
    plt, fig, (ax1, ax2) = new_figure(2, width=14, height=5.5, ratios=[1.6, 1])
    grouped_bars(ax1, groups, {i: [r["ms"].get(i) for r in rows] for i in SPARSE_IMPLS}, COLORS, LABELS,
                 fmt="{:.1f}")
    ax1.set_yscale("log")
    ax1.set_ylabel("ms per forward (log)")
    ax1.set_title("causal prefill, B1 16q/2kv D128 bf16; blocks of 64, top 16, window 512", fontsize=9)
    ax1.legend(fontsize=7, loc="upper left")
    grouped_bars(ax2, groups, {k: [r.get("ratio", {}).get(k) for r in rows] for k in SPARSE_RATIOS}, fmt="{:.2f}")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylabel("time ratio (< 1: sparse faster)")
    ax2.set_title("sparse / dense (ours), sparse / torch (faster backend)", fontsize=9)
    ax2.legend(fontsize=7, loc="upper right")
    fig.suptitle(title_of(environment(data), "onnxattn::NativeSparseAttention, SparseRoutedAttention (CUDA EP)"),
                 fontsize=10)
    save(plt, fig, png)


def table_sparse(data: dict) -> str:
    """The columns some row has a number for (runs before the mma path have none of its columns)."""
    rows = data["results"]
    impls = [i for i in SPARSE_IMPLS if any(r["ms"].get(i) for r in rows)]
    ratios = [k for k in SPARSE_RATIOS if any(r.get("ratio", {}).get(k) for r in rows)]
    out = ["| S | " + " | ".join(SPARSE_HEADS[c] for c in impls + ratios) + " |",
           "|---:|" + "---:|" * (len(impls) + len(ratios))]
    for r in rows:
        ms, q = r["ms"], r.get("ratio", {})
        out.append(f"| {short_len(r['seq'])} | " + " | ".join(num(ms.get(i), ".2f") for i in impls) + " | "
                   + " | ".join(num(q.get(k), ".3f") for k in ratios) + " |")
    out.append("")
    out.append("Time ratios: dense = our SDPA through the same onnxruntime path when measured, torch = the faster "
               "torch backend.")
    return "\n".join(out)


# -------------------------------------------------------------------------------------------------- main

KINDS = {
    "sdpa": (plot_sdpa, table_sdpa, "ScaledDotProductAttention"),
    "gqa": (plot_gqa, table_gqa, "GroupQueryAttention"),
    "paged": (plot_paged, table_paged, "PagedAttention"),
    "mla": (plot_mla, table_mla, "MultiHeadLatentAttention"),
    "sparse": (plot_sparse, table_sparse, "Sparse attention"),
}


def process(path: Path, out_dir: Path | None = None) -> tuple[Path, str] | None:
    """Plot one benchmark JSON; returns the PNG's path and the markdown table (None for an UNPLOTTED run, named on
    stderr)."""
    data = json.loads(path.read_text())
    kind = kind_of(path, data)
    if kind in UNPLOTTED:
        print(f"plot_cuda: {path.name}: not drawn here ({kind} runs print their own tables)", file=sys.stderr)
        return None
    plot, table, name = KINDS[kind]
    png = (out_dir or path.parent) / f"{path.stem}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(data, png)
    env = environment(data)
    commit = env["commit"][:10] if env.get("commit") else "not recorded"
    head = f"### {name} — {env.get('device')}, commit {commit}"
    if env.get("date"):
        head += f", {env['date'][:10]}"
    return png, f"{head}\n\n{table(data)}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="benchmark JSON files (default: the *_cuda_h100.json)")
    parser.add_argument("--out-dir", type=Path, help="write the PNGs here instead of next to each JSON")
    args = parser.parse_args(argv)
    files = args.files or [p for p in DEFAULTS if p.exists()]
    if not files:
        print("plot_cuda: no benchmark JSON found", file=sys.stderr)
        return 1
    for path in files:
        plotted = process(path, args.out_dir)
        if plotted is None:
            continue
        png, table = plotted
        print(table)
        print(f"plot: {png}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
