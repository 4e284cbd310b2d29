import math

import numpy as np
import pandas as pd
import pytest

from offbyone.report import (DISEASE_SIGNS, Tex, criterion, disease_signs, effect_sentence, fmt,
                             latex_table, mean_sd, num, paired_difference, paired_differences)


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
    assert effect_sentence(r, "W8A8 loss gap").startswith("softmax1 lowered the W8A8 loss gap")
    flat = paired_difference(_fin([0.1, -0.1, 0.05, -0.05]), "gap_W8A8", "softmax1")
    assert "no significant difference" in effect_sentence(flat, "W8A8 loss gap")
    one = paired_difference(_fin([0.1]), "gap_W8A8", "softmax1")
    assert one["n"] == 1 and math.isnan(one["p"]) and "no test" in effect_sentence(one, "x")
    both = paired_differences(_fin([0.1, 0.2]), ["softmax1"], ["gap_W8A8", "absent"])
    assert list(both.metric) == ["gap_W8A8"]                    # metrics the runs lack are skipped


def test_disease_criteria_come_from_the_thresholds():
    assert [criterion(s) for s in DISEASE_SIGNS][0] == r"max kurtosis $\ge 10$ (Gaussian: 3)"
    assert "$\\ge 0.01$ nats" in criterion(DISEASE_SIGNS[-1])
    assert disease_signs(pd.DataFrame([{"variant": "softmax1", "seed": 0}])) == []
