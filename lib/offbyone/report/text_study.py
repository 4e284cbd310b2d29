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
import math

import numpy as np
import pandas as pd

from ..profiles import load_profile
from .latex import Tex, fmt, latex_escape
from .long import cited_study
from .attribution import _the
from .lr_dose import CITED_BY
from .outlier_study import (_optional, against_sentence, criterion_sentence, lr_words,
                            uncorrected_sentence)
from .primary import PRIMARY_COLUMNS, primary_rows
from .prose import _and
from .results import final
from .stats import DISEASE_CRITERION, PRIMARY, VARIANT_LABELS, primary_tests
from .synthesis import _millions, _module_words, _params

PROFILE = "text_outliers"
DECAY = "text_outliers_wd01"
SWEEP = load_profile(PROFILE).get("base", "text_lr7e-3")    # the sweep's profile at this rate
# what the weight-decay control compares, seed by seed: (column, words, a magnitude: its ratio
# is what "moved" judges)
DECAY_MEASURES = (("max_inf_norm", "largest activation", True),
                  ("max_kurtosis", "largest kurtosis", True),
                  ("bos_resid_ratio", "BOS residual peak", True),
                  ("gap_W8A8", "W8A8 gap", False),
                  ("gap_W16A6", "W16A6 gap", False),
                  ("val_loss", "validation loss", False))
# a measure "moved" under the larger decay when every seed's ratio is beyond this factor
DECAY_FACTOR = 1.25
# the primary endpoints' margin for the validation loss (nats): a larger change is said
LOSS_MARGIN = next(ep.margin for ep in PRIMARY if ep.metric == "val_loss")


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
    parts, shrank, grew = [], [], []
    for col, words, magnitude in DECAY_MEASURES:
        if col not in d or col not in b:
            continue
        digits = 4 if col == "val_loss" else 3
        # arithmetic means, as the sweep's table gives the same runs
        parts.append(f"its {words} ${fmt(d[col].mean(), digits)}$ against "
                     f"${fmt(b[col].mean(), digits)}$")
        if magnitude:
            r = d[col].astype(float) / b[col].astype(float)
            if (r < 1 / DECAY_FACTOR).all():
                shrank.append(words)
            elif (r > DECAY_FACTOR).all():
                grew.append(words)
    seeds_words = "two seeds" if n == 2 else f"{n} seeds"
    text = (f"With weight decay ${wd_other:g}$ instead of ${wd:g}$ ({seeds_words}, exploratory: "
            "no test), the softmax baseline had " + _and(parts)
            + " on the same seeds (arithmetic means over them, as in the sweep's table).")
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
    wider = [words for col, words, _ in DECAY_MEASURES
             if col.startswith("gap_") and col in d and col in b and (d[col] > b[col]).all()]
    if shrank and wider:
        text += (f" Its {_and(wider)} {'were' if len(wider) > 1 else 'was'} larger in every seed: "
                 "the smaller activations did not quantize better.")
    cost = float((d.val_loss - b.val_loss).mean()) if "val_loss" in d and "val_loss" in b else 0.0
    if abs(cost) > LOSS_MARGIN:
        text += (f" It also {'cost' if cost > 0 else 'saved'} ${fmt(abs(cost), 2)}$ nats of "
                 f"validation loss, more than the loss margin of ${LOSS_MARGIN:g}$"
                 + (", so the smaller activations came with a worse fit." if cost > 0 and shrank
                    else "."))
    return text


def repeat_sentence(fin: pd.DataFrame, sweep: pd.DataFrame) -> str:
    """The runs the study shares with the sweep at its rate (same variant, seed and final
    validation loss: the same configuration trains the same weights), said so: their results
    were known when the study was declared."""
    if not len(sweep):
        return ""
    keys = ["variant", "seed"]
    both = fin.merge(sweep[keys + ["val_loss"]], on=keys, suffixes=("", "_sweep"))
    same = both[(both.val_loss - both.val_loss_sweep).abs() < 1e-9]
    if not len(same):
        return ""
    seeds = sorted(int(x) for x in same.seed.unique())
    names = [v for v in VARIANT_LABELS if v in set(same.variant)]
    new = [v for v in VARIANT_LABELS if v in set(fin.variant) and v not in names]
    rest = sorted(set(int(x) for x in fin.seed.unique()) - set(seeds))
    later = ([f"{_and([_the(v) for v in new])}"] if new else []) + \
        ([f"seed{'s' if len(rest) > 1 else ''} {_and([str(x) for x in rest])}"] if rest else [])
    return (f"Seed{'s' if len(seeds) > 1 else ''} {_and([str(x) for x in seeds])} of "
            f"{_and([_the(v) for v in names])} are the sweep's own runs at this rate (the same "
            "configuration trains the same weights), so their results were known when the study "
            "was declared" + (f"; {_and(later)} were not." if later else "."))


def _site(base: pd.DataFrame, col: str, n_layer: int) -> tuple[str, int]:
    """The module where most seeds' largest activation sat, in words, and in how many seeds."""
    counts = base[col].value_counts()
    name, k = str(counts.index[0]), int(counts.iloc[0])
    return (_module_words(name).replace(f"of layer {n_layer - 1}", "of the last layer"), k)


def site_sentence(fin: pd.DataFrame, n_layer: int) -> str:
    """Where the softmax baseline's largest activations sat: the module most seeds share, with
    and without the last residual (seed counts)."""
    base = fin[fin.variant == "softmax"]
    if "max_inf_norm_module" not in base or base.max_inf_norm_module.isna().all():
        return ""
    where, k = _site(base, "max_inf_norm_module", n_layer)
    n = len(base)
    count = lambda k: f"all {n}" if k == n else f"{k} of the {n}"
    text = f"They sat in {where} in {count(k)} seeds"
    if "inner_max_inf_norm_module" in base and base.inner_max_inf_norm_module.notna().any():
        inner, k2 = _site(base, "inner_max_inf_norm_module", n_layer)
        text += f" (leaving out the last residual, in {inner} in {count(k2)})"
    return text + "."


def conclusion_sentence(fin: pd.DataFrame, verdict: dict, tests: pd.DataFrame, lr: float,
                        n_layer: int) -> str:
    """The text study for the conclusion, chosen by the numbers: the baseline against the
    disease criterion, what its activations grew to and where, and what softmax1 did to the
    first position's weight and to the largest activation."""
    peak, gap = DISEASE_CRITERION
    base = fin[fin.variant == "softmax"]
    inf = float(np.exp(np.log(base.max_inf_norm.astype(float)).mean()))
    p, g = verdict["values"][peak.name], verdict["values"][gap.name]
    crit = (f"met the disease criterion (BOS peak ${fmt(p)}$, W8A8 gap ${fmt(g)}$ nats)"
            if verdict["appeared"] else
            f"did not meet the disease criterion (BOS peak ${fmt(p)}$ against "
            f"${peak.threshold:g}$, W8A8 gap ${fmt(g)}$ nats against ${gap.threshold:g}$)")
    where, _ = _site(base, "max_inf_norm_module", n_layer) if "max_inf_norm_module" in base \
        else ("", 0)
    text = (f"On Shakespeare at lr ${lr_words(lr)}$ the softmax baseline {crit} "
            f"{'and' if verdict['appeared'] else 'but'} grew activations of ${fmt(inf)}$ "
            "(geometric mean)" + (f" in {where}" if where else ""))
    t = tests[tests.other == "softmax1"].set_index("metric")
    if not {"first_position", "max_inf_norm"} <= set(t.index):
        return text + "."
    fp, mag = t.loc["first_position"], t.loc["max_inf_norm"]
    moved = {"lower": "lowered the largest activation",
             "higher": "raised the largest activation",
             "equivalent": f"left the largest activation within a factor "
                           f"${math.exp(mag.margin):g}$ of softmax's"}.get(
        mag.verdict, "did not measurably move the largest activation")
    if fp.verdict == "lower":
        text += (f"; softmax1 took the first position's weight from ${fmt(fp.base_mean)}$ to "
                 f"${fmt(fp.other_mean)}$ and {moved}")
        if mag.verdict == "equivalent":
            text += (", so these activations did not measurably track the attention on the first "
                     "position")
    else:
        text += f"; softmax1 {moved}"
    return text + "."


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
    n_layer = int(_params(PROFILE, None)[1]["n_layer"])
    sweep = _optional(R.root, SWEEP, "runs.csv")
    sweep = final(sweep) if len(sweep) else sweep
    decay = _optional(R.root, PROFILE, f"ablation_{DECAY}.csv")
    decay = final(decay) if len(decay) else decay
    res = R.root / "results" / PROFILE
    vocab = None
    if (res / "corpus.json").exists():
        vocab = json.loads((res / "corpus.json").read_text()).get("vocab_size")
    M = {"HasTextStudy": "1", "TsProfile": latex_escape(PROFILE), "TsLr": lr_words(lr),
         "TsSteps": fmt(int(fin.max_steps.iloc[0])), "TsNSeeds": fmt(int(fin.seed.nunique())),
         "TsVariantList": _and([_the(v) for v in variants]),
         "TsWeightDecay": f"{_wd(PROFILE):g}",
         "TsCommit": latex_escape(str(prov.get("commit", "?"))[:10]),
         "TsPipelineMin": fmt(prov.get("pipeline_wall_s", float("nan")) / 60, 2),
         "TsBenchTokS": fmt(prov.get("bench_softmax_tokens_per_s") or float("nan"), 3),
         "TsCriterion": criterion, "TsDiseased": "1" if verdict["appeared"] else "0",
         "TsConclusion": Tex(conclusion_sentence(fin, verdict, tests, lr, n_layer)),
         "TsSite": Tex(site_sentence(fin, n_layer)),
         "TsRepeat": Tex(repeat_sentence(fin, sweep)),
         "TsAgainst": Tex(against_sentence(tests, others, "tab:text-study-primary") + " "
                          + str(uncorrected_sentence(tests))),
         "TsDecay": Tex(decay_sentence(fin, decay, _wd(PROFILE), _wd(DECAY))),
         "TsDecayMissing": Tex("" if len(decay) else
                               f" The weight-decay control ({latex_escape(DECAY)}) is not "
                               "committed yet, and is left out."),
         "TsParams": _millions(_params(PROFILE, vocab)[0])}
    R.text_study_data = {"profile": PROFILE, "label": label,
                         "where": f"on text at lr {lr_words(lr)}", "tests": tests, "fin": fin,
                         "vocab": vocab,
                         "diseased": verdict["appeared"]}
    return M
