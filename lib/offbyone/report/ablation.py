"""The same variants under one changed recipe key (the profiles a profile names in
`ablations:`), one column per recipe and variant.
"""
from __future__ import annotations

import pandas as pd

from ..io import write_text
from ..profiles import load_profile, run_config
from .latex import mean_sd
from .overview import MAIN_ROWS
from .prose import effect_sentence
from .results import collect, final
from .stats import METRICS, VARIANT_LABELS, paired_difference

ABLATION_ROWS = {k: v for k, v in MAIN_ROWS.items() if k not in ("abstention",)}


def ablations(R) -> pd.Series:
    names = R.prof.get("ablations") or []
    M = R.sections["ablations"] = {"HasAblation": "1" if names else "0"}
    if not names:
        return pd.Series(M)
    columns, sentences = {}, []
    for name, f in [(R.profile, R.fin)] + [(a, ablation_runs(R, a)) for a in names]:
        label = "this recipe" if name == R.profile else recipe(R, name)
        for v in ("softmax", "softmax1"):
            if v in set(f.variant):
                columns[f"{label}: {VARIANT_LABELS[v]}"] = f[f.variant == v]
        if name != R.profile:
            sentences += ablation_sentences(R, name, label, f)
    rows = [{"metric": lab, **{c: mean_sd(sub[col]) for c, sub in columns.items()}}
            for col, lab in ABLATION_ROWS.items() if col in R.fin]
    # recipe names run long: each column a right-aligned paragraph, so its header wraps
    width = min(2.4, 10.5 / max(1, len(columns)))       # the columns share the text width
    R.table(rows, "ablation.tex",
            "l" + f">{{\\raggedleft\\arraybackslash}}p{{{width:.2f}cm}}" * len(columns))
    write_text(R.gen / "ablation_text.tex", "\n".join(sentences) + "\n")
    return pd.Series(M)


def ablation_runs(R, name: str) -> pd.DataFrame:
    return R.frame(f"ablation_{name}", lambda: final(collect(name, R.runs_root)))


def recipe(R, name: str) -> str:
    """What an ablation profile changes, in words ('weight decay 0.0')."""
    prof = load_profile(name)
    cfg = run_config(name, prof["variants"][0], prof["seeds"][0]).to_dict()
    changed = {k: cfg[k] for k in cfg
               if k not in ("out_dir", "attention", "seed") and cfg[k] != R.cfg[k]}
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changed.items()) or "this recipe"


def ablation_sentences(R, name: str, label: str, f: pd.DataFrame) -> list[str]:
    # softmax1 against softmax within the ablation, where it trained both (a softmax-only
    # ablation, the weight-decay control of the text study say, has only the change itself)
    out = [f"With {label}, " + effect_sentence(paired_difference(f, m, "softmax1"),
                                               METRICS[m]) + "."
           for m in ("first_position", "avg_kurtosis", "gap_W8A8")
           if {"softmax", "softmax1"} <= set(f.variant)]
    # the change itself, on the softmax baseline: ablation minus this profile, by seed
    both = pd.concat([R.fin[R.fin.variant == "softmax"].assign(variant="softmax"),
                      f[f.variant == "softmax"].assign(variant=name)])
    for m in ("sink_rate", "first_position", "avg_kurtosis", "gap_W8A8"):
        r = paired_difference(both, m, name)
        r["other"] = f"the softmax baseline with {label}"
        r["base"] = "with this recipe"
        s = effect_sentence(r, METRICS[m])
        out.append(s[0].upper() + s[1:] + ".")
    return out
