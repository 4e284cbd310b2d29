"""The cost appendix: the benchmark CSVs of a profile and, where `make gpu-check` has written
one, the GPU kernel sweep in results/gpu/check.json, as tables, figures and macros. The bench
notebook (notebooks/05_bench.ipynb) calls these; nothing here measures.

Speed targets (issue 27): softmax1 and the sink within 1.05x of the fastest softmax at
T = 256, 1k and 4k; shorter lengths are read for the per-call overhead instead.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..io import write_figure
from .latex import Tex, fmt, latex_table
from .stats import VARIANT_LABELS

TARGET_MIN_T = 256      # the shortest length the speed target names
TARGET_RATIO = 1.05
LEGACY_BLOCK_S = 0.2    # seconds of passes per case and round of benches without a block_s column
FAST_CASES = ("softmax1", "sink")


SHORT_LABELS = {("softmax", "fast"): "softmax", ("softmax1", "fast"): "softmax1",
                ("sink", "fast"): "sink", ("softmax1", "reference"): "softmax1, ref."}


T_HEAD, B_HEAD, D_HEAD, EXTRA_US = Tex("$T$"), Tex("$B$"), Tex("$D$"), Tex("extra ($\\mu$s)")


def _short(r) -> str:
    return SHORT_LABELS.get((r["variant"], r["impl"]), r["label"])


def _span(lo, hi, digits: int = 3) -> Tex:
    return Tex(f"${fmt(lo, digits)}$--${fmt(hi, digits)}$")


def _ratio(x) -> Tex:
    """A time ratio to three decimals, the precision the 1.05 target is read at."""
    return Tex(f"${x:.3f}$")


def time_table(attn: pd.DataFrame, path) -> None:
    """One row per case and T: the median time with its interquartile range, the ratio to fused
    softmax (median and IQR of the per-round ratios) and the median extra time per call.
    Benchmarks written before the quartiles print their medians only."""
    rows = []
    for r in attn.dropna(subset=["median_ms"]).to_dict("records"):
        has = not pd.isna(r.get("q1_ms", float("nan")))
        extra = r.get("extra_us", float("nan"))
        rows.append({"attention": _short(r), T_HEAD: Tex(f"${fmt(int(r['T']))}$"),
                     B_HEAD: Tex(f"${int(r['B'])}$"), "ms": Tex(f"${fmt(r['median_ms'], 3)}$"),
                     "IQR (ms)": _span(r["q1_ms"], r["q3_ms"]) if has else Tex("--"),
                     "/ softmax": _ratio(r["time_ratio"]),
                     "IQR": (Tex(f"{_ratio(r['ratio_q1'])}--{_ratio(r['ratio_q3'])}") if has
                             else Tex("--")),
                     EXTRA_US: (Tex(f"${fmt(extra, 3)}$") if not pd.isna(extra) and
                                (r["variant"], r["impl"]) != ("softmax", "fast") else Tex("--"))})
    latex_table(rows, path, column_format="lrrrrrrr")


def memory_table(attn: pd.DataFrame, path) -> None:
    """Peak memory growth: one row per T, one column per case, each with its ratio to fused
    softmax's."""
    ok = attn.dropna(subset=["median_ms"])
    rows = []
    for T, g in ok.groupby("T", sort=True):
        row = {T_HEAD: Tex(f"${fmt(int(T))}$"), B_HEAD: Tex(f"${int(g['B'].iloc[0])}$")}
        for r in g.to_dict("records"):
            ratio = fmt(r["memory_ratio"], 3)
            row[_short(r)] = Tex(f"${fmt(r['peak_mib'], 3)}$ ($\\times{ratio}$)")
        rows.append(row)
    cols = [T_HEAD, B_HEAD] + list(dict.fromkeys(_short(r) for r in ok.to_dict("records")))
    latex_table(rows, path, column_format="r" * len(cols), columns=cols)


def batch_text(attn: pd.DataFrame) -> str:
    """The batch sizes the attention bench ran at, for the paper: "$B = 8$" where one size
    served every length, else each size with its lengths ("$B = 8$ at $T = 64$ and $256$, $4$ at
    $T = 1{,}024$ ...")."""
    ok = attn.dropna(subset=["median_ms"])
    by_b = ok.groupby("B", sort=False)["T"].apply(lambda t: sorted({int(x) for x in t}))
    if len(by_b) <= 1:
        return f"$B = {int(by_b.index[0])}$" if len(by_b) else "n/a"
    parts = []
    for i, (B, Ts) in enumerate(sorted(by_b.items(), key=lambda kv: kv[1][0])):
        ts = [f"${fmt(t)}$" for t in Ts]
        listed = ts[0] if len(ts) == 1 else ", ".join(ts[:-1]) + f" and {ts[-1]}"
        parts.append(f"{'$B = ' if i == 0 else '$'}{int(B)}$ at $T =$ {listed}")
    return "; ".join(parts)


def speed_macros(attn: pd.DataFrame) -> dict[str, str]:
    """The worst time ratio of softmax1 and the sink at the target lengths (with the upper
    quartile of its per-round ratios), and the per-call overhead at the shortest length."""
    fast = attn[attn.impl.eq("fast") & attn.variant.isin(FAST_CASES)].dropna(subset=["median_ms"])
    # benchmarks written before the per-round ratios (issue 27) have no quartiles: the paper
    # then prints only what they measured
    has_iqr = {"ratio_q3", "extra_us"} <= set(attn.columns)
    M = {"BenchHasIQR": "1" if has_iqr else "0"}
    for name in ("SoftmaxOne", "Sink"):
        for key in ("TargetWorstRatio", "TargetWorstT", "TargetWorstQThree", "OverheadUs"):
            M[f"Bench{name}{key}"] = "n/a"
        M[f"Bench{name}TargetMet"] = "0"
        M[f"Bench{name}TargetMissTs"] = "n/a"
    M["BenchOverheadT"] = "n/a"
    target = fast[fast["T"] >= TARGET_MIN_T]
    for v in FAST_CASES:
        name = "SoftmaxOne" if v == "softmax1" else "Sink"
        t = target[target.variant == v]
        if len(t):
            worst = t.loc[t.time_ratio.idxmax()]
            M[f"Bench{name}TargetWorstRatio"] = f"{worst.time_ratio:.3f}"
            M[f"Bench{name}TargetWorstT"] = str(fmt(int(worst["T"])))
            q3 = worst.get("ratio_q3")
            M[f"Bench{name}TargetWorstQThree"] = f"{q3:.3f}" if not pd.isna(q3) else "n/a"
            # met when even the upper quartile of every target length's ratios is within it
            upper = t["ratio_q3"].fillna(t["time_ratio"]) if "ratio_q3" in t else t["time_ratio"]
            M[f"Bench{name}TargetMet"] = "1" if bool((upper <= TARGET_RATIO).all()) else "0"
            # the lengths whose upper quartile is above the target
            M[f"Bench{name}TargetMissTs"] = ", ".join(
                str(fmt(int(x))) for x in t.loc[upper > TARGET_RATIO, "T"]) or "none"
        short = fast[fast.variant == v].sort_values("T").head(1)
        if len(short) and "extra_us" in short and not pd.isna(short.extra_us.iloc[0]):
            M[f"Bench{name}OverheadUs"] = str(fmt(short.extra_us.iloc[0], 3))
            M["BenchOverheadT"] = str(fmt(int(short["T"].iloc[0])))
    M["BenchBatch"] = batch_text(attn)
    M["BenchBatchVaries"] = "1" if attn.dropna(subset=["median_ms"])["B"].nunique() > 1 else "0"
    # the bench's seconds of passes per case and round, as the rows record it; benchmarks
    # written before that column ran with the first value, 0.2 s
    blocks = attn["block_s"].dropna() if "block_s" in attn else pd.Series([], dtype=float)
    M["BenchBlockS"] = str(fmt(float(blocks.max()) if len(blocks) else LEGACY_BLOCK_S, 1))
    # passes per case and round at least (1 for benches without the column)
    least = attn["min_passes"].dropna() if "min_passes" in attn else pd.Series([], dtype=float)
    M["BenchMinPasses"] = str(int(least.max()) if len(least) else 1)
    M["BenchTargetMinT"] = str(fmt(TARGET_MIN_T))
    M["BenchTargetRatio"] = str(fmt(TARGET_RATIO, 3))
    # the timing process kept the memory it freed (bench.steady_allocator), and the most minor
    # page faults a timed pass of a fused case took (median over its rounds); benchmarks
    # written before these columns ran with glibc's adaptive defaults and counted no faults
    steady = attn["steady_allocator"].dropna() if "steady_allocator" in attn else []
    M["BenchSteadyAllocator"] = "1" if len(steady) and bool(steady.astype(bool).all()) else "0"
    faults = (attn[attn.impl.eq("fast")]["faults_per_pass"].dropna()
              if "faults_per_pass" in attn else pd.Series([], dtype=float))
    worst = int(round(float(faults.max()))) if len(faults) else None
    M["BenchFaultsMax"] = "n/a" if worst is None else str(fmt(worst))
    M["BenchFaultsText"] = ("n/a" if worst is None else "no minor page fault" if worst == 0
                            else f"at most {fmt(worst)} minor page faults")
    return M


# --------------------------------------------------------------------------------------------
# The GPU kernel sweep (offbyone.gpu_check.kernel_sweep), when a check has run one

def _kernel(name: str) -> str:
    """'cuda_flash', 'FLASH_ATTENTION' -> 'flash'."""
    return str(name).removeprefix("cuda_").removeprefix("cpu_").split("_")[0].lower()


def load_sweep(path) -> tuple[dict | None, dict]:
    """(the sweep, the check's provenance) from a check.json, or (None, {}) where there is no
    such file or it has no sweep."""
    path = Path(path)
    if not path.is_file():
        return None, {}
    check = json.loads(path.read_text())
    return check.get("kernel_sweep"), check.get("provenance", {})


def sweep_outputs(sweep: dict | None, provenance: dict, table_path, figure_path) -> dict[str, str]:
    """The sweep's table and figure (removed where there is no sweep, so that an older build's
    do not linger) and its macros; BenchGpuSweep is 1 when there is one."""
    table_path, figure_path = Path(table_path), Path(figure_path)
    summary = pd.DataFrame((sweep or {}).get("summary") or [])
    if summary.empty:
        for p in (table_path, figure_path):
            p.unlink(missing_ok=True)
        return {"BenchGpuSweep": "0"}
    rows = []
    for r in summary.sort_values(["variant", "D", "T"]).to_dict("records"):
        dflt = r.get("default_time_ratio")
        mem = r.get("memory_ratio")
        rows.append({"": VARIANT_LABELS.get(r["variant"], r["variant"]),
                     D_HEAD: Tex(f"${int(r['D'])}$"), T_HEAD: Tex(f"${fmt(int(r['T']))}$"),
                     "softmax": _kernel(r["softmax_backend"]),
                     "ms": Tex(f"${fmt(r['softmax_ms'], 3)}$"),
                     "route": _kernel(r["fastest_route"]),
                     "time": Tex(f"$\\times{r['time_ratio']:.3f}$"),
                     "memory": (Tex(f"$\\times{fmt(mem, 3)}$")
                                if mem is not None and not pd.isna(mem) else Tex("--")),
                     "default": (Tex(f"{_kernel(r['default_route'])} $\\times{dflt:.3f}$")
                                 if dflt is not None and not pd.isna(dflt) else Tex("--"))})
    latex_table(rows, table_path, column_format="lrrlrlrrl")
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    for (v, D), g in summary.groupby(["variant", "D"]):
        g = g.sort_values("T")
        ax.plot(g["T"], g.time_ratio, "o-", label=f"{VARIANT_LABELS.get(v, v)}, D={D}")
    ax.axhline(TARGET_RATIO, color="0.5", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="sequence length T", ylabel="time / fastest softmax")
    ax.set_xticks(sorted(summary["T"].unique()), [str(t) for t in sorted(summary["T"].unique())])
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_figure(figure_path, fig)
    plt.close(fig)
    worst = summary.loc[summary.time_ratio.idxmax()]
    at_target = summary[summary["T"] >= TARGET_MIN_T]
    mem = summary.get("memory_ratio")
    return {"BenchGpuSweep": "1",
            "BenchGpuDevice": str(provenance.get("device_name", sweep.get("device", "?"))),
            "BenchGpuCommit": str(provenance.get("git_sha", "?"))[:10],
            "BenchGpuDtype": str(sweep.get("dtype", "?")),
            "BenchGpuRepeats": str(sweep.get("repeats", "?")),
            "BenchGpuB": str(sweep.get("B", "?")), "BenchGpuH": str(sweep.get("H", "?")),
            "BenchGpuWorstRatio": f"{worst.time_ratio:.3f}",
            "BenchGpuWorstCase": f"{VARIANT_LABELS.get(worst.variant, worst.variant)}, "
                                 f"$D = {int(worst.D)}$, $T = {fmt(int(worst['T']))}$",
            "BenchGpuTargetMet": "1" if bool((at_target.time_ratio <= TARGET_RATIO).all()) else "0",
            "BenchGpuWorstMemoryRatio": (str(fmt(float(np.nanmax(mem)), 3))
                                         if mem is not None and mem.notna().any() else "n/a")}
