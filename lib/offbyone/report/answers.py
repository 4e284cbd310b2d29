"""The results section's paragraphs, one per question (sinks, outliers, quantization, cost), as
prose: first what the softmax baseline had in each study, then what softmax1 and the learned
sink did to it, studies that behaved alike said together and each estimate given once. The
verdicts with their intervals and p-values live in the forest plot and the primary tables; the
paragraphs point there rather than repeat them.

Every clause is chosen by the primary tests (`stats.primary_tests` rows of each study): a
significant difference is 'lower' or 'higher', an open one says which way its estimate points
and that the interval leaves it open, an equivalence says its margin, and a gap the baseline did
not have is said as such.
"""
from __future__ import annotations

import math

from .latex import fmt, plain
from .prose import _and
from .stats import NOTHING_TO_FIX, VARIANT_LABELS

# a clause's order within a sentence: findings first, then the open estimates, then the rest
ORDER = ("lower", "higher", "open lower", "open higher", "open split", "equivalent",
         NOTHING_TO_FIX, "untestable")
LABELS = {"first_position": "attention on the first position",
          "max_inf_norm": "largest activation (inf-norm)", "max_kurtosis": "largest kurtosis",
          "bos_resid_ratio": "BOS residual peak",
          "outlier_share_pos0": "share of the outliers at BOS",
          "gap_W8A8": "W8A8 gap", "gap_W16A6": "W16A6 gap (activations only)",
          "val_loss": "full-precision loss"}
QUESTION_METRICS = {"sink": ("first_position",),
                    "outliers": ("max_inf_norm", "max_kurtosis", "bos_resid_ratio",
                                 "outlier_share_pos0"),
                    "quantization": ("gap_W8A8", "gap_W16A6"),
                    "cost": ("val_loss",)}


def _name(v: str) -> str:
    return "the learned sink" if v == "sink" else VARIANT_LABELS.get(v, v)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def category(r: dict) -> str:
    """A test row's place in the prose: its verdict, an open estimate's direction."""
    if r["n"] < 3 or r["p"] != r["p"]:
        return "untestable"
    v = r["verdict"]
    if v == "inconclusive":
        return "open higher" if r["diff"] > 0 else "open lower"
    return v


def _base(r: dict) -> float:
    """The baseline's mean in the endpoint's own units (geometric on the log scale)."""
    return math.exp(r["base_mean"]) if r["scale"] == "log" else r["base_mean"]


def _per_study(got: dict) -> str:
    """One study's estimates, each variant named: ratios ('softmax1 1.2, the learned sink
    1.1'), or the baseline's mean once and each variant's ('0.241 to 0.022 under softmax1 and
    0.014 under the learned sink')."""
    rs = list(got.items())
    if rs[0][1]["scale"] == "log":      # a ratio that rounds to 1.0 gets its third digit
        return ", ".join(f"{_name(v)} ${fmt(r['ratio'], 3 if fmt(r['ratio'], 2) == '1.0' else 2)}$"
                         for v, r in rs)
    half = min((r["ci_high"] - r["ci_low"]) / 2 for _, r in rs)
    # one digit of the half-width, and two significant digits of the smallest mean
    means = [abs(x) for _, r in rs for x in (r["base_mean"], r["other_mean"]) if x]
    small = min(means) if means else 1.0
    d = max(-math.floor(math.log10(half)) if half > 0 else 4, 1 - math.floor(math.log10(small)))
    vals = [rs[0][1]["base_mean"]] + [r["other_mean"] for _, r in rs]
    while d > 0 and all(round(x, d - 1) == round(x, d) for x in vals):
        d -= 1                                   # no trailing zeros the values all share
    # a variant's mean must not print as the baseline's ('0.12 to 0.12'): a digit more, at most two
    for _ in range(2):
        if all(round(r["other_mean"], d) != round(vals[0], d) for _, r in rs):
            break
        d += 1
    mean = lambda x: f"{x:.{d}f}"
    return (f"${mean(rs[0][1]['base_mean'])}$ to "
            + " and ".join(f"${mean(r['other_mean'])}$ under {_name(v)}" for v, r in rs))


def _within(got: dict) -> str:
    """'; within the margin' when every variant's significant difference lies inside it."""
    inside = all(-r["margin"] < r["ci_low"] and r["ci_high"] < r["margin"] for r in got.values())
    return f"; within {_margin(next(iter(got.values())))}" if inside else ""


def _margin(r: dict) -> str:
    if r["scale"] == "log":
        return f"a factor ${math.exp(r['margin']):g}$"
    return f"${r['margin']:g}$" + (f" {r['unit']}" if r.get("unit") else "")


def _rows(studies, metric: str, variants) -> list[tuple]:
    """(study, {variant: test row}) for the studies that test `metric`."""
    out = []
    for s in studies:
        t = s.tests[s.tests.metric == metric]
        got = {v: t[t.other == v].iloc[0].to_dict() for v in variants if (t.other == v).any()}
        if got:
            out.append((s, got))
    return out


def endpoint_sentence(studies, metric: str, variants=("softmax1", "sink")) -> str:
    """One endpoint across studies and variants, in up to three sentences: where it was lower,
    higher or within the margin of softmax's (the decided verdicts); where the estimates point
    with intervals that leave the direction open; and where softmax had no gap to close. A
    study appears once per category, with the variants that fell in it."""
    by: dict[str, list] = {c: [] for c in ORDER}
    for s, got in _rows(studies, metric, variants):
        cats: dict[str, dict] = {}
        for v, r in got.items():
            cats.setdefault(category(r), {})[v] = r
        if "open lower" in cats and "open higher" in cats:     # the variants' estimates split
            both = {**cats.pop("open lower"), **cats.pop("open higher")}
            cats["open split"] = {v: both[v] for v in variants if v in both}
        for c, sub in cats.items():
            by[c].append((s, sub))
    label = LABELS[metric]
    out = []
    decided = [f"{c} {_and([f'{s.where} ({_per_study(g)}{_within(g)})' for s, g in by[c]])}"
               for c in ("lower", "higher") if by[c]]
    if by["equivalent"]:
        r0 = next(iter(by["equivalent"][0][1].values()))
        decided.append(f"within {_margin(r0)} of softmax's "
                       + _and([f"{s.where} ({_and([_name(v) for v in g])})"
                               for s, g in by["equivalent"]]))
    if decided:
        out.append(f"The {label} was " + _and(decided) + ".")
    open_ = [f"{c.split()[1]} {_and([f'{s.where} ({_per_study(g)})' for s, g in by[c]])}"
             for c in ("open lower", "open higher") if by[c]]
    # a study whose variants' estimates point both ways: said once, as a split
    split = (_and([f"{s.where} ({_per_study(g)})" for s, g in by["open split"]])
             if by["open split"] else "")
    if open_ or split:
        its = "Its estimates" if decided else f"The estimates of the {label}"
        text = (f"{its} point {_and(open_)}" + (f", and split {split}" if split else "")
                if open_ else f"{its} split {split}")
        out.append(text + ", none significant after Holm's correction.")
    if by[NOTHING_TO_FIX]:
        r0 = next(iter(by[NOTHING_TO_FIX][0][1].values()))
        out.append(f"Softmax had no {label} to close {_and([s.where for s, _ in by[NOTHING_TO_FIX]])}"
                   f": its value lay within {_margin(r0)} of zero.")
    if by["untestable"]:
        out.append(f"The {label} could not be tested "
                   f"{_and([s.where for s, _ in by['untestable']])}.")
    return " ".join(out)


def baseline_sentence(studies, metric: str) -> str:
    """What the softmax baseline had of `metric` in each study, largest first; for attention
    on the first position, against the uniform share where it fell below it."""
    vals = []
    for s, got in _rows(studies, metric, ("softmax1", "sink")):
        r = next(iter(got.values()))
        below = ""
        if metric == "first_position" and "uniform_first_position" in s.fin:
            u = float(s.fin.uniform_first_position.mean())
            if r["base_mean"] < u:
                below = f" (below the uniform share, ${plain(u)}$)"
        vals.append((_base(r), s.where, below))
    if not vals:
        return ""
    vals.sort(key=lambda x: -x[0])
    unit = " nats" if metric.startswith("gap_") else ""
    said = [f"${plain(v)}${unit if i == 0 else ''} {where}{below}"
            for i, (v, where, below) in enumerate(vals)]
    return f"Softmax's {LABELS[metric]} was " + _and(said) + "."


def mechanical_sentence(studies) -> str:
    """Where softmax1 lowered the attention on the first position, how much of the drop its
    weight on the implicit zero alone implies: the same attention pattern scaled by one minus
    the abstention (seed means), beside the observed value, so that a drop no larger than the
    abstention is not read as a sink removed."""
    parts = []
    for s, got in _rows(studies, "first_position", ("softmax1",)):
        r = got["softmax1"]
        f = s.fin
        if r["verdict"] != "lower" or "abstention" not in f:
            continue
        a = float(f[f.variant == "softmax1"].abstention.mean())
        if not a > 0:
            continue
        parts.append(f"{s.where} softmax1 left ${plain(100 * a, 2)}\\%$ of its attention on the "
                     f"implicit zero, which alone takes softmax's ${plain(r['base_mean'])}$ to "
                     f"${plain(r['base_mean'] * (1 - a))}$, and the observed value was "
                     f"${plain(r['other_mean'])}$")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def paragraph(studies, question: str, variants=("softmax1", "sink")) -> str:
    """A question's paragraph: the baseline's own value where the question has one, then each
    endpoint across studies."""
    lead = {"sink": "first_position", "outliers": "max_inf_norm", "quantization": "gap_W8A8"}
    out = [baseline_sentence(studies, lead[question])] if question in lead else []
    out += [endpoint_sentence(studies, m, variants) for m in QUESTION_METRICS[question]]
    if question == "sink":
        out.append(mechanical_sentence(studies))
    return " ".join(x for x in out if x)
