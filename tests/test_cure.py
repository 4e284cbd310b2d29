"""The section on curing a diseased model reads the committed results of retrofit_outliers (and
of its companions when they are there), tests its declared endpoints against the control, and
says what the numbers say (report/cure.py)."""

import numpy as np
import pandas as pd

from offbyone.report import cure as C
from offbyone.report.latex import GROUP, fmt
from offbyone.report.stats import STUDY_PRIMARY
from test_outlier_study import FakeReport, _commit

SOURCE_PEAK = [11.5, 2.0, 16.0, 1.5, 13.0]


def _runs(variants=("softmax", "softmax1", "sink"), seeds=range(5), lr=1e-3, cure=None,
          sink_end=2.0) -> pd.DataFrame:
    """Fine-tunes of 900 steps checkpointed at 0, 300 and 900: step 0 is the source under
    softmax and the converted weights otherwise; `cure` scales each arm's peak at the end."""
    cure = cure or {"softmax": 0.9, "softmax1": 0.5, "sink": 0.4}
    rng = np.random.default_rng(1)
    rows = []
    for v in variants:
        for seed in seeds:
            for step in (0, 300, 900):
                f = 1.0 if step == 0 else (1 + (cure[v] - 1) * step / 900)
                sink = (sink_end * step / 900 + 0.1 * seed) if v == "sink" else None
                rows.append({"profile": "retrofit_outliers", "variant": v, "seed": seed,
                             "step": step, "max_steps": 900, "fraction": step / 900, "lr": lr,
                             "val_loss": 2.30 + 0.001 * seed + 0.0005 * rng.random(),
                             "copy_loss": 0.1, "first_position": 0.3 * f,
                             "abstention": 0.0 if v == "softmax" else 0.2,
                             "bos_resid_ratio": SOURCE_PEAK[seed] * f,
                             "max_inf_norm": 3000 * f * (1 + 0.1 * seed),
                             "max_kurtosis": 300 * f * (1 + 0.1 * seed),
                             "outlier_share_pos0": 0.1 * f + 0.01 * seed,
                             "gap_W8A8": 0.002 + 0.0001 * seed, "gap_W16A6": 0.3 * f + 0.01 * seed,
                             "gap_trigger_W16A6": 0.1 * f, "gap_W8A4": 1.0 * f,
                             "sink_logit_mean": sink, "sink_logit_min": None if sink is None else sink - 1,
                             "sink_logit_max": None if sink is None else sink + 1})
    return pd.DataFrame(rows)


def test_nothing_committed_leaves_the_section_out(tmp_path):
    assert C.cure(FakeReport(tmp_path)) == {"HasCure": "0"}


def test_only_the_cpu_and_gpu_papers_cite_it(tmp_path):
    _commit(tmp_path, "retrofit_outliers", _runs())
    for p in ("retrofit_outliers", "smoke", "testbed_outliers"):
        assert C.cure(FakeReport(tmp_path, p))["HasCure"] == "0"
    for p in ("cpu", "gpu"):
        assert C.cure(FakeReport(tmp_path, p))["HasCure"] == "1"


def test_the_arms_are_tested_against_the_control_on_the_declared_endpoints(tmp_path):
    _commit(tmp_path, "retrofit_outliers", _runs())
    R = FakeReport(tmp_path)
    M = C.cure(R)
    tests = R.files["cited_retrofit_outliers_primary.csv"]
    assert set(tests.other) == {"softmax1", "sink"} and set(tests.base) == {"softmax"}
    assert set(tests.metric) == {e.metric for e in STUDY_PRIMARY["retrofit_outliers"]}
    # the ratio is the arm's end over the control's end, seed by seed: 0.5 / 0.9 for softmax1
    peak = tests[(tests.other == "softmax1") & (tests.metric == "bos_resid_ratio")].iloc[0]
    assert np.isclose(peak["ratio"], 0.5 / 0.9)
    assert peak["verdict"] == "lower"
    assert M["CureSteps"] == "900" and M["CureEarly"] == "300" and M["CurePercent"] == "30"
    assert M["CureEarlyPercent"] == "10" and M["CureLr"] == "0.001" and M["CureSinkLr"] == "0.01"
    # the sources' magnitudes, and each arm's after 300 and 900 steps, geometric means
    course = str(M["CureCourse"])
    src = float(np.exp(np.mean(np.log(SOURCE_PEAK))))
    assert f"${fmt(src)}$ in the sources" in course
    assert "under softmax1" in course and "under the learned sink" in course
    assert "$0.500$ under softmax1" in course and "$0.900$ under softmax" in course   # end / start
    # the conversion alone: step 0 of softmax1 equals the source here
    assert course.startswith(f"Converting the weights, before any fine-tune, moved the BOS peak "
                             f"from ${fmt(src)}$ to ${fmt(src)}$")
    assert "left only $20\\%$ of their attention on the implicit zero" in course
    # the table: source, converted, three arms at 300, three at 900
    rows = [r for r in R.tables["cure.tex"] if GROUP not in r]
    assert len(rows[0]) == 1 + 2 + 6
    peak_row = next(r for r in rows if r["measure"] == "BOS residual peak")
    assert peak_row["source"] == peak_row["converted"]
    # the companions are missing: said
    assert "companion with the sink at the run's learning rate" in str(M["CureMissing"])
    assert str(M["CureGentle"]) == ""


def test_the_sink_sentence_compares_its_own_rate_with_the_runs_on_the_same_seeds(tmp_path):
    _commit(tmp_path, "retrofit_outliers", _runs(sink_end=4.0))
    _commit(tmp_path, "retrofit_outliers_samelr",
            _runs(("softmax", "sink"), seeds=range(2), sink_end=0.01))
    _commit(tmp_path, "retrofit_outliers_lr3e-4", _runs(seeds=range(2), lr=3e-4,
                                                          cure={"softmax": 1.0, "softmax1": 0.8,
                                                                "sink": 0.7}))
    M = C.cure(FakeReport(tmp_path))
    sink = str(M["CureSink"])
    assert "start at 0" in sink and "own learning rate of $0.01$" in sink
    # seeds 0 and 1, over heads: own rate 4.0 + (0, 0.1) +- 1; the run's rate 0.01 + (0, 0.1) +- 1
    assert "stayed within ${-}0.99$ to $1.11$ on the same 2 seeds, against $3.00$ to $5.10$" in sink
    gentle = str(M["CureGentle"])
    assert "$0.0003$ (2 seeds, exploratory)" in gentle
    assert str(M["CureMissing"]) == ""


def test_the_abstract_sentence_is_chosen_by_the_verdicts(tmp_path):
    _commit(tmp_path, "retrofit_outliers", _runs())
    R = FakeReport(tmp_path)
    C.cure(R)
    tests = R.cure_data["tests"]
    s = C.abstract_sentence(tests, 900)
    assert s.startswith("Fine-tuning the diseased models 900 more steps as softmax1 or with the "
                        "learned sink lowered the BOS peak (softmax1 and the learned sink)")
    assert R.cure_data["abstract"] == s
    none = tests.assign(verdict="inconclusive", ratio=1.4)
    assert C.abstract_sentence(none, 900).endswith(
        "lowered none of their outlier measures against fine-tuning as softmax "
        "(BOS-peak ratios $1.4$ and $1.4$).")
