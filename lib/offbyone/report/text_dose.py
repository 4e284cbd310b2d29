"""The disease's dose on natural text (issue 37, part 1): Shakespeare characters in the cpu
profile's model made as Guo et al.'s (bias-free, ReLU MLP, untied output, PyTorch's default
initialisation, weight decay 1e-4, no clipping), trained for 1,500 steps at several constant
learning rates after a short warm-up, softmax and softmax1 on two paired seeds each, one profile
per rate (configs/text_lr*.yaml, committed under results/<profile>/). Read from the committed
results alone, never rerun; a rate whose results are not there is left out and said so.

The sweep chooses the text study's dose by the criterion declared before it ran
(stats.TEXT_DOSE_MARGIN): a rate trains when every run of both variants ends within the margin
of the lowest final validation loss its variant reaches at any rate, and the dose is the highest
rate that trains. Two seeds allow no test: the section describes. Macros: 'TextDose'.
"""
from __future__ import annotations

import pandas as pd

from ..profiles import load_profile, rehearsal_of
from .latex import Tex, fmt
from .lr_dose import CITED_BY, _lr, dose_figure, dose_frame, dose_rows, missing_sentence
from .prose import _and
from .results import final
from .stats import DISEASE_CRITERION, TEXT_DOSE_MARGIN, VARIANT_LABELS, disease_appeared

# the dose profiles on text, lowest rate first
TEXT_DOSE_PROFILES = ("text_lr3e-3", "text_lr5e-3", "text_lr7e-3")
PEAK, GAP = DISEASE_CRITERION
# the figure's panels: (column, label, log scale); text has no trigger, so W8A8 replaces the copy
PANELS = (("bos_resid_ratio", "BOS residual peak", True),
          ("max_inf_norm", "max inf-norm", True),
          ("max_kurtosis", "max kurtosis", True),
          ("gap_W8A8", "W8A8 gap (nats)", True),
          ("gap_W16A6", "W16A6 gap (nats)", True),
          ("val_loss", "validation loss (nats)", False))
# what the text follows from the lowest rate to the dose: (column, words)
GROWTH = (("max_inf_norm", "largest activation"), ("max_kurtosis", "largest kurtosis"),
          ("gap_W8A8", "W8A8 gap"), ("gap_W16A6", "W16A6 gap"))


def trains(fin: pd.DataFrame, margin: float = TEXT_DOSE_MARGIN) -> pd.DataFrame:
    """Per rate and variant: the worst run's distance (nats) above the lowest final validation
    loss that variant reaches at any rate, and whether it is within the margin."""
    best = fin.groupby("variant").val_loss.min()
    d = fin.assign(above=fin.val_loss - fin.variant.map(best))
    out = d.groupby(["lr", "variant"], as_index=False).above.max()
    return out.assign(trains=out.above <= margin)


def declared_dose(tr: pd.DataFrame) -> float | None:
    """The highest rate at which every variant trains (None if none does)."""
    ok = tr.groupby("lr").trains.all()
    ok = ok[ok]
    return float(ok.index.max()) if len(ok) else None


def dose_sentence(tr: pd.DataFrame, fin: pd.DataFrame, margin: float) -> str:
    """Which rates trained by the declared criterion, and the dose it chooses."""
    dose = declared_dose(tr)
    failed = tr[~tr.trains]
    parts = []
    for r in failed.itertuples():
        parts.append(f"{VARIANT_LABELS[r.variant]} at lr ${_lr(r.lr)}$ ended up to "
                     f"${r.above:.2f}$ nats above its best")
    best = fin.groupby("variant").val_loss.min()
    where = _and([f"{VARIANT_LABELS[v]} ${fmt(best[v], 4)}$" for v in VARIANT_LABELS if v in best])
    text = (f"By the criterion declared before the sweep (every run within {margin:g} nats of "
            f"the lowest final validation loss its variant reaches at any rate: {where}), ")
    if dose is None:
        return text + "no rate trained both variants, so the sweep declares no dose."
    rates = sorted(tr.lr.unique())
    trained = sorted(tr.groupby("lr").trains.all().pipe(lambda s: s[s]).index)
    if len(trained) == len(rates):
        text += (f"every rate trained both variants, so the text study's dose is the highest rate "
                 f"tried, lr ${_lr(dose)}$; no rate failed, and no higher one was tried.")
    else:
        text += (f"{_and([f'${_lr(x)}$' for x in trained])} trained both variants, and the text "
                 f"study's dose is the highest, lr ${_lr(dose)}$.")
    if parts:
        text += " " + _and(parts)[0].upper() + _and(parts)[1:] + "."
    return text


def growth_sentence(means: pd.DataFrame, dose: float | None) -> str:
    """How softmax's and softmax1's magnitudes and gaps moved from the lowest rate to the dose
    (seed means)."""
    lo = float(means.lr.min())
    hi = dose if dose is not None else float(means.lr.max())
    if hi == lo:
        return ""
    parts = []
    for v in [v for v in VARIANT_LABELS if v in set(means.variant)]:
        a = means[(means.variant == v) & (means.lr == lo)]
        b = means[(means.variant == v) & (means.lr == hi)]
        if not len(a) or not len(b):
            continue
        moves = [(w, fmt(a[c].iloc[0]), fmt(b[c].iloc[0])) for c, w in GROWTH if c in means]
        said = [f"{w} {'stayed at $' + x + '$' if x == y else f'went from ${x}$ to ${y}$'}"
                for w, x, y in moves]
        parts.append(f"{VARIANT_LABELS[v]}'s {said[0]}" + "".join(f", its {x}" for x in said[1:]))
    if not parts:
        return ""
    text = f"From lr ${_lr(lo)}$ to ${_lr(hi)}$ (seed means), " + "; ".join(parts) + "."
    base_lo = means[(means.variant == "softmax") & (means.lr == lo)]
    base_hi = means[(means.variant == "softmax") & (means.lr == hi)]
    if len(base_lo) and len(base_hi):        # the answer to the section's question, for softmax
        grew = base_hi.max_inf_norm.iloc[0] / base_lo.max_inf_norm.iloc[0]
        gaps = [c for c in ("gap_W8A8", "gap_W16A6") if c in means]
        fell = all(base_hi[c].iloc[0] < base_lo[c].iloc[0] for c in gaps)
        rose = all(base_hi[c].iloc[0] > base_lo[c].iloc[0] for c in gaps)
        text += (f" On text the rate grew softmax's largest activation ${fmt(grew, 2)}$-fold "
                 + ("while its quantization gaps fell" if fell else
                    "and its quantization gaps with it" if rose else
                    "while its quantization gaps moved both ways") + ".")
    return text


def criterion_sentence(fin: pd.DataFrame, dose: float | None) -> str:
    """The disease criterion on softmax at the dose (seed means of its two seeds: a
    description, not the study's test)."""
    if dose is None:
        return ""
    at = fin[fin.lr == dose]
    if not (at.variant == "softmax").any():
        return ""
    v = disease_appeared(at)
    peak, gap = v["values"][PEAK.name], v["values"][GAP.name]
    state = ("would meet the disease criterion" if v["appeared"] else
             "would not meet the disease criterion")
    return (f"At that rate softmax {state} of \\cref{{sec:outlier-study}} on these "
            f"{int(at[at.variant == 'softmax'].seed.nunique())} seeds: a BOS residual peak of "
            f"${fmt(peak)}$ times the median position (threshold ${PEAK.threshold:g}$) and a W8A8 "
            f"gap of ${fmt(gap)}$ nats (threshold ${GAP.threshold:g}$).")


def text_dose(R) -> dict:
    """The section's table, figure and macros; HasTextDose 0 when no text dose profile's results
    are committed or the paper does not cite them."""
    name = rehearsal_of(getattr(R, "profile", "cpu")) or getattr(R, "profile", "cpu")
    if name not in CITED_BY and not name.startswith("text_lr"):
        return {"HasTextDose": "0"}
    df, missing = dose_frame(R.root, TEXT_DOSE_PROFILES)
    if df.empty:
        print("no text dose profile's results are committed: the paper leaves the text "
              f"dose-response out (make reproduce PROFILE=... for {', '.join(TEXT_DOSE_PROFILES)})")
        return {"HasTextDose": "0"}
    fin = final(df)
    variants = [v for v in VARIANT_LABELS if v in set(fin.variant)]
    cols = ["val_loss", "bos_resid_ratio", "max_inf_norm", "inner_max_inf_norm", "max_kurtosis",
            "gap_W8A8", "gap_W16A6", "gap_W8A4"]
    means = fin.groupby(["lr", "variant"], as_index=False)[cols].mean()
    tr = trains(fin)
    R.derived("text_dose.csv", means.merge(tr, on=["lr", "variant"]))
    R.table(dose_rows(means, variants), "text_dose.tex", "lrrrrrrrr")
    dose_figure(R, fin, variants, "text-dose", PANELS)
    dose = declared_dose(tr)
    seeds = int(fin.groupby(["lr", "variant"]).seed.nunique().min())
    text = " ".join(s for s in (dose_sentence(tr, fin, TEXT_DOSE_MARGIN),
                                growth_sentence(means, dose), criterion_sentence(fin, dose)) if s)
    return {"HasTextDose": "1",
            "TextDoseRates": Tex(_and([f"${_lr(x)}$" for x in sorted(fin.lr.unique())])),
            "TextDoseSeeds": str(seeds), "TextDoseSteps": fmt(int(fin.max_steps.iloc[0])),
            "TextDoseDose": Tex(f"${_lr(dose)}$" if dose is not None else "none"),
            "TextDoseMargin": f"{TEXT_DOSE_MARGIN:g}",
            "TextDoseWarmup": fmt(int(load_profile(TEXT_DOSE_PROFILES[0])["train"]["warmup_steps"])),
            "TextDoseText": Tex(text),
            "TextDoseMissing": missing_sentence(missing)}
