"""The disease's dose-response in learning rate (issue 36, item 1): Guo et al.'s Bigram-Backcopy
model trained at five constant learning rates, softmax and softmax1 on two paired seeds each,
one profile per rate (configs/testbed_lr*.yaml, committed under results/<profile>/). Read from
the committed results alone, never rerun; a rate whose results are not there is left out and
said so. Two seeds allow no test: the section describes, seeds as points.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures as F
from ..profiles import load_profile, rehearsal_of
from .latex import GROUP, Tex, fmt, num
from .prose import _and
from .results import final, read_csv
from .stats import DISEASE_CRITERION, VARIANT_LABELS

# the papers that cite the disease studies on two cores (the dose-response, besides the dose
# profiles' own, and testbed_outliers): the cpu paper and the GPU study's, which repeats them at
# width 256; the smoke test and the rest do not
CITED_BY = ("cpu", "gpu")
# the dose profiles, lowest rate first; testbed_lr is the primary study's declared dose
DOSE_PROFILES = ("testbed_lr3e-4", "testbed_lr1e-3", "testbed_lr3e-3", "testbed_lr",
                 "testbed_lr3e-2")
PEAK = DISEASE_CRITERION[0]          # Guo et al.'s BOS peak, threshold 5
# a run "did not train" when its final validation loss is this far above the best run's
NOT_TRAINED_NATS = 0.5
# (column, label, log scale) of the figure's panels
PANELS = (("bos_resid_ratio", "BOS residual peak", True),
          ("max_inf_norm", "max inf-norm", True),
          ("max_kurtosis", "max kurtosis", True),
          ("gap_W16A6", "W16A6 gap (nats)", True),
          ("gap_W8A4", "W8A4 gap (nats)", True),
          ("val_loss", "validation loss (nats)", False))


def dose_frame(root, profiles=DOSE_PROFILES) -> tuple[pd.DataFrame, list[str]]:
    """Every measured checkpoint of the dose profiles whose results are committed (with their
    `lr` column), and the names of those that are not."""
    frames, missing = [], []
    for name in profiles:
        path = root / "results" / name / "runs.csv"
        if not path.exists():
            missing.append(name)
            continue
        df = read_csv(path)
        frames.append(df.assign(profile=name))
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), missing


def missing_rates(names: list[str]) -> list[float]:
    """The learning rates of dose profiles, as their profiles set them."""
    return sorted(float(load_profile(n)["train"]["lr"]) for n in names)


def missing_sentence(missing: list[str]) -> Tex:
    """' The rates 3e-3 and 7e-3 have no committed results yet and are left out.' ('' if none):
    the dose profiles whose results are not there, by their learning rates."""
    if not missing:
        return Tex("")
    many = len(missing) > 1
    return Tex(f" The {'rates' if many else 'rate'} "
               f"{_and([f'${_lr(x)}$' for x in missing_rates(missing)])} "
               f"{'have' if many else 'has'} no committed results yet and "
               f"{'are' if many else 'is'} left out.")


def _lr(x: float) -> str:
    """A learning rate as a writer prints it: 3e-4, 1e-2."""
    m, e = f"{x:.0e}".split("e")
    return f"{m}\\mathrm{{e}}{{-}}{int(e[1:])}" if e.startswith("-") else f"{x:g}"


def _scatter(ax, fin: pd.DataFrame, col: str, variants, log: bool) -> None:
    """Seeds as points at each rate (variants side by side), seed means joined by a line."""
    rates = sorted(fin.lr.unique())
    for i, v in enumerate(variants):
        g = fin[fin.variant == v]
        shift = 1.0 + 0.08 * (i - (len(variants) - 1) / 2)       # side by side on a log axis
        ax.scatter(g.lr * shift, g[col], s=12, color=F.COLORS[v], alpha=0.8,
                   label=VARIANT_LABELS[v])
        means = g.groupby("lr")[col].mean().reindex(rates)
        ax.plot(np.array(rates) * shift, means, color=F.COLORS[v], lw=0.8)
        if col == "max_inf_norm" and "inner_max_inf_norm" in g:   # without the last residual
            ax.scatter(g.lr * shift, g.inner_max_inf_norm, s=12, facecolors="none",
                       edgecolors=F.COLORS[v], alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlim(min(rates) / 1.8, max(rates) * 1.8)
    if log:
        ax.set_yscale("log")
        F.plain_log_ticks(ax)
    ax.set_xticks(rates, [f"{r:.0e}".replace("e-0", "e-") for r in rates], fontsize=8)
    ax.xaxis.set_minor_formatter(F.matplotlib.ticker.NullFormatter())


def dose_figure(R, fin: pd.DataFrame, variants, name: str = "lr-dose", panels=PANELS) -> None:
    fig, axes = F.plt.subplots(2, 3, figsize=(6.5, 4.4))
    for ax, (col, label, log) in zip(axes.flat, panels):
        _scatter(ax, fin, col, variants, log and bool((fin[col] > 0).all()))
        ax.set_title(label, fontsize=9)
        if col == "bos_resid_ratio":
            ax.axhline(PEAK.threshold, ls="--", lw=0.8, color="k")
    for ax in axes[1]:
        ax.set_xlabel("learning rate")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    R.figure(fig, name)


def first_dose(means: pd.DataFrame, variant: str, col: str, threshold: float) -> float | None:
    """The lowest rate at which `variant`'s seed mean of `col` reached `threshold`."""
    m = means[(means.variant == variant) & (means[col] >= threshold)]
    return float(m.lr.min()) if len(m) else None


def dose_rows(means: pd.DataFrame, variants) -> list[dict]:
    rows = []
    for lr, g in means.groupby("lr", sort=True):
        rows.append({GROUP: Tex(f"lr ${_lr(lr)}$")})
        for v in variants:
            r = g[g.variant == v]
            if not len(r):
                continue
            r = r.iloc[0]
            rows.append({"variant": VARIANT_LABELS[v], "loss": num(r.val_loss),
                         "BOS peak": num(r.bos_resid_ratio), "inf-norm": num(r.max_inf_norm),
                         "w/o last": num(r.inner_max_inf_norm), "kurtosis": num(r.max_kurtosis),
                         "W8A8": num(r.gap_W8A8), "W16A6": num(r.gap_W16A6),
                         **({"W16A6 copy": num(r.gap_trigger_W16A6)}
                            if "gap_trigger_W16A6" in means else {}),
                         "W8A4": num(r.gap_W8A4)})
    return rows


def _n(x: float) -> str:
    """A threshold or a round quantity as a writer prints it: 5, 0.5 (not 5.00, 0.500)."""
    return f"{x:g}"


def dose_sentences(means: pd.DataFrame, fin: pd.DataFrame, variants) -> Tex:
    """Where the peak passed the criterion's threshold for each variant, and which rates did
    not train: each clause chosen by its numbers."""
    out = []
    for v in variants:
        at = first_dose(means, v, "bos_resid_ratio", PEAK.threshold)
        name = VARIANT_LABELS[v]
        top = means[means.variant == v].bos_resid_ratio.max()
        lr_top = float(means[means.variant == v].set_index("lr").bos_resid_ratio.idxmax())
        seeds = fin[(fin.variant == v) & (fin.lr == lr_top)].bos_resid_ratio
        spread = (f"; its seeds ${fmt(seeds.min())}$ to ${fmt(seeds.max())}$"
                  if len(seeds) > 1 else "")
        if at is None:
            out.append(f"{name}'s stayed below {_n(PEAK.threshold)} times the median position "
                       f"at every rate (largest ${fmt(top)}$ at lr ${_lr(lr_top)}${spread})")
        else:
            out.append(f"{name}'s first reached {_n(PEAK.threshold)} times the median position "
                       f"at lr ${_lr(at)}$ (largest ${fmt(top)}$ at lr ${_lr(lr_top)}${spread})")
    text = "In seed means, the BOS peak of " + "; ".join(out).replace("'s ", " ", 1) + "."
    best = fin.val_loss.min()
    bad = fin[fin.val_loss > best + NOT_TRAINED_NATS]
    if len(bad):
        runs = [f"{VARIANT_LABELS[r.variant]} seed {int(r.seed)} at lr ${_lr(r.lr)}$ "
                f"(loss ${fmt(r.val_loss, 3)}$)" for r in bad.itertuples()]
        text += (f" Some runs did not train, ending more than {_n(NOT_TRAINED_NATS)} nats above "
                 f"the best run's validation loss of ${fmt(best, 3)}$: {_and(runs)}.")
    else:
        worst = fin.loc[fin.val_loss.idxmax()]
        text += (f" Every run trained: no final validation loss lies more than "
                 f"{_n(NOT_TRAINED_NATS)} nats above the best run's ${fmt(best, 3)}$; the highest, "
                 f"${fmt(worst.val_loss, 3)}$, is {VARIANT_LABELS[worst.variant]} seed "
                 f"{int(worst.seed)} at lr ${_lr(worst.lr)}$.")
    return Tex(text)


def lr_dose(R) -> dict:
    """The section's table, figure and macros; HasLrDose 0 when no dose profile's results are
    committed."""
    name = rehearsal_of(getattr(R, "profile", "cpu")) or getattr(R, "profile", "cpu")
    if name not in CITED_BY and not name.startswith("testbed_lr"):
        return {"HasLrDose": "0"}                # the smoke test and the rest do not cite it
    df, missing = dose_frame(R.root)
    if df.empty:
        print("no dose profile's results are committed: the paper leaves the dose-response out "
              f"(make reproduce PROFILE=... for {', '.join(DOSE_PROFILES)})")
        return {"HasLrDose": "0"}
    fin = final(df)
    variants = [v for v in VARIANT_LABELS if v in set(fin.variant)]
    cols = ["val_loss", "bos_resid_ratio", "max_inf_norm", "inner_max_inf_norm", "max_kurtosis",
            "gap_W8A8", "gap_W16A6", "gap_W8A4"] + [c for c in ("gap_trigger_W16A6",) if c in fin]
    means = fin.groupby(["lr", "variant"], as_index=False)[cols].mean()
    R.derived("lr_dose.csv", means)
    R.table(dose_rows(means, variants), "lr_dose.tex", "lrrrrrrrrr")
    dose_figure(R, fin, variants)
    seeds = int(fin.groupby(["lr", "variant"]).seed.nunique().min())
    M = {"HasLrDose": "1", "LrDoseRates": Tex(_and([f"${_lr(x)}$" for x in sorted(fin.lr.unique())])),
         "LrDoseSeeds": str(seeds), "LrDoseSteps": fmt(int(fin.max_steps.iloc[0])),
         "LrDosePeakThreshold": _n(PEAK.threshold),
         "LrDoseText": dose_sentences(means, fin, variants),
         "LrDoseMissing": missing_sentence(missing)}
    return M
