"""The notebook runner: papermill with strict parameters, atomic outputs and stage timings, the
notebooks' plan lines, and the provenance line `make paper` prints. Profiles live in
offbyone.profiles.

    python -m offbyone.pipeline nb STAGE NOTEBOOK OUTPUT [--timings FILE] [-p NAME VALUE ...]
    python -m offbyone.pipeline provenance cpu    # which commit made results/cpu, and whether
                                                  # the code that made its numbers changed since
"""
from __future__ import annotations

import ast
import json
import os
import sys

import yaml

from .config import ConfigError
from .io import atomic_path
from .profiles import repo_root, run_config, run_name, runs
from .provenance import staleness_of

# --------------------------------------------------------------------------------------------
# Notebook parameters: papermill only warns about names a notebook does not declare; we refuse.

def _assigned(source: str) -> dict:
    names = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        names[t.id] = ast.literal_eval(node.value)
                    except ValueError:
                        names[t.id] = None
    return names


def check_parameters(namespace: dict) -> dict:
    """Call in the cell after the `parameters` cell. Under papermill, refuses injected names
    the parameters cell does not declare and values whose type differs from the default.
    Returns {name: value} of the declared parameters."""
    ip = namespace.get("get_ipython")
    hist = list(ip().history_manager.input_hist_raw) if ip is not None else []
    injected_i = [i for i, src in enumerate(hist) if src.lstrip().startswith("# Parameters")]
    if not injected_i:
        return {}
    i = injected_i[-1]
    declared = _assigned(hist[i - 1])
    injected = _assigned(hist[i])
    unknown = sorted(set(injected) - set(declared))
    if unknown:
        raise NameError(f"unknown notebook parameter(s) {', '.join(map(repr, unknown))}; "
                        f"this notebook takes: {', '.join(declared)}")
    for name, default in declared.items():
        value = namespace[name]
        if default is None or name not in injected:
            continue
        ok = (isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool))
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise TypeError(f"notebook parameter {name!r} must be of type "
                            f"{type(default).__name__}, got {value!r} ({type(value).__name__})")
    return {name: namespace[name] for name in declared}


def run_notebook(notebook: str, output: str, params: dict, stage: str,
                 timings: str | None = None) -> None:
    """Execute a notebook with papermill into `output`, atomically: a failed run leaves its
    executed copy beside the target as `<output>.failed.ipynb`, never at `output`. Cell output
    (progress bars included) streams to the terminal. The wall time and the time it ended
    (seconds since the epoch: the report takes the elapsed time from them) go to `timings`."""
    import time

    import papermill as pm

    root = repo_root()
    declared = pm.inspect_notebook(str(root / notebook))
    unknown = [k for k in params if k not in declared]
    if unknown:
        raise ConfigError(f"{notebook} takes no parameter(s) {unknown}; it takes: {', '.join(declared)}")
    out = root / output
    label = stage
    if "variant" in params and "seed" in params and "profile" in params:
        names = [run_name(v, s) for v, s in runs(params["profile"])]
        name = run_name(params["variant"], params["seed"])
        if name in names:
            label = f"{stage} run {names.index(name) + 1}/{len(names)}: {name}"
    print(f"==> [{label}] {notebook} -> {output}", flush=True)
    t0 = time.perf_counter()
    with atomic_path(out, ".running.ipynb") as tmp:
        try:
            pm.execute_notebook(str(root / notebook), str(tmp), parameters=params,
                                kernel_name="python3", log_output=True, progress_bar=False,
                                cwd=str(root))
        except BaseException:
            if tmp.exists() and tmp.stat().st_size:
                os.replace(tmp, out.with_name(out.stem + ".failed.ipynb"))
            raise
    seconds = time.perf_counter() - t0
    print(f"==> [{label}] done in {seconds:.1f}s", flush=True)
    if timings:
        path = root / timings
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps({"stage": stage, "target": output, "seconds": seconds,
                                "end": time.time()}) + "\n")


def plan(profile: str, variant: str, seed: int, stage: str, results_dir: str = "results") -> str:
    """What the train or measure notebook is about to do for one run, and how long it took
    when this profile's results on record were made (results/<profile>/runs.csv)."""
    import pandas as pd
    cfg = run_config(profile, variant, seed)
    n_ckpt = len(cfg.checkpoint_steps())
    what = (f"trains {variant}, seed {seed}, of profile {profile}: {cfg.max_steps:,} steps of "
            f"{cfg.batch_size} x {cfg.block_size} tokens "
            f"({cfg.max_steps * cfg.batch_size * cfg.block_size / 1e6:.1f}M tokens), "
            f"{n_ckpt} checkpoints" if stage == "train" else
            f"measures the {n_ckpt} checkpoints of {variant}, seed {seed}, of profile {profile}")
    path = repo_root() / results_dir / profile / "runs.csv"
    if not path.exists():
        return f"This notebook {what}. No results of this profile are on record to time it by."
    df = pd.read_csv(path)
    rows = df[df.variant == variant] if variant in set(df.variant) else df
    secs = (rows[rows.step == rows.max_steps].train_wall_s.mean() if stage == "train"
            else rows.groupby("seed").measure_wall_s.sum().mean())
    took = f"{secs:.0f} s" if secs < 90 else f"{secs / 60:.1f} min"
    return (f"This notebook {what}. When {path.parent.relative_to(repo_root())}/ was made, that "
            f"took about {took} a run on {rows.device_name.iloc[0]} "
            f"({rows.device.iloc[0]}); a finished run is skipped in seconds.")


def results_provenance(profile: str, results_dir: str = "results") -> str:
    """Which commit, machine and torch produced results/<profile>/, how long it took, and
    whether the code and profiles that trained and measured them have changed since (printed
    by `make paper`)."""
    path = repo_root() / results_dir / profile / "provenance.json"
    if not path.exists():
        return f"{path.parent} holds no provenance.json: run `make reproduce PROFILE={profile}`"
    p = json.loads(path.read_text())
    note = staleness_of(p)
    speed = p.get("bench_softmax_tokens_per_s")
    return (f"the numbers in {path.parent.relative_to(repo_root())}/ come from commit "
            f"{p['commit'][:10]} on {p['machine'].get('device_name', '?')} (torch {p['torch']}"
            + (f", softmax training at {speed:,.0f} tokens/s there" if speed else "")
            + f"; its notebooks took {p['pipeline_wall_s'] / 60:.0f} min summed"
            + (f", {p['pipeline_elapsed_s'] / 60:.0f} min of wall time while at least one ran"
               if p.get("pipeline_elapsed_s") else "") + ")\n"
            + (f"WARNING: {note}" if note else "the code that trained and measured them and their "
               "profiles are unchanged since"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    usage = ("usage: python -m offbyone.pipeline provenance PROFILE\n"
             "       python -m offbyone.pipeline nb STAGE NOTEBOOK OUTPUT [--timings FILE] "
             "[-p NAME VALUE ...]\n"
             "(a profile's runs, testbed, ablations, sources and data parameters: "
             "python -m offbyone.profiles)")
    if len(argv) < 2 or argv[0] not in ("provenance", "nb"):
        sys.exit(usage)
    try:
        if argv[0] == "provenance":
            print(results_provenance(argv[1]))
        else:
            if len(argv) < 4:
                sys.exit(usage)
            stage, notebook, output, rest = argv[1], argv[2], argv[3], argv[4:]
            timings, params = None, {}
            while rest:
                if rest[0] == "--timings" and len(rest) >= 2:
                    timings, rest = rest[1], rest[2:]
                elif rest[0] == "-p" and len(rest) >= 3:
                    params[rest[1]] = yaml.safe_load(rest[2]) if rest[2] != "" else ""
                    rest = rest[3:]
                else:
                    sys.exit(usage)
            run_notebook(notebook, output, params, stage, timings)
    except ConfigError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
