"""The paper's framing and layout: verdicts that say when the baseline had nothing to fix, the
permutation floor, an abstract of at most 200 words that covers every study and gives every
inconclusive endpoint its direction, and the layout checks CI runs on the LaTeX log."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from offbyone.report.latex import GROUP, latex_table
from offbyone.report.layout import abstract_words, overfull_boxes, source_problems
from offbyone.report.primary import primary_rows, study_label
from offbyone.report.stats import (NOTHING_TO_FIX, PRIMARY, exploratory_metrics,
                                   permutation_floor, primary_tests)
from offbyone.report.synthesis import (ABSTRACT_MAX_WORDS, Study, abstract, answer_sentence,
                                       clause, standardised, title_answer, word_count)
from offbyone.profiles import repo_root


def _fin(n, base, other, metric="gap_W8A8"):
    return pd.DataFrame([{"variant": v, "seed": s, metric: x[s]}
                         for s in range(n) for v, x in (("softmax", base), ("softmax1", other))])


def test_a_baseline_inside_the_margin_has_nothing_to_fix_not_equivalence():
    rng = np.random.default_rng(0)
    base = 0.0003 + rng.normal(0, 1e-4, 10)              # 30 times below the 0.01-nat margin
    other = base + rng.normal(0, 1e-4, 10)
    r = primary_tests(_fin(10, base, other), ["softmax1"]).iloc[0]
    assert r.p_tost_holm < 0.05                           # a TOST would call it equivalent
    assert r.verdict == NOTHING_TO_FIX
    # a baseline with a gap to close keeps the equivalence verdict
    r = primary_tests(_fin(10, base + 0.05, other + 0.05), ["softmax1"]).iloc[0]
    assert r.verdict == "equivalent"
    # and a variant that makes a small gap significantly worse is still 'higher'
    r = primary_tests(_fin(10, base, base + 0.002 + rng.normal(0, 1e-4, 10)), ["softmax1"]).iloc[0]
    assert r.verdict == "higher"
    # no floor, no such verdict: kurtosis near its Gaussian value is not 'nothing to fix'
    assert all(ep.floor is None for ep in PRIMARY if ep.scale == "log")


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_permutation_floor_is_the_smallest_p_scipy_gives(n):
    d = np.arange(1.0, n + 1)                            # every difference positive
    res = sps.permutation_test((d, np.zeros(n)), lambda x, y, axis=-1: np.mean(x - y, axis=axis),
                               permutation_type="samples", vectorized=True, n_resamples=np.inf)
    assert permutation_floor(n) == pytest.approx(res.pvalue)
    assert permutation_floor(3) == 0.25


def test_primary_tests_carry_the_floor_and_the_table_groups_them():
    base = np.array([1.0, 1.1, 0.9])
    tests = primary_tests(_fin(3, base, base - [0.1, 0.2, 0.15], "val_loss"), ["softmax1"])
    assert tests.perm_floor.iloc[0] == 0.25 and tests.p_perm.iloc[0] >= 0.25
    rows = primary_rows(tests, "natural text")
    assert GROUP in rows[0] and "sign-flip floor $p = 0.25$" in rows[0][GROUP]
    assert rows[1]["verdict"] == tests.verdict.iloc[0]


def test_exploratory_never_repeats_a_primary_endpoint():
    explore = exploratory_metrics(PRIMARY)
    assert not {ep.metric for ep in PRIMARY} & set(explore)
    assert "avg_kurtosis" in explore and "copy_loss" in explore


def test_study_labels_name_the_testbed_as_such():
    assert study_label("synthetic", 3000) == "testbed, 3,000 steps"
    assert study_label("pypi") == "natural text"


def test_group_rows_head_every_column(tmp_path):
    latex_table([{GROUP: "a study"}, {"x": "1", "y": "2"}, {GROUP: "another"}, {"x": "3", "y": "4"}],
                tmp_path / "t.tex")
    text = (tmp_path / "t.tex").read_text()
    assert "x & y \\\\" in text                            # the header from the first real row
    assert text.count("\\multicolumn{2}{l}") == 2 and "\\emph{another}" in text


# --- the abstract --------------------------------------------------------------------------
def _row(metric, verdict, diff, lo, hi, scale="linear", base=0.5, n=5, unit=""):
    r = {"metric": metric, "label": metric, "scale": scale, "margin": 0.01 if scale == "linear"
         else math.log(1.25), "unit": unit, "other": "softmax1", "base": "softmax", "n": n,
         "confidence": 0.95, "base_mean": base, "other_mean": base + diff, "diff": diff,
         "ci_low": lo, "ci_high": hi, "p": 0.01, "p_holm": 0.03, "p_tost_holm": 0.2,
         "verdict": verdict}
    if scale == "log":
        r.update(ratio=math.exp(diff), ratio_low=math.exp(lo), ratio_high=math.exp(hi))
    return r


def _studies():
    text = pd.DataFrame([
        _row("gap_W8A8", "lower", -0.005, -0.007, -0.003, base=0.012, unit="nats"),
        _row("gap_W16A6", "inconclusive", -0.06, -0.12, 0.002, base=0.17, unit="nats"),
        _row("max_kurtosis", "inconclusive", -0.05, -0.25, 0.14, "log"),
        _row("max_inf_norm", "inconclusive", 0.07, -0.1, 0.23, "log"),
        _row("first_position", "inconclusive", -0.01, -0.017, -0.005),
        _row("val_loss", "inconclusive", 0.007, 0.002, 0.013, unit="nats")])
    tb = pd.DataFrame([
        _row("gap_W8A8", NOTHING_TO_FIX, 0.0001, -0.00003, 0.0003, base=0.0003, unit="nats"),
        _row("gap_W16A6", NOTHING_TO_FIX, 0.0003, -0.0005, 0.001, base=0.005, unit="nats"),
        _row("max_kurtosis", "inconclusive", 1.85, 0.64, 3.05, "log"),
        _row("max_inf_norm", "equivalent", 0.05, -0.02, 0.12, "log"),
        _row("first_position", "lower", -0.22, -0.24, -0.2, base=0.24),
        _row("val_loss", "equivalent", 0.0002, -0.0002, 0.0007, unit="nats")])
    fin = pd.DataFrame({"variant": ["softmax", "softmax1"], "seed": [0, 0]})
    return [Study("main", "natural text", "on text", text, fin, 3, 800_000, 2_457_600, 600,
                  "Shakespeare characters", "tab:primary"),
            Study("long", "testbed, 3,000 steps", "at 3,000 steps", tb, fin, 5, 405_000,
                  12_000_000, 3000, "synthetic Bigram-Backcopy", "tab:long")]


def test_the_abstract_is_prose_that_fits_covers_every_study_and_answers_first():
    studies = _studies()
    text = abstract(studies, 6, 0.97)
    assert word_count(text) <= ABSTRACT_MAX_WORDS
    for s in studies:
        assert s.data in text
    # question, method and scale, what the baselines had, what softmax1 did, its price, the
    # caveat, the title's question, in that order; no list of verdicts by label
    order = [text.index(k) for k in ("Miller", "We train", "The softmax baselines",
                                     "Across the studies, softmax1", "full-precision loss",
                                     "stay inconclusive", "Is attention off by one?")]
    assert order == sorted(order)
    assert not any(k in text for k in ("Attention sinks:", "Outliers:", "Quantization:", "Cost:"))
    # the baselines' own values, chosen against the disease criterion's 0.05 nats
    assert "had little for softmax1 to cure: W8A8 loss gaps of $0.0003$ to $0.012$ nats" in text
    studies[0].tests.loc[studies[0].tests.metric == "gap_W8A8", "base_mean"] = 0.29
    assert "had quantization damage for softmax1 to cure" in abstract(studies, 6, 0.97)
    # 5 of the text study's 6 tests are inconclusive and 1 of the testbed's
    assert "With 3 to 5 seeds, 6 of softmax1's 12 primary tests stay inconclusive" in text
    assert "Softmax1 raised full-precision loss in no study and trained at $0.97" in text


def _lead(peak_verdict="higher", inf_verdict="higher"):
    rows = [_row("bos_resid_ratio", peak_verdict, 0.7, 0.3, 1.1, "log"),
            _row("max_inf_norm", inf_verdict, 1.1, 0.6, 1.6, "log"),
            _row("max_kurtosis", "inconclusive", 0.3, -0.5, 1.1, "log"),
            _row("gap_W16A6", "higher", 0.2, 0.05, 0.35, base=0.014, unit="nats"),
            _row("gap_W8A8", NOTHING_TO_FIX, 0.0001, -0.00003, 0.0003, base=0.001, unit="nats")]
    rows += [{**r, "other": "sink"} for r in rows]
    fin = pd.DataFrame({"variant": ["softmax"] * 3, "seed": [0, 1, 2],
                        "max_inf_norm": [1200.0, 26000.0, 3100.0]})
    return Study("outliers", "testbed at lr 0.01", "at lr 0.01", pd.DataFrame(rows), fin, 5,
                 600_000, 6_000_000, 3000, "synthetic Bigram-Backcopy at lr 0.01",
                 "tab:outlier-primary", extra={"diseased": False, "peak": 4.2})


def test_the_study_where_the_disease_grows_answers_first():
    studies = [_lead()] + _studies()
    text = abstract(studies, 6, 0.97)
    assert word_count(text) <= ABSTRACT_MAX_WORDS, word_count(text)
    order = [text.index(k) for k in ("Miller", "We train", "At lr 0.01, the softmax baseline",
                                     "There, softmax1 raised", "Elsewhere, where activations stayed",
                                     "full-precision loss", "stay inconclusive")]
    assert order == sorted(order)
    assert "of 405k to 800k parameters" in text and "3 to 5 paired seeds" in text
    assert "activations of $1{,}200$ to $26{,}000$" in text
    assert "$4.20$ times the median position, below the pre-declared criterion's $5$" in text
    # verdicts grouped by verb, an open one with its direction
    assert ("raised the first-token residual peak (ratio $2.01$), the largest activation "
            "(ratio $3.0$) and the 6-bit activation gap") in text
    assert "Its estimate for the maximum kurtosis (ratio $1.3$) pointed higher but stayed" in text
    assert "Elsewhere, where activations stayed $\\le 1.6$, softmax1" in text
    # the title's question is answered by the lead study, not repeated
    assert "Is attention off by one?" not in text
    assert title_answer(studies).endswith("there softmax1 made them larger.")
    studies[0] = _lead("inconclusive", "inconclusive")
    assert "at this scale softmax1 moves weight off the first position" in title_answer(studies)
    # every open estimate pointing one way is said so, with no verdict claimed
    studies[0].tests.loc[studies[0].tests.metric == "gap_W16A6", "verdict"] = "inconclusive"
    text = abstract(studies, 6, 0.97)
    assert "There, softmax1's estimates for the first-token residual peak (ratio $2.01$)" in text
    assert "all pointed higher, none significant after Holm's correction" in text


def test_the_lead_baseline_has_a_brief_form_for_a_full_abstract():
    from offbyone.report.synthesis import lead_baseline
    lead = _lead()
    lead.fin["gap_W8A8"] = 0.0018
    full, brief = lead_baseline(lead), lead_baseline(lead, brief=True)
    assert full.endswith("$4.20$ times the median position, below the pre-declared criterion's "
                         "$5$, though its W8A8 gap was $0.0018$ nats.")
    assert brief.endswith("$4.20$ times the median (criterion: $5$), though its W8A8 gap was "
                          "$0.0018$ nats.")
    assert word_count(brief) < word_count(full)


def test_clauses_say_the_verdict_and_the_direction():
    r = _row("max_kurtosis", "inconclusive", 1.85, 0.64, 3.05, "log")
    assert clause(r, "at 3,000 steps").startswith("inconclusive at 3,000 steps (estimate higher")
    r = _row("gap_W8A8", NOTHING_TO_FIX, 0.0001, -0.00003, 0.0003, base=0.0003, unit="nats")
    assert clause(r, "on the testbed").startswith("no gap to close on the testbed")
    eff, lo, hi = standardised(_row("gap_W8A8", "lower", -0.005, -0.007, -0.003))
    assert (eff, lo, hi) == pytest.approx((-0.5, -0.7, -0.3))


def test_the_answer_is_chosen_by_the_verdicts():
    studies = _studies()
    a = answer_sentence(studies)
    assert a.startswith("softmax1 moves weight off the first position beyond the margin at 3,000 steps")
    assert "within a factor 1.25" in a and "narrows a quantization gap only on text" in a
    for s in studies:                                     # no sink anywhere: said so
        s.tests.loc[s.tests.metric == "first_position", "verdict"] = "inconclusive"
    assert "does not measurably move weight off the first position" in answer_sentence(studies)


def test_verdicts_are_quoted_with_the_test_that_decides_them():
    # a significant difference whose interval lies inside the margin says so
    r = _row("val_loss", "higher", 0.004, 0.002, 0.006)
    assert clause(r, "on text", True).startswith("higher, within the equivalence margin on text")
    assert clause(_row("val_loss", "higher", 0.02, 0.005, 0.035), "on text").startswith(
        "higher on text")
    # an equivalence is quoted with its TOST p, not the difference test's
    r = {**_row("val_loss", "equivalent", 0.0002, -0.0002, 0.0007), "p_tost_holm": 0.001}
    c = clause(r, "on text", True)
    assert "TOST Holm $p = 0.0010$" in c and "Holm $p = 0.030$" not in c


def test_an_open_gap_estimate_that_points_lower_is_said():
    studies = _studies()
    studies[0].tests.loc[studies[0].tests.metric == "gap_W8A8", "verdict"] = "inconclusive"
    a = answer_sentence(studies)
    assert ("narrows no quantization gap significantly (on text the W8A8 estimate fell from "
            "$0.0120$ to $0.0070$ nats, inconclusive after Holm; at 3,000 steps the baseline had "
            "none to close)") in a


def test_the_abstention_claim_is_chosen_by_the_active_kurtosis():
    from offbyone.report.synthesis import confound_sentence
    studies = _studies()
    studies[0].fin = pd.DataFrame({"variant": ["softmax", "softmax1"] * 2, "seed": [0, 0, 1, 1],
                                   "abstention": [0, 0.05, 0, 0.06],
                                   "max_kurtosis": [8, 7.5, 8, 7.6],
                                   "max_active_kurtosis": [8, 7.5, 8, 7.6],
                                   "max_kurtosis_module": ["blocks.1.resid"] * 4})
    text = confound_sentence(studies)
    assert text.startswith("On text softmax1 left $5.5\\%$ of its attention on the implicit zero")
    assert "Abstention did not inflate that kurtosis" in text and "$7.55$ against $7.55$" in text
    studies[0].fin["max_active_kurtosis"] = [8, 3, 8, 3]
    assert "Abstention inflated that kurtosis" in confound_sentence(studies)
    studies[0].fin = studies[0].fin.drop(columns="max_active_kurtosis")   # not measured: no claim
    assert confound_sentence(studies) == ""


@pytest.mark.parametrize("n", [2, 3, 5, 10, 20])
def test_the_minimum_detectable_effect_is_statsmodels(n):
    from statsmodels.stats.power import TTestPower

    from offbyone.report.stats import minimum_detectable
    want = TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert minimum_detectable(n) == pytest.approx(want, rel=1e-6)
    assert math.isnan(minimum_detectable(1))


def test_the_detectable_effects_table_gives_units_and_factors():
    from offbyone.report.latex import GROUP
    from offbyone.report.stats import minimum_detectable
    from offbyone.report.synthesis import mde_rows, mde_sentence
    studies = _studies()
    for s in studies:
        s.tests["sd"] = 0.1
    rows = mde_rows(studies)
    assert sum(GROUP in r for r in rows) == 2
    gap = next(r for r in rows if r.get("endpoint") == "W8A8 gap")
    assert gap["detectable"] == f"$\\pm{minimum_detectable(5) * 0.1:.2g}$ nats"   # 2 digits
    kurt = next(r for r in rows if r.get("endpoint") == "max. kurtosis")
    assert kurt["detectable"].startswith("$\\times") and kurt["margin"] == "$\\times1.25$"
    studies[0].tests["n"] = 3
    assert "at least $3.26$ (3 seeds) and $1.68$ (5 seeds) standard deviations" in mde_sentence(
        studies)


def test_word_count_counts_numbers_and_not_commands():
    # a, the number, b, the reference (one word), the number in scientific notation, c
    assert word_count(r"a $-0.0056$ b \cref{tab:x} $2.8\times 10^{-6}$ c") == 6


# --- layout ---------------------------------------------------------------------------------
LOG = r"""(./generated/tables/primary.tex)
Overfull \hbox (52.74304pt too wide) in paragraph at lines 1--192
(./generated/tables/main.tex)
Overfull \hbox (0.5pt too wide) in paragraph at lines 1--20
"""


def test_overfull_boxes_over_a_point_are_found_with_their_table():
    found = overfull_boxes(LOG)
    assert len(found) == 1 and "52.74304" in found[0] and "primary.tex" in found[0]


def test_source_problems_catch_scaled_tables_and_floats_in_the_references():
    bad = "\\resizebox{\\linewidth}{!}{x}\n\\bibliography{refs}"
    problems = source_problems(bad)
    assert any("resizebox" in p for p in problems) and any("FloatBarrier" in p for p in problems)
    assert source_problems("% \\resizebox in a comment\n\\FloatBarrier\n\\bibliography{refs}") == []
    # the paper itself
    assert source_problems((repo_root() / "paper" / "main.tex").read_text()) == []


def test_abstract_words_reads_the_macro():
    assert abstract_words("\\newcommand{\\Abstract}{one two $3$}\n") == 3
    assert abstract_words("\\newcommand{\\Other}{x}\n") is None


def test_limitations_state_the_scale_and_the_permutation_floor_from_the_numbers():
    from offbyone.report.results import published_table
    from offbyone.report.synthesis import limitations
    studies = _studies()
    text = limitations(studies, published_table())
    assert "$0.25$ with 3 seeds" in text and "with 3 and 5 seeds only the $t$-test" in text
    theirs = published_table().params_m.min() * 1e6
    assert f"{round(theirs / 800_000):,}".replace(",", "{,}") in text
    for s in studies:
        s.seeds = 10
    assert "only the $t$-test" not in limitations(studies, published_table())


# --- which quantized tensor costs what (report/attribution.py) --------------------------------
def _groups_frame():
    rows = []
    rng = np.random.default_rng(0)
    for v, scores in (("softmax", 0.006), ("softmax1", 0.002)):
        for seed in range(4):
            w = 0.001
            rows += [{"variant": v, "seed": seed, "setting": "W8A8", "group": "", "mode": m,
                      "gap": g} for m, g in (("none", w), ("all", w + scores + 0.003))]
            for g, cost in (("scores", scores), ("LayerNorm outputs", 0.003), ("q, k, v", 0.0002)):
                c = cost + rng.normal(0, 1e-4)
                rows += [{"variant": v, "seed": seed, "setting": "W8A8", "group": g,
                          "mode": "only", "gap": w + c},
                         {"variant": v, "seed": seed, "setting": "W8A8", "group": g,
                          "mode": "all but", "gap": w + scores + 0.003 - c}]
    return pd.DataFrame(rows)


def test_attribution_names_the_groups_that_carry_each_gap():
    from offbyone.report.attribution import carry_sentence, contributions, largest_difference, top_groups
    c = contributions(_groups_frame())
    assert c[c.group == "scores"].own.mean() == pytest.approx(0.004, abs=2e-4)
    assert [g for g, _ in top_groups(c, "softmax", "W8A8")] == ["scores", "LayerNorm outputs"]
    assert [g for g, _ in top_groups(c, "softmax1", "W8A8")] == ["LayerNorm outputs", "scores"]
    text = carry_sentence(c, "On text")
    # both variants' two costliest groups are the same: named once, each variant's values after
    assert text.startswith("On text at W8A8, the gap was $0.010$ nats under softmax and $0.0060$ under")
    assert "the scores and the LayerNorm outputs cost most alone under every variant" in text
    assert text.count("cost most alone") == 1
    # a variant whose costliest groups differ: each said with its own
    c2 = c.copy()
    c2.loc[(c2.variant == "softmax1") & (c2.group == "LayerNorm outputs"), "own"] = 0.0
    text = carry_sentence(c2, "On text")
    assert "the groups that cost most alone were" in text and "under softmax1." in text
    best = largest_difference(c, "W8A8")
    assert best["group"] == "scores" and best["diff"] == pytest.approx(-0.004, abs=3e-4)


# --- kurtosis read with magnitude (report/magnitude.py) ----------------------------------------
def test_kurtosis_and_magnitude_disagree_when_only_kurtosis_moves():
    from offbyone.report.magnitude import agreement, log_ratio, sentence
    rng = np.random.default_rng(4)
    rows = []
    for seed in range(5):
        for v, kurt in (("softmax", 10.0), ("softmax1", 40.0)):
            rows.append({"variant": v, "seed": seed,
                         "max_kurtosis": kurt * np.exp(rng.normal(0, 0.05)),
                         "max_active_kurtosis": kurt * np.exp(rng.normal(0, 0.05)),
                         "max_p9999": 5 * np.exp(rng.normal(0, 0.05)),
                         "max_inf_norm": 8 * np.exp(rng.normal(0, 0.05))})
    fin = pd.DataFrame(rows)
    ratios = {m: log_ratio(fin, m, "softmax1") for m in
              ("max_kurtosis", "max_active_kurtosis", "max_p9999", "max_inf_norm")}
    assert ratios["max_kurtosis"]["ratio"] == pytest.approx(4, rel=0.1)
    # the geometric means and their ratio, as scipy's paired t-test on the logs gives them
    a = np.log(fin[fin.variant == "softmax"].max_p9999.to_numpy())
    b = np.log(fin[fin.variant == "softmax1"].max_p9999.to_numpy())
    ci = sps.ttest_rel(b, a).confidence_interval()
    assert ratios["max_p9999"]["ratio_low"] == pytest.approx(np.exp(ci.low))
    assert agreement(ratios) == "disagree"
    text = sentence(ratios, "On text")
    assert text.startswith("On text, softmax1's maximum kurtosis was ")       # a verb
    assert " times softmax's (95\\% CI " in text and "its 99.99th percentile of |x| " in text
    assert text.endswith("kurtosis rose while magnitude held (each of its intervals includes 1).")
    same = {m: ratios[m] for m in ("max_kurtosis", "max_active_kurtosis")}
    same.update({m: ratios["max_kurtosis"] for m in ("max_p9999", "max_inf_norm")})
    assert agreement(same) == "agree"
    assert sentence(same, "On text").endswith("kurtosis and magnitude both rose.")


# --- retrofitting a trained model (report/retrofit.py) ----------------------------------------
def _retrofit_runs():
    """Five seeds: the source puts 0.3 on position 0; the softmax control keeps it, softmax1
    and the sink drop it to about 0.05; the loss moves by little."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in range(5):
        src = {"val_loss": 2.30 + rng.normal(0, 0.01), "first_position": 0.30 + rng.normal(0, 0.01)}
        for v in ("softmax", "softmax1", "sink"):
            for step in (0, 300):
                if step == 0:
                    r = dict(src) if v == "softmax" else {
                        "val_loss": src["val_loss"] + 0.2, "first_position": src["first_position"]}
                else:
                    r = {"val_loss": src["val_loss"] - 0.01 + rng.normal(0, 0.002),
                         "first_position": (0.30 if v == "softmax" else 0.05) + rng.normal(0, 0.01)}
                rows.append({"variant": v, "seed": seed, "step": step, "max_steps": 300, **r,
                             "abstention": 0.0 if v == "softmax" else 0.4,
                             "max_kurtosis": 10 * np.exp(rng.normal(0, 0.1)),
                             "max_inf_norm": 5 * np.exp(rng.normal(0, 0.1)),
                             "gap_W8A8": 0.001 + rng.normal(0, 1e-4),
                             "gap_W16A6": 0.002 + rng.normal(0, 1e-4)})
    return pd.DataFrame(rows)


def test_retrofit_compares_each_arm_with_the_control_and_with_its_source():
    from offbyone.report.retrofit import CONVERTED, SOURCE, frames, text
    from offbyone.report.stats import paired_difference, primary_tests
    F = frames(_retrofit_runs())
    # the source is the softmax run's step 0, the converted weights the softmax1 run's step 0
    assert sorted(set(F.variant)) == sorted({"softmax", "softmax1", "sink", SOURCE, CONVERTED})
    assert (F.groupby("variant").seed.nunique() == 5).all()
    tests = primary_tests(F[F.variant.isin(["softmax", "softmax1", "sink"])], ["softmax1", "sink"])
    fp = tests[(tests.metric == "first_position") & (tests.other == "softmax1")].iloc[0]
    assert fp["verdict"] == "lower" and fp["diff"] == pytest.approx(-0.25, abs=0.02)
    changes = [paired_difference(F, m, v, base=SOURCE) for v in ("softmax", "softmax1", "sink", CONVERTED)
               for m in ("first_position", "val_loss", "abstention")]
    by = {(c["other"], c["metric"]): c for c in changes}
    assert by[(CONVERTED, "val_loss")]["diff"] == pytest.approx(0.2, abs=1e-9)
    assert by[("softmax", "first_position")]["ci_low"] < 0 < by[("softmax", "first_position")]["ci_high"]
    words = text(tests, by, ["softmax", "softmax1", "sink"], 300)
    assert "300 more steps changed the attention on the first position by" in words
    assert "without any fine-tune changed the loss by $0.200$" in words
    assert "softmax1 lowered the attention on the first position ($-0.248$)" in words
    assert "lay within the margin of 0: there was nothing to fix" in words
    assert "under the learned sink" in words
    assert "A fine-tune of 300 steps as softmax1 and the learned sink lowered the attention" in words
    assert "After the fine-tune, softmax1 left $40\\%$ and the learned sink left $40\\%$" in words


def test_retrofit_text_says_when_no_retrofit_lowered_the_first_position():
    from offbyone.report.retrofit import frames, text
    from offbyone.report.stats import primary_tests
    df = _retrofit_runs()
    ctrl = df[(df.variant == "softmax") & (df.step == 300)].set_index("seed").first_position
    for v, shift in (("softmax1", 0.001), ("sink", -0.002)):
        rows = (df.variant == v) & (df.step == 300)
        df.loc[rows, "first_position"] = (ctrl[df.loc[rows, "seed"]].to_numpy()
                                         + shift + np.array([-0.03, 0.02, -0.01, 0.03, -0.02]))
    F = frames(df)
    tests = primary_tests(F[F.variant.isin(["softmax", "softmax1", "sink"])], ["softmax1", "sink"])
    assert set(tests[tests.metric == "first_position"].verdict) == {"inconclusive"}
    words = text(tests, {}, ["softmax", "softmax1", "sink"], 300)
    assert "In 300 steps no retrofit lowered the attention on the first position" in words
    assert "was inconclusive on the attention on the first position" in words


def test_section_one_answers_in_brief_from_the_lead_study():
    from offbyone.report.synthesis import brief_answer
    text = brief_answer([_lead()] + _studies())
    assert text.startswith("In brief: at lr 0.01, the softmax baseline grew activations")
    assert "There, softmax1 raised" in text and "In the other studies, whose baselines" in text
    assert brief_answer(_studies()).startswith("In brief: at this scale, softmax1")


def test_a_sink_removed_is_a_drop_beyond_the_margin_and_the_table_says_within_margin():
    from offbyone.report.primary import primary_row
    from offbyone.report.synthesis import title_answer
    text, tb = _studies()
    # the 3,000-step study's drop (-0.22, interval -0.24 to -0.20) is beyond the 0.01 margin
    assert "first position beyond the margin at 3,000 steps" in title_answer([text, tb])
    # a drop whose interval reaches inside the margin is not a sink removed
    tb.tests.loc[tb.tests.metric == "first_position", ["ci_low", "ci_high"]] = [-0.012, -0.002]
    assert "neither measurably moves weight off the first position" in title_answer([text, tb])
    r = {**_row("val_loss", "higher", 0.0035, 0.0026, 0.0043, unit="nats"), "p_tost_holm": 1e-5,
         "p_perm": 0.002, "base_gmean": None, "other_gmean": None}
    assert primary_row(r)["verdict"] == "higher$^{*}$"
    assert primary_row({**r, "p_tost_holm": 0.3})["verdict"] == "higher"


def test_the_harms_are_said_where_a_paired_test_finds_them():
    from offbyone.report.synthesis import harms_sentence
    text, tb = _studies()
    rows = [{"variant": v, "seed": s, "copy_loss": 0.18 + 0.01 * s + (0.06 if v == "softmax1" else 0)
             + 0.001 * (s % 2), "gap_W4A4": 0.2} for v in ("softmax", "softmax1") for s in range(5)]
    tb.fin = pd.DataFrame(rows)
    out = harms_sentence([text, tb])
    assert out.startswith("It also cost something (paired $t$-tests")
    assert "the loss after a trigger at 3,000 steps rose from $0.200$ to $0.260$ nats" in out
    assert "W4A4" not in out                      # no change there: not said
    # the long study's kurtosis interval (0.64 to 3.05 in logs) lies above 1: said, with Holm
    assert "the largest kurtosis at 3,000 steps rose $6.4$-fold" in out
    tb.fin = pd.DataFrame(rows).assign(copy_loss=0.2)
    tb.tests.loc[tb.tests.metric == "max_kurtosis", "ci_low"] = -0.1
    assert harms_sentence([text, tb]) == ""


def test_the_baselines_activations_are_softmaxs_own_and_the_short_form_any_variants():
    from offbyone.report.synthesis import other_baselines
    studies = _studies()
    for s in studies:
        s.fin = pd.DataFrame({"variant": ["softmax", "softmax1"], "seed": [0, 0],
                              "max_inf_norm": [558.0, 585.0]})
    assert "activations $\\le 558$" in other_baselines(studies)
    assert other_baselines(studies, short=True) == "where activations stayed $\\le 585$"


def test_kurtosis_is_said_by_its_verdicts_not_by_intervals():
    studies = _studies()
    # the testbed's kurtosis interval lies above 0 but its verdict is inconclusive: not claimed
    a = answer_sentence(studies)
    assert "kurtosis" not in a
    studies[1].tests.loc[studies[1].tests.metric == "max_kurtosis", "verdict"] = "lower"
    assert "lowers kurtosis only at 3,000 steps" in answer_sentence(studies)
