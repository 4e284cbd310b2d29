"""StreamingLLM's test: every final checkpoint evaluated with a sliding window of W tokens and
the first k positions kept visible (test split); the middle window is the headline.
"""
from __future__ import annotations

import pandas as pd

from . import figures as F
from .latex import Tex, fmt, macro_name, mean_sd
from .prose import effect_sentence
from .results import windowed as windowed_results
from .stats import VARIANT_LABELS, paired_difference


def windowed(R) -> pd.Series:
    win = R.frame("windowed", lambda: windowed_results(R.profile, R.runs_root))
    M = R.sections["windowed"] = {"HasWindow": "1" if len(win) else "0"}
    if not len(win):
        return pd.Series(M)
    wt = win[win.split == "test"]
    W_LIST, K_LIST = sorted(wt.window.unique()), sorted(wt.keep.unique())
    w_star = W_LIST[len(W_LIST) // 2]
    rows = [{"variant": VARIANT_LABELS[v], "window": fmt(int(w)),
             "full attention": mean_sd(sub[sub.keep == K_LIST[0]].full_ppl),
             **{Tex(f"$k = {k}$"): mean_sd(sub[sub.keep == k].ppl) for k in K_LIST}}
            for v in R.variants for w in W_LIST
            for sub in [wt[(wt.variant == v) & (wt.window == w)]]]
    R.table(rows, "windowed.tex", "lr" + "r" * (1 + len(K_LIST)))
    figure(R, wt, W_LIST, K_LIST)
    wdiffs = pd.DataFrame([
        paired_difference(wt[(wt.window == w_star) & (wt.keep == k)]
                          .rename(columns={"loss": f"win_loss_k{k}"}), f"win_loss_k{k}", other)
        for k in (K_LIST[0], K_LIST[-1]) for other in R.others])
    R.derived("windowed_differences.csv", wdiffs)
    M.update({"WinStar": fmt(int(w_star)), "WinList": ", ".join(fmt(int(w)) for w in W_LIST),
              "WinKeepList": ", ".join(fmt(int(k)) for k in K_LIST),
              "WinKeepMax": fmt(int(K_LIST[-1])), "WinStart": fmt(int(w_star + K_LIST[-1]))})
    for v in R.variants:
        sub = wt[(wt.variant == v) & (wt.window == w_star)]
        M[macro_name("Win", "ppl", "full", v)] = fmt(sub.full_ppl.mean())
        for k in K_LIST:
            M[macro_name("Win", "ppl", "k", str(k), v)] = fmt(sub[sub.keep == k].ppl.mean())
        # the largest k kept, whatever it is (the paper names it through WinKeepMax)
        M[macro_name("Win", "ppl", "k", "max", v)] = M[macro_name("Win", "ppl", "k", str(K_LIST[-1]), v)]
    for _, r in wdiffs.iterrows():
        k = int(r["metric"].rsplit("k", 1)[1])
        label = (f"test loss with a window of {int(w_star)} and {k} kept initial "
                 f"position{'s' if k != 1 else ''}")
        sentence = effect_sentence(r.to_dict(), label)
        M[macro_name("WinEffect", "k", str(k), r["other"])] = sentence
        if k == K_LIST[-1]:
            M[macro_name("WinEffect", "k", "max", r["other"])] = sentence
    return pd.Series(M)


def figure(R, wt: pd.DataFrame, W_LIST, K_LIST) -> None:
    fig, axes = F.panels(len(W_LIST), min(6.5, 2.2 * len(W_LIST) + 0.6), sharey=True)
    for ax, w in zip(axes, W_LIST):
        cell = wt[wt.window == w]
        # the variants' lines can coincide (at a wide window): dodged apart so both show
        F.seed_lines(ax, cell, "keep", "ppl", R.variants, dodge=0.12)
        for v in R.variants:
            ax.axhline(cell[cell.variant == v].full_ppl.mean(), color=F.COLORS[v], lw=0.6, ls=":")
        ax.set(xlabel="initial positions kept ($k$)", title=f"window {w}", yscale="log")
        ax.set_xticks(K_LIST)
    F.plain_log_ticks(axes[0])
    axes[0].set_ylabel("test perplexity")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    R.figure(fig, "windowed")
