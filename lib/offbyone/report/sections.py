"""The report, section by section: what `notebooks/04_report.ipynb` runs, one method a cell.

`Report(profile)` loads a profile's results once: from the measured runs under runs/ when they
are there (and then writes the tidy results/<profile>/ files: CSVs, corpus.json, timings.csv,
provenance.json), or else from those committed results/<profile>/ files alone, so the paper
builds without any training. Each section method writes its LaTeX tables and figures (under
paper/generated/), records its macros, and returns a small table to display; `write_macros()`
writes every macro the paper prints.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from ..corpora.testbed import BigramBackcopy
from ..io import write_csv, write_json, write_text
from ..measure import MeasureConfig
from ..metrics import uniform_first_position_mass
from ..pipeline import load_profile, repo_root, run_config
from ..provenance import git_sha, provenance, staleness_of
from . import figures as F
from .latex import Tex, fmt, latex_escape, latex_table, macro_name, mean_sd, num, pct, write_macros
from .peak import peak_section
from .prose import corpus_description, disease_signs, effect_sentence, primary_sentence, verdict_summary
from .results import (collect, corpus_info, final, measured_files, missing_runs, per_layer,
                      published_table, read_csv, windowed)
from .stats import (ALPHA, METRICS, PRIMARY, VARIANT_LABELS, paired_difference,
                    paired_differences, primary_endpoints, primary_tests)

FIGURE_STEM = "04_report"           # figures are named after the notebook that draws them

# table columns: results column -> header
MAIN_COLUMNS = {"val_loss": Tex("val.\\ loss"), "avg_kurtosis": Tex("avg.\\ kurt."),
                "max_kurtosis": "max kurt.", "max_inf_norm": Tex("max $\\|x\\|_\\infty$"),
                "first_position": Tex("attn.\\ pos.\\ 0"), "sink_rate": "sink rate",
                "abstention": "abstain", "gap_W8A8": "W8A8 gap", "gap_W16A6": "W16A6 gap"}
# the extended module set (every measured module: embedding, attention output before its
# projection and MLP hidden besides the anchor's), for the appendix
EXTENDED_COLUMNS = {"ext_avg_kurtosis": Tex("avg.\\ kurt."), "ext_max_kurtosis": "max kurt.",
                    "ext_max_inf_norm": Tex("max $\\|x\\|_\\infty$"),
                    "kurtosis_embed": "kurt. embed", "kurtosis_attn_out": "kurt. attn out",
                    "kurtosis_mlp_hidden": "kurt. MLP hidden"}
ABLATION_COLUMNS = {k: v for k, v in MAIN_COLUMNS.items()
                    if k not in ("abstention", "gap_W4A8")}
TESTBED_COLUMNS = {"copy_loss": "copy loss", "bigram_loss": "bigram loss",
                   "bos_other": "BOS, other q.", "bos_trigger": "BOS, trigger q.",
                   "bos_other_max_head": "BOS max head", "avg_kurtosis": Tex("avg.\\ kurt."),
                   "max_kurtosis": "max kurt.", "max_inf_norm": Tex("max $\\|x\\|_\\infty$"),
                   "sink_rate": "sink rate", "abstention": "abstain", "gap_W8A8": "W8A8 gap",
                   "gap_W4A4": "W4A4 gap"}
TESTBED_FOCUS = ["bos_other", "bos_trigger", "avg_kurtosis", "max_kurtosis", "max_inf_norm",
                 "gap_W8A8", "copy_loss"]
# per-variant means the paper cites by macro
MAIN_MACRO_COLUMNS = ["val_loss", "test_loss", "avg_kurtosis", "max_kurtosis", "max_inf_norm",
                      "sink_rate", "first_position", "abstention", "gap_W8A8", "gap_W4A8",
                      "gap_W4A4", "gap_W16A6", "gap_legacy_W8A8", "resid_avg_kurtosis"]
TESTBED_MACRO_COLUMNS = ["val_loss", "copy_loss", "bigram_loss", "bos_other", "bos_trigger",
                         "bos_other_max_head", "avg_kurtosis", "max_kurtosis", "max_inf_norm",
                         "sink_rate", "abstention", "gap_W8A8", "gap_W4A4", "gap_W16A6",
                         "gap_legacy_W8A8", "first_position"]
TOKENIZER_NAMES = {"char": "character", "bpe": "BPE"}
MODEL_TOKENIZER = {"char": "char", "bpe": "BPE", "synthetic": "synthetic"}


def by_variant(fin: pd.DataFrame, columns: dict, variants, digits: int = 3) -> list[dict]:
    """One row per variant: mean +- sd over seeds of each column."""
    return [{"variant": VARIANT_LABELS[v],
             **{head: mean_sd(fin[fin.variant == v][c], digits) for c, head in columns.items()}}
            for v in variants]


def differences_table(diffs: pd.DataFrame) -> list[dict]:
    """The paired differences as the paper's table rows."""
    def ci(r):
        return Tex(f"${fmt(r['ci_low'])}$ to ${fmt(r['ci_high'])}$") if r["n"] > 1 else "n/a"
    return [{"variant": VARIANT_LABELS[r["other"]], "metric": METRICS[r["metric"]],
             "softmax": num(r["base_mean"]), "variant mean": num(r["other_mean"]),
             "difference": num(r["diff"]), Tex("95\\% CI"): ci(r), Tex("$p$"): num(r["p"], 2)}
            for _, r in diffs.iterrows()]


class Report:
    """One profile's results and the paper's generated inputs made from them."""

    def __init__(self, profile: str, runs_root: str = "runs", out_dir: str = "paper/generated",
                 results_dir: str = "results"):
        root = repo_root()
        self.profile, self.runs_root, self.root = profile, runs_root, root
        self.prof = load_profile(profile)
        self.gen = root / out_dir
        self.figdir, self.tabdir = self.gen / "figures", self.gen / "tables"
        self.resdir = root / results_dir / profile
        for d in (self.figdir, self.tabdir, self.resdir):
            d.mkdir(parents=True, exist_ok=True)
        self.variants = self.prof["variants"]
        self.others = [v for v in self.variants if v != "softmax"]
        companions = [self.prof.get("testbed")] + list(self.prof.get("ablations") or [])
        self.from_runs = all(_measured(p, runs_root) for p in [profile] + companions if p)
        # a study unpacked from a node may have been cut short: name its missing runs
        self.missing = ([m for p in [profile] + companions if p for m in missing_runs(p, runs_root)]
                        if self.from_runs else [])
        if self.missing:
            print(f"warning: {len(self.missing)} runs are missing: {', '.join(self.missing)}")
        self.df = self._frame("runs", lambda: collect(profile, runs_root))   # every checkpoint
        self.layers = self._frame("layers", lambda: per_layer(profile, runs_root))   # final ckpts
        self.fin = final(self.df)
        self.corpus = self._json("corpus", lambda: corpus_info(profile, runs_root))
        self.provenance = self._json("provenance", self._provenance)
        if not self.from_runs:
            self.missing = self.provenance.get("missing_runs", [])
        self.cfg = run_config(profile, self.variants[0], self.prof["seeds"][0]).to_dict()
        self.diffs = paired_differences(self.fin, self.others)
        self.sections: dict[str, dict] = {}                  # each section's macros
        self.testbed_fin, self._tb, self._cited = None, None, {}
        F.style()

    # loading: from runs/ (then saved under results/<profile>/), or from results/<profile>/ ----
    def _frame(self, name: str, compute) -> pd.DataFrame:
        """results/<profile>/<name>.csv: computed from the runs and written, or read back."""
        return self._saved(f"{name}.csv", compute, write_csv, read_csv)

    def _json(self, name: str, compute) -> dict:
        return self._saved(f"{name}.json", compute, write_json, lambda p: json.loads(p.read_text()))

    def _derived(self, name: str, write, obj) -> None:
        """A file derived from the results (statistics, macros): written beside them when they
        come from the runs; a reader's build leaves the committed results/ untouched."""
        if self.from_runs:
            write(self.resdir / name, obj)

    def _saved(self, name: str, compute, write, read):
        path = self.resdir / name
        if self.from_runs:
            obj = compute()
            write(path, obj)
            return obj
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing and {self.runs_root}/{self.profile} holds no measured runs: "
                f"run `make reproduce PROFILE={self.profile}` first")
        return read(path)

    def _provenance(self) -> dict:
        """Where these numbers came from: the commit, the machine, torch, and the wall time of
        each pipeline stage (timings.csv) and the machine's training speed (bench)."""
        stages = self._frame("timings", self._timings)
        stages_s = stages.groupby("stage", sort=False).seconds.sum().to_dict()
        bench, speed = self.resdir / "bench", None
        if (bench / "bench.json").exists():            # the pipeline benchmarks before the report
            stages_s["bench"] = json.loads((bench / "bench.json").read_text())["wall_s"]
            b = read_csv(bench / "training.csv")
            if "softmax" in set(b.variant):
                speed = float(b[b.variant == "softmax"].tokens_per_s.mean())
        fin = self.fin
        return {"profile": self.profile, "commit": git_sha(),
                "measured_by": sorted(set(self.df.git_sha)), "torch": fin.torch.iloc[0],
                # the machine only: the commit and torch are given once, above
                "machine": {k: v for k, v in provenance(fin.device.iloc[0]).items()
                            if k not in ("git_sha", "torch")} | {"device_name": fin.device_name.iloc[0]},
                "stages_s": stages_s, "pipeline_wall_s": float(sum(stages_s.values())),
                "pipeline_elapsed_s": _elapsed(stages),
                "train_wall_s": float(fin.train_wall_s.sum()), "missing_runs": self.missing,
                "bench_softmax_tokens_per_s": speed}

    def _staleness(self) -> str:
        """Whether the commits that produced these numbers had this checkout's lib/ and
        configs/ ('' if so; else a sentence saying how they differ)."""
        return staleness_of(self.provenance)

    # helpers --------------------------------------------------------------------------------
    def _figure(self, fig, name: str) -> None:
        F.save(fig, self.figdir / f"{FIGURE_STEM}-{name}.pdf")

    def _table(self, rows: list[dict], name: str, column_format: str | None = None) -> pd.DataFrame:
        latex_table(rows, self.tabdir / name, column_format)
        return pd.DataFrame(rows)

    # sections -------------------------------------------------------------------------------
    def runs(self) -> pd.DataFrame:
        """All runs, one row per measured checkpoint (runs.csv, layers.csv)."""
        where = "the runs under " + self.runs_root if self.from_runs else f"results/{self.profile}"
        print(f"{len(self.df)} checkpoints of {self.df.groupby(['variant', 'seed']).ngroups} runs, "
              f"read from {where}; commit {self.provenance['commit'][:10]}")
        note = self._staleness()
        if note:
            print("warning:", note)
        return self.fin[["variant", "seed", "val_loss", "avg_kurtosis", "max_inf_norm",
                         "sink_rate", "gap_W8A8"]]

    def differences(self) -> pd.DataFrame:
        """Paired differences against softmax (same seed, same data order)."""
        self._derived("differences.csv", write_csv, self.diffs)
        return self.diffs[["other", "metric", "base_mean", "other_mean", "diff", "ci_low",
                           "ci_high", "p", "n"]]

    def tables(self) -> pd.DataFrame:
        """The main table, the quantization sweep, the differences and the published numbers."""
        fin, variants = self.fin, self.variants
        main = self._table(by_variant(fin, MAIN_COLUMNS, variants), "main.tex")
        sweep = {c: c[4:].replace("legacy_", "earlier ") for c in fin.columns if c.startswith("gap_")}
        self._table(by_variant(fin, sweep, variants, 2), "quant.tex")
        self._table(by_variant(fin, EXTENDED_COLUMNS, variants), "extended.tex")
        self._table(differences_table(self.diffs), "differences.tex", "llrrrrr")
        self._table(self._published(), "published.tex", "lllrrrr")
        return main

    def _published(self) -> list[dict]:
        """Our variants' means beside the published numbers (paper/published.csv)."""
        cfg, fin = self.cfg, self.fin
        tok = MODEL_TOKENIZER.get(self.corpus["tokenizer"], "")
        inf, kurt = Tex("max $\\|x\\|_\\infty$"), Tex("avg.\\ kurt.")
        sink, cost = Tex("sink rate (\\%)"), "W8A8 gap (nats)"
        ours = [{"source": "this work", "model": f"{cfg['n_layer']}L-{cfg['n_embd']} {tok} GPT",
                 "method": VARIANT_LABELS[v], inf: num(fin[fin.variant == v].max_inf_norm.mean()),
                 kurt: num(fin[fin.variant == v].avg_kurtosis.mean()),
                 sink: num(100 * fin[fin.variant == v].sink_rate.mean()),
                 cost: num(fin[fin.variant == v].gap_W8A8.mean())}
                for v in self.variants]
        theirs = [{"source": Tex(f"\\citet{{{r.cite}}}"), "model": r.model, "method": r.method,
                   inf: num(r.max_inf_norm), kurt: num(r.avg_kurtosis),
                   sink: num(r.sink_rate_pct) if not pd.isna(r.sink_rate_pct) else "--",
                   # their perplexities as our unit: ln(W8A8 ppl / FP16 ppl) nats
                   cost: (num(math.log(r.w8a8_ppl / r.fp_ppl)) if not pd.isna(r.w8a8_ppl) else "--")}
                  for r in published_table().itertuples()]
        return ours + theirs

    def figures(self) -> None:
        """Activations per layer, outliers over training, attention per head, bit widths."""
        V, layers = self.variants, self.layers
        fig, axes = F.panels(2)
        for ax, kind, title in zip(axes, ["resid", "attn_proj"], ["residual stream", "attention output"]):
            F.seed_lines(ax, layers[layers.kind == kind], "layer", "inf_norm", V)
            ax.set(xlabel="layer", ylabel="inf-norm (mean over seqs)", title=title)
            ax.xaxis.set_major_locator(F.matplotlib.ticker.MaxNLocator(integer=True))
        axes[0].legend()
        self._figure(fig, "activations")

        fig, axes = F.panels(2)
        for ax, col, lab in zip(axes, ["avg_kurtosis", "max_inf_norm"], ["average kurtosis", "max inf-norm"]):
            F.seed_lines(ax, self.df, "step", col, V)
            ax.set(xlabel="training step", ylabel=lab)
        axes[0].legend()
        self._figure(fig, "training")

        heads = layers[layers.kind == "head"].groupby(["variant", "layer", "head"])[
            ["first_position", "delimiter_attention", "abstention"]].mean().reset_index()
        fig, axes = F.panels(2)
        for ax, col, lab in zip(axes, ["first_position", "delimiter_attention"],
                                ["attention on position 0", "attention on delimiters"]):
            F.head_bars(ax, heads, col, V, self.fin.uniform_first_position.iloc[0]
                        if col == "first_position" else None)
            ax.set(ylabel=lab)
        axes[0].legend()
        self._figure(fig, "attention")

        sweep = [c for c in self.fin.columns if c.startswith("gap_") and "legacy" not in c]
        long = self.fin.melt(id_vars=["variant", "seed"], value_vars=sweep, var_name="bits")
        long["x"] = long.bits.map(sweep.index)
        fig, (ax,) = F.panels(1, 4.5, 2.8)
        F.seed_lines(ax, long, "x", "value", V)
        ax.set_xticks(range(len(sweep)), [c[4:] for c in sweep])
        ax.set(ylabel="loss gap to full precision (nats)", xlabel="bit widths (weights, activations)")
        ax.axhline(0, color="k", lw=0.6)
        ax.legend()
        self._figure(fig, "quantization")

    def windowed(self) -> pd.Series:
        """StreamingLLM's test: sliding-window evaluation with k initial positions kept (test
        split); the middle window is the headline."""
        win = self._frame("windowed", lambda: windowed(self.profile, self.runs_root))
        M = self.sections["windowed"] = {"HasWindow": "1" if len(win) else "0"}
        if not len(win):
            return pd.Series(M)
        wt = win[win.split == "test"]
        W_LIST, K_LIST = sorted(wt.window.unique()), sorted(wt.keep.unique())
        w_star = W_LIST[len(W_LIST) // 2]
        rows = [{"variant": VARIANT_LABELS[v], "window": fmt(int(w)),
                 "full attention": mean_sd(sub[sub.keep == K_LIST[0]].full_ppl),
                 **{Tex(f"$k = {k}$"): mean_sd(sub[sub.keep == k].ppl) for k in K_LIST}}
                for v in self.variants for w in W_LIST
                for sub in [wt[(wt.variant == v) & (wt.window == w)]]]
        self._table(rows, "windowed.tex", "lr" + "r" * (1 + len(K_LIST)))
        self._windowed_figure(wt, W_LIST, K_LIST)
        wdiffs = pd.DataFrame([
            paired_difference(wt[(wt.window == w_star) & (wt.keep == k)]
                              .rename(columns={"loss": f"win_loss_k{k}"}), f"win_loss_k{k}", other)
            for k in (K_LIST[0], K_LIST[-1]) for other in self.others])
        self._derived("windowed_differences.csv", write_csv, wdiffs)
        M.update({"WinStar": fmt(int(w_star)), "WinList": ", ".join(fmt(int(w)) for w in W_LIST),
                  "WinKeepList": ", ".join(fmt(int(k)) for k in K_LIST),
                  "WinKeepMax": fmt(int(K_LIST[-1])), "WinStart": fmt(int(w_star + K_LIST[-1]))})
        for v in self.variants:
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

    def _windowed_figure(self, wt: pd.DataFrame, W_LIST, K_LIST) -> None:
        fig, axes = F.panels(len(W_LIST), 2.4 * len(W_LIST) + 0.5, sharey=True)
        for ax, w in zip(axes, W_LIST):
            cell = wt[wt.window == w]
            F.seed_lines(ax, cell, "keep", "ppl", self.variants)
            for v in self.variants:
                ax.axhline(cell[cell.variant == v].full_ppl.mean(), color=F.COLORS[v], lw=0.6, ls=":")
            ax.set(xlabel="initial positions kept ($k$)", title=f"window {w}", yscale="log")
            ax.set_xticks(K_LIST)
        axes[0].set_ylabel("test perplexity")
        axes[0].legend(fontsize=7)
        self._figure(fig, "windowed")

    def ablations(self) -> pd.Series:
        """The same variants under one changed recipe key (profiles named in `ablations:`)."""
        names = self.prof.get("ablations") or []
        M = self.sections["ablations"] = {"HasAblation": "1" if names else "0"}
        if not names:
            return pd.Series(M)
        rows, sentences = [], []
        for name, f in [(self.profile, self.fin)] + [(a, self._ablation_runs(a)) for a in names]:
            label = "this profile" if name == self.profile else self._recipe(name)
            rows += [{"recipe": label, **r} for r in
                     by_variant(f, ABLATION_COLUMNS, [v for v in ("softmax", "softmax1")
                                                      if v in set(f.variant)])]
            if name != self.profile:
                sentences += self._ablation_sentences(name, label, f)
        self._table(rows, "ablation.tex", "ll" + "r" * len(ABLATION_COLUMNS))
        write_text(self.gen / "ablation_text.tex", "\n".join(sentences) + "\n")
        return pd.Series(M)

    def _ablation_runs(self, name: str) -> pd.DataFrame:
        return self._frame(f"ablation_{name}", lambda: final(collect(name, self.runs_root)))

    def _recipe(self, name: str) -> str:
        """What an ablation profile changes, in words ('weight decay 0.0')."""
        prof = load_profile(name)
        cfg = run_config(name, prof["variants"][0], prof["seeds"][0]).to_dict()
        changed = {k: cfg[k] for k in cfg
                   if k not in ("out_dir", "attention", "seed") and cfg[k] != self.cfg[k]}
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changed.items()) or "this profile"

    def _ablation_sentences(self, name: str, label: str, f: pd.DataFrame) -> list[str]:
        out = [f"With {label}, " + effect_sentence(paired_difference(f, m, "softmax1"),
                                                   METRICS[m]) + "."
               for m in ("first_position", "avg_kurtosis", "gap_W8A8")]
        # the change itself, on the softmax baseline: ablation minus this profile, by seed
        both = pd.concat([self.fin[self.fin.variant == "softmax"].assign(variant="softmax"),
                          f[f.variant == "softmax"].assign(variant=name)])
        for m in ("sink_rate", "first_position", "avg_kurtosis", "gap_W8A8"):
            r = paired_difference(both, m, name)
            r["other"] = f"the softmax baseline with {label}"
            r["base"] = "with this profile's recipe"
            s = effect_sentence(r, METRICS[m])
            out.append(s[0].upper() + s[1:] + ".")
        return out

    def testbed(self) -> pd.Series:
        """The synthetic testbed (Bigram-Backcopy), when the profile names one."""
        tb = self.prof.get("testbed")
        M = self.sections["testbed"] = {"HasTestbed": "1" if tb else "0"}
        if not tb:
            return pd.Series(M)
        tprof = load_profile(tb)
        V = tprof["variants"]
        tdf, tlayers, tfin = self._testbed_frames()
        tdiffs = paired_differences(tfin, [v for v in V if v != "softmax"])
        self._derived("testbed_differences.csv", write_csv, tdiffs)
        self._table(by_variant(tfin, TESTBED_COLUMNS, V), "testbed.tex")
        self._table(differences_table(tdiffs[tdiffs.metric.isin(TESTBED_FOCUS)]),
                    "testbed_differences.tex", "llrrrrr")
        self._testbed_figures(tdf, tlayers, tfin, V)
        cfg, spec = run_config(tb, V[0], tprof["seeds"][0]).to_dict(), BigramBackcopy()
        M.update({"TbProfileName": latex_escape(tb),
                  "TbDescription": latex_escape(tprof.get("description", "")),
                  "TbNSeeds": fmt(len(tprof["seeds"])),
                  "TbVariantList": ", ".join(VARIANT_LABELS[v] for v in V),
                  "TbVocab": fmt(spec.vocab), "TbTriggers": fmt(spec.triggers),
                  "TbAlpha": fmt(spec.alpha), "TbTrainTokens": fmt(spec.train_tokens),
                  "TbUniformFirst": fmt(tfin.uniform_first_position.iloc[0]),
                  "TbTrainWallMin": fmt(tfin.train_wall_s.sum() / 60, 2)})
        M.update(_config_macros("TbCfg", cfg, ("n_layer", "n_head", "n_embd", "block_size",
                                              "batch_size", "max_steps"), ("lr", "weight_decay")))
        for v in V:
            sub = tfin[tfin.variant == v]
            M.update({macro_name("Tb", *col.split("_"), v): fmt(sub[col].mean())
                      for col in TESTBED_MACRO_COLUMNS})
            M[macro_name("Tb", "max", "kurtosis", "module", v)] = latex_escape(
                sub.max_kurtosis_module.mode().iloc[0])
        M.update(_effect_macros("TbEffect", tdiffs))
        return pd.Series(M)

    def _testbed_frames(self):
        """The testbed's runs (every checkpoint), per-layer rows and final checkpoints, or
        (None, None, None) when the profile names no testbed; loaded once."""
        tb = self.prof.get("testbed")
        if not tb:
            return None, None, None
        if self._tb is None:
            tdf = self._frame("testbed_runs", lambda: collect(tb, self.runs_root))
            tlayers = self._frame("testbed_layers", lambda: per_layer(tb, self.runs_root))
            self._tb = (tdf, tlayers, final(tdf))
            self.testbed_fin = self._tb[2]
        return self._tb

    def primary(self) -> pd.DataFrame:
        """The primary endpoints (stats.PRIMARY, declared before these results existed): each
        variant against softmax with the paired t-test, the exact sign-flip permutation test,
        a bootstrap interval, Holm within each comparison and TOST equivalence, for the
        natural text and the testbed."""
        studies = [("natural text", "", self.fin, self.others)]
        _, _, tfin = self._testbed_frames()
        if tfin is not None:
            studies.append(("testbed", "Tb", tfin, [v for v in VARIANT_LABELS
                                                    if v in set(tfin.variant) and v != "softmax"]))
        endpoints = primary_endpoints(self.profile)
        M = self.sections["primary"] = {
            "Alpha": f"{ALPHA:g}", "PrimaryMargins": _margins(),
            "PrimaryList": ", ".join(f"({i}) {ep.label}" for i, ep in enumerate(endpoints, 1)),
            "NPrimary": fmt(len(endpoints))}
        frames, rows = [], []
        for study, prefix, fin, others in studies:
            eps = endpoints if prefix == "" else PRIMARY
            tests = primary_tests(fin, others, endpoints=eps).assign(study=study)
            frames.append(tests)
            for r in tests.to_dict("records"):
                M[macro_name(prefix + "Primary", *r["metric"].split("_"), r["other"])] = \
                    primary_sentence(r)
                rows.append(self._primary_row(r))
            for other in others:
                M[macro_name(prefix + "PrimarySummary", other)] = verdict_summary(tests, other)
        allt = pd.concat(frames, ignore_index=True)
        self._derived("primary.csv", write_csv, allt)
        self._table(rows, "primary.tex", "lllrrrrrrrrl")
        return allt[["study", "other", "metric", "diff", "ci_low", "ci_high", "p", "p_perm",
                     "p_holm", "p_tost_holm", "verdict"]]

    @staticmethod
    def _primary_row(r: dict) -> dict:
        log = r["scale"] == "log"
        eff, lo, hi = (("ratio", "ratio_low", "ratio_high") if log else ("diff", "ci_low", "ci_high"))
        base, other = ((r["base_gmean"], r["other_gmean"]) if log
                       else (r["base_mean"], r["other_mean"]))
        return {"study": r["study"], "variant": VARIANT_LABELS[r["other"]], "endpoint": r["label"],
                "softmax": num(base), "variant mean": num(other),
                Tex("effect (95\\% CI)"): Tex(f"${fmt(r[eff])}$ (${fmt(r[lo])}$, ${fmt(r[hi])}$)"
                                              + (" ratio" if log else "")),
                **{head: (Tex("$<10^{-4}$") if r[k] < 1e-4 else num(r[k], 2))
                   for k, head in (("p", Tex("$p$ ($t$)")), ("p_perm", Tex("$p$ (perm.)")),
                                   ("p_holm", Tex("Holm $p$")),
                                   ("p_tost_holm", Tex("TOST Holm $p$")))},
                Tex("$d_z$"): num(r["dz"], 2),
                "verdict": r["verdict"]}

    def dose(self) -> None:
        """Dose-response: every primary endpoint at the 1/4, 1/2 and final checkpoints, per
        variant (does the baseline's outlier growth open a quantization gap, and does softmax1
        stop it?), for the natural text and the testbed."""
        tdf, _, _ = self._testbed_frames()
        rows = [("natural text", self.df)] + ([("testbed", tdf)] if tdf is not None else [])
        rows += [(f"{name} (committed)", df) for name, df in self._cited.items()]
        fig, axes = F.plt.subplots(len(rows), len(PRIMARY), figsize=(12, 2.3 * len(rows)),
                                   squeeze=False)
        for (study, df), row in zip(rows, axes):
            V = [v for v in VARIANT_LABELS if v in set(df.variant)]
            for ax, ep in zip(row, PRIMARY):
                F.seed_lines(ax, df, "fraction", ep.metric, V)
                ax.set(title=ep.label if study == rows[0][0] else None,
                       yscale="log" if ep.scale == "log" else "linear",
                       xlabel="fraction of training" if study == rows[-1][0] else None)
                ax.title.set_fontsize(7)
                ax.yaxis.set_minor_formatter(F.matplotlib.ticker.NullFormatter())
            row[0].set_ylabel(study)
        axes[0][0].legend(fontsize=6)
        fig.tight_layout()
        self._figure(fig, "dose")

    def cited(self) -> pd.Series:
        """Profiles run once and committed (the profile's `cited:`, e.g. testbed_long: the
        testbed trained ten times as long): their primary endpoints from results/<name>/
        alone, never rerun. Macros carry the prefix 'Long' for the first one named."""
        names = self.prof.get("cited") or []
        M = self.sections["cited"] = {"HasLong": "0"}
        for name in names:
            res = self.root / "results" / name
            if not (res / "runs.csv").exists():
                print(f"{res}/runs.csv is not there: the paper leaves {name} out "
                      f"(make reproduce PROFILE={name} makes it)")
                continue
            df = read_csv(res / "runs.csv")
            fin, prov = final(df), json.loads((res / "provenance.json").read_text())
            V = [v for v in VARIANT_LABELS if v in set(fin.variant)]
            tests = primary_tests(fin, [v for v in V if v != "softmax"]).assign(study=name)
            self._cited[name] = df
            self._derived(f"cited_{name}_primary.csv", write_csv, tests)
            if M["HasLong"] == "1":
                continue
            self._table([self._primary_row(r) for r in tests.to_dict("records")],
                        "long_primary.tex", "lllrrrrrrrrl")
            tfin = self._testbed_frames()[2]
            base = int(tfin.max_steps.iloc[0]) if tfin is not None else None
            steps = int(fin.max_steps.iloc[0])
            M.update({"HasLong": "1", "LongProfileName": latex_escape(name),
                      "LongSteps": fmt(steps),
                      "LongBaseSteps": fmt(base) if base else "?",
                      "LongTimes": fmt(steps / base, 2) if base else "?",
                      "LongNSeeds": fmt(int(fin.seed.nunique())),
                      "LongVariantList": ", ".join(VARIANT_LABELS[v] for v in V),
                      "LongCommit": latex_escape(prov["commit"][:10]),
                      "LongPipelineMin": fmt(prov["pipeline_wall_s"] / 60, 2)})
            for r in tests.to_dict("records"):
                M[macro_name("LongPrimary", *r["metric"].split("_"), r["other"])] = primary_sentence(r)
            for other in V[1:]:
                M[macro_name("LongPrimarySummary", other)] = verdict_summary(tests, other)
            for v in V:
                sub = fin[fin.variant == v]
                M.update({macro_name("Long", *c.split("_"), v): fmt(sub[c].mean())
                          for c in ("max_kurtosis", "gap_W8A8", "gap_W16A6", "val_loss")})
        return pd.Series(M)

    def _testbed_figures(self, tdf, tlayers, tfin, V) -> None:
        heads = tlayers[tlayers.kind == "head"].groupby(["variant", "layer", "head"])[
            ["first_position_other", "first_position_trigger"]].mean().reset_index()
        fig, axes = F.panels(2, sharey=True)
        for ax, col, lab in zip(axes, ["first_position_other", "first_position_trigger"],
                                ["BOS attention, non-trigger queries", "BOS attention, trigger queries"]):
            F.head_bars(ax, heads, col, V, tfin.uniform_first_position.iloc[0])
            ax.set(title=lab)
        axes[0].legend()
        self._figure(fig, "testbed")
        fig, axes = F.panels(2)
        for ax, col, lab in zip(axes, ["max_kurtosis", "bos_other"],
                                ["maximum kurtosis", "BOS attention, non-trigger queries"]):
            F.seed_lines(ax, tdf, "step", col, V)
            ax.set(xlabel="training step", ylabel=lab)
        axes[0].legend()
        self._figure(fig, "testbed-training")

    def peak(self) -> pd.Series:
        """Guo et al.'s first-position residual peak over training (report/peak.py), for a
        profile whose runs logged it; the disease criterion fixed before the runs."""
        M = self.sections["peak"] = peak_section(self)
        return pd.Series(M, dtype=object)

    def disease(self) -> pd.DataFrame:
        """Does the softmax baseline show the disease? Each sign with its threshold."""
        nat = disease_signs(self.fin)
        tbs = disease_signs(self.testbed_fin) if self.testbed_fin is not None else []

        def cell(d):
            return Tex(f"{d['value']} ({'yes' if d['present'] else 'no'})")
        rows = [{"sign": d["sign"], "present when": d["criterion"], "threshold from": d["source"],
                 "natural text": cell(d),
                 **({"testbed": cell(tbs[i])} if tbs else {})} for i, d in enumerate(nat)]
        table = self._table(rows, "disease.tex", "lll" + "l" * (1 + bool(tbs)))

        def listed(signs):
            return ", ".join(d["sign"] for d in signs if d["present"]) or "none"
        M = self.sections["disease"] = {
            "DiseaseCountNatural": fmt(sum(d["present"] for d in nat)),
            "DiseaseSigns": fmt(len(nat)), "DiseaseListNatural": listed(nat)}
        if tbs:
            M.update(DiseaseCountTestbed=fmt(sum(d["present"] for d in tbs)),
                     DiseaseListTestbed=listed(tbs))
        return table

    def write_macros(self) -> pd.Series:
        """Every number the paper prints: the profile, its corpus and recipe, the per-variant
        means and effects, provenance and timings, then each section's macros."""
        M = {**self._profile_macros(), **self._result_macros(), **self._provenance_macros()}
        M["HasPeak"] = "0"                       # unless the peak section ran and found one
        for name in ("windowed", "disease", "ablations", "testbed", "primary", "cited", "peak"):
            M.update(self.sections.get(name, {}))
        self._derived("macros.json", write_json, M)
        write_macros(M, self.gen / "macros.tex")     # written last: the Makefile's target
        return pd.Series(M)

    def _profile_macros(self) -> dict:
        prof, cfg = self.prof, self.cfg
        M = {"ProfileName": latex_escape(self.profile),
             "ProfileDescription": latex_escape(prof.get("description", "")),
             # a rehearsal (REHEARSAL=1) says so in a box on the first page
             "Rehearsal": "1" if prof.get("rehearsal_of") else "0",
             "RehearsedProfile": latex_escape(prof.get("rehearsal_of", self.profile)),
             "RehearsalCuts": latex_escape(prof.get("rehearsal_cuts", "")),
             "NSeeds": fmt(len(prof["seeds"])),
             "VariantList": ", ".join(VARIANT_LABELS[v] for v in self.variants)}
        M.update(_config_macros("Cfg", cfg, ("n_layer", "n_head", "n_embd", "block_size",
                                            "batch_size", "max_steps", "warmup_steps"),
                                ("lr", "weight_decay", "gate_init", "clip_alpha")))
        M["CfgBos"] = "with" if cfg.get("bos") else "without"
        M["CfgTokens"] = fmt(int(cfg["max_steps"]) * int(cfg["batch_size"]) * int(cfg["block_size"]))
        info = self.corpus
        M["CorpusSentence"], M["CorpusFallback"], corpus_tab = corpus_description(info)
        M["TokenizerKind"] = TOKENIZER_NAMES.get(info["tokenizer"], info["tokenizer"])
        self._table(corpus_tab, "corpus.tex", "lrrrl")
        mc = MeasureConfig.from_dict(prof["measure"])
        M.update(MeasureSeqs=fmt(mc.act_seqs), LossSeqs=fmt(mc.loss_seqs),
                 CalibBatches=fmt(mc.calib_batches))
        return M

    def _result_macros(self) -> dict:
        fin = self.fin
        sink_T = int(fin.sink_T.iloc[0])
        M = {"UniformFirst": fmt(fin.uniform_first_position.iloc[0]),
             "UniformFirstSinkT": fmt(uniform_first_position_mass(sink_T)),
             "SinkT": fmt(sink_T), "DelimiterBaseRate": pct(fin.delimiter_base_rate.mean())}
        for v in self.variants:
            s = fin[fin.variant == v]
            M.update({macro_name(*col.split("_"), v): fmt(s[col].mean())
                      for col in MAIN_MACRO_COLUMNS if col in s})
            M[macro_name("outlier", "delim", v)] = pct(s.outlier_share_delimiter.mean())
            M[macro_name("outlier", "posZero", v)] = pct(s.outlier_share_pos0.mean())
        M.update(_effect_macros("Effect", self.diffs))
        return M

    def _provenance_macros(self) -> dict:
        fin, df = self.fin, self.df
        commit = self.provenance["commit"]
        M = {"GitSha": commit[:10] + ("-dirty" if commit.endswith("-dirty") else ""),
             "ResultsStaleness": latex_escape(self._staleness()),
             "ResultsStale": "1" if self._staleness() else "0",
             "TorchVersion": fin.torch.iloc[0],
             "Hardware": latex_escape(f"{fin.device.iloc[0]} ({fin.device_name.iloc[0]})"),
             "TrainWallMin": fmt(fin.train_wall_s.sum() / 60, 2),
             "MeasureWallMin": fmt(df.measure_wall_s.sum() / 60, 2),
             "MeasurePerCkptS": fmt(df.measure_wall_s.mean(), 2),
             "TrainPerRunS": fmt(fin.train_wall_s.mean(), 2), "NCheckpoints": fmt(len(df))}
        stages = self._frame("timings", self._timings)
        tab = stages.groupby("stage", sort=False).seconds.agg(["count", "sum"]).reset_index()
        rows = [{"stage": r["stage"], "jobs": fmt(r["count"]), "summed time (min)": num(r["sum"] / 60, 2)}
                for r in tab.to_dict("records")]
        latex_table(rows, self.tabdir / "timings.tex", columns=["stage", "jobs", "summed time (min)"])
        M["PipelineWallMin"] = fmt(stages.seconds.sum() / 60, 2) if len(stages) else "n/a"
        M["HasMissing"] = "1" if self.missing else "0"
        M["MissingRuns"] = latex_escape(", ".join(self.missing))
        M["NMissing"] = fmt(len(self.missing))
        elapsed = self.provenance.get("pipeline_elapsed_s")   # absent from older results
        M["HasElapsed"] = "1" if elapsed else "0"
        M["PipelineElapsedMin"] = fmt(elapsed / 60, 2) if elapsed else "n/a"
        return M

    def _timings(self) -> pd.DataFrame:
        """Each pipeline notebook's latest wall time (build/<profile>/timings.jsonl)."""
        path = self.root / "build" / self.profile / "timings.jsonl"
        if not path.exists():
            return pd.DataFrame(columns=["stage", "target", "seconds"])
        stages = pd.DataFrame([json.loads(l) for l in path.read_text().splitlines()])
        return stages.drop_duplicates("target", keep="last")


def _elapsed(stages: pd.DataFrame) -> float | None:
    """Seconds from the first notebook's start to the last measurement's end (the data, train
    and measure notebooks' latest executions, from timings that record when they ended; the
    report and bench notebooks run again whenever the paper is rebuilt); None when none does.
    With runs executing at once this is less than the sum of the notebooks' times."""
    if "end" not in stages:
        return None
    # "train and measure": offbyone.study's one stage for both
    t = stages[stages.stage.isin(("data", "train", "measure", "train and measure"))].dropna(subset=["end"])
    if t.empty:
        return None
    return float(t["end"].max() - (t["end"] - t["seconds"]).min())


def _margins() -> str:
    """The equivalence margins of the primary endpoints, in words, from stats.PRIMARY."""
    return "; ".join(
        f"{ep.label}: " + (f"a factor ${fmt(math.exp(ep.margin))}$" if ep.scale == "log"
                           else f"$\\pm{fmt(ep.margin)}$" + (f" {ep.unit}" if ep.unit else ""))
        for ep in PRIMARY)


def _measured(profile: str, runs_root: str) -> bool:
    """Whether every run of the profile has a measurements index under runs_root (a study cut
    short: at least one run)."""
    try:
        return any(True for _ in measured_files(profile, runs_root))
    except FileNotFoundError:
        return False


def _config_macros(prefix: str, cfg: dict, ints, floats) -> dict:
    return {**{macro_name(prefix, *k.split("_")): fmt(int(cfg[k])) for k in ints},
            **{macro_name(prefix, *k.split("_")): fmt(float(cfg[k])) for k in floats}}


def _effect_macros(prefix: str, diffs: pd.DataFrame) -> dict:
    """One effect sentence per (metric, variant) of a differences table."""
    out = {}
    for _, r in diffs.iterrows():
        label = METRICS[r["metric"]]
        out[macro_name(prefix, *r["metric"].split("_"), r["other"])] = effect_sentence(
            r.to_dict(), label)
    return out
