"""The main study's tables and figures beyond the primary endpoints: the final checkpoints'
metrics (one row per metric, one column per variant), the quantization sweep, every measured
module, the exploratory differences (primary endpoints left out: they are reported once, with
their correction, in the primary table) and the published numbers beside ours.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from . import figures as F
from .latex import Tex, fmt, mean_sd, num
from .results import published_table
from .stats import METRICS, VARIANT_LABELS, exploratory_metrics

# results column -> its row label (means are arithmetic, with the sd over seeds)
MAIN_ROWS = {"val_loss": "validation loss (nats)", "avg_kurtosis": "average kurtosis",
             "max_kurtosis": "maximum kurtosis", "max_inf_norm": Tex("maximum inf-norm $\\|x\\|_\\infty$"),
             "first_position": "attention on the first position", "sink_rate": "sink rate",
             "abstention": "mass on the implicit zero", "gap_W8A8": "W8A8 loss gap (nats)",
             "gap_W16A6": "W16A6 loss gap (nats)"}
# the extended module set (every measured module: embedding, attention output before its
# projection and MLP hidden besides Bondarenko et al.'s), for the appendix
EXTENDED_ROWS = {"ext_avg_kurtosis": "average kurtosis", "ext_max_kurtosis": "maximum kurtosis",
                 "ext_max_inf_norm": Tex("maximum inf-norm $\\|x\\|_\\infty$"),
                 "kurtosis_embed": "kurtosis, embedding",
                 "kurtosis_attn_out": "kurtosis, attention output before its projection",
                 "kurtosis_mlp_hidden": "kurtosis, MLP hidden activation"}
BIT_WORDS = {"W": "weights", "A": "activations"}
MODEL_TOKENIZER = {"char": "char", "bpe": "BPE", "synthetic": "synthetic"}


def by_metric(fin: pd.DataFrame, rows: dict, variants, digits: int = 3,
              first: str = "metric") -> list[dict]:
    """One row per metric (rows: column -> label), one column per variant: the mean +- sd
    over seeds (a narrow table however many metrics there are)."""
    return [{first: label,
             **{VARIANT_LABELS[v]: mean_sd(fin[fin.variant == v][col], digits) for v in variants}}
            for col, label in rows.items() if col in fin]


def differences_table(diffs: pd.DataFrame) -> list[dict]:
    """The paired differences as the paper's table rows."""
    def ci(r):
        return Tex(f"${fmt(r['ci_low'])}$ to ${fmt(r['ci_high'])}$") if r["n"] > 1 else "n/a"
    return [{"variant": VARIANT_LABELS[r["other"]], "metric": METRICS[r["metric"]],
             "softmax": num(r["base_mean"]), "variant mean": num(r["other_mean"]),
             "difference": num(r["diff"]), Tex("95\\% CI"): ci(r), Tex("$p$"): num(r["p"], 2)}
            for _, r in diffs.iterrows()
            # a measure that is zero for both (no delimiter in a synthetic task) says nothing
            if not (r["base_mean"] == 0 and r["other_mean"] == 0)]


def sweep_columns(fin: pd.DataFrame) -> list[str]:
    """The sweep's all-position gaps (gap_W8A8, ...), not the earlier setup's (legacy) nor
    those after a trigger (gap_trigger_W8A8: the testbed's own columns)."""
    return [c for c in fin.columns if re.fullmatch(r"gap_W\d+A\d+", c)]


def bits_label(col: str) -> str:
    """'gap_W8A8' -> 'W8A8'."""
    return col[4:].replace("legacy_", "earlier ")


def tables(R) -> pd.DataFrame:
    """The main table, the quantization sweep, every measured module, the exploratory
    differences and the published numbers."""
    fin, variants = R.fin, R.variants
    main = R.table(by_metric(fin, MAIN_ROWS, variants), "main.tex", "l" + "r" * len(variants))
    sweep = {c: bits_label(c) for c in sweep_columns(fin) + ["gap_legacy_W8A8"] if c in fin}
    R.table(by_metric(fin, sweep, variants, 2, first="bit widths"), "quant.tex",
            "l" + "r" * len(variants))
    R.table(by_metric(fin, EXTENDED_ROWS, variants), "extended.tex", "l" + "r" * len(variants))
    explore = R.diffs[R.diffs.metric.isin(exploratory_metrics(R.endpoints))]
    R.table(differences_table(explore), "differences.tex", "lp{3.8cm}rrrrr")
    R.table(published(R), "published.tex", "lllrrrr")
    return main


def published(R) -> list[dict]:
    """Our variants' means beside the published numbers (paper/published.csv)."""
    cfg, fin = R.cfg, R.fin
    tok = MODEL_TOKENIZER.get(R.corpus["tokenizer"], "")
    inf, kurt = Tex("max $\\|x\\|_\\infty$"), Tex("avg.\\ kurt.")
    sink, cost = Tex("sink (\\%)"), "W8A8 gap (nats)"   # short heads: the table fits
    ours = [{"source": "this work", "model": f"{cfg['n_layer']}L-{cfg['n_embd']} {tok} GPT",
             "method": VARIANT_LABELS[v], inf: num(fin[fin.variant == v].max_inf_norm.mean()),
             kurt: num(fin[fin.variant == v].avg_kurtosis.mean()),
             sink: num(100 * fin[fin.variant == v].sink_rate.mean()),
             cost: num(fin[fin.variant == v].gap_W8A8.mean())}
            for v in R.variants]
    theirs = [{"source": Tex(f"\\citet{{{r.cite}}}"), "model": r.model, "method": r.method,
               inf: num(r.max_inf_norm), kurt: num(r.avg_kurtosis),
               sink: num(r.sink_rate_pct) if not pd.isna(r.sink_rate_pct) else "--",
               # their perplexities as our unit: ln(W8A8 ppl / FP16 ppl) nats
               cost: (num(math.log(r.w8a8_ppl / r.fp_ppl)) if not pd.isna(r.w8a8_ppl) else "--")}
              for r in published_table().itertuples()]
    return ours + theirs


def figures(R) -> None:
    """Activations per layer, outliers over training, attention per head, bit widths."""
    V, layers = R.variants, R.layers
    fig, axes = F.panels(2)
    for ax, kind, title in zip(axes, ["resid", "attn_proj"], ["residual stream", "attention output"]):
        F.seed_lines(ax, layers[layers.kind == kind], "layer", "inf_norm", V)
        ax.set(xlabel="layer", ylabel="inf-norm (mean over sequences)", title=title)
        ax.xaxis.set_major_locator(F.matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].legend()
    fig.tight_layout()
    R.figure(fig, "activations")

    fig, axes = F.panels(2)
    for ax, col, lab in zip(axes, ["avg_kurtosis", "max_inf_norm"], ["average kurtosis", "max inf-norm"]):
        F.seed_lines(ax, R.df, "step", col, V)
        ax.set(xlabel="training step", ylabel=lab)
    axes[0].legend()
    fig.tight_layout()
    R.figure(fig, "training")

    heads = layers[layers.kind == "head"].groupby(["variant", "layer", "head"])[
        ["first_position", "delimiter_attention", "abstention"]].mean().reset_index()
    fig, axes = F.panels(2)
    for ax, col, lab in zip(axes, ["first_position", "delimiter_attention"],
                            ["attention on position 0", "attention on delimiters"]):
        # the dashed line: what attention spread without preference would give (uniform causal
        # attention on position 0; the share of delimiter positions)
        F.head_bars(ax, heads, col, V, R.fin.uniform_first_position.iloc[0]
                    if col == "first_position" else R.fin.delimiter_base_rate.mean())
        ax.set(ylabel=lab)
    axes[0].legend()
    fig.tight_layout()
    R.figure(fig, "attention")
    quantization_figure(R)


def quantization_figure(R) -> None:
    """The sweep as grouped bars, one group per bit setting, ordered by activation bits then
    weight bits (no line joins settings that are not a sequence)."""
    sweep = sweep_columns(R.fin)

    def key(c):
        w, a = c[5:].split("A")
        return (-int(a), -int(w))
    sweep = sorted(sweep, key=key)
    V = R.variants
    fig, (ax,) = F.panels(1, 6.5, 2.6)
    width = 0.8 / len(V)
    for i, v in enumerate(V):
        sub = R.fin[R.fin.variant == v]
        means = [sub[c].mean() for c in sweep]
        sds = [sub[c].std() if len(sub) > 1 else 0 for c in sweep]
        ax.bar([j + (i - (len(V) - 1) / 2) * width for j in range(len(sweep))], means, width,
               yerr=sds, capsize=2, color=F.COLORS[v], label=VARIANT_LABELS[v])
    ax.set_xticks(range(len(sweep)), [bits_label(c) for c in sweep], fontsize=8)
    ax.set_yscale("symlog", linthresh=0.01)
    ax.yaxis.set_major_formatter(F.matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set(ylabel="loss gap (nats)", xlabel="bit widths: W weights, A activations (16 = not quantized)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    R.figure(fig, "quantization")
