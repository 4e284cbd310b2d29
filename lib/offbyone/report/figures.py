"""The paper's figures: one style, and the two kinds of plot it repeats."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..io import write_figure
from .stats import VARIANT_LABELS

COLORS = {"softmax": "#444444", "softmax1": "#d62728", "sink": "#1f77b4", "clipped": "#2ca02c",
          "softpick": "#9467bd", "gated": "#ff7f0e", "outgate": "#8c564b"}


def style() -> None:
    matplotlib.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.spines.top": False,
                                "axes.spines.right": False})


def panels(n: int, width: float = 6.5, height: float = 2.6, **kw):
    fig, axes = plt.subplots(1, n, figsize=(width, height), squeeze=False, **kw)
    return fig, list(axes[0])


def seed_lines(ax, df: pd.DataFrame, x: str, y: str, variants, log: bool = False,
               dodge: float = 0.0) -> None:
    """One line per variant: the mean of `y` over seeds at each `x`, the sd as error bars; with
    `log`, the geometric mean and the geometric sd as a factor either way, so that the bars stay
    on a log axis. `dodge` shifts the variants apart along x (in x's units) so that lines that
    coincide stay visible."""
    for i, v in enumerate(variants):
        g = df[df.variant == v].groupby(x)[y]
        if log:
            sub = df[df.variant == v]
            lg = pd.Series(np.log(sub[y].astype(float).to_numpy()), index=sub[x].to_numpy())
            lg = lg.groupby(level=0)
            mid, spread = np.exp(lg.mean()), np.exp(lg.std().fillna(0))
            err = [mid - mid / spread, mid * spread - mid]
        else:
            mid, err = g.mean(), g.std().fillna(0)
        shift = dodge * (i - (len(variants) - 1) / 2)
        ax.errorbar(np.asarray(mid.index, dtype=float) + shift, mid, yerr=err, marker="o",
                    capsize=2, color=COLORS[v], label=VARIANT_LABELS[v])


def head_bars(ax, heads: pd.DataFrame, y: str, variants, baseline: float | None = None) -> None:
    """Per head, grouped by layer, one bar per variant (heads: variant, layer, head, y)."""
    n_heads = int(heads["head"].max()) + 1
    for i, v in enumerate(variants):
        h = heads[heads.variant == v]
        x = h.layer * (n_heads + 1) + h["head"]
        ax.bar(x + i / (len(variants) + 1), h[y], width=1 / (len(variants) + 1),
               color=COLORS[v], label=VARIANT_LABELS[v])
    L = int(heads.layer.max()) + 1
    ax.set_xticks([l * (n_heads + 1) + (n_heads - 1) / 2 for l in range(L)],
                  [f"layer {l}" for l in range(L)])
    if baseline is not None:
        ax.axhline(baseline, ls="--", lw=0.8, color="k")


def save(fig, path) -> None:
    write_figure(path, fig)


def _plain(x, _pos=None) -> str:
    """A tick label: three significant digits, no exponent ('5000', not '5e+03')."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def plain_log_ticks(ax, axis: str = "y") -> None:
    """A log axis labelled with plain numbers ('7.2', '20', '100', never '7.3 x 10^0'): ticks
    at 1, 2 and 5 per decade where the range spans one to three decades, at each power of ten
    where it spans more (labels would crowd), else about four evenly spread ticks; no minor
    labels. Call it after the data are drawn."""
    ticker = matplotlib.ticker
    a = ax.yaxis if axis == "y" else ax.xaxis
    ax.autoscale_view()
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    if lo > 0 and hi / lo > 1000:
        a.set_major_locator(ticker.LogLocator(subs=(1.0,)))
    elif lo > 0 and hi / lo >= 10:
        a.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    else:
        a.set_major_locator(ticker.MaxNLocator(4))
    a.set_major_formatter(ticker.FuncFormatter(_plain))
    a.set_minor_formatter(ticker.NullFormatter())
