"""Which quantized tensor costs what: the activation quantizers grouped by tensor kind
(`quant.GROUPS`), each group quantized alone and all groups but it, at the final checkpoints
(`measure.measure_groups`, written to results/<profile>/quant_groups.csv and, for the testbed,
testbed_quant_groups.csv). A group's own cost is its 'only' gap minus the weights' own gap
('none'). Exploratory throughout: paired by seed, uncorrected.
"""
from __future__ import annotations

import pandas as pd

from ..io import write_csv
from . import figures as F
from .latex import Tex, fmt
from .prose import _and, effect_sentence
from .results import quant_groups, read_csv
from .stats import VARIANT_LABELS, paired_difference

SETTINGS = ("W8A8", "W16A6", "W16A4")
HEADLINE = ("W8A8", "W16A4")        # the settings the prose names


def load(R, name: str, profile: str | None) -> pd.DataFrame:
    """results/<profile>/<name>.csv from the runs (written when they have any) or read back;
    empty when neither exists."""
    path = R.resdir / f"{name}.csv"
    if profile and R.from_runs:
        df = quant_groups(profile, R.runs_root)
        if len(df):
            write_csv(path, df)
            return df
    return read_csv(path) if path.exists() else pd.DataFrame()


def contributions(df: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, seed, setting, group): the gap with the group alone minus the weights' own
    gap ('own'), the gap with every group but it ('all_but'), and the setting's whole gap."""
    key = ["variant", "seed", "setting"]
    none = df[df["mode"] == "none"].set_index(key).gap.rename("weights")
    whole = df[df["mode"] == "all"].set_index(key).gap.rename("whole")
    only = df[df["mode"] == "only"].set_index(key + ["group"]).gap.rename("only")
    but = df[df["mode"] == "all but"].set_index(key + ["group"]).gap.rename("all_but")
    out = pd.concat([only, but], axis=1).reset_index()
    out = out.join(none, on=key).join(whole, on=key)
    out["own"] = out["only"] - out["weights"]
    return out


def _the(v: str) -> str:
    """A variant's name as a sentence uses it: 'softmax', 'the learned sink'."""
    return VARIANT_LABELS[v] if v.startswith("softmax") or v == "softpick" else \
        f"the {VARIANT_LABELS[v]}"


def top_groups(c: pd.DataFrame, variant: str, setting: str, k: int = 2) -> list[tuple]:
    """The k groups whose own cost (mean over seeds) is largest: (group, mean own cost)."""
    sub = c[(c.variant == variant) & (c.setting == setting)]
    means = sub.groupby("group").own.mean().sort_values(ascending=False)
    return list(means.head(k).items())


def carry_sentence(c: pd.DataFrame, where: str) -> str:
    """'On text at W8A8, the gap was 0.012 nats under softmax and 0.008 under softmax1 (the
    weights alone at most 0.002); the scores and the LayerNorm outputs cost most alone under
    every variant (0.0047 and 0.0010 under softmax, ...)'. The costliest groups are said once
    when every variant has the same two, each variant's own otherwise."""
    out = []
    for setting in [s for s in HEADLINE if s in set(c.setting)]:
        variants = [v for v in VARIANT_LABELS if v in set(c.variant)]
        wholes, weights, tops = [], [], {}
        for v in variants:
            sub = c[(c.variant == v) & (c.setting == setting)]
            wholes.append(sub.groupby("seed").whole.first().mean())
            weights.append(sub.groupby("seed").weights.first().mean())
            tops[v] = top_groups(c, v, setting)
        gaps = _and([f"${fmt(w, 2)}${' nats' if i == 0 else ''} under {_the(v)}"
                     for i, (v, w) in enumerate(zip(variants, wholes))])
        text = (f"{where} at {setting}, the gap was {gaps} (the weights alone at most "
                f"${fmt(max(weights), 2)}$)")
        names = {frozenset(g for g, _ in t) for t in tops.values()}
        if len(names) == 1 and len(variants) > 1:
            order = [g for g, _ in tops[variants[0]]]
            values = "; ".join(
                _and([f"${fmt(dict(tops[v])[g], 2)}$" for g in order]) + f" under {_the(v)}"
                for v in variants)
            text += (f"; {_and([f'the {g}' for g in order])} cost most alone under every variant "
                     f"({values})")
        else:
            text += "; the groups that cost most alone were " + "; ".join(
                _and([f"the {g} (${fmt(x, 2)}$)" for g, x in tops[v]]) + f" under {_the(v)}"
                for v in variants)
        out.append(text + ".")
    return " ".join(out)


def largest_difference(c: pd.DataFrame, setting: str, other: str = "softmax1") -> dict | None:
    """Of every group, the paired difference (other minus softmax, own cost) with the smallest
    uncorrected p; exploratory."""
    best = None
    sub = c[c.setting == setting]
    for g in dict.fromkeys(sub.group):
        r = paired_difference(sub[sub.group == g], "own", other)
        if r["n"] > 1 and r["p"] == r["p"] and (best is None or r["p"] < best[1]["p"]):
            best = (g, r)
    if best is None:
        return None
    return {"group": best[0], **best[1]}


def differences(c: pd.DataFrame) -> pd.DataFrame:
    """Every group's paired difference of own cost against softmax, per setting (exploratory)."""
    rows = []
    for setting in dict.fromkeys(c.setting):
        sub = c[c.setting == setting]
        for other in [v for v in dict.fromkeys(sub.variant) if v != "softmax"]:
            for g in dict.fromkeys(sub.group):
                rows.append({"setting": setting, "group": g,
                             **paired_difference(sub[sub.group == g], "own", other)})
    return pd.DataFrame(rows)


def figure(R, studies: list[tuple[str, pd.DataFrame]]) -> None:
    settings = [s for s in SETTINGS if any(s in set(c.setting) for _, c in studies)]
    # one scale per column: a setting's panels are compared across studies
    fig, axes = F.plt.subplots(len(studies), len(settings), squeeze=False, sharey=True,
                               sharex="col", figsize=(6.5, 2.6 * len(studies) + 0.4))
    for (label, c), row in zip(studies, axes):
        V = [v for v in VARIANT_LABELS if v in set(c.variant)]
        groups = list(dict.fromkeys(c.group))
        for ax, setting in zip(row, settings):
            sub = c[c.setting == setting]
            h = 0.8 / len(V)
            for i, v in enumerate(V):
                m = sub[sub.variant == v].groupby("group").own
                y = [j + (i - (len(V) - 1) / 2) * h for j in range(len(groups))]
                ax.barh(y, [m.mean().get(g, 0) for g in groups], h,
                        xerr=[m.std().fillna(0).get(g, 0) for g in groups], capsize=1.5,
                        color=F.COLORS[v], label=VARIANT_LABELS[v], error_kw={"lw": 0.6})
            ax.set_yticks(range(len(groups)), groups)
            ax.invert_yaxis()
            ax.set_xscale("symlog", linthresh=LINTHRESH)
            ax.axvline(0, color="k", lw=0.5)
            ax.tick_params(labelsize=8)
            ax.set_title(f"{label}: {setting}", fontsize=8)
    for ax in axes[-1]:
        _decade_ticks(ax)
    fig.supxlabel("loss gap with the group alone quantized, less the weights' own (nats; "
                  "symmetric log scale)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=len(labels), frameon=False,
               bbox_to_anchor=(0.5, 1.0))                 # above the panels, never over a bar
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_size_inches()[1]))
    R.figure(fig, "attribution")


LINTHRESH = 0.001            # the symlog axis is linear within +-1 milli-nat


def decade_ticks(lo: float, hi: float, most: int = 4) -> list[float]:
    """0 and the powers of ten from the linear threshold out to the axis limits, on each side
    the limits reach; every other decade when there are more than `most` ticks, the outermost
    kept, so that labels of neighbouring decades never run together."""
    def side(limit):
        out, k = [], 0
        while LINTHRESH * 10 ** k <= limit * 1.0001:
            out.append(LINTHRESH * 10 ** k)
            k += 1
        return out
    pos, neg = side(hi), side(-lo)
    while len(pos) + len(neg) + 1 > most and (len(pos) > 1 or len(neg) > 1):
        if len(pos) >= len(neg):
            pos = pos[::-2][::-1]
        else:
            neg = neg[::-2][::-1]
    return sorted([-x for x in neg] + [0.0] + pos)


def _decade_ticks(ax) -> None:
    lo, hi = ax.get_xlim()
    ticks = decade_ticks(lo, hi)
    if len(ticks) == 1:          # the whole axis inside the linear region: plain linear ticks
        ticks = [t for t in F.matplotlib.ticker.MaxNLocator(3).tick_values(lo, hi) if lo <= t <= hi]
    ax.xaxis.set_major_locator(F.matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_minor_locator(F.matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(F.matplotlib.ticker.FuncFormatter(_tick))


def _tick(x: float, _pos=None) -> str:
    """A symlog tick as a writer prints it: 0, 0.001, -0.01, 0.1 (two significant digits)."""
    return "0" if x == 0 else f"{x:.2g}"


def windows_text(frames) -> str:
    """On which validation windows the groups were measured: all of the sweep's, or the first
    few (measure's groups_seqs), said with the numbers."""
    cut = sorted({(int(w), int(n)) for df in frames if len(df) and "windows" in df
                  for w, n in zip(df["windows"], df["loss_windows"]) if w == w and n == n and w < n})
    if not cut:
        return "on the sweep's own validation windows and calibration"
    counts = _and([f"the first {w} of its {n}" for w, n in cut])
    return (f"on the sweep's calibration and {counts} validation windows (to keep the "
            "attribution affordable; the gap with every group on is then the "
            "setting's gap on those windows)")


def attribution(R) -> pd.Series:
    main = load(R, "quant_groups", R.profile)
    tb = load(R, "testbed_quant_groups", R.prof.get("testbed"))
    studies = [(lab, contributions(df)) for lab, df in ((R.study_label, main), ("testbed", tb))
               if len(df)]
    M = R.sections["attribution"] = {"HasGroups": "1" if studies else "0"}
    if not studies:
        return pd.Series(M)
    wheres = {R.study_label: "On text" if R.study_label == "natural text" else
              f"On the {R.study_label}", "testbed": "On the testbed"}
    text, diffs = [], []
    for label, c in studies:
        text.append(carry_sentence(c, wheres[label]))
        d = differences(c).assign(study=label)
        diffs.append(d)
        for setting in [s for s in HEADLINE if s in set(c.setting)]:
            best = largest_difference(c, setting)
            if best:
                text.append(f"{wheres[label]} at {setting}, the group whose paired difference "
                            f"from softmax has the smallest uncorrected $p$ is the {best['group']}: "
                            + effect_sentence(best, f"gap of the {best['group']} alone, less "
                                                    "the weights' (nats)")
                            + ".")
    R.derived("quant_groups_differences.csv", pd.concat(diffs, ignore_index=True))
    figure(R, studies)
    M["AttributionText"] = Tex(" ".join(text))
    M["GroupWindowsText"] = Tex(windows_text([main, tb]))
    M["GroupSettings"] = ", ".join(s for s in SETTINGS if any(s in set(c.setting)
                                                                for _, c in studies))
    return pd.Series(M)
