"""The section on softmax1 on text at the text sweep's dose reads the committed results of
text_outliers (and its weight-decay control when it is there), tests the six primary endpoints
and says what the numbers say (report/text_study.py)."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from offbyone.report import text_study as T
from offbyone.report.latex import GROUP
from offbyone.report.stats import DISEASE_CRITERION, PRIMARY
from test_outlier_study import FakeReport, _commit

NORMS = {"softmax": [300.0, 350.0, 400.0, 320.0, 380.0],
         "softmax1": [310.0, 330.0, 420.0, 300.0, 390.0],
         "sink": [590.0, 710.0, 790.0, 650.0, 755.0]}


def _runs(variants=("softmax", "softmax1", "sink"), seeds=range(5), profile="text_outliers",
          norms=NORMS, peak=1.8, scale=1.0) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for v in variants:
        for seed in seeds:
            e = 0.001 * rng.standard_normal()
            for frac in (0.5, 1.0):
                rows.append({"profile": profile, "variant": v, "seed": seed,
                             "step": int(1500 * frac), "max_steps": 1500, "fraction": frac,
                             "lr": 0.007, "val_loss": 1.62 + 0.004 * seed + e,
                             "bos_resid_ratio": (peak + 0.1 * seed) * scale,
                             "max_inf_norm": norms[v][seed] * frac * scale,
                             "max_kurtosis": 90.0 * (1 + 0.1 * seed + 10 * e) * scale,
                             "first_position": 0.02 + 0.001 * seed + e,
                             "outlier_share_pos0": 0.01, "outlier_share_delimiter": 0.0,
                             "max_inf_norm_module": "blocks.3.resid",
                             "inner_max_inf_norm_module": "blocks.2.resid" if seed == 4 else
                             "blocks.3.mlp_out",
                             "gap_W8A8": 0.004 + 0.0002 * seed + e / 10,
                             "gap_W16A6": 0.1 + 0.01 * seed + e, "gap_W8A4": 1.0 + 0.1 * seed + e})
    return pd.DataFrame(rows)


def test_nothing_committed_leaves_the_section_out(tmp_path):
    R = FakeReport(tmp_path)
    assert T.text_study(R) == {"HasTextStudy": "0"}
    assert getattr(R, "text_study_data", None) is None


def test_only_the_cpu_and_gpu_papers_cite_it(tmp_path):
    _commit(tmp_path, "text_outliers", _runs())
    for p in ("text_outliers", "text_outliers-quickrehearsal", "text_lr7e-3", "smoke"):
        assert T.text_study(FakeReport(tmp_path, p))["HasTextStudy"] == "0"
    for p in ("cpu", "cpu-quickrehearsal", "gpu"):
        assert T.text_study(FakeReport(tmp_path, p))["HasTextStudy"] == "1"


def test_the_six_primary_endpoints_with_holm_and_the_criterion(tmp_path):
    _commit(tmp_path, "text_outliers", _runs())
    R = FakeReport(tmp_path)
    M = T.text_study(R)
    assert M["HasTextStudy"] == "1" and M["TsNSeeds"] == "5" and M["TsLr"] == "0.007"
    assert M["TsSteps"] == "1{,}500" and M["TsWeightDecay"] == "0.0001"
    tests = R.files["cited_text_outliers_primary.csv"]
    assert sorted(set(tests.metric)) == sorted(ep.metric for ep in PRIMARY)
    assert set(tests.other) == {"softmax1", "sink"}
    # the sink's inf-norm is twice softmax's in every seed: higher, ratio 2, as scipy's paired t
    r = tests[(tests.metric == "max_inf_norm") & (tests.other == "sink")].iloc[0]
    assert r.verdict == "higher" and r.ratio == pytest.approx(2.0, rel=0.02)
    fin = T.final(_runs())
    a = np.log(fin[fin.variant == "sink"].sort_values("seed").max_inf_norm.to_numpy())
    b = np.log(fin[fin.variant == "softmax"].sort_values("seed").max_inf_norm.to_numpy())
    assert r.p == pytest.approx(st.ttest_rel(a, b).pvalue)
    for other in ("softmax1", "sink"):          # Holm within each comparison, never below p
        t = tests[tests.other == other]
        assert (t.p_holm >= t.p - 1e-12).all() and len(t) == len(PRIMARY)
    # a peak of 2 and a W8A8 gap of 0.004 do not meet the criterion, with the activations said
    assert M["TsDiseased"] == "0"
    assert "does not have the disease" in str(M["TsCriterion"])
    assert "Its largest activations still reached $300$ to $400$" in str(M["TsCriterion"])
    assert "none of its 5 seeds passed the threshold" in str(M["TsCriterion"])
    assert "Sink" in str(M["TsAgainst"]) or "sink" in str(M["TsAgainst"])
    assert "tab:text-study-primary" in str(M["TsAgainst"])
    # the conclusion: the baseline against the criterion's thresholds, where its activations
    # sat, and what softmax1 did to the first position and to the largest activation
    concl = str(M["TsConclusion"])
    assert "did not meet the disease criterion" in concl
    assert "against $5$" in concl and "against $0.05$" in concl
    assert "in the residual stream of the last layer" in concl
    fp = tests[(tests.metric == "first_position") & (tests.other == "softmax1")].iloc[0]
    mag = tests[(tests.metric == "max_inf_norm") & (tests.other == "softmax1")].iloc[0]
    assert ("softmax1 took the first position's weight" in concl) == (fp.verdict == "lower")
    assert ("did not measurably track the attention on the first position" in concl) == (
        fp.verdict == "lower" and mag.verdict == "equivalent")
    site = str(M["TsSite"])
    assert site == ("They sat in the residual stream of the last layer in all 5 seeds "
                    "(leaving out the last residual, in the MLP output of the last layer in 4 of "
                    "the 5).")
    td = R.text_study_data
    assert td["label"] == "text at lr 0.007" and td["where"] == "on text at lr 0.007"
    groups = [r[GROUP] for r in R.tables["text_study_primary.tex"] if GROUP in r]
    assert len(groups) == 2


def test_the_decay_control_is_said_by_what_moved_in_every_seed(tmp_path):
    _commit(tmp_path, "text_outliers", _runs())
    M = T.text_study(FakeReport(tmp_path))
    assert M["TsDecay"] == "" and "not committed yet" in str(M["TsDecayMissing"])
    # at weight decay 0.1 the magnitudes a third of the study's on both seeds: shrank
    decay = T.final(_runs(("softmax",), range(2), "text_outliers_wd01", scale=1 / 3))
    _commit(tmp_path, "text_outliers", _runs(), ablation_text_outliers_wd01=decay)
    M = T.text_study(FakeReport(tmp_path))
    text = str(M["TsDecay"])
    assert str(M["TsDecayMissing"]) == ""
    assert text.startswith("With weight decay $0.1$ instead of $0.0001$ (two seeds")
    # arithmetic means over seeds 0 and 1, as the sweep's table: 325 / 3 against 325
    g = (300 + 350) / 2
    assert f"largest activation ${T.fmt(g / 3)}$ against ${T.fmt(g)}$" in text
    assert "shrank the largest activation, largest kurtosis and BOS residual peak" in text
    assert "validation loss" in text and "worse fit" not in text       # the same loss
    worse = decay.assign(val_loss=decay.val_loss + 0.03)
    _commit(tmp_path, "text_outliers", _runs(), ablation_text_outliers_wd01=worse)
    text = str(T.text_study(FakeReport(tmp_path))["TsDecay"])
    assert ("It also cost $0.030$ nats of validation loss, more than the loss margin of $0.01$, "
            "so the smaller activations came with a worse fit.") in text
    # one seed down, the other unchanged: nothing moved in every seed
    mixed = decay.copy()
    mixed.loc[mixed.seed == 1, ["max_inf_norm", "max_kurtosis", "bos_resid_ratio"]] *= 3
    _commit(tmp_path, "text_outliers", _runs(), ablation_text_outliers_wd01=mixed)
    text = str(T.text_study(FakeReport(tmp_path))["TsDecay"])
    assert "No magnitude moved by a factor of $1.25$ in every seed" in text


def test_a_baseline_past_the_peak_threshold_is_said_diseased(tmp_path):
    _commit(tmp_path, "text_outliers", _runs(peak=6.0))
    M = T.text_study(FakeReport(tmp_path))
    assert M["TsDiseased"] == "1"
    assert "has the disease (first-position residual peak)" in str(M["TsCriterion"])
    assert "met the disease criterion (BOS peak $6.20$" in str(M["TsConclusion"])


def test_a_first_position_drop_with_the_activations_held_is_read_as_not_the_sink():
    from offbyone.report.text_study import conclusion_sentence
    fin = T.final(_runs())
    rows = [{"other": "softmax1", "metric": "first_position", "verdict": "lower",
             "base_mean": 0.0415, "other_mean": 0.0082, "margin": 0.01},
            {"other": "softmax1", "metric": "max_inf_norm", "verdict": "equivalent",
             "base_mean": 6.0, "other_mean": 6.0, "margin": np.log(1.25)}]
    verdict = {"appeared": False, "values": {DISEASE_CRITERION[0].name: 1.7,
                                             DISEASE_CRITERION[1].name: 0.006}}
    text = conclusion_sentence(fin, verdict, pd.DataFrame(rows), 0.007, 4)
    assert ("softmax1 took the first position's weight from $0.0415$ to $0.00820$ and left the "
            "largest activation within a factor $1.25$ of softmax's, so these activations did not "
            "measurably track the attention on the first position.") in text
    rows[1]["verdict"] = "inconclusive"
    text = conclusion_sentence(fin, verdict, pd.DataFrame(rows), 0.007, 4)
    assert "did not measurably move the largest activation." in text
    assert "did not measurably track" not in text


def test_runs_shared_with_the_sweep_are_said_known_before_the_declaration():
    fin = T.final(_runs())
    sweep = fin[fin.variant.isin(["softmax", "softmax1"]) & fin.seed.isin([0, 1])]
    text = T.repeat_sentence(fin, sweep)
    assert text == ("Seeds 0 and 1 of softmax and softmax1 are the sweep's own runs at this rate "
                    "(the same configuration trains the same weights), so their results were "
                    "known when the study was declared; the learned sink and seeds 2, 3 and 4 "
                    "were not.")
    # a sweep run that differs (another configuration) is not the study's
    assert T.repeat_sentence(fin, sweep.assign(val_loss=sweep.val_loss + 0.01)) == ""
    assert T.repeat_sentence(fin, pd.DataFrame()) == ""


def test_smaller_activations_with_wider_gaps_are_said_not_to_quantize_better(tmp_path):
    decay = T.final(_runs(("softmax",), range(2), "text_outliers_wd01", scale=1 / 3))
    decay = decay.assign(gap_W16A6=decay.gap_W16A6 * 1.5, gap_W8A8=decay.gap_W8A8 * 1.5)
    _commit(tmp_path, "text_outliers", _runs(), ablation_text_outliers_wd01=decay)
    text = str(T.text_study(FakeReport(tmp_path))["TsDecay"])
    assert ("Its W8A8 gap and W16A6 gap were larger in every seed: the smaller activations did "
            "not quantize better.") in text


def test_the_sink_sign_counts_the_seeds_its_rule_passes():
    from offbyone.report.prose import disease_signs
    fin = T.final(_runs()).assign(avg_inf_norm=60.0, delimiter_base_rate=0.24,
                                  max_head_first_position_T64=0.26,
                                  sink_rate=lambda f: (f.seed == 4) * 0.0625)
    sink = next(d for d in disease_signs(fin) if d["sign"] == "attention sink")
    # the mean top head (0.26) is below 0.3, but one seed has a head past it: present, said so
    assert sink["present"] and str(sink["value"]) == "$0.260$, 1 of 5 seeds"
    assert "in some seed" in str(sink["criterion"])
