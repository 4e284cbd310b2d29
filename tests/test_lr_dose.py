"""The dose-response section reads the dose profiles' committed results, leaves out the rates
not yet run, and states what the numbers say (report/lr_dose.py)."""
from pathlib import Path

import pandas as pd
import pytest

from offbyone.report import lr_dose as D
from offbyone.report.latex import GROUP


class FakeReport:
    """What the section uses of a Report: the root, and where tables, figures and derived
    files go (kept here)."""

    def __init__(self, root: Path):
        self.root, self.tables, self.figures, self.files = root, {}, [], {}

    def derived(self, name, frame):
        self.files[name] = frame

    def table(self, rows, name, column_format=None):
        self.tables[name] = rows

    def figure(self, fig, name):
        self.figures.append(name)


def _runs(lr: float, peak: dict, loss: dict | None = None) -> pd.DataFrame:
    rows = []
    for v in ("softmax", "softmax1"):
        for seed in (0, 1):
            for step in (750, 1500):
                rows.append({"variant": v, "seed": seed, "step": step, "max_steps": 1500, "lr": lr,
                             "val_loss": (loss or {}).get(v, 2.3) + 0.01 * seed,
                             "bos_resid_ratio": peak[v] * (step / 1500) + 0.1 * seed,
                             "max_inf_norm": 100 * peak[v], "inner_max_inf_norm": 80 * peak[v],
                             "max_kurtosis": 10 * peak[v], "gap_W8A8": 0.001,
                             "gap_W16A6": 0.01 * peak[v], "gap_W8A4": 0.1 * peak[v],
                             "gap_trigger_W16A6": 0.02 * peak[v]})
    return pd.DataFrame(rows)


def _commit(root: Path, name: str, df: pd.DataFrame) -> None:
    (root / "results" / name).mkdir(parents=True)
    df.to_csv(root / "results" / name / "runs.csv", index=False)


def test_nothing_committed_leaves_the_section_out(tmp_path):
    assert D.lr_dose(FakeReport(tmp_path)) == {"HasLrDose": "0"}


def test_only_the_cpu_gpu_and_dose_papers_cite_it(tmp_path):
    _commit(tmp_path, "testbed_lr", _runs(1e-2, {"softmax": 3.0, "softmax1": 12.0}))
    for name, has in (("smoke", "0"), ("testbed_long", "0"), ("cpu", "1"),
                      ("cpu-quickrehearsal", "1"), ("gpu", "1"), ("testbed_lr3e-4", "1")):
        R = FakeReport(tmp_path)
        R.profile = name
        assert D.lr_dose(R)["HasLrDose"] == has, name


def test_the_section_reads_the_committed_rates_and_says_where_the_peak_passed(tmp_path):
    _commit(tmp_path, "testbed_lr3e-4", _runs(3e-4, {"softmax": 1.2, "softmax1": 1.1}))
    _commit(tmp_path, "testbed_lr", _runs(1e-2, {"softmax": 3.0, "softmax1": 12.0}))
    _commit(tmp_path, "testbed_lr3e-2", _runs(3e-2, {"softmax": 9.0, "softmax1": 20.0},
                                              loss={"softmax": 4.1, "softmax1": 2.3}))
    R = FakeReport(tmp_path)
    M = D.lr_dose(R)
    assert M["HasLrDose"] == "1" and M["LrDoseSeeds"] == "2" and R.figures == ["lr-dose"]
    means = R.files["lr_dose.csv"]
    assert sorted(means.lr.unique()) == [3e-4, 1e-2, 3e-2]          # the final checkpoints only
    got = means.set_index(["lr", "variant"]).bos_resid_ratio
    assert got[(1e-2, "softmax1")] == pytest.approx(12.05)
    text = str(M["LrDoseText"])
    # softmax's seed mean first passes 5 at 3e-2, softmax1's at 1e-2
    assert text.startswith("In seed means, the BOS peak of softmax first reached")
    assert "first reached 5 times the median position at lr $3\\mathrm{e}{-}2$" in text
    assert "first reached 5 times the median position at lr $1\\mathrm{e}{-}2$" in text
    assert "its seeds $20.0$ to $20.1$" in text          # softmax1's largest, at 3e-2
    # the softmax runs at 3e-2 did not train, and the sentence names them
    assert "did not train" in text and "seed 0 at lr $3\\mathrm{e}{-}2$" in text
    assert "rates $1\\mathrm{e}{-}3$ and $3\\mathrm{e}{-}3$ have no committed" in str(M["LrDoseMissing"])
    groups = [r[GROUP] for r in R.tables["lr_dose.tex"] if GROUP in r]
    assert len(groups) == 3
    # every number is typeset in math mode (an exponent outside it stops LaTeX)
    cells = [str(c) for r in R.tables["lr_dose.tex"] if GROUP not in r
             for k, c in r.items() if k != "variant"]
    assert cells and all(c.startswith("$") and c.endswith("$") or c == "n/a" for c in cells)


def test_a_peak_below_the_threshold_everywhere_is_said_so(tmp_path):
    _commit(tmp_path, "testbed_lr", _runs(1e-2, {"softmax": 1.5, "softmax1": 2.0}))
    text = str(D.lr_dose(FakeReport(tmp_path))["LrDoseText"])
    assert text.count("stayed below 5 times the median position at every rate") == 2
    assert "softmax1's stayed below" in text
    assert "Every run trained: no final validation loss lies more than 0.5 nats" in text
    assert "the highest, $2.31$, is softmax seed 1 at lr $1\\mathrm{e}{-}2$" in text
