"""Loading results: the measurement JSONs of a profile's runs as tidy tables.

    collect      one row per measured checkpoint of every run (the runs.csv the paper reads)
    final        the final checkpoints' rows
    per_layer    per module and per head, the final checkpoints (figures)
    windowed     the sliding-window grid of the final checkpoints
    corpus_info  the prepared corpus the runs were measured on
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from ..measure import RESULTS_FORMAT, RESULTS_VERSION
from ..profiles import load_profile, repo_root, run_dir


def _row(r: dict, profile: str) -> dict:
    # headline aggregates over the anchor's modules; "ext_" over every measured module
    a, ext, by = r["activations"]["anchor"], r["activations"]["all"], r["activations"]["by_kind"]
    row = {
        "profile": profile, "variant": r["variant"], "seed": r["seed"], "step": r["step"],
        "max_steps": r["max_steps"], "fraction": r["step"] / r["max_steps"],
        "lr": r["config"].get("lr"),
        "val_loss": r["losses"]["val"], "test_loss": r["losses"]["test"],
        "val_bits_per_token": r["losses"]["val_bits_per_token"],
        "avg_kurtosis": a["avg_kurtosis"], "max_kurtosis": a["max_kurtosis"],
        "max_kurtosis_module": a["max_kurtosis_module"], "max_inf_norm": a["max_inf_norm"],
        "max_inf_norm_module": a["max_inf_norm_module"], "avg_inf_norm": a["avg_inf_norm"],
        "ext_avg_kurtosis": ext["avg_kurtosis"], "ext_max_kurtosis": ext["max_kurtosis"],
        "ext_max_kurtosis_module": ext["max_kurtosis_module"],
        "ext_max_inf_norm": ext["max_inf_norm"],
        "ext_max_inf_norm_module": ext["max_inf_norm_module"],
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
        "max_head_first_position_T64": r["attention_T64"]["max_head_first_position_all_queries"],
        "weight_avg_kurtosis": r["weights"]["avg_kurtosis"],
        "measure_wall_s": r["provenance"]["measure_wall_s"],
        "train_wall_s": r["provenance"].get("train_wall_s"),
        "git_sha": r["provenance"]["git_sha"], "trained_by": r["provenance"].get("trained_by"),
        "device": r["provenance"]["device"],
        "device_name": r["provenance"]["device_name"], "torch": r["provenance"]["torch"],
    }
    trig = r["losses"].get("by_class", {}).get("trigger")
    att = r["attention"]
    row.update(copy_loss=trig["in_class"] if trig else None,
               bigram_loss=trig["other"] if trig else None,
               bos_other=att.get("mean_first_position_other_queries"),
               bos_trigger=att.get("mean_first_position_trigger_queries"),
               bos_other_max_head=att.get("max_head_first_position_other_queries"))
    sinks = [x for block in r.get("sink_logits") or [] for x in block]
    row.update(sink_logit_mean=float(np.mean(sinks)) if sinks else None,
               sink_logit_max=float(np.max(sinks)) if sinks else None,
               sink_logit_min=float(np.min(sinks)) if sinks else None)
    inner, peak = r["activations"].get("anchor_inner"), r.get("residual_peak")
    row.update(inner_max_inf_norm=inner["max_inf_norm"] if inner else None,
               inner_max_inf_norm_module=inner["max_inf_norm_module"] if inner else None,
               bos_resid_ratio=peak["max_ratio"] if peak else None,
               bos_resid_ratio_layer=peak["max_ratio_layer"] if peak else None,
               bos_resid_norm=peak["max_first_norm"] if peak else None)
    for layer in (peak or {}).get("layers", []):
        row[f"bos_ratio_{layer['layer']}"] = layer["ratio"]
        row[f"bos_norm_{layer['layer']}"] = layer["first_norm"]
    for q in r["quant"]:
        row[f"gap_{q['config']}"] = q["gap"]
        row[f"loss_{q['config']}"] = q["loss"]
        if "gap_class" in q:       # the testbed: the gap after a trigger, where heads act
            row[f"gap_trigger_{q['config']}"] = q["gap_class"]
    # magnitude beside kurtosis (results version 7): the 99.99th percentile of |x| and the
    # kurtosis over active positions, over the anchor's modules and per module kind
    row.update(max_p9999=a.get("max_p9999"), max_active_kurtosis=a.get("max_active_kurtosis"),
               avg_active_kurtosis=a.get("avg_active_kurtosis"))
    for kind, agg in by.items():
        row[f"inf_norm_{kind}"] = agg["max_inf_norm"]
        row[f"p9999_{kind}"] = agg.get("max_p9999")
        row[f"active_kurtosis_{kind}"] = agg.get("max_active_kurtosis")
        row[f"kurtosis_{kind}"] = agg["max_kurtosis"]
    return row


def cut_short_allowed(profile: str) -> bool:
    """Whether a profile's runs may be incomplete: a study unpacked from a node
    (results/<profile>/study.json), whose time may have run out before every run finished.
    Its report is made from the runs there and names the missing ones."""
    return (repo_root() / "results" / profile / "study.json").exists()


def missing_runs(profile: str, runs_root: str = "runs") -> list[str]:
    """The runs of a profile without a measurements index under runs_root."""
    prof = load_profile(profile)
    return [f"{profile}/{v}-s{s}" for v in prof["variants"] for s in prof["seeds"]
            if not (run_dir(profile, v, s, runs_root) / "measurements.json").exists()]


def measured_files(profile: str, runs_root: str = "runs"):
    """(variant, seed, [results files of its checkpoints]) of every run, in the profile's order,
    from each run's measurements.json index (a study cut short skips its missing runs)."""
    prof = load_profile(profile)
    skip = cut_short_allowed(profile)
    for v in prof["variants"]:
        for s in prof["seeds"]:
            index = run_dir(profile, v, s, runs_root) / "measurements.json"
            if not index.exists() and skip:
                continue
            if not index.exists():
                raise FileNotFoundError(f"{index} is missing: run `make reproduce PROFILE={profile}` "
                                        "(or the measure notebook) first")
            # relative to the repository (absolute stays absolute)
            yield v, s, [repo_root() / f for f in json.loads(index.read_text())["files"]]


def read_results(path) -> dict:
    r = json.loads(path.read_text())
    if r.get("format") != RESULTS_FORMAT or r.get("version") != RESULTS_VERSION:
        raise ValueError(f"{path} is a results file of another format or version; "
                         "measure again with force=True")
    return r


def collect(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """One row per measured checkpoint of every run of the profile."""
    rows = [_row(read_results(f), profile)
            for _, _, files in measured_files(profile, runs_root) for f in files]
    return pd.DataFrame(rows).sort_values(["variant", "seed", "step"]).reset_index(drop=True)


def quant_groups(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """Which quantized tensor costs what (measure.measure_groups) at the final checkpoint of
    every run that has it: one row per (variant, seed, setting, group, mode). Empty when no run
    was measured so (the profile's measure options leave `groups` off)."""
    rows = []
    for v, s, files in measured_files(profile, runs_root):
        if not files:
            continue
        final_file = max(files, key=lambda f: f.name)          # ckpt_<step>, zero-padded
        path = final_file.with_name(final_file.name.replace(".metrics.json", ".groups.json"))
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        mc = r.get("measure_config") or {}
        # the validation windows the groups were measured on (groups_seqs, from version 2)
        windows = {"windows": mc.get("groups_seqs") or mc.get("loss_seqs"),
                   "loss_windows": mc.get("loss_seqs")}
        rows += [{"profile": profile, "variant": v, "seed": s, "step": r["step"], **windows,
                  **{k: row[k] for k in ("setting", "wbits", "abits", "group", "mode",
                                         "quantizers", "loss", "fp_loss", "gap")},
                  "git_sha": r["provenance"].get("git_sha")} for row in r["rows"]]
    return pd.DataFrame(rows)


def bos_curve(profile: str, runs_root: str = "runs") -> pd.DataFrame:
    """Guo et al.'s BOS residual peak over training, from each run's log.jsonl (logged at every
    evaluation of a run with a BOS token): one row per (variant, seed, step, layer), layer 0
    being the embedding and layer i the output of block i - 1. Empty where nothing was logged."""
    rows = []
    prof = load_profile(profile)
    for v in prof["variants"]:
        for s in prof["seeds"]:
            log = run_dir(profile, v, s, runs_root) / "log.jsonl"
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                rec = json.loads(line) if line.strip() else {}
                for layer, (norm, ratio) in enumerate(zip(rec.get("bos_norm") or [],
                                                          rec.get("bos_ratio") or [])):
                    rows.append({"variant": v, "seed": s, "step": rec["step"], "layer": layer,
                                 "bos_norm": norm, "bos_ratio": ratio,
                                 "val_loss": rec.get("val_loss")})
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "layer", "bos_norm",
                                       "bos_ratio", "val_loss"])


def final_results(profile: str, runs_root: str = "runs"):
    """(variant, seed, results) of every run's final checkpoint, in the profile's order."""
    for v, s, files in measured_files(profile, runs_root):
        yield v, s, read_results(files[-1])


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


def final(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["step"] == df["max_steps"]].copy()


def read_csv(path) -> pd.DataFrame:
    """A results CSV read back exactly (floats round-trip to the bits that were written)."""
    return pd.read_csv(path, float_precision="round_trip")


def published_table() -> pd.DataFrame:
    """The published numbers we compare with (paper/published.csv, with their sources)."""
    return pd.read_csv(repo_root() / "paper" / "published.csv")
