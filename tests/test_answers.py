"""The results paragraphs read as prose chosen by the verdicts: the baseline's own value first,
then each endpoint's decided verdicts, its open estimates with their direction, and where the
baseline had no gap to close; each estimate said once (report/answers.py)."""
import math

import pandas as pd

from offbyone.report import answers as A
from offbyone.report.stats import NOTHING_TO_FIX
from offbyone.report.synthesis import Study
from test_paper import _row, _studies


def test_each_category_is_said_once_with_its_studies():
    text, tb = _studies()
    s = A.endpoint_sentence([text, tb], "first_position", ("softmax1",))
    # decided: lower at 3,000 steps, the means to the decimals of the interval
    assert s.startswith("The attention on the first position was lower at 3,000 steps "
                        "($0.24$ to $0.02$ under softmax1)")
    # open: the direction said, and that the interval leaves it open
    assert "point lower on text" in s and "none significant after Holm's correction" in s
    assert "inconclusive" not in s and "p = " not in s        # the table gives the tests
    q = A.endpoint_sentence([text, tb], "gap_W8A8", ("softmax1",))
    assert "was lower on text ($0.012$ to $0.007$ under softmax1; within $0.01$ nats)" in q
    assert "Softmax had no W8A8 gap to close at 3,000 steps: its value lay within $0.01$ nats" in q


def test_ratios_and_equivalence_name_their_variants_and_margin():
    text, tb = _studies()
    s = A.endpoint_sentence([text, tb], "max_inf_norm", ("softmax1",))
    assert "within a factor $1.25$ of softmax's at 3,000 steps (softmax1)" in s
    assert "point higher on text (softmax1 $1.1$)" in s        # two significant digits


def test_variants_that_differ_in_a_study_are_said_apart():
    t = pd.DataFrame([_row("max_kurtosis", "lower", -0.7, -0.9, -0.5, "log"),
                      {**_row("max_kurtosis", "inconclusive", 0.3, -0.2, 0.8, "log"),
                       "other": "sink"}])
    s = Study("x", "x", "at lr 0.01", t, pd.DataFrame(), 5, 1, 1, 1, "d", "tab:x")
    out = A.endpoint_sentence([s], "max_kurtosis")
    assert "lower at lr 0.01 (softmax1 $0.50$)" in out
    assert "point higher at lr 0.01 (the learned sink $1.3$)" in out


def test_a_significant_difference_inside_the_margin_says_so():
    t = pd.DataFrame([_row("val_loss", "higher", 0.003, 0.001, 0.005, base=2.3269, unit="nats")])
    s = Study("x", "x", "on the testbed", t, pd.DataFrame(), 10, 1, 1, 1, "d", "tab:x")
    out = A.endpoint_sentence([s], "val_loss", ("softmax1",))
    assert out == ("The full-precision loss was higher on the testbed ($2.327$ to $2.330$ under "
                   "softmax1; within $0.01$ nats).")


def test_the_baseline_sentence_orders_the_studies_and_names_the_uniform_share():
    text, tb = _studies()
    text.fin = pd.DataFrame({"variant": ["softmax"], "seed": [0], "uniform_first_position": [0.6]})
    s = A.baseline_sentence([text, tb], "first_position")
    assert s == ("Softmax's attention on the first position was $0.5$ on text (below the uniform "
                 "share, $0.6$) and $0.24$ at 3,000 steps.")
    # log-scale endpoints: the baseline's geometric mean, from its log
    tb.tests = pd.DataFrame([_row("max_inf_norm", "equivalent", 0.0, -0.1, 0.1, "log",
                                  base=math.log(4048.0))])
    assert A.baseline_sentence([tb], "max_inf_norm") == (
        "Softmax's largest activation (inf-norm) was $4{,}048$ at 3,000 steps.")
    assert NOTHING_TO_FIX in A.ORDER


def test_a_first_position_drop_is_set_beside_what_the_abstention_alone_implies():
    t = pd.DataFrame([_row("first_position", "lower", -0.0073, -0.0124, -0.0021, base=0.0969)])
    fin = pd.DataFrame({"variant": ["softmax1", "softmax1"], "abstention": [0.05, 0.058]})
    s = Study("tb", "testbed", "on the testbed", t, fin, 10, 1, 1, 1, "d", "tab:x")
    assert A.mechanical_sentence([s]) == (
        "On the testbed softmax1 left $5.4\\%$ of its attention on the implicit zero, which alone "
        "takes softmax's $0.0969$ to $0.0917$, and the observed value was $0.0896$.")
    # a drop the test did not find is not explained
    s.tests = pd.DataFrame([_row("first_position", "inconclusive", -0.0073, -0.02, 0.003)])
    assert A.mechanical_sentence([s]) == ""


def test_a_mean_close_to_the_baseline_gets_the_digit_that_tells_them_apart():
    # half-width 0.04 and means near 0.12: two decimals print '0.12 to 0.12'; one more is added
    r = {**_row("gap_W16A6", "inconclusive", -0.0067, -0.048, 0.035, base=0.1230, unit="nats"),
         "other": "sink"}
    s = Study("x", "x", "on text at lr 0.007", pd.DataFrame([r]), pd.DataFrame(), 5, 1, 1, 1,
              "d", "tab:x")
    out = A.endpoint_sentence([s], "gap_W16A6", ("sink",))
    assert "($0.123$ to $0.116$ under the learned sink)" in out


def test_variants_whose_open_estimates_point_both_ways_are_said_once_as_a_split():
    a = {**_row("gap_W16A6", "inconclusive", -0.0067, -0.048, 0.035, base=0.1230, unit="nats"),
         "other": "sink"}
    b = _row("gap_W16A6", "inconclusive", 0.0077, -0.034, 0.050, base=0.1230, unit="nats")
    s = Study("x", "x", "on text at lr 0.007", pd.DataFrame([b, a]), pd.DataFrame(), 5, 1, 1, 1,
              "d", "tab:x")
    out = A.endpoint_sentence([s], "gap_W16A6")
    assert out.count("on text at lr 0.007") == 1
    assert out.startswith("The estimates of the W16A6 gap (activations only) split on text at lr "
                          "0.007 ($0.123$ to $0.131$ under softmax1 and $0.116$ under the learned "
                          "sink), none significant")
    # a ratio that rounds to 1.0 keeps its third digit
    k = _row("max_kurtosis", "inconclusive", math.log(1.0115), -0.29, 0.32, "log")
    s = Study("x", "x", "on text at lr 0.007", pd.DataFrame([k]), pd.DataFrame(), 5, 1, 1, 1,
              "d", "tab:x")
    assert "(softmax1 $1.01$)" in A.endpoint_sentence([s], "max_kurtosis", ("softmax1",))
