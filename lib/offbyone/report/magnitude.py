"""Kurtosis read with magnitude: beside the maximum kurtosis, the kurtosis over active positions
(`metrics.active_kurtosis`), the 99.99th percentile of |x| and the inf-norm, each variant
against softmax as a ratio of geometric means (paired by seed, exploratory); where kurtosis and
magnitude disagree, the sentence says so. And the weight each head of a variant that can
abstain leaves on its implicit zero, per layer and head.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..attention import get_variant
from .latex import GROUP, Tex, fmt, num
from .prose import _and
from .stats import PRIMARY, VARIANT_LABELS, paired_difference

MEASURES = {"max_kurtosis": "maximum kurtosis",
            "max_active_kurtosis": "maximum kurtosis over active positions",
            "max_p9999": "maximum 99.99th percentile of |x|",
            "max_inf_norm": "maximum inf-norm"}
KURTOSIS, MAGNITUDE = ("max_kurtosis", "max_active_kurtosis"), ("max_p9999", "max_inf_norm")
PRIMARY_METRICS = {ep.metric for ep in PRIMARY}


def log_ratio(fin: pd.DataFrame, metric: str, other: str) -> dict:
    """other / softmax as a ratio of geometric means, paired by seed: the paired t-test on the
    logs, its interval back on the ratio scale."""
    logged = fin.assign(**{metric: np.log(fin[metric].astype(float))})
    r = paired_difference(logged, metric, other)
    return {**r, "ratio": math.exp(r["diff"]) if r["n"] else math.nan,
            "ratio_low": math.exp(r["ci_low"]) if r["ci_low"] == r["ci_low"] else math.nan,
            "ratio_high": math.exp(r["ci_high"]) if r["ci_high"] == r["ci_high"] else math.nan,
            "base_gmean": math.exp(r["base_mean"]) if r["n"] else math.nan,
            "other_gmean": math.exp(r["other_mean"]) if r["n"] else math.nan}


def side(r: dict) -> int:
    """+1 when the interval lies above 1, -1 below, 0 when it holds 1."""
    return 1 if r["ratio_low"] > 1 else -1 if r["ratio_high"] < 1 else 0


def agreement(ratios: dict) -> str:
    """'agree' when every kurtosis and every magnitude measure point the same way (or all hold
    1), else 'disagree'."""
    sides = {m: side(r) for m, r in ratios.items()}
    kurt = {sides[m] for m in KURTOSIS if m in sides}
    mag = {sides[m] for m in MAGNITUDE if m in sides}
    return "agree" if kurt == mag and len(kurt) == 1 else "disagree"


def _moved(sides: set) -> str:
    return ("fell" if sides == {-1} else "rose" if sides == {1} else
            "held (each of its intervals includes 1)" if sides == {0} else "moved both ways")


def agreement_words(ratios: dict) -> str:
    """What the intervals say of kurtosis and magnitude together, in words."""
    sides = {m: side(r) for m, r in ratios.items()}
    kurt = {sides[m] for m in KURTOSIS if m in sides}
    mag = {sides[m] for m in MAGNITUDE if m in sides}
    if kurt == mag == {0}:
        return "every interval includes 1, so neither kurtosis nor magnitude moved measurably"
    if agreement(ratios) == "agree":
        return f"kurtosis and magnitude both {_moved(kurt)}"
    return f"kurtosis {_moved(kurt)} while magnitude {_moved(mag)}"


def sentence(ratios: dict, where: str, other: str = "softmax1") -> str:
    name = VARIANT_LABELS[other]
    items = list(ratios.items())
    first, rest = items[0], items[1:]
    m0, r0 = first
    text = (f"{where}, {name}'s {MEASURES[m0]} was ${fmt(r0['ratio'], 3)}$ times softmax's "
            f"(95\\% CI ${fmt(r0['ratio_low'], 2)}$ to ${fmt(r0['ratio_high'], 2)}$), "
            + _and([f"its {MEASURES[m].removeprefix('maximum ')} ${fmt(r['ratio'], 3)}$ times"
                    for m, r in rest])
            + f" (geometric means over {r0['n']} seeds, exploratory): "
            + agreement_words(ratios) + ".")
    return text


def magnitude(R) -> pd.Series:
    studies = [(R.study_label, R.fin)]
    if R.testbed_fin is not None:
        studies.append(("testbed", R.testbed_fin))
    studies = [(lab, f) for lab, f in studies
               if "max_p9999" in f and f["max_p9999"].notna().all()]
    M = R.sections["magnitude"] = {"HasMagnitude": "1" if studies else "0"}
    if not studies:
        return pd.Series(M)
    rows, text, csv = [], [], []
    for label, fin in studies:
        where = "On text" if label == "natural text" else f"On the {label}"
        for other in [v for v in VARIANT_LABELS if v in set(fin.variant) and v != "softmax"]:
            ratios = {m: log_ratio(fin, m, other) for m in MEASURES}
            text.append(sentence(ratios, where, other))
            rows.append({GROUP: f"{label}: {VARIANT_LABELS[other]} against softmax"})
            for m, r in ratios.items():
                rows.append({"measure": MEASURES[m], "softmax (geom.)": num(r["base_gmean"]),
                             "variant (geom.)": num(r["other_gmean"]),
                             Tex("ratio (95\\% CI)"): Tex(f"${fmt(r['ratio'])}$ (${fmt(r['ratio_low'])}$, "
                                                          f"${fmt(r['ratio_high'])}$)"),
                             # a primary endpoint is tested once, in the primary table
                             Tex("$p$"): ("primary" if m in PRIMARY_METRICS else num(r["p"], 2))})
                csv.append({"study": label, "other": other, "measure": m, **r})
    R.table(rows, "magnitude.tex", "lrrrr")
    R.derived("magnitude.csv", pd.DataFrame(csv))
    M["MagnitudeText"] = Tex(" ".join(text))
    M.update(abstention_table(R, studies))
    return pd.Series(M)


def abstention_table(R, studies) -> dict:
    """The weight on the implicit zero per layer and head, for every variant that can abstain
    (mean over seeds), from the per-head rows of layers.csv (and testbed_layers.csv)."""
    frames = {R.study_label: R.layers}
    tb = R.testbed_frames()
    if tb[1] is not None:
        frames["testbed"] = tb[1]
    rows = []
    for label, layers in frames.items():
        heads = layers[(layers.kind == "head")] if "kind" in layers else layers.iloc[:0]
        # the variants with an implicit zero (softmax's abstention is 0 by construction: its
        # rows would print rounding noise)
        heads = heads[heads.variant.map(lambda v: get_variant(v).has_sink)] if len(heads) else heads
        if heads.empty:
            continue
        m = heads.groupby(["variant", "layer", "head"]).abstention.mean().reset_index()
        H = int(m["head"].max()) + 1
        for v in [v for v in VARIANT_LABELS if v in set(m.variant)]:
            rows.append({GROUP: f"{label}: {VARIANT_LABELS[v]}"})
            for layer in sorted(m[m.variant == v].layer.unique()):
                cell = m[(m.variant == v) & (m.layer == layer)].set_index("head").abstention
                rows.append({"layer": fmt(int(layer)),
                             **{f"head {h}": num(cell.get(h, math.nan)) for h in range(H)}})
    if not rows:
        return {"HasAbstentionTable": "0"}
    width = max(len(r) for r in rows if GROUP not in r)
    R.table(rows, "abstention.tex", "l" + "r" * (width - 1))
    return {"HasAbstentionTable": "1"}
