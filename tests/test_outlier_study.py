"""The section on the study where the disease grows reads the committed results of
testbed_outliers (and of its companions when they are there), tests its declared endpoints, and
says what the numbers say (report/outlier_study.py)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offbyone.report import outlier_study as O
from offbyone.report.latex import GROUP
from offbyone.report.stats import STUDY_PRIMARY
from test_lr_dose import FakeReport as DoseReport


class FakeReport(DoseReport):
    """The dose tests' stand-in for a Report, with the profile whose paper it builds."""

    def __init__(self, root: Path, profile: str = "cpu"):
        super().__init__(root)
        self.profile = profile


PEAKS = {"softmax": [9.0, 1.4, 6.0, 2.0, 3.0], "softmax1": [17.0, 18.0, 16.0, 19.0, 17.5],
         "sink": [12.0, 11.0, 13.0, 10.0, 12.5]}


def _runs(variants=("softmax", "softmax1", "sink"), seeds=range(5), profile="testbed_outliers",
          peaks=PEAKS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for v in variants:
        for seed in seeds:
            peak = peaks.get(v, [4.0] * 5)[seed]
            u, e = 1 + 0.05 * rng.standard_normal(), 0.002 * rng.standard_normal()
            for frac in (0.25, 0.5, 1.0):
                k = (3.0 if v == "softmax1" else 1.0) * u
                rows.append({"profile": profile, "variant": v, "seed": seed,
                             "step": int(3000 * frac), "max_steps": 3000, "fraction": frac,
                             "lr": 0.01, "val_loss": 2.30 + 0.002 * seed + 0.001 * rng.random(),
                             "copy_loss": 0.2 + 0.01 * seed, "bos_resid_ratio": peak * frac,
                             "max_inf_norm": 1000 * k * frac * (1 + 0.1 * seed),
                             "max_kurtosis": 50 * k * (1 + 0.2 * seed),
                             "first_position": 0.1 + 0.001 * seed + e,
                             "outlier_share_pos0": 0.5 + 0.05 * seed + e,
                             "outlier_share_delimiter": 0.0,
                             "gap_W8A8": 0.001 * u + 0.0001 * seed,
                             "gap_trigger_W8A8": 0.002 + 0.0001 * seed,
                             "gap_W16A6": 0.01 * k + 0.001 * seed,
                             "gap_trigger_W16A6": 0.05 * k + 0.002 * seed,
                             "gap_W8A4": 0.5 * k + 0.01 * seed,
                             "gap_trigger_W8A4": 0.9 * k + 0.01 * seed})
    return pd.DataFrame(rows)


def _commit(root: Path, name: str, df: pd.DataFrame, **files) -> None:
    d = root / "results" / name
    d.mkdir(parents=True, exist_ok=True)
    df.to_csv(d / "runs.csv", index=False)
    (d / "provenance.json").write_text(json.dumps(
        {"commit": "abcdef1234567", "pipeline_wall_s": 3600.0,
         "bench_softmax_tokens_per_s": 17000.0}))
    for fname, frame in files.items():
        frame.to_csv(d / f"{fname}.csv", index=False)


def test_nothing_committed_leaves_the_section_out(tmp_path):
    R = FakeReport(tmp_path)
    assert O.outlier_study(R) == {"HasOutlierStudy": "0"}
    assert getattr(R, "outlier_data", None) is None


def test_only_the_cpu_and_gpu_papers_cite_it(tmp_path):
    _commit(tmp_path, "testbed_outliers", _runs())
    for p in ("testbed_outliers", "testbed_outliers-quickrehearsal", "testbed_outliers_rivals",
              "smoke", "testbed_long"):
        assert O.outlier_study(FakeReport(tmp_path, p))["HasOutlierStudy"] == "0"
    for p in ("cpu", "cpu-quickrehearsal", "gpu"):
        assert O.outlier_study(FakeReport(tmp_path, p))["HasOutlierStudy"] == "1"


def test_the_study_is_tested_on_its_declared_endpoints_and_read_first(tmp_path):
    _commit(tmp_path, "testbed_outliers", _runs())
    R = FakeReport(tmp_path)
    M = O.outlier_study(R)
    assert M["HasOutlierStudy"] == "1" and M["OutNSeeds"] == "5" and M["OutLr"] == "0.01"
    # the study's own two endpoints' margins, from their declaration, for the text
    assert "a factor $1.25$" in M["OutMargins"] and "$\\pm0.05$" in M["OutMargins"]
    assert M["OutPeakThreshold"] == "5"
    tests = R.files["cited_testbed_outliers_primary.csv"]
    declared = [ep.metric for ep in STUDY_PRIMARY["testbed_outliers"]]
    assert sorted(set(tests.metric)) == sorted(declared)            # all eight, Holm within
    assert set(tests.other) == {"softmax1", "sink"}
    assert tests.p.notna().all() and (tests.p_holm >= tests.p - 1e-12).all()
    # softmax1's inf-norm is 3 times softmax's in every seed: a higher verdict, ratio 3
    r = tests[(tests.metric == "max_inf_norm") & (tests.other == "softmax1")].iloc[0]
    assert r.verdict == "higher" and r.ratio == pytest.approx(3.0, rel=0.1)
    # the synthesis gets the study, its label and whether the criterion was met
    od = R.outlier_data
    assert od["label"] == "testbed at lr 0.01" and od["where"] == "at lr 0.01"
    assert od["peak"] == pytest.approx(np.mean(PEAKS["softmax"]))
    groups = [r[GROUP] for r in R.tables["outlier_primary.tex"] if GROUP in r]
    assert len(groups) == 2
    assert R.figures == ["outlier-study"]


def test_the_criterion_is_said_with_the_seeds_that_passed(tmp_path):
    _commit(tmp_path, "testbed_outliers", _runs())
    M = O.outlier_study(FakeReport(tmp_path))
    text = str(M["OutCriterion"])
    # seed mean 4.28 < 5 and a W8A8 gap far below 0.05: not met, though two seeds passed
    assert M["OutDiseased"] == "0"
    assert "does not have the disease" in text and "$4.28$ times the median" in text
    assert "2 of its 5 seeds passed the threshold on their own (seeds 0 and 2)" in text
    assert "from $1.40$ to $9.00$" in text
    # inf-norms in the thousands are said as such
    assert "Its largest activations still reached" in text
    peaks = {**PEAKS, "softmax": [9.0, 6.0, 7.0, 5.5, 8.0]}
    _commit(tmp_path, "testbed_outliers", _runs(peaks=peaks))
    M = O.outlier_study(FakeReport(tmp_path))
    assert M["OutDiseased"] == "1"
    assert "has the disease (first-position residual peak)" in str(M["OutCriterion"])
    assert "5 of its 5 seeds passed" in str(M["OutCriterion"])


def test_trigger_gaps_beside_every_position(tmp_path):
    _commit(tmp_path, "testbed_outliers", _runs())
    R = FakeReport(tmp_path)
    M = O.outlier_study(R)
    rows = R.tables["outlier_gaps.tex"]
    assert [r["bit widths"] for r in rows] == ["W8A8", "W16A6", "W8A4"]   # the measured ones
    assert len(rows[0]) == 1 + 2 * 3
    text = str(M["OutGaps"])
    assert "exceeded the gap over every position at 3 of 3 settings" in text
    assert "exploratory" in text


def test_companions_when_committed_and_said_missing_when_not(tmp_path):
    _commit(tmp_path, "testbed_outliers", _runs())
    M = O.outlier_study(FakeReport(tmp_path))
    assert M["OutHasExplore"] == "0" and "are not committed yet" in str(M["OutExploreMissing"])
    sgd = O.final(_runs(("softmax", "softmax1"), range(2), "testbed_outliers_sgd",
                        {"softmax": [1.2, 1.1], "softmax1": [1.3, 1.2]}))
    _commit(tmp_path, "testbed_outliers", _runs(), **{"ablation_testbed_outliers_sgd": sgd})
    _commit(tmp_path, "testbed_outliers_rivals",
            _runs(("softmax", "clipped", "gated", "softpick"), range(2), "testbed_outliers_rivals"))
    R = FakeReport(tmp_path)
    M = O.outlier_study(R)
    assert M["OutHasExplore"] == "1" and str(M["OutExploreMissing"]) == ""
    head = R.tables["outlier_explore.tex"][0]
    assert list(head)[1:] == ["softmax", "softmax1", "learned sink", "clipped softmax",
                              "softpick", "gated attention", "softmax, SGD", "softmax1, SGD"]
    assert head["softmax"] == "5" and head["clipped softmax"] == "2"
    text = str(M["OutExplore"])
    # SGD's softmax against AdamW's on the same two seeds: peaks 1.15 against (9 + 1.4) / 2
    assert "Under SGD" in text and "$1.15$ against $5.20$" in text
    assert "Two seeds allow no test" in text and "confounds the optimiser" not in text
    # an SGD control that trained less is said to confound the optimiser with training
    slow = sgd.assign(val_loss=sgd.val_loss + 0.15)
    _commit(tmp_path, "testbed_outliers", _runs(), **{"ablation_testbed_outliers_sgd": slow})
    assert "confounds the optimiser with how far training got" in str(
        O.outlier_study(FakeReport(tmp_path))["OutExplore"])


def test_the_comparison_is_prose_with_the_open_estimates_by_direction():
    rows = []
    for o in ("softmax1", "sink"):
        rows += [{"other": o, "metric": "val_loss", "label": "loss", "verdict": "equivalent", "diff": 0.0},
                 {"other": o, "metric": "gap_W8A8", "label": "W8A8 gap", "verdict": "no gap to close",
                  "diff": 0.001},
                 {"other": o, "metric": "max_kurtosis", "label": "kurtosis", "verdict": "inconclusive",
                  "diff": 1.0},
                 {"other": o, "metric": "first_position", "label": "attention on BOS",
                  "verdict": "inconclusive", "diff": -0.03}]
    text = O.against_sentence(pd.DataFrame(rows), ["softmax1", "sink"])
    assert text == ("Softmax1 and the learned sink matched softmax within the margin in the loss "
                    "and had no W8A8 gap to close (softmax's own lay within the margin of zero); "
                    "their estimates of the kurtosis pointed higher and of the attention on BOS "
                    "lower, none significant after Holm's correction "
                    "(\\cref{tab:outlier-primary}).")
    # where the variants' verdicts differ, each is said on its own
    rows[2] = {**rows[2], "verdict": "higher"}
    text = O.against_sentence(pd.DataFrame(rows), ["softmax1", "sink"])
    assert text.startswith("Softmax1 had a higher kurtosis") and "The learned sink " in text


def test_differences_inside_the_margin_are_said_together_once():
    base = {"other": "softmax1", "diff": 0.1, "p_tost_holm": 1.0}
    rows = [{**base, "metric": "first_position", "label": "attention on BOS", "verdict": "lower",
             "diff": -0.03},
            {**base, "metric": "gap_W16A6", "label": "W16A6 gap", "verdict": "higher"},
            {**base, "metric": "gap_W8A8", "label": "W8A8 gap", "verdict": "higher",
             "p_tost_holm": 0.001},
            {**base, "metric": "max_inf_norm", "label": "inf-norm", "verdict": "higher",
             "p_tost_holm": 0.01}]
    text = O.against_sentence(pd.DataFrame(rows), ["softmax1"], "tab:x")
    assert text == ("Softmax1 had a lower attention on BOS, a higher W16A6 gap and a higher W8A8 "
                    "gap and inf-norm, both by less than the margin (\\cref{tab:x}).")
    assert text.count("by less than the margin") == 1


def test_open_estimates_the_variants_point_both_ways_are_said_as_a_split():
    rows = []
    for o, d in (("softmax1", 0.0077), ("sink", -0.0067)):
        rows += [{"other": o, "metric": "val_loss", "label": "loss", "verdict": "equivalent",
                  "diff": 0.0},
                 {"other": o, "metric": "gap_W16A6", "label": "W16A6 gap",
                  "verdict": "inconclusive", "diff": d}]
    text = O.against_sentence(pd.DataFrame(rows), ["softmax1", "sink"], "tab:x")
    assert text == ("Softmax1 and the learned sink matched softmax within the margin in the loss; "
                    "their estimates of the W16A6 gap split between them, none significant "
                    "after Holm's correction (\\cref{tab:x}).")
