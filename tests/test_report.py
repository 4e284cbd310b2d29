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
    first = changed_since(_root_commit())
    if first:                                                        # lib/ has changed since
        assert f"{len(first)} file(s) under lib/ and configs/ differ" in staleness(_root_commit())


def _root_commit() -> str:
    import subprocess
    from pathlib import Path
    out = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], capture_output=True,
                         text=True, cwd=Path(__file__).parent)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else "0" * 40
