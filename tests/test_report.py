import json
import math

import numpy as np
import pandas as pd
import pytest

from offbyone.report import (DISEASE_SIGNS, Tex, criterion, disease_signs, effect_sentence, fmt,
                             latex_table, mean_sd, num, paired_difference, paired_differences)
from offbyone.report.prose import p_value, primary_sentence, verdict_summary
from offbyone.report.stats import PRIMARY, Endpoint, endpoint_test, holm, primary_tests


def test_latex_table_escapes_plain_text_and_keeps_tex(tmp_path):
    rows = [{"module": "blocks.0.mlp_hidden", Tex("$p$"): num(0.0123, 2), "note": "50% & more"},
            {"module": "embed"}]
    latex_table(rows, tmp_path / "t.tex")
    lines = (tmp_path / "t.tex").read_text().splitlines()
    assert lines[2] == r"module & $p$ & note \\"
    assert lines[4] == r"blocks.0.mlp\_hidden & $0.012$ & 50\% \& more \\"
    assert lines[5] == r"embed & -- & -- \\"                         # a missing cell
    with pytest.raises(TypeError, match="list of row dicts"):
        latex_table(pd.DataFrame(rows), tmp_path / "u.tex")          # would lose the Tex marks


def test_numbers_and_mean_sd():
    assert fmt(12345) == "12{,}345" and fmt(0.012345) == "0.0123" and fmt(2.5e-7) == r"2.50\times 10^{-7}"
    assert fmt(float("nan")) == "n/a" and isinstance(fmt(1.0), Tex)
    assert mean_sd([1.0, 2.0, 3.0]) == r"$2.00 \pm 1.0$"
    assert mean_sd(pd.Series([1.0, np.nan, 3.0])) == r"$2.00 \pm 1.4$"      # NaN skipped
    assert mean_sd([4.0]) == "$4.00$"


def _fin(diffs, metric="gap_W8A8"):
    rows = []
    for seed, d in enumerate(diffs):
        rows += [{"variant": "softmax", "seed": seed, metric: 1.0 + seed},
                 {"variant": "softmax1", "seed": seed, metric: 1.0 + seed + d}]
    return pd.DataFrame(rows)


def test_paired_difference_matches_scipy_and_decides_the_sentence():
    from scipy import stats
    fin = _fin([-0.5, -0.4, -0.6, -0.45])
    r = paired_difference(fin, "gap_W8A8", "softmax1")
    a = fin[fin.variant == "softmax"].gap_W8A8.to_numpy()
    b = fin[fin.variant == "softmax1"].gap_W8A8.to_numpy()
    ref = stats.ttest_rel(b, a)
    ci = ref.confidence_interval(0.95)
    assert r["p"] == pytest.approx(ref.pvalue) and r["diff"] == pytest.approx(np.mean(b - a))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))
    sentence = effect_sentence(r, "W8A8 loss gap")
    assert sentence.startswith("the W8A8 loss gap of softmax1 minus softmax: $-0.49$ (95\\% CI $-0.62$ to $-0.35$, paired $t$-test $p = 0.0014$")
    assert "exploratory" in sentence and "significant" not in sentence
    flat = paired_difference(_fin([0.1, -0.1, 0.05, -0.05]), "gap_W8A8", "softmax1")
    assert "significant" not in effect_sentence(flat, "W8A8 loss gap")
    one = paired_difference(_fin([0.1]), "gap_W8A8", "softmax1")
    assert one["n"] == 1 and math.isnan(one["p"]) and "no test" in effect_sentence(one, "x")
    both = paired_differences(_fin([0.1, 0.2]), ["softmax1"], ["gap_W8A8", "absent"])
    assert list(both.metric) == ["gap_W8A8"]                    # metrics the runs lack are skipped


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    for p in [[0.01, 0.04, 0.03, 0.2, 0.0005, 0.5], rng.uniform(0, 0.2, 9), [0.3], [0.02, 0.02]]:
        want = multitest.multipletests(p, method="holm")[1]
        assert holm(p) == pytest.approx(want, abs=1e-12)


def _fin_many(d, base=None, metric="m"):
    base = np.linspace(1.0, 2.0, len(d)) if base is None else np.asarray(base)
    rows = []
    for seed, (a, x) in enumerate(zip(base, d)):
        rows += [{"variant": "softmax", "seed": seed, metric: a},
                 {"variant": "softmax1", "seed": seed, metric: a + x}]
    return pd.DataFrame(rows)


def test_endpoint_test_is_scipys_paired_tests():
    from scipy import stats
    rng = np.random.default_rng(1)
    d = rng.normal(-0.02, 0.01, 10)
    fin = _fin_many(d)
    r = endpoint_test(fin, Endpoint("m", "m", "linear", 0.01), "softmax1")
    a, b = fin[fin.variant == "softmax"].m.to_numpy(), fin[fin.variant == "softmax1"].m.to_numpy()
    t = stats.ttest_rel(b, a)
    assert r["p"] == pytest.approx(t.pvalue) and r["n"] == 10
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
    # exact sign-flip test: all 2^10 sign patterns of the differences, two-sided
    signs = np.array(np.meshgrid(*[[-1, 1]] * 10)).reshape(10, -1).T
    null = (signs * (b - a)).mean(1)
    exact = np.mean(np.abs(null) >= abs((b - a).mean()) - 1e-15)
    assert r["p_perm"] == pytest.approx(exact)
    # TOST: the larger of the two one-sided p-values against -margin and +margin
    lo = stats.ttest_1samp(b - a, -0.01, alternative="greater").pvalue
    hi = stats.ttest_1samp(b - a, 0.01, alternative="less").pvalue
    assert r["p_tost"] == pytest.approx(max(lo, hi))
    assert r["boot_low"] < r["diff"] < r["boot_high"]
    assert r["dz"] == pytest.approx((b - a).mean() / (b - a).std(ddof=1))


def test_log_scale_endpoint_is_a_ratio_of_geometric_means():
    base = np.array([10.0, 100.0, 50.0, 20.0, 30.0])
    fin = _fin_many(base * np.array([1.9, 2.1, 2.0, 1.95, 2.05]) - base, base)
    r = endpoint_test(fin, Endpoint("m", "m", "log", np.log(1.25)), "softmax1")
    assert r["ratio"] == pytest.approx(np.exp(np.mean(np.log([1.9, 2.1, 2.0, 1.95, 2.05]))))
    assert r["base_gmean"] == pytest.approx(np.exp(np.log(base).mean()))
    assert r["ratio_low"] < r["ratio"] < r["ratio_high"]


def test_primary_verdicts_holm_and_equivalence():
    rng = np.random.default_rng(2)
    n = 10
    rows = []
    for seed in range(n):
        for v, shift in (("softmax", 0.0), ("softmax1", 1.0)):
            rows.append({"variant": v, "seed": seed,
                         "gap_W8A8": 0.05 + rng.normal(0, 1e-3) - 0.03 * shift,   # lower
                         "gap_W16A6": 0.02 + rng.normal(0, 1e-3),                  # equivalent
                         "max_kurtosis": np.exp(2 + rng.normal(0, 1.0)),           # too noisy
                         "val_loss": 1.5 + 1e-4 * seed + shift * 0.002 * (-1) ** seed})
    tests = primary_tests(pd.DataFrame(rows), ["softmax1"])
    v = dict(zip(tests.metric, tests.verdict))
    assert v == {"gap_W8A8": "lower", "gap_W16A6": "equivalent",
                 "max_kurtosis": "inconclusive", "val_loss": "equivalent"}
    assert list(tests.p_holm) == pytest.approx(list(holm(tests.p)))   # one family of four
    s = dict(zip(tests.metric, (primary_sentence(r) for r in tests.to_dict("records"))))
    assert s["gap_W8A8"].startswith(
        "softmax1 had a lower W8A8 loss gap: softmax1 $-$ softmax $-0.03012$ (95\\% CI $-0.03090$ "
        "to $-0.02934$), Holm $p < 10^{-4}$")
    assert "equivalent in W16A6 (activations only) loss gap within $\\pm0.0100$ nats" in s["gap_W16A6"]
    assert s["max_kurtosis"].startswith("the maximum kurtosis is inconclusive: softmax1/softmax ratio")
    summary = verdict_summary(tests, "softmax1")
    assert summary == ("softmax1 had a lower W8A8 loss gap ($-0.03012$ nats, 95\\% CI $-0.03090$ "
                       "to $-0.02934$, Holm $p < 10^{-4}$); it was equivalent to softmax within "
                       "the stated margins in W16A6 (activations only) loss gap and "
                       "full-precision validation loss, and was inconclusive in maximum kurtosis")
    assert [ep.metric for ep in PRIMARY] == ["gap_W8A8", "gap_W16A6", "max_kurtosis",
                                             "max_inf_norm", "first_position", "val_loss"]


def test_a_difference_inside_the_margin_says_so():
    # softmax1's loss higher by about 0.003 nats, seed by seed: detectable, and inside the
    # declared 0.01-nat margin
    rng = np.random.default_rng(3)
    base = 1.5 + rng.normal(0, 0.01, 10)
    other = base + 0.003 + rng.normal(0, 0.0005, 10)
    rows = [{"variant": v, "seed": seed, "val_loss": x[seed]}
            for seed in range(10) for v, x in (("softmax", base), ("softmax1", other))]
    tests = primary_tests(pd.DataFrame(rows), ["softmax1"])
    r = tests.to_dict("records")[0]
    assert r["verdict"] == "higher" and r["p_tost_holm"] < 0.05
    assert primary_sentence(r).endswith(
        "; the difference is also within the equivalence margin of $\\pm0.0100$ nats "
        f"(Holm-corrected TOST {'$' + p_value(r['p_tost_holm']) + '$'})")
    assert "; within the equivalence margin)" in verdict_summary(tests, "softmax1")
    wide = pd.DataFrame([{**x, "val_loss": x["val_loss"] + 0.05 * (x["variant"] == "softmax1")}
                         for x in rows])     # 0.053 nats: outside the margin, no such clause
    r = primary_tests(wide, ["softmax1"]).to_dict("records")[0]
    assert r["verdict"] == "higher" and "margin" not in primary_sentence(r)


def test_disease_criteria_come_from_the_thresholds():
    assert [criterion(s) for s in DISEASE_SIGNS][0] == r"max kurtosis $\ge 10$ (Bondarenko et al.'s modules)"
    assert "$\\ge 0.01$ nats" in criterion(DISEASE_SIGNS[-1])
    assert disease_signs(pd.DataFrame([{"variant": "softmax1", "seed": 0}])) == []


def test_staleness_names_what_changed_since_the_results_commit(tmp_path):
    from offbyone.provenance import changed_since, git_sha, staleness
    head = git_sha()
    if head == "unknown":
        pytest.skip("not a git checkout")
    assert changed_since("0" * 40) is None                           # a commit this clone lacks
    assert "does not have" in staleness("0" * 40)
    assert "uncommitted changes" in staleness(head.removesuffix("-dirty") + "-dirty")
    clean = changed_since(head.removesuffix("-dirty"))
    if clean is not None and not clean:
        assert staleness(head.removesuffix("-dirty")) == ""         # this checkout's own code
    # the commits that measured are not stale for changes to the report alone
    from offbyone.provenance import staleness_of
    report_only = changed_since(_root_commit(), exclude=("lib/offbyone/report",))
    every = changed_since(_root_commit())
    if every is not None and report_only is not None:
        assert set(report_only) == {f for f in every if not f.startswith("lib/offbyone/report/")}
    assert staleness_of({"commit": head.removesuffix("-dirty") + "-dirty"}).startswith(
        "These numbers were produced by uncommitted changes")
    first = changed_since(_root_commit())
    if first:                                                        # lib/ has changed since
        note = staleness(_root_commit())
        assert note.startswith(f"{len(first)} file{'s' if len(first) > 1 else ''} of the code "
                               "under configs/ and lib/ that produced these numbers")
        assert f"changed since commit {_root_commit()[:10]}" in note


def _root_commit() -> str:
    import subprocess
    from pathlib import Path
    out = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                         text=True, cwd=Path(__file__).parent)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else "0" * 40


def test_elapsed_time_spans_the_notebooks_that_ran_at_once():
    from offbyone.report.sections import _elapsed
    # two runs at once (0-10 s and 2-12 s), a measurement after (12-15 s): 15 s elapsed, 23 s
    # summed; a report rebuilt later does not count
    stages = pd.DataFrame([{"stage": "train", "target": "a", "seconds": 10.0, "end": 110.0},
                           {"stage": "train", "target": "b", "seconds": 10.0, "end": 112.0},
                           {"stage": "measure", "target": "c", "seconds": 3.0, "end": 115.0},
                           {"stage": "report", "target": "d", "seconds": 9.0, "end": 5000.0}])
    assert _elapsed(stages) == pytest.approx(15.0)
    # a measurement rerun an hour later: its 3 s count, the idle hour between does not
    later = pd.concat([stages, pd.DataFrame([{"stage": "measure", "target": "e", "seconds": 3.0,
                                              "end": 3715.0}])])
    assert _elapsed(later) == pytest.approx(18.0)
    assert _elapsed(stages.drop(columns="end")) is None       # timings from before the field
    assert _elapsed(stages.assign(end=float("nan"))) is None


def test_run_notebook_records_its_time_and_end(tmp_path):
    import time

    import nbformat

    from offbyone.pipeline import run_notebook
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("y = x + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out, log = tmp_path / "t.ipynb", tmp_path / "out.ipynb", tmp_path / "timings.jsonl"
    nbformat.write(nb, src)
    before = time.time()
    run_notebook(str(src), str(out), {"x": 2}, "report", str(log))
    row = json.loads(log.read_text())
    assert out.exists() and row["stage"] == "report" and row["target"] == str(out)
    assert before < row["end"] <= time.time() and 0 < row["seconds"] <= row["end"] - before


def test_an_ablation_of_softmax_alone_says_only_what_the_change_did():
    """The weight-decay control of the text study trains softmax alone: its sentences compare
    the change on the softmax baseline, and say nothing of a softmax1 it did not train."""
    import types
    from offbyone.report.ablation import ablation_sentences
    rows = lambda variants, shift: pd.DataFrame(
        [{"variant": v, "seed": s, "sink_rate": 0.1 + shift, "first_position": 0.02 + s * 1e-3,
          "avg_kurtosis": 5.0 + shift + s, "gap_W8A8": 0.004 + shift / 100}
         for v in variants for s in (0, 1)])
    R = types.SimpleNamespace(fin=rows(("softmax", "softmax1"), 0.0))
    only = ablation_sentences(R, "text_outliers_wd01", "weight decay 0.1", rows(("softmax",), 1.0))
    assert len(only) == 4 and not any("With weight decay 0.1" in s for s in only)
    assert all("softmax baseline with weight decay 0.1" in s for s in only)
    both = ablation_sentences(R, "x", "weight decay 0.1", rows(("softmax", "softmax1"), 1.0))
    assert len(both) == 7 and both[0].startswith("With weight decay 0.1, ")


def test_symlog_ticks_are_decades_thinned_so_labels_never_meet():
    from offbyone.report.attribution import decade_ticks
    assert decade_ticks(-0.002, 0.02) == [-0.001, 0.0, 0.001, 0.01]
    # five decades to the right: every other one, the outermost kept
    assert decade_ticks(-0.0015, 0.3) == [-0.001, 0.0, 0.001, 0.1]
    assert decade_ticks(-0.0004, 0.0006) == [0.0]          # inside the linear region
