"""The paper's answer: the abstract, the forest plot beside it, one results paragraph per
question (sinks, outliers, quantization, cost) and the limitations, all generated from the
primary tests of every study the paper reports (the main one, the testbed, the committed
longer testbed and the GPU study when its results exist).

Every sentence is chosen by the numbers it states: a verdict is said as the statistics give it
(`stats.verdict`), an inconclusive endpoint always says which way its estimate points, and an
endpoint whose baseline had no gap to close says that instead of "equivalent".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from ..metrics import ACTIVE_FRACTION
from ..profiles import load_profile, model_params, run_config
from . import answers
from . import figures as F
from .latex import Tex, fmt, macro_name
from .prose import _and, _fixed, p_value
from .stats import (ALPHA, DISEASE_CRITERION, NOTHING_TO_FIX, POWER, PRIMARY, RATIO_MARGIN,
                    VARIANT_LABELS, minimum_detectable, paired_difference, permutation_floor)

ABSTRACT_MAX_WORDS = 200
# the W8A8 gap (nats) at which the disease criterion says the baseline has quantization damage
GAP_THRESHOLD = next(sg.threshold for sg in DISEASE_CRITERION if sg.metric == "gap_W8A8")


@dataclass
class Study:
    """One study the paper reports: its primary tests against softmax and its scale."""
    key: str                 # macro prefix and identity: "text", "testbed", "long", "gpu"
    label: str               # a row group of the tables and the forest plot
    where: str               # "on text", "on the testbed", "at 3,000 steps"
    tests: pd.DataFrame      # stats.primary_tests rows
    fin: pd.DataFrame        # final checkpoints, one row per run
    seeds: int
    params: int
    tokens: int              # training tokens per run
    steps: int
    data: str                # what it trains on, in words
    table: str               # the label of its primary table
    extra: dict = field(default_factory=dict)


# the questions the paper answers, each with the primary endpoints that answer it
QUESTIONS = (
    ("sink", "Attention sinks", ("first_position",)),
    ("outliers", "Outliers", ("max_kurtosis", "max_inf_norm", "bos_resid_ratio",
                              "outlier_share_pos0")),
    ("quantization", "Quantization", ("gap_W8A8", "gap_W16A6")),
    ("cost", "Cost", ("val_loss",)),
)
SHORT_LABELS = {"first_position": "attention on the first position",
                "max_kurtosis": "maximum kurtosis", "max_inf_norm": "largest activation (inf-norm)",
                "bos_resid_ratio": "first-position residual peak",
                "outlier_share_pos0": "share of outliers at the first position",
                "gap_W8A8": "8-bit loss gap (W8A8)",
                "gap_W16A6": "6-bit activation-only gap (W16A6)",
                "val_loss": "full-precision loss"}


def word_count(tex: str) -> int:
    """Words as a reader counts them in LaTeX source: commands and math delimiters dropped, a
    number (with its sign and exponent) one word."""
    text = re.sub(r"\\(cref|ref|citet|citep)\{[^}]*\}", " x ", tex)
    text = re.sub(r"\\times\s*10\^\{-?\d+\}", "", text)
    text = re.sub(r"\\[a-zA-Z]+\*?", " ", text)
    text = re.sub(r"[${}]", "", text)
    return len([w for w in text.split() if re.search(r"[A-Za-z0-9]", w)])


def _millions(n: float) -> str:
    if n >= 1e6:
        return f"{fmt(n / 1e6, 2)}M"
    return f"{fmt(n / 1e3, 2)}k"


def _decimals(lo: float, hi: float) -> int:
    """The decimals that resolve an interval: two significant digits of its half-width."""
    half = (hi - lo) / 2
    return 4 if not half > 0 else max(0, 1 - math.floor(math.log10(half)))


def _effect(r: dict, detail: bool) -> str:
    """The effect in a few words: 'a to b nats' (the means, to the decimals that resolve the
    difference), 'ratio r' (log scale); with detail, its 95% interval and Holm p."""
    if r["scale"] == "log":
        lo, hi = r["ratio_low"], r["ratio_high"]
        s = f"ratio ${_fixed(r['ratio'], lo, hi)}$"
        ci = f"95\\% CI ${_fixed(lo, lo, hi)}$ to ${_fixed(hi, lo, hi)}$"
    else:
        lo, hi = r["ci_low"], r["ci_high"]
        unit = f" {r['unit']}" if r.get("unit") else ""
        d = _decimals(lo, hi)
        s = f"${r['base_mean']:.{d}f}$ to ${r['other_mean']:.{d}f}${unit}"
        ci = (f"difference ${_fixed(r['diff'], lo, hi)}$, 95\\% CI ${_fixed(lo, lo, hi)}$ to "
              f"${_fixed(hi, lo, hi)}$")
    if detail:
        s += f"; {ci}, Holm ${p_value(r['p_holm'])}$"
    return s


def _inside_margin(r: dict) -> bool:
    """Whether the whole 95% interval lies inside the equivalence margin."""
    return -r["margin"] < r["ci_low"] and r["ci_high"] < r["margin"]


def direction(r: dict) -> str:
    """Which way an estimate points, in words: 'higher' or 'lower' (or 'unchanged')."""
    d = r["diff"]
    return "higher" if d > 0 else "lower" if d < 0 else "unchanged"


def clause(r: dict, where: str, detail: bool = False) -> str:
    """One endpoint of one study as its verdict allows, e.g. 'lower on the testbed (ratio
    0.50)', 'inconclusive at 3,000 steps (estimate higher: ratio 6.4, 95% CI 1.9 to 21)',
    'no gap to close on the testbed (softmax's 0.00027 nats)'."""
    v = r["verdict"]
    if r["n"] < 3 or r["p"] != r["p"]:
        return f"untestable {where} ($n = {r['n']}$)"
    if v in ("lower", "higher"):
        within = ", within the equivalence margin" if _inside_margin(r) else ""
        return f"{v}{within} {where} ({_effect(r, detail)})"
    if v == NOTHING_TO_FIX:
        unit = f" {r['unit']}" if r.get("unit") else ""
        return f"no gap to close {where} (softmax's own ${fmt(r['base_mean'], 2)}${unit})"
    if v == "equivalent":          # quoted with the test that decides it: TOST
        return f"equivalent {where}" + (f" ({_effect(r, False)}; TOST Holm "
                                        f"${p_value(r['p_tost_holm'])}$)" if detail else "")
    # inconclusive: the direction is always given, with the interval that leaves it open
    if r["scale"] == "log":
        lo, hi = r["ratio_low"], r["ratio_high"]
        est = f"ratio ${_fixed(r['ratio'], lo, hi)}$"
    else:
        lo, hi = r["ci_low"], r["ci_high"]
        est = f"difference ${_fixed(r['diff'], lo, hi)}$"
    ci = f"95\\% CI ${_fixed(lo, lo, hi)}$ to ${_fixed(hi, lo, hi)}$"
    return f"inconclusive {where} (estimate {direction(r)}: {est}, {ci})"


def _rows(studies, metric: str, variant: str = "softmax1"):
    out = []
    for s in studies:
        t = s.tests[(s.tests.metric == metric) & (s.tests.other == variant)]
        if len(t):
            out.append((s, t.iloc[0].to_dict()))
    return out


def _any(studies, metric, verdict, variant="softmax1") -> list:
    return [s for s, r in _rows(studies, metric, variant) if r["verdict"] == verdict]


def _sink_removed(studies, variant: str = "softmax1") -> list:
    """The studies where `variant` removed a sink: lower attention on the first position, by
    more than the margin over the whole interval (a drop that may be no larger than the margin,
    the abstention's own scale, is not a sink removed)."""
    return [s for s, r in _rows(studies, "first_position", variant)
            if r["verdict"] == "lower" and r["ci_high"] < -r["margin"]]


def _wheres(studies) -> str:
    return _and(list(dict.fromkeys(s.where for s in studies)))


def answer_sentence(studies, variant: str = "softmax1", note_none: bool = True,
                    lean: bool = True, counted: bool = False) -> str:
    """The title's question answered from the verdicts: what the variant did to the sink, to
    the magnitudes, to kurtosis and to the quantization gap, across the studies. `counted`
    (an abstract short of words) counts the studies where the largest activations matched
    softmax's instead of naming them."""
    name = VARIANT_LABELS[variant]
    out = []
    sink = _sink_removed(studies, variant)
    # 'weight off the first position', not 'the sink': a baseline's share can sit near uniform
    out.append(f"{name} moves weight off the first position beyond the margin {_wheres(sink)}"
               if sink else
               f"{name} does not measurably move weight off the first position")
    mag = {v: _any(studies, "max_inf_norm", v, variant) for v in ("lower", "higher", "equivalent")}
    if mag["lower"]:
        out.append(f"lowers the largest activations {_wheres(mag['lower'])}")
    elif mag["higher"]:
        out.append(f"raises the largest activations {_wheres(mag['higher'])}")
    elif mag["equivalent"]:
        eq = mag["equivalent"]
        out.append("leaves the largest activations within a factor 1.25 of softmax's "
                   + (f"in {len(eq)} of {len(studies)} studies" if counted and len(eq) > 2
                      else _wheres(eq)))
    else:
        out.append("leaves the largest activations' change undetermined")
    # kurtosis by the Holm-corrected verdicts: an interval alone is not a finding
    k_down = _any(studies, "max_kurtosis", "lower", variant)
    k_up = _any(studies, "max_kurtosis", "higher", variant)
    if k_down and k_up:
        out.append(f"lowers kurtosis {_wheres(k_down)} and raises it {_wheres(k_up)}")
    elif k_down:
        out.append(f"lowers kurtosis only {_wheres(k_down)}")
    elif k_up:
        out.append(f"raises kurtosis only {_wheres(k_up)}")
    gaps = [m for m in ("gap_W8A8", "gap_W16A6")]
    lower = [s for m in gaps for s in _any(studies, m, "lower", variant)]
    higher = [s for m in gaps for s in _any(studies, m, "higher", variant)]
    nothing = {s.key for m in gaps for s in _any(studies, m, NOTHING_TO_FIX, variant)}
    if lower:
        q = f"narrows a quantization gap only {_wheres(lower)}"
        if note_none and nothing and nothing | {s.key for s in lower} >= {s.key for s in studies}:
            q += (", the only study whose softmax baseline had one to close" if len({s.key for s in lower}) == 1
                  else ", the only studies whose softmax baseline had one to close")
    elif higher:
        q = f"widens a quantization gap {_wheres(higher)}"
    else:
        # no verdict either way: an open estimate that points lower is said, not dropped
        leaning = [(s, r) for m in gaps for s, r in _rows(studies, m, variant)
                   if r["verdict"] == "inconclusive" and r["diff"] < 0] if lean else []
        notes = []
        if leaning:
            s, r = leaning[0]
            d = _decimals(r["ci_low"], r["ci_high"])
            notes.append(f"{s.where} the {r['metric'].removeprefix('gap_')} estimate fell from "
                         f"${r['base_mean']:.{d}f}$ to ${r['other_mean']:.{d}f}$ nats"
                         + (", inconclusive after Holm" if note_none else ""))
        if nothing and note_none:
            notes.append(f"{_wheres([s for s in studies if s.key in nothing])} the baseline had "
                         "none to close")
        q = ("narrows no quantization gap" + (" significantly" if leaning else "")
             + (f" ({'; '.join(notes)})" if notes else ""))
    out.append(q)
    return _and(out)


def _study_groups(studies) -> list[str]:
    """The studies' scale in few words, studies of the same model and data merged: '0.80M
    parameters on Shakespeare for 600 steps (3 seeds)', '0.41M on Bigram-Backcopy for 300 and
    3,000 steps (10 and 5 seeds)'."""
    groups: dict = {}
    for s in studies:
        groups.setdefault((s.params, s.data), []).append(s)
    out = []
    for i, ((params, data), ss) in enumerate(groups.items()):
        steps = _and([fmt(s.steps) for s in ss])
        seeds = _and([fmt(s.seeds) for s in ss])
        plural = "s" if len(ss) > 1 or ss[0].seeds != 1 else ""
        out.append(f"{_millions(params)}{' parameters' if i == 0 else ''} on {data} "
                   f"({steps} steps; {seeds} seed{plural})")
    return out


def baseline_sentence(studies) -> str:
    """What the softmax baselines gave softmax1 to cure, from their own values: the W8A8 gap
    against the disease criterion's threshold, and the largest activation (geometric means)."""
    gaps = [r["base_mean"] for _, r in _rows(studies, "gap_W8A8")]
    # the largest activation of any run, any variant: 'stayed <= x' holds for every seed
    norms = _largest(studies)
    if not gaps or not norms:
        return ""
    def plain(x: float) -> str:                     # two significant digits, as written
        return fmt(int(round(x))) if x >= 10 else f"{x:.2g}"

    def span(xs) -> str:
        lo, hi = plain(min(xs)), plain(max(xs))
        return f"${lo}$" if lo == hi else f"${lo}$ to ${hi}$"
    had = ("had little for softmax1 to cure" if max(gaps) < GAP_THRESHOLD
           else "had quantization damage for softmax1 to cure")
    return (f"The softmax baselines {had}: W8A8 loss gaps of {span(gaps)} nats and largest "
            f"activations of {span(norms)}.")


def _largest(studies, variant: str | None = None) -> list[float]:
    """Each study's largest activation over its runs (of `variant` alone, when given), or its
    baseline's geometric mean where the runs are not there."""
    out = []
    for s, r in _rows(studies, "max_inf_norm"):
        f = s.fin if variant is None or "variant" not in s.fin else s.fin[s.fin.variant == variant]
        out.append(float(f.max_inf_norm.max()) if "max_inf_norm" in f and len(f) else
                   r.get("base_gmean", math.exp(r["base_mean"])))
    return out


def other_baselines(studies, short: bool = False) -> str:
    """The other studies' baselines in a clause: 'whose baselines had little to cure (W8A8
    gaps of at most 0.012 nats, largest activations of at most 26)'."""
    gaps = [r["base_mean"] for _, r in _rows(studies, "gap_W8A8")]
    # the largest activation of any run, any variant: 'stayed <= x' holds for every seed
    norms = _largest(studies)
    if not gaps or not norms:
        return "whose baselines we describe below"
    had = ("had W8A8 gaps below the disease criterion's" if max(gaps) < GAP_THRESHOLD
           else "had quantization damage")
    big = max(norms)
    if short:              # any variant's: 'where activations stayed <= x'
        return (f"where activations stayed $\\le "
                f"{fmt(int(round(big))) if big >= 10 else f'{big:.2g}'}$")
    base = max(_largest(studies, "softmax"))     # the baselines' own: softmax's runs alone
    return (f"whose baselines {had} (W8A8 gaps $\\le {max(gaps):.2g}$ nats, activations "
            f"$\\le {fmt(int(round(base))) if base >= 10 else f'{base:.2g}'}$)")


def cost_sentence(studies, throughput: float | None, variant: str = "softmax1") -> str:
    """The price in full-precision loss, by verdict, and the measured training throughput."""
    rows = [(s, r) for s, r in _rows(studies, "val_loss", variant) if r["verdict"] == "higher"]
    higher = [s for s, _ in rows]
    # a detected rise that the TOST also puts inside the margin is said to be that small
    small = bool(rows) and all(r.get("p_tost_holm", 1.0) < ALPHA for _, r in rows)
    name = VARIANT_LABELS[variant][:1].upper() + VARIANT_LABELS[variant][1:]
    price = (f"{name} raised full-precision loss {_wheres(higher)}"
             + (" (within the margin)" if small else "")
             if higher else f"{name} raised full-precision loss in no study")
    speed = (f" and trained at ${fmt(throughput, 2)}\\times$ softmax's throughput"
             if throughput is not None else "")
    return price + speed + "."


def caveat_sentence(studies) -> str:
    """How much the seeds could decide: the inconclusive share of softmax1's primary tests."""
    variant = "softmax1"
    rows = [r for s in studies for r in s.tests[s.tests.other == variant].to_dict("records")]
    open_ = sum(r["verdict"] == "inconclusive" for r in rows)
    seeds = sorted({s.seeds for s in studies})
    few = (f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]} to {seeds[-1]}")
    return (f"With {few} seeds, {open_} of softmax1's {len(rows)} primary tests stay "
            f"inconclusive (Figure~\\ref{{fig:forest}}).")


# the endpoints the lead study's sentence gives, softmax1's all, the other variants' first two
LEAD = (("bos_resid_ratio", "first-token residual peak"), ("max_inf_norm", "largest activation"),
        ("max_kurtosis", "maximum kurtosis"), ("gap_W16A6", "6-bit activation gap"))
VERBS = {"higher": "raised", "lower": "lowered", "equivalent": "kept within the margin",
         "inconclusive": "left undecided", NOTHING_TO_FIX: "had no gap to close in"}


def _estimate(r: dict) -> str:
    if r["scale"] == "log":
        return f"ratio ${_fixed(r['ratio'], r['ratio_low'], r['ratio_high'])}$"
    d = _decimals(r["ci_low"], r["ci_high"])
    unit = f" {r['unit']}" if r.get("unit") else ""
    return f"${r['base_mean']:.{d}f}$ to ${r['other_mean']:.{d}f}${unit}"


def verb_clauses(rows: list[tuple[str, dict]]) -> str:
    """Endpoints grouped by what the variant did to them, in the order they come: 'raised the
    BOS residual peak (ratio 2.0) and the largest activation (ratio 3.0), and left the maximum
    kurtosis undecided (estimate higher, ratio 1.3)'."""
    groups: dict[str, list[str]] = {}
    for label, r in rows:
        v = r["verdict"] if r["n"] >= 3 and r["p"] == r["p"] else None
        if v is None:
            continue
        if v == NOTHING_TO_FIX:
            groups.setdefault(v, []).append(f"the {label}")
        elif v == "inconclusive":                  # its direction, always
            groups.setdefault(v, []).append(f"the {label} (estimate {direction(r)})")
        else:
            groups.setdefault(v, []).append(f"the {label} ({_estimate(r)})")
    out = []
    for v, items in groups.items():
        if v in ("equivalent", "inconclusive"):
            head, _, tail = VERBS[v].partition(" ")
            out.append(f"{head} {_and(items)} {tail}" if len(items) == 1
                       else f"{head} {_and(items)} {tail}")
        else:
            out.append(f"{VERBS[v]} {_and(items)}")
    return _and(out) if out else ""


def lead_sentence(study: Study, variant: str = "softmax1", most: int | None = None) -> str:
    """What softmax1 did in the study where the disease grows: the decided endpoints grouped by
    their verdicts, then the open ones with the way their estimates point (the first `most` of
    them, in LEAD's order, when the abstract is short of words)."""
    t = study.tests[study.tests.other == variant]
    rows = [(label, t[t.metric == m].iloc[0].to_dict()) for m, label in LEAD
            if (t.metric == m).any()]
    rows = [(label, r) for label, r in rows if r["n"] >= 3 and r["p"] == r["p"]]
    if not rows:
        return ""
    decided = [(label, r) for label, r in rows if r["verdict"] != "inconclusive"]
    open_ = [(label, r) for label, r in rows if r["verdict"] == "inconclusive"][:most]
    name = VARIANT_LABELS[variant]
    out = []
    if decided:
        out.append(f"There, {name} {verb_clauses(decided)}.")
    if open_:
        ways = {direction(r) for _, r in open_}
        many = len(open_) > 1
        way = (f"{('both ' if len(open_) == 2 else 'all ') if many else ''}pointed "
               f"{next(iter(ways))}" if len(ways) == 1
               else "pointed both ways")
        items = _and([f"the {label} ({_estimate(r)})" for label, r in open_])
        noun = "estimates" if many else "estimate"
        if decided:
            out.append(f"Its {noun} for {items} {way} but stayed inconclusive after Holm's "
                       "correction.")
        else:
            out.append(f"There, {name}'s {noun} for {items} {way}, "
                       f"{'none' if many else 'not'} significant after Holm's correction.")
    return " ".join(out)


def lead_baseline(study: Study, brief: bool = False) -> str:
    """The lead study's softmax baseline against the criterion fixed before its runs; brief,
    the criterion's threshold in a parenthesis."""
    f = study.fin[study.fin.variant == "softmax"]
    inf = f.max_inf_norm
    peak, met = study.extra.get("peak"), study.extra.get("diseased")
    threshold = next(sg.threshold for sg in DISEASE_CRITERION if sg.metric == "bos_resid_ratio")
    span = (f"${fmt(int(round(inf.min())))}$" if round(inf.min()) == round(inf.max()) else
            f"${fmt(int(round(inf.min())))}$ to ${fmt(int(round(inf.max())))}$")
    crit = (f" times the median (criterion: ${threshold:g}$)" if brief else
            f" times the median position, {'past' if met else 'below'} the pre-declared "
            f"criterion's ${threshold:g}$")
    return (f"{study.where[0].upper() + study.where[1:]}, the softmax baseline grew "
            f"activations of {span} and a first-token residual peak of ${fmt(peak)}$"
            f"{crit}{_small_gap(f)}.")


def _small_gap(f: pd.DataFrame) -> str:
    """', though its W8A8 gap was 0.0018 nats' where the baseline's gap is below the disease
    criterion's threshold; '' otherwise."""
    gap = f.gap_W8A8.mean() if "gap_W8A8" in f else float("nan")
    return (f", though its W8A8 gap was ${gap:.2g}$ nats" if gap == gap and
            gap < GAP_THRESHOLD else "")


def abstract(studies, n_endpoints: int, throughput: float | None, cure: str = "") -> Tex:
    """At most ABSTRACT_MAX_WORDS words of prose, in the order question, method and scale, what
    the baselines had to cure, what softmax1 did (first where the disease grows, when a study
    grew it), the cure of a diseased model (when cited), its price, the caveat, and the answer
    to the title. The verdicts themselves live in the forest plot and the primary tables. When
    the words run over, the details go first, in this order: the lead study's lesser open
    estimates (two are kept), the open gap estimate that leans lower, the cure's numbers, then
    the lead baseline's wording is cut and one open estimate kept, then the studies where the
    largest activations matched softmax's are counted, not named."""
    text = Tex("")
    for most, lean, brief, counted in ((None, True, False, False), (2, True, False, False),
                                       (2, False, False, False), (2, False, True, False),
                                       (1, False, True, False), (1, False, True, True)):
        # brief: the cure's sentence without its closing parenthesis of numbers
        c = re.sub(r" \([^()]*\)\.$", ".", cure) if brief else cure
        text = _abstract(studies, n_endpoints, throughput, c, most, lean,
                         short_lead=most == 1, counted=counted)
        if word_count(text) <= ABSTRACT_MAX_WORDS:
            break
    return text


def _abstract(studies, n_endpoints: int, throughput: float | None, cure: str,
              most: int | None, lean: bool, short_lead: bool = False,
              counted: bool = False) -> Tex:
    lead = next((s for s in studies if s.key == "outliers"), None)
    q = ("Softmax1 adds a zero logit to attention so that a head can abstain; Miller claimed it "
         "removes the outliers that make transformers hard to quantize.")
    others = {v: [s for s in studies if v in set(s.tests.other)]
              for v in dict.fromkeys(v for s in studies for v in s.tests.other) if v != "softmax1"}
    also = "".join(f" (and a {VARIANT_LABELS[v]} {_wheres(ss)})" for v, ss in others.items())
    if lead is None:
        m = (f"We train nanoGPT-style decoders from scratch with softmax and softmax1{also}: "
             + ", ".join(_study_groups(studies))
             + f", testing {n_endpoints} pre-declared, Holm-corrected endpoints per study.")
    else:                              # the scale in brief: the studies' table has the rest
        sizes = sorted(s.params for s in studies)
        data = _and(list(dict.fromkeys(s.data for s in studies)))
        seeds = sorted({s.seeds for s in studies})
        m = (f"We train nanoGPT-style decoders of {_millions(sizes[0])} to "
             f"{_millions(sizes[-1])} parameters on {data} with softmax, softmax1"
             f"{' and a learned sink' if others else ''}, {seeds[0]} to {seeds[-1]} paired "
             "seeds and pre-declared endpoints.")
    rest = [s for s in studies if s is not lead]
    if lead is not None:
        q = ("Miller proposed softmax1, a zero logit that lets an attention head abstain, to "
             "remove the outliers that make transformers hard to quantize.")
        base = lead_baseline(lead, brief=short_lead) + " " + lead_sentence(lead, most=most)
        # counted (the last resort): without the activations' bound, which the studies table has
        where = "" if counted else f"{other_baselines(rest, short=True)}, "
        answer = (f"Elsewhere, {where}"
                  f"{answer_sentence(rest, note_none=False, lean=lean, counted=counted)}."
                  if rest else "")
    else:
        base = baseline_sentence(studies)
        answer = f"Across the studies, {answer_sentence(studies)}."
    # where a study grew the disease, what softmax1 did there is the answer (said above)
    title = title_answer(studies) if lead is None else ""
    caveat = caveat_sentence(studies)
    if counted:          # the last resort: Figure 1 sits right below the abstract
        caveat = caveat.replace(" (Figure~\\ref{fig:forest})", "")
    parts = [q, m, base, answer, cure, cost_sentence(studies, throughput), caveat, title]
    return Tex(" ".join(p for p in parts if p))


# the harms the brief answer names where softmax1 measurably made them worse (exploratory,
# paired, uncorrected): the loss where the heads must act, and the harshest quantization
HARMS = (("copy_loss", "the loss after a trigger", " nats"), ("gap_W4A4", "the W4A4 gap", " nats"))


def harms_sentence(studies, variant: str = "softmax1") -> str:
    """What softmax1 made worse, where a paired t-test (exploratory, uncorrected) puts the rise
    below ALPHA: the loss after a trigger (where the copy needs attention) and the W4A4 gap;
    and a primary kurtosis estimate whose interval lies wholly above 1. '' when none did."""
    parts = []
    for s in studies:
        f = s.fin
        for metric, words, unit in HARMS:
            if metric not in f or f[metric].isna().all() or not {"softmax", variant} <= set(f.variant):
                continue
            r = paired_difference(f, metric, variant)
            if r["n"] >= 3 and r["p"] < ALPHA and r["diff"] > 0:
                parts.append(f"{words} {s.where} rose from ${fmt(r['base_mean'])}$ to "
                             f"${fmt(r['other_mean'])}${unit} ($p = {fmt(r['p'], 2)}$)")
        for _, r in _rows([s], "max_kurtosis", variant):
            if r["verdict"] != "higher" and r["ci_low"] > 0:
                parts.append(f"the largest kurtosis {s.where} rose ${fmt(r['ratio'], 2)}$-fold "
                             f"(95\\% CI ${fmt(r['ratio_low'], 2)}$ to ${fmt(r['ratio_high'], 2)}$, "
                             "not significant after Holm)")
    if not parts:
        return ""
    return ("It also cost something (paired $t$-tests, exploratory and uncorrected unless "
            "said): " + _and(parts) + ".")


def brief_answer(studies) -> Tex:
    """Section 1's answer in two or three sentences: where a study grew the disease, what its
    baseline grew and what softmax1 did there, then the other studies; else the answer across
    the studies."""
    lead = next((s for s in studies if s.key == "outliers"), None)
    if lead is None:
        return Tex(f"In brief: at this scale, {answer_sentence(studies)}.")
    rest = [s for s in studies if s is not lead]
    first = lead_baseline(lead)
    out = [f"In brief: {first[:1].lower() + first[1:]}", lead_sentence(lead)]
    if rest:
        out.append(f"In the other studies, {other_baselines(rest)}, "
                   f"{answer_sentence(rest, note_none=False)}.")
        out.append(harms_sentence(rest))
    return Tex(" ".join(x for x in out if x))


def title_answer(studies, variant: str = "softmax1") -> str:
    """'Is attention off by one?' in one sentence: first where the disease grows (when a study
    grew it), then the sink and the magnitudes elsewhere, by verdict."""
    lead = next((s for s in studies if s.key == "outliers"), None)
    if lead is not None:
        t = lead.tests[lead.tests.other == variant]
        v = {m: t[t.metric == m].verdict.iloc[0] for m in ("bos_resid_ratio", "max_inf_norm")
             if (t.metric == m).any()}
        if "higher" in v.values():
            return ("Is attention off by one? Not where the outliers grow: there softmax1 made "
                    "them larger.")
        if "lower" in v.values():
            return ("Is attention off by one? Where the outliers grow, softmax1 made them "
                    "smaller.")
        rest = [s for s in studies if s is not lead]
        ways = {"higher" if r["diff"] > 0 else "lower"
                for r in t[t.metric.isin(["bos_resid_ratio", "max_inf_norm", "max_kurtosis"])]
                .to_dict("records")}
        grew = f"where the disease grew ({lead.where})"
        lead_words = (f"{grew}, softmax1 did not reduce its outliers (its estimates pointed "
                      "higher, none significant after Holm's correction)"
                      if ways == {"higher"} else
                      f"{grew}, softmax1's effect on its outliers stayed inconclusive")
        tail = title_answer(rest, variant).removeprefix("Is attention off by one? ") if rest else ""
        return (f"Is attention off by one? Not measurably here: {lead_words}."
                + (f" Elsewhere, {tail[0].lower() + tail[1:]}" if tail else ""))
    sink = _sink_removed(studies, variant)
    mag_lower = _any(studies, "max_inf_norm", "lower", variant)
    if sink and not mag_lower:
        return (f"Is attention off by one? Partly: at this scale softmax1 moves weight off the "
                f"first position beyond the margin {_wheres(sink)} but does not measurably shrink "
                "the largest activations.")
    if sink and mag_lower:
        return (f"Is attention off by one? At this scale softmax1 both moves weight off the first "
                f"position beyond the margin {_wheres(sink)} and shrinks the largest activations.")
    if mag_lower:
        return ("Is attention off by one? At this scale softmax1 shrinks the largest activations "
                "without measurably moving weight off the first position.")
    return ("Is attention off by one? At this scale softmax1 neither measurably moves weight off "
            "the first position nor shrinks the largest activations.")


# --- the forest plot --------------------------------------------------------------------------
def standardised(r: dict) -> tuple[float, float, float]:
    """The effect and its 95% interval in units of the endpoint's equivalence margin (log
    ratio over log margin on the log scale): -1..1 is the equivalence band on every row."""
    k = r["margin"]
    return r["diff"] / k, r["ci_low"] / k, r["ci_high"] / k


VERDICT_STYLE = {"lower": ("o", True), "higher": ("o", True), "equivalent": ("s", True),
                 NOTHING_TO_FIX: ("D", False), "inconclusive": ("o", False)}


FOREST_LABELS = {"first_position": "attention on position 0", "max_kurtosis": "max. kurtosis",
                 "max_inf_norm": "max. inf-norm", "bos_resid_ratio": "BOS residual peak",
                 "outlier_share_pos0": "outliers at BOS",
                 "gap_W8A8": "W8A8 gap", "gap_W16A6": "W16A6 gap",
                 "val_loss": "full-precision loss"}


# the forest plot's vertical layout, in row units (FOREST_INCH inches each): a study's heading,
# an endpoint's row, the offset between the variants on one row, the gap after a study
HEAD, ROW, OFFSET, TAIL = 0.55, 0.55, 0.12, 0.05
FOREST_INCH = 0.21          # 0.55 rows = 0.116 in: 8-point labels one above the other never touch


def _rows_of(studies) -> float:
    return sum(HEAD + TAIL + sum(ROW + OFFSET * (s.tests[s.tests.metric == m].other.nunique() - 1)
                                 for m in dict.fromkeys(s.tests.metric)) for s in studies)


def _forest_axis(ax, studies, colors: dict, extent: list) -> float:
    """Draw the studies' rows on one axis, top down; return the lowest y used."""
    y, yticks, ylabels, heads = 0.0, [], [], []
    for s in studies:
        heads.append((y, s.label))
        y -= HEAD
        for metric in dict.fromkeys(s.tests.metric):
            sub = s.tests[s.tests.metric == metric]
            for j, (_, r) in enumerate(sub.iterrows()):
                r = r.to_dict()
                eff, lo, hi = standardised(r)
                marker, filled = VERDICT_STYLE[r["verdict"]]
                c = colors.setdefault(r["other"], F.COLORS[r["other"]])
                yy = y - OFFSET * j
                if lo == lo:
                    ax.plot([lo, hi], [yy, yy], color=c, lw=1.0)
                    extent += [abs(lo), abs(hi)]
                ax.plot([eff], [yy], marker=marker, ms=4, color=c, mfc=c if filled else "white",
                        mew=1.0, ls="none")
            yticks.append(y - OFFSET * (len(sub) - 1) / 2)
            ylabels.append(FOREST_LABELS.get(metric, metric))
            y -= OFFSET * (len(sub) - 1) + ROW
        y -= TAIL
    ax.set_yticks(yticks, ylabels)
    ax._forest_heads = heads
    return y


def forest_columns(studies) -> list[list]:
    """The studies in two columns of about equal height, in their order (one column if one
    study)."""
    if len(studies) < 2:
        return [studies]
    best = min(range(1, len(studies)),
               key=lambda k: max(_rows_of(studies[:k]), _rows_of(studies[k:])))
    return [studies[:best], studies[best:]]


def forest_figure(studies, path_saver, height: float | None = None) -> None:
    """Every study's primary endpoints, each variant against softmax, as effect / margin with
    its 95% interval; the band is the equivalence margin. Filled: a verdict (lower, higher,
    equivalent); open: inconclusive, or no gap to close (diamond). The studies fill two columns
    of about equal height, in the order the paper reads them; the height follows the rows."""
    columns = forest_columns(studies)
    fig, axes = F.plt.subplots(1, len(columns), figsize=(6.5, 3.0), squeeze=False)
    axes = list(axes[0])
    colors, extent, lows = {}, [2.0], []
    for ax, col in zip(axes, columns):
        lows.append(_forest_axis(ax, col, colors, extent))
    low = min(lows)
    fig.set_size_inches(6.5, height or max(2.0, FOREST_INCH * -low + 0.75))
    lim = next(t for t in (3, 10, 30, 100, 300, 1000, float("inf")) if t >= 1.1 * max(extent))
    lim = lim if lim != float("inf") else 1.1 * max(extent)
    ticks = [t for t in (-1000, -100, -10, -1, 0, 1, 10, 100, 1000) if abs(t) <= lim]
    for ax in axes:
        ax.axvspan(-1, 1, color="0.88", zorder=0, lw=0)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xscale("symlog", linthresh=1, linscale=1.0)
        ax.set_xlim(-lim, lim)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(F.matplotlib.ticker.NullLocator())
        for yy, label in ax._forest_heads:
            # on a white ground above the zero line and the margin's band, which would cross it
            ax.text(-lim, yy - 0.1, label, fontsize=8, fontweight="bold", va="center", zorder=5,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.8})
        ax.set_ylim(low + 0.3, 0.25)
        ax.tick_params(labelsize=8)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
    fig.supxlabel("effect against softmax, in units of the equivalence margin", fontsize=8)
    Line2D = F.matplotlib.lines.Line2D
    handles = [Line2D([], [], color=c, marker="o", lw=1.0, ms=4, label=VARIANT_LABELS[v])
               for v, c in colors.items()]
    handles += [Line2D([], [], color="0.3", marker="o", ms=4, ls="none", label="lower/higher"),
                Line2D([], [], color="0.3", marker="s", ms=4, ls="none", label="equivalent"),
                Line2D([], [], color="0.3", marker="o", mfc="white", ms=4, ls="none",
                       label="inconclusive"),
                Line2D([], [], color="0.3", marker="D", mfc="white", ms=4, ls="none",
                       label=NOTHING_TO_FIX)]
    fig.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.0),
               ncol=len(handles), frameon=False, handletextpad=0.2, columnspacing=0.8,
               handlelength=1.5)
    fig.tight_layout(pad=0.2, rect=(0, 0, 1, 1 - 0.32 / fig.get_size_inches()[1]))
    path_saver(fig)


def limitations(studies, published: pd.DataFrame) -> Tex:
    """The limits of what these studies can say, from their own numbers."""
    biggest = max(s.params for s in studies)
    theirs = published.params_m.astype(float) * 1e6
    lo, hi = theirs.min() / biggest, theirs.max() / biggest
    floors = sorted({(s.seeds, permutation_floor(s.seeds)) for s in studies})
    floor_text = _and([f"${fmt(p, 2)}$ with {n} seeds" for n, p in floors])
    few = [n for n, p in floors if p >= ALPHA]
    gap = next(ep for ep in PRIMARY if ep.metric == "gap_W8A8")
    out = [f"The largest model here has {_millions(biggest)} parameters, "
           f"{fmt(round(lo))} to {fmt(round(hi))} times fewer than the models in which the "
           "outliers were reported, and sees far fewer tokens; where the softmax baseline has "
           "little to fix, softmax1 cannot show a cure."
           ,
           f"Few seeds bound what the tests can show: the smallest $p$ the exact sign-flip test "
           f"can give is {floor_text}"
           + (f", so with {_and([str(n) for n in few])} seeds only the $t$-test can reach "
              "significance" if few else "")
           + "; an endpoint that is neither different nor equivalent is inconclusive, not "
             "evidence of no effect.",
           f"The equivalence margins (\\cref{{sec:method}}) are our own choice of the smallest "
           f"change that would matter (${gap.margin:g}$ nats, {fmt(100 * (math.exp(gap.margin) - 1), 2)}\\% "
           f"perplexity, for a loss or a gap; a factor ${fmt(RATIO_MARGIN)}$ for a magnitude), "
           "fixed with the endpoints, not derived from a power analysis.",
           "The endpoints were declared after exploratory runs under an earlier, narrower "
           "quantization setup and before any run under the present one.",
           "A head that abstains can leave mostly-zero outputs, whose kurtosis is high without "
           "any large value; kurtosis is therefore read beside the inf-norm and over the active "
           "positions alone where that was measured.",
           "Quantization is simulated, per tensor, with no retraining."]
    return Tex(" ".join(out))


def confound_sentence(studies) -> str:
    """Whether abstention inflated kurtosis, from the study where softmax1 abstains most (among
    those measured with the kurtosis over active positions): its share of attention on the
    implicit zero, its maximum kurtosis against the same kurtosis over the positions whose
    output is not near zero, and where the largest kurtosis sits. The claim is chosen by the
    numbers: equal (within 1%) means abstention did not move kurtosis here."""
    best = None
    for s in studies:
        f = s.fin[s.fin.variant == "softmax1"]
        if "abstention" not in f or "max_active_kurtosis" not in f:
            continue
        ab = f.abstention.mean()
        if ab == ab and (best is None or ab > best[1]):
            best = (s, ab)
    if best is None:
        return ""
    s, ab = best
    f = s.fin[s.fin.variant == "softmax1"]
    plain, active = f.max_kurtosis.mean(), f.max_active_kurtosis.mean()
    module = f.max_kurtosis_module.mode()
    where = _module_words(module.iloc[0]) if len(module) else "one module"
    k = int((f.max_kurtosis_module == module.iloc[0]).sum()) if len(module) else 0
    if 0 < k < len(f):          # not every seed's: said with the count
        where += f" in {k} of {len(f)} seeds"
    head = (f"{s.where[0].upper() + s.where[1:]} softmax1 left ${fmt(100 * ab, 2)}\\%$ of its "
            f"attention on the implicit zero, and its largest kurtosis sat in {where}")
    over = (f"over the active positions alone (output norm at least "
            f"{100 * ACTIVE_FRACTION:g}\\% of the typical one) its maximum kurtosis is "
            f"${fmt(active)}$ against ${fmt(plain)}$ over all positions (means over seeds)")
    if abs(active / plain - 1) <= 0.01:
        return (f"{head}. Abstention did not inflate that kurtosis: {over}, so the positions "
                "left near zero, if any, did not move it.")
    return (f"{head}. Abstention {'inflated' if plain > active else 'lowered'} that kurtosis: "
            f"{over}, so kurtosis is read here beside the inf-norm.")


MODULE_WORDS = {"attn_proj": "the attention output projection", "resid": "the residual stream",
                "ln_1": "the first LayerNorm", "ln_2": "the second LayerNorm",
                "mlp_out": "the MLP output", "mlp_proj": "the MLP output", "ln_f": "the final LayerNorm",
                "attn_out": "the attention output", "mlp_hidden": "the MLP hidden layer",
                "embed": "the embedding"}


def _module_words(name: str) -> str:
    """'blocks.1.attn_proj' as 'the attention output projection of layer 1'."""
    m = re.fullmatch(r"blocks\.(\d+)\.(\w+)", str(name))
    if m:
        return f"{MODULE_WORDS.get(m.group(2), m.group(2).replace('_', ' '))} of layer {m.group(1)}"
    return MODULE_WORDS.get(str(name), str(name).replace("_", " "))


# --- the section: studies from the report, then every macro above ---------------------------
def _params(profile: str, vocab: int | None) -> tuple[int, dict]:
    """A profile's model size (parameters, nanoGPT's count without position embeddings) and
    its run configuration."""
    prof = load_profile(profile)
    cfg = run_config(profile, prof["variants"][0], prof["seeds"][0])
    return model_params(cfg, vocab), cfg.to_dict()


def _study(key, label, where, tests, fin, profile, vocab, data, table) -> Study:
    n, cfg = _params(profile, vocab)
    return Study(key=key, label=label, where=where, tests=tests, fin=fin,
                 seeds=int(fin.seed.nunique()), params=n,
                 tokens=int(cfg["max_steps"]) * int(cfg["batch_size"]) * int(cfg["block_size"]),
                 steps=int(cfg["max_steps"]), data=data, table=table,
                 extra={"n_layer": cfg["n_layer"], "n_embd": cfg["n_embd"],
                        "n_head": cfg["n_head"], "block_size": cfg["block_size"],
                        "batch_size": cfg["batch_size"]})


def studies_of(R) -> list[Study]:
    """Every study the paper reports, in the order the paper reads them."""
    synthetic = (R.corpus.get("source") or {}).get("kind") == "synthetic"
    steps = int(R.cfg["max_steps"])
    main_data = ("synthetic Bigram-Backcopy" if synthetic else
                 f"{R.corpus_words}")
    out = []
    od = getattr(R, "outlier_data", None)
    if od:                     # the study where the disease grows answers first
        s = _study("outliers", od["label"], od["where"], od["tests"], od["fin"], od["profile"],
                   None, "synthetic Bigram-Backcopy", "tab:outlier-primary")
        s.extra.update(diseased=od["diseased"], peak=od["peak"])
        out.append(s)
    td = getattr(R, "text_study_data", None)
    if td:                     # softmax1 on text at the text sweep's dose
        s = _study("textlr", td["label"], td["where"], td["tests"], td["fin"], td["profile"],
                   td["vocab"], "Shakespeare characters", "tab:text-study-primary")
        s.extra.update(diseased=td["diseased"])
        out.append(s)
    out += [_study("main", R.study_label, f"at {fmt(steps)} steps" if synthetic else "on text",
                  R.primary_tests[R.study_label], R.fin, R.profile,
                  int(R.corpus["vocab_size"]), main_data, "tab:primary")]
    if R.testbed_fin is not None and "testbed" in R.primary_tests:
        out.append(_study("testbed", "testbed", "on the testbed", R.primary_tests["testbed"],
                          R.testbed_fin, R.prof["testbed"], None, "synthetic Bigram-Backcopy",
                          "tab:primary"))
    if getattr(R, "long_name", None):
        fin = R.cited_fin[R.long_name]
        steps = int(fin.max_steps.iloc[0])
        label = next(k for k in R.primary_tests if k.startswith("testbed,"))
        out.append(_study("long", label, f"at {fmt(steps)} steps", R.primary_tests[label], fin,
                          R.long_name, None, "synthetic Bigram-Backcopy", "tab:long"))
    return out


def throughput_ratio(R, variant: str = "softmax1") -> float | None:
    """The variant's training tokens per second over softmax's, from the profile's bench."""
    path = R.resdir / "bench" / "training.csv"
    if not path.exists():
        return None
    b = pd.read_csv(path)
    if not {"softmax", variant} <= set(b.variant):
        return None
    return float(b[b.variant == variant].tokens_per_s.mean()
                 / b[b.variant == "softmax"].tokens_per_s.mean())


def studies_table(studies) -> list[dict]:
    return [{"study": s.label, "data": s.data,
             "model": Tex(f"{s.extra['n_layer']}$\\times${s.extra['n_embd']}, "
                          f"{s.extra['n_head']}h, $T$ {s.extra['block_size']}"),
             "params": _millions(s.params), "steps": fmt(s.steps),
             "tokens/run": _millions(s.tokens), "seeds": fmt(s.seeds),
             "variants": ", ".join(VARIANT_LABELS[v] for v in VARIANT_LABELS
                                   if v in set(s.fin.variant))}
            for s in studies]


def mde_rows(studies, variant: str = "softmax1") -> list[dict]:
    """Per study and primary endpoint of `variant` against softmax: the paired seeds, the sd of
    the paired differences and the smallest effect the paired t-test detects with POWER at
    ALPHA (two-sided, before Holm's correction), in the endpoint's units (a factor on the log
    scale), beside the equivalence margin."""
    from .latex import GROUP, num
    rows = []
    for s in studies:
        t = s.tests[(s.tests.other == variant) & (s.tests.n >= 3)]   # fewer seeds: no test
        if not len(t):
            continue
        rows.append({GROUP: Tex(f"{s.label}: {VARIANT_LABELS[variant]} against softmax")})
        for r in t.to_dict("records"):
            dz = minimum_detectable(int(r["n"]))
            sd = r["sd"]
            log = r["scale"] == "log"
            unit = f" {r['unit']}" if r.get("unit") else ""
            if sd == sd and dz == dz:
                mde = (Tex(f"$\\times{fmt(math.exp(dz * sd), 2)}$") if log
                       else Tex(f"$\\pm{fmt(dz * sd, 2)}${unit}"))
            else:
                mde = "--"
            margin = (Tex(f"$\\times{fmt(math.exp(r['margin']), 3)}$") if log
                      else Tex(f"$\\pm{r['margin']:g}${unit}"))
            rows.append({"endpoint": FOREST_LABELS.get(r["metric"], r["label"]),
                         "seeds": str(int(r["n"])), Tex("$d_z$"): num(dz, 3),
                         "sd of differences": num(sd) if sd == sd else "--",
                         "detectable": mde, "margin": margin})
    return rows


def mde_sentence(studies) -> str:
    """The standardised effects the seed counts can detect, in words."""
    ns = sorted({int(r["n"]) for s in studies for r in s.tests.to_dict("records") if r["n"] > 2})
    if not ns:
        return ""
    parts = [f"${fmt(minimum_detectable(n), 3)}$ ({n} seeds)" for n in ns]
    return (f"With {100 * POWER:g}\\% power at $\\alpha = {ALPHA:g}$, before Holm's "
            f"correction, the paired $t$-test detects only effects of at least {_and(parts)} "
            "standard deviations of the paired differences ($d_z$; \\cref{tab:mde} gives them "
            "in each endpoint's units).")


def synthesis(R) -> pd.Series:
    """The abstract, the forest plot, the per-question paragraphs and the limitations."""
    from .results import published_table
    studies = studies_of(R)
    n_ep = len(R.endpoints)
    ratio = throughput_ratio(R)
    cd = getattr(R, "cure_data", None)       # the cure of the diseased models, when cited
    text = abstract(studies, n_ep, ratio, cd["abstract"] if cd else "")
    M = R.sections["synthesis"] = {
        "Abstract": text, "AbstractWords": fmt(word_count(text)),
        "Answer": Tex(answer_sentence(studies)),
        "Brief": brief_answer(studies),
        "TitleAnswer": Tex(title_answer(studies)),
        "Limitations": limitations(studies, published_table()),
        "Confound": Tex(confound_sentence(studies)),
        "MdeSentence": Tex(mde_sentence(studies)),
        "NStudies": fmt(len(studies))}
    if word_count(text) > ABSTRACT_MAX_WORDS:
        print(f"warning: the abstract has {word_count(text)} words (at most "
              f"{ABSTRACT_MAX_WORDS})")
    variants = tuple(dict.fromkeys(v for s in studies for v in s.tests.other))
    for key, _, _ in QUESTIONS:
        M[macro_name("Answer", key)] = Tex(answers.paragraph(studies, key, variants))
    M["CostThroughput"] = Tex(
        f"Training the main study's model, softmax1 ran at ${fmt(ratio, 3)}$ times softmax's "
        "tokens per second (\\cref{sec:cost})." if ratio is not None else "")
    rag = ">{\\raggedright\\arraybackslash}"
    R.table(studies_table(studies), "studies.tex",
            f"{rag}p{{2.1cm}}{rag}p{{2.6cm}}lrrrr{rag}p{{2.4cm}}")
    mde = mde_rows(studies)
    M["HasMde"] = "1" if mde else "0"
    if mde:
        R.table(mde, "mde.tex", "lrrrrr")
    forest_figure(studies, lambda fig: R.figure(fig, "forest"))
    return pd.Series(M)
