"""The paper's section on Guo et al.'s first-position residual peak, for a profile whose runs
logged it over training (a BOS token: the GPU study, the CPU pilot): its growth with steps per
variant (figure), where it ended, and the disease criterion fixed before the runs
(`stats.DISEASE_CRITERION`). Every sentence is chosen by the numbers it states.
"""
from __future__ import annotations

import pandas as pd

from ..io import write_csv
from . import figures as F
from .latex import Tex, fmt, latex_escape, macro_name
from .results import bos_curve, read_csv
from ..profiles import rehearsal_of
from .stats import (CRITERION_PROFILES, DISEASE_CRITERION, VARIANT_LABELS, disease_appeared,
                    paired_difference)

PEAK_FILE = "bos_curve.csv"
PEAK_THRESHOLD = DISEASE_CRITERION[0].threshold


def peak_curve(report) -> pd.DataFrame | None:
    """The largest BOS ratio over the blocks at each logged step of each run (None without
    one): from the runs (written to results/<profile>/bos_curve.csv) or from that file."""
    path = report.resdir / PEAK_FILE
    if report.from_runs:
        curve = bos_curve(report.profile, report.runs_root)
        if curve.empty:
            return None
        write_csv(path, curve)
    elif path.exists():
        curve = read_csv(path)
    else:
        return None
    return block_peaks(curve)


def block_peaks(curve: pd.DataFrame) -> pd.DataFrame:
    """bos_curve rows as the largest BOS ratio over the blocks (layer 0 is the embedding) at
    each logged step of each run, with its validation loss."""
    blocks = curve[curve.layer >= 1]
    return (blocks.groupby(["variant", "seed", "step"], as_index=False)
            .agg(bos_ratio=("bos_ratio", "max"), val_loss=("val_loss", "first")))


def growth_sentence(curve: pd.DataFrame, variant: str) -> Tex:
    """'softmax's peak grew from a to b (c times)' from the first logged step to the last (seed
    means), the direction by the numbers: grew, shrank, or stayed within 5% of its start."""
    c = curve[curve.variant == variant].groupby("step").bos_ratio.mean()
    start, end = float(c.iloc[0]), float(c.iloc[-1])
    name = VARIANT_LABELS[variant]
    if abs(end / start - 1) < 0.05:
        verb = f"stayed near {fmt(start)}"
    else:
        verb = (f"{'grew' if end > start else 'shrank'} from {fmt(start)} to {fmt(end)} "
                f"({fmt(end / start, 2)} times)")
    return Tex(f"{name}'s peak {verb}")


def peak_section(report) -> dict:
    """The section's figure and macros (HasPeak 0 when the profile logged no peak, or is not
    one whose disease criterion was fixed before its runs)."""
    if (rehearsal_of(report.profile) or report.profile) not in CRITERION_PROFILES:
        return {"HasPeak": "0"}
    curve = peak_curve(report)
    if curve is None:
        return {"HasPeak": "0"}
    V = [v for v in VARIANT_LABELS if v in set(curve.variant)]
    fig, axes = F.panels(2, width=6.5, height=2.6)
    for v in V:
        for _, g in curve[curve.variant == v].groupby("seed"):
            axes[0].plot(g.step, g.bos_ratio, color=F.COLORS[v], lw=0.9, alpha=0.8)
        axes[0].plot([], [], color=F.COLORS[v], label=VARIANT_LABELS[v])
    axes[0].axhline(PEAK_THRESHOLD, ls="--", lw=0.8, color="k")
    axes[0].set(xlabel="step", ylabel="BOS / median position", yscale="log")
    ticker = F.matplotlib.ticker             # plain numbers on the log axis: 1, 1.5, 2, 3, 5 ...
    axes[0].yaxis.set_major_locator(ticker.FixedLocator([0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 50, 100]))
    axes[0].yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes[0].yaxis.set_minor_formatter(ticker.NullFormatter())
    axes[0].legend(fontsize=8)
    F.seed_lines(axes[1], curve, "step", "val_loss", V)
    axes[1].set(xlabel="step", ylabel="validation loss (nats)")
    fig.tight_layout()
    report.figure(fig, "peak")
    fin = report.fin
    verdict = disease_appeared(fin)
    ratio = verdict["values"]["first-position residual peak"]
    gap = verdict["values"]["W8A8 gap"]
    if verdict["appeared"]:
        met = [n for n, ok in verdict["signs"].items() if ok]
        disease = (f"The criterion for outliers fixed before the runs was met ({' and '.join(met)}): "
                   f"the softmax baseline's peak reached ${fmt(ratio)}$ times the median position "
                   f"(threshold ${fmt(PEAK_THRESHOLD)}$) and its W8A8 gap ${fmt(gap)}$ nats "
                   f"(threshold ${fmt(DISEASE_CRITERION[1].threshold)}$).")
    else:
        disease = (f"The criterion for outliers fixed before the runs was not met: the softmax "
                   f"baseline's peak reached ${fmt(ratio)}$ times the median position against "
                   f"a threshold of ${fmt(PEAK_THRESHOLD)}$, and its W8A8 gap ${fmt(gap)}$ nats "
                   f"against ${fmt(DISEASE_CRITERION[1].threshold)}$. Below the threshold, "
                   f"equivalence on the quantization endpoints means the baseline had nothing "
                   f"to fix.")
    M = {"HasPeak": "1", "PeakSteps": fmt(int(curve.step.max())),
         "PeakThreshold": fmt(PEAK_THRESHOLD), "PeakDisease": Tex(disease),
         "PeakGrowth": Tex("; ".join(growth_sentence(curve, v) for v in V)),
         "PeakProfile": latex_escape(report.profile)}
    n = fin[fin.variant == "softmax"].seed.nunique()
    for v in V:
        M[macro_name("PeakRatio", v)] = fmt(fin[fin.variant == v].bos_resid_ratio.mean())
        if v != "softmax":
            res = paired_difference(fin, "bos_resid_ratio", v)
            M[macro_name("PeakDiff", v)] = Tex(
                f"{VARIANT_LABELS[v]} minus softmax ${fmt(res['diff'])}$"
                + (f" (95\\% CI ${fmt(res['ci_low'])}$ to ${fmt(res['ci_high'])}$, {n} seeds)"
                   if n > 2 else f" ({n} seed{'s' * (n != 1)}: too few for an interval or a test)"))
    return M
