"""The study where the disease grows (issue 36, item 2): Guo et al.'s Bigram-Backcopy model at
the declared dose, lr 1e-2, for 3,000 steps, softmax, softmax1 and the learned sink on five
paired seeds (configs/testbed_outliers.yaml), with its exploratory companions on two seeds each:
softmax and softmax1 under SGD (Guo et al.'s control, the profile's ablation) and the rival
fixes (configs/testbed_outliers_rivals.yaml). Read from the committed results alone, never
rerun; without them the section is left out and said so.

In order: the disease criterion on the softmax baseline (fixed before the runs,
`stats.DISEASE_CRITERION`), the primary endpoints declared for this study
(`stats.STUDY_PRIMARY`, Holm within each comparison), each quantization gap over every position
and over the positions after a trigger (where the copy needs attention), which quantized tensor
pays (`attribution`), and the exploratory companions. Every sentence is chosen by its numbers.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..profiles import rehearsal_of
from . import figures as F
from .attribution import _the, carry_sentence, contributions
from .latex import Tex, fmt, latex_escape, macro_name, num
from .long import committed
from .lr_dose import CITED_BY
from .peak import block_peaks
from .primary import PRIMARY_COLUMNS, margins, primary_rows
from .prose import _and, _within_margin, primary_sentence
from .results import final, read_csv
from .stats import (ALPHA, DISEASE_CRITERION, DISEASE_SIGNS, NOTHING_TO_FIX, PRIMARY,
                    STUDY_PRIMARY, VARIANT_LABELS, disease_appeared, paired_difference,
                    primary_tests)
from .synthesis import _millions, _params

PROFILE = "testbed_outliers"
RIVALS = "testbed_outliers_rivals"
SGD = "testbed_outliers_sgd"
PEAK, GAP = DISEASE_CRITERION            # the BOS peak (threshold 5) and the W8A8 gap (0.05)
# a companion whose loss is this far above AdamW's softmax on the same seeds trained less: said
UNDERTRAINED_NATS = 0.05
# the settings whose gap is reported over every position and after a trigger
GAP_SETTINGS = ("W8A8", "W16A6", "W8A6", "W16A4", "W8A4", "W4A4")
# the exploratory table's rows: (column, label)
EXPLORE_ROWS = (("val_loss", "validation loss (nats)"), ("copy_loss", "loss after a trigger (nats)"),
                ("bos_resid_ratio", "BOS residual peak"), ("max_inf_norm", "max. inf-norm"),
                ("max_kurtosis", "max. kurtosis"), ("outlier_share_pos0", "outliers at BOS"),
                ("gap_W16A6", "W16A6 gap (nats)"), ("gap_trigger_W16A6", "W16A6 gap after a trigger"),
                ("gap_W8A4", "W8A4 gap (nats)"))


def lr_words(lr: float) -> str:
    """A learning rate in words a table and a figure can both print: '0.01', '0.0003'."""
    return f"{lr:g}"


def _optional(root, name: str, file: str) -> pd.DataFrame:
    path = root / "results" / name / file
    return read_csv(path) if path.exists() else pd.DataFrame()


def _sign_note() -> str:
    """The criterion's W8A8 threshold set beside the signs table's, where they differ: two
    declarations, two numbers, said so that neither reads as a slip."""
    sign = next((sg.threshold for sg in DISEASE_SIGNS if sg.metric == GAP.metric), None)
    if sign is None or sign == GAP.threshold:
        return ""
    return f", where \\cref{{tab:disease}} calls ${sign:g}$ a gap"


def criterion_sentence(fin: pd.DataFrame) -> tuple[Tex, dict]:
    """The disease criterion on the softmax baseline's final checkpoints (seed means, as it was
    fixed), then how many seeds passed the peak's threshold on their own."""
    verdict = disease_appeared(fin)
    peak = verdict["values"][PEAK.name]
    gap = verdict["values"][GAP.name]
    base = fin[fin.variant == "softmax"].sort_values("seed")
    passed = base[base.bos_resid_ratio >= PEAK.threshold]
    n = len(base)
    seeds = ((f"{len(passed)} of its {n} seeds passed the threshold on their own" if len(passed)
              else f"none of its {n} seeds passed the threshold on its own")
             + (f" (seed{'s' if len(passed) > 1 else ''} "
                f"{_and([str(int(s)) for s in passed.seed])})" if 0 < len(passed) < n else "")
             + f"; the seeds' peaks ran from ${fmt(base.bos_resid_ratio.min())}$ to "
               f"${fmt(base.bos_resid_ratio.max())}$")
    if verdict["appeared"]:
        met = [s for s, ok in verdict["signs"].items() if ok]
        text = (f"By the criterion fixed before the runs, the softmax baseline has the disease "
                f"({_and(met)}): its BOS residual peak averaged ${fmt(peak)}$ times the median "
                f"position (threshold ${PEAK.threshold:g}$) and its W8A8 gap ${fmt(gap)}$ nats "
                f"(threshold ${GAP.threshold:g}${_sign_note()}); {seeds}.")
    else:
        text = (f"By the criterion fixed before the runs, the softmax baseline does not have the "
                f"disease: its BOS residual peak averaged ${fmt(peak)}$ times the median "
                f"position against a threshold of ${PEAK.threshold:g}$, and its W8A8 gap "
                f"${fmt(gap)}$ nats against ${GAP.threshold:g}${_sign_note()}; {seeds}.")
    inf = base.max_inf_norm
    text += (f" Its largest activations still reached ${fmt(inf.min())}$ to "
             f"${fmt(inf.max())}$ in inf-norm"
             if inf.min() >= 100 and not verdict["appeared"] else
             f" Its largest activations reached ${fmt(inf.min())}$ to ${fmt(inf.max())}$ in "
             "inf-norm")
    if "avg_inf_norm" in base:
        ratio = base.max_inf_norm.mean() / base.avg_inf_norm.mean()
        text += (f", ${fmt(ratio, 2)}$ times the average module's ${fmt(base.avg_inf_norm.mean())}$"
                 + (": the whole residual stream grew, more than a few outliers." if ratio < 5
                    else ": a few massive activations stand out."))
    else:
        text += "."
    return Tex(text), verdict


def against_sentence(tests: pd.DataFrame, others, table: str = "tab:outlier-primary",
                     base: str = "softmax") -> str:
    """What the variants did against softmax, as prose: the decided verdicts (lower, higher,
    equivalent, no gap to close) and then which way the open estimates point, the variants said
    together where they agree (the table gives each effect and test)."""
    by_other = {o: tests[tests.other == o] for o in others}
    same = len(others) > 1 and len({tuple(t.sort_values("metric").verdict) for t in
                                    by_other.values()}) == 1
    groups = [(others, by_other[others[0]])] if same else [([o], by_other[o]) for o in others]
    out = []
    for names, t in groups:
        who = _and([_the(o) for o in names])
        who = who[0].upper() + who[1:]
        rows = t.to_dict("records")
        ups = [r["label"] for r in rows if r["verdict"] == "inconclusive" and r["diff"] > 0]
        downs = [r["label"] for r in rows if r["verdict"] == "inconclusive" and r["diff"] <= 0]
        split = []      # open estimates the variants point different ways: said as a split
        if same:        # every variant's open estimate must point the same way to be said so
            for r in rows:
                dirs = {bool(x["diff"] > 0) for x in tests[(tests.metric == r["metric"])
                                                         & tests.other.isin(names)].to_dict("records")}
                if r["verdict"] == "inconclusive" and len(dirs) > 1:
                    (ups if r["label"] in ups else downs).remove(r["label"])
                    split.append(r["label"])
        parts, differ = [], []
        for verdict in ("lower", "higher"):
            hit = [r for r in rows if r["verdict"] == verdict]
            small = [r["label"] for r in hit if "p_tost_holm" in r and _within_margin(r)]
            large = [r["label"] for r in hit if r["label"] not in small]
            if large:
                differ.append(f"a {verdict} {_and(large)}")
            if small:     # detectable, but inside the margin: said together, once
                differ.append(f"a {verdict} {_and(small)}, "
                              + ("both " if len(small) == 2 else "all " if len(small) > 2 else "")
                              + "by less than the margin")
        if differ:
            parts.append("had " + _and(differ))
        eq = [r["label"] for r in rows if r["verdict"] == "equivalent"]
        if eq:
            parts.append(f"matched {base} within the margin in the {_and(eq)}")
        nothing = [r["label"] for r in rows if r["verdict"] == NOTHING_TO_FIX]
        if nothing:
            parts.append(f"had no {_and(nothing)} to close ({base}'s own lay within the margin "
                         "of zero)")
        lead = f"{who} " + _and(parts) if parts else who
        their = "their" if len(names) > 1 else "its"
        if ups or downs or split:
            est = [f"of the {_and(ups)} pointed higher"] if ups else []
            est += [f"of the {_and(downs)} {'' if ups else 'pointed '}lower"] if downs else []
            est += [f"of the {_and(split)} split between them"] if split else []
            out.append(f"{lead}; {their} estimates " + _and(est) + ", none significant after "
                       f"Holm's correction (\\cref{{{table}}}).")
        else:
            out.append(lead + f" (\\cref{{{table}}}).")
    return " ".join(out)


def uncorrected_sentence(tests: pd.DataFrame) -> Tex:
    """The endpoints whose paired t-test is below ALPHA before Holm's correction but not after:
    said with their estimate, interval and both p-values, so that a reader sees what the
    correction took away (and nothing is claimed from it)."""
    rows = tests[(tests.p < ALPHA) & (tests.p_holm >= ALPHA)].to_dict("records")
    if not rows:
        return Tex("")
    parts = []
    for r in rows:
        if r["scale"] == "log":
            eff = (f"{fmt(r['ratio'], 3)} times softmax's (95\\% CI ${fmt(r['ratio_low'], 3)}$ "
                   f"to ${fmt(r['ratio_high'], 3)}$)")
        else:
            eff = (f"${fmt(abs(r['diff']), 2)}$ {'above' if r['diff'] > 0 else 'below'} softmax's "
                   f"(95\\% CI ${fmt(r['ci_low'], 2)}$ to ${fmt(r['ci_high'], 2)}$)")
        parts.append(f"{_the(r['other'])}'s {r['label']} was {eff}, $p = "
                     f"{fmt(r['p'], 2)}$ uncorrected and ${fmt(r['p_holm'], 2)}$ after Holm")
    return Tex("Before the correction " + "; ".join(parts) + ". None of these is a finding: "
               f"each comparison's family has {tests.metric.nunique()} endpoints.")


def gap_rows(fin: pd.DataFrame, variants) -> list[dict]:
    """Each setting's gap over every position and after a trigger, per variant (means over
    seeds)."""
    rows = []
    for s in GAP_SETTINGS:
        all_, trig = f"gap_{s}", f"gap_trigger_{s}"
        if all_ not in fin or trig not in fin:
            continue
        row = {"bit widths": s}
        for v in variants:
            sub = fin[fin.variant == v]
            row[Tex(f"{VARIANT_LABELS[v]}: all")] = num(sub[all_].mean())
            row[Tex(f"{VARIANT_LABELS[v]}: trigger")] = num(sub[trig].mean())
        rows.append(row)
    return rows


def gap_sentence(fin: pd.DataFrame, others) -> Tex:
    """Where quantization costs more: after a trigger or over every position (softmax), and
    softmax1's and the sink's trigger gaps against softmax's (exploratory, paired)."""
    base = fin[fin.variant == "softmax"]
    present = [s for s in GAP_SETTINGS if f"gap_trigger_{s}" in fin]
    if not present:
        return Tex("")
    ratios = {s: base[f"gap_trigger_{s}"].mean() / base[f"gap_{s}"].mean() for s in present
              if base[f"gap_{s}"].mean() > 0}
    more = [s for s, r in ratios.items() if r > 1]
    out = []
    if ratios:
        top = max(ratios, key=ratios.get)
        out.append(f"Under softmax, the gap after a trigger exceeded the gap over every position "
                   f"at {len(more)} of {len(ratios)} settings (most at {top}, "
                   f"${fmt(base[f'gap_trigger_{top}'].mean())}$ against "
                   f"${fmt(base[f'gap_{top}'].mean())}$ nats)")
    for s in [x for x in ("W16A6", "W8A4") if x in present]:
        parts = []
        for v in others:
            d = paired_difference(fin, f"gap_trigger_{s}", v)
            if d["n"] > 1 and d["ci_low"] == d["ci_low"]:
                parts.append(f"{_the(v)}'s ${fmt(d['other_mean'])}$ (difference "
                             f"${fmt(d['diff'])}$, 95\\% CI ${fmt(d['ci_low'])}$ to "
                             f"${fmt(d['ci_high'])}$, $p = {fmt(d['p'], 2)}$)")
        if parts:
            out.append(f"after a trigger at {s}, softmax's gap was "
                       f"${fmt(base[f'gap_trigger_{s}'].mean())}$ nats against {_and(parts)}")
    return Tex("; ".join(out) + ". These comparisons are exploratory: paired by seed, "
               "uncorrected.")


def explore_frames(fin: pd.DataFrame, sgd: pd.DataFrame, rivals: pd.DataFrame):
    """The exploratory table's columns: the primary study's variants (all seeds), each rival
    (its two seeds) and each variant under SGD, as (label, final checkpoints, seeds)."""
    cols = [(VARIANT_LABELS[v], fin[fin.variant == v]) for v in VARIANT_LABELS if v in set(fin.variant)]
    if len(rivals):
        cols += [(VARIANT_LABELS[v], rivals[rivals.variant == v])
                 for v in VARIANT_LABELS if v in set(rivals.variant) and v not in set(fin.variant)]
    if len(sgd):
        cols += [(f"{VARIANT_LABELS[v]}, SGD", sgd[sgd.variant == v])
                 for v in VARIANT_LABELS if v in set(sgd.variant)]
    return cols


def explore_rows(cols) -> list[dict]:
    rows = [{"": "seeds", **{lab: str(int(f.seed.nunique())) for lab, f in cols}}]
    for col, label in EXPLORE_ROWS:
        if all(col in f for _, f in cols):
            rows.append({"": label, **{lab: num(f[col].mean()) for lab, f in cols}})
    return rows


def _ratio(a: pd.Series, b: pd.Series) -> float:
    """The ratio of geometric means of two sets of positive values."""
    return float(math.exp(np.log(b).mean() - np.log(a).mean()))


def explore_sentence(fin: pd.DataFrame, sgd: pd.DataFrame, rivals: pd.DataFrame) -> Tex:
    """The companions in words: SGD's softmax against Adam's on the same seeds, and each rival
    against the softmax of its own profile on the same seeds (geometric means)."""
    out = []
    if len(sgd) and "softmax" in set(sgd.variant):
        s = sgd[sgd.variant == "softmax"]
        a = fin[(fin.variant == "softmax") & fin.seed.isin(s.seed)]
        out.append(f"Under SGD (Guo et al.'s control) softmax's BOS peak was "
                   f"${fmt(s.bos_resid_ratio.mean())}$ against ${fmt(a.bos_resid_ratio.mean())}$ "
                   f"under AdamW on the same {_seeds(len(s))}, its largest activation "
                   f"${fmt(s.max_inf_norm.mean())}$ against ${fmt(a.max_inf_norm.mean())}$, and "
                   f"its validation loss ${fmt(s.val_loss.mean(), 4)}$ against "
                   f"${fmt(a.val_loss.mean(), 4)}$ nats"
                   + (", so at this rate SGD also trained less, and the control confounds the "
                      "optimiser with how far training got"
                      if s.val_loss.mean() - a.val_loss.mean() > UNDERTRAINED_NATS else ""))
    if len(rivals) and "softmax" in set(rivals.variant):
        base = rivals[rivals.variant == "softmax"]
        parts = []
        for v in [v for v in VARIANT_LABELS if v in set(rivals.variant) and v != "softmax"]:
            r = rivals[rivals.variant == v]
            b = base[base.seed.isin(r.seed)]
            parts.append(f"{_the(v)} reached ${fmt(_ratio(b.max_inf_norm, r.max_inf_norm))}$ "
                         f"times softmax's largest activation, with a BOS peak of "
                         f"${fmt(r.bos_resid_ratio.mean())}$ and a loss of "
                         f"${fmt(r.val_loss.mean(), 4)}$ nats")
        if parts:
            out.append(f"of the rival fixes on {int(base.seed.nunique())} seeds, "
                       + _and(parts) + f" (softmax on those seeds: peak "
                       f"${fmt(base.bos_resid_ratio.mean())}$, loss ${fmt(base.val_loss.mean(), 4)}$)")
    if not out:
        return Tex("")
    text = "; ".join(out)
    n = min(int(f.seed.nunique()) for f in (sgd, rivals) if len(f))
    return Tex(text[0].upper() + text[1:] + f". {_seeds(n).capitalize()} allow"
               f"{'s' if n == 1 else ''} no test: these are descriptions.")


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}" if n > 2 else \
        {1: "one seed", 2: "two seeds"}.get(n, f"{n} seeds")


def figure(R, df: pd.DataFrame, curve: pd.DataFrame, variants) -> None:
    """The BOS peak over training (one line per seed), the largest activation at a quarter,
    half and all of training, and the W16A6 gap over every position and after a trigger."""
    fig, axes = F.panels(3, width=6.5, height=2.5)
    ax = axes[0]
    for v in variants:
        for _, g in curve[curve.variant == v].groupby("seed"):
            ax.plot(g.step, g.bos_ratio, color=F.COLORS[v], lw=0.8, alpha=0.8)
        ax.plot([], [], color=F.COLORS[v], label=VARIANT_LABELS[v])
    ax.axhline(PEAK.threshold, ls="--", lw=0.8, color="k")
    ax.set(xlabel="step", ylabel="BOS peak (ratio to median)", yscale="log")
    F.plain_log_ticks(ax)
    # the variants' legend above the panels: the seeds' lines fill the left panel
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="upper center", frameon=False,
               ncol=3, bbox_to_anchor=(0.5, 1.0))
    ax = axes[1]
    for i, v in enumerate(variants):
        g = df[df.variant == v]
        x = g.fraction * (1 + 0.06 * (i - 1))
        ax.scatter(x, g.max_inf_norm, s=10, color=F.COLORS[v], alpha=0.8)
        means = g.groupby("fraction").max_inf_norm.apply(lambda s: float(np.exp(np.log(s).mean())))
        ax.plot(means.index * (1 + 0.06 * (i - 1)), means.values, color=F.COLORS[v], lw=0.8)
    ax.set(xlabel="fraction of training", ylabel="max. inf-norm", yscale="log", xscale="log")
    ax.set_xticks([0.25, 0.5, 1.0], ["¼", "½", "1"])
    ax.xaxis.set_minor_formatter(F.matplotlib.ticker.NullFormatter())
    F.plain_log_ticks(ax)
    ax = axes[2]
    fin = final(df)
    for i, v in enumerate(variants):
        g = fin[fin.variant == v]
        for j, (col, marker) in enumerate((("gap_W16A6", "o"), ("gap_trigger_W16A6", "^"))):
            if col in g:
                ax.scatter(np.full(len(g), i + (j - 0.5) * 0.3), g[col], s=14, marker=marker,
                           color=F.COLORS[v], alpha=0.8)
    ax.set_xticks(range(len(variants)), [VARIANT_LABELS[v].replace(" ", "\n") for v in variants],
                  fontsize=8)
    ax.set(ylabel="W16A6 gap (nats)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.yaxis.set_major_formatter(F.matplotlib.ticker.FormatStrFormatter("%g"))
    Line2D = F.matplotlib.lines.Line2D
    ax.legend(handles=[Line2D([], [], color="0.3", marker="o", ls="none", ms=4, label="all positions"),
                       Line2D([], [], color="0.3", marker="^", ls="none", ms=4, label="after a trigger")],
              fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_size_inches()[1]))
    R.figure(fig, "outlier-study")


def outlier_study(R) -> dict:
    """The section's tables, figure and macros; HasOutlierStudy 0 when the study's results are
    not committed. Leaves R.outlier_data (the synthesis's first study) when they are."""
    if (rehearsal_of(R.profile) or R.profile) not in CITED_BY:
        return {"HasOutlierStudy": "0"}          # its own paper, the smoke test and the rest
    got = committed(R, PROFILE)
    if got is None:
        print(f"results/{PROFILE}/runs.csv is not there: the paper leaves the study at the "
              f"disease's dose out (make reproduce PROFILE={PROFILE} makes it)")
        return {"HasOutlierStudy": "0"}
    df, prov = got
    fin = final(df)
    variants = [v for v in VARIANT_LABELS if v in set(fin.variant)]
    others = [v for v in variants if v != "softmax"]
    tests = primary_tests(fin, others, endpoints=STUDY_PRIMARY[PROFILE])
    lr = float(fin.lr.iloc[0])
    steps = int(fin.max_steps.iloc[0])
    label = f"testbed at lr {lr_words(lr)}"
    tests = tests.assign(study=label)
    R.derived(f"cited_{PROFILE}_primary.csv", tests)
    R.table(primary_rows(tests, label), "outlier_primary.tex", PRIMARY_COLUMNS)
    R.table(gap_rows(fin, variants), "outlier_gaps.tex", "l" + "r" * 2 * len(variants))
    sgd = _optional(R.root, PROFILE, f"ablation_{SGD}.csv")     # its final checkpoints
    rivals_got = committed(R, RIVALS)
    rivals = final(rivals_got[0]) if rivals_got else pd.DataFrame()
    cols = explore_frames(fin, sgd, rivals)
    R.table(explore_rows(cols), "outlier_explore.tex",
            "l" + ">{\\raggedleft\\arraybackslash}p{1.25cm}" * len(cols))
    curve = _optional(R.root, PROFILE, "bos_curve.csv")
    figure(R, df, block_peaks(curve) if len(curve) else
           pd.DataFrame(columns=["variant", "seed", "step", "bos_ratio"]), variants)
    groups = _optional(R.root, PROFILE, "quant_groups.csv")
    # the grouped gaps are measured on fewer windows than the study's gaps: said where they are
    where = (f"On its first {int(groups.windows.iloc[0])} validation windows "
             "(\\cref{sec:attribution} gives the method)"
             if len(groups) and "windows" in groups else f"At lr {lr_words(lr)}")
    criterion, verdict = criterion_sentence(fin)
    M = {"HasOutlierStudy": "1", "OutProfile": latex_escape(PROFILE), "OutLr": lr_words(lr),
         "OutSteps": fmt(steps), "OutNSeeds": fmt(int(fin.seed.nunique())),
         "OutLabel": latex_escape(label),
         "OutVariantList": _and([_the(v) for v in variants]),
         "OutCommit": latex_escape(str(prov.get("commit", "?"))[:10]),
         "OutPipelineMin": fmt(prov.get("pipeline_wall_s", float("nan")) / 60, 2),
         "OutBenchTokS": fmt(prov.get("bench_softmax_tokens_per_s") or float("nan"), 3),
         "OutCriterion": criterion, "OutDiseased": "1" if verdict["appeared"] else "0",
         "OutGaps": gap_sentence(fin, others),
         "OutAttribution": Tex(carry_sentence(contributions(groups), where) if len(groups) else ""),
         "OutHasAttribution": "1" if len(groups) else "0",
         "OutExplore": explore_sentence(fin, sgd, rivals),
         "OutHasExplore": "1" if (len(sgd) or len(rivals)) else "0",
         "OutExploreMissing": Tex(_missing_companions(sgd, rivals))}
    for r in tests.to_dict("records"):
        M[macro_name("OutPrimary", *r["metric"].split("_"), r["other"])] = primary_sentence(r)
    M["OutAgainst"] = Tex(against_sentence(tests, others) + " " + str(uncorrected_sentence(tests)))
    M["OutParams"] = _millions(_params(PROFILE, None)[0])
    M["OutMargins"] = margins(STUDY_PRIMARY[PROFILE][len(PRIMARY):])   # the study's own two
    M["OutPeakThreshold"] = f"{PEAK.threshold:g}"
    R.outlier_data = {"profile": PROFILE, "label": label, "where": f"at lr {lr_words(lr)}",
                       "tests": tests, "fin": fin, "diseased": verdict["appeared"],
                       "peak": verdict["values"][PEAK.name]}
    return M


def _missing_companions(sgd: pd.DataFrame, rivals: pd.DataFrame) -> str:
    gone = (["the SGD control"] if not len(sgd) else []) \
        + (["the rival fixes"] if not len(rivals) else [])
    if not gone:
        return ""
    return f" The runs of {_and(gone)} are not committed yet, and are left out."
