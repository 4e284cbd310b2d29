"""The synthetic testbed (Bigram-Backcopy) a profile names with `testbed:`: its final
checkpoints (one row per metric), its exploratory differences, where softmax heads put the
weight of queries with nothing to do, and its figures.
"""
from __future__ import annotations

import pandas as pd

from ..corpora.testbed import BigramBackcopy
from ..profiles import load_profile, run_config
from . import figures as F
from .latex import Tex, fmt, latex_escape, macro_name, plain
from .overview import by_metric, differences_table
from .prose import effect_sentence
from .results import collect, final, per_layer
from .stats import METRICS, PRIMARY, VARIANT_LABELS, exploratory_metrics, paired_differences

TESTBED_ROWS = {"copy_loss": "loss after a trigger (nats)", "bigram_loss": "loss elsewhere (nats)",
                "bos_other": "attention on BOS, queries with nothing to do",
                "bos_trigger": "attention on BOS, trigger queries",
                "bos_other_max_head": "the former, largest head",
                "avg_kurtosis": "average kurtosis", "max_kurtosis": "maximum kurtosis",
                "max_inf_norm": Tex("maximum inf-norm $\\|x\\|_\\infty$"),
                "sink_rate": "sink rate", "abstention": "mass on the implicit zero",
                "gap_W8A8": "W8A8 loss gap (nats)", "gap_W4A4": "W4A4 loss gap (nats)"}
TESTBED_MACRO_COLUMNS = ["val_loss", "copy_loss", "bigram_loss", "bos_other", "bos_trigger",
                         "bos_other_max_head", "avg_kurtosis", "max_kurtosis", "max_inf_norm",
                         "sink_rate", "abstention", "gap_W8A8", "gap_W4A4", "gap_W16A6",
                         "gap_legacy_W8A8", "first_position"]


def frames(R):
    """The testbed's runs (every checkpoint), per-layer rows and final checkpoints, or
    (None, None, None) when the profile names no testbed; loaded once."""
    tb = R.prof.get("testbed")
    if not tb:
        return None, None, None
    if R._tb is None:
        tdf = R.frame("testbed_runs", lambda: collect(tb, R.runs_root))
        tlayers = R.frame("testbed_layers", lambda: per_layer(tb, R.runs_root))
        R._tb = (tdf, tlayers, final(tdf))
        R.testbed_fin = R._tb[2]
    return R._tb


def testbed(R) -> pd.Series:
    tb = R.prof.get("testbed")
    M = R.sections["testbed"] = {"HasTestbed": "1" if tb else "0"}
    if not tb:
        return pd.Series(M)
    tprof = load_profile(tb)
    V = tprof["variants"]
    tdf, tlayers, tfin = frames(R)
    tdiffs = paired_differences(tfin, [v for v in V if v != "softmax"])
    R.derived("testbed_differences.csv", tdiffs)
    R.table(by_metric(tfin, TESTBED_ROWS, V), "testbed.tex", "l" + "r" * len(V))
    explore = tdiffs[tdiffs.metric.isin(exploratory_metrics(PRIMARY))]
    R.table(differences_table(explore), "testbed_differences.tex", "lp{3.8cm}rrrrr")
    M["TbTinyBars"] = figures(R, tdf, tlayers, tfin, V)
    cfg, spec = run_config(tb, V[0], tprof["seeds"][0]).to_dict(), BigramBackcopy()
    M.update({"TbProfileName": latex_escape(tb),
              "TbDescription": latex_escape(tprof.get("description", "")),
              "TbNSeeds": fmt(len(tprof["seeds"])),
              "TbVariantList": ", ".join(VARIANT_LABELS[v] for v in V),
              "TbVocab": fmt(spec.vocab), "TbTriggers": fmt(spec.triggers),
              "TbAlpha": f"{spec.alpha:g}", "TbTrainTokens": fmt(spec.train_tokens),
              "TbUniformFirst": fmt(tfin.uniform_first_position.iloc[0]),
              "TbTrainWallMin": fmt(tfin.train_wall_s.sum() / 60, 2)})
    M.update(R.config_macros("TbCfg", cfg, ("n_layer", "n_head", "n_embd", "block_size",
                                            "batch_size", "max_steps"), ("lr", "weight_decay")))
    for v in V:
        sub = tfin[tfin.variant == v]
        M.update({macro_name("Tb", *col.split("_"), v): fmt(sub[col].mean())
                  for col in TESTBED_MACRO_COLUMNS})
    for _, r in tdiffs.iterrows():
        M[macro_name("TbEffect", *r["metric"].split("_"), r["other"])] = effect_sentence(
            r.to_dict(), METRICS[r["metric"]])
    M["TbCopy"] = copy_sentence(tdiffs)
    return pd.Series(M)


def copy_sentence(tdiffs: pd.DataFrame) -> Tex:
    """How well each variant learned the copy, the difference stated with its direction."""
    rows = tdiffs[tdiffs.metric == "copy_loss"]
    if rows.empty:
        return Tex("")
    r0 = rows.iloc[0]
    parts = []
    for _, r in rows.iterrows():
        rel = r["diff"] / r["base_mean"]
        parts.append(f"{VARIANT_LABELS[r['other']]}'s was ${fmt(r['other_mean'])}$, "
                     f"${fmt(100 * abs(rel), 2)}\\%$ {'higher' if rel > 0 else 'lower'} "
                     f"(paired $t$-test $p = {fmt(r['p'], 2)}$, exploratory)")
    return Tex(f"The loss after a trigger, where the copy is needed, was ${fmt(r0['base_mean'])}$ "
               f"nats under softmax; " + "; ".join(parts) + ".")


def tiny_bars(heads: pd.DataFrame, col: str, V, what: str) -> str:
    """The caption's note on bars too short to see (under 2% of the panel's tallest): which
    variant and layer, and the largest of their values, so that a missing bar reads as ~0."""
    top = heads[col].max()
    notes = []
    for (v, layer), g in heads.groupby(["variant", "layer"], sort=False):
        if v in V and top > 0 and g[col].max() < 0.02 * top:
            notes.append(f"{VARIANT_LABELS[v]}'s layer-{int(layer)} heads "
                         f"(at most ${plain(g[col].max(), 2)}$)")
    if not notes:
        return ""
    return (f" Bars too short to see {what}: " + ", ".join(notes) + ".")


def figures(R, tdf, tlayers, tfin, V) -> Tex:
    """The two testbed figures; returns the caption's note on bars too short to see."""
    heads = tlayers[tlayers.kind == "head"].groupby(["variant", "layer", "head"])[
        ["first_position_other", "first_position_trigger"]].mean().reset_index()
    fig, axes = F.panels(2, sharey=True)
    for ax, col, lab in zip(axes, ["first_position_other", "first_position_trigger"],
                            ["queries with nothing to do", "trigger queries"]):
        F.head_bars(ax, heads, col, V, tfin.uniform_first_position.iloc[0])
        ax.set(title=lab)
    axes[0].set_ylabel("attention on BOS")
    axes[0].legend()
    fig.tight_layout()
    R.figure(fig, "testbed")
    fig, axes = F.panels(2)
    for ax, col, lab in zip(axes, ["max_kurtosis", "bos_other"],
                            ["maximum kurtosis", "attention on BOS\n(nothing to do)"]):
        F.seed_lines(ax, tdf, "step", col, V)
        ax.set(xlabel="training step", ylabel=lab)
    axes[0].legend()
    fig.tight_layout(w_pad=2.0)
    R.figure(fig, "testbed-training")
    return Tex("".join(tiny_bars(heads, c, V, w) for c, w in
                       (("first_position_other", "on the left"),
                        ("first_position_trigger", "on the right"))))
