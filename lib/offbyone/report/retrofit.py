"""Retrofitting a trained model (a cited profile with `retrofit:`, e.g. configs/retrofit.yaml):
softmax checkpoints fine-tuned a few more steps as softmax (the control), softmax1 and the
learned sink, read from results/<name>/ alone and never rerun.

Three comparisons, each paired by the source checkpoint (its seed):
- at the end, each retrofit against the softmax control on the primary endpoints, with Holm's
  correction within each comparison and the verdicts of the main study (`primary_tests`);
- each arm's final model against the source itself (its step 0 under softmax): what the
  fine-tune changed (exploratory: paired t intervals, no correction);
- the converted weights before any fine-tune (step 0 of the softmax1 run) against the source:
  what the conversion alone costs (exploratory).
Macros carry the prefix 'Retrofit'.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..profiles import load_profile
from .latex import GROUP, Tex, fmt, latex_escape, num
from .long import committed
from .primary import primary_rows
from .prose import _and
from .results import final
from .stats import NOTHING_TO_FIX, PRIMARY, VARIANT_LABELS, paired_difference, primary_tests

SOURCE = "source"                 # the source checkpoint: the softmax run's step 0
CONVERTED = "converted"           # the softmax1 run's step 0: the weights converted, untrained
# the table's rows: metric, label, log scale (geometric means)
MEASURES = (("val_loss", "validation loss (nats)", False),
            ("first_position", "attention on the first position", False),
            ("abstention", "attention left on the implicit zero", False),
            ("bos_resid_ratio", "BOS residual peak (ratio to the median position)", True),
            ("max_kurtosis", "maximum kurtosis", True),
            ("max_inf_norm", "maximum inf-norm", True),
            ("max_p9999", "maximum 99.99th percentile of |x|", True),
            ("gap_W8A8", "W8A8 loss gap (nats)", False),
            ("gap_W16A6", "W16A6 loss gap (nats)", False))
# what the fine-tune changed, in the text: the question's two measures
CHANGE = ("first_position", "val_loss")


def retrofit_profiles(R) -> list[str]:
    return [n for n in R.prof.get("cited") or [] if load_profile(n).get("retrofit")]


def frames(df: pd.DataFrame) -> pd.DataFrame:
    """The runs' final checkpoints, plus the source (variant 'source') and the converted,
    untrained weights (variant 'converted') from the step-0 checkpoints, one row per seed."""
    start = df[df.step == 0]
    src = start[start.variant == "softmax"].assign(variant=SOURCE)
    conv = start[start.variant == "softmax1"].assign(variant=CONVERTED)
    return pd.concat([final(df), src, conv], ignore_index=True)


def _mean(x: pd.Series, log: bool) -> float:
    x = x.astype(float).dropna()
    if not len(x):
        return math.nan
    return float(np.exp(np.log(x).mean())) if log else float(x.mean())


def retrofit(R) -> pd.Series:
    M = R.sections["retrofit"] = {"HasRetrofit": "0"}
    for name in retrofit_profiles(R)[:1]:
        got = committed(R, name)
        if got is None:
            continue
        df, prov = got
        if not (df.step == 0).any():
            print(f"results/{name}/runs.csv has no step-0 checkpoints (the models before the "
                  "fine-tune); the paper leaves it out")
            continue
        M.update(_section(R, name, df, prov))
    return pd.Series(M)


def _section(R, name: str, df: pd.DataFrame, prov: dict) -> dict:
    prof = load_profile(name)
    src_name, src_variant = prof["retrofit"]["from"], prof["retrofit"]["variant"]
    src_steps = int(load_profile(src_name)["train"]["max_steps"])
    F = frames(df)
    arms = [v for v in VARIANT_LABELS if v in set(F.variant)]
    others = [v for v in arms if v != "softmax"]
    steps = int(df.max_steps.iloc[0])
    n = int(F[F.variant == "softmax"].seed.nunique())

    # 1. each retrofit against the control, on the primary endpoints
    fin = F[F.variant.isin(arms)]
    tests = primary_tests(fin, others)
    label = f"retrofit, {steps:,} steps"
    R.derived(f"cited_{name}_primary.csv", tests.assign(study=label))
    R.table(primary_rows(tests, label), "retrofit_primary.tex", "lrrrrrrl")

    # 2. and 3. against the source: what the fine-tune (and the conversion alone) changed
    changes = [paired_difference(F, m, v, base=SOURCE) for v in arms + [CONVERTED]
               for m, _, _ in MEASURES if m in F and F[m].notna().any()]
    R.derived(f"cited_{name}_changes.csv", pd.DataFrame(changes))

    # the caption says what the columns are: the source, its weights converted to softmax1
    # before any fine-tune, each arm after the fine-tune
    cols = [(SOURCE, "source"), (CONVERTED, "converted")] + [(v, VARIANT_LABELS[v]) for v in arms]
    rows = [{GROUP: Tex(f"means over {n} seeds (geometric for the ratio and the magnitudes)")}]
    for m, lab, log in MEASURES:
        if m not in F or F[m].isna().all():
            continue
        digits = 4 if m == "val_loss" else 3      # the losses differ in the third decimal
        rows.append({"measure": lab, **{c: num(_mean(F[F.variant == v][m], log), digits)
                                        for v, c in cols}})
    R.table(rows, "retrofit.tex", ">{\\raggedright\\arraybackslash}p{3.8cm}" + "r" * len(cols))

    by = {(c["other"], c["metric"]): c for c in changes}
    tr = prof["train"]
    return {"RetrofitLr": _sci(float(tr["lr"])), "RetrofitMinLr": _sci(float(tr["min_lr"])),
            "RetrofitWarmup": fmt(int(tr["warmup_steps"])),
            "RetrofitSourceFirst": fmt(_mean(F[F.variant == SOURCE].first_position, False), 2),
            "HasRetrofit": "1",
            "RetrofitSourceVariant": VARIANT_LABELS[src_variant],
            "RetrofitSourceSteps": fmt(src_steps), "RetrofitSteps": fmt(steps),
            "RetrofitPercent": fmt(100 * steps / src_steps, 2),
            "RetrofitNSeeds": fmt(n),
            "RetrofitCommit": latex_escape(prov["commit"][:10]),
            "RetrofitPipelineMin": fmt(prov["pipeline_wall_s"] / 60, 2),
            "RetrofitText": Tex(text(tests, by, arms, steps)),
            "RetrofitSources": Tex(sources_sentence(R, src_name, src_variant, F, prov))}


SOURCE_CHECK = (("first_position", "attention on the first position", "", 3),
                ("gap_W8A8", "W8A8 gap", " nats", 3), ("val_loss", "validation loss", " nats", 4))


def sources_sentence(R, src_name: str, src_variant: str, F: pd.DataFrame, prov: dict) -> str:
    """Whether the retrofit's sources are the source study's committed checkpoints, from the
    numbers: the same seeds' final measurements in results/<src_name>/ against the sources'
    (seed means). Retrained sources differ; the sentence says by how much, so that one quantity
    is not read as two."""
    got = committed(R, src_name)
    if got is None:
        return ""
    theirs = final(got[0])
    theirs = theirs[theirs.variant == src_variant]
    ours = F[F.variant == SOURCE]
    seeds = sorted(set(ours.seed) & set(theirs.seed))
    if not seeds:
        return ""
    pairs = [(lab, unit, d, ours[ours.seed.isin(seeds)][m].mean(),
              theirs[theirs.seed.isin(seeds)][m].mean())
             for m, lab, unit, d in SOURCE_CHECK if m in ours and m in theirs]
    if all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for _, _, _, a, b in pairs):
        return (f"The sources are the committed checkpoints of that study: their numbers equal "
                f"its own on the {len(seeds)} seeds.")
    said = _and([f"{lab} ${fmt(a, d)}$ against ${fmt(b, d)}${unit}" for lab, unit, d, a, b in pairs])
    return (f"The sources were trained again for this study rather than read from the source "
            f"study's committed checkpoints, and the same seeds and recipe gave slightly "
            f"different models: {said} (seed means, retrained first). Every comparison in this "
            f"section is against its own sources.")


def _sci(x: float) -> Tex:
    """A learning rate as LaTeX math: 3\\times 10^{-4}."""
    m, e = f"{x:.2e}".split("e")
    m = m.rstrip("0").rstrip(".")
    return Tex(("" if m == "1" else f"{m}\\times ") + f"10^{{{int(e)}}}")


def _interval(c: dict, digits: int = 3) -> str:
    return (f"${fmt(c['diff'], digits)}$ (95\\% CI ${fmt(c['ci_low'], digits)}$ to "
            f"${fmt(c['ci_high'], digits)}$)")


def text(tests: pd.DataFrame, by: dict, arms: list[str], steps: int) -> str:
    """The section's paragraph, chosen by the numbers: what the fine-tune did to first-position
    attention and loss in each arm (against the source), what the conversion alone cost, and
    the verdicts against the control."""
    out = []
    for m in CHANGE:
        parts = []
        for v in arms:
            c = by.get((v, m))
            if c is None or c["n"] < 2:
                continue
            parts.append(f"{_interval(c)} under {_name(v)}")
        if parts:
            what = "attention on the first position" if m == "first_position" else \
                "validation loss (nats)"
            out.append(f"Against the source checkpoint, {steps} more steps changed the {what} by "
                       + _and(parts) + " (paired by seed, exploratory).")
    left = [(v, by[(v, "abstention")]["other_mean"]) for v in arms if (v, "abstention") in by
            and by[(v, "abstention")]["other_mean"] > 1e-9]
    start = by.get((CONVERTED, "abstention"))
    if left and start is not None:
        out.append("After the fine-tune, "
                   + _and([f"{_name(v)} left ${fmt(100 * a, 2)}\\%$" for v, a in left])
                   + " of its attention on the implicit zero, against "
                   f"${fmt(100 * start['other_mean'], 2)}\\%$ right after the conversion "
                   "(arithmetic means over seeds).")
    conv = by.get((CONVERTED, "val_loss"))
    if conv is not None and conv["n"] >= 2:
        out.append("Converting the weights to softmax1 without any fine-tune changed the loss by "
                   f"{_interval(conv)}, and the attention on the first position by "
                   f"{_interval(by[(CONVERTED, 'first_position')])}.")
    fixless = set()
    for other in dict.fromkeys(tests.other):
        t = tests[tests.other == other]
        said = {}
        for r in t.to_dict("records"):
            if r["verdict"] == NOTHING_TO_FIX:
                fixless.add(_SHORT.get(r["metric"], r["metric"]))
            else:
                said.setdefault(r["verdict"], []).append(_endpoint_words(r))
        clauses = [VERDICT_WORDS[v].format(_and(said[v])) for v in VERDICT_WORDS if v in said]
        if clauses:
            out.append(f"Against the softmax control, {_name(other)} " + _and(clauses)
                       + " (\\cref{tab:retrofit-primary}).")
    if fixless:
        out.append(f"The control's own {_and(sorted(fixless))} lay within the margin of 0: "
                   "there was nothing to fix.")
    fp = tests[tests.metric == "first_position"]
    if len(fp):
        lowered = [_name(v) for v, vd in zip(fp.other, fp.verdict) if vd == "lower"]
        if lowered:
            out.append(f"A fine-tune of {steps} steps as {_and(lowered)} lowered the attention "
                       "on the first position below the control's.")
        else:
            out.append(f"In {steps} steps no retrofit lowered the attention on the first "
                       "position that softmax had learned measurably below the control's.")
    return " ".join(out)


_SHORT = {ep.metric: ep.label for ep in PRIMARY}
VERDICT_WORDS = {"lower": "lowered the {}", "higher": "raised the {}",
                 "equivalent": "was equivalent to it in the {}",
                 "inconclusive": "was inconclusive on the {}"}


def _name(v: str) -> str:
    return "the learned sink" if v == "sink" else VARIANT_LABELS[v]


def _endpoint_words(r: dict) -> str:
    log = r["scale"] == "log"
    eff = (f"ratio ${fmt(r['ratio'], 3)}$" if log else f"${fmt(r['diff'], 3)}$")
    return f"{_SHORT.get(r['metric'], r['metric'])} ({eff})"
