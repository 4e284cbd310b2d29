"""Studies run once and committed (a profile's `cited:`, e.g. testbed_long: the testbed trained
ten times as long), read from results/<name>/ alone and never rerun: their primary endpoints,
their table, and what changed from the short testbed (a reversal is called one), with the
abstention that confounds kurtosis. Macros carry the prefix 'Long' for the first one named.
"""
from __future__ import annotations

import json

import pandas as pd

from ..profiles import load_profile, rehearsal_of
from .latex import Tex, fmt, latex_escape, macro_name
from .primary import primary_rows, study_label
from .prose import _and, primary_sentence, verdict_summary
from .results import final, read_csv
from .stats import VARIANT_LABELS, paired_difference, primary_tests
from .synthesis import _module_words, clause

FOUR_BIT = ("gap_W4A4", "gap_W8A4")


def committed(R, name: str):
    """(runs.csv, provenance.json) of a cited profile's committed results, or None (said so)
    when they are not there."""
    res = R.root / "results" / name
    if not (res / "runs.csv").exists():
        print(f"{res}/runs.csv is not there: the paper leaves {name} out "
              f"(make reproduce PROFILE={name} makes it)")
        return None
    return read_csv(res / "runs.csv"), json.loads((res / "provenance.json").read_text())


def cited_study(R, name: str, cited_by):
    """committed(R, name) for a study that only the papers of `cited_by` (and their
    rehearsals) cite; None for any other paper (its own, the smoke test's) without a word."""
    profile = getattr(R, "profile", "cpu")
    if (rehearsal_of(profile) or profile) not in cited_by:
        return None
    return committed(R, name)


def cited(R) -> pd.Series:
    names = R.prof.get("cited") or []
    M = R.sections["cited"] = {"HasLong": "0"}
    for name in names:
        if load_profile(name).get("retrofit"):       # a retrofit has its own section
            continue
        got = committed(R, name)
        if got is None:
            continue
        df, prov = got
        res = R.root / "results" / name
        fin = final(df)
        corpus = json.loads((res / "corpus.json").read_text()) if (res / "corpus.json").exists() else {}
        steps = int(fin.max_steps.iloc[0])
        label = study_label((corpus.get("source") or {}).get("kind"), steps)
        V = [v for v in VARIANT_LABELS if v in set(fin.variant)]
        tests = primary_tests(fin, [v for v in V if v != "softmax"]).assign(study=label)
        R.cited_runs[label] = df
        R.cited_fin[name] = fin
        R.derived(f"cited_{name}_primary.csv", tests)
        if M["HasLong"] == "1":
            continue
        R.primary_tests[label] = tests
        R.long_name = name
        R.table(primary_rows(tests, label), "long_primary.tex", "lrrrrrrl")
        tfin = R.testbed_frames()[2]
        base = int(tfin.max_steps.iloc[0]) if tfin is not None else None
        M.update({"HasLong": "1", "LongProfileName": latex_escape(name),
                  "LongSteps": fmt(steps),
                  "LongBaseSteps": fmt(base) if base else "?",
                  "LongTimes": fmt(steps / base, 2) if base else "?",
                  "LongNSeeds": fmt(int(fin.seed.nunique())),
                  "LongVariantList": ", ".join(VARIANT_LABELS[v] for v in V),
                  "LongCommit": latex_escape(prov["commit"][:10]),
                  "LongPipelineMin": fmt(prov["pipeline_wall_s"] / 60, 2),
                  "LongChanges": changes(R, tests, fin, f"at {fmt(steps)} steps")})
        for r in tests.to_dict("records"):
            M[macro_name("LongPrimary", *r["metric"].split("_"), r["other"])] = primary_sentence(r)
        for other in V[1:]:
            M[macro_name("LongPrimarySummary", other)] = verdict_summary(tests, other)
        for v in V:
            sub = fin[fin.variant == v]
            M.update({macro_name("Long", *c.split("_"), v): fmt(sub[c].mean())
                      for c in ("max_kurtosis", "gap_W8A8", "gap_W16A6", "val_loss")})
    return pd.Series(M)


def changes(R, tests: pd.DataFrame, fin: pd.DataFrame, where: str) -> Tex:
    """What longer training changed, in words chosen by the numbers: kurtosis against the
    short testbed's direction (a reversal is called one), the magnitudes beside it, the mass
    left on the implicit zero, where the largest kurtosis sits, the 4-bit activation gaps."""
    out = []
    short = R.primary_tests.get(study_label("synthetic"))
    k_long = tests[(tests.metric == "max_kurtosis") & (tests.other == "softmax1")]
    if len(k_long):
        r = k_long.iloc[0].to_dict()
        s = f"Softmax1's maximum kurtosis {where} was {clause(r, '', detail=True).replace('  ', ' ')}"
        if short is not None:
            k0 = short[(short.metric == "max_kurtosis") & (short.other == "softmax1")]
            if len(k0):
                r0 = k0.iloc[0].to_dict()
                same = (r0["diff"] > 0) == (r["diff"] > 0)
                s += (f"; on the short testbed its ratio was ${fmt(r0['ratio'], 3)}$, so the "
                      + ("direction held" if same else "direction reversed with training"))
        mag = tests[(tests.metric == "max_inf_norm") & (tests.other == "softmax1")]
        if len(mag):
            s += f", while the inf-norm was {clause(mag.iloc[0].to_dict(), '', detail=False).strip()}"
        out.append(s + ".")
    abst = [(VARIANT_LABELS[v], fin[fin.variant == v].abstention.mean())
            for v in dict.fromkeys(fin.variant) if v != "softmax" and "abstention" in fin]
    abst = [(n, a) for n, a in abst if a == a and a > 0]
    if abst:
        out.append("The variants that can abstain left "
                   + _and([f"${fmt(100 * a, 2)}\\%$ ({n})" for n, a in abst])
                   + " of their attention on the implicit zero (arithmetic means over seeds).")
    modules = fin.groupby("variant").max_kurtosis_module.agg(lambda m: m.mode().iloc[0])
    kinds = {m.rsplit(".", 1)[-1] for m in modules}
    if len(kinds) == 1:
        out.append(f"Every variant's largest kurtosis sat in {_module_words(next(iter(kinds)))} "
                   "(the most frequent module over seeds).")
    gaps = []
    for col in FOUR_BIT:
        if col not in fin:
            continue
        base = fin[fin.variant == "softmax"][col].mean()
        others = []
        for v in dict.fromkeys(fin.variant):
            if v == "softmax":
                continue
            d = paired_difference(fin, col, v)
            others.append(f"${fmt(d['other_mean'], 2)}$ ({VARIANT_LABELS[v]}, paired "
                          f"$p = {fmt(d['p'], 2)}$)")
        gaps.append(f"{col[4:]} from ${fmt(base, 2)}$ under softmax to {_and(others)}")
    if gaps:
        out.append("Exploratory, arithmetic means in nats: the 4-bit activation gaps went "
                   + "; ".join(gaps) + ".")
    return Tex(" ".join(out))
