"""Profiles: loading (with bases and rehearsal cuts), run names, folders and configs, retrofit
sources. The floor every runner stands on: it imports no runner (train, measure, study, bench,
pipeline, gpu_check), and they import it at the top.

A profile (`configs/<name>.yaml`) names the variants, seeds, training config and measurement
options of one run of the whole study:

    base: cpu                  # optional: start from another profile's train and measure
    description: ...
    variants: [softmax, softmax1]
    seeds: [0, 1, 2]
    train: {TrainConfig keys}
    measure: {MeasureConfig keys}
    bench: {T: [256, 1024], repeats: 5, steps: 20}   # python -m offbyone.bench --for-profile;
                               # optional variants: [...] for the training throughput (default all)
    testbed: testbed           # optional: another profile (the synthetic task) whose runs are
                               # trained, measured and reported with this one
    ablations: [gpu_wd01]      # optional: profiles that change one recipe key (same variants'
                               # comparison under another weight decay, say), reported beside
    cited: [testbed_long]      # optional: profiles run once on their own, whose committed
                               # results (results/<name>/) the report cites without running them
    retrofit: {from: testbed_long, variant: softmax}   # optional: each run starts from the
                               # final checkpoint of that profile's run of this variant and the
                               # same seed, converted to the run's own variant (a short
                               # fine-tune; train.init_from), which make trains first

    python -m offbyone.profiles runs cpu      # the run names, for the Makefile
    python -m offbyone.profiles testbed cpu   # the testbed profile's name (empty if none)
    python -m offbyone.profiles ablations gpu # the ablation profiles' names
    python -m offbyone.profiles sources retrofit  # the runs a retrofit starts from (profile/run)
    python -m offbyone.profiles data-params cpu   # the data notebook's -p options
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from .attention import VARIANTS
from .config import ConfigError, MeasureConfig, TrainConfig
from .model import GPT

PROFILE_KEYS = ("base", "description", "variants", "seeds", "train", "measure", "bench", "testbed",
                "ablations", "cited", "retrofit")
RETROFIT_KEYS = ("from", "variant")
BENCH_KEYS = ("T", "repeats", "max_repeats", "budget_s", "max_tokens", "block_s", "min_passes",
              "steps", "variants")
RUN_FIXED_KEYS = ("out_dir", "attention", "seed")   # set per run, not in a profile's train


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The repository root: the first folder upward holding configs/ and lib/offbyone/."""
    here = Path(start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "configs").is_dir() and (p / "lib" / "offbyone").is_dir():
            return p
    return Path(__file__).resolve().parents[2]


def profile_path(profile: str) -> Path:
    path = repo_root() / "configs" / f"{profile}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in (repo_root() / "configs").glob("*.yaml")
                       if {"variants", "base"} & set(yaml.safe_load(p.read_text()) or {}))
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(names)}")
    return path


# A rehearsal (`make reproduce PROFILE=gpu REHEARSAL=1`, profile name `gpu-rehearsal`) is a
# profile with only the sizes that cost time cut: a handful of steps of a small batch, a few
# measurement and calibration windows, the benchmark at short T. Everything else (variants,
# seeds, model, tokenizer, corpus and its fallback, testbed, ablations) is the profile's own,
# and its companions are rehearsed with it. Its folders (runs/, results/, build/) carry the
# suffix, so a rehearsal never touches a real profile's results.
REHEARSAL_SUFFIX = "-rehearsal"
# CI's cut form (REHEARSAL=quick): the same, with the first two variants and the first seed of
# the profile and of each companion
QUICK_REHEARSAL_SUFFIX = "-quickrehearsal"
# Numbers are caps (a profile already smaller keeps its own); lists replace the profile's.
REHEARSAL_CUTS = {
    "train": {"max_steps": 4, "warmup_steps": 1, "eval_interval": 2, "eval_batches": 1,
              "log_interval": 1, "batch_size": 2, "block_size": 64,
              "checkpoint_fractions": [0.5, 1.0]},
    "measure": {"act_seqs": 2, "loss_seqs": 2, "calib_batches": 1, "calib_batch_size": 2,
                "windows": [16], "keeps": [0, 1]},
    "bench": {"T": [64, 128], "repeats": 2, "budget_s": 0.0, "steps": 3},
}


def _rehearsal_suffix(profile: str) -> str | None:
    for suffix in (QUICK_REHEARSAL_SUFFIX, REHEARSAL_SUFFIX):
        if profile.endswith(suffix):
            return suffix
    return None


def rehearsal_of(profile: str) -> str | None:
    """The profile a rehearsal profile rehearses, or None for a real profile."""
    suffix = _rehearsal_suffix(profile)
    return profile[: -len(suffix)] if suffix else None


def _load_rehearsal(profile: str) -> dict:
    suffix, real = _rehearsal_suffix(profile), rehearsal_of(profile)
    prof = load_profile(real)
    if suffix == QUICK_REHEARSAL_SUFFIX:
        prof["variants"], prof["seeds"] = prof["variants"][:2], prof["seeds"][:1]
    defaults = {"train": TrainConfig().to_dict(), "measure": asdict(MeasureConfig()), "bench": {}}
    for part, cuts in REHEARSAL_CUTS.items():
        for key, cut in cuts.items():
            own = prof[part].get(key, defaults[part].get(key))
            number = isinstance(cut, int) and isinstance(own, int)
            prof[part][key] = min(own, cut) if number else cut
    TrainConfig.from_dict(prof["train"])
    MeasureConfig.from_dict(prof["measure"])
    if prof.get("testbed"):
        prof["testbed"] += suffix
    if prof.get("ablations"):
        prof["ablations"] = [a + suffix for a in prof["ablations"]]
    if prof.get("retrofit"):
        prof["retrofit"] = {**prof["retrofit"], "from": prof["retrofit"]["from"] + suffix}
    prof.pop("cited", None)            # a rehearsal cites no real results
    t, m, b = REHEARSAL_CUTS["train"], REHEARSAL_CUTS["measure"], REHEARSAL_CUTS["bench"]
    prof["rehearsal_cuts"] = (
        ("the first two variants and the first seed of each profile; " if
         suffix == QUICK_REHEARSAL_SUFFIX else "") +
        f"{t['max_steps']} training steps of {t['batch_size']} windows of at most "
        f"{t['block_size']} tokens a run, {m['loss_seqs']} evaluation windows, "
        f"benchmarks up to T = {max(b['T'])}")
    prof["description"] = (f"a rehearsal of profile {real} at toy sizes (its numbers mean "
                           f"nothing); {real}: {prof.get('description', '')}")
    prof["name"], prof["rehearsal_of"] = profile, real
    return prof


def load_profile(profile: str, _seen: tuple = (), _as_base: bool = False) -> dict:
    if rehearsal_of(profile):
        return _load_rehearsal(profile)
    path = profile_path(profile)
    prof = yaml.safe_load(path.read_text()) or {}
    unknown = [k for k in prof if k not in PROFILE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {', '.join(PROFILE_KEYS)}")
    if "base" in prof:
        if prof["base"] in _seen + (profile,):
            raise ConfigError(f"{path}: profile bases form a loop through {prof['base']!r}")
        base = load_profile(prof.pop("base"), _seen + (profile,), _as_base=True)
        for k in ("train", "measure", "bench"):
            prof[k] = {**base[k], **(prof.get(k) or {})}
        for k in ("description", "variants", "seeds"):
            if k in base:
                prof.setdefault(k, base[k])
    for k in ("variants", "seeds"):
        if not isinstance(prof.get(k), list) or not prof[k]:
            raise ConfigError(f"{path}: {k} must be a non-empty list")
    bad = [v for v in prof["variants"] if v not in VARIANTS]
    if bad:
        raise ConfigError(f"{path}: unknown variant(s) {bad}; valid choices: {', '.join(VARIANTS)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in prof["seeds"]):
        raise ConfigError(f"{path}: seeds must be non-negative integers")
    train = prof.get("train") or {}
    fixed = [k for k in RUN_FIXED_KEYS if k in train]
    if fixed:
        raise ConfigError(f"{path}: train may not set {fixed}; each run sets them")
    TrainConfig.from_dict(train)                       # validates every key now
    MeasureConfig.from_dict(prof.get("measure") or {})
    bench = prof.get("bench") or {}
    bad = [k for k in bench if k not in BENCH_KEYS]
    if bad:
        raise ConfigError(f"{path}: unknown bench key(s) {bad}; valid keys: {', '.join(BENCH_KEYS)}")
    mt = bench.get("max_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
        raise ConfigError(f"{path}: bench max_tokens must be a positive integer (tokens a pass, "
                          f"B * T) or absent; got {mt!r}")
    bs = bench.get("block_s")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, (int, float)) or bs <= 0):
        raise ConfigError(f"{path}: bench block_s must be a positive number of seconds (passes a "
                          f"case and round) or absent; got {bs!r}")
    mp = bench.get("min_passes")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < 1):
        raise ConfigError(f"{path}: bench min_passes must be a positive integer (passes a case "
                          f"and round, at least) or absent; got {mp!r}")
    bv = bench.get("variants")
    if bv is not None and (not isinstance(bv, list) or not bv
                           or any(not isinstance(v, str) or v not in VARIANTS for v in bv)):
        raise ConfigError(f"{path}: bench variants must be a non-empty list of {', '.join(VARIANTS)}; "
                          f"got {bv!r}")
    if prof.get("testbed") is not None and not _as_base:
        tb = prof["testbed"]
        if not isinstance(tb, str) or tb == profile:
            raise ConfigError(f"{path}: testbed must name another profile, got {tb!r}")
        if load_profile(tb).get("testbed"):
            raise ConfigError(f"{path}: testbed profile {tb!r} may not have a testbed itself")
    abl = prof.get("ablations")
    if abl is not None and not _as_base:
        if not isinstance(abl, list) or not all(isinstance(a, str) and a != profile for a in abl):
            raise ConfigError(f"{path}: ablations must be a list of other profiles' names, got {abl!r}")
        for a in abl:
            sub = load_profile(a)
            if sub.get("testbed") or sub.get("ablations"):
                raise ConfigError(f"{path}: ablation profile {a!r} may not have a testbed or "
                                  "ablations itself")
    cited = prof.get("cited")
    if cited is not None and not _as_base:
        if not isinstance(cited, list) or not all(isinstance(c, str) and c != profile for c in cited):
            raise ConfigError(f"{path}: cited must be a list of other profiles' names, got {cited!r}")
        for c in cited:
            load_profile(c)
    if prof.get("retrofit") is not None and not _as_base:
        _check_retrofit(path, profile, prof)
    prof["name"] = profile
    prof["train"], prof["measure"], prof["bench"] = train, prof.get("measure") or {}, bench
    return prof


def _check_retrofit(path: Path, profile: str, prof: dict) -> None:
    rf = prof["retrofit"]
    if not isinstance(rf, dict) or sorted(rf) != sorted(RETROFIT_KEYS):
        raise ConfigError(f"{path}: retrofit must be a mapping of {', '.join(RETROFIT_KEYS)} "
                          f"(the source profile and its variant), got {rf!r}")
    if rf["from"] == profile:
        raise ConfigError(f"{path}: a retrofit cannot start from its own runs")
    src = load_profile(rf["from"])
    if src.get("retrofit"):
        raise ConfigError(f"{path}: retrofit source {rf['from']!r} is itself a retrofit")
    if rf["variant"] not in src["variants"]:
        raise ConfigError(f"{path}: retrofit variant {rf['variant']!r} is not in profile "
                          f"{rf['from']!r}: {', '.join(src['variants'])}")
    missing = [s for s in prof["seeds"] if s not in src["seeds"]]
    if missing:
        raise ConfigError(f"{path}: seeds {missing} have no run in {rf['from']!r} to start from "
                          f"(its seeds: {src['seeds']})")
    if (prof.get("train") or {}).get("init_from"):
        raise ConfigError(f"{path}: set retrofit, not train.init_from (each run's is its own)")


def profile_files(profile: str) -> list[str]:
    """The profile files (relative to the repository root) whose keys a profile's runs use: its
    own, its bases', and those of its testbed, ablations and retrofit source (a rehearsal's are
    the rehearsed profile's)."""
    name = rehearsal_of(profile) or profile
    files, todo = [], [name]
    while todo:
        p = todo.pop(0)
        path = profile_path(p)
        rel = path.relative_to(repo_root()).as_posix()
        if rel in files:
            continue
        files.append(rel)
        raw = yaml.safe_load(path.read_text()) or {}
        todo += [raw[k] for k in ("base", "testbed") if isinstance(raw.get(k), str)]
        todo += [a for a in raw.get("ablations") or [] if isinstance(a, str)]
        if isinstance(raw.get("retrofit"), dict) and isinstance(raw["retrofit"].get("from"), str):
            todo.append(raw["retrofit"]["from"])
    return sorted(files)


def retrofit_source(profile: str, seed: int, runs_root: str = "runs") -> Path | None:
    """The checkpoint a retrofit profile's run of `seed` starts from (None if not a retrofit)."""
    rf = load_profile(profile).get("retrofit")
    if not rf:
        return None
    steps = TrainConfig.from_dict(load_profile(rf["from"])["train"]).max_steps
    return run_dir(rf["from"], rf["variant"], seed, runs_root) / f"ckpt_{steps:06d}.pt"


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}"


def run_dir(profile: str, variant: str, seed: int, runs_root: str = "runs") -> Path:
    return repo_root() / runs_root / profile / run_name(variant, seed)


def run_config(profile: str, variant: str, seed: int, overrides: dict | None = None,
               runs_root: str = "runs") -> TrainConfig:
    """The TrainConfig of one run of a profile (paths made absolute from the repo root)."""
    prof = load_profile(profile)
    if variant not in prof["variants"]:
        raise ConfigError(f"variant {variant!r} is not in profile {profile!r}: "
                          f"{', '.join(prof['variants'])}")
    d = dict(prof["train"])
    d.update(overrides or {})
    d.update(out_dir=str(run_dir(profile, variant, seed, runs_root)), attention=variant, seed=seed)
    root = repo_root()
    d["data_root"] = str(root / d.get("data_root", "data"))
    source = retrofit_source(profile, seed, runs_root)
    if source is not None:
        d["init_from"] = str(source)
    return TrainConfig.from_dict(d)


def data_params(profile: str) -> dict:
    """The data notebook's parameters for a profile (its corpus and tokenizer keys)."""
    cfg = TrainConfig.from_dict(load_profile(profile)["train"]).to_dict()
    keys = ("corpus", "tokenizer", "bpe_vocab_size", "max_tokens", "text_field", "corpus_fallback")
    return {k: cfg[k] for k in keys}


def vocab_guess(cfg) -> int:
    """A run's vocabulary without preparing its corpus: the BPE size plus BOS, or 256 for
    characters, or the synthetic testbed's own (64 tokens and BOS): enough for a shape or a FLOP
    count."""
    if cfg.corpus == "bigram_backcopy":
        return 65
    return cfg.bpe_vocab_size + 1 if cfg.tokenizer == "bpe" else 256


def model_params(cfg: TrainConfig, vocab: int | None = None) -> int:
    """A run's parameter count (nanoGPT's, without position embeddings), built on the meta
    device with no data: `vocab`, or `vocab_guess(cfg)`."""
    with torch.device("meta"):
        return GPT(cfg.model_config(vocab or vocab_guess(cfg))).num_params()


def runs(profile: str) -> list[tuple[str, int]]:
    prof = load_profile(profile)
    return [(v, s) for s in prof["seeds"] for v in prof["variants"]]




def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    commands = ("runs", "check", "testbed", "ablations", "sources", "data-params")
    usage = f"usage: python -m offbyone.profiles {{{'|'.join(commands)}}} PROFILE"
    if len(argv) != 2 or argv[0] not in commands:
        sys.exit(usage)
    command, profile = argv
    try:
        prof = load_profile(profile)
        if command == "runs":
            print(" ".join(run_name(v, s) for v, s in runs(profile)))
        elif command == "testbed":
            print(prof.get("testbed") or "")
        elif command == "ablations":
            print(" ".join(prof.get("ablations") or []))
        elif command == "sources":
            rf = prof.get("retrofit")
            if rf:
                print(rf["from"], " ".join(run_name(rf["variant"], s) for s in prof["seeds"]))
        elif command == "data-params":
            print(" ".join(f"-p {k} {shlex.quote(str(v))}" for k, v in data_params(profile).items()))
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
