"""Softmax1 on natural text at a high learning rate (issue 37, part 1): Shakespeare characters in
Guo et al.'s model options (configs/text_outliers.yaml: 4 layers x 128, bias-free, ReLU MLP,
untied output, PyTorch's default initialisation, weight decay 1e-4) for 1,500 steps at the dose
the text sweep declared (report/text_dose.py), softmax, softmax1 and the learned sink on five
paired seeds, with the cpu profile's six primary endpoints (stats.PRIMARY, Holm within each
comparison) and the disease criterion on the softmax baseline; beside it, exploratory, the
softmax baseline at weight decay 0.1 on two seeds (text_outliers_wd01, the profile's ablation).
Read from the committed results alone, never rerun; without them the section is left out and
said so. The synthesis reads the study beside the others (R.text_study_data). Macros: 'Ts'.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..profiles import load_profile
from .latex import Tex, fmt, latex_escape, macro_name
from .long import cited_study
from .lr_dose import CITED_BY
from .attribution import _the
from .outlier_study import against_sentence, criterion_sentence, lr_words, uncorrected_sentence
from .primary import PRIMARY_COLUMNS, primary_rows
from .prose import _and, primary_sentence
from .results import final, read_csv
from .stats import DISEASE_CRITERION, PRIMARY, VARIANT_LABELS, primary_tests
from .synthesis import _millions, _params

PROFILE = "text_outliers"
DECAY = "text_outliers_wd01"
# what the weight-decay control compares, seed by seed: (column, words, geometric)
DECAY_MEASURES = (("max_inf_norm", "largest activation", True),
                  ("max_kurtosis", "largest kurtosis", True),
                  ("bos_resid_ratio", "BOS residual peak", True),
                  ("gap_W16A6", "W16A6 gap", False),
                  ("val_loss", "validation loss", False))
# a measure "moved" under the larger decay when every seed's ratio is beyond this factor
DECAY_FACTOR = 1.25


def _wd(profile: str) -> float:
    return float(load_profile(profile)["train"]["weight_decay"])


def decay_sentence(fin: pd.DataFrame, decay: pd.DataFrame, wd: float, wd_other: float) -> str:
    """The softmax baseline at the larger weight decay against the study's on the same seeds:
    each measure's means, then what moved in every seed by more than DECAY_FACTOR (two seeds:
    described, not tested)."""
    if not len(decay):
        return ""
    d = decay[decay.variant == "softmax"].set_index("seed")
    b = fin[(fin.variant == "softmax") & fin.seed.isin(d.index)].set_index("seed")
    seeds = sorted(set(d.index) & set(b.index))
    if not seeds:
        return ""
    d, b = d.loc[seeds], b.loc[seeds]
    n = len(seeds)
    mean = lambda s, geo: float(np.exp(np.log(s).mean())) if geo else float(s.mean())
    parts, shrank, grew = [], [], []
    for col, words, geo in DECAY_MEASURES:
        if col not in d or col not in b:
            continue
        digits = 4 if col == "val_loss" else 3
        parts.append(f"its {words} ${fmt(mean(d[col], geo), digits)}$ against "
                     f"${fmt(mean(b[col], geo), digits)}$")
        if geo:
            r = d[col].astype(float) / b[col].astype(float)
            if (r < 1 / DECAY_FACTOR).all():
                shrank.append(words)
            elif (r > DECAY_FACTOR).all():
                grew.append(words)
    text = (f"With weight decay ${wd_other:g}$ instead of ${wd:g}$ ({'two seeds' if n == 2 else f'{n} seeds'}, "
            f"exploratory: no test), the softmax baseline had " + _and(parts)
            + " on the same seeds (geometric means for the magnitudes).")
    moved = []
    if shrank:
        moved.append(f"shrank the {_and(shrank)}")
    if grew:
        moved.append(f"grew the {_and(grew)}")
    if moved:
        text += (f" The larger decay {_and(moved)} by more than a factor of ${DECAY_FACTOR:g}$ in "
                 "every seed.")
    else:
        text += (f" No magnitude moved by a factor of ${DECAY_FACTOR:g}$ in every seed: at this "
                 "rate the larger decay did not suppress the outliers.")
    return text


def conclusion_sentence(fin: pd.DataFrame, verdict: dict, lr: float) -> str:
    """The text study's baseline for the conclusion, chosen by the criterion's verdict: what its
    activations grew to, its BOS peak and W8A8 gap against the criterion's thresholds."""
    peak, gap = DISEASE_CRITERION
    base = fin[fin.variant == "softmax"]
    inf = float(np.exp(np.log(base.max_inf_norm.astype(float)).mean()))
    p, g = verdict["values"][peak.name], verdict["values"][gap.name]
    head = (f"On Shakespeare at lr ${lr_words(lr)}$, where quantization costs loss, the softmax "
            f"baseline's largest activation grew to ${fmt(inf)}$ (geometric mean)")
    if verdict["appeared"]:
        return (f"{head} and it met the disease criterion (BOS peak ${fmt(p)}$, W8A8 gap "
                f"${fmt(g)}$ nats).")
    return (f"{head} without the disease (BOS peak ${fmt(p)}$ against ${peak.threshold:g}$, W8A8 "
            f"gap ${fmt(g)}$ nats against ${gap.threshold:g}$): the text study, too, tests "
            "softmax1 against a baseline with little to fix.")


def text_study(R) -> dict:
    """The section's table and macros; HasTextStudy 0 when its results are not committed or
    the paper does not cite it. Leaves R.text_study_data for the synthesis when they are."""
    got = cited_study(R, PROFILE, CITED_BY)
    if got is None:
        return {"HasTextStudy": "0"}
    df, prov = got
    fin = final(df)
    variants = [v for v in VARIANT_LABELS if v in set(fin.variant)]
    others = [v for v in variants if v != "softmax"]
    tests = primary_tests(fin, others, endpoints=PRIMARY)
    lr = float(fin.lr.iloc[0])
    label = f"text at lr {lr_words(lr)}"
    tests = tests.assign(study=label)
    R.derived(f"cited_{PROFILE}_primary.csv", tests)
    R.table(primary_rows(tests, label), "text_study_primary.tex", PRIMARY_COLUMNS)
    criterion, verdict = criterion_sentence(fin)
    path = R.root / "results" / PROFILE / f"ablation_{DECAY}.csv"
    decay = final(read_csv(path)) if path.exists() else pd.DataFrame()
    res = R.root / "results" / PROFILE
    vocab = None
    if (res / "corpus.json").exists():
        vocab = json.loads((res / "corpus.json").read_text()).get("vocab_size")
    M = {"HasTextStudy": "1", "TsProfile": latex_escape(PROFILE), "TsLr": lr_words(lr),
         "TsSteps": fmt(int(fin.max_steps.iloc[0])), "TsNSeeds": fmt(int(fin.seed.nunique())),
         "TsLabel": latex_escape(label),
         "TsVariantList": _and([_the(v) for v in variants]),
         "TsWeightDecay": f"{_wd(PROFILE):g}",
         "TsCommit": latex_escape(str(prov.get("commit", "?"))[:10]),
         "TsPipelineMin": fmt(prov.get("pipeline_wall_s", float("nan")) / 60, 2),
         "TsBenchTokS": fmt(prov.get("bench_softmax_tokens_per_s") or float("nan"), 3),
         "TsCriterion": criterion, "TsDiseased": "1" if verdict["appeared"] else "0",
         "TsConclusion": Tex(conclusion_sentence(fin, verdict, lr)),
         "TsAgainst": Tex(against_sentence(tests, others, "tab:text-study-primary") + " "
                          + str(uncorrected_sentence(tests))),
         "TsDecay": Tex(decay_sentence(fin, decay, _wd(PROFILE), _wd(DECAY))),
         "TsDecayMissing": Tex("" if len(decay) else
                               f" The weight-decay control ({latex_escape(DECAY)}) is not "
                               "committed yet, and is left out."),
         "TsParams": _millions(_params(PROFILE, vocab)[0])}
    for r in tests.to_dict("records"):
        M[macro_name("TsPrimary", *r["metric"].split("_"), r["other"])] = primary_sentence(r)
    R.text_study_data = {"profile": PROFILE, "label": label, "where": f"on text at lr {lr_words(lr)}",
                         "tests": tests, "fin": fin, "vocab": vocab,
                         "diseased": verdict["appeared"]}
    return M
