"""Training and measurement rates through the pipeline's own code: train() eager and compiled,
measure(), seeds as one ensemble, runs at once, process and notebook start-up."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..ensemble import train_ensemble
from ..measure import MeasureConfig, measure
from ..model import GPT
from ..profiles import load_profile, run_config, vocab_guess
from ..train import list_checkpoints, train
from .estimate import PAPERMILL_EXTRA_S


# --------------------------------------------------------------------------------------------
# 3. Training and measurement through the pipeline's own code

def train_rate(profile: str, variant: str, steps: int, compile: bool, work: Path,
               measure_it: bool = False, overrides: dict | None = None) -> dict:
    """Train `steps` steps of one run of `profile` (its recipe and model) with `train()` in a
    scratch folder; tokens/s over the last quarter of the steps (after compilation and warm-up),
    and optionally the wall time of `measure()` on the final checkpoint."""

    prof = load_profile(profile)
    quarter = max(1, steps // 4)
    mode = (overrides or {}).get("compile_mode", "default")
    out_dir = work / f"{profile}-{variant}-{mode + '-compiled' if compile else 'eager'}"
    ovr = {"max_steps": steps, "warmup_steps": min(steps, 10), "log_interval": quarter,
           "eval_interval": steps, "checkpoint_fractions": [0.5, 1.0] if measure_it else [1.0],
           "compile": compile, "progress": False, **(overrides or {})}
    cfg = run_config(profile, prof["variants"][0], 0, ovr)
    cfg.attention, cfg.out_dir = variant, str(out_dir)
    cfg.validate()
    t0 = time.perf_counter()
    summary = train(cfg)
    row = {"profile": profile, "variant": variant, "compile": compile, "steps": steps,
           "tokens_per_step": cfg.batch_size * cfg.block_size,
           "tokens_per_s": summary["tokens_per_s"], "train_elapsed_s": summary["train_elapsed_s"],
           "wall_s": time.perf_counter() - t0, "n_params": summary["n_params"],
           "val_loss": summary["val_loss"]}
    if measure_it:
        mc = MeasureConfig.from_dict(prof["measure"])
        try:  # a middle checkpoint (no sliding-window grid), then the final one
            for key, ckpt in (("measure_mid_s", list_checkpoints(out_dir)[0]),
                              ("measure_final_s", summary["final_checkpoint"])):
                t1 = time.perf_counter()
                measure(ckpt, mc, verbose=False)
                row[key] = time.perf_counter() - t1
        except Exception as e:  # a failure is a finding: record it and go on with the check
            import traceback
            row["measure_error"] = "".join(traceback.format_exception(e)[-6:])
            print(f"    measure() FAILED: {e!r}", flush=True)
    return row


def ensemble_rate(profile: str, variant: str, size: int, steps: int, work: Path,
                  overrides: dict | None = None) -> dict:
    """The step time of `size` seeds of a profile's run trained as one ensemble
    (offbyone.ensemble): the lever for launch-bound models that `study run --ensemble` uses."""

    ovr = {"max_steps": steps, "warmup_steps": min(steps, 10), "log_interval": max(1, steps // 4),
           "eval_interval": steps, "checkpoint_fractions": [1.0], "progress": False,
           **(overrides or {})}
    cfgs = []
    for seed in range(size):
        cfg = run_config(profile, variant, seed, ovr)
        cfg.out_dir = str(work / f"ens-{profile}-{variant}-{size}-s{seed}")
        cfgs.append(cfg)
    t0 = time.perf_counter()
    out = train_ensemble(cfgs)
    step_s = sum(o["train_elapsed_s"] for o in out) / steps        # members' shares, summed
    return {"profile": profile, "variant": variant, "ensemble_of": size, "steps": steps,
            "step_s": step_s, "wall_s": time.perf_counter() - t0,
            "tokens_per_s": size * cfgs[0].batch_size * cfgs[0].block_size / step_s}


def graph_breaks(profile: str, variant: str, device: str = "cuda") -> dict:
    """torch._dynamo.explain on one forward + loss of the profile's model with `variant`."""

    cfg = run_config(profile, load_profile(profile)["variants"][0], 0)
    cfg.attention = variant
    cfg.validate()
    vocab = vocab_guess(cfg)
    model = GPT(cfg.model_config(vocab)).to(device)
    x = torch.randint(0, vocab, (2, cfg.block_size), device=device)
    torch._dynamo.reset()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        ex = torch._dynamo.explain(model)(x, x)
    torch._dynamo.reset()
    return {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "reasons": [str(r.reason) for r in ex.break_reasons][:5]}


def parallel_speedup(profile: str, steps: int, jobs: int, work: Path,
                     overrides: dict | None = None) -> dict:
    """How much `make -j<jobs>` gains on this machine for a profile's runs: the wall time of one
    training process (`python -m offbyone.train`, start-up included) against `jobs` of them at
    once, speedup = jobs x wall(1) / wall(jobs). Small models are bound by per-step overhead,
    which several processes share out over the CPU cores and the GPU's idle time."""
    import yaml


    prof = load_profile(profile)

    def launch(tag: str, n: int) -> float:
        procs = []
        t0 = time.perf_counter()
        for i in range(n):
            cfg = run_config(profile, prof["variants"][0], i, {
                "max_steps": steps, "warmup_steps": min(steps, 10), "eval_interval": steps,
                "log_interval": max(1, steps // 4), "checkpoint_fractions": [1.0],
                "progress": False, **(overrides or {})})
            cfg.out_dir = str(work / f"par-{profile}-{tag}-{i}")
            path = work / f"par-{profile}-{tag}-{i}.yaml"
            path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
            procs.append(subprocess.Popen([sys.executable, "-m", "offbyone.train", "--config",
                                           str(path)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"a parallel training process failed:\n{err[-2000:]}")
        return time.perf_counter() - t0

    one = launch("one", 1)
    many = launch("many", jobs)
    return {"profile": profile, "steps": steps, "jobs": jobs, "wall_one_s": one,
            "wall_jobs_s": many, "speedup": jobs * one / many}


def process_start_s() -> float:
    """Seconds to start a Python process that imports the package and initialises the device."""
    code = ("import torch, offbyone.train, offbyone.measure; "
            "torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - t0


def notebook_overhead_s(profile: str = "gpu") -> dict:
    """The fixed cost of one pipeline notebook: a package CLI process (timed as
    `offbyone.profiles check`, the size of the `offbyone.pipeline nb` process that drives
    papermill), plus the kernel's start-up with the package imported and the device
    initialised. Where papermill is installed, a trivial notebook is run through it; else
    papermill's own share is the assumed PAPERMILL_EXTRA_S."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "offbyone.profiles", "check", profile], check=True,
                   capture_output=True)
    cli = time.perf_counter() - t0
    try:
        import nbformat
        import papermill as pm
    except ImportError:
        kernel, how = process_start_s() + PAPERMILL_EXTRA_S, "assumed papermill share"
    else:
        with tempfile.TemporaryDirectory() as d:
            nb = nbformat.v4.new_notebook()
            nb.cells = [nbformat.v4.new_code_cell(
                "import torch, offbyone.train, offbyone.measure\n"
                "torch.zeros(1, device='cuda' if torch.cuda.is_available() else 'cpu')")]
            nbformat.write(nb, f"{d}/in.ipynb")
            t0 = time.perf_counter()
            pm.execute_notebook(f"{d}/in.ipynb", f"{d}/out.ipynb", kernel_name="python3",
                                progress_bar=False)
            kernel, how = time.perf_counter() - t0, "measured through papermill"
    return {"seconds": cli + kernel, "cli_s": cli, "kernel_s": kernel, "how": how}


def training_rows(profile: str, work: Path, cpu_rehearsal: bool, steps: int,
                  toy: dict) -> list[dict]:
    """train_rate for the profile's variants (softmax and softmax1 with compile off and on, the
    others eagerly, for half the steps) and its testbed's, measuring one checkpoint of each."""

    rows = []
    for name in [profile, load_profile(profile).get("testbed")]:
        if not name:
            continue
        variants = load_profile(name)["variants"]
        for variant in variants[:2] if cpu_rehearsal else variants:
            main_pair = name == profile and variant in ("softmax", "softmax1")
            # eager, compiled, and compiled with CUDA graphs (reduce-overhead: the lever for
            # small launch-bound models)
            modes = ((False, "default"), (True, "default"), (True, "reduce-overhead")) \
                if main_pair and not cpu_rehearsal else ((False, "default"),)
            for compile, mode in modes:
                rows.append(train_rate(name, variant, steps if main_pair else max(1, steps // 2),
                                       compile, work, overrides={**toy, "compile_mode": mode},
                                       measure_it=not compile and variant == (
                                           "softmax1" if name == profile else variants[0])))
                rows[-1]["compile_mode"] = mode
                print(f"    {name} {variant} {'compiled ' + mode if compile else 'eager'}: "
                      f"{rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
    return rows
