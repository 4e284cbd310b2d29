"""The primary endpoints (stats.PRIMARY, or a study's own in stats.STUDY_PRIMARY): each variant
against softmax with the paired t-test, the exact sign-flip permutation test, a bootstrap
interval, Holm within each comparison and TOST equivalence; their table (one row group per
study and variant) and the dose-response figure (every endpoint at 1/4, 1/2 and all of
training).
"""
from __future__ import annotations

import math

import pandas as pd

from . import figures as F
from .latex import GROUP, Tex, fmt, macro_name, num
from .prose import _fixed, _within_margin, primary_sentence, verdict_summary
from .stats import ALPHA, PRIMARY, VARIANT_LABELS, permutation_floor, primary_tests

# an endpoint's label in the tables, with the kind of mean its columns give
TABLE_LABELS = {"gap_W8A8": "W8A8 loss gap (nats)", "gap_W16A6": "W16A6 loss gap (nats)",
                "max_kurtosis": "max. kurtosis (geom.)", "max_inf_norm": "max. inf-norm (geom.)",
                "first_position": "attention on position 0",
                "val_loss": "validation loss (nats)",
                "bos_resid_ratio": "BOS residual peak (geom.)",
                "outlier_share_pos0": "outliers at BOS (share)"}
PRIMARY_COLUMNS = "lrrrrrrl"
# the dose figure's panel titles: short enough for six panels side by side at 8 points
PANEL_TITLES = {"gap_W8A8": "W8A8 gap", "gap_W16A6": "W16A6 gap", "max_kurtosis": "max. kurt.",
                "max_inf_norm": "max. inf-norm", "first_position": "attn. on pos. 0",
                "val_loss": "val. loss"}


def study_label(corpus_kind: str | None, steps: int | None = None) -> str:
    """What a study trains on, as the tables name it: natural text, or the synthetic testbed
    (with its steps when given)."""
    if corpus_kind == "synthetic":
        return "testbed" + (f", {steps:,} steps" if steps else "")
    return "natural text"


def primary_rows(tests: pd.DataFrame, study: str) -> list[dict]:
    """The table's rows: one group per variant of the study, then an endpoint a row."""
    rows = []
    for other in dict.fromkeys(tests.other):
        t = tests[tests.other == other]
        n = int(t.n.max())
        rows.append({GROUP: Tex(f"{study}: {VARIANT_LABELS[other]} against softmax, {n} paired "
                                f"seeds (sign-flip floor $p = {fmt(permutation_floor(n), 2)}$)")})
        rows += [primary_row(r) for r in t.to_dict("records")]
    return rows


def _p(x: float) -> Tex:
    if x != x:
        return Tex("--")
    return Tex("$<10^{-4}$") if x < 1e-4 else num(x, 2)


def primary_row(r: dict) -> dict:
    """One endpoint: the means (arithmetic, or geometric on the log scale), the effect with its
    95% interval, the permutation, Holm and TOST p, the verdict."""
    log = r["scale"] == "log"
    eff, lo, hi = (("ratio", "ratio_low", "ratio_high") if log else ("diff", "ci_low", "ci_high"))
    base, other = ((r["base_gmean"], r["other_gmean"]) if log else (r["base_mean"], r["other_mean"]))
    a, b = r[lo], r[hi]
    effect = (Tex(f"${_fixed(r[eff], a, b)}$ (${_fixed(a, a, b)}$, ${_fixed(b, a, b)}$)"
                  + (" $\\times$" if log else "")) if a == a else Tex("--"))
    return {"endpoint": TABLE_LABELS.get(r["metric"], r["label"]),
            "softmax": num(base), "variant": num(other),
            Tex("effect (95\\% CI)"): effect,
            Tex("$p$ perm."): _p(r["p_perm"]), Tex("Holm $p$"): _p(r["p_holm"]),
            Tex("TOST $p$"): _p(r["p_tost_holm"]),
            # a detected difference that the TOST also puts inside the margin says both (the
            # star is explained in the tables' captions)
            "verdict": Tex(r["verdict"] + ("$^{*}$" if _within_margin(r) else ""))}


def primary(R) -> pd.DataFrame:
    """The primary tests of the main study and of its testbed, their table and sentences."""
    studies = [(R.study_label, "", R.fin, R.others, R.endpoints)]
    _, _, tfin = R.testbed_frames()
    if tfin is not None:
        studies.append((study_label("synthetic"), "Tb", tfin,
                        [v for v in VARIANT_LABELS if v in set(tfin.variant) and v != "softmax"],
                        PRIMARY))
    M = R.sections["primary"] = {
        "Alpha": f"{ALPHA:g}", "PrimaryMargins": margins(R.endpoints),
        "PrimaryList": ", ".join(f"({i}) {ep.label}" for i, ep in enumerate(R.endpoints, 1)),
        "NPrimary": fmt(len(R.endpoints)),
        "PermFloor": fmt(permutation_floor(len(R.prof["seeds"])), 2)}
    frames, rows = [], []
    for study, prefix, fin, others, eps in studies:
        tests = primary_tests(fin, others, endpoints=eps).assign(study=study)
        frames.append(tests)
        R.primary_tests[study] = tests
        for r in tests.to_dict("records"):
            M[macro_name(prefix + "Primary", *r["metric"].split("_"), r["other"])] = \
                primary_sentence(r)
        rows += primary_rows(tests, study)
        for other in others:
            M[macro_name(prefix + "PrimarySummary", other)] = verdict_summary(tests, other)
    allt = pd.concat(frames, ignore_index=True)
    R.derived("primary.csv", allt)
    R.table(rows, "primary.tex", PRIMARY_COLUMNS)
    return allt[["study", "other", "metric", "diff", "ci_low", "ci_high", "p", "p_perm",
                 "p_holm", "p_tost_holm", "verdict"]]


def margins(endpoints=PRIMARY) -> str:
    """The equivalence margins of the primary endpoints, in words."""
    return "; ".join(
        f"{ep.label}: " + (f"a factor ${fmt(math.exp(ep.margin))}$" if ep.scale == "log"
                           else f"$\\pm{ep.margin:g}$" + (f" {ep.unit}" if ep.unit else ""))
        for ep in endpoints)


def dose(R) -> None:
    """Dose-response: every primary endpoint at the 1/4, 1/2 and final checkpoints, per
    variant, one row of panels per study."""
    tdf, _, _ = R.testbed_frames()
    rows = [(R.study_label, R.df)] + ([("testbed", tdf)] if tdf is not None else [])
    rows += [(label, df) for label, df in R.cited_runs.items()]
    fig, axes = F.plt.subplots(len(rows), len(PRIMARY), figsize=(6.5, 1.75 * len(rows) + 0.5),
                               squeeze=False)
    shown = []
    for (study, df), row in zip(rows, axes):
        V = [v for v in VARIANT_LABELS if v in set(df.variant)]
        shown += [v for v in V if v not in shown]
        for ax, ep in zip(row, PRIMARY):
            F.seed_lines(ax, df, "fraction", ep.metric, V, log=ep.scale == "log")
            ax.set_yscale("log" if ep.scale == "log" else "linear")
            if ep.scale == "log":
                F.plain_log_ticks(ax)
            ax.set_xticks([0.25, 0.5, 1.0], ["¼", "½", "1"] if study == rows[-1][0] else [])
            ax.tick_params(labelsize=8)
            ax.yaxis.get_offset_text().set_fontsize(7)
            if study == rows[0][0]:
                ax.set_title(PANEL_TITLES.get(ep.metric, ep.metric), fontsize=8)
        row[0].set_ylabel(study, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("training", fontsize=8)
    handles = [F.matplotlib.lines.Line2D([], [], color=F.COLORS[v], marker="o",
                                         label=VARIANT_LABELS[v]) for v in shown]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    R.figure(fig, "dose")
