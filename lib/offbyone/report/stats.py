"""Paired statistics over seeds, and which signs of the disease the baseline shows.

Variants are compared with the softmax baseline seed by seed (the same seed gives the same
initialisation and data order), so every comparison is a paired one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

CONFIDENCE = 0.95
VARIANT_LABELS = {"softmax": "softmax", "softmax1": "softmax1", "sink": "learned sink",
                  "clipped": "clipped softmax", "softpick": "softpick",
                  "gated": "gated attention", "outgate": "output gate"}

# metric column -> (label for prose and tables, which direction is "better")
METRICS = {
    "val_loss": ("validation loss (nats)", "lower"),
    "avg_kurtosis": ("average kurtosis", "lower"),
    "max_kurtosis": ("maximum kurtosis", "lower"),
    "max_inf_norm": ("maximum inf-norm", "lower"),
    "resid_avg_kurtosis": ("residual-stream kurtosis", "lower"),
    "first_position": ("attention on the first position", "lower"),
    "sink_rate": ("sink rate", "lower"),
    "outlier_share_delimiter": ("share of outliers on delimiters", "lower"),
    "gap_W8A8": ("W8A8 loss gap", "lower"),
    "gap_W4A8": ("W4A8 loss gap", "lower"),
    "gap_W6A6": ("W6A6 loss gap", "lower"),
    # the synthetic testbed only (NaN on natural text, where no token is a trigger)
    "bos_other": ("attention on BOS from non-trigger queries", "lower"),
    "bos_trigger": ("attention on BOS from trigger queries", "lower"),
    "copy_loss": ("loss after a trigger (nats)", "lower"),
}


def paired_difference(fin: pd.DataFrame, metric: str, other: str, base: str = "softmax",
                      confidence: float = CONFIDENCE) -> dict:
    """other - base, paired by seed: mean, sd, t-interval and paired t-test p-value."""
    a = fin[fin.variant == base].set_index("seed")[metric].astype(float).dropna()
    b = fin[fin.variant == other].set_index("seed")[metric].astype(float).dropna()
    seeds = sorted(set(a.index) & set(b.index))   # seeds where both variants have the metric
    d = np.array([b[s] - a[s] for s in seeds], dtype=float)
    n = len(d)
    res = {"metric": metric, "base": base, "other": other, "n": n,
           "base_mean": float(a[seeds].mean()) if n else math.nan,
           "other_mean": float(b[seeds].mean()) if n else math.nan,
           "diff": float(d.mean()) if n else math.nan,
           "sd": float(d.std(ddof=1)) if n > 1 else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "confidence": confidence}
    if n > 1:
        se = res["sd"] / math.sqrt(n)
        t = sps.t.ppf(0.5 + confidence / 2, n - 1)
        res["ci_low"], res["ci_high"] = res["diff"] - t * se, res["diff"] + t * se
        if se > 0:
            res["p"] = float(2 * sps.t.sf(abs(res["diff"]) / se, n - 1))
        else:
            res["p"] = 0.0 if res["diff"] != 0 else 1.0
    res["significant"] = bool(n > 1 and (res["ci_low"] > 0 or res["ci_high"] < 0))
    return res


def paired_differences(fin: pd.DataFrame, others, metrics=None) -> pd.DataFrame:
    """paired_difference of every metric (that the runs have) for every other variant."""
    metrics = metrics or METRICS
    return pd.DataFrame([paired_difference(fin, m, other) for other in others
                         for m in metrics if m in fin and fin[m].notna().any()])


@dataclass(frozen=True)
class Sign:
    """A sign of the disease: `metric` of the baseline (seed mean) against a threshold,
    `times` another quantity of the same row when `of` names one."""
    name: str
    metric: str
    op: str                       # ">=" or ">"
    threshold: float
    of: str | None = None         # the threshold is `threshold` times this column
    shown: str | None = None      # the column shown beside the value (default: metric)

    def present(self, r: dict) -> bool:
        value = r[self.metric] if r[self.metric] is not None else 0
        bound = self.threshold * (r[self.of] if self.of else 1)
        if self.of and not bound > 0:
            return False
        return value >= bound if self.op == ">=" else value > bound


# The signs of the disease the study issue names, each with the threshold we call "present"
# (report.prose.criterion says each in words).
DISEASE_SIGNS = [
    Sign("kurtosis", "max_kurtosis", ">=", 10),
    Sign("massive activations", "max_inf_norm", ">=", 5, of="avg_inf_norm"),
    Sign("attention sink", "sink_rate", ">", 0, shown="max_head_first_position_T64"),
    Sign("outliers on delimiters", "outlier_share_delimiter", ">=", 2, of="delimiter_base_rate"),
    Sign("W8A8 gap", "gap_W8A8", ">=", 0.01),
]


def baseline_means(fin: pd.DataFrame, base: str = "softmax") -> dict | None:
    """The baseline's final checkpoints, averaged over seeds (None without the baseline)."""
    sub = fin[fin.variant == base]
    if sub.empty:
        return None
    return {**sub.select_dtypes("number").mean().to_dict(),
            "outlier_share_delimiter": sub.outlier_share_delimiter.astype(float).mean()}
