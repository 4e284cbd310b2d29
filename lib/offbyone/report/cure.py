"""Curing a diseased model (issue 37, part 2): the softmax checkpoints of the study where the
disease grows (testbed_outliers, 3,000 steps at lr 1e-2) fine-tuned 900 more steps at lr 1e-3 as
softmax (the control), softmax1 and the learned sink with its own learning rate
(configs/retrofit_outliers.yaml), with two exploratory companions on two seeds: the sink at the
run's own learning rate (retrofit_outliers_samelr: did sink_lr move it?) and the whole fine-tune
at lr 3e-4 (retrofit_outliers_lr3e-4). Read from the committed results alone, never rerun;
without them the section is left out and said so.

In order: the primary endpoints declared for it (stats.STUDY_PRIMARY, each arm against the
control at the end, Holm within each arm), what the fine-tune did to the source's disease in
each arm (the 10% and 30% checkpoints against the source; exploratory), where the learned sink's
logit went, and the companions. Every sentence is chosen by its numbers. Macros: 'Cure'.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..profiles import load_profile
from .latex import GROUP, Tex, fmt, latex_escape, num
from .long import cited_study, committed
from .lr_dose import CITED_BY
from .outlier_study import against_sentence, lr_words
from .primary import PRIMARY_COLUMNS, primary_rows
from .prose import _and
from .results import final
from .retrofit import CONVERTED, SOURCE, _mean, frames, sources_sentence
from .stats import STUDY_PRIMARY, VARIANT_LABELS, primary_tests

PROFILE = "retrofit_outliers"
SAMELR = "retrofit_outliers_samelr"
GENTLE = "retrofit_outliers_lr3e-4"
COMPANION_WORDS = {SAMELR: "companion with the sink at the run's learning rate",
                   GENTLE: "gentler fine-tune (lr 3e-4)"}
# the before-and-after table's rows: (column, label, geometric mean)
MEASURES = (("val_loss", "validation loss (nats)", False),
            ("copy_loss", "loss after a trigger (nats)", False),
            ("first_position", "attention on the first position", False),
            ("abstention", "attention on the implicit zero", False),
            ("bos_resid_ratio", "BOS residual peak", True),
            ("max_inf_norm", "max. inf-norm", True),
            ("max_kurtosis", "max. kurtosis", True),
            ("outlier_share_pos0", "share of outliers at BOS", False),
            ("gap_W8A8", "W8A8 gap (nats)", False),
            ("gap_W16A6", "W16A6 gap (nats)", False),
            ("gap_trigger_W16A6", "W16A6 gap after a trigger", False),
            ("gap_W8A4", "W8A4 gap (nats)", False),
            ("sink_logit_mean", "learned sink's logit (mean)", False))
# the disease's two magnitudes, followed from the source through the fine-tune in the text
DISEASE = (("bos_resid_ratio", "BOS residual peak"), ("max_inf_norm", "largest activation"))


def _name(v: str) -> str:
    return "the learned sink" if v == "sink" else VARIANT_LABELS[v]


def _has_zero(g: pd.DataFrame) -> bool:
    """Whether a column's runs have an implicit zero (the source is softmax's step 0)."""
    v = set(g.variant)
    return bool(v & {"softmax1", "sink", CONVERTED})


def checkpoints(df: pd.DataFrame) -> tuple[int, int]:
    """(the early checkpoint's step, the last's): the fine-tune's two measured points."""
    steps = sorted(int(s) for s in df.step.unique() if s > 0)
    return steps[0], steps[-1]


def course_sentence(F: pd.DataFrame, early: pd.DataFrame, arms, e_step: int, steps: int) -> str:
    """The disease's magnitudes at the source, after the early checkpoint and at the end of each
    arm (geometric means over seeds): whether the fine-tune itself, in any arm, shrank them."""
    out = []
    for col, label in DISEASE:
        src = _mean(F[F.variant == SOURCE][col], True)
        if not math.isfinite(src):
            continue
        parts = []
        for v in arms:
            a = _mean(early[early.variant == v][col], True)
            b = _mean(F[F.variant == v][col], True)
            parts.append(f"${fmt(a)}$ and ${fmt(b)}$ under {_name(v)}")
        out.append(f"the {label} went from ${fmt(src)}$ in the sources to " + _and(parts))
    if not out:
        return ""
    return (f"After {e_step} and {steps} steps (geometric means over seeds), "
            + "; ".join(out) + ".")


def conversion_sentence(F: pd.DataFrame) -> str:
    """What the conversion alone did, before any fine-tune: the converted weights (step 0 of
    the softmax1 run) against the source, on the BOS peak (geometric means), the W16A6 gap and
    the share of attention left on the implicit zero (arithmetic means)."""
    src, conv = F[F.variant == SOURCE], F[F.variant == CONVERTED]
    if not len(src) or not len(conv):
        return ""
    parts = [f"the BOS peak from ${fmt(_mean(src.bos_resid_ratio, True))}$ to "
             f"${fmt(_mean(conv.bos_resid_ratio, True))}$"]
    if "gap_W16A6" in F:
        parts.append(f"the W16A6 gap from ${fmt(src.gap_W16A6.mean())}$ to "
                     f"${fmt(conv.gap_W16A6.mean())}$ nats")
    text = "Converting the weights, before any fine-tune, moved " + _and(parts)
    if "abstention" in F and conv.abstention.notna().any():
        text += (f", and the converted heads left only ${fmt(100 * conv.abstention.mean(), 2)}\\%$ "
                 "of their attention on the implicit zero")
    return text + "."


def relative_sentence(df: pd.DataFrame, arms) -> str:
    """What the fine-tune alone did to the BOS peak in each arm: its end over its own start
    (the source under softmax, the converted weights otherwise), seed by seed, as a geometric
    mean ratio."""
    parts = []
    for v in arms:
        g = df[df.variant == v].pivot_table(index="seed", columns="step", values="bos_resid_ratio")
        if g.shape[1] < 2 or len(g) < 2:
            continue
        r = float(np.exp(np.mean(np.log(g[g.columns.max()].astype(float))
                                 - np.log(g[g.columns.min()].astype(float)))))
        parts.append(f"${fmt(r, 3)}$ under {_name(v)}")
    if not parts:
        return ""
    return ("The fine-tune alone, each arm's end over its own start (the source under softmax, "
            "the converted weights otherwise; geometric means of the seeds' ratios), multiplied "
            "the BOS peak by " + _and(parts) + ".")


def _logit(x: float) -> str:
    """A logit to two decimals, as a writer prints it (0.06, -1.25)."""
    return f"{x:.2f}".replace("-", "{-}")


def sink_sentence(F: pd.DataFrame, samelr: pd.DataFrame, sink_lr: float, lr: float) -> str:
    """Where the learned sink's logits went (they start at 0): with its own learning rate, and
    at the run's learning rate where the companion ran."""
    mine = F[(F.variant == "sink")]
    if "sink_logit_mean" not in mine or mine.sink_logit_mean.isna().all():
        return ""
    text = (f"The learned sink's logits, which start at 0, ended at a mean of "
            f"${_logit(mine.sink_logit_mean.mean())}$ (from ${_logit(mine.sink_logit_min.min())}$ to "
            f"${_logit(mine.sink_logit_max.max())}$ over heads and seeds) with their own learning "
            f"rate of ${lr_words(sink_lr)}$")
    other = samelr[samelr.variant == "sink"] if len(samelr) else samelr
    if len(other) and "sink_logit_mean" in other and other.sink_logit_mean.notna().any():
        seeds = sorted(set(other.seed) & set(mine.seed))
        a = mine[mine.seed.isin(seeds)]
        b = other[other.seed.isin(seeds)]
        # the heads move both ways, so the mean hides how far: the range over heads and seeds
        text += (f"; at the run's own ${lr_words(lr)}$ they stayed within "
                 f"${_logit(b.sink_logit_min.min())}$ to ${_logit(b.sink_logit_max.max())}$ on "
                 f"the same {len(seeds)} seeds, against ${_logit(a.sink_logit_min.min())}$ to "
                 f"${_logit(a.sink_logit_max.max())}$ with their own rate")
        pa = _mean(a.bos_resid_ratio, True)
        pb = _mean(b.bos_resid_ratio, True)
        text += f" (BOS peak ${fmt(pb)}$ against ${fmt(pa)}$)"
    return text + "."


def gentle_sentence(gentle: pd.DataFrame, F: pd.DataFrame, lr: float) -> str:
    """The fine-tune at the companion's lower rate against the study's, on the same seeds."""
    if not len(gentle):
        return ""
    glr = float(gentle.lr.iloc[0])
    seeds = sorted(set(gentle.seed) & set(F[F.variant == SOURCE].seed))
    parts = []
    for v in [v for v in VARIANT_LABELS if v in set(gentle.variant)]:
        a = _mean(gentle[(gentle.variant == v) & gentle.seed.isin(seeds)].bos_resid_ratio, True)
        b = _mean(F[(F.variant == v) & F.seed.isin(seeds)].bos_resid_ratio, True)
        parts.append(f"${fmt(a)}$ under {_name(v)} (${fmt(b)}$ at ${lr_words(lr)}$)")
    src = _mean(F[(F.variant == SOURCE) & F.seed.isin(seeds)].bos_resid_ratio, True)
    return (f"At the gentler learning rate of ${lr_words(glr)}$ ({len(seeds)} seeds, exploratory), "
            f"the BOS peak ended at " + _and(parts) + f", from ${fmt(src)}$ in the same sources.")


def table_rows(F: pd.DataFrame, early: pd.DataFrame, arms, e_step: int, steps: int) -> list[dict]:
    n = int(F[F.variant == SOURCE].seed.nunique())
    cols = [("source", F[F.variant == SOURCE]), ("converted", F[F.variant == CONVERTED])]
    head = lambda v, n: Tex(f"\\shortstack[r]{{{VARIANT_LABELS[v]}\\\\{n}}}")  # two lines
    cols += [(head(v, e_step), early[early.variant == v]) for v in arms]
    cols += [(head(v, steps), F[F.variant == v]) for v in arms]
    rows = [{GROUP: Tex(f"means over {n} seeds (geometric for the peak, inf-norm and kurtosis); "
                        f"the arms after {e_step} and {steps} steps of fine-tuning")}]
    for m, label, log in MEASURES:
        if m not in F or F[m].isna().all():
            continue
        if m == "abstention":     # softmax has no implicit zero: its rounding noise prints as 0
            cols_m = [(c, g.assign(abstention=0.0) if (len(g) and not _has_zero(g)) else g)
                      for c, g in cols]
        else:
            cols_m = cols
        digits = 4 if m == "val_loss" else 3
        rows.append({"measure": label, **{c: num(_mean(g[m], log), digits) if m in g else "n/a"
                                          for c, g in cols_m}})
    return rows


def cure(R) -> dict:
    """The section's tables and macros; HasCure 0 when its results are not committed or the
    paper does not cite it."""
    got = cited_study(R, PROFILE, CITED_BY)
    if got is None:
        return {"HasCure": "0"}
    df, prov = got
    if not (df.step == 0).any():
        print(f"results/{PROFILE}/runs.csv has no step-0 checkpoints (the models before the "
              "fine-tune); the paper leaves the cure out")
        return {"HasCure": "0"}
    prof = load_profile(PROFILE)
    src_name = prof["retrofit"]["from"]
    src_steps = int(load_profile(src_name)["train"]["max_steps"])
    F = frames(df)
    arms = [v for v in VARIANT_LABELS if v in set(F.variant)]
    others = [v for v in arms if v != "softmax"]
    e_step, steps = checkpoints(df)
    early = df[df.step == e_step]
    lr, sink_lr = float(df.lr.iloc[0]), float(prof["train"].get("sink_lr") or 0.0)
    fin = F[F.variant.isin(arms)]
    tests = primary_tests(fin, others, endpoints=STUDY_PRIMARY[PROFILE])
    label = f"cure, {steps} steps"
    R.derived(f"cited_{PROFILE}_primary.csv", tests.assign(study=label))
    R.table(primary_rows(tests, label), "cure_primary.tex", PRIMARY_COLUMNS)
    R.table(table_rows(F, early, arms, e_step, steps), "cure.tex",
            ">{\\raggedright\\arraybackslash}p{2.6cm}" + "r" * (2 + 2 * len(arms)))
    samelr, gentle = _final_of(R, SAMELR), _final_of(R, GENTLE)
    against = against_sentence(tests, others, "tab:cure-primary", "the control")
    missing = [n for n, f in ((SAMELR, samelr), (GENTLE, gentle)) if not len(f)]
    n = int(F[F.variant == SOURCE].seed.nunique())
    R.cure_data = {"tests": tests, "steps": steps, "abstract": abstract_sentence(tests, steps)}
    return {"HasCure": "1", "CureProfile": latex_escape(PROFILE),
            "CureSourceSteps": fmt(src_steps), "CureSteps": fmt(steps), "CureEarly": fmt(e_step),
            "CureEarlyPercent": fmt(100 * e_step / src_steps, 2),
            "CurePercent": fmt(100 * steps / src_steps, 2),
            "CureLr": lr_words(lr), "CureSinkLr": lr_words(sink_lr) if sink_lr else lr_words(lr),
            "CureSourceLr": lr_words(float(load_profile(src_name)["train"]["lr"])),
            "CureWarmup": fmt(int(prof["train"]["warmup_steps"])), "CureNSeeds": fmt(n),
            "CureNEndpoints": fmt(len(STUDY_PRIMARY[PROFILE])),
            "CureCommit": latex_escape(str(prov.get("commit", "?"))[:10]),
            "CurePipelineMin": fmt(prov.get("pipeline_wall_s", float("nan")) / 60, 2),
            "CureBenchTokS": fmt(prov.get("bench_softmax_tokens_per_s") or float("nan"), 3),
            "CureSources": Tex(sources_sentence(R, src_name, prof["retrofit"]["variant"], F, prov)),
            "CureAgainst": Tex(against),
            "CureCourse": Tex(" ".join(s for s in (conversion_sentence(F),
                                                   course_sentence(F, early, arms, e_step, steps),
                                                   relative_sentence(df, arms)) if s)),
            "CureSink": Tex(sink_sentence(F, samelr, sink_lr, lr)),
            "CureGentle": Tex(gentle_sentence(gentle, F, lr)),
            "CureMissing": Tex("" if not missing else
                               f" The {_and([COMPANION_WORDS[m] for m in missing])} "
                               f"{'are' if len(missing) > 1 else 'is'} not committed yet, and "
                               f"left out.")}


OUTLIER_METRICS = (("bos_resid_ratio", "BOS peak"), ("max_inf_norm", "largest activation"),
                   ("max_kurtosis", "kurtosis"))


def abstract_sentence(tests: pd.DataFrame, steps: int) -> str:
    """The cure in one sentence for the abstract, chosen by the verdicts on the outlier
    measures (the BOS peak, the largest activation, kurtosis) against the same fine-tune as
    softmax: which it lowered and under which arm, or that it lowered none, with the BOS peak's
    ratios."""
    arms = [o for o in VARIANT_LABELS if o in set(tests.other)]
    if not arms:
        return ""
    names = " or ".join(["as softmax1" if a == "softmax1" else f"with {_name(a)}" for a in arms])
    peak = tests[tests.metric == "bos_resid_ratio"].set_index("other")
    ratios = _and([f"${fmt(peak.loc[a, 'ratio'], 2)}$" for a in arms if a in peak.index])
    lowered = []
    for metric, words in OUTLIER_METRICS:
        t = tests[(tests.metric == metric) & (tests.verdict == "lower")]
        if len(t):
            lowered.append(f"the {words} ({_and([_name(a) for a in arms if a in set(t.other)])})")
    head = f"Fine-tuning the diseased models {steps} more steps {names}"
    if lowered:
        return f"{head} lowered {_and(lowered)} against fine-tuning as softmax."
    return (f"{head} lowered none of their outlier measures against fine-tuning as "
            f"softmax (BOS-peak ratio{'s' if len(arms) > 1 else ''} {ratios}).")


def _final_of(R, name: str) -> pd.DataFrame:
    got = committed(R, name)
    return final(got[0]) if got else pd.DataFrame()
