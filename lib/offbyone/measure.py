"""Measure a checkpoint end to end and write one tidy JSON beside it.

    python -m offbyone.measure runs/4l_softmax1/ckpt_001500.pt [--force] [--set key=value ...]

Losses (validation and test, nats and bits per token), activation outliers per module (kurtosis,
inf-norm, outlier positions), weight kurtosis, attention statistics per layer and head (at the
model's context and at T = 64 for the sink rate), and the post-training quantization sweep: the
whole sweep (and the earlier setup's W8A8) at the final checkpoint, only `dose_bit_widths` (the
primary endpoints' W8A8 and W16A6) at the earlier ones, for the dose-response figure.
The results go to `<checkpoint>.metrics.json`; a measured checkpoint is skipped unless forced.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_model
from .config import ConfigError, MeasureConfig, parse_overrides
from .device import DeviceError, pick_device
from .io import write_json
from .corpora import CorpusError
from .data import corpus_of, fell_back, prepare_for
from .metrics import (SINK_T, activation_statistics, attention_statistics, bits_per_token,
                      loss_by_class, loss_on, residual_peak, summarize_activations, token_classes,
                      weight_kurtosis, windowed_losses)
from .profiles import load_profile, run_config, run_dir, runs
from .provenance import loaded_code, provenance
from .quant import GROUP_SETTINGS, group_cases, group_gaps, sweep
from .tokens import TokenData

RESULTS_FORMAT = "offbyone-metrics"
RESULTS_VERSION = 8   # 2: sliding windows, per-class losses, trigger-split attention; 3, 4: data;
#                       5: the anchor's quantization setup and module set, first position t >= 1;
#                       6: the first-position residual peak, inf-norm without the last residual
#                       7: the 99.99th percentile of |x| and kurtosis over active positions
#                       8: quantization gaps after a trigger (testbed); who trained, what ran


def results_path(checkpoint) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".metrics.json")


def _windows(data: TokenData, split: str, n: int, T: int, bos: bool, seed: int, device):
    g = torch.Generator().manual_seed(seed)
    return tuple(t.to(device) for t in data.get_batch(split, n, T, g, bos))


def _data_for(state: dict) -> TokenData:
    cfg = state["config"]
    data_dir = Path(state.get("extra", {}).get("data_dir", ""))
    if data_dir.is_absolute() and (data_dir / "meta.json").exists():
        return TokenData(data_dir)
    return TokenData(prepare_for(cfg))


def _load(checkpoint, mc: MeasureConfig, attention: str | None = None):
    """(model in float32 eval mode on the measuring device, checkpoint, its data, device); with
    `attention`, a checkpoint of another variant is refused (checkpoint.load_model)."""
    if mc.threads:
        torch.set_num_threads(mc.threads)
    device = pick_device(mc.device)
    model, state = load_model(checkpoint, attention=attention)
    return model.float().eval().to(device), state, _data_for(state), device


def _calibration(data: TokenData, mc: MeasureConfig, T: int, bos: bool, device) -> list:
    """The calibration batches from the training split: the same for the sweep and the groups."""
    g = torch.Generator().manual_seed(mc.seed + 2)
    return [data.get_batch("train", mc.calib_batch_size, T, g, bos)[0].to(device)
            for _ in range(mc.calib_batches)]


def measure(checkpoint, config: MeasureConfig | dict | None = None, force: bool = False,
            verbose: bool = True, attention: str | None = None) -> dict:
    """Measure `checkpoint`, write `<checkpoint>.metrics.json` and return the results. With
    `attention`, a checkpoint of another variant is refused."""
    mc = MeasureConfig.from_dict(config) if isinstance(config, dict) else (config or MeasureConfig())
    out = results_path(checkpoint)
    old = _measured(out, mc) if not force else None
    if old is not None:
        if verbose:
            print(f"{out} exists; skipping (force to measure again)")
        return old
    t0 = time.perf_counter()

    def log(msg):
        if verbose:
            print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    model, state, data, device = _load(checkpoint, mc, attention)
    cfg = state["config"]
    T, bos = model.config.block_size, cfg["bos"]
    classes = _classes(data, bos, device)
    val = _windows(data, "val", mc.loss_seqs, T, bos, mc.seed, device)
    test = _windows(data, "test", mc.loss_seqs, T, bos, mc.seed + 1, device)
    act_x = val[0][: mc.act_seqs]
    log(f"measuring {checkpoint} ({cfg['attention']}, seed {cfg['seed']}, step {state['step']})")
    losses = _losses(model, val, test, classes, data, log)
    acts = activation_statistics(model, act_x, classes)
    summary = summarize_activations(acts["modules"])
    log(f"activations (the anchor's modules): avg kurtosis {summary['anchor']['avg_kurtosis']:.2f}, "
        f"max kurtosis {summary['anchor']['max_kurtosis']:.2f}, "
        f"max inf-norm {summary['anchor']['max_inf_norm']:.2f}")
    peak = residual_peak(model, act_x)
    log(f"first-position residual peak: max ratio {peak['max_ratio']:.2f} "
        f"({peak['max_ratio_layer']}), norm {peak['max_first_norm']:.1f}")
    attn = attention_statistics(model, act_x, classes)
    attn64 = attention_statistics(model, act_x[:, :min(SINK_T, T)], classes)
    log(f"attention: sink rate (T={attn64['T']}) {attn64['sink_rate']:.3f}, "
        f"mean abstention {attn['mean_abstention']:.3f}")
    windowed, last = None, state["step"] == cfg["max_steps"]
    if last and mc.windows:   # the final checkpoint only
        windowed = _windowed(model, val, test, mc, log)
    wk = weight_kurtosis(model)
    quant = _quantization(model, data, mc, T, bos, val, losses["val"], device, last,
                          classes.get("trigger"))
    log("quantization: " + ", ".join(f"{r['config']} gap {r['gap']:+.4f}" for r in quant))
    wall = time.perf_counter() - t0
    results = {
        "format": RESULTS_FORMAT, "version": RESULTS_VERSION,
        "checkpoint": str(checkpoint), "variant": cfg["attention"], "seed": cfg["seed"],
        "step": state["step"], "max_steps": cfg["max_steps"], "config": cfg,
        "measure_config": _jsonable(asdict(mc)), "losses": losses,
        "activations": summary, "modules": acts["modules"], "base_rates": acts["base_rates"],
        "weights": {"kurtosis": wk, "avg_kurtosis": sum(wk.values()) / len(wk),
                    "max_kurtosis": max(wk.values())},
        "attention": attn, "attention_T64": attn64, "residual_peak": peak, "windowed": windowed,
        "sink_logits": sink_logits(model),
        "data": _data_summary(data, cfg), "quant": quant,
        "quant_notes": QUANT_NOTES[mc.setup],
        # who trained it, and the code that ran then and now (provenance.staleness_of)
        "provenance": {**provenance(device), "measure_wall_s": wall,
                       "train_wall_s": state.get("extra", {}).get("elapsed_s"),
                       "trained_by": state.get("extra", {}).get("git_sha"),
                       "code": sorted(set(loaded_code()) | set(state.get("extra", {}).get("code") or []))},
    }
    write_json(out, results)
    log(f"wrote {out} in {wall:.1f}s")
    return results


QUANT_NOTES = {
    "fp32_head": "fake quant as Bondarenko et al.'s fp32_head: every activation and weight "
                 "except the LM head; weights symmetric per tensor, activations asymmetric per "
                 "tensor with static running min-max ranges",
    "linear_inputs": "fake quant of the Linear inputs and block outputs (offbyone's earlier "
                     "setup); final LayerNorm, q, k, v, scores and LM head in full precision"}


def sink_logits(model) -> list[list[float]] | None:
    """The learned sinks' logits, one list of heads per block (None without a learned sink):
    where a retrofit's sink has gone from its initial value."""
    sinks = [b.attn.sink for b in model.blocks if getattr(b.attn, "sink", None) is not None]
    return [s.detach().float().cpu().tolist() for s in sinks] or None


def _classes(data: TokenData, bos: bool, device) -> dict:
    """Token classes (delimiters, BOS, the testbed's triggers) as boolean masks over ids."""
    return {k: v.to(device) for k, v in token_classes(
        data.itos, data.bos_id if bos else None, data.meta.get("token_classes")).items()}


def _measured(out: Path, mc: MeasureConfig) -> dict | None:
    """The results already in `out`, if they are of this version and measurement config."""
    try:
        old = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (old.get("format") == RESULTS_FORMAT and old.get("version") == RESULTS_VERSION
            and old.get("measure_config") == _jsonable(asdict(mc))):
        return old
    return None


def _losses(model, val, test, classes, data, log) -> dict:
    """Validation and test loss (nats and bits per token); on the testbed, the loss after a
    trigger (copy positions) and elsewhere."""
    val_loss, test_loss = loss_on(model, *val), loss_on(model, *test)
    log(f"losses: val {val_loss:.4f}, test {test_loss:.4f}")
    by_class = {}
    if "trigger" in classes:
        by_class["trigger"] = loss_by_class(model, *val, classes["trigger"])
        log(f"loss after a trigger {by_class['trigger']['in_class']:.4f}, "
            f"elsewhere {by_class['trigger']['other']:.4f}")
    return {"val": val_loss, "test": test_loss, "val_bits_per_token": bits_per_token(val_loss),
            "test_bits_per_token": bits_per_token(test_loss), "tokenizer": data.meta["tokenizer"],
            "by_class": by_class}


def _windowed(model, val, test, mc: MeasureConfig, log) -> dict:
    windowed = {split: windowed_losses(model, x, y, mc.windows, mc.keeps or (0,))
                for split, (x, y) in (("val", val), ("test", test))}
    if windowed["val"]["grid"]:
        log("sliding window (val): " + ", ".join(
            f"W{c['window']}/k{c['keep']} {c['loss']:.3f}" for c in windowed["val"]["grid"]))
    return windowed


def _quantization(model, data, mc: MeasureConfig, T, bos, val, fp_loss, device,
                  last: bool, trigger: torch.Tensor | None = None) -> list[dict]:
    """The sweep (`bit_widths`, and the earlier setup's W8A8) at the final checkpoint;
    `dose_bit_widths` alone at the earlier ones. On the testbed (a `trigger` class), each gap
    also over the positions after a trigger, where the copy needs attention (`gap_class`)."""
    calib = _calibration(data, mc, T, bos, device)
    rows = sweep(model, calib, *val, mc.bit_widths if last else mc.dose_bit_widths,
                 fp_loss=fp_loss, query_mask=trigger, setup=mc.setup, weight_granularity=mc.weight_granularity,
                 weight_method=mc.weight_method, act_method=mc.act_method)
    if mc.compare_legacy and last:   # the earlier setup's W8A8 on the same checkpoint, for comparison
        old = sweep(model, calib, *val, [(8, 8)], fp_loss=fp_loss, setup="linear_inputs",
                    weight_granularity="tensor", weight_method="minmax", act_method="minmax")
        rows += [{**r, "config": "legacy_" + r["config"]} for r in old]
    return rows


GROUPS_VERSION = 2   # 2: groups_seqs


def groups_path(checkpoint) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".groups.json")


def measure_groups(checkpoint, config: MeasureConfig | dict | None = None, force: bool = False,
                   settings=GROUP_SETTINGS, verbose: bool = True,
                   attention: str | None = None) -> dict:
    """Which quantized tensor costs what (`quant.group_gaps`) at one checkpoint, on the same
    validation windows and calibration batches as `measure`; written to
    `<checkpoint>.groups.json` (skipped when it is there, of this version and config). On the
    first `groups_seqs` windows, where set: 'all' is then the setting's gap on those windows."""
    mc = MeasureConfig.from_dict(config) if isinstance(config, dict) else (config or MeasureConfig())
    out = groups_path(checkpoint)
    key = {"version": GROUPS_VERSION, "measure_config": _jsonable(asdict(mc)),
           "settings": [list(x) for x in settings]}
    if not force:
        try:
            old = json.loads(out.read_text())
            if (old.get("version") == key["version"] and old.get("settings") == key["settings"]
                    and _groups_options(old.get("measure_config")) ==
                    _groups_options(key["measure_config"])):
                if verbose:
                    print(f"{out} exists; skipping (force to measure again)")
                return old
        except (OSError, json.JSONDecodeError):
            pass
    t0 = time.perf_counter()
    model, state, data, device = _load(checkpoint, mc, attention)
    cfg = state["config"]
    T, bos = model.config.block_size, cfg["bos"]
    # measure's validation windows (the first groups_seqs of them) and calibration batches
    val = _windows(data, "val", mc.loss_seqs, T, bos, mc.seed, device)
    val = tuple(t[: mc.groups_seqs or mc.loss_seqs] for t in val)
    calib = _calibration(data, mc, T, bos, device)
    from tqdm.auto import tqdm
    with tqdm(total=group_cases(model, settings, mc.setup), desc=f"groups {Path(checkpoint).parent.name}",
              disable=not verbose, leave=False) as bar:
        rows = group_gaps(model, calib, *val, settings=settings, progress=bar, setup=mc.setup,
                          weight_granularity=mc.weight_granularity,
                          weight_method=mc.weight_method, act_method=mc.act_method)
    wall = time.perf_counter() - t0
    results = {**key, "format": RESULTS_FORMAT, "checkpoint": str(checkpoint),
               "variant": cfg["attention"], "seed": cfg["seed"], "step": state["step"],
               "max_steps": cfg["max_steps"], "rows": rows,
               "provenance": {**provenance(device), "wall_s": wall}}
    write_json(out, results)
    if verbose:
        print(f"wrote {out} in {wall:.1f}s")
    return results


def _groups_options(d: dict | None) -> dict | None:
    """The measurement options that change group_gaps' numbers (not the threads, not the
    switch that asks for it, not the sweep's own bit widths or windows)."""
    if d is None:
        return None
    same = ("loss_seqs", "groups_seqs", "calib_batches", "calib_batch_size", "setup",
            "weight_granularity", "weight_method", "act_method", "seed", "device")
    return {k: d.get(k, getattr(MeasureConfig, k, None)) for k in same}


def profile_final_checkpoints(profile: str, runs_root: str = "runs") -> list[tuple[Path, dict]]:
    """(final checkpoint, the profile's measure options) of every run of `profile` and of its
    testbed; a missing one is refused by name."""
    prof = load_profile(profile)
    out = []
    for name in [profile] + ([prof["testbed"]] if prof.get("testbed") else []):
        p = load_profile(name)
        for v, seed in runs(name):
            steps = run_config(name, v, seed).max_steps
            ckpt = run_dir(name, v, seed, runs_root) / f"ckpt_{steps:06d}.pt"
            if not ckpt.exists():
                raise ConfigError(f"{ckpt} is missing: train the profile first "
                                  f"(make reproduce PROFILE={profile})")
            out.append((ckpt, p.get("measure") or {}))
    return out


def _data_summary(data: TokenData, cfg: dict) -> dict:
    """The prepared corpus the checkpoint was measured on, and whether it was a fallback."""
    return {"dir": str(data.dir), "tokenizer": data.meta.get("tokenizer"),
            "vocab_size": data.vocab_size, "source": data.meta.get("source"),
            "corpus": corpus_of(data.meta), "asked_for": cfg["corpus"],
            "fell_back": fell_back(cfg, data.meta),
            "max_tokens": data.meta.get("max_tokens", 0),
            "splits": {k: {kk: v.get(kk) for kk in ("tokens", "chars", "sha256")}
                       | {"works": len(v.get("works", []))}
                       for k, v in data.meta["splits"].items()}}


def _jsonable(d):
    return json.loads(json.dumps(d))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Measure outliers, sinks and quantization of checkpoints.")
    ap.add_argument("checkpoints", nargs="*", help="checkpoint files (.pt)")
    ap.add_argument("--profile", help="with --groups: the final checkpoint of every run of this "
                                      "profile and of its testbed, with the profile's measure "
                                      "options")
    ap.add_argument("--force", action="store_true", help="measure again even if done")
    ap.add_argument("--groups", action="store_true",
                    help="which quantized tensor costs what (quant.group_gaps) instead of the "
                         "measurements: <checkpoint>.groups.json")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help=f"measurement options: {', '.join(f.name for f in fields(MeasureConfig))}")
    args = ap.parse_args(argv)
    try:
        overrides = parse_overrides(args.set, MeasureConfig.keys(), "measurement",
                                    list_keys=("windows", "keeps"))
        mc = MeasureConfig.from_dict(overrides)
        if args.profile:
            if not args.groups:
                raise ConfigError("--profile goes with --groups (measure a profile's runs with "
                                  "make reproduce)")
            jobs = profile_final_checkpoints(args.profile)
            for ckpt, prof_mc in jobs:
                measure_groups(ckpt, {**prof_mc, **overrides}, force=args.force)
            return
        if not args.checkpoints:
            raise ConfigError("name checkpoints, or --groups --profile NAME")
        for ckpt in args.checkpoints:
            (measure_groups if args.groups else measure)(ckpt, mc, force=args.force)
    except (ConfigError, CheckpointError, CorpusError, DeviceError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
