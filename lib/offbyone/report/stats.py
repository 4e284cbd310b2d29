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
from scipy.optimize import brentq

from ..profiles import rehearsal_of

CONFIDENCE = 0.95
VARIANT_LABELS = {"softmax": "softmax", "softmax1": "softmax1", "sink": "learned sink",
                  "clipped": "clipped softmax", "softpick": "softpick",
                  "gated": "gated attention", "outgate": "output gate"}

# metric column -> its label in prose and tables (exploratory differences state the sign, no
# judgement of which direction is better)
METRICS = {
    "val_loss": "validation loss (nats)",
    "avg_kurtosis": "average kurtosis",
    "max_kurtosis": "maximum kurtosis",
    "max_inf_norm": "maximum inf-norm",
    "resid_avg_kurtosis": "residual-stream kurtosis",
    "first_position": "attention on the first position",
    "sink_rate": "sink rate",
    "outlier_share_delimiter": "share of outliers on delimiters",
    "gap_W8A8": "W8A8 loss gap",
    "gap_W4A8": "W4A8 loss gap",
    "gap_W6A6": "W6A6 loss gap",
    # the synthetic testbed only (NaN on natural text, where no token is a trigger)
    "bos_other": "attention on BOS from non-trigger queries",
    "bos_trigger": "attention on BOS from trigger queries",
    "copy_loss": "loss after a trigger (nats)",
}


def _paired(fin: pd.DataFrame, metric: str, other: str, base: str):
    """The base and other values of `metric` on the seeds both have, seed by seed."""
    a = fin[fin.variant == base].set_index("seed")[metric].astype(float).dropna()
    b = fin[fin.variant == other].set_index("seed")[metric].astype(float).dropna()
    seeds = sorted(set(a.index) & set(b.index))
    return a[seeds].to_numpy(), b[seeds].to_numpy()


def paired_difference(fin: pd.DataFrame, metric: str, other: str, base: str = "softmax",
                      confidence: float = CONFIDENCE) -> dict:
    """other - base, paired by seed: mean, sd, and scipy's paired t-test p-value and interval.
    Exploratory: nothing is corrected for multiplicity and nothing is called significant."""
    a, b = _paired(fin, metric, other, base)
    n = len(a)
    res = {"metric": metric, "base": base, "other": other, "n": n,
           "base_mean": float(a.mean()) if n else math.nan,
           "other_mean": float(b.mean()) if n else math.nan,
           "diff": float((b - a).mean()) if n else math.nan,
           "sd": float((b - a).std(ddof=1)) if n > 1 else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "confidence": confidence}
    if n > 1:
        if np.all(b - a == (b - a)[0]):               # no spread: the t-test is undefined
            res["ci_low"] = res["ci_high"] = res["diff"]
            res["p"] = 1.0 if res["diff"] == 0 else 0.0
        else:
            t = sps.ttest_rel(b, a)
            ci = t.confidence_interval(confidence)
            res.update(ci_low=float(ci.low), ci_high=float(ci.high), p=float(t.pvalue))
    return res


def paired_differences(fin: pd.DataFrame, others, metrics=None) -> pd.DataFrame:
    """paired_difference of every metric (that the runs have) for every other variant."""
    metrics = metrics or METRICS
    return pd.DataFrame([paired_difference(fin, m, other) for other in others
                         for m in metrics if m in fin and fin[m].notna().any()])


# --------------------------------------------------------------------------------------------
# The primary endpoints, declared before the measurements under the anchor's quantization setup
# existed (issue 15, 2026-11-30), with the test, the correction and the equivalence margins.

@dataclass(frozen=True)
class Endpoint:
    """A primary endpoint: `metric` compared on a linear or log scale, equivalent when the
    paired difference (log ratio on the log scale) lies within +-margin."""
    metric: str
    label: str
    scale: str            # "linear": differences; "log": ratios (paired log differences)
    margin: float         # the equivalence margin, in the metric's unit or in log units
    unit: str = ""
    # the value at which there is nothing to fix (a loss gap of 0): a baseline within the
    # margin of it leaves the variant nothing to improve, and an equivalence there is
    # guaranteed rather than found
    floor: float | None = None


ALPHA = 0.05
RATIO_MARGIN = 1.25       # log-scale endpoints: equivalent when the ratio is within 1/1.25..1.25
PRIMARY = (
    Endpoint("gap_W8A8", "W8A8 loss gap", "linear", 0.01, "nats", floor=0.0),
    Endpoint("gap_W16A6", "W16A6 (activations only) loss gap", "linear", 0.01, "nats", floor=0.0),
    Endpoint("max_kurtosis", "maximum kurtosis", "log", math.log(RATIO_MARGIN)),
    Endpoint("max_inf_norm", "maximum inf-norm", "log", math.log(RATIO_MARGIN)),
    Endpoint("first_position", "attention on the first position", "linear", 0.01),
    Endpoint("val_loss", "full-precision validation loss", "linear", 0.01, "nats"),
)


# The GPU study (configs/gpu.yaml, issue 24), declared on 2026-12-02 before any of its runs:
# the six above and Guo et al.'s own measure, the BOS residual peak (the largest ratio, over the
# blocks, of the BOS residual's L2 norm to the median other position), on a log scale.
BOS_PEAK = Endpoint("bos_resid_ratio", "BOS residual peak (ratio to the median position)", "log",
                    math.log(RATIO_MARGIN))
# The testbed study where the disease grows (configs/testbed_outliers.yaml, issue 36), declared on
# 2026-12-04 before any of its runs: the same seven, and the share of the activation outliers
# (> 6 sigma, over the anchor's modules) that sit at the BOS position, equivalent within 5
# percentage points.
BOS_SHARE = Endpoint("outlier_share_pos0", "share of activation outliers at BOS", "linear", 0.05)
# The GPU study, redesigned on 2026-12-04 (issue 38) at the CPU study's dose before any of its
# runs, declares the CPU study's eight.
# The diseased retrofit (configs/retrofit_outliers.yaml, issue 37), declared on 2026-12-04 before
# any of its runs: the same eight, each arm against the softmax control at the end of the
# fine-tune, Holm within each arm.
STUDY_PRIMARY = {"gpu": PRIMARY + (BOS_PEAK, BOS_SHARE),
                 "testbed_outliers": PRIMARY + (BOS_PEAK, BOS_SHARE),
                 "retrofit_outliers": PRIMARY + (BOS_PEAK, BOS_SHARE)}
# The text dose-response (configs/text_lr3e-3.yaml, issue 37), declared on 2026-12-04 before any
# of its runs: a dose trains when, for both variants and both seeds, the final validation loss is
# within this many nats of the lowest that variant reaches at any dose of the sweep.
TEXT_DOSE_MARGIN = 0.05


def primary_endpoints(profile: str) -> tuple:
    """A profile's declared primary endpoints (a rehearsal has its profile's)."""
    return STUDY_PRIMARY.get(rehearsal_of(profile) or profile, PRIMARY)


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (the tests check them against statsmodels')."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
    return adjusted[np.argsort(order)]


def _mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def endpoint_test(fin: pd.DataFrame, ep: Endpoint, other: str, base: str = "softmax",
                  confidence: float = CONFIDENCE) -> dict:
    """One primary endpoint, other against base, paired by seed, with scipy.stats: the paired
    t-test and its interval, the exact sign-flip permutation test, a bootstrap interval, the
    two one-sided tests (TOST) against +-margin, and Cohen's d_z. On the log scale every number
    is about log(other) - log(base); `ratio*` give them back as ratios."""
    a, b = _paired(fin, ep.metric, other, base)
    if ep.scale == "log":
        a, b = np.log(a), np.log(b)
    d = b - a
    n = len(d)
    res = {"metric": ep.metric, "label": ep.label, "scale": ep.scale, "margin": ep.margin,
           "unit": ep.unit,
           "other": other, "base": base, "n": n, "confidence": confidence,
           "perm_floor": permutation_floor(n),
           "base_mean": float(np.mean(a)) if n else math.nan,
           "other_mean": float(np.mean(b)) if n else math.nan,
           "diff": float(np.mean(d)) if n else math.nan}
    nan = dict.fromkeys(("sd", "ci_low", "ci_high", "p", "p_perm", "boot_low", "boot_high",
                         "p_tost", "dz"), math.nan)
    res.update(nan)
    if n > 2 and np.ptp(d) > 0:
        t = sps.ttest_rel(b, a)
        ci = t.confidence_interval(confidence)
        perm = sps.permutation_test((b, a), _mean_diff, permutation_type="samples",
                                    vectorized=True, n_resamples=np.inf if n <= 16 else 20_000,
                                    rng=0)
        boot = sps.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=20_000,
                             method="percentile", rng=0)
        lower = sps.ttest_1samp(d, -ep.margin, alternative="greater").pvalue
        upper = sps.ttest_1samp(d, ep.margin, alternative="less").pvalue
        res.update(sd=float(d.std(ddof=1)), ci_low=float(ci.low), ci_high=float(ci.high),
                   p=float(t.pvalue), p_perm=float(perm.pvalue),
                   boot_low=float(boot.confidence_interval.low),
                   boot_high=float(boot.confidence_interval.high),
                   p_tost=float(max(lower, upper)), dz=float(d.mean() / d.std(ddof=1)))
    if ep.scale == "log":   # back to the metric's own scale: geometric means and their ratio
        res.update(base_gmean=math.exp(res["base_mean"]) if n else math.nan,
                   other_gmean=math.exp(res["other_mean"]) if n else math.nan,
                   ratio=math.exp(res["diff"]) if n else math.nan,
                   ratio_low=math.exp(res["ci_low"]), ratio_high=math.exp(res["ci_high"]))
    return res


NOTHING_TO_FIX = "no gap to close"
VERDICTS = ("lower", "higher", "equivalent", NOTHING_TO_FIX, "inconclusive")


def nothing_to_fix(r: dict, ep: Endpoint) -> bool:
    """Whether the baseline's own value (its mean over seeds) already lies within the margin of
    the endpoint's floor: then no variant can be worse than equivalent by more than the margin
    from below, and 'equivalent' would only restate that the baseline has nothing to fix."""
    return (ep.floor is not None and ep.scale == "linear"
            and abs(r["base_mean"] - ep.floor) < ep.margin)


def verdict(r: dict, ep: Endpoint) -> str:
    """What the numbers allow one to say of one endpoint: 'lower' or 'higher' (Holm p below
    ALPHA), else 'no gap to close' (the baseline within the margin of the floor), else
    'equivalent' (Holm-corrected TOST p below ALPHA), else 'inconclusive'."""
    if r["p_holm"] < ALPHA:
        return "lower" if r["diff"] < 0 else "higher"
    if nothing_to_fix(r, ep):
        return NOTHING_TO_FIX
    return "equivalent" if r["p_tost_holm"] < ALPHA else "inconclusive"


POWER = 0.8


def minimum_detectable(n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest standardised paired effect d_z (mean difference over its sd) that a
    two-sided paired t-test at `alpha` detects with probability `power` on n pairs, from
    scipy's noncentral t (the tests check it against statsmodels' TTestPower); NaN below 2."""
    if n < 2:
        return math.nan
    df, crit = n - 1, sps.t.ppf(1 - alpha / 2, n - 1)

    def reach(d: float) -> float:
        nc = d * math.sqrt(n)
        up, down = sps.nct.sf(crit, df, nc), sps.nct.cdf(-crit, df, nc)
        # far in the tail scipy's noncentral t gives NaN: there the power is 1 (and 0 below)
        return (1.0 if up != up else up) + (0.0 if down != down else down) - power
    return float(brentq(reach, 1e-9, 50.0))     # d_z of 50: far past any effect here


def permutation_floor(n: int) -> float:
    """The smallest p-value the exact two-sided sign-flip test can give with n paired seeds:
    2 / 2^n (0.25 with 3 seeds, 0.0625 with 5), whatever the effect."""
    return 2.0 / 2 ** n if n > 0 else 1.0


def primary_tests(fin: pd.DataFrame, others, base: str = "softmax",
                  endpoints=PRIMARY) -> pd.DataFrame:
    """Every primary endpoint for each variant against the baseline. Holm's correction runs
    within each comparison's family (its endpoints), on the t-test p-values (`p_holm`) and on
    the TOST p-values (`p_tost_holm`); `verdict` is what the numbers allow one to say
    (`verdict()`): 'lower', 'higher', 'no gap to close', 'equivalent' or 'inconclusive';
    `perm_floor` is the smallest p the sign-flip test could give with these seeds."""
    rows = []
    for other in others:
        fam = [endpoint_test(fin, ep, other, base) for ep in endpoints
               if ep.metric in fin and fin[ep.metric].notna().any()]
        for key in ("p", "p_tost"):
            ps = np.array([r[key] for r in fam])
            ok = ~np.isnan(ps)
            adj = np.full(len(ps), math.nan)
            if ok.any():
                adj[ok] = holm(ps[ok])
            for r, x in zip(fam, adj):
                r[key + "_holm"] = float(x)
        for r, ep in zip(fam, [ep for ep in endpoints
                               if ep.metric in fin and fin[ep.metric].notna().any()]):
            r["verdict"] = verdict(r, ep)
        rows += fam
    return pd.DataFrame(rows)


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
# "The disease appeared" in the GPU study, fixed before its runs (issue 24): the softmax
# baseline's BOS residual peak at least 5 times the median other position after some block
# (Guo et al.'s 3-layer run: 141 against a start near 24 in 10k steps), or its W8A8 gap at
# least 0.05 nats. Either one suffices.
DISEASE_CRITERION = (
    Sign("first-position residual peak", "bos_resid_ratio", ">=", 5.0),
    Sign("W8A8 gap", "gap_W8A8", ">=", 0.05),
)


# the profiles for which it was fixed before their runs: the GPU study, its CPU pilot, and the
# CPU testbed study at the dose that grows the disease
CRITERION_PROFILES = ("gpu", "pilot_guo", "testbed_outliers")


def disease_appeared(fin: pd.DataFrame, base: str = "softmax") -> dict:
    """The GPU study's criterion on the baseline's final checkpoints (seed means): which signs
    are met, and whether the disease appeared (any of them)."""
    r = baseline_means(fin, base)
    if r is None:
        raise ValueError(f"no {base} runs to judge the disease by")
    met = {s.name: bool(s.present(r)) for s in DISEASE_CRITERION if s.metric in r}
    return {"signs": met, "appeared": any(met.values()),
            "values": {s.name: r.get(s.metric) for s in DISEASE_CRITERION}}


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


def exploratory_metrics(endpoints=PRIMARY) -> list[str]:
    """The metrics compared without correction: every METRICS entry that is not one of the
    primary endpoints (those are reported once, with Holm's correction)."""
    primary = {ep.metric for ep in endpoints}
    return [m for m in METRICS if m not in primary]
