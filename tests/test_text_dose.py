"""The text dose-response section reads the text dose profiles' committed results, applies the
criterion declared before the sweep, and says which dose it chooses (report/text_dose.py)."""
import pandas as pd

from offbyone.report import text_dose as T
from offbyone.report.stats import TEXT_DOSE_MARGIN
from test_lr_dose import FakeReport, _commit


def _runs(lr: float, loss: dict, inf: dict) -> pd.DataFrame:
    rows = []
    for v in ("softmax", "softmax1"):
        for seed in (0, 1):
            rows.append({"variant": v, "seed": seed, "step": 1500, "max_steps": 1500, "lr": lr,
                         "val_loss": loss[v] + 0.01 * seed, "bos_resid_ratio": 1.5,
                         "max_inf_norm": inf[v], "inner_max_inf_norm": inf[v] / 2,
                         "max_kurtosis": 50.0, "gap_W8A8": 0.004, "gap_W16A6": 0.05,
                         "gap_W8A4": 1.0, "outlier_share_delimiter": 0.1,
                         "delimiter_base_rate": 0.2, "first_position": 0.02,
                         "uniform_first_position": 0.03})
    return pd.DataFrame(rows)


def test_nothing_committed_leaves_the_section_out(tmp_path):
    assert T.text_dose(FakeReport(tmp_path)) == {"HasTextDose": "0"}


def test_the_highest_rate_that_trains_both_variants_is_the_dose(tmp_path):
    _commit(tmp_path, "text_lr3e-3", _runs(3e-3, {"softmax": 1.60, "softmax1": 1.61},
                                           {"softmax": 150, "softmax1": 140}))
    _commit(tmp_path, "text_lr5e-3", _runs(5e-3, {"softmax": 1.58, "softmax1": 1.60},
                                           {"softmax": 400, "softmax1": 300}))
    # softmax1's second seed at 7e-3 ends 0.06 + 0.01 above its best: it does not train
    _commit(tmp_path, "text_lr7e-3", _runs(7e-3, {"softmax": 1.59, "softmax1": 1.66},
                                           {"softmax": 900, "softmax1": 800}))
    R = FakeReport(tmp_path)
    M = T.text_dose(R)
    assert M["HasTextDose"] == "1" and str(M["TextDoseDose"]) == "$5\\mathrm{e}{-}3$"
    text = str(M["TextDoseText"])
    assert f"within {TEXT_DOSE_MARGIN:g} nats" in text
    assert "the text study's dose is the highest, lr $5\\mathrm{e}{-}3$" in text
    assert "Softmax1 at lr $7\\mathrm{e}{-}3$ ended up to $0.07$ nats above its best" in text
    assert "softmax's largest activation went from $150$ to $400$" in text
    assert "would not meet the disease criterion" in text
    assert str(M["TextDoseMissing"]) == ""
    means = R.files["text_dose.csv"]
    assert list(means[means.lr == 7e-3].trains) == [True, False]      # softmax, softmax1


def test_a_missing_rate_is_said_and_no_dose_without_a_training_rate(tmp_path):
    _commit(tmp_path, "text_lr5e-3", _runs(5e-3, {"softmax": 1.58, "softmax1": 1.60},
                                           {"softmax": 400, "softmax1": 300}))
    M = T.text_dose(FakeReport(tmp_path))
    assert "$3\\mathrm{e}{-}3$ and $7\\mathrm{e}{-}3$ have no committed results" in str(M["TextDoseMissing"])
    fin = pd.concat([_runs(5e-3, {"softmax": 1.58, "softmax1": 1.9}, {"softmax": 1, "softmax1": 1}),
                     _runs(7e-3, {"softmax": 1.9, "softmax1": 1.6}, {"softmax": 1, "softmax1": 1})])
    assert T.declared_dose(T.trains(fin)) is None
